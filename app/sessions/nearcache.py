"""A near cache of "who is this session", in front of any store, so that identity checks skip
the round trip to it. It uses only the store's public interface: the rules (expiry, epochs,
indexes) live in the store alone.

Correctness comes from Redis, not from timers:
- every ending of a session (logout, sign-out-everywhere, password change) is PUBLISHed, and
  the ending request waits until every subscribed instance has acknowledged dropping its copy,
  so when a logout answers 204, no instance serves the session from its cache any more;
- an entry is trusted only while this instance's subscription is up; when the channel drops,
  the cache is emptied and bypassed until the subscription is back;
- an entry filled by a read that overlapped an invalidation is not kept (the generation check);
- entries live at most `max_age_s` anyway, and never past the session's absolute timeout.

Only identity is served from here (GET /api/me); anything that reads or changes the cart goes to
the store. The requests counted from the cache are handed to the store once per
`flush_interval_s` (`touch` with that count, which also slides the idle expiry and never brings
a deleted session back): a crash loses at most that interval's counts.
"""

import asyncio
import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Self

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.sessions.base import CartAdd, Session, SessionKey, SessionStore

log = logging.getLogger(__name__)

ACK_TIMEOUT_S = 0.2


@dataclass(frozen=True)
class _Entry:
    key: SessionKey
    cached_at: float
    session: Session


class NearCache(SessionStore):
    def __init__(self, store: SessionStore, redis: Redis, subscriber: Redis, prefix: str,
                 max_age_s: float, flush_interval_s: float) -> None:
        """`subscriber` must not retry: a dropped subscription has to surface as an error, or
        redis-py reconnects and re-subscribes silently, and what was published meanwhile is lost."""
        super().__init__(store.limits)
        self.store = store
        self.redis = redis
        self.subscriber = subscriber
        self.max_age_s = max_age_s
        self.flush_interval_s = flush_interval_s
        self.channel = f"{prefix}:session-invalidations"
        self._acks = f"{prefix}:invalidation-acks:"
        self.entries: dict[str, _Entry] = {}
        self.pending: Counter[str] = Counter()
        self.subscribed = False
        self.generation = 0
        self._running = False
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Self:
        await self.store.__aenter__()
        self._running = True
        self._tasks = [asyncio.create_task(self.listen()), asyncio.create_task(self._run_flusher())]
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        # A flag, not only a cancel: redis-py's pub/sub read can swallow a task cancel.
        self._running = False
        try:
            await self.flush()  # hand the counted requests over before going
        except RedisError as error:
            log.warning("final write-behind flush failed: %s", error)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.__aexit__(exc_type, exc, tb)

    # -- the store interface -----------------------------------------------------------------
    async def epoch(self, username: str) -> int:
        return await self.store.epoch(username)

    async def create(self, username: str, created_on: str, epoch: int) -> tuple[SessionKey, Session] | None:
        return await self.store.create(username, created_on, epoch)

    async def touch(self, key: SessionKey, add: CartAdd | None = None, requests: int = 1) -> Session | None:
        return await self.store.touch(key, add, requests)

    async def identify(self, key: SessionKey) -> Session | None:
        """Who holds this key: from the near cache when it may be trusted, else from the store."""
        now = time.time()
        entry = self.entries.get(key.id) if self.subscribed else None
        if entry and now - entry.cached_at < self.max_age_s \
                and now < entry.session.created_at + self.limits.absolute_timeout_s:
            self.pending[key.id] += 1
            return replace(entry.session, requests=entry.session.requests + self.pending[key.id])
        generation = self.generation
        session = await self.store.identify(key)
        if session is not None and self.subscribed and generation == self.generation:
            self.entries[key.id] = _Entry(key, now, session)
        return session

    async def delete(self, key: SessionKey) -> None:
        await self.store.delete(key)
        await self._invalidate(key.id)

    async def delete_user(self, username: str) -> int:
        ended = await self.store.delete_user(username)
        await self._invalidate("*")
        return ended

    async def count_live(self) -> int:
        return await self.store.count_live()

    # -- invalidation ----------------------------------------------------------------------
    async def _invalidate(self, sid: str) -> None:
        """Tell every instance, and wait until each subscriber has dropped its copy."""
        self._drop(sid)
        nonce = secrets.token_hex(8)
        ack_key = self._acks + nonce
        receivers = int(await self.redis.publish(self.channel, f"{nonce} {sid}"))
        try:
            async with asyncio.timeout(ACK_TIMEOUT_S):  # a GET held up by a stalled Redis included
                while int(await self.redis.get(ack_key) or 0) < receivers:  # noqa: ASYNC110 - polls Redis
                    await asyncio.sleep(0.001)
        except TimeoutError:
            log.warning("not every instance acknowledged the end of a session within %.1f s", ACK_TIMEOUT_S)

    def _drop(self, sid: str) -> None:
        self.generation += 1
        if sid == "*":
            self.entries.clear()
        else:
            self.entries.pop(sid, None)

    async def listen(self) -> None:
        """Follow the invalidation channel; while it is down, the cache is not used."""
        while self._running:
            try:
                async with self.subscriber.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    while await pubsub.get_message(timeout=1.0) is None:  # the subscription's confirmation
                        pass
                    self.entries.clear()
                    self.subscribed = True
                    while self._running:
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
        """Write behind: hand the counted requests to the store (which also slides the TTL)."""
        pending, self.pending = self.pending, Counter()
        if not pending:
            return
        keys = {sid: entry.key for sid in pending if (entry := self.entries.get(sid))}
        # A key dropped from the cache meanwhile (logout, expiry) gets no write: nothing to keep alive.
        todo = [(sid, keys[sid], n) for sid, n in pending.items() if sid in keys]
        results = await asyncio.gather(*(self.store.touch(key, requests=n) for _, key, n in todo),
                                       return_exceptions=True)
        for (sid, _, n), result in zip(todo, results, strict=True):
            if isinstance(result, RedisError):
                self.pending[sid] += n
            elif isinstance(result, BaseException):
                raise result
            elif result is None:
                self.entries.pop(sid, None)
            elif entry := self.entries.get(sid):
                self.entries[sid] = replace(entry, session=replace(entry.session, requests=result.requests))
        if any(isinstance(r, RedisError) for r in results):
            raise RedisError("write-behind flush failed for some sessions; kept for the next one")

    async def _run_flusher(self) -> None:
        while self._running:
            await asyncio.sleep(self.flush_interval_s)
            try:
                await self.flush()
            except RedisError as exc:
                log.warning("write-behind flush failed, will retry: %s", exc)
