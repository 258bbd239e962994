"""A store at its limits, on real farms: a Redis full to its maxmemory and one that cannot write its
AOF still serve the reads that need no write and say why they refuse the rest; a logout either ends
the session everywhere or answers an error with the session still usable; the health loop and the
farm panel tell "store refusing writes" from "instances down"; and the records a user's requests
leave behind are few and short-lived."""

import hashlib
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis

from app.config import SESSION_COOKIE, Settings
from app.sessions import StoreState
from app.throttle import KNOWN_ADDRESSES, KNOWN_PAIR_MS
from farmctl.runtime import Farm
from farmctl.wait import wait_until
from tests.conftest import FarmFactory
from tests.farm.users import PASSWORD, client_from, login, new_username, register, source_address, with_cookie

pytestmark = pytest.mark.farm


def signed_in_client(base: str) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=10)
    register(client, username := new_username())
    assert login(client, username).status_code == 200
    return client


def assert_refused(response: httpx.Response, state: StoreState) -> None:
    assert response.status_code == 503, response.text
    assert response.json() == {"detail": state.refusal}
    assert response.headers["retry-after"]


def assert_serving_through(farm: Farm, state: StoreState, cookies: httpx.Cookies) -> None:
    """Every instance reads the session, says it is ready with the store's state, and the panel shows
    the store's state; the health loop keeps every instance in the rotation."""
    for inst in farm.config.web:
        with with_cookie(inst.url, cookies) as client:
            assert client.get("/api/me").status_code == 200
            assert client.get("/api/cart").status_code == 200
            ready = client.get("/readyz")
            assert (ready.status_code, ready.json()["status"]) == (200, f"store {state}")
            assert client.get("/api/farm").json()["store"] == state
    time.sleep(1.5)  # three probe rounds: FALL is 2
    assert farm.out_of_rotation() == {}


@contextmanager
def store_full(farm: Farm) -> Iterator[None]:
    """Redis at its maxmemory (noeviction): writes refused with OOM, deletes allowed."""
    with redis.Redis.from_url(farm.config.redis_url) as store:
        limit = store.config_get("maxmemory")["maxmemory"]
        store.config_set("maxmemory", 1)
        try:
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                store.set("probe", 1)
            yield
        finally:
            store.config_set("maxmemory", limit)


@pytest.fixture(scope="module")
def full_farm(farm_factory: FarmFactory) -> Farm:
    return farm_factory(3)


def test_a_full_store_serves_reads_and_logouts_and_says_it_is_full(full_farm: Farm) -> None:
    farm = full_farm
    base = farm.config.balancer_url
    reader, leaving = signed_in_client(base), [signed_in_client(base) for _ in range(7)]
    with store_full(farm):
        assert_serving_through(farm, StoreState.FULL, reader.cookies)
        assert_refused(reader.post("/api/cart/items", json={"sku": "plum", "qty": 1}), StoreState.FULL)
        with client_from(base) as stranger:
            assert_refused(stranger.post("/api/register", json={"username": new_username(),
                                                                "password": PASSWORD}), StoreState.FULL)
        for client in leaving:
            cookies = httpx.Cookies(client.cookies)
            logout = client.post("/api/logout")
            assert logout.status_code == 204, logout.text
            assert SESSION_COOKIE not in client.cookies
            for inst in farm.config.web:
                with with_cookie(inst.url, cookies) as stale:
                    assert stale.get("/api/me").status_code == 401
    for client in leaving:
        client.close()
    added = reader.post("/api/cart/items", json={"sku": "plum", "qty": 1})
    assert added.json() == {"items": {"plum": 1}}
    reader.close()


@pytest.fixture(scope="module")
def aof_farm(farm_factory: FarmFactory) -> Iterator[Farm]:
    """A farm whose Redis keeps its AOF on a small disk of its own (a tmpfs), which the test fills."""
    farm = farm_factory(3, start=False)
    disk = farm.config.state_dir / "redis"
    disk.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], check=False,
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): no disk to fill")
    try:
        farm.up()
        yield farm
    finally:
        farm.down()
        subprocess.run(["umount", str(disk)], check=True)


@contextmanager
def disk_full(farm: Farm) -> Iterator[None]:
    """Redis's AOF disk full: Redis answers MISCONF to every write (and to PING) until space returns."""
    ballast = farm.config.state_dir / "redis" / "ballast"
    with redis.Redis.from_url(farm.config.redis_url) as store:
        with ballast.open("wb") as fill:
            try:
                while fill.write(b"\0" * 65536):
                    fill.flush()
            except OSError:
                pass

        def refusing() -> bool:
            try:
                store.set("probe", 1)
            except redis.exceptions.ResponseError as exc:
                return str(exc).startswith("MISCONF")
            return False

        assert wait_until(refusing, 10, interval_s=0.1)
        try:
            yield
        finally:
            Path(ballast).unlink()
            assert wait_until(lambda: not refusing(), 10, interval_s=0.05)


def test_a_store_that_cannot_write_its_aof_refuses_logout_and_keeps_the_session(aof_farm: Farm) -> None:
    """Never a 204 with the session alive, never a 503 with it dead."""
    farm = aof_farm
    base = farm.config.balancer_url
    users = [signed_in_client(base) for _ in range(5)]
    with disk_full(farm):
        assert_serving_through(farm, StoreState.NOT_PERSISTING, users[0].cookies)
        for client in users:
            cookies = httpx.Cookies(client.cookies)
            assert_refused(client.post("/api/logout"), StoreState.NOT_PERSISTING)
            assert client.cookies == cookies
            for inst in farm.config.web:
                with with_cookie(inst.url, cookies) as same:
                    assert same.get("/api/me").status_code == 200
    for client in users:
        cookies = httpx.Cookies(client.cookies)
        assert client.post("/api/logout").status_code == 204
        for inst in farm.config.web:
            with with_cookie(inst.url, cookies) as stale:
                assert stale.get("/api/me").status_code == 401
        client.close()


def session_id(client: httpx.Client) -> str:
    return hashlib.sha256(client.cookies[SESSION_COOKIE].encode()).hexdigest()


def test_idempotency_records_are_one_short_lived_key_per_session_gone_at_logout(farm: Farm,
                                                                                 store: redis.Redis) -> None:
    prefix = farm.config.key_prefix
    with client_from(farm.config.balancer_url) as client:
        register(client, username := new_username())
        assert login(client, username).status_code == 200
        sid = session_id(client)
        for i in range(5):
            for _ in range(2):  # the same add, and its retry
                assert client.post("/api/cart/items", json={"sku": "plum", "qty": 1},
                                   headers={"Idempotency-Key": f"add-{i}-{sid[:8]}"}).status_code == 200
        assert client.get("/api/cart").json() == {"items": {"plum": 5}}
        records = list(store.scan_iter(f"{prefix}:*applied:{sid}*"))
        assert len(records) == 1, records
        assert 0 < store.pttl(records[0]) <= Settings().idempotency_window_s * 1000
        assert client.post("/api/logout").status_code == 204
        assert list(store.scan_iter(f"{prefix}:*applied:{sid}*")) == []


def test_known_address_records_are_one_bounded_key_per_account(farm: Farm, store: redis.Redis) -> None:
    base, username = farm.config.balancer_url, new_username()
    with client_from(base) as client:
        register(client, username)
    for _ in range(KNOWN_ADDRESSES + 5):
        with client_from(base, source_address()) as client:
            assert login(client, username).status_code == 200
            assert client.post("/api/logout").status_code == 204
    records = list(store.scan_iter(f"{farm.config.key_prefix}:*login-known:{username}*"))
    assert len(records) == 1, records
    assert store.zcard(records[0]) == KNOWN_ADDRESSES
    assert 0 < store.pttl(records[0]) <= KNOWN_PAIR_MS
