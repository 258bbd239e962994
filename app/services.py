"""What one instance is built of - settings, Redis clients, stores, throttle, auth - as one typed
object, built once per app and started and stopped by its lifespan."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.applications import Starlette

from app import metrics, redis_client
from app.admission import Admission
from app.auth import Auth
from app.config import SessionBackend, Settings
from app.presence import Presence
from app.sessions import Limits, MemorySessionStore, NearCache, RedisSessionStore, SessionStore
from app.throttle import LoginThrottle
from app.users import UserStore

log = logging.getLogger("webfarm")


@dataclass(frozen=True)
class Services:
    """Everything a request may need, read through `Services.of(app)` (app.deps does, for routes)."""

    settings: Settings
    redis: Redis
    #: The near cache's subscription client (it never retries, see NearCache); None without one.
    subscriber: Redis | None
    sessions: SessionStore
    users: UserStore
    presence: Presence
    throttle: LoginThrottle
    admission: Admission
    auth: Auth
    #: Set once the instance may take traffic: the demo account exists (if there is one), so a
    #: `make up` that returns lets the demo sign in at once, on a store that was still forming.
    started: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def build(cls, settings: Settings) -> "Services":
        """Connect nothing yet: the clients connect on first use, the jobs start in `running`."""
        redis = redis_client.connect_redis(settings)
        subscriber = redis_client.subscriber_of(settings, redis, NearCache.channel_of(settings.key_prefix)) \
            if _near_cache(settings) else None
        sessions = _session_store(settings, redis, subscriber)
        admission = Admission(settings.argon2_concurrency, settings.argon2_queue, settings.argon2_queue_wait_s)
        metrics.watch_admission(admission.limiter)
        users = UserStore(redis, settings.key_prefix,
                          PasswordHasher(time_cost=settings.argon2_time_cost, memory_cost=settings.argon2_memory_kib),
                          admission)
        throttle = LoginThrottle(
            redis, settings.key_prefix, settings.login_max_attempts_per_pair, settings.login_max_failures_per_account,
            settings.login_max_failures_per_address, settings.login_failure_window_s,
            settings.register_max_per_address, settings.register_window_s,
        )
        presence = Presence(redis, settings.key_prefix, settings.instance_name, settings.stats_flush_interval_s)
        return cls(settings, redis, subscriber, sessions, users, presence, throttle, admission,
                   Auth(settings, sessions, users, throttle))

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The lifespan: the store and the background jobs run inside; everything is closed after."""
        async with AsyncExitStack() as stack:
            stack.push_async_callback(redis_client.close, self.redis)
            stack.callback(self.admission.close)
            if self.subscriber is not None:
                stack.push_async_callback(redis_client.close, self.subscriber)
            await stack.enter_async_context(self.sessions)
            for job in (self.presence.run(), self._ensure_demo_user(), metrics.watch_event_loop()):
                task = asyncio.create_task(job)
                stack.callback(task.cancel)
            yield

    def bind(self, app: Starlette) -> None:
        """Make these `app`'s services, for `Services.of`."""
        app.state.services = self

    @staticmethod
    def of(app: Starlette) -> "Services":
        """The services bound to `app`: the one place that reads app.state."""
        services: Services = app.state.services
        return services

    async def _ensure_demo_user(self) -> None:
        """Create the demo account once Redis answers (it may start after the instances do)."""
        name = self.settings.demo_user
        while name:
            try:
                if await self.users.create(name, self.settings.demo_password):
                    log.info("created demo user %r", name)
                break
            except RedisError as exc:
                log.warning("demo user not created yet, retrying: %s", exc)
                await asyncio.sleep(0.25)
        self.started.set()


def _near_cache(settings: Settings) -> bool:
    return settings.session_backend is SessionBackend.REDIS and settings.session_near_cache_s > 0


def session_limits(settings: Settings) -> Limits:
    """The rules an instance's session store applies, as its settings give them."""
    return Limits(settings.session_idle_timeout_s, settings.session_absolute_timeout_s,
                  settings.cart_max_items, settings.cart_max_qty,
                  max_sessions_per_account=settings.session_max_per_account,
                  applied_window_s=settings.idempotency_window_s)


def _session_store(settings: Settings, redis: Redis, subscriber: Redis | None) -> SessionStore:
    limits = session_limits(settings)
    if settings.session_backend is SessionBackend.MEMORY:
        log.warning("SESSION_BACKEND=memory: sessions live in this process only (the in-proc anti-pattern)")
        return MemorySessionStore(limits)
    store = RedisSessionStore(
        redis, settings.key_prefix, limits,
        # Behind Sentinel and on a cluster a login waits until a replica has the session too (RedisSessionStore).
        replicas_to_wait=1 if settings.redis_sentinels or settings.redis_cluster_nodes else 0,
        wait_timeout_ms=settings.redis_wait_timeout_ms,
        lane_size=settings.redis_max_connections,
    )
    if subscriber is not None:
        return NearCache(store, redis, subscriber, settings.key_prefix, settings.session_near_cache_s,
                         settings.stats_flush_interval_s)
    return store
