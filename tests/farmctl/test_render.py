"""The native nginx config: accepted by the real `nginx -t`, and still carrying the failover directives."""

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from app.config import Settings
from farmctl.config import APP_KEEPALIVE_S, FarmConfig
from farmctl.native.render import proxy_secret_path, render_nginx_native, require_binary
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
    assert f"ssl_certificate {config.state_dir}/tls/cert.pem;" in https


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
