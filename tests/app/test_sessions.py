"""The session stores on their own: the Redis one against a real redis-server, the in-process
one as the anti-pattern it is."""

import asyncio
import hashlib
import time

import pytest
from redis.asyncio import Redis

from app.sessions import (
    CartAdd,
    CartFull,
    CartRefused,
    Limits,
    MemorySessionStore,
    RedisSessionStore,
    Session,
    SessionKey,
    SessionStore,
)


def redis_store(redis: Redis, idle: int = 60, absolute: int = 3600, **limits: int) -> RedisSessionStore:
    return RedisSessionStore(redis, "test", Limits(idle, absolute, **limits))


def memory_store(**limits: int) -> MemorySessionStore:
    return MemorySessionStore(Limits(60, 3600, **limits))


async def start(store: SessionStore, username: str = "alice") -> tuple[SessionKey, Session]:
    started = await store.create(username, "web1", await store.epoch(username))
    assert started is not None
    return started


def test_new_key_has_256_random_bits() -> None:
    keys = {SessionKey.new() for _ in range(1000)}
    assert len({k.token for k in keys}) == 1000
    assert all(len(k.token) == 43 and SessionKey.parse(k.token) == k for k in keys)


@pytest.mark.parametrize("token", ["", "short", "A" * 42, "A" * 44, "A" * 42 + "=", "é" * 43, "A" * 42 + "\n"])
def test_parse_rejects_what_cannot_be_a_token(token: str) -> None:
    assert SessionKey.parse(token) is None


async def test_redis_store_keeps_only_a_hash_of_the_token(redis: Redis) -> None:
    key, _ = await start(redis_store(redis))
    token = key.token
    keys = [k async for k in redis.scan_iter("test:*")]
    assert f"test:session:{hashlib.sha256(token.encode()).hexdigest()}" in keys
    dump = " ".join(keys)
    for key in keys:
        if await redis.type(key) == "hash":
            dump += " ".join(map(str, (await redis.hgetall(key)).values()))
    assert token not in dump


def user() -> str:
    return SessionKey.new().token[:10].lower()


@pytest.fixture(params=["redis", "memory"])
def store(request: pytest.FixtureRequest, redis: Redis) -> SessionStore:
    """Both stores apply the same rules; the in-process one only fails at being shared."""
    return redis_store(redis, max_cart_items=3, max_item_qty=10) if request.param == "redis" \
        else memory_store(max_cart_items=3, max_item_qty=10)


async def test_touch_counts_requests_and_slides_the_idle_ttl(redis: Redis) -> None:
    store = redis_store(redis, idle=60)
    key, created = await start(store)
    redis_key = f"test:session:{key.id}"
    await redis.pexpire(redis_key, 5000)
    first = await store.touch(key)
    second = await store.touch(key, CartAdd("apple", 3))
    assert first is not None
    assert second is not None
    assert (first.requests, second.requests) == (1, 2)
    assert second.cart == {"apple": 3}
    assert second.created_on == "web1"
    assert second.created_at == created.created_at
    assert 55_000 < await redis.pttl(redis_key) <= 60_000


async def test_absolute_timeout_ends_a_busy_session(redis: Redis) -> None:
    store = redis_store(redis, idle=60, absolute=1)
    key, _ = await start(store)
    assert await store.touch(key) is not None
    await asyncio.sleep(1.1)
    assert await store.touch(key) is None
    assert not await redis.exists(f"test:session:{key.id}")


async def test_touch_after_delete_never_recreates_the_session(redis: Redis) -> None:
    store = redis_store(redis)
    key, _ = await start(store)
    await store.delete(key)
    assert await store.touch(key, CartAdd("apple", 1)) is None
    assert not await redis.exists(f"test:session:{key.id}")


async def test_concurrent_adds_are_atomic(redis: Redis) -> None:
    store = redis_store(redis)
    key, _ = await start(store)
    await asyncio.gather(*(store.touch(key, CartAdd("apple", 1)) for _ in range(200)))
    session = await store.touch(key)
    assert session is not None
    assert session.cart == {"apple": 200}
    assert session.requests == 201


async def test_an_add_repeated_with_its_request_id_applies_once(store: SessionStore) -> None:
    key, _ = await start(store, user())
    for _ in range(3):
        session = await store.touch(key, CartAdd("apple", 2, request_id="req-1"))
    assert session is not None
    assert session.cart == {"apple": 2}
    assert session.requests == 1  # the repeats are not requests of their own either
    again = await store.touch(key, CartAdd("apple", 2, request_id="req-2"))
    assert again is not None
    assert again.cart == {"apple": 4}


async def test_cart_limits_refuse_and_change_nothing(store: SessionStore) -> None:
    key, _ = await start(store, user())
    for sku in ("a", "b", "c"):
        await store.touch(key, CartAdd(sku, 1))
    with pytest.raises(CartFull) as refused:
        await store.touch(key, CartAdd("d", 1))
    assert refused.value.reason is CartRefused.TOO_MANY_ITEMS
    with pytest.raises(CartFull) as refused:
        await store.touch(key, CartAdd("a", 10))
    assert refused.value.reason is CartRefused.QUANTITY_TOO_HIGH
    session = await store.touch(key, CartAdd("a", 9))  # exactly at the limit
    assert session is not None
    assert session.cart == {"a": 10, "b": 1, "c": 1}


async def test_create_waits_for_replicas_only_when_asked(redis: Redis) -> None:
    """This Redis has no replica: WAIT 1 holds the login for its whole timeout, then lets it through."""
    waiting = RedisSessionStore(redis, "test", Limits(60, 3600), replicas_to_wait=1, wait_timeout_ms=300)
    started = time.monotonic()
    key, _ = await start(waiting)
    assert time.monotonic() - started >= 0.3
    assert await waiting.touch(key) is not None
    started = time.monotonic()
    key, _ = await start(redis_store(redis))
    assert time.monotonic() - started < 0.1
    assert await redis_store(redis).touch(key) is not None


async def test_delete_user_ends_all_of_a_users_sessions(store: SessionStore) -> None:
    alice, bob = user(), user()
    alices = [(await start(store, alice))[0] for _ in range(3)]
    bobs, _ = await start(store, bob)
    assert await store.delete_user(alice) == 3
    assert all([await store.touch(k) is None for k in alices])
    assert await store.touch(bobs) is not None
    assert await store.touch((await start(store, alice))[0]) is not None  # a new login works


async def test_a_login_that_read_the_epoch_before_delete_user_cannot_start(store: SessionStore) -> None:
    alice = user()
    epoch = await store.epoch(alice)  # the login read it, then spent its time on argon2 ...
    await store.delete_user(alice)  # ... while the user signed out everywhere
    assert await store.create(alice, "web1", epoch) is None


async def test_a_session_outside_the_index_dies_with_the_epoch(redis: Redis) -> None:
    """What the index misses (a login landing between its read and its delete) the epoch still ends."""
    store, alice = redis_store(redis), user()
    key, _ = await start(store, alice)
    await redis.delete(f"test:user-sessions:{alice}")
    await store.delete_user(alice)
    assert await store.touch(key) is None


async def test_memory_store_is_private_to_its_process() -> None:
    web1, web2 = memory_store(), memory_store()
    key, _ = await start(web1)
    assert await web1.touch(key) is not None
    assert await web2.touch(key) is None
