"""The Redis store (app/sessions/redis.py) against a real redis-server: one atomic script per
request, TTLs that Redis enforces, and nothing in Redis that could be replayed as a session."""

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from app.keys import uid
from app.redis_client import is_cluster
from app.sessions import CartAdd, Limits, RedisSessionStore, SessionKey, StoreState, refusal
from app.sessions.redis import END_BATCH, LIVE_TRIM
from tests.app.sessions.stores import PREFIX, new_username, redis_store, same_tag, start


async def test_redis_store_keeps_only_a_hash_of_the_token(redis: Redis) -> None:
    key, _ = await start(redis_store(redis))
    token = key.token
    store = redis_store(redis)
    keys = [k async for k in redis.scan_iter(f"{PREFIX}:*")]
    assert store.key(key) in keys
    assert store.key(key).endswith(f":session:{hashlib.sha256(token.encode()).hexdigest()}")
    dump = " ".join(keys)
    for key in keys:
        if await redis.type(key) == "hash":
            dump += " ".join(map(str, (await redis.hgetall(key)).values()))
    assert token not in dump


async def test_a_token_with_another_users_id_is_no_session(redis: Redis) -> None:
    """The user's id in the token only says where the keys are: it is hashed with the rest, so a
    token moved under another id (another tag, another slot) finds nothing, and ends nothing."""
    store, alice, bob = redis_store(redis), new_username(), new_username()
    key, _ = await start(store, alice)
    moved = SessionKey.parse(f"{uid(bob)}.{key.token.split('.')[1]}")
    assert moved is not None
    assert await store.touch(moved) is None
    await store.delete(moved)
    assert await store.touch(key) is not None


async def test_touch_counts_requests_and_slides_the_idle_ttl(redis: Redis) -> None:
    store = redis_store(redis, idle=60)
    key, created = await start(store)
    redis_key = store.key(key)
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
    assert not await redis.exists(store.key(key))


async def test_touch_after_delete_never_recreates_the_session(redis: Redis) -> None:
    store = redis_store(redis)
    key, _ = await start(store)
    await store.delete(key)
    assert await store.touch(key, CartAdd("apple", 1)) is None
    assert not await redis.exists(store.key(key))


async def test_concurrent_adds_are_atomic(redis: Redis) -> None:
    store = redis_store(redis)
    key, _ = await start(store)
    await asyncio.gather(*(store.touch(key, CartAdd("apple", 1)) for _ in range(200)))
    session = await store.touch(key)
    assert session is not None
    assert session.cart == {"apple": 200}
    assert session.requests == 201


async def test_create_waits_for_replicas_only_when_asked(redis: Redis, caplog: pytest.LogCaptureFixture) -> None:
    """The single Redis has no replica: WAIT 1 holds the login for its whole timeout, then lets it
    through, unacknowledged. On the cluster the session's primary has one, which acknowledges it."""
    waiting = RedisSessionStore(redis, PREFIX, Limits(60, 3600), replicas_to_wait=1, wait_timeout_ms=300)
    started = time.monotonic()
    key, _ = await start(waiting, new_username())
    if is_cluster(redis):
        assert time.monotonic() - started < 0.3
        assert "not acknowledged" not in caplog.text
    else:
        assert time.monotonic() - started >= 0.3
        assert "not acknowledged by a replica" in caplog.text
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
    indexes = [k async for k in redis.scan_iter(f"{PREFIX}:*{uid(alice)}*") if await redis.type(k) in ("set", "zset")]
    assert indexes == []


async def sign_in_many(store: RedisSessionStore, username: str, n: int) -> list[SessionKey]:
    """`n` logins of `username`, 250 at a time."""
    keys: list[SessionKey] = []
    for first in range(0, n, 250):
        keys += [k for k, _ in await asyncio.gather(*(start(store, username) for _ in range(min(250, n - first))))]
    return keys


def every_node(redis: Redis) -> dict[str, Any]:
    """What sends a command to every node of a cluster (nothing on a single Redis)."""
    return {"target_nodes": RedisCluster.ALL_NODES} if is_cluster(redis) else {}


async def config_get(redis: Redis, pattern: str) -> dict[str, str]:
    """The configuration (of the first node, on a cluster: the tests set every node alike)."""
    got: Any = await redis.config_get(pattern, **every_node(redis))
    return {str(k): str(v) for k, v in (next(iter(got.values())) if is_cluster(redis) else got).items()}


@asynccontextmanager
async def slowlog(redis: Redis, slower_than_us: int) -> AsyncIterator[list[dict[str, Any]]]:
    """What Redis logs as slower than `slower_than_us` inside the block (in the list, at its end)."""
    nodes = every_node(redis)
    before = await config_get(redis, "slowlog-*")
    await redis.config_set("slowlog-log-slower-than", slower_than_us, **nodes)
    await redis.config_set("slowlog-max-len", 1024, **nodes)
    await redis.slowlog_reset(**nodes)
    entries: list[dict[str, Any]] = []
    try:
        yield entries
        logged = await redis.slowlog_get(1024, **nodes)
        entries += [e for node in logged.values() for e in node] if isinstance(logged, dict) else logged
    finally:
        for name, value in before.items():
            await redis.config_set(str(name), str(value), **nodes)


async def test_sign_out_everywhere_of_thousands_of_sessions_never_holds_redis(redis: Redis) -> None:
    """Every session ends, and no command of it holds Redis for 5 ms (SLOWLOG: Redis's own time per
    command, a script whole). One script for all 5,000 took 15-20 ms on the CI machine."""
    many = 5000
    store, alice, bob = redis_store(redis, max_sessions_per_account=many), new_username(), new_username()
    keys = await sign_in_many(store, alice, many)
    bobs, _ = await start(store, bob)
    async with slowlog(redis, 1000) as slow:
        assert await store.delete_user(alice) == many
    assert max((entry["duration"] for entry in slow), default=0) < 5000, slow
    assert not await redis.exists(*(store.key(k) for k in keys))
    assert await redis.zmscore(store.live_key(keys[0]), [k.id for k in keys]) == [None] * many
    assert [k async for k in redis.scan_iter(f"{PREFIX}:*{uid(alice)}*")] == [store.epoch_key(alice)]
    assert await store.touch(bobs) is not None


async def test_a_login_while_sign_out_everywhere_deletes_its_batches_keeps_its_session(redis: Redis) -> None:
    """The batches reach only sessions of the ended epoch: a login under the new one, landing between
    two batches, survives them (it started after the sign-out)."""
    store, alice = redis_store(redis, max_sessions_per_account=3000), new_username()
    await sign_in_many(store, alice, 3000)
    ending = asyncio.create_task(store.delete_user(alice))
    during: list[SessionKey] = []
    while not ending.done():
        started = await store.create(alice, "web2", await store.epoch(alice))
        if started is not None and not ending.done():
            during.append(started[0])
    assert await ending == 3000
    assert during, "no login landed between the batches"
    assert all([await store.touch(k) is not None for k in during])


async def test_a_login_trims_a_bounded_number_of_expired_sessions_from_the_live_index(redis: Redis) -> None:
    """After a mass expiry the live index keeps its stale entries until logins trim them, LIVE_TRIM at
    a time: no login holds Redis for as long as it takes to remove them all."""
    store = RedisSessionStore(redis, f"{PREFIX}-{new_username()}", Limits(1, 3600))
    names = same_tag(2 * LIVE_TRIM + 13)  # one tag: one live index
    keys = [k for k, _ in await asyncio.gather(*(start(store, name) for name in names[:2 * LIVE_TRIM + 10]))]
    await asyncio.sleep(1.1)
    sizes = []
    for name in names[-3:]:
        await start(store, name)
        sizes.append(await redis.zcard(store.live_key(keys[0])))
    assert sizes == [LIVE_TRIM + 11, 12, 3]
    assert await store.count_live() == 3


@asynccontextmanager
async def full(redis: Redis) -> AsyncIterator[None]:
    """This Redis at its maxmemory: writes refused (OOM), reads and deletes allowed."""
    nodes = every_node(redis)
    limit = (await config_get(redis, "maxmemory"))["maxmemory"]
    await redis.config_set("maxmemory", 1, **nodes)
    try:
        yield
    finally:
        await redis.config_set("maxmemory", limit, **nodes)


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


async def test_a_full_redis_still_signs_out_everywhere_in_batches(redis: Redis) -> None:
    many = 2 * END_BATCH + 1
    store, alice = redis_store(redis, max_sessions_per_account=many), new_username()
    keys = await sign_in_many(store, alice, many)
    async with full(redis):
        assert await store.delete_user(alice) == many
    assert not await redis.exists(*(store.key(k) for k in keys))


async def test_identify_counts_and_slides_like_touch_and_returns_no_cart(redis: Redis) -> None:
    store = redis_store(redis, idle=60)
    key, created = await start(store)
    redis_key = store.key(key)
    await store.touch(key, CartAdd("apple", 3))
    await redis.pexpire(redis_key, 5000)
    session = await store.identify(key)
    assert session is not None
    assert (session.username, session.created_on, session.created_at) == ("alice", "web1", created.created_at)
    assert (session.requests, session.cart) == (2, {})
    assert 55_000 < await redis.pttl(redis_key) <= 60_000
    await store.delete_user("alice")  # the epoch moves on: identify never answers for it again
    assert await store.identify(key) is None
    assert not await redis.exists(redis_key)


async def test_the_live_index_moves_only_once_it_lags_by_a_twentieth_of_the_idle_timeout(redis: Redis) -> None:
    """Every request slides the session's expiry; the live index, shared by every session, is
    written only when the expiry it lists falls short by more than idle/20 (here 100 ms)."""
    store = redis_store(redis, idle=2)
    key, _ = await start(store, new_username())
    listed = await redis.zscore(store.live_key(key), key.id)
    for _ in range(5):
        assert await store.identify(key) is not None
        assert await store.touch(key) is not None
    assert await redis.zscore(store.live_key(key), key.id) == listed
    await asyncio.sleep(0.15)
    assert await store.identify(key) is not None
    moved = await redis.zscore(store.live_key(key), key.id)
    assert moved is not None
    assert listed is not None
    assert moved > listed + 100
    assert moved == float(await redis.hget(store.key(key), "listed") or 0)
