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

The near cache's subscription must be on the node the data goes to (app.sessions.nearcache):
`primary_in_use`, `primary_named` and `address_of` tell it where each one is.
"""

import logging
import time
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection, Connection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.config import Settings
from app.metrics import REDIS_POOL_WAIT

log = logging.getLogger("webfarm")

#: A Redis node's (host, port).
Address = tuple[str, int]


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


def connect_redis(settings: Settings, retries: int | None = None) -> Redis:
    """A client that fails fast and bounded: a few quick retries on a dropped connection, then
    the error surfaces as 503. The pool blocks (briefly) when every connection is busy instead of
    failing at once, which redis-py's default pool does past its size under a burst. Each wait is
    bounded on its own (a free connection, connecting, the handshake, the reply), and they add up:
    a request's deadline (app.middleware) bounds the sum, whatever the request's number of calls."""
    if settings.redis_sentinels:
        return _connect_sentinel(settings)
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


async def store_failed(redis: Redis, exc: RedisError) -> None:
    """Every request that Redis failed: logged, and after a connection error, timeout or READONLY
    the primary is looked up again (the caller answers 503 with Retry-After)."""
    log.warning("session store unavailable: %s: %s", type(exc).__name__, exc)
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | ReadOnlyError):
        await forget_primary(redis)


async def forget_primary(redis: Redis) -> None:
    """After a connection error, timeout or READONLY: re-discover the primary (no-op without Sentinel)."""
    if isinstance(redis.connection_pool, FailoverPool):
        await redis.connection_pool.forget_primary()


def follows_sentinels(redis: Redis) -> bool:
    return isinstance(redis.connection_pool, FailoverPool)


def primary_in_use(redis: Redis) -> Address | None:
    """The primary a Sentinel client's new connections go to; None while it must ask again (or
    without Sentinel)."""
    pool = redis.connection_pool
    return pool.master_address if isinstance(pool, FailoverPool) else None


async def primary_named(redis: Redis) -> Address:
    """The primary as the first Sentinel that answers names it now (MasterNotFoundError if none does)."""
    pool = redis.connection_pool
    assert isinstance(pool, FailoverPool), "only a Sentinel client has Sentinels to ask"
    host, port = await pool.sentinel_manager.discover_master(pool.service_name)
    return str(host), int(port)


def address_of(connection: AbstractConnection) -> Address:
    managed = cast(Connection, connection)
    return managed.host, int(managed.port)


async def close(redis: Redis) -> None:
    await redis.aclose()
    if isinstance(redis.connection_pool, FailoverPool):
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

    async def run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[str | int]) -> Any:
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
