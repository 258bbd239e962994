"""What a request can make the farm spend: bodies and headers refused at the balancer and at an
instance before they are read, a cart's size, a username's length in the store's keys, and the
sessions one account can make the store keep and its sign-outs sweep."""

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import psutil
import pytest
import redis

from app.config import CART_MAX_ITEMS, CART_MAX_QTY, SESSION_COOKIE, Settings
from app.redis_client import connect_redis
from app.sessions import Limits, RedisSessionStore, SessionKey
from farmctl.runtime import Farm
from tests.farm.users import CSRF_FIELD, PASSWORD, client_from, login, new_username, register, signed_in

pytestmark = pytest.mark.farm

#: "Blocks Redis no more than a few milliseconds": no single command may take this long (SLOWLOG).
#: Alone they stay under 5 ms; a fresh-clone CI on the busy 2-core machine saw one of 10.3 ms
#: (preempted). The sweep this replaced took 35-120 ms per command (the issue: a 42 ms ZREM).
SLOW_COMMAND_US = 20_000
#: Well inside the request deadline (1.5 s); the issue measured 739 ms at 20,000 sessions.
SIGN_OUT_BOUND_S = 0.3
#: A password change also checks the old password and hashes the new one (argon2, twice): inside the
#: deadline still; at 20,000 sessions it answered 503 after 1.98 s.
PASSWORD_CHANGE_BOUND_S = 1.0
#: A bystander's read during the sign-out; the issue measured 484 ms.
BYSTANDER_BOUND_S = 0.15


def instance_rss_mb(farm: Farm, name: str) -> float:
    """The RSS of the instance's process tree (under Docker its pid is its container's init's)."""
    root = psutil.Process(farm.pid(name))
    return sum(p.memory_info().rss for p in (root, *root.children(recursive=True))) / 2**20


def test_a_huge_body_sent_to_an_instance_is_refused_before_it_is_read(any_farm: Farm) -> None:
    web1 = any_farm.config.web[0]
    before = instance_rss_mb(any_farm, web1.name)
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
    assert instance_rss_mb(any_farm, web1.name) < before + 20


def test_oversized_body_is_413_from_the_balancer(api: httpx.Client) -> None:
    response = api.post("/api/login", content=b"x" * 100_000, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json() == {"detail": "request body too large"}


def test_too_many_headers_sent_to_an_instance_are_a_431(any_farm: Farm) -> None:
    headers = [(f"x-h{i}", "v") for i in range(1000)]
    response = httpx.get(f"{any_farm.config.web[0].url}/api/me", headers=headers)
    assert response.status_code == 431
    assert response.json() == {"detail": "request headers too large"}


def test_an_8kb_cookie_is_a_json_431_from_the_balancer(any_farm: Farm) -> None:
    cookie = f"{SESSION_COOKIE}=" + "a" * 9000
    response = httpx.get(f"{any_farm.config.balancer_url}/api/me", headers={"cookie": cookie})
    assert response.status_code == 431
    assert response.json() == {"detail": "request headers too large"}


def test_a_cart_has_a_size_limit_answered_with_a_clear_409(any_farm: Farm) -> None:
    with signed_in(any_farm.config.balancer_url) as client:
        for i in range(CART_MAX_ITEMS):
            assert client.post("/api/cart/items", json={"sku": f"s{i}", "qty": 1}).status_code == 200
        full = client.post("/api/cart/items", json={"sku": "one-more", "qty": 1})
        assert full.status_code == 409
        assert full.json() == {"detail": "too many different items in the cart"}
        fit = (CART_MAX_QTY - 1) // 100  # adds of 100 (the most one add may ask for) that fit on s0's 1
        for _ in range(fit):
            assert client.post("/api/cart/items", json={"sku": "s0", "qty": 100}).status_code == 200
        too_many = client.post("/api/cart/items", json={"sku": "s0", "qty": 100})
        assert too_many.json() == {"detail": "quantity of one item too high"}
        cart = client.get("/api/cart").json()["items"]
        assert len(cart) == CART_MAX_ITEMS
        assert cart["s0"] == 1 + fit * 100


def test_the_login_form_validates_usernames_as_the_api_does(farm: Farm) -> None:
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
        assert max((len(k) for k in store.scan_iter(f"{farm.config.key_prefix}:*", count=1000)), default=0) < 200



def sign_in_many(url: str, prefix: str, username: str, times: int) -> list[SessionKey]:
    """`username` signed in `times` times, by the store's own create (a login less its argon2 hash)."""
    settings = Settings()

    async def run() -> list[SessionKey]:
        client = connect_redis(Settings(redis_url=url, redis_pool_timeout_s=60, redis_connect_timeout_s=10,
                                        redis_socket_timeout_s=10))
        store = RedisSessionStore(client, prefix, Limits(settings.session_idle_timeout_s,
                                                         settings.session_absolute_timeout_s))
        epoch, keys = await store.epoch(username), []
        for done in range(0, times, 500):
            started = await asyncio.gather(*(store.create(username, "test", epoch)
                                             for _ in range(min(500, times - done))))
            keys += [s[0] for s in started if s]
        await client.aclose()
        return keys

    return asyncio.run(run())


def alive(store: redis.Redis, prefix: str, keys: list[SessionKey]) -> int:
    with store.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.exists(RedisSessionStore.key_in(prefix, key))
        return sum(pipe.execute())


@contextmanager
def bystander(base: str) -> Iterator[list[float]]:
    """Another user reading their cart (a store round trip each) as fast as they can; yields their latencies."""
    latencies: list[float] = []
    stop = threading.Event()
    with signed_in(base) as client:
        def read() -> None:
            while not stop.is_set():
                started = time.monotonic()
                assert client.get("/api/cart").status_code == 200
                latencies.append(time.monotonic() - started)

        thread = threading.Thread(target=read)
        thread.start()
        time.sleep(0.3)
        latencies.clear()  # only what overlaps the block
        try:
            yield latencies
        finally:
            time.sleep(0.2)
            stop.set()
            thread.join()


def slowest_command_us(store: redis.Redis) -> int:
    return max((int(entry["duration"]) for entry in store.slowlog_get(128)), default=0)


def test_one_account_signed_in_20000_times_keeps_a_cap_and_signs_out_in_milliseconds(farm: Farm) -> None:
    """The cap ends the oldest sessions as new ones start, so what sign-out-everywhere and a password
    change have to end stays small whatever the number of logins: each answers well inside the
    request deadline, blocks Redis for a few milliseconds at most, and a bystander does not notice.
    Natively only: it is the store's scripts that it measures, the same under any runtime (17 s more
    of `make test` under Docker, for the same figures)."""
    base, prefix, username = farm.config.balancer_url, farm.config.key_prefix, new_username()
    with redis.Redis.from_url(farm.config.redis_url, decode_responses=True) as store, \
            client_from(base) as owner:
        slower_than = store.config_get("slowlog-log-slower-than")["slowlog-log-slower-than"]
        store.config_set("slowlog-log-slower-than", SLOW_COMMAND_US)
        try:
            register(owner, username)
            for end in ("password", "everywhere"):
                sessions = sign_in_many(farm.config.redis_url, prefix, username, 20_000)
                assert login(owner, username, *(("n" * 12,) if end == "everywhere" else ())).status_code == 200
                still = alive(store, prefix, sessions)
                assert still < Settings().session_max_per_account, still
                store.slowlog_reset()
                with bystander(base) as latencies:
                    started = time.monotonic()
                    response = owner.post("/api/password", json={"current_password": PASSWORD,
                                                                 "new_password": "n" * 12}) \
                        if end == "password" else owner.post("/api/logout/everywhere")
                    took = time.monotonic() - started
                slowest = slowest_command_us(store)
                print(f"{end}: {response.status_code} in {took * 1000:.0f} ms with {still} sessions alive; "
                      f"slowest Redis command {slowest} us; bystander max {max(latencies) * 1000:.0f} ms "
                      f"of {len(latencies)} reads")
                assert response.status_code == (200 if end == "password" else 204), response.text
                assert took < (PASSWORD_CHANGE_BOUND_S if end == "password" else SIGN_OUT_BOUND_S)
                assert slowest < SLOW_COMMAND_US
                assert max(latencies) < BYSTANDER_BOUND_S
                assert alive(store, prefix, sessions) == 0
        finally:
            store.config_set("slowlog-log-slower-than", slower_than)
