"""The web instance: one FastAPI app, run as N identical processes behind nginx."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from argon2 import PasswordHasher
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app import api, pages, sentinel
from app.config import SessionBackend, Settings, get_settings
from app.middleware import ServedByMiddleware
from app.nearcache import NearCachedStore
from app.presence import Presence
from app.sessions import MemorySessionStore, RedisSessionStore, SessionStore
from app.throttle import LoginThrottle
from app.users import UserStore

log = logging.getLogger("webfarm")


def connect_redis(settings: Settings, retries: int | None = None) -> Redis:
    """A client that fails fast and bounded: a few quick retries, then the error surfaces as 503.

    The pool blocks (briefly) when every connection is busy instead of failing at once, which
    redis-py's default pool does past 100 connections under a burst. With REDIS_SENTINELS, the
    primary is whichever node the Sentinels name (see app/sentinel.py)."""
    if settings.redis_sentinels:
        return sentinel.connect_sentinel(settings)
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout_s,
        decode_responses=True,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), settings.redis_retries if retries is None else retries),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=30,
    )
    return Redis.from_pool(pool)


def make_session_store(settings: Settings, redis: Redis) -> SessionStore:
    if settings.session_backend is SessionBackend.MEMORY:
        log.warning("SESSION_BACKEND=memory: sessions live in this process only (the in-proc anti-pattern)")
        return MemorySessionStore(settings.session_idle_timeout_s, settings.session_absolute_timeout_s)
    store = RedisSessionStore(
        redis, settings.key_prefix, settings.session_idle_timeout_s, settings.session_absolute_timeout_s,
        # Behind Sentinel a login waits until the replica has the session too (see RedisSessionStore).
        replicas_to_wait=1 if settings.redis_sentinels else 0, wait_timeout_ms=settings.redis_wait_timeout_ms,
    )
    if settings.session_near_cache_s > 0:
        # The subscription gets a client of its own that never retries (see NearCachedStore).
        return NearCachedStore(store, redis, connect_redis(settings, retries=0),
                               settings.session_near_cache_s, settings.stats_flush_interval_s)
    return store


async def ensure_demo_user(users: UserStore, settings: Settings) -> None:
    """Create the demo account once Redis answers (it may start after the instances do)."""
    if not settings.demo_user:
        return
    while True:
        try:
            if await users.create(settings.demo_user, settings.demo_password):
                log.info("created demo user %r", settings.demo_user)
            return
        except RedisError as exc:
            log.warning("demo user not created yet, retrying: %s", exc)
            await asyncio.sleep(1)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    redis = connect_redis(settings)
    presence = Presence(redis, settings.key_prefix, settings.instance_name, settings.stats_flush_interval_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sessions = app.state.sessions
        tasks = [asyncio.create_task(presence.run()),
                 asyncio.create_task(ensure_demo_user(app.state.users, settings))]
        if isinstance(sessions, NearCachedStore):
            tasks += [asyncio.create_task(sessions.listen()), asyncio.create_task(sessions.run_flusher())]
        try:
            yield
        finally:
            if isinstance(sessions, NearCachedStore):
                sessions.stop()
                with suppress(RedisError):
                    await sessions.flush()  # hand the counted requests over before going
            for task in tasks:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
            await sentinel.close(redis)
            if isinstance(sessions, NearCachedStore):
                await sentinel.close(sessions.subscriber)

    app = FastAPI(title="webfarm", version="1.0.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.redis = redis
    app.state.presence = presence
    app.state.sessions = make_session_store(settings, redis)
    app.state.users = UserStore(
        redis, settings.key_prefix,
        PasswordHasher(time_cost=settings.argon2_time_cost, memory_cost=settings.argon2_memory_kib),
    )
    app.state.throttle = LoginThrottle(
        redis, settings.key_prefix, settings.login_max_failures_per_account,
        settings.login_max_failures_per_address, settings.login_failure_window_s,
    )
    app.include_router(api.router)
    app.include_router(api.state_changing)
    app.include_router(pages.router)
    app.add_middleware(ServedByMiddleware, instance=settings.instance_name, presence=presence)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes the offending input back; for a login that is the password.
        errors = [{"type": e["type"], "loc": list(e["loc"]),
                   "msg": f"{e['msg']}: {e['ctx']['error']}" if e["type"] == "json_invalid" else e["msg"]}
                  for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(RedisError)
    async def store_unavailable(request: Request, exc: RedisError) -> JSONResponse:
        log.warning("session store unavailable: %s: %s", type(exc).__name__, exc)
        if isinstance(exc, RedisConnectionError | RedisTimeoutError | ReadOnlyError):
            await sentinel.forget_primary(request.app.state.redis)
        return JSONResponse({"detail": "session store unavailable"}, status_code=503,
                            headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Runs outside the middleware stack, so the X-Served-By header is added here.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500,
                            headers={"X-Served-By": settings.instance_name})

    return app
