"""The session stores on their own: the Redis one against a real redis-server, the in-process
one as the anti-pattern it is."""

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app.config import Settings
from app.main import connect_redis
from app.sessions import MemorySessionStore, RedisSessionStore, SessionStore, new_token, session_id


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = connect_redis(Settings(redis_url=redis_url))
    yield client
    await client.aclose()


def redis_store(redis: Redis, idle: int = 60, absolute: int = 3600) -> RedisSessionStore:
    return RedisSessionStore(redis, "test", idle, absolute)


def test_new_token_has_256_random_bits() -> None:
    tokens = {new_token() for _ in range(1000)}
    assert len(tokens) == 1000
    assert all(len(t) == 43 and session_id(t) for t in tokens)


@pytest.mark.parametrize("token", ["", "short", "A" * 42, "A" * 44, "A" * 42 + "=", "é" * 43, "A" * 42 + "\n"])
def test_session_id_rejects_what_cannot_be_a_token(token: str) -> None:
    assert session_id(token) is None


async def test_redis_store_keeps_only_a_hash_of_the_token(redis: Redis) -> None:
    token, _ = await redis_store(redis).create("alice", "web1")
    keys = [k async for k in redis.scan_iter("test:*")]
    assert f"test:session:{hashlib.sha256(token.encode()).hexdigest()}" in keys
    dump = " ".join(keys)
    for key in keys:
        if await redis.type(key) == "hash":
            dump += " ".join(map(str, (await redis.hgetall(key)).values()))
    assert token not in dump


async def test_touch_counts_requests_and_slides_the_idle_ttl(redis: Redis) -> None:
    store = redis_store(redis, idle=60)
    token, created = await store.create("alice", "web1")
    key = f"test:session:{session_id(token)}"
    await redis.pexpire(key, 5000)
    first = await store.touch(token)
    second = await store.touch(token, add_item=("apple", 3))
    assert first is not None
    assert second is not None
    assert (first.requests, second.requests) == (1, 2)
    assert second.cart == {"apple": 3}
    assert second.created_on == "web1"
    assert second.created_at == created.created_at
    assert 55_000 < await redis.pttl(key) <= 60_000


async def test_absolute_timeout_ends_a_busy_session(redis: Redis) -> None:
    store = redis_store(redis, idle=60, absolute=1)
    token, _ = await store.create("alice", "web1")
    assert await store.touch(token) is not None
    await asyncio.sleep(1.1)
    assert await store.touch(token) is None
    assert not await redis.exists(f"test:session:{session_id(token)}")


async def test_touch_after_delete_never_recreates_the_session(redis: Redis) -> None:
    store = redis_store(redis)
    token, _ = await store.create("alice", "web1")
    await store.delete(token)
    assert await store.touch(token, add_item=("apple", 1)) is None
    assert not await redis.exists(f"test:session:{session_id(token)}")


async def test_concurrent_adds_are_atomic(redis: Redis) -> None:
    store = redis_store(redis)
    token, _ = await store.create("alice", "web1")
    await asyncio.gather(*(store.touch(token, add_item=("apple", 1)) for _ in range(200)))
    session = await store.touch(token)
    assert session is not None
    assert session.cart == {"apple": 200}
    assert session.requests == 201


async def test_create_waits_for_replicas_only_when_asked(redis: Redis) -> None:
    """This Redis has no replica: WAIT 1 holds the login for its whole timeout, then lets it through."""
    waiting = RedisSessionStore(redis, "test", 60, 3600, replicas_to_wait=1, wait_timeout_ms=300)
    started = time.monotonic()
    token, _ = await waiting.create("alice", "web1")
    assert time.monotonic() - started >= 0.3
    assert await waiting.touch(token) is not None
    started = time.monotonic()
    token, _ = await redis_store(redis).create("alice", "web1")
    assert time.monotonic() - started < 0.1
    assert await redis_store(redis).touch(token) is not None


@pytest.mark.parametrize("kind", ["redis", "memory"])
async def test_delete_user_ends_all_of_a_users_sessions(redis: Redis, kind: str) -> None:
    store: SessionStore = redis_store(redis) if kind == "redis" else MemorySessionStore(60, 3600)
    alice, bob = new_token()[:8].lower(), new_token()[:8].lower()
    alices = [(await store.create(alice, "web1"))[0] for _ in range(3)]
    bobs, _ = await store.create(bob, "web1")
    assert await store.delete_user(alice) == 3
    assert all([await store.touch(t) is None for t in alices])
    assert await store.touch(bobs) is not None


async def test_memory_store_is_private_to_its_process() -> None:
    web1, web2 = MemorySessionStore(60, 3600), MemorySessionStore(60, 3600)
    token, _ = await web1.create("alice", "web1")
    assert await web1.touch(token) is not None
    assert await web2.touch(token) is None
