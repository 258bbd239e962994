"""The session rules OWASP asks for, on real farms: a new id at login, only a hash of it in Redis
and none in a log, idle and absolute timeouts, a Secure host-only cookie over HTTPS, and forwarded
headers believed only from the balancer."""

import hashlib
import ssl
import time
from pathlib import Path

import httpx
import pytest
import redis

from app.config import DEMO_PASSWORD, DEMO_USERNAME, PROXY_HEADER, SESSION_COOKIE
from farmctl.runtime import Farm
from farmctl.secret import proxy_secret
from farmctl.tls import certificate_paths
from tests.conftest import FarmFactory
from tests.farm.users import client_from, login, new_username, register, session_key, signed_in

pytestmark = pytest.mark.farm


@pytest.fixture(scope="module")
def strict_farm(farm_factory: FarmFactory) -> Farm:
    """Short timeouts, so they can be reached in a test."""
    return farm_factory(2, extra_env={"SESSION_IDLE_TIMEOUT_S": "2", "SESSION_ABSOLUTE_TIMEOUT_S": "5"})


def test_login_issues_a_new_id_so_a_planted_cookie_is_worthless(farm: Farm) -> None:
    base = farm.config.balancer_url
    with signed_in(base) as attacker:
        planted = attacker.cookies[SESSION_COOKIE]
    with signed_in(base) as victim_setup:
        victim_name = victim_setup.get("/api/me").json()["username"]
    with httpx.Client(base_url=base) as victim:
        victim.cookies.set(SESSION_COOKIE, planted, domain="127.0.0.1")
        assert login(victim, victim_name).status_code == 200
        fresh = victim.cookies[SESSION_COOKIE]
        assert fresh != planted
        assert victim.get("/api/me").json()["username"] == victim_name
    with httpx.Client(base_url=base, cookies={SESSION_COOKIE: planted}) as attacker_again:
        assert attacker_again.get("/api/me").status_code == 401  # the planted session ended with the login


def test_redis_holds_only_a_hash_of_the_token(farm: Farm, store: redis.Redis) -> None:
    with signed_in(farm.config.balancer_url) as client:
        token = client.cookies[SESSION_COOKIE]
    key = session_key(farm.config.key_prefix, token)
    assert key.endswith(f":session:{hashlib.sha256(token.encode()).hexdigest()}")
    assert store.exists(key)
    for key in store.scan_iter(f"{farm.config.key_prefix}:*"):
        assert token not in key
        if store.type(key) == "hash":
            assert token not in "".join(map(str, store.hgetall(key).values()))


def test_no_log_contains_a_raw_token(farm: Farm) -> None:
    with signed_in(farm.config.balancer_url) as client:
        token = client.cookies[SESSION_COOKIE]
        client.get("/api/me")
        client.get("/no-such-page")
    time.sleep(1.2)  # nginx flushes its access log every second
    logs = Path(farm.config.state_dir, "logs")
    assert not [p.name for p in logs.iterdir() if token in p.read_text(errors="replace")]


def test_idle_timeout_ends_a_quiet_session(strict_farm: Farm) -> None:
    with signed_in(strict_farm.config.balancer_url) as client:
        assert client.get("/api/me").status_code == 200
        time.sleep(2.5)
        assert client.get("/api/me").status_code == 401


def test_absolute_timeout_ends_a_busy_session(strict_farm: Farm) -> None:
    with signed_in(strict_farm.config.balancer_url) as client:
        started = time.monotonic()
        while time.monotonic() - started < 4.5:
            assert client.get("/api/me").status_code == 200
            time.sleep(0.5)
        time.sleep(1)
        assert client.get("/api/me").status_code == 401


def test_https_cookie_is_secure_and_host_prefixed_with_hsts(farm: Farm) -> None:
    assert farm.config.https_url
    trust = ssl.create_default_context(cafile=certificate_paths(farm.config.state_dir)[0])
    with httpx.Client(base_url=farm.config.https_url, verify=trust) as client:
        response = login(client, DEMO_USERNAME, DEMO_PASSWORD)
        assert response.status_code == 200
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"__Host-{SESSION_COOKIE}=")
        assert "Secure" in cookie
        assert response.headers["strict-transport-security"].startswith("max-age=")
        me = client.get("/api/me", headers={"cookie": cookie.split(";")[0]})
        assert me.status_code == 200
    plain = httpx.post(f"{farm.config.balancer_url}/api/login",
                       json={"username": DEMO_USERNAME, "password": DEMO_PASSWORD})
    assert "Secure" not in plain.headers["set-cookie"]
    assert "strict-transport-security" not in plain.headers
    # Once per process: a log spans the restarts of its instance, each of which may say it once.
    logs = [Path(farm.log_path(i.name)).read_text() for i in farm.config.web]
    warning = "plain HTTP: session cookies go out without Secure"
    assert all(log.count(warning) <= log.count("Started server process") for log in logs)
    assert any(warning in log for log in logs)


FORGED = {"x-forwarded-for": "203.0.113.9", "x-forwarded-proto": "https"}


def test_a_local_process_cannot_pass_as_the_balancer(farm: Farm) -> None:
    """Straight to an instance, from 127.0.0.2 (where nginx once connected from): the forwarded
    headers are ignored - no Secure cookie over plain HTTP, and the throttle counts the real address."""
    web1, username = farm.config.web[0], new_username()
    with client_from(web1.url, "127.0.0.2") as local:
        cookie = login(local, DEMO_USERNAME, DEMO_PASSWORD, headers=FORGED).headers["set-cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}=")
        assert "secure" not in cookie.lower()
        register(local, username)
        answers = [login(local, username, "wrong-password", headers={**FORGED, "x-forwarded-for": f"198.51.100.{i}"})
                   .status_code for i in range(6)]
        assert answers == [401] * 5 + [429]  # one address, however many it claimed to be
        # The farm's own secret is what vouches for the balancer (the mechanism, shown working).
        secret = proxy_secret(farm.config.state_dir)
        vouched = login(local, DEMO_USERNAME, DEMO_PASSWORD, headers={**FORGED, PROXY_HEADER: secret})
        assert vouched.headers["set-cookie"].startswith(f"__Host-{SESSION_COOKIE}=")

