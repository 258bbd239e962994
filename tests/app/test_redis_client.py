"""The hot path's Lane on a real Redis, under real faults: which failures it sends a call again
after, and which it never does - read off what the script did, since a call sent twice counts twice."""

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.config import Settings
from app.redis_client import Lane, connect_redis

REPLY_TIMEOUT_S = 0.2
# Keeps Redis busy (no other command runs meanwhile) for ARGV[1] microseconds.
_BUSY = """
local t = redis.call('TIME')
local stop = t[1] * 1000000 + t[2] + tonumber(ARGV[1])
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] >= stop
"""


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """The single Redis only: the lane keeps connections of its own there (on a cluster it runs its
    calls through the cluster client, whose faults tests/farm/test_cluster.py makes)."""
    client = connect_redis(Settings(redis_url=redis_url))
    yield client
    await client.aclose()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    """The lane's client, as the app makes it; `redis` (tests/app/conftest.py) is the test's own."""
    client = connect_redis(Settings(redis_url=redis_url, redis_socket_timeout_s=REPLY_TIMEOUT_S))
    yield client
    await client.aclose()


@pytest.fixture
async def lane(client: Redis) -> AsyncIterator[Lane]:
    lane = Lane(client, size=2)
    yield lane
    await lane.close()


class Counter:
    """A script that counts its runs, so a call that ran twice shows."""

    def __init__(self, client: Redis) -> None:
        self.key = f"lane:{secrets.token_hex(4)}"
        self.script: AsyncScript = client.register_script("return redis.call('INCR', KEYS[1])")

    async def run(self, lane: Lane) -> int:
        return int(await lane.run(self.script, [self.key], []))

    async def runs(self, redis: Redis) -> int:
        return int(await redis.get(self.key) or 0)


@pytest.fixture
def counter(client: Redis) -> Counter:
    return Counter(client)


async def drop_lane_connections(redis: Redis) -> None:
    """Redis closes every client connection but the caller's: what a Redis restart does to idle ones."""
    await redis.client_kill_filter(_type="normal", skipme=True)


async def accepted(redis: Redis) -> int:
    """Connections Redis has accepted since it started."""
    return int((await redis.info("stats"))["total_connections_received"])


async def rejected(redis: Redis) -> int:
    """Connections Redis has refused (past maxclients) since it started."""
    return int((await redis.info("stats"))["rejected_connections"])


@asynccontextmanager
async def busy_redis(redis: Redis, seconds: float) -> AsyncIterator[None]:
    """Redis runs nothing else for `seconds` (a long script), from a moment after entering."""
    async def block() -> None:
        await redis.eval(_BUSY, 0, str(int(seconds * 1_000_000)))

    blocker = asyncio.create_task(block())
    await asyncio.sleep(0.05)
    try:
        yield
    finally:
        await blocker


async def test_a_call_on_a_dropped_idle_connection_is_sent_once_more(lane: Lane, counter: Counter,
                                                                      redis: Redis) -> None:
    assert await counter.run(lane) == 1
    await drop_lane_connections(redis)
    assert await counter.run(lane) == 2  # on a new connection, and applied once
    assert await counter.runs(redis) == 2
    assert (lane.open, len(lane.idle)) == (1, 1)


async def test_a_call_that_fails_on_a_fresh_connection_is_not_sent_again(client: Redis, lane: Lane,
                                                                         counter: Counter, redis: Redis) -> None:
    assert await counter.run(lane) == 1
    await drop_lane_connections(redis)
    await redis.config_set("maxclients", 1)  # this test's own connection is the one: Redis refuses any other
    try:
        # redis-py retries a connect (nothing is sent yet): this is what ONE fresh connection costs.
        before = await rejected(redis)
        with pytest.raises(RedisConnectionError):
            await client.connection_pool.make_connection().connect()  # type: ignore[no-untyped-call]
        one_connection = await rejected(redis) - before
        before = await rejected(redis)
        with pytest.raises(RedisConnectionError, match="max number of clients"):
            await counter.run(lane)
        # The idle connection failed, one fresh one was tried, and that was all.
        assert await rejected(redis) - before == one_connection
    finally:
        await redis.config_set("maxclients", 10000)
    assert (lane.open, lane.idle) == (0, [])
    assert await counter.runs(redis) == 1
    assert await counter.run(lane) == 2  # and the lane works again once Redis does


async def test_a_script_redis_forgot_is_loaded_and_run_once(lane: Lane, counter: Counter, redis: Redis) -> None:
    assert await counter.run(lane) == 1
    await redis.script_flush()  # as a restarted Redis has
    assert await counter.run(lane) == 2
    assert await counter.runs(redis) == 2
    assert await redis.script_exists(counter.script.sha) == [True]


async def test_a_timed_out_call_is_not_sent_again(lane: Lane, counter: Counter, redis: Redis) -> None:
    assert await counter.run(lane) == 1  # the call below reuses this connection: a drop would be retried
    before = await accepted(redis)
    async with busy_redis(redis, 3 * REPLY_TIMEOUT_S):
        with pytest.raises(RedisTimeoutError):
            await counter.run(lane)
        assert (lane.open, lane.idle) == (0, [])
    assert await accepted(redis) == before  # no new connection: it was not sent again
    runs = await counter.runs(redis)  # 1 or 2: Redis may still have run it once it was free
    assert await counter.run(lane) == runs + 1  # its late reply reaches no other call


async def test_a_call_cancelled_by_the_deadline_is_not_sent_again(lane: Lane, counter: Counter,
                                                                  redis: Redis) -> None:
    assert await counter.run(lane) == 1
    before = await accepted(redis)
    async with busy_redis(redis, 3 * REPLY_TIMEOUT_S):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(REPLY_TIMEOUT_S / 2):  # the request's deadline (app.middleware)
                await counter.run(lane)
        assert (lane.open, lane.idle) == (0, [])
    assert await accepted(redis) == before
    runs = await counter.runs(redis)
    assert await counter.run(lane) == runs + 1


async def test_past_its_size_the_lane_hands_calls_to_the_client(client: Redis, counter: Counter,
                                                               redis: Redis) -> None:
    lane = Lane(client, size=1)
    try:
        results = await asyncio.gather(*(counter.run(lane) for _ in range(5)))
        assert sorted(results) == [1, 2, 3, 4, 5]
        assert lane.open == 1
    finally:
        await lane.close()
