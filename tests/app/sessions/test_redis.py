"""The Redis store (app/sessions/redis.py) against a real redis-server: one atomic script per
request, TTLs that Redis enforces, and nothing in Redis that could be replayed as a session."""

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.sessions import CartAdd, Limits, RedisSessionStore, StoreState, refusal
from tests.app.sessions.stores import PREFIX, new_username, redis_store, start


async def test_redis_store_keeps_only_a_hash_of_the_token(redis: Redis) -> None:
    key, _ = await start(redis_store(redis))
    token = key.token
    keys = [k async for k in redis.scan_iter(f"{PREFIX}:*")]
    assert f"{PREFIX}:session:{hashlib.sha256(token.encode()).hexdigest()}" in keys
    dump = " ".join(keys)
    for key in keys:
        if await redis.type(key) == "hash":
            dump += " ".join(map(str, (await redis.hgetall(key)).values()))
    assert token not in dump


async def test_touch_counts_requests_and_slides_the_idle_ttl(redis: Redis) -> None:
    store = redis_store(redis, idle=60)
    key, created = await start(store)
    redis_key = f"{PREFIX}:session:{key.id}"
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
    assert not await redis.exists(f"{PREFIX}:session:{key.id}")


async def test_touch_after_delete_never_recreates_the_session(redis: Redis) -> None:
    store = redis_store(redis)
    key, _ = await start(store)
    await store.delete(key)
    assert await store.touch(key, CartAdd("apple", 1)) is None
    assert not await redis.exists(f"{PREFIX}:session:{key.id}")


async def test_concurrent_adds_are_atomic(redis: Redis) -> None:
    store = redis_store(redis)
    key, _ = await start(store)
    await asyncio.gather(*(store.touch(key, CartAdd("apple", 1)) for _ in range(200)))
    session = await store.touch(key)
    assert session is not None
    assert session.cart == {"apple": 200}
    assert session.requests == 201


async def test_create_waits_for_replicas_only_when_asked(redis: Redis) -> None:
    """This Redis has no replica: WAIT 1 holds the login for its whole timeout, then lets it through."""
    waiting = RedisSessionStore(redis, PREFIX, Limits(60, 3600), replicas_to_wait=1, wait_timeout_ms=300)
    started = time.monotonic()
    key, _ = await start(waiting)
    assert time.monotonic() - started >= 0.3
    assert await waiting.touch(key) is not None
    started = time.monotonic()
    key, _ = await start(redis_store(redis))
    assert time.monotonic() - started < 0.1
    assert await redis_store(redis).touch(key) is not None


async def test_a_session_outside_the_index_dies_with_the_epoch(redis: Redis) -> None:
    """What the index misses (a login landing between its read and its delete) the epoch still ends."""
    store, alice = redis_store(redis), new_username()
    key, _ = await start(store, alice)
    await redis.delete(store.user_key(alice))
    await store.delete_user(alice)
    assert await store.touch(key) is None


async def test_ending_a_session_removes_it_from_the_users_index(redis: Redis) -> None:
    store, alice = redis_store(redis), new_username()
    keys = [(await start(store, alice))[0] for _ in range(5)]
    for key in keys:
        await store.delete(key)
    indexes = [k async for k in redis.scan_iter(f"{PREFIX}:*{alice}*") if await redis.type(k) in ("set", "zset")]
    assert indexes == []


@asynccontextmanager
async def full(redis: Redis) -> AsyncIterator[None]:
    """This Redis at its maxmemory: writes refused (OOM), reads and deletes allowed."""
    limit = str((await redis.config_get("maxmemory"))["maxmemory"])
    await redis.config_set("maxmemory", 1)
    try:
        yield
    finally:
        await redis.config_set("maxmemory", limit)


async def test_a_full_redis_still_validates_sessions_and_ends_them(redis: Redis) -> None:
    """Reads degrade to a check that writes nothing (no request counted, no idle TTL slid); adds are
    refused as the store being full; a logout still ends the session."""
    store = redis_store(redis)
    key, _ = await start(store)
    assert await store.touch(key, CartAdd("apple", 1)) is not None
    async with full(redis):
        for _ in range(3):
            session = await store.touch(key)
            assert session is not None
            assert (session.requests, session.cart) == (1, {"apple": 1})
        with pytest.raises(RedisError) as refused:
            await store.touch(key, CartAdd("apple", 1))
        assert refusal(refused.value) is StoreState.FULL
        await store.delete(key)
        assert await store.touch(key) is None
    assert await store.touch(key) is None
