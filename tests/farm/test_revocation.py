"""Ending sessions on real farms: logout, logout everywhere and a password change end what they
must on every instance at once - also while requests and logins of the same user race them.

The races send from a loopback address of their own (127.0.0.x; nginx forwards it as the
client's), so the per-address limits they trip do not spill into the other tests on the shared farm."""

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import datetime
from functools import partial

import httpx
import pytest
import redis

from app.config import DEMO_PASSWORD, DEMO_USERNAME, SESSION_COOKIE
from app.keys import uid
from farmctl.runtime import Farm
from tests.farm.users import (
    PASSWORD,
    client_from,
    login,
    new_username,
    register,
    session_key,
    signed_in,
    source_address,
    store_of,
    with_cookie,
)

pytestmark = pytest.mark.farm


def test_logout_on_one_instance_ends_the_session_on_every_instance(any_farm: Farm) -> None:
    web1, web2, web3 = any_farm.config.web
    with signed_in(web1.url) as client:
        cookies = httpx.Cookies(client.cookies)
        assert client.post("/api/logout").status_code == 204
    for inst in (web1, web2, web3):
        with with_cookie(inst.url, cookies) as stale:
            assert stale.get("/api/me").status_code == 401
            assert stale.get("/api/cart").status_code == 401


def test_logout_everywhere_ends_every_session_of_the_user(any_farm: Farm) -> None:
    base, username = any_farm.config.balancer_url, new_username()
    with signed_in(base, username) as laptop, httpx.Client(base_url=base) as phone, \
            httpx.Client(base_url=base) as stranger:
        assert login(phone, username).status_code == 200
        assert login(stranger, DEMO_USERNAME, DEMO_PASSWORD).status_code == 200
        assert laptop.post("/api/logout/everywhere").status_code == 204
        for inst in any_farm.config.web:
            with with_cookie(inst.url, phone.cookies) as on_instance:
                assert on_instance.get("/api/me").status_code == 401
        assert laptop.get("/api/me").status_code == 401
        assert stranger.get("/api/me").status_code == 200


def test_password_change_ends_other_sessions_and_rotates_this_one(any_farm: Farm) -> None:
    base, username = any_farm.config.balancer_url, new_username()
    with signed_in(base, username) as laptop, httpx.Client(base_url=base) as phone:
        assert login(phone, username).status_code == 200
        before = laptop.cookies[SESSION_COOKIE]
        wrong = laptop.post("/api/password", json={"current_password": "not-it-at-all", "new_password": "n" * 12})
        assert wrong.status_code == 401
        changed = laptop.post("/api/password", json={"current_password": PASSWORD, "new_password": "n" * 12})
        assert changed.status_code == 200
        assert laptop.cookies[SESSION_COOKIE] != before
        assert laptop.get("/api/me").status_code == 200
        assert phone.get("/api/me").status_code == 401
        assert login(phone, username).status_code == 401
        assert login(phone, username, "n" * 12).status_code == 200


def test_logout_racing_a_stream_of_requests_leaves_the_session_dead(every_farm: Farm) -> None:
    with signed_in(every_farm.config.balancer_url) as owner, closing(store_of(every_farm)) as store:
        cookies = httpx.Cookies(owner.cookies)
        key = session_key(every_farm.config.key_prefix, owner.cookies[SESSION_COOKIE])
        stop = threading.Event()
        seen: Counter[int] = Counter()

        def hammer(url: str) -> None:
            with with_cookie(url, cookies) as client:
                while not stop.is_set():
                    seen[client.post("/api/cart/items", json={"sku": "apple", "qty": 1}).status_code] += 1
                    seen[client.get("/api/me").status_code] += 1

        with ThreadPoolExecutor(6) as pool:
            for inst in every_farm.config.web * 2:
                pool.submit(hammer, inst.url)
            time.sleep(0.5)
            assert owner.post("/api/logout").status_code == 204
            time.sleep(0.5)
            stop.set()
    assert seen[200] > 0
    assert seen[401] > 0
    assert not store.exists(key)
    for inst in every_farm.config.web:
        with with_cookie(inst.url, cookies) as late:
            assert late.get("/api/me").status_code == 401


def sessions_survive(base: str, cookies: list[str]) -> list[str]:
    alive = []
    for cookie in cookies:
        with httpx.Client(base_url=base, cookies={SESSION_COOKIE: cookie}) as client:
            if client.get("/api/me").status_code == 200:
                alive.append(cookie)
    return alive


def logins_during(base: str, username: str, address: str, end: Callable[[], httpx.Response]) -> list[str]:
    """Log in as `username` over and over from three clients while `end` (a sign-out or a password
    change) runs; returns the cookies of the logins that STARTED before `end` answered and got a 200."""
    started_before_end: list[str] = []
    stop = threading.Event()
    ended_at = [float("inf")]

    def keep_logging_in() -> None:
        with client_from(base, address) as client:
            while not stop.is_set():
                started = time.monotonic()
                response = login(client, username)
                if response.status_code == 200 and started < ended_at[0]:
                    started_before_end.append(response.cookies[SESSION_COOKIE])

    with ThreadPoolExecutor(3) as pool:
        for _ in range(3):
            pool.submit(keep_logging_in)
        time.sleep(0.15)
        assert end().status_code in (200, 204)
        ended_at[0] = time.monotonic()
        time.sleep(0.1)
        stop.set()
    return started_before_end


def created_at_ms(base: str, cookie: str) -> int:
    with httpx.Client(base_url=base, cookies={SESSION_COOKIE: cookie}) as client:
        return round(datetime.fromisoformat(client.get("/api/me").json()["session_created_at"]).timestamp() * 1000)


#: Races run per test: fewer on the cluster farm, whose scripts are the single Redis's (tests/app runs
#: the store's race tests on both in full); enough that logins are in flight at the ending.
RACES = {"single": 10, "cluster": 4}


def test_sign_out_everywhere_leaves_no_session_from_before_it_and_none_outside_its_reach(store_farm: Farm) -> None:
    """Logins of the same user race the sign-out. A login that overlaps it may land on either side
    of it (it is one atomic step: the epoch moves on); what must never happen is a session created
    before the sign-out surviving it, or - the bug of the session index - a session that a later
    sign-out everywhere cannot reach."""
    base, raced = store_farm.config.balancer_url, 0
    with closing(store_of(store_farm)) as store:
        for _ in range(RACES[store_farm.config.redis_mode] * 3 // 2):
            username, address = new_username(), source_address()
            with client_from(base, address) as laptop:
                register(laptop, username)
                assert login(laptop, username).status_code == 200
                sent_at_ms = [0]

                def sign_out(client: httpx.Client = laptop, sent_at_ms: list[int] = sent_at_ms) -> httpx.Response:
                    seconds, micros = store.time()
                    sent_at_ms[0] = seconds * 1000 + micros // 1000
                    return client.post("/api/logout/everywhere")

                in_flight = logins_during(base, username, address, sign_out)
                raced += len(in_flight)
                survivors = sessions_survive(base, in_flight)
                assert all(created_at_ms(base, c) >= sent_at_ms[0] for c in survivors)
                assert login(laptop, username).status_code == 200
                assert laptop.post("/api/logout/everywhere").status_code == 204
                assert sessions_survive(base, in_flight) == []
    assert raced > 0  # the race was run: logins were in flight at the sign-out


CHANGE = {"current_password": PASSWORD, "new_password": "n" * 12}


def test_a_password_change_ends_the_sessions_of_old_password_logins_in_flight(store_farm: Farm) -> None:
    """A thief keeps logging in with the old password while the owner changes it: every session
    the old password opened is dead once the change has answered."""
    base, raced = store_farm.config.balancer_url, 0
    for _ in range(RACES[store_farm.config.redis_mode]):
        username, address = new_username(), source_address()
        with client_from(base, address) as owner:
            register(owner, username)
            assert login(owner, username).status_code == 200
            in_flight = logins_during(base, username, address, partial(owner.post, "/api/password", json=CHANGE))
            raced += len(in_flight)
            assert sessions_survive(base, in_flight) == []
            assert owner.get("/api/me").status_code == 200
    assert raced > 0




def indexes_naming(store: redis.Redis, prefix: str, username: str) -> dict[str, int]:
    """Every set or sorted set of the store whose key names `username` (or its id), with its size."""
    sizes = {"set": store.scard, "zset": store.zcard}
    return {key: sizes[kind](key) for name in (username, uid(username))
            for key in store.scan_iter(f"{prefix}:*{name}*", count=1000) if (kind := store.type(key)) in sizes}


def test_sessions_that_end_leave_nothing_in_the_users_index(store_farm: Farm) -> None:
    """Sign in and out 30 times: no index of the user keeps the 30 ended sessions' ids."""
    farm, base, username = store_farm, store_farm.config.balancer_url, new_username()
    with client_from(base) as client, closing(store_of(farm)) as store:
        register(client, username)
        for _ in range(30):
            assert login(client, username).status_code == 200
            assert client.post("/api/logout").status_code == 204
        held = indexes_naming(store, farm.config.key_prefix, username)
        assert all(size <= 1 for size in held.values()), held  # one known address at most, no session
        assert login(client, username).status_code == 200
        assert client.post("/api/logout/everywhere").status_code == 204
        assert indexes_naming(store, farm.config.key_prefix, username) == held
