"""The near cache: fast identity checks that never outlive a revocation."""

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app.config import Settings
from app.redis_client import close, is_cluster, subscriber_of
from app.sessions import Limits, NearCache, RedisSessionStore, SessionKey
from app.sessions.nearcache import LEASE_S
from tests.app.sessions import stores


@pytest.fixture
async def redis_no_retry(request: pytest.FixtureRequest, redis: Redis, redis_url: str) -> AsyncIterator[Redis]:
    """The subscriber an instance would have on this Redis (on the cluster: a client of the channel's primary)."""
    settings = Settings(redis_cluster_nodes=request.getfixturevalue("redis_cluster")) if is_cluster(redis) \
        else Settings(redis_url=redis_url)
    client = subscriber_of(settings, redis, NearCache.channel_of("nc"))
    yield client
    await close(client)


@pytest.fixture
async def instances(redis: Redis, redis_no_retry: Redis) -> AsyncIterator[list[NearCache]]:
    """Two 'instances' sharing one Redis, each with its own near cache and subscription."""
    stores = [near_cache(redis, redis_no_retry, absolute_s=3600) for _ in range(2)]
    async with stores[0], stores[1]:
        await wait_for(lambda: all(s.subscribed for s in stores))
        yield stores


def near_cache(redis: Redis, subscriber: Redis, absolute_s: int) -> NearCache:
    return NearCache(RedisSessionStore(redis, "nc", Limits(60, absolute_s)), redis, subscriber, "nc",
                     max_age_s=30, flush_interval_s=60)


async def start(store: NearCache) -> SessionKey:
    key, _ = await stores.start(store, stores.new_username())
    return key


def session_key(key: SessionKey) -> str:
    return RedisSessionStore.key_in("nc", key)


async def wait_for(condition: object, timeout_s: float = 5) -> None:
    assert callable(condition)
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def test_identify_is_served_from_the_cache_and_counted_behind(redis: Redis,
                                                                   instances: list[NearCache]) -> None:
    web1, _ = instances
    key = await start(web1)
    redis_key = session_key(key)
    for _ in range(10):
        session = await web1.identify(key)
    assert session is not None
    assert session.requests == 10
    assert await redis.hget(redis_key, "requests") == "1"  # one real read; nine served from the cache
    await web1.flush()
    assert await redis.hget(redis_key, "requests") == "10"
    again = await web1.identify(key)
    assert again is not None
    assert again.requests == 11


async def test_logout_on_one_instance_is_honoured_by_the_others_when_it_returns(
        instances: list[NearCache]) -> None:
    web1, web2 = instances
    key = await start(web1)
    assert await web2.identify(key) is not None  # now cached on web2
    await web1.delete(key)
    assert await web2.identify(key) is None


async def test_sign_out_everywhere_empties_every_cache(instances: list[NearCache]) -> None:
    web1, web2 = instances
    name = stores.new_username()
    keys = [(await stores.start(web1, name))[0] for _ in range(3)]
    for key in keys:
        assert await web2.identify(key) is not None
    assert await web1.delete_user(name) == 3
    assert [await web2.identify(k) for k in keys] == [None, None, None]


async def test_a_dropped_channel_turns_the_cache_off(redis: Redis, redis_no_retry: Redis,
                                                     instances: list[NearCache]) -> None:
    web1, web2 = instances
    key = await start(web1)
    assert await web2.identify(key) is not None
    await redis_no_retry.client_kill_filter(_type="pubsub")  # on the channel's node
    await wait_for(lambda: not web2.subscribed)
    # Deleted behind the cache's back (no invalidation can reach it now): the cache must not answer.
    await redis.delete(session_key(key))
    assert await web2.identify(key) is None
    await wait_for(lambda: web2.subscribed)  # and it comes back by itself


async def test_write_behind_never_brings_back_a_deleted_session(redis: Redis,
                                                                instances: list[NearCache]) -> None:
    web1, _ = instances
    key = await start(web1)
    for _ in range(3):
        await web1.identify(key)
    await redis.delete(session_key(key))
    await web1.flush()
    assert not await redis.exists(session_key(key))


async def test_the_cache_honours_the_absolute_timeout(redis: Redis, redis_no_retry: Redis) -> None:
    async with near_cache(redis, redis_no_retry, absolute_s=1) as store:
        await wait_for(lambda: store.subscribed)
        key = await start(store)
        assert await store.identify(key) is not None
        await asyncio.sleep(1.1)
        assert await store.identify(key) is None


async def test_an_idle_subscription_costs_almost_no_cpu(instances: list[NearCache]) -> None:
    """The listener waits for messages; it once answered its own pings in a busy loop."""
    started = time.process_time()
    await asyncio.sleep(2)
    assert time.process_time() - started < 0.3
    assert all(s.subscribed for s in instances)


async def test_an_ending_that_nobody_acknowledges_waits_out_the_lease_and_no_longer(
        redis_no_retry: Redis, instances: list[NearCache]) -> None:
    """A subscriber that takes the invalidation and never acknowledges it (counted by SPUBLISH, as a
    frozen instance is): the logout's wait ends at the lease, however redis-py treats timeouts."""
    web1, _ = instances
    pubsub = redis_no_retry.pubsub()
    await pubsub.ssubscribe(web1.channel)
    try:
        key = await start(web1)
        started = time.monotonic()
        ending = asyncio.create_task(web1.delete(key))
        done, _ = await asyncio.wait([ending], timeout=LEASE_S + 1)  # waits; cancels nothing
        took = time.monotonic() - started
        assert done, "the ending's wait for acknowledgements was not bounded"
        assert LEASE_S - 0.05 <= took < LEASE_S + 0.2
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_a_subscription_loses_its_lease_without_pong_replies(redis: Redis, instances: list[NearCache]) -> None:
    """Redis stalled in a script: nothing comes back on the subscription, and within the lease the
    cache stops answering, though the connection is still open."""
    web1, web2 = instances
    key = await start(web1)
    assert await web2.identify(key) is not None
    assert web2.trusted()
    stall = asyncio.ensure_future(redis.eval(
        "local t = redis.call('TIME') local stop = t[1] * 1000000 + t[2] + 900000 "
        "repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] >= stop", 1, web1.channel))  # its node
    started = time.monotonic()
    await wait_for(lambda: not web2.trusted(), timeout_s=2)
    assert time.monotonic() - started < LEASE_S + 0.15
    await wait_for(lambda: web2.entries == {}, timeout_s=0.2)  # emptied, not only bypassed
    await stall
    await wait_for(web2.trusted)
