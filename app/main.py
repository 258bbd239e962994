"""The web instance: one FastAPI app, run as N identical processes behind nginx."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from argon2 import PasswordHasher
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app import api, pages, redis_client
from app.admission import Admission, Busy
from app.auth import Auth
from app.config import SessionBackend, Settings, get_settings
from app.middleware import (
    STORE_UNAVAILABLE,
    DeadlineMiddleware,
    RequestLimitsMiddleware,
    ServedByMiddleware,
    TrustedProxyMiddleware,
)
from app.presence import Presence
from app.sessions import Limits, MemorySessionStore, NearCache, RedisSessionStore, SessionStore
from app.throttle import LoginThrottle
from app.users import UserStore

log = logging.getLogger("webfarm")


def make_session_store(settings: Settings, redis: Redis) -> SessionStore:
    limits = Limits(settings.session_idle_timeout_s, settings.session_absolute_timeout_s,
                    settings.cart_max_items, settings.cart_max_qty)
    if settings.session_backend is SessionBackend.MEMORY:
        log.warning("SESSION_BACKEND=memory: sessions live in this process only (the in-proc anti-pattern)")
        return MemorySessionStore(limits)
    store = RedisSessionStore(
        redis, settings.key_prefix, limits,
        # Behind Sentinel a login waits until the replica has the session too (see RedisSessionStore).
        replicas_to_wait=1 if settings.redis_sentinels else 0, wait_timeout_ms=settings.redis_wait_timeout_ms,
        lane_size=settings.redis_max_connections,
    )
    if settings.session_near_cache_s > 0:
        # The subscription gets a client of its own that never retries (see NearCache).
        return NearCache(store, redis, redis_client.connect_redis(settings, retries=0), settings.key_prefix,
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
    redis = redis_client.connect_redis(settings)
    presence = Presence(redis, settings.key_prefix, settings.instance_name, settings.stats_flush_interval_s)
    sessions = make_session_store(settings, redis)
    admission = Admission(settings.argon2_concurrency, settings.argon2_queue, settings.argon2_queue_wait_s)
    users = UserStore(redis, settings.key_prefix,
                      PasswordHasher(time_cost=settings.argon2_time_cost, memory_cost=settings.argon2_memory_kib),
                      admission)
    throttle = LoginThrottle(
        redis, settings.key_prefix, settings.login_max_attempts_per_pair, settings.login_max_failures_per_account,
        settings.login_max_failures_per_address, settings.login_failure_window_s,
        settings.register_max_per_address, settings.register_window_s,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            stack.push_async_callback(redis_client.close, redis)
            stack.callback(admission.close)
            if isinstance(sessions, NearCache):
                stack.push_async_callback(redis_client.close, sessions.subscriber)
            await stack.enter_async_context(sessions)
            for job in (presence.run(), ensure_demo_user(users, settings)):
                task = asyncio.create_task(job)
                stack.callback(task.cancel)
            yield

    app = FastAPI(title="webfarm", version="1.0.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.redis = redis
    app.state.presence = presence
    app.state.sessions = sessions
    app.state.users = users
    app.state.admission = admission
    app.state.throttle = throttle
    app.state.auth = Auth(settings, sessions, users, throttle)
    app.include_router(api.router)
    app.include_router(api.state_changing)
    app.include_router(pages.router)
    app.include_router(pages.forms)
    # add_middleware wraps: the last one added is the outermost.
    app.add_middleware(api.WhoAmIMiddleware)
    app.add_middleware(DeadlineMiddleware, seconds=settings.request_timeout_s)
    app.add_middleware(RequestLimitsMiddleware, max_body=settings.max_body_bytes, max_headers=settings.max_headers,
                       max_header_bytes=settings.max_header_bytes)
    app.add_middleware(TrustedProxyMiddleware, secret=settings.proxy_secret)
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
        await redis_client.store_failed(request.app.state.redis, exc)
        return JSONResponse({"detail": STORE_UNAVAILABLE}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(Busy)
    async def too_busy(request: Request, exc: Busy) -> JSONResponse:
        return JSONResponse({"detail": "too busy, try again shortly"}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Runs outside the middleware stack, so the X-Served-By header is added here.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500,
                            headers={"X-Served-By": settings.instance_name})

    return app
