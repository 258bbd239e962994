"""A near cache of "who is this session", in front of any store, so that identity checks skip
the round trip to it. It uses only the store's public interface: the rules (expiry, epochs,
indexes) live in the store alone.

Correctness comes from Redis, and from a lease where Redis cannot say:
- every ending of a session (logout, sign-out-everywhere, password change) is PUBLISHed, and
  the ending request waits until every subscriber Redis delivered it to has acknowledged
  dropping its copy (acks come back over pub/sub, so the wait is an asyncio event with a
  deadline, not redis-py calls inside a timeout that redis-py can swallow);
- the cache is trusted only under a lease: the listener PINGs every PING_INTERVAL_S, and each
  reply (which Redis sends after every message published before that PING) renews the lease to
  LEASE_S after the PING was sent. A subscription that stops delivering loses the lease within
  LEASE_S, is torn down and resubscribed, and the cache is emptied meanwhile. So an ending that
  misses an acknowledgement waits until LEASE_S after its PUBLISH, by when the silent subscriber
  has stopped trusting its cache: when a logout answers 204, no instance serves the session;
- behind Sentinel, the cache is also trusted only while the subscription is on the node the
  data client uses and the Sentinels name primary (asked every PRIMARY_CHECK_S): after a
  failover, or while a resumed old primary still says master, the subscription moves and the
  cache is off until it has. On a cluster the same holds for the primary of the channel's slot,
  as the cluster names it (asked every PRIMARY_CHECK_S); the channels are sharded (SPUBLISH,
  SSUBSCRIBE), so a publication goes to that node and its count is of the subscribers there, and
  a slot that moves away unsubscribes them (the listener then subscribes again where it went);
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
from collections import Counter, deque
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Self

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from app import redis_client
from app.metrics import NEAR_CACHE, NEAR_CACHE_INVALIDATIONS
from app.sessions.base import CartAdd, Session, SessionKey, SessionStore

log = logging.getLogger(__name__)

#: The cache is trusted for this long after a PING whose reply came back.
LEASE_S = 0.5
PING_INTERVAL_S = 0.1
_HITS, _MISSES = NEAR_CACHE.labels("hit"), NEAR_CACHE.labels("miss")
#: A (re)subscription must be confirmed within this, or it is given up and tried again.
CONFIRM_TIMEOUT_S = 1.0
#: Behind Sentinel: how often the Sentinels are asked which node is primary; an answer older than
#: twice this is no answer.
PRIMARY_CHECK_S = 0.5
_PING = "near-cache"


class _Lost(Exception):
    """The subscription cannot be trusted any more: it is closed and made again."""


class _Acks:
    def __init__(self) -> None:
        self.count = 0
        self.needed: int | None = None
        self.done = asyncio.Event()

    def add(self, n: int = 1) -> None:
        self.count += n
        if self.needed is not None and self.count >= self.needed:
            self.done.set()


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
        self.channel = self.channel_of(prefix)
        self._acks = f"{prefix}:{{invalidations}}:acks:"
        #: This instance's name on the channel: acknowledgements for its endings come to it.
        self.node = secrets.token_hex(8)
        self.entries: dict[str, _Entry] = {}
        self.pending: Counter[str] = Counter()
        self.subscribed = False
        self.generation = 0
        self._leased_until = 0.0
        self._on: redis_client.Address | None = None
        self._primary: redis_client.Address | None = None
        self._primary_at = 0.0
        self._waiting: dict[str, _Acks] = {}
        self._running = False
        self._tasks: list[asyncio.Task[None]] = []
        self._acking: set[asyncio.Task[None]] = set()

    @staticmethod
    def channel_of(prefix: str) -> str:
        """The invalidation channel. Its hash tag is the acknowledgement channels' too: on a cluster all
        are in one slot, on one node."""
        return f"{prefix}:{{invalidations}}:sessions"

    async def __aenter__(self) -> Self:
        await self.store.__aenter__()
        self._running = True
        self._tasks = [asyncio.create_task(self.listen()), asyncio.create_task(self._run_flusher())]
        if redis_client.follows_primary(self.subscriber):
            self._tasks.append(asyncio.create_task(self._watch_primary()))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        # A flag, not only a cancel: redis-py's pub/sub read can swallow a task cancel.
        self._running = False
        try:
            await self.flush()  # hand the counted requests over before going
        except RedisError as error:
            log.warning("final write-behind flush failed: %s", error)
        for task in [*self._tasks, *self._acking]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._acking, return_exceptions=True)
        await self.store.__aexit__(exc_type, exc, tb)

    # -- the store interface -----------------------------------------------------------------
    async def epoch(self, username: str) -> int:
        return await self.store.epoch(username)

    async def create(self, username: str, created_on: str, epoch: int) -> tuple[SessionKey, Session] | None:
        return await self.store.create(username, created_on, epoch)

    async def touch(self, key: SessionKey, add: CartAdd | None = None, requests: int = 1) -> Session | None:
        return await self.store.touch(key, add, requests)

    def cached(self, key: SessionKey) -> Session | None:
        """Who holds this key, from the near cache when it may be trusted (and counted as a request)."""
        now = time.time()
        trusted = self.trusted()
        if not trusted and self.entries:
            self._drop("*")
        entry = self.entries.get(key.id) if trusted else None
        if entry and now - entry.cached_at < self.max_age_s \
                and now < (session := entry.session).created_at + self.limits.absolute_timeout_s:
            self.pending[key.id] += 1
            _HITS.inc()
            return Session(session.username, session.created_on, session.created_at,
                           session.requests + self.pending[key.id])
        return None

    async def identify(self, key: SessionKey) -> Session | None:
        """Who holds this key: from the near cache when it may be trusted, else from the store."""
        if (session := self.cached(key)) is not None:
            return session
        _MISSES.inc()
        now = time.time()
        generation = self.generation
        session = await self.store.identify(key)
        if session is not None and generation == self.generation and self.trusted():
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
    def trusted(self) -> bool:
        """Whether the cache may answer: subscribed, under the lease, and (behind Sentinel, on a
        cluster) on the node the publications go to, which was named primary a moment ago."""
        now = time.monotonic()
        if not self.subscribed or now >= self._leased_until:
            return False
        if not redis_client.follows_primary(self.subscriber):
            return True
        return (self._primary is not None and now - self._primary_at < 2 * PRIMARY_CHECK_S
                and self._on == self._primary == redis_client.publishes_to(self.redis, self.channel))

    async def _invalidate(self, sid: str) -> None:
        """Tell every instance, and wait until each one Redis delivered to has dropped its copy, or
        until LEASE_S after the PUBLISH: by then a subscriber that did not answer trusts its cache
        no more. The wait is on an asyncio event, so its bound holds whatever Redis does."""
        self._drop(sid)
        nonce = secrets.token_hex(8)
        acks = self._waiting[nonce] = _Acks()
        try:
            receivers = int(await self.redis.spublish(self.channel, f"{self.node} {nonce} {sid}"))
            published = time.monotonic()
            acks.needed = receivers
            acks.add(0)
            try:
                await asyncio.wait_for(acks.done.wait(), published + LEASE_S - time.monotonic())
            except TimeoutError:
                log.warning("%d of %d instances did not acknowledge the end of a session; waited out their "
                            "%.1f s lease", receivers - acks.count, receivers, LEASE_S)
        finally:
            del self._waiting[nonce]

    def _drop(self, sid: str) -> None:
        self.generation += 1
        if sid == "*":
            NEAR_CACHE_INVALIDATIONS.inc(len(self.entries))
            self.entries.clear()
        elif self.entries.pop(sid, None) is not None:
            NEAR_CACHE_INVALIDATIONS.inc()

    async def listen(self) -> None:
        """Follow the invalidation channel; while it is down, the cache is not used."""
        while self._running:
            try:
                await redis_client.forget_primary(self.subscriber)  # behind Sentinel, on a cluster: ask again
                async with self.subscriber.pubsub() as pubsub:
                    await self._subscribe(pubsub)
                    await self._follow(pubsub)
            except (RedisError, OSError, _Lost) as exc:
                log.warning("invalidation channel lost, near cache off until it is back: %s", exc)
            finally:
                self.subscribed = False
                self._on = None
                self._drop("*")
            await asyncio.sleep(0.2)

    async def _subscribe(self, pubsub: PubSub) -> None:
        sent = time.monotonic()
        await pubsub.ssubscribe(self.channel, self._acks + self.node)
        confirmed = 0
        while confirmed < 2:  # one confirmation per channel, within a bound
            left = sent + CONFIRM_TIMEOUT_S - time.monotonic()
            if left <= 0:
                raise _Lost(f"subscription not confirmed within {CONFIRM_TIMEOUT_S} s")
            message = await pubsub.get_message(timeout=left)
            confirmed += message is not None and message["type"] == "ssubscribe"
        assert pubsub.connection is not None
        self._on = redis_client.address_of(pubsub.connection)
        self._drop("*")
        self._leased_until = sent + LEASE_S
        self.subscribed = True

    async def _follow(self, pubsub: PubSub) -> None:
        pings: deque[float] = deque()
        next_ping = 0.0
        while self._running:
            now = time.monotonic()
            if now >= next_ping:
                pings.append(now)
                await pubsub.ping(_PING)
                next_ping = now + PING_INTERVAL_S
            if self._primary is not None and self._on != self._primary:
                raise _Lost(f"{self._primary} is named primary, subscribed on {self._on}")
            # Not get_message: it takes the reply to a PING with a payload (a bare string under RESP3,
            # ["pong", payload] under RESP2) for a message and mangles it.
            response = await pubsub.parse_response(block=False, timeout=max(0.0, next_ping - time.monotonic()))
            if response is None:
                if pings and time.monotonic() - pings[0] > LEASE_S:
                    raise _Lost(f"no reply to a PING within {LEASE_S} s")
                continue
            if response == _PING or (isinstance(response, list) and response[:2] == ["pong", _PING]):
                if pings:
                    self._leased_until = pings.popleft() + LEASE_S
                continue
            message = await pubsub.handle_message(response)  # type: ignore[no-untyped-call]
            if message is not None and message["type"] == "smessage":
                self._received(str(message["channel"]), str(message["data"]))
            elif message is not None and message["type"] == "sunsubscribe":  # the slot moved, or the node is a replica
                raise _Lost(f"unsubscribed from {message['channel']} by {self._on}")

    def _received(self, channel: str, data: str) -> None:
        if channel != self.channel:  # an acknowledgement of one of this instance's endings
            if acks := self._waiting.get(data):
                acks.add()
            return
        origin, nonce, sid = data.split(" ", 2)
        self._drop(sid)
        task = asyncio.create_task(self._acknowledge(origin, nonce))
        self._acking.add(task)
        task.add_done_callback(self._acking.discard)

    async def _acknowledge(self, origin: str, nonce: str) -> None:
        try:
            await self.redis.spublish(self._acks + origin, nonce)
        except RedisError as exc:  # the ending waits out the lease instead
            log.warning("could not acknowledge the end of a session: %s", exc)

    async def _watch_primary(self) -> None:
        """Behind Sentinel, on a cluster: which node is primary now, for `trusted` and the listener; a
        data client still on another node is made to ask again."""
        while self._running:
            try:
                primary: redis_client.Address | None = await redis_client.primary_named(self.subscriber)
            except RedisError as exc:
                log.warning("no primary named; near cache off: %s", exc)
                primary = None
            self._primary, self._primary_at = primary, time.monotonic()
            if primary is not None and redis_client.publishes_to(self.redis, self.channel) not in (None, primary):
                await redis_client.forget_primary(self.redis)
            await asyncio.sleep(PRIMARY_CHECK_S)

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
