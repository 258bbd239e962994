"""The near cache: fast identity checks that never outlive a revocation."""

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app.config import Settings
from app.main import connect_redis
from app.nearcache import NearCachedStore
from app.sessions import RedisSessionStore, new_token, session_id


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = connect_redis(Settings(redis_url=redis_url))
    yield client
    await client.aclose()


@pytest.fixture
async def redis_no_retry(redis_url: str) -> AsyncIterator[Redis]:
    client = connect_redis(Settings(redis_url=redis_url), retries=0)
    yield client
    await client.aclose()


@pytest.fixture
async def instances(redis: Redis, redis_no_retry: Redis) -> AsyncIterator[list[NearCachedStore]]:
    """Two 'instances' sharing one Redis, each with its own near cache and subscription."""
    stores = [NearCachedStore(RedisSessionStore(redis, "nc", 60, 3600), redis, redis_no_retry,
                              max_age_s=30, flush_interval_s=60) for _ in range(2)]
    tasks = [asyncio.create_task(s.listen()) for s in stores]
    await wait_for(lambda: all(s.subscribed for s in stores))
    yield stores
    for store in stores:
        store.stop()
    await asyncio.gather(*tasks)


async def wait_for(condition: object, timeout_s: float = 5) -> None:
    assert callable(condition)
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def user() -> str:
    return new_token()[:10].lower()


async def test_identify_is_served_from_the_cache_and_counted_behind(redis: Redis,
                                                                   instances: list[NearCachedStore]) -> None:
    web1, _ = instances
    token, _ = await web1.create(user(), "web1")
    key = web1.inner.key(str(session_id(token)))
    for _ in range(10):
        session = await web1.identify(token)
    assert session is not None
    assert session.requests == 10
    assert await redis.hget(key, "requests") == "1"  # one real read; nine served from the cache
    await web1.flush()
    assert await redis.hget(key, "requests") == "10"
    assert (await web1.identify(token)).requests == 11  # type: ignore[union-attr]


async def test_logout_on_one_instance_is_honoured_by_the_others_when_it_returns(
        instances: list[NearCachedStore]) -> None:
    web1, web2 = instances
    token, _ = await web1.create(user(), "web1")
    assert await web2.identify(token) is not None  # now cached on web2
    await web1.delete(token)
    assert await web2.identify(token) is None


async def test_sign_out_everywhere_empties_every_cache(instances: list[NearCachedStore]) -> None:
    web1, web2 = instances
    name = user()
    tokens = [(await web1.create(name, "web1"))[0] for _ in range(3)]
    for token in tokens:
        assert await web2.identify(token) is not None
    assert await web1.delete_user(name) == 3
    assert [await web2.identify(t) for t in tokens] == [None, None, None]


async def test_a_dropped_channel_turns_the_cache_off(redis: Redis, instances: list[NearCachedStore]) -> None:
    web1, web2 = instances
    token, _ = await web1.create(user(), "web1")
    assert await web2.identify(token) is not None
    await redis.client_kill_filter(_type="pubsub")
    await wait_for(lambda: not web2.subscribed)
    # Deleted behind the cache's back (no invalidation can reach it now): the cache must not answer.
    await redis.delete(web2.inner.key(str(session_id(token))))
    assert await web2.identify(token) is None
    await wait_for(lambda: web2.subscribed)  # and it comes back by itself


async def test_write_behind_never_brings_back_a_deleted_session(redis: Redis,
                                                                instances: list[NearCachedStore]) -> None:
    web1, _ = instances
    token, _ = await web1.create(user(), "web1")
    for _ in range(3):
        await web1.identify(token)
    key = web1.inner.key(str(session_id(token)))
    await redis.delete(key)
    await web1.flush()
    assert not await redis.exists(key)


async def test_the_cache_honours_the_absolute_timeout(redis: Redis, redis_no_retry: Redis) -> None:
    store = NearCachedStore(RedisSessionStore(redis, "nc", 60, 1), redis, redis_no_retry,
                            max_age_s=30, flush_interval_s=60)
    listener = asyncio.create_task(store.listen())
    await wait_for(lambda: store.subscribed)
    token, _ = await store.create(user(), "web1")
    assert await store.identify(token) is not None
    await asyncio.sleep(1.1)
    assert await store.identify(token) is None
    store.stop()
    await listener


async def test_an_idle_subscription_costs_almost_no_cpu(instances: list[NearCachedStore]) -> None:
    """The listener waits for messages; it once answered its own pings in a busy loop."""
    started = time.process_time()
    await asyncio.sleep(2)
    assert time.process_time() - started < 0.3
    assert all(s.subscribed for s in instances)
