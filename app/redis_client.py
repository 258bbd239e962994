"""The instance's Redis client: a single Redis (REDIS_URL), or whichever node the Sentinels name
primary (REDIS_SENTINELS).

Commands are retried only after a connection error (a pooled connection that went stale when
Redis restarted), never after a timeout: a command that timed out may still be applied once
Redis gets to it, and writing it again could apply it twice. The writes that could still arrive
twice (a retry after a connection drop) carry a request id and are applied once (see sessions.redis).

Behind Sentinel the client must follow a failover without restarting the instance.

redis-py asks the Sentinels for the primary's address only when a connection (re)connects, and
three of its habits would keep an instance talking to the old primary:

- Connection-level retries reconnect to the address the connection already holds, the dead
  primary, without asking again (redis-py #3874, #3560); and asking again names the dead primary
  too until the failover is over (1-3 s). So nothing retries here: the error surfaces at once
  (503 with Retry-After: the client asks again) and the next connect asks the Sentinels.
- When the address changes, only idle pooled connections are closed; one that was in use goes back
  to the pool still connected to the old primary. FailoverPool closes it when it comes back.
- A failover that drops no connection (the old primary demoted, still reachable) answers writes
  with READONLY (#435); redis-py closes that one connection. `forget_primary`, called by the app
  on every connection error, timeout or READONLY, closes the idle rest and makes the next
  connection ask the Sentinels again.

On Redis Cluster (REDIS_CLUSTER_NODES) the client is redis-py's RedisCluster: it knows which primary
holds each slot, follows MOVED and ASK (resharding), and after a connection error asks the cluster
again for its slots. It does not retry either: a command to a primary that just died fails at once
(503 with Retry-After) until its replica is promoted. A login's WAIT must be sent on the connection
that wrote the session, which RedisCluster's WAIT (sent to every primary) is not: `acknowledged` sends
both on one connection to the slot's primary.

The near cache's subscription must be on the node the data goes to (app.sessions.nearcache):
`publishes_to`, `primary_named` and `address_of` tell it where each one is. On a cluster that is
the primary of the invalidation channel's slot (sharded pub/sub: SPUBLISH goes to that node).
"""

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import AbstractConnection, Connection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.config import Settings
from app.metrics import REDIS_POOL_WAIT

log = logging.getLogger("webfarm")

#: A Redis node's (host, port).
Address = tuple[str, int]


@contextmanager
def closed_transport_is_a_connection_error() -> Iterator[None]:
    """A write on a connection that its Redis closed meanwhile (it died, or was killed) leaks the event
    loop's own error instead of a ConnectionError: uvloop's RuntimeError "the handler is closed", or
    an AttributeError or TypeError on the transport's torn-down internals (redis-py #4287: 8.1.0,
    all loops). None is a RedisError, so the app would answer it 500 - seen here under a primary's
    SIGKILL on a cluster. Nothing was sent: it is a connection error (503, and resent where a
    connection error is). Only those messages: any other such error is a bug, and stays one."""
    try:
        yield
    except RuntimeError as exc:
        if "closed" not in str(exc):
            raise
        raise RedisConnectionError(f"connection to Redis closed: {exc}") from exc
    except (AttributeError, TypeError) as exc:
        if "'NoneType' object" not in str(exc):
            raise
        raise RedisConnectionError(f"connection to Redis closed: {type(exc).__name__}: {exc}") from exc


class TimedPool(BlockingConnectionPool):
    """The single-Redis pool: waits (briefly) for a free connection when all are busy, and says how long."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        started = time.perf_counter()
        try:
            connection: AbstractConnection = await super().get_connection(  # type: ignore[no-untyped-call]
                *args, **kwargs)
            return connection
        finally:
            REDIS_POOL_WAIT.observe(time.perf_counter() - started)


class FailoverPool(SentinelConnectionPool, TimedPool):
    """A Sentinel-managed pool that waits briefly for a free connection when all are busy (as the
    single-Redis pool does) and keeps no connection to a former primary."""

    async def release(self, connection: AbstractConnection) -> None:
        # redis-py's owns_connection() would say this, but its asyncio version raises AttributeError.
        managed = cast(Connection, connection)
        try:
            if (managed.host, managed.port) != self.master_address:
                await connection.disconnect()
        finally:
            await super().release(connection)

    async def forget_primary(self) -> None:
        """Ask the Sentinels again on the next connect; close every idle connection meanwhile."""
        self.master_address = None
        await self.disconnect(inuse_connections=False)


class ShardPool(TimedPool):
    """The near cache's subscriber on a cluster: a plain connection to the primary that holds `key`'s
    slot, as the cluster client's slot map names it when the connection is made."""

    def __init__(self, cluster: RedisCluster, key: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cluster = cluster
        self.key = key

    @property
    def master_address(self) -> Address:
        return address_in(self.cluster, self.key)

    def make_connection(self) -> AbstractConnection:
        self.connection_kwargs["host"], self.connection_kwargs["port"] = self.master_address
        connection: AbstractConnection = super().make_connection()  # type: ignore[no-untyped-call]
        return connection

    async def forget_primary(self) -> None:
        """Ask the cluster for its slots again; close every idle connection meanwhile."""
        await self.disconnect(inuse_connections=False)
        await self.refresh()

    async def primary_named(self) -> Address:
        """The primary of `key`'s slot as a node of the cluster names it now (CLUSTER SLOTS, one round
        trip); only when that differs from the client's slot map is the map asked for again (a whole
        refresh every PRIMARY_CHECK_S doubled an idle instance's CPU)."""
        await self.cluster.initialize()
        slot = self.cluster.keyslot(self.key)
        ranges = await self.cluster.execute_command("CLUSTER SLOTS", target_nodes=self.cluster.get_random_node())
        named = next(((str(owner["primary"][0]), int(owner["primary"][1])) for (low, high), owner in ranges.items()
                      if low <= slot <= high), None)
        if named is None:
            raise RedisConnectionError(f"no primary serves slot {slot}")
        if named != self.master_address:
            await self.refresh()
        return named

    async def refresh(self) -> None:
        """The cluster client's slot map, asked of the cluster now (which its commands then use too)."""
        await self.cluster.initialize()  # the first time: its nodes, slots and command parser; then nothing
        try:
            await self.cluster.nodes_manager.initialize()
        except (RedisClusterException, IndexError) as exc:  # as BoundedCluster.initialize
            raise RedisConnectionError(f"no answer from the cluster: {exc}") from exc


def connect_redis(settings: Settings, retries: int | None = None) -> Redis:
    """A client that fails fast and bounded: a few quick retries on a dropped connection, then
    the error surfaces as 503. The pool blocks (briefly) when every connection is busy instead of
    failing at once, which redis-py's default pool does past its size under a burst. Each wait is
    bounded on its own (a free connection, connecting, the handshake, the reply), and they add up:
    a request's deadline (app.middleware) bounds the sum, whatever the request's number of calls."""
    if settings.redis_sentinels:
        return _connect_sentinel(settings)
    if settings.redis_cluster_nodes:
        return _connect_cluster(settings)
    pool = TimedPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout_s,
        decode_responses=True,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        # Retry's default list includes TimeoutError: named here so that it does not.
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), settings.redis_retries if retries is None else retries,
                    supported_errors=(RedisConnectionError,)),
        health_check_interval=30,
    )
    return Redis.from_pool(pool)


def _connect_sentinel(settings: Settings) -> Redis:
    """A client of whichever node the Sentinels name primary, failing fast like the single-mode one."""
    no_retries = Retry(NoBackoff(), 0)
    timeouts: dict[str, Any] = {"socket_timeout": settings.redis_socket_timeout_s,
                                "socket_connect_timeout": settings.redis_connect_timeout_s}
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves Sentinel.__init__ unannotated
        settings.sentinel_addresses, sentinel_kwargs={**timeouts, "retry": no_retries})
    client: Redis = sentinel.master_for(
        settings.redis_sentinel_master,
        # The data nodes' password, if REDIS_URL has one (Docker's Redis does; the Sentinels have none).
        password=urlsplit(settings.redis_url).password,
        connection_pool_class=FailoverPool,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout_s,
        decode_responses=True,
        retry=no_retries,
        health_check_interval=30,
        **timeouts,
    )
    return client


class BoundedCluster(RedisCluster):
    """redis-py's cluster client, with at most `turns` commands at once: its pools fail a command at
    once past their size (MaxConnectionsError), where the single-Redis pool waits a while; here the
    rest wait their turn (a request's deadline bounds the wait, as it bounds the pool's)."""

    def __init__(self, turns: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.turns = asyncio.Semaphore(turns)
        self._closing = False

    async def aclose(self) -> None:
        """redis-py calls this itself on CLUSTERDOWN (while a shard fails over, its slots answer it),
        and it closes every connection of the client, those of commands in flight on the healthy
        shards too: they failed, one with uvloop's RuntimeError on a closed transport, a 500. Here it
        only makes the next command ask the cluster for its slots again; `close_all` closes."""
        if self._closing:
            await super().aclose()
        else:
            self._initialize = True  # redis-py's own flag: initialize() at the next command

    async def close_all(self) -> None:
        """Close every connection (the instance is stopping)."""
        self._closing = True
        await super().aclose()

    async def initialize(self, *args: Any, **kwargs: Any) -> RedisCluster:
        """As redis-py's, but a cluster that cannot be reached (no node answers, the slots not all
        served yet) is a connection error, as a single Redis that cannot be reached is: redis-py
        raises an exception that is no RedisError there, which the app would answer 500 - and an
        IndexError when the nodes answer but are no cluster yet (no primary to name)."""
        try:
            return await super().initialize(*args, **kwargs)
        except (RedisClusterException, IndexError) as exc:
            raise RedisConnectionError(f"no answer from the cluster: {exc!r}") from exc

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        async with self.turns:
            REDIS_POOL_WAIT.observe(time.perf_counter() - started)
            with closed_transport_is_a_connection_error():
                return await super().execute_command(*args, **kwargs)


def _connect_cluster(settings: Settings) -> Redis:
    """A RedisCluster client, failing fast like the others. It answers the commands the app sends
    (keyed commands, scripts, non-transactional pipelines) as a Redis client does, so it is typed as
    one; `is_cluster` tells the places that must differ (the lane, WAIT, the near cache's subscriber)."""
    client = BoundedCluster(
        settings.redis_max_connections,
        startup_nodes=[ClusterNode(host, port) for host, port in settings.cluster_addresses],
        password=urlsplit(settings.redis_url).password,
        decode_responses=True,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        retry=Retry(NoBackoff(), 0),
        # While a shard fails over, its slots may be missing from the map the client asks for: the
        # others' are still good (the nodes run with cluster-require-full-coverage no, too).
        require_full_coverage=False,
        # The nodes it was given stay the ones it asks: by default redis-py replaces them with the
        # nodes a node reports, and a node not yet made part of the cluster (the instances may start
        # first) reports none - the client then has nobody left to ask, for good.
        dynamic_startup_nodes=False,
        # A MOVED patches the client's slot map, and that is all: every few MOVED, redis-py would
        # instead close every connection of the client, those of commands in flight too, which then
        # fail - a reshard under load would fail requests. (A node that is gone is a connection
        # error, after which the client asks the cluster for its slots anyway.)
        reinitialize_steps=0,
        # Each node's pool: room for every turn, and for the pipelines (the farm panel's), which take none.
        max_connections=2 * settings.redis_max_connections,
    )
    return cast(Redis, client)


def primary_of(cluster: RedisCluster, key: str) -> ClusterNode:
    """The primary that holds `key`'s slot, as the client's slot map has it."""
    node = cluster.get_node_from_key(key)
    if node is None:
        raise RedisConnectionError(f"no node holds the slot of {key}")
    return node


def address_in(cluster: RedisCluster, key: str) -> Address:
    node = primary_of(cluster, key)
    return node.host, int(node.port)


async def a_primary_answers(redis: Redis) -> bool:
    """On a cluster: whether any primary answers a PING now (each asked on its own, at once)."""
    cluster = cast(RedisCluster, redis)
    answers = await asyncio.gather(*(cluster.execute_command("PING", target_nodes=node)
                                     for node in cluster.get_primaries()), return_exceptions=True)
    return any(answer is True for answer in answers)


def is_cluster(redis: Redis) -> bool:
    return isinstance(redis, RedisCluster)


def subscriber_of(settings: Settings, data: Redis, channel: str) -> Redis:
    """The near cache's subscription client: it never retries (see NearCache). On a cluster, a plain
    client of the primary that holds `channel`'s slot, which it looks up again on every reconnect."""
    if not is_cluster(data):
        return connect_redis(settings, retries=0)
    pool = ShardPool(cast(RedisCluster, data), channel, password=urlsplit(settings.redis_url).password,
                     max_connections=4, timeout=settings.redis_pool_timeout_s, decode_responses=True,
                     socket_timeout=settings.redis_socket_timeout_s,
                     socket_connect_timeout=settings.redis_connect_timeout_s, retry=Retry(NoBackoff(), 0))
    return Redis.from_pool(pool)


async def acknowledged(redis: Redis, script: AsyncScript, keys: Sequence[str], args: Sequence[str | int],
                       replicas: int, timeout_ms: int) -> tuple[Any, int]:
    """Run `script`, then WAIT for `replicas` replicas on the same connection (WAIT covers that
    connection's writes): the script's reply and how many replicas acknowledged. On a cluster the
    two go to the primary of the keys' slot; a slot that moved meanwhile (MOVED, ASK, TRYAGAIN) runs
    the script through the client, which follows it, and counts as acknowledged by none."""
    if not is_cluster(redis):
        async with redis.pipeline(transaction=False) as pipe:
            await script(keys, args, client=pipe)
            pipe.wait(replicas, timeout_ms)
            reply, count = await pipe.execute()
        return reply, int(count)
    node = primary_of(cast(RedisCluster, redis), keys[0])
    connection = node.acquire_connection()
    try:
        with closed_transport_is_a_connection_error():
            await connection.send_packed_command(connection.pack_commands(
                [("EVAL", script.script, len(keys), *keys, *args), ("WAIT", replicas, timeout_ms)]))
        replies: list[Any] = []
        for _ in range(2):  # both replies are read, whatever the first says
            try:
                replies.append(await connection.read_response())
            except (MovedError, AskError, TryAgainError) as moved:
                replies.append(moved)
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        node.release(connection)
    if isinstance(replies[0], RedisError):
        log.info("slot of %s moved under a login (%s): written through the cluster client, not awaited",
                 keys[0], replies[0])
        return await script(keys, args), 0
    return replies[0], int(replies[1])


async def store_failed(redis: Redis, exc: RedisError) -> None:
    """Every request that Redis failed: logged, and after a connection error, timeout or READONLY
    the primary is looked up again (the caller answers 503 with Retry-After)."""
    log.warning("session store unavailable: %s: %s", type(exc).__name__, exc)
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | ReadOnlyError):
        await forget_primary(redis)


async def forget_primary(redis: Redis) -> None:
    """After a connection error, timeout or READONLY: re-discover the primary (no-op on a single
    Redis; the cluster client does it on its own)."""
    if not is_cluster(redis) and isinstance(redis.connection_pool, FailoverPool | ShardPool):
        await redis.connection_pool.forget_primary()


def follows_primary(redis: Redis) -> bool:
    """Whether the client's node can change: behind Sentinel, or a cluster's shard subscriber."""
    return not is_cluster(redis) and isinstance(redis.connection_pool, FailoverPool | ShardPool)


def publishes_to(redis: Redis, channel: str) -> Address | None:
    """The node a data client sends `channel`'s publications to: behind Sentinel the primary its new
    connections go to (None while it must ask again), on a cluster the primary of the channel's slot
    as its slot map has it; None on a single Redis."""
    if is_cluster(redis):
        return address_in(cast(RedisCluster, redis), channel)
    pool = redis.connection_pool
    return pool.master_address if isinstance(pool, FailoverPool) else None


async def primary_named(redis: Redis) -> Address:
    """The primary as it is named now: by the first Sentinel that answers (MasterNotFoundError if
    none does), or by a node of the cluster (the data client's slot map asked again if it differs)."""
    pool = redis.connection_pool
    if isinstance(pool, ShardPool):
        return await pool.primary_named()
    assert isinstance(pool, FailoverPool), "only a Sentinel or shard client has a primary to ask for"
    host, port = await pool.sentinel_manager.discover_master(pool.service_name)
    return str(host), int(port)


def address_of(connection: AbstractConnection) -> Address:
    managed = cast(Connection, connection)
    return managed.host, int(managed.port)


async def close(redis: Redis) -> None:
    if isinstance(redis, BoundedCluster):
        await redis.close_all()
        return
    await redis.aclose()
    if not is_cluster(redis) and isinstance(redis.connection_pool, FailoverPool):
        await redis.connection_pool.sentinel_manager.aclose()


class Lane:
    """The hot path's own way to run a script: EVALSHA on a connection kept for it, without
    redis-py's per-call machinery (the client's command dispatch, the Retry wrapper, the blocking
    pool's lock and timeout, the health check). Measured on this machine: 117 -> 64 us of CPU per
    call, the larger part of what one Redis round trip cost a request (README, "What it costs").

    What that machinery did is kept where it matters. Connections come from the client's pool
    (`make_connection`: behind Sentinel each asks for the primary when it connects), with its
    timeouts; at most `size` are open, and past that a call takes the client's normal path, which
    waits for a free connection. A connection that fails or is cancelled mid-call (the request's
    deadline) is closed, and the idle ones with it: after a failover they point at the old
    primary. A NOSCRIPT reply (Redis restarted) loads the script and runs it again - it did not
    run. A call that fails on a connection that was idle is sent once more on a new one, as the
    client's retry on connection errors did (Redis restarted meanwhile); a timeout never is. Behind
    Sentinel an idle connection to a node that is no longer the client's primary is closed, not
    used: after a failover, a resumed old primary still answers as master for a while."""

    def __init__(self, redis: Redis, size: int) -> None:
        self.redis = redis
        self.size = size
        self.idle: list[AbstractConnection] = []
        self.open = 0
        self.cluster = is_cluster(redis)

    async def run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        if self.cluster:  # its client picks the node and follows MOVED and ASK
            return await script(keys, args)
        for _ in range(3):  # a stale idle connection, then NOSCRIPT, then the answer
            while self.idle and self._elsewhere(self.idle[-1]):
                await self._discard(self.idle.pop())
            reused = bool(self.idle)
            if reused:
                conn = self.idle.pop()
            elif self.open < self.size:
                conn = self.redis.connection_pool.make_connection()  # type: ignore[no-untyped-call]
                self.open += 1
            else:
                return await script(keys, args)
            try:
                if not conn.is_connected:
                    await conn.connect()  # type: ignore[no-untyped-call]  # not left to send_command: behind Sentinel this asks for the primary
                with closed_transport_is_a_connection_error():
                    await conn.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
                reply = await conn.read_response()
            except NoScriptError:
                self.idle.append(conn)
                await self.redis.script_load(script.script)
                continue
            except RedisConnectionError:
                await self.close()
                await self._discard(conn)
                if reused:
                    continue
                raise
            except BaseException:
                await self.close()
                await self._discard(conn)
                raise
            self.idle.append(conn)
            return reply
        raise RedisConnectionError("no answer from Redis on a fresh connection either")

    def _elsewhere(self, conn: AbstractConnection) -> bool:
        pool = self.redis.connection_pool
        return isinstance(pool, FailoverPool) and address_of(conn) != pool.master_address

    async def _discard(self, conn: AbstractConnection) -> None:
        self.open -= 1
        await conn.disconnect(nowait=True)

    async def close(self) -> None:
        """Close every idle connection (at shutdown, and after any failure)."""
        idle, self.idle = self.idle, []
        for conn in idle:
            await self._discard(conn)
