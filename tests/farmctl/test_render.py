"""The native nginx config: accepted by the real `nginx -t`, and still carrying the failover directives."""

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from app.config import Settings
from farmctl.config import APP_KEEPALIVE_S, FarmConfig
from farmctl.native.render import instance_env, proxy_secret_path, render_nginx_native, require_binary
from farmctl.secret import proxy_secret_conf
from farmctl.tls import ensure_certificate

pytestmark = pytest.mark.parametrize("balance", ["round_robin", "sticky"])

UPSTREAM_BLOCK = re.compile(r"^\s*upstream\s+(\S+)\s*\{(.*?)\}", re.M | re.S)
SERVER_LINE = re.compile(r"^\s*server\s+127\.0\.0\.1:(\d+)\b([^;]*);", re.M)


@pytest.fixture
def config(balance: str, tmp_path: Path) -> FarmConfig:
    # Four instances, not the default three: the render must follow the config, not a constant.
    # HTTPS is on, as with `make up`; its self-signed certificate is made the way `make up` makes it.
    config = FarmConfig(instances=4, balance=balance, state_dir=tmp_path)
    ensure_certificate(tmp_path)
    return config


@pytest.fixture
def rendered(config: FarmConfig) -> str:
    return render_nginx_native(config)


def nginx_test(text: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on `text`, with the state folders the config points at."""
    try:
        nginx = require_binary("nginx")
    except FileNotFoundError:
        pytest.skip("nginx is not installed (make test installs it)")
    (state_dir / "logs").mkdir(exist_ok=True)
    (state_dir / "nginx").mkdir(exist_ok=True)
    proxy_secret_path(state_dir).write_text(proxy_secret_conf("test-secret"))
    conf = state_dir / "nginx.conf"
    conf.write_text(text)
    return subprocess.run([nginx, "-t", "-p", f"{state_dir}/nginx", "-c", str(conf)],
                          capture_output=True, text=True, timeout=30, check=False)


def upstreams(text: str) -> dict[str, str]:
    blocks = dict(UPSTREAM_BLOCK.findall(text))
    assert "webfarm" in blocks, text
    return blocks


def test_check_render_accepted_by_nginx(rendered: str, config: FarmConfig) -> None:
    result = nginx_test(rendered, config.state_dir)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@pytest.mark.parametrize(("broken", "message"), [
    (lambda text: text.rstrip().removesuffix("}"), "unexpected end of file"),
    (lambda text: text.replace("proxy_next_upstream error timeout;", "proxy_next_upstream error sometimes;"),
     "invalid value"),
], ids=["missing_brace", "bad_value"])
def test_check_broken_render_rejected_by_nginx(rendered: str, config: FarmConfig,
                                               broken: Callable[[str], str], message: str) -> None:
    text = broken(rendered)
    assert text != rendered
    result = nginx_test(text, config.state_dir)
    assert result.returncode != 0
    assert message in result.stderr


def test_render_failover_on_connection_errors_only(rendered: str) -> None:
    lines = [line.strip() for line in rendered.splitlines() if line.strip().startswith("proxy_next_upstream ")]
    assert lines == ["proxy_next_upstream error timeout;"] * 4  # 2 locations in the HTTP and the HTTPS server
    assert not re.search(r"http_\d+|non_idempotent", lines[0])
    assert re.search(r"^\s*proxy_next_upstream_tries \d+;", rendered, re.M)
    assert re.search(r"^\s*proxy_next_upstream_timeout \d+s;", rendered, re.M)


def seconds(rendered: str, directive: str) -> set[int]:
    return {int(value) for value in re.findall(rf"^\s*{directive} (\d+)s;", rendered, re.M)}


def test_render_timeouts_that_fit_together(rendered: str) -> None:
    """A GET that meets a hung instance times out once and is served by the next one, inside the
    retry window and under 3 s in all (issue #11: it used to wait 10 s, then fail)."""
    [read] = seconds(rendered, "proxy_read_timeout")
    [window] = seconds(rendered, "proxy_next_upstream_timeout")
    [connect] = seconds(rendered, "proxy_connect_timeout")
    assert read + connect <= 3
    assert read > Settings.model_fields["request_timeout_s"].default  # the app's 503 comes first
    assert window >= 2 * read
    fail_timeouts = {int(t) for t in re.findall(r"fail_timeout=(\d+)s", rendered)}
    assert min(fail_timeouts) > read  # a timed-out instance stays skipped until the health loop has it out


def test_render_every_instance_as_loopback_server(rendered: str, config: FarmConfig) -> None:
    ports = {inst.port for inst in config.web}
    for name, body in upstreams(rendered).items():
        servers = SERVER_LINE.findall(body)
        assert {int(port) for port, _ in servers} == ports, name
        for _, flags in servers:
            assert re.search(r"\bmax_fails=\d+\b", flags), flags
            assert re.search(r"\bfail_timeout=\d+s\b", flags), flags


def test_render_sticky_upstreams_pinned_to_their_instance(rendered: str, config: FarmConfig) -> None:
    blocks = upstreams(rendered)
    if config.balance != "sticky":
        assert set(blocks) == {"webfarm"}
        assert "$cookie_webfarm_route" not in rendered
        return
    for inst in config.web:
        servers = SERVER_LINE.findall(blocks[f"sticky_{inst.name}"])
        primaries = [int(port) for port, flags in servers if "backup" not in flags.split()]
        assert primaries == [inst.port]
        assert f"{inst.name} sticky_{inst.name};" in rendered


def test_render_upstream_keepalive_shorter_than_uvicorn(rendered: str) -> None:
    for name, body in upstreams(rendered).items():
        timeouts = [int(s) for s in re.findall(r"^\s*keepalive_timeout (\d+)s;", body, re.M)]
        assert len(timeouts) == 1, name
        assert timeouts[0] < APP_KEEPALIVE_S, name


def test_render_request_bodies_buffered_and_limited(rendered: str) -> None:
    assert re.search(r"^\s*proxy_request_buffering on;", rendered, re.M)
    assert re.search(r"^\s*client_max_body_size \d+[km]?;", rendered, re.M)


def test_render_https_server_with_hsts_only_there(rendered: str, config: FarmConfig) -> None:
    http, https = rendered.split(f"listen 127.0.0.1:{config.https_port} ssl;")
    assert "Strict-Transport-Security" in https
    assert "Strict-Transport-Security" not in http
    assert f"ssl_certificate {config.state_dir}/tls/cert.pem;" in http.split("server {")[0]  # for every HTTPS server


def test_render_forwarded_for_replaced_and_vouched_for_by_the_proxy_secret(rendered: str,
                                                                        config: FarmConfig) -> None:
    assert "$proxy_add_x_forwarded_for" not in rendered
    assert re.search(r"^\s*proxy_set_header X-Forwarded-For \$remote_addr;", rendered, re.M)
    assert re.search(rf"^\s*include {proxy_secret_path(config.state_dir)};", rendered, re.M)
    assert "X-Webfarm-Proxy" not in rendered  # the secret itself lives in the included file only


def test_render_version_hidden_and_request_id_passed(rendered: str) -> None:
    assert re.search(r"^\s*server_tokens off;", rendered, re.M)
    assert re.search(r"^\s*proxy_set_header X-Request-ID \$request_id;", rendered, re.M)
    assert re.search(r"^\s*add_header X-Request-ID \$request_id always;", rendered, re.M)


SERVER_BLOCK = re.compile(r"^    server \{\n(.*?)^    \}$", re.M | re.S)


def test_render_only_the_allowed_hosts_reach_the_instances(config: FarmConfig) -> None:
    config = config.replace(allowed_hosts=("127.0.0.1", "farm.example"))
    rendered = render_nginx_native(config)
    assert nginx_test(rendered, config.state_dir).returncode == 0
    by_port: dict[str, list[str]] = {}
    for block in SERVER_BLOCK.findall(rendered):
        [port] = re.findall(r"^\s*listen 127\.0\.0\.1:(\d+)\b", block, re.M)
        by_port.setdefault(port, []).append(block)
    # nginx's status server, for its exporter: loopback, stub_status and nothing else (no instance behind it).
    [status] = by_port.pop(str(config.nginx_status_port))
    assert "stub_status;" in status
    assert "proxy_pass" not in status
    assert set(by_port) == {str(config.http_port), str(config.https_port)}
    for blocks in by_port.values():
        [refusing] = [b for b in blocks if re.search(r"^\s*listen \S+( ssl)? default_server;", b, re.M)]
        [ours] = [b for b in blocks if b is not refusing]
        assert "proxy_pass" not in refusing  # nothing behind it
        assert "alias" not in refusing
        assert re.search(r"^\s*return 421 '\{\"detail\":\"unknown host\"\}\\n';", refusing, re.M)
        assert re.findall(r"^\s*server_name (.*);", ours, re.M) == ["127.0.0.1 farm.example"]


def test_render_every_error_page_a_uri_in_json(rendered: str) -> None:
    """A named location (@x) fails for a request whose line nginx could not parse: it has no URI."""
    assert not re.search(r"^\s*(error_page [^;]*@|location @)", rendered, re.M)
    pages = re.findall(r"^\s*error_page ([\d ]+?) (?:=(\d+) )?(\S+);", rendered, re.M)
    status = {int(code): int(new or code) for codes, new, _ in pages for code in codes.split()}
    # What nginx itself answers a client's malformed or refused request, and a dead farm (502, 504).
    for code in (400, 403, 404, 405, 408, 411, 413, 414, 460, 494, 497, 501, 502, 504, 505):  # 460: limit_req's
        assert code in status, code
        assert 400 <= status[code] < 500 or code in (502, 504), code
    for uri in {uri for *_, uri in pages}:
        location = rendered.split(f"location = {uri} {{")[1].split("\n        }")[0]
        assert "internal;" in location
        assert "default_type application/json;" in location


def test_render_only_uvicorn_s_400_replaced_the_app_s_errors_passed_on(rendered: str) -> None:
    """uvicorn's own 400 is text/plain; the app's 401, 403, 409, 422, 429 and 503 carry their details and headers."""
    proxying = [block for block in rendered.split("location ")[1:] if "proxy_pass" in block]
    assert len(proxying) == 4  # `/` and the password endpoints, in the HTTP and the HTTPS server
    for block in proxying:
        assert re.search(r"^\s*proxy_intercept_errors on;", block, re.M)
        codes = {int(c) for line in re.findall(r"^\s*error_page ([\d ]+?) ", block, re.M) for c in line.split()}
        assert 400 in codes
        assert codes <= {400, 408, 411, 413, 460, 502, 504}, codes


def test_render_instances_accept_writes_from_the_farm_s_origins(config: FarmConfig) -> None:
    env = dict(instance_env(config, config.web[0]))
    origins = Settings(allowed_origins=env["ALLOWED_ORIGINS"]).allowed_origins
    assert set(origins) == {f"{scheme}://{host}:{port}" for host in config.allowed_hosts
                            for scheme, port in (("http", config.http_port), ("https", config.https_port))}
