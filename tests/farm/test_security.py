"""The session rules OWASP asks for, and the concurrency hazards of a shared store, on real farms."""

import hashlib
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from farmctl.native import NativeFarm
from tests.conftest import FarmFactory
from tests.farm.users import PASSWORD, new_username, signed_in, with_cookie

pytestmark = pytest.mark.farm


@pytest.fixture(scope="module")
def strict_farm(farm_factory: FarmFactory) -> NativeFarm:
    """Short timeouts and a small per-address allowance, so the limits can be reached in a test."""
    return farm_factory(2, extra_env={
        "SESSION_IDLE_TIMEOUT_S": "2", "SESSION_ABSOLUTE_TIMEOUT_S": "5",
        "LOGIN_MAX_FAILURES_PER_ADDRESS": "8",
    })


@pytest.fixture
def store(farm: NativeFarm) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(farm.config.redis_url, decode_responses=True)
    yield client
    client.close()


def login(client: httpx.Client, username: str, password: str = PASSWORD) -> httpx.Response:
    return client.post("/api/login", json={"username": username, "password": password})


def test_login_issues_a_new_id_so_a_planted_cookie_is_worthless(farm: NativeFarm) -> None:
    base = farm.config.balancer_url
    with signed_in(base) as attacker:
        planted = attacker.cookies["webfarm_session"]
    with signed_in(base) as victim_setup:
        victim_name = victim_setup.get("/api/me").json()["username"]
    with httpx.Client(base_url=base) as victim:
        victim.cookies.set("webfarm_session", planted, domain="127.0.0.1")
        assert login(victim, victim_name).status_code == 200
        fresh = victim.cookies["webfarm_session"]
        assert fresh != planted
        assert victim.get("/api/me").json()["username"] == victim_name
    with httpx.Client(base_url=base, cookies={"webfarm_session": planted}) as attacker_again:
        assert attacker_again.get("/api/me").status_code == 401  # the planted session ended with the login


def test_redis_holds_only_a_hash_of_the_token(farm: NativeFarm, store: redis.Redis) -> None:
    with signed_in(farm.config.balancer_url) as client:
        token = client.cookies["webfarm_session"]
    assert store.exists(f"webfarm:session:{hashlib.sha256(token.encode()).hexdigest()}")
    for key in store.scan_iter("webfarm:*"):
        assert token not in key
        if store.type(key) == "hash":
            assert token not in "".join(map(str, store.hgetall(key).values()))


def test_no_log_contains_a_raw_token(farm: NativeFarm) -> None:
    with signed_in(farm.config.balancer_url) as client:
        token = client.cookies["webfarm_session"]
        client.get("/api/me")
        client.get("/no-such-page")
    time.sleep(1.2)  # nginx flushes its access log every second
    logs = Path(farm.config.state_dir, "logs")
    assert not [p.name for p in logs.iterdir() if token in p.read_text(errors="replace")]


def test_idle_timeout_ends_a_quiet_session(strict_farm: NativeFarm) -> None:
    with signed_in(strict_farm.config.balancer_url) as client:
        assert client.get("/api/me").status_code == 200
        time.sleep(2.5)
        assert client.get("/api/me").status_code == 401


def test_absolute_timeout_ends_a_busy_session(strict_farm: NativeFarm) -> None:
    with signed_in(strict_farm.config.balancer_url) as client:
        started = time.monotonic()
        while time.monotonic() - started < 4.5:
            assert client.get("/api/me").status_code == 200
            time.sleep(0.5)
        time.sleep(1)
        assert client.get("/api/me").status_code == 401


def test_logout_everywhere_ends_every_session_of_the_user(farm: NativeFarm) -> None:
    base, username = farm.config.balancer_url, new_username()
    with signed_in(base, username) as laptop, httpx.Client(base_url=base) as phone, \
            httpx.Client(base_url=base) as stranger:
        assert login(phone, username).status_code == 200
        assert login(stranger, "demo", "demo-password").status_code == 200
        assert laptop.post("/api/logout/everywhere").status_code == 204
        for inst in farm.config.web:
            with with_cookie(inst.url, phone.cookies) as on_instance:
                assert on_instance.get("/api/me").status_code == 401
        assert laptop.get("/api/me").status_code == 401
        assert stranger.get("/api/me").status_code == 200


def test_password_change_ends_other_sessions_and_rotates_this_one(farm: NativeFarm) -> None:
    base, username = farm.config.balancer_url, new_username()
    with signed_in(base, username) as laptop, httpx.Client(base_url=base) as phone:
        assert login(phone, username).status_code == 200
        before = laptop.cookies["webfarm_session"]
        wrong = laptop.post("/api/password", json={"current_password": "not-it-at-all", "new_password": "n" * 12})
        assert wrong.status_code == 401
        changed = laptop.post("/api/password", json={"current_password": PASSWORD, "new_password": "n" * 12})
        assert changed.status_code == 200
        assert laptop.cookies["webfarm_session"] != before
        assert laptop.get("/api/me").status_code == 200
        assert phone.get("/api/me").status_code == 401
        assert login(phone, username).status_code == 401
        assert login(phone, username, "n" * 12).status_code == 200


def test_failed_logins_are_throttled_per_account_across_all_instances(farm: NativeFarm) -> None:
    username = new_username()
    with signed_in(farm.config.balancer_url, username) as client:
        served: Counter[str] = Counter()
        for _ in range(5):
            failed = login(client, username, "wrong-password")
            assert failed.status_code == 401
            served[failed.headers["x-served-by"]] += 1
        assert len(served) == 3  # the five failures were spread over every instance...
        blocked = login(client, username)  # ...and still add up to one allowance: even the right password waits
        assert blocked.status_code == 429
        assert 0 < int(blocked.headers["retry-after"]) <= 900
        assert login(client, "demo", "demo-password").status_code == 200  # other accounts are unaffected


def test_failed_logins_are_throttled_per_address_and_forwarded_for_cannot_be_forged(
        strict_farm: NativeFarm) -> None:
    base = strict_farm.config.balancer_url
    with httpx.Client(base_url=base) as client:
        for i in range(8):
            spoofed = {"x-forwarded-for": f"203.0.113.{i}"}
            response = client.post("/api/login", headers=spoofed,
                                   json={"username": new_username(), "password": "wrong-password"})
            assert response.status_code == 401
        assert login(client, "demo", "demo-password").status_code == 429
        direct = httpx.post(f"{strict_farm.config.web[0].url}/api/login", headers={"x-forwarded-for": "198.51.100.7"},
                            json={"username": "demo", "password": "demo-password"})
        assert direct.status_code == 429  # an instance ignores X-Forwarded-For from anyone but nginx
    # Another client address (127.0.0.3 is loopback too) has its own allowance: nginx forwards it.
    elsewhere = httpx.HTTPTransport(local_address="127.0.0.3")
    with httpx.Client(base_url=base, transport=elsewhere) as other:
        assert login(other, "demo", "demo-password").status_code == 200


def test_https_cookie_is_secure_and_host_prefixed_with_hsts(farm: NativeFarm) -> None:
    assert farm.config.https_url
    trust = ssl.create_default_context(cafile=farm.config.state_dir / "tls" / "cert.pem")
    with httpx.Client(base_url=farm.config.https_url, verify=trust) as client:
        response = login(client, "demo", "demo-password")
        assert response.status_code == 200
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("__Host-webfarm_session=")
        assert "Secure" in cookie
        assert response.headers["strict-transport-security"].startswith("max-age=")
        me = client.get("/api/me", headers={"cookie": cookie.split(";")[0]})
        assert me.status_code == 200
    plain = httpx.post(f"{farm.config.balancer_url}/api/login", json={"username": "demo", "password": "demo-password"})
    assert "Secure" not in plain.headers["set-cookie"]
    assert "strict-transport-security" not in plain.headers
    # Once per process: a log spans the restarts of its instance, each of which may say it once.
    logs = [Path(farm.log_path(i.name)).read_text() for i in farm.config.web]
    warning = "plain HTTP: session cookies go out without Secure"
    assert all(log.count(warning) <= log.count("Started server process") for log in logs)
    assert any(warning in log for log in logs)


@pytest.mark.parametrize("headers", [{"origin": "https://evil.example"}, {"sec-fetch-site": "cross-site"},
                                     {"origin": "null"}])
def test_json_api_refuses_cross_site_writes(farm: NativeFarm, headers: dict[str, str]) -> None:
    with signed_in(farm.config.balancer_url) as client:
        refused = client.post("/api/cart/items", json={"sku": "apple", "qty": 1}, headers=headers)
        assert refused.status_code == 403
        assert refused.json() == {"detail": "cross-site request refused"}
        assert client.get("/api/cart").json() == {"items": {}}
        assert client.post("/api/logout", headers=headers).status_code == 403
        assert client.get("/api/me").status_code == 200
        same_site = {"origin": farm.config.balancer_url}
        assert client.post("/api/cart/items", json={"sku": "apple", "qty": 1}, headers=same_site).status_code == 200


def test_200_concurrent_adds_across_all_instances_all_count(farm: NativeFarm) -> None:
    with signed_in(farm.config.balancer_url) as owner:
        cookies = httpx.Cookies(owner.cookies)
    clients = [with_cookie(inst.url, cookies) for inst in farm.config.web]

    def add(i: int) -> int:
        return clients[i % len(clients)].post("/api/cart/items", json={"sku": f"sku{i % 4}", "qty": 1}).status_code

    with ThreadPoolExecutor(24) as pool:
        assert Counter(pool.map(add, range(200))) == {200: 200}
    assert clients[1].get("/api/cart").json() == {"items": {"sku0": 50, "sku1": 50, "sku2": 50, "sku3": 50}}
    for client in clients:
        client.close()


def test_logout_racing_a_stream_of_requests_leaves_the_session_dead(farm: NativeFarm, store: redis.Redis) -> None:
    with signed_in(farm.config.balancer_url) as owner:
        cookies = httpx.Cookies(owner.cookies)
        key = f"webfarm:session:{hashlib.sha256(owner.cookies['webfarm_session'].encode()).hexdigest()}"
        stop = threading.Event()
        seen: Counter[int] = Counter()

        def hammer(url: str) -> None:
            with with_cookie(url, cookies) as client:
                while not stop.is_set():
                    seen[client.post("/api/cart/items", json={"sku": "apple", "qty": 1}).status_code] += 1
                    seen[client.get("/api/me").status_code] += 1

        with ThreadPoolExecutor(6) as pool:
            for inst in farm.config.web * 2:
                pool.submit(hammer, inst.url)
            time.sleep(0.5)
            assert owner.post("/api/logout").status_code == 204
            time.sleep(0.5)
            stop.set()
    assert seen[200] > 0
    assert seen[401] > 0
    assert not store.exists(key)
    for inst in farm.config.web:
        with with_cookie(inst.url, cookies) as late:
            assert late.get("/api/me").status_code == 401
