"""What a request can make the farm spend, and what a form post from elsewhere can make it do."""

import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
import redis

from farmctl.native import NativeFarm
from tests.farm.users import PASSWORD, new_username, signed_in

pytestmark = pytest.mark.farm

CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def instance_rss_mb(farm: NativeFarm, name: str) -> float:
    return psutil.Process(farm.pid(name)).memory_info().rss / 2**20


def test_a_huge_body_sent_to_an_instance_is_refused_before_it_is_read(farm: NativeFarm) -> None:
    web1 = farm.config.web[0]
    before = instance_rss_mb(farm, web1.name)
    with socket.create_connection(("127.0.0.1", web1.port), timeout=10) as conn:
        conn.sendall(b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 200000000\r\n\r\n" + b"{" * 65536)
        received = b""
        while b'"}' not in received and (chunk := conn.recv(4096)):  # headers and body may come apart
            received += chunk
    reply = received.decode()
    assert reply.startswith("HTTP/1.1 413"), reply
    assert '{"detail":"request body too large"}' in reply
    # Without a Content-Length (chunked), the body is counted as it arrives.
    chunked = httpx.post(f"{web1.url}/api/login", content=iter([b"x" * 65536] * 4),
                         headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    assert instance_rss_mb(farm, web1.name) < before + 20


def test_too_many_headers_sent_to_an_instance_are_a_431(farm: NativeFarm) -> None:
    headers = [(f"x-h{i}", "v") for i in range(1000)]
    response = httpx.get(f"{farm.config.web[0].url}/api/me", headers=headers)
    assert response.status_code == 431
    assert response.json() == {"detail": "request headers too large"}


def test_a_cart_has_a_size_limit_answered_with_a_clear_409(farm: NativeFarm) -> None:
    with signed_in(farm.config.balancer_url) as client:
        for i in range(50):
            assert client.post("/api/cart/items", json={"sku": f"s{i}", "qty": 1}).status_code == 200
        full = client.post("/api/cart/items", json={"sku": "one-more", "qty": 1})
        assert full.status_code == 409
        assert full.json() == {"detail": "too many different items in the cart"}
        for _ in range(9):
            assert client.post("/api/cart/items", json={"sku": "s0", "qty": 100}).status_code == 200
        too_many = client.post("/api/cart/items", json={"sku": "s0", "qty": 100})
        assert too_many.json() == {"detail": "quantity of one item too high"}
        cart = client.get("/api/cart").json()["items"]
        assert len(cart) == 50
        assert cart["s0"] == 901


@pytest.mark.parametrize("qty", ["5", True, 100.0, 5.5, None])
def test_qty_must_be_a_json_integer(farm: NativeFarm, qty: object) -> None:
    with signed_in(farm.config.balancer_url) as client:
        assert client.post("/api/cart/items", json={"sku": "apple", "qty": qty}).status_code == 422
        assert client.get("/api/cart").json() == {"items": {}}


def test_authenticated_json_is_never_cached(farm: NativeFarm) -> None:
    with signed_in(farm.config.balancer_url) as client:
        for path in ("/api/me", "/api/cart", "/api/farm"):
            assert client.get(path).headers["cache-control"] == "no-store"


def test_the_login_form_validates_usernames_as_the_api_does(farm: NativeFarm) -> None:
    base = farm.config.balancer_url
    with httpx.Client(base_url=base) as client:
        token = CSRF_FIELD.search(client.get("/login").text)
        assert token
        for username in ("x" * 50_000, "Alice", "ab"):
            response = client.post("/login", data={"csrf_token": token[1], "username": username,
                                                   "password": PASSWORD})
            assert response.status_code == 422
            assert "3-32 characters" in response.text
    with redis.Redis.from_url(farm.config.redis_url) as store:
        assert max((len(k) for k in store.scan_iter("webfarm:*", count=1000)), default=0) < 200


def form_token(client: httpx.Client, page: str) -> str:
    match = CSRF_FIELD.search(client.get(page).text)
    assert match
    return match[1]


CROSS_SITE = {"origin": "https://evil.example", "sec-fetch-site": "cross-site"}


def test_a_cross_site_form_post_with_a_planted_csrf_cookie_is_refused(farm: NativeFarm) -> None:
    base, planted = farm.config.balancer_url, "planted-by-the-attacker"
    with httpx.Client(base_url=base, cookies={"webfarm_csrf": planted}) as attacker:
        token = form_token(attacker, "/login")  # whatever the server hands out for the planted value
    with signed_in(base) as victim:
        victim.post("/api/cart/items", json={"sku": "apple", "qty": 1})
        victim.cookies.set("webfarm_csrf", planted, domain="127.0.0.1")
        for path, form in (("/cart", {"sku": "evil", "qty": "50"}), ("/logout", {})):
            assert victim.post(path, data={"csrf_token": token, **form}, headers=CROSS_SITE).status_code == 403
            # Even without the browser's cross-site headers, a value the client chose signs nothing.
            assert victim.post(path, data={"csrf_token": token, **form}).status_code == 403
        assert victim.get("/api/cart").json() == {"items": {"apple": 1}}
        assert victim.get("/api/me").status_code == 200


def test_login_csrf_is_refused(farm: NativeFarm) -> None:
    """An attacker's page signing the victim into the ATTACKER's account (login CSRF)."""
    base = farm.config.balancer_url
    with httpx.Client(base_url=base) as attacker:
        token = form_token(attacker, "/login")
        planted = attacker.cookies["webfarm_csrf"]
    with httpx.Client(base_url=base) as victim:
        victim.cookies.set("webfarm_csrf", planted, domain="127.0.0.1")
        forged = victim.post("/login", data={"csrf_token": token, "username": "demo", "password": "demo-password"},
                             headers=CROSS_SITE)
        assert forged.status_code == 403
        assert "webfarm_session" not in victim.cookies


def test_the_forms_still_work_from_our_own_pages(farm: NativeFarm) -> None:
    base = farm.config.balancer_url
    with httpx.Client(base_url=base) as client:
        name = new_username()
        registered = client.post("/register", data={"csrf_token": form_token(client, "/register"), "username": name,
                                                    "password": PASSWORD}, headers={"origin": base})
        assert registered.status_code == 303
        added = client.post("/cart", data={"csrf_token": form_token(client, "/dashboard"), "sku": "pear",
                                           "qty": "2"}, headers={"origin": base, "sec-fetch-site": "same-origin"})
        assert added.status_code == 303
        assert client.get("/api/cart").json() == {"items": {"pear": 2}}


def test_one_address_flooding_the_password_endpoints_is_told_429_by_nginx(farm: NativeFarm) -> None:
    """nginx's limit_req: 10 a second per client address, bursts of 40; beyond, a 429 in the API's
    shape that no instance spent argon2 on (no X-Served-By). Another address is not affected."""
    transport = httpx.HTTPTransport(local_address="127.0.9.9")
    started = time.monotonic()
    with httpx.Client(base_url=farm.config.balancer_url, transport=transport, timeout=15) as flood, \
            ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: flood.post("/api/login", json={"username": new_username(),
                                                                         "password": "wrong-password"}),
                                range(80)))
    took = time.monotonic() - started
    refused = [r for r in answers if r.status_code == 429 and "x-served-by" not in r.headers]
    assert refused
    assert len(answers) - len(refused) <= 41 + 10 * took  # the burst, then 10 a second
    assert refused[0].json() == {"detail": "too many requests from this address"}
    assert refused[0].headers["retry-after"] == "1"
    with signed_in(farm.config.balancer_url) as elsewhere:  # 127.0.0.1
        assert elsewhere.get("/api/me").status_code == 200
