"""The balancer's edge on real farms: only the farm's own host names reach an instance (a DNS
rebinding page is refused at the door), writes come only from the configured origins, and every
malformed request nginx can see is answered in the API's JSON with a 4xx - never nginx's HTML,
never a 500, and never passed on for uvicorn to answer in text/plain."""

import json
import socket
import ssl
from dataclasses import dataclass

import httpx
import pytest

from app.config import LOOPBACK_HOSTS
from farmctl.runtime import Farm
from tests.conftest import FarmFactory
from tests.farm.users import new_username, signed_in

pytestmark = pytest.mark.farm

FOREIGN_HOSTS = ["rebind.example", "rebind.example:{port}", "127.0.0.1.rebind.example:{port}",
                 "localhost.rebind.example", "127.0.0.2:{port}"]


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def exchange(port: int, request: bytes, tls: bool = False) -> Reply:
    """Send `request` as it is on a fresh connection, and read the answer until nginx closes it
    (every request below either asks it to, or is one nginx closes the connection after)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        context = ssl.create_default_context() if tls else None
        if context:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        sock = context.wrap_socket(raw) if context else raw
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return Reply(int(status_line.split()[1]), headers, body)


def test_a_foreign_host_is_refused_before_it_reaches_an_instance(farm: Farm) -> None:
    port = farm.config.http_port
    for host in (h.format(port=port) for h in FOREIGN_HOSTS):
        for method, path in (("GET", "/healthz"), ("GET", "/login"), ("POST", "/api/login")):
            response = httpx.request(method, f"{farm.config.balancer_url}{path}", headers={"host": host},
                                     json={"username": "demo", "password": "x"} if method == "POST" else None)
            assert response.status_code == 421, (host, path)
            assert response.headers["content-type"] == "application/json"
            assert response.json() == {"detail": "unknown host"}
            assert "x-served-by" not in response.headers, (host, path)
    # A request line in absolute form names its own host, and nginx goes by that one.
    reply = exchange(port, f"GET http://rebind.example:{port}/healthz HTTP/1.1\r\n"
                           f"Host: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
    assert (reply.status, "x-served-by" in reply.headers) == (421, False)


def test_our_own_names_are_served_with_and_without_the_port(farm: Farm) -> None:
    for name in LOOPBACK_HOSTS:
        for host in (name, f"{name}:{farm.config.http_port}"):
            response = httpx.get(f"{farm.config.balancer_url}/healthz", headers={"host": host})
            assert response.status_code == 200, host
            assert response.headers["x-served-by"] in farm.instance_names()


def test_a_rebinding_page_cannot_sign_in_or_press_the_crash_control(farm: Farm) -> None:
    """The attack of issue 24: a page on another name that resolves to 127.0.0.1 talks to the farm
    as its own origin (Origin and Host both its name) - it registered, signed in and crashed all
    three instances in ~9 s. Now its first request is refused, and so is every later one."""
    pids = {name: farm.pid(name) for name in farm.instance_names()}
    host = f"rebind.example:{farm.config.http_port}"
    page = {"host": host, "origin": f"http://{host}", "sec-fetch-site": "same-origin"}
    name = new_username()
    with httpx.Client(base_url=farm.config.balancer_url, headers=page, timeout=10) as attacker:
        steps = [attacker.get("/register"),
                 attacker.post("/api/register", json={"username": name, "password": "attacker-password"}),
                 attacker.post("/api/login", json={"username": name, "password": "attacker-password"}),
                 attacker.get("/dashboard"),
                 *(attacker.post("/demo/crash", data={"csrf_token": "x"}) for _ in range(3))]
    assert [step.status_code for step in steps] == [421] * len(steps)
    assert not any("x-served-by" in step.headers for step in steps)
    assert {name: farm.pid(name) for name in farm.instance_names()} == pids


def test_an_instance_refuses_writes_from_an_origin_it_was_not_given(farm: Farm) -> None:
    """The app's own check, for a request that never met nginx's: Origin is compared with the
    configured origins, so a page whose Origin matches its Host is still refused."""
    web1 = farm.config.web[0]
    host = f"rebind.example:{web1.port}"
    refused = httpx.post(f"{web1.url}/api/login", json={"username": "demo", "password": "x"},
                         headers={"host": host, "origin": f"http://{host}"})
    assert refused.status_code == 403
    assert refused.json() == {"detail": "cross-site request refused"}


def test_writes_from_every_origin_of_the_farm_are_accepted(farm: Farm) -> None:
    """The origins farmctl derives from the farm's names and ports, HTTP and HTTPS."""
    schemes = {"http": farm.config.http_port, "https": farm.config.https_port}
    with signed_in(farm.config.balancer_url) as client:
        for name in LOOPBACK_HOSTS:
            for scheme, port in schemes.items():
                origin = {"origin": f"{scheme}://{name}:{port}", "host": f"{name}:{farm.config.http_port}"}
                added = client.post("/api/cart/items", json={"sku": "apple", "qty": 1}, headers=origin)
                assert added.status_code == 200, origin
        # Another port of the same machine is another origin.
        other = {"origin": f"http://127.0.0.1:{farm.config.http_port + 1}"}
        assert client.post("/api/cart/items", json={"sku": "apple", "qty": 1}, headers=other).status_code == 403
        assert client.get("/api/cart").json() == {"items": {"apple": 2 * len(LOOPBACK_HOSTS)}}


@pytest.fixture(scope="module")
def named_farm(farm_factory: FarmFactory) -> Farm:
    """A farm of its own: it serves another name, and its balancer's rate limit may be used up."""
    return farm_factory(1, allowed_hosts=("127.0.0.1", "farm.example"))


def test_configured_host_names_replace_the_loopback_ones(named_farm: Farm) -> None:
    farm = named_farm
    port = farm.config.http_port
    for host, status in (("farm.example", 200), (f"farm.example:{port}", 200), ("localhost", 421)):
        assert httpx.get(f"{farm.config.balancer_url}/healthz", headers={"host": host}).status_code == status, host
    with signed_in(farm.config.balancer_url) as client:
        for origin, status in ((f"http://farm.example:{port}", 200), (f"http://localhost:{port}", 403)):
            added = client.post("/api/cart/items", json={"sku": "pear", "qty": 1},
                                headers={"host": f"farm.example:{port}", "origin": origin})
            assert added.status_code == status, origin


def test_the_balancer_s_rate_limit_is_a_json_429_and_the_app_s_answers_pass(named_farm: Farm) -> None:
    """nginx's limit_req answers with a status of its own (460) that its error page turns into the
    429; an instance's answers in the same location (here 422) are passed on untouched."""
    with httpx.Client(base_url=named_farm.config.balancer_url, timeout=10) as client:
        answers = [client.post("/api/login", content=b"{}", headers={"content-type": "application/json"})
                   for _ in range(80)]
    limited = [a for a in answers if a.status_code == 429]
    assert limited, [a.status_code for a in answers]
    assert {a.status_code for a in answers} == {422, 429}
    for answer in limited:
        assert answer.json() == {"detail": "too many requests from this address"}
        assert answer.headers["retry-after"] == "1"
        assert "x-served-by" not in answer.headers
    assert all("x-served-by" in a.headers for a in answers if a.status_code == 422)


#: Request lines and headers nginx cannot parse or will not pass on, each on its own connection.
MALFORMED = {
    "connect": b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "http2_preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "space_in_uri": b"GET /a b HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "control_character": b"GET /\x01 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "nul_in_uri": b"GET /\x00 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "path_traversal": b"GET /static/..%2f..%2fconfig.py HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "above_the_root": b"GET /../../etc/passwd HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "http_3": b"GET / HTTP/3.0\r\nHost: 127.0.0.1\r\n\r\n",
    "http_version_junk": b"GET / HTTP/1.x\r\nHost: 127.0.0.1\r\n\r\n",
    "unknown_transfer_encoding": b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\nTE: trailers\r\n"
                                 b"Transfer-Encoding: xchunked\r\n\r\n",
    "bad_chunk_size": b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "length_and_chunked": b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bad_content_length": b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n",
    "lowercase_method": b"get / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "unknown_method": b"FOO / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    "webdav_method": b"PROPFIND /api/me HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    "trace": b"TRACE / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    "no_host": b"GET / HTTP/1.1\r\n\r\n",
    "two_hosts": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: 127.0.0.1\r\n\r\n",
    "bad_host": b"GET / HTTP/1.1\r\nHost: 127.0.0.1/x\r\n\r\n",
    "header_without_colon": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n",
    "bare_cr_in_header": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: 1\rX-B: 2\r\n\r\n",
    "header_too_long": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n",
    "uri_too_long": b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "tls_hello_to_http_port": bytes.fromhex("16030100a5010000a10303") + b"\x00" * 32 + b"\r\n\r\n",
    # nginx passes these on, and uvicorn refused them in text/plain.
    "raw_utf8_in_uri": "GET /caf\u00e9 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode(),
    "control_character_in_a_header": b"GET /api/me HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\x01b\r\n"
                                     b"Connection: close\r\n\r\n",
    "del_in_the_cookie": b"GET /api/me HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: a=\x7f\r\nConnection: close\r\n\r\n",
    "control_character_in_content_type": b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: \x02\r\n"
                                         b"Content-Length: 2\r\nConnection: close\r\n\r\n{}",
}


@pytest.mark.parametrize("request_bytes", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_request_is_a_json_4xx(farm: Farm, request_bytes: bytes) -> None:
    reply = exchange(farm.config.http_port, request_bytes)
    assert 400 <= reply.status < 500, reply
    assert reply.headers["content-type"] == "application/json", reply
    assert set(json.loads(reply.body)) == {"detail"}
    assert "x-served-by" not in reply.headers, reply  # nginx answered it, not an instance


def test_plain_http_to_the_https_port_is_a_json_400(farm: Farm) -> None:
    assert farm.config.https_port
    reply = exchange(farm.config.https_port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert (reply.status, reply.headers["content-type"]) == (400, "application/json"), reply
    assert set(json.loads(reply.body)) == {"detail"}


@pytest.mark.parametrize("request_bytes", [MALFORMED[k] for k in ("space_in_uri", "http_3", "unknown_method")],
                         ids=["space_in_uri", "http_3", "unknown_method"])
def test_a_malformed_request_over_https_is_a_json_4xx(farm: Farm, request_bytes: bytes) -> None:
    assert farm.config.https_port
    reply = exchange(farm.config.https_port, request_bytes, tls=True)
    assert 400 <= reply.status < 500, reply
    assert reply.headers["content-type"] == "application/json", reply
