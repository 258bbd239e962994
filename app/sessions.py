"""Session stores: the shared one (Redis) and the in-process one (the anti-pattern).

The browser holds a random token; the store keys the session by the token's SHA-256,
so whoever reads a Redis dump or MONITOR cannot replay a session.  Every authenticated
request is ONE call to ``touch``: check, count the request, slide the idle TTL, apply an
optional cart add, and return the record - a single Redis round trip (one Lua script),
atomic, and unable to resurrect a session that a logout on another instance deleted.
"""

import hashlib
import logging
import re
import secrets
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace

from redis.asyncio import Redis

TOKEN_BYTES = 32
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{43}")
_CART_PREFIX = "cart:"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Session:
    username: str
    created_on: str
    created_at: float
    requests: int
    cart: dict[str, int] = field(default_factory=dict)


def new_token() -> str:
    """A 256-bit session token from the CSPRNG, URL-safe (43 characters)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def session_id(token: str) -> str | None:
    """The store's key for a token, or None if the token cannot be one of ours."""
    if not _TOKEN_RE.fullmatch(token):
        return None
    return hashlib.sha256(token.encode()).hexdigest()


def _from_fields(fields: dict[str, str]) -> Session:
    cart = {k.removeprefix(_CART_PREFIX): int(v) for k, v in fields.items() if k.startswith(_CART_PREFIX)}
    return Session(
        username=fields["username"],
        created_on=fields["created_on"],
        created_at=int(fields["created_at_ms"]) / 1000,
        requests=int(fields["requests"]),
        cart=cart,
    )


class SessionStore(ABC):
    """What the app needs from a session store; every method is atomic."""

    def __init__(self, idle_timeout_s: int, absolute_timeout_s: int) -> None:
        self.idle_ms = idle_timeout_s * 1000
        self.absolute_ms = absolute_timeout_s * 1000

    @abstractmethod
    async def create(self, username: str, created_on: str) -> tuple[str, Session]:
        """Start a session; returns the raw token (for the cookie only) and the record."""

    @abstractmethod
    async def touch(self, token: str, add_item: tuple[str, int] | None = None) -> Session | None:
        """Validate, count the request, slide the idle expiry and optionally add to the cart."""

    async def identify(self, token: str) -> Session | None:
        """Who holds this token - identity only, the cart left empty. A store may answer it from
        a cache; use `touch` for anything that needs the cart."""
        session = await self.touch(token)
        return replace(session, cart={}) if session else None

    @abstractmethod
    async def delete(self, token: str) -> None:
        """End one session, on every instance at once."""

    @abstractmethod
    async def delete_user(self, username: str) -> int:
        """End every session of a user; returns how many there were."""

    @abstractmethod
    async def count_live(self) -> int:
        """Sessions that have not expired (as far as this store can see)."""


class RedisSessionStore(SessionStore):
    """Sessions as Redis hashes, ``<prefix>:session:<sha256(token)>``, expired by Redis TTL.

    With ``replicas_to_wait`` (behind Sentinel), ``create`` returns only once that many replicas
    have acknowledged the new session (WAIT), or after ``wait_timeout_ms`` - so a failover right
    after a login rarely loses the session. Rarely, not never: replication stays asynchronous, and
    a replica that acknowledged can still lose the write in a failover (Jepsen found as much for
    Sentinel); the login succeeds either way."""

    # KEYS: session, live-index, user-index. ARGV: sid, username, created_on, idle_ms, absolute_ms.
    _CREATE = """
    local t = redis.call('TIME')
    local now = t[1] * 1000 + math.floor(t[2] / 1000)
    redis.call('HSET', KEYS[1], 'username', ARGV[2], 'created_on', ARGV[3],
               'created_at_ms', now, 'requests', 0)
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
    redis.call('ZADD', KEYS[2], now + ARGV[4], ARGV[1])
    redis.call('SADD', KEYS[3], ARGV[1])
    redis.call('PEXPIRE', KEYS[3], ARGV[5])
    return now
    """
    # KEYS: session, live-index. ARGV: sid, idle_ms, absolute_ms, cart field ('' for none), qty.
    _TOUCH = """
    local created = redis.call('HGET', KEYS[1], 'created_at_ms')
    if not created then return false end
    local t = redis.call('TIME')
    local now = t[1] * 1000 + math.floor(t[2] / 1000)
    local left = tonumber(created) + tonumber(ARGV[3]) - now
    if left <= 0 then
        redis.call('DEL', KEYS[1])
        redis.call('ZREM', KEYS[2], ARGV[1])
        return false
    end
    local ttl = math.min(tonumber(ARGV[2]), left)
    redis.call('HINCRBY', KEYS[1], 'requests', 1)
    if ARGV[4] ~= '' then redis.call('HINCRBY', KEYS[1], ARGV[4], ARGV[5]) end
    redis.call('PEXPIRE', KEYS[1], ttl)
    redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
    return redis.call('HGETALL', KEYS[1])
    """

    def __init__(self, redis: Redis, prefix: str, idle_timeout_s: int, absolute_timeout_s: int,
                 replicas_to_wait: int = 0, wait_timeout_ms: int = 200) -> None:
        super().__init__(idle_timeout_s, absolute_timeout_s)
        self.redis = redis
        self.prefix = prefix
        self.replicas_to_wait = replicas_to_wait
        self.wait_timeout_ms = wait_timeout_ms
        self.live_key = f"{prefix}:live-sessions"
        self._create = redis.register_script(self._CREATE)
        self._touch = redis.register_script(self._TOUCH)

    def key(self, sid: str) -> str:
        return f"{self.prefix}:session:{sid}"

    def _user_key(self, username: str) -> str:
        return f"{self.prefix}:user-sessions:{username}"

    async def create(self, username: str, created_on: str) -> tuple[str, Session]:
        token = new_token()
        sid = session_id(token)
        assert sid is not None
        keys = [self.key(sid), self.live_key, self._user_key(username)]
        args: list[str | int] = [sid, username, created_on, self.idle_ms, self.absolute_ms]
        if not self.replicas_to_wait:
            now_ms = await self._create(keys, args)
        else:
            # WAIT covers the writes of its own connection: the script and WAIT share a pipeline.
            async with self.redis.pipeline(transaction=False) as pipe:
                await self._create(keys, args, client=pipe)
                pipe.wait(self.replicas_to_wait, self.wait_timeout_ms)
                now_ms, acknowledged = await pipe.execute()
            if acknowledged < self.replicas_to_wait:
                log.warning("session of %s not acknowledged by a replica within %d ms", username,
                            self.wait_timeout_ms)
        return token, Session(username, created_on, int(now_ms) / 1000, 0)

    async def touch(self, token: str, add_item: tuple[str, int] | None = None) -> Session | None:
        sid = session_id(token)
        if sid is None:
            return None
        item_field, qty = (_CART_PREFIX + add_item[0], add_item[1]) if add_item else ("", 0)
        reply = await self._touch(
            [self.key(sid), self.live_key], [sid, self.idle_ms, self.absolute_ms, item_field, qty]
        )
        if not reply:
            return None
        return _from_fields(dict(zip(reply[::2], reply[1::2], strict=True)))

    async def delete(self, token: str) -> None:
        sid = session_id(token)
        if sid is None:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.key(sid))
            pipe.zrem(self.live_key, sid)
            await pipe.execute()

    async def delete_user(self, username: str) -> int:
        sids = await self.redis.smembers(self._user_key(username))
        async with self.redis.pipeline(transaction=True) as pipe:
            for sid in sids:
                pipe.delete(self.key(str(sid)))
                pipe.zrem(self.live_key, sid)
            pipe.delete(self._user_key(username))
            results = await pipe.execute()
        return sum(results[0:-1:2])

    async def count_live(self) -> int:
        now_ms = int(time.time() * 1000)
        return int(await self.redis.zcount(self.live_key, now_ms, "+inf"))


@dataclass
class _Record:
    fields: dict[str, str]
    expires: float


class MemorySessionStore(SessionStore):
    """Sessions in this process's memory ("in-proc"). Correct on ONE server; in a farm every
    other instance has never heard of them and a crash forgets them all. Kept for the comparison."""

    def __init__(self, idle_timeout_s: int, absolute_timeout_s: int) -> None:
        super().__init__(idle_timeout_s, absolute_timeout_s)
        self._sessions: dict[str, _Record] = {}

    async def create(self, username: str, created_on: str) -> tuple[str, Session]:
        token = new_token()
        sid = session_id(token)
        assert sid is not None
        now = time.time()
        fields = {"username": username, "created_on": created_on,
                  "created_at_ms": str(int(now * 1000)), "requests": "0"}
        self._sessions[sid] = _Record(fields, now + self.idle_ms / 1000)
        return token, _from_fields(fields)

    async def touch(self, token: str, add_item: tuple[str, int] | None = None) -> Session | None:
        sid = session_id(token)
        record = self._sessions.get(sid) if sid else None
        if record is None or sid is None:
            return None
        now = time.time()
        hard_end = int(record.fields["created_at_ms"]) / 1000 + self.absolute_ms / 1000
        if now >= record.expires or now >= hard_end:
            del self._sessions[sid]
            return None
        record.expires = min(now + self.idle_ms / 1000, hard_end)
        record.fields["requests"] = str(int(record.fields["requests"]) + 1)
        if add_item:
            item = _CART_PREFIX + add_item[0]
            record.fields[item] = str(int(record.fields.get(item, "0")) + add_item[1])
        return _from_fields(record.fields)

    async def delete(self, token: str) -> None:
        sid = session_id(token)
        if sid:
            self._sessions.pop(sid, None)

    async def delete_user(self, username: str) -> int:
        doomed = [sid for sid, r in self._sessions.items() if r.fields["username"] == username]
        for sid in doomed:
            del self._sessions[sid]
        return len(doomed)

    async def count_live(self) -> int:
        now = time.time()
        return sum(1 for r in self._sessions.values() if r.expires > now)
