"""A near cache of "who is this session", so that identity checks skip the Redis round trip.

Correctness comes from Redis, not from timers:
- every ending of a session (logout, sign-out-everywhere, password change) is PUBLISHed, and
  the ending request waits until every subscribed instance has acknowledged dropping its copy,
  so when a logout answers 204, no instance serves the session from its cache any more;
- an entry is trusted only while this instance's subscription is up; when the channel drops,
  the cache is emptied and bypassed until the subscription is back;
- an entry filled by a read that overlapped an invalidation is not kept (the generation check);
- entries live at most `max_age_s` anyway, and never past the session's absolute timeout.

Only identity is served from here (GET /api/me); anything that reads or changes the cart goes to
Redis. The per-request counter and the idle-TTL slide are written behind, once per
`flush_interval_s`, by a script that touches only sessions that still exist: a crash loses at most
that interval's counts, and a flush never brings a deleted session back.
"""

import asyncio
import logging
import secrets
import time
from collections import Counter
from dataclasses import replace

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.sessions import RedisSessionStore, Session, SessionStore, session_id

log = logging.getLogger(__name__)

ACK_TIMEOUT_S = 0.2


class NearCachedStore(SessionStore):
    # KEYS: session, live-index. ARGV: sid, idle_ms, absolute_ms, requests to add.
    _BUMP = """
    local created = redis.call('HGET', KEYS[1], 'created_at_ms')
    if not created then return 0 end
    local t = redis.call('TIME')
    local now = t[1] * 1000 + math.floor(t[2] / 1000)
    local ttl = math.min(tonumber(ARGV[2]), tonumber(created) + tonumber(ARGV[3]) - now)
    if ttl <= 0 then return 0 end
    redis.call('HINCRBY', KEYS[1], 'requests', ARGV[4])
    redis.call('PEXPIRE', KEYS[1], ttl)
    redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
    return 1
    """

    def __init__(self, inner: RedisSessionStore, redis: Redis, subscriber: Redis,
                 max_age_s: float, flush_interval_s: float) -> None:
        """`subscriber` must not retry: a dropped subscription has to surface as an error, or
        redis-py reconnects and re-subscribes silently, and what was published meanwhile is lost."""
        super().__init__(inner.idle_ms // 1000, inner.absolute_ms // 1000)
        self.inner = inner
        self.redis = redis
        self.subscriber = subscriber
        self.max_age_s = max_age_s
        self.flush_interval_s = flush_interval_s
        self.channel = f"{inner.prefix}:session-invalidations"
        self._acks = f"{inner.prefix}:invalidation-acks:"
        self._bump = redis.register_script(self._BUMP)
        self.entries: dict[str, tuple[float, Session]] = {}
        self.pending: Counter[str] = Counter()
        self.subscribed = False
        self.generation = 0
        self.running = True

    # -- the store interface -----------------------------------------------------------------
    async def create(self, username: str, created_on: str) -> tuple[str, Session]:
        return await self.inner.create(username, created_on)

    async def touch(self, token: str, add_item: tuple[str, int] | None = None) -> Session | None:
        return await self.inner.touch(token, add_item)

    async def identify(self, token: str) -> Session | None:
        """Who holds this token: from the near cache when it may be trusted, else from Redis."""
        sid = session_id(token)
        if sid is None:
            return None
        now = time.time()
        cached = self.entries.get(sid) if self.subscribed else None
        if cached and now - cached[0] < self.max_age_s and now < cached[1].created_at + self.absolute_ms / 1000:
            self.pending[sid] += 1
            return replace(cached[1], requests=cached[1].requests + self.pending[sid])
        generation = self.generation
        session = await self.inner.touch(token)
        if session is None:
            return None
        identity = replace(session, cart={})
        if self.subscribed and generation == self.generation:
            self.entries[sid] = (now, identity)
        return identity

    async def delete(self, token: str) -> None:
        sid = session_id(token)
        if sid:
            await self.inner.delete(token)
            await self._invalidate(sid)

    async def delete_user(self, username: str) -> int:
        ended = await self.inner.delete_user(username)
        await self._invalidate("*")
        return ended

    async def count_live(self) -> int:
        return await self.inner.count_live()

    # -- invalidation ----------------------------------------------------------------------
    async def _invalidate(self, sid: str) -> None:
        """Tell every instance, and wait until each subscriber has dropped its copy."""
        self._drop(sid)
        nonce = secrets.token_hex(8)
        ack_key = self._acks + nonce
        receivers = int(await self.redis.publish(self.channel, f"{nonce} {sid}"))
        deadline = time.monotonic() + ACK_TIMEOUT_S
        while int(await self.redis.get(ack_key) or 0) < receivers:
            if time.monotonic() > deadline:
                log.warning("not every instance acknowledged the end of a session within %.1f s", ACK_TIMEOUT_S)
                break
            await asyncio.sleep(0.001)

    def _drop(self, sid: str) -> None:
        self.generation += 1
        if sid == "*":
            self.entries.clear()
        else:
            self.entries.pop(sid, None)

    def stop(self) -> None:
        """End `listen` and `run_flusher` (redis-py's pub/sub read can swallow a task cancel)."""
        self.running = False

    async def listen(self) -> None:
        """Follow the invalidation channel; while it is down, the cache is not used."""
        while self.running:
            try:
                async with self.subscriber.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    while await pubsub.get_message(timeout=1.0) is None:  # the subscription's confirmation
                        pass
                    self.entries.clear()
                    self.subscribed = True
                    while self.running:
                        message = await pubsub.get_message(timeout=0.5)
                        if message is None:  # quiet for half a second: is the connection still there?
                            await pubsub.ping()
                            continue
                        if message["type"] != "message":  # the ping's pong
                            continue
                        nonce, sid = str(message["data"]).split(" ", 1)
                        self._drop(sid)
                        async with self.redis.pipeline(transaction=False) as pipe:
                            pipe.incr(self._acks + nonce)
                            pipe.expire(self._acks + nonce, 10)
                            await pipe.execute()
            except (RedisError, OSError) as exc:
                log.warning("invalidation channel lost, near cache off until it is back: %s", exc)
            finally:
                self.subscribed = False
                self.entries.clear()
            await asyncio.sleep(0.2)

    async def flush(self) -> None:
        """Write behind: add the counted requests and slide the TTL of the sessions in use."""
        pending, self.pending = self.pending, Counter()
        if not pending:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for sid, n in pending.items():
                    await self._bump([self.inner.key(sid), self.inner.live_key],
                                     [sid, self.idle_ms, self.absolute_ms, n], client=pipe)
                alive = await pipe.execute()
        except RedisError:
            self.pending.update(pending)
            raise
        for (sid, n), exists in zip(pending.items(), alive, strict=True):
            cached = self.entries.get(sid)
            if not exists:
                self.entries.pop(sid, None)
            elif cached:
                self.entries[sid] = (cached[0], replace(cached[1], requests=cached[1].requests + n))

    async def run_flusher(self) -> None:
        while self.running:
            await asyncio.sleep(self.flush_interval_s)
            try:
                await self.flush()
            except RedisError as exc:
                log.warning("write-behind flush failed, will retry: %s", exc)
