"""Sessions as Redis hashes, ``<prefix>:session:<sha256(token)>``, expired by Redis TTL.

Every authenticated request is ONE call to ``touch``: check, count the request, slide the idle
TTL, apply an optional cart add, and return the record - one Lua script, one round trip, atomic,
and unable to resurrect a session that a logout on another instance deleted."""

import logging
import time
from types import TracebackType

from redis.asyncio import Redis

from app.redis_client import Lane
from app.sessions.base import CartAdd, CartFull, CartRefused, Limits, Session, SessionKey, SessionStore

log = logging.getLogger(__name__)

CART_PREFIX = "cart:"

# KEYS: session, live-index, user-index, user-epoch. ARGV: sid, username, created_on, idle_ms, epoch, absolute_ms.
_CREATE = """
local epoch = redis.call('GET', KEYS[4]) or '0'
if epoch ~= ARGV[5] then return false end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('HSET', KEYS[1], 'username', ARGV[2], 'created_on', ARGV[3], 'created_at_ms', now,
           'requests', 0, 'epoch', epoch)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + ARGV[4], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
-- The epoch must outlive every session started under it (see delete_user).
if epoch ~= '0' then redis.call('PEXPIRE', KEYS[4], ARGV[6]) end
return now
"""

# KEYS: session, live-index[, applied-marker]. ARGV: sid, idle_ms, absolute_ms, requests, cart field, qty,
# max items, max qty, epoch key prefix. The user's epoch key is derived from the session's username,
# so it cannot be declared in KEYS: fine on a single Redis or behind Sentinel, not on Redis Cluster.
_TOUCH = """
local s = redis.call('HMGET', KEYS[1], 'created_at_ms', 'username', 'epoch')
if not s[1] then return false end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local left = tonumber(s[1]) + tonumber(ARGV[3]) - now
local epoch = redis.call('GET', ARGV[9] .. s[2]) or '0'
if left <= 0 or epoch ~= (s[3] or '0') then
    redis.call('DEL', KEYS[1])
    redis.call('ZREM', KEYS[2], ARGV[1])
    return false
end
local status = 'ok'
if ARGV[5] ~= '' then
    local have = tonumber(redis.call('HGET', KEYS[1], ARGV[5]) or '0')
    if KEYS[3] and redis.call('EXISTS', KEYS[3]) == 1 then
        status = 'duplicate'
    -- HLEN less the five fields that are not cart items (username ... epoch).
    elseif have == 0 and redis.call('HLEN', KEYS[1]) - 5 >= tonumber(ARGV[7]) then
        status = 'too_many_items'
    elseif have + tonumber(ARGV[6]) > tonumber(ARGV[8]) then
        status = 'quantity_too_high'
    else
        redis.call('HINCRBY', KEYS[1], ARGV[5], ARGV[6])
        if KEYS[3] then redis.call('SET', KEYS[3], 1, 'PX', ARGV[3]) end
    end
end
local ttl = math.min(tonumber(ARGV[2]), left)
if status ~= 'duplicate' then redis.call('HINCRBY', KEYS[1], 'requests', ARGV[4]) end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
local record = redis.call('HGETALL', KEYS[1])
table.insert(record, 1, status)
return record
"""

_REFUSALS = {"too_many_items": CartRefused.TOO_MANY_ITEMS, "quantity_too_high": CartRefused.QUANTITY_TOO_HIGH}


def session_from_fields(fields: dict[str, str]) -> Session:
    cart = {k.removeprefix(CART_PREFIX): int(v) for k, v in fields.items() if k.startswith(CART_PREFIX)}
    return Session(
        username=fields["username"],
        created_on=fields["created_on"],
        created_at=int(fields["created_at_ms"]) / 1000,
        requests=int(fields["requests"]),
        cart=cart,
    )


class RedisSessionStore(SessionStore):
    """With ``replicas_to_wait`` (behind Sentinel), ``create`` returns only once that many replicas
    have acknowledged the new session (WAIT), or after ``wait_timeout_ms`` - so a failover right
    after a login rarely loses the session. Rarely, not never: replication stays asynchronous, and
    a replica that acknowledged can still lose the write in a failover (Jepsen found as much for
    Sentinel); the login succeeds either way."""

    def __init__(self, redis: Redis, prefix: str, limits: Limits, replicas_to_wait: int = 0,
                 wait_timeout_ms: int = 200, lane_size: int = 64) -> None:
        super().__init__(limits)
        self.redis = redis
        self.lane = Lane(redis, lane_size)  # every authenticated request's one round trip
        self.prefix = prefix
        self.replicas_to_wait = replicas_to_wait
        self.wait_timeout_ms = wait_timeout_ms
        self.live_key = f"{prefix}:live-sessions"
        self._epoch_prefix = f"{prefix}:user-epoch:"
        self._create = redis.register_script(_CREATE)
        self._touch = redis.register_script(_TOUCH)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.lane.close()

    def key(self, sid: str) -> str:
        return f"{self.prefix}:session:{sid}"

    def _user_key(self, username: str) -> str:
        return f"{self.prefix}:user-sessions:{username}"

    async def epoch(self, username: str) -> int:
        return int(await self.redis.get(self._epoch_prefix + username) or 0)

    async def create(self, username: str, created_on: str, epoch: int) -> tuple[SessionKey, Session] | None:
        key = SessionKey.new()
        keys = [self.key(key.id), self.live_key, self._user_key(username), self._epoch_prefix + username]
        args: list[str | int] = [key.id, username, created_on, self.limits.idle_ms, epoch, self.limits.absolute_ms]
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
        if now_ms is None:
            return None
        return key, Session(username, created_on, int(now_ms) / 1000, 0)

    async def touch(self, key: SessionKey, add: CartAdd | None = None, requests: int = 1) -> Session | None:
        keys = [self.key(key.id), self.live_key]
        field, qty = (CART_PREFIX + add.sku, add.qty) if add else ("", 0)
        if add and add.request_id:
            keys.append(f"{self.prefix}:applied:{key.id}:{add.request_id}")
        reply = await self.lane.run(self._touch, keys, [
            key.id, self.limits.idle_ms, self.limits.absolute_ms, requests, field, qty,
            self.limits.max_cart_items, self.limits.max_item_qty, self._epoch_prefix])
        if not reply:
            return None
        status, *record = reply
        if status in _REFUSALS:
            raise CartFull(_REFUSALS[status])
        return session_from_fields(dict(zip(record[::2], record[1::2], strict=True)))

    async def delete(self, key: SessionKey) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.key(key.id))
            pipe.zrem(self.live_key, key.id)
            await pipe.execute()

    async def delete_user(self, username: str) -> int:
        """Move the epoch on (that alone ends every session, those of logins in flight included),
        then delete the sessions the index knows of, so that they stop counting as live at once."""
        epoch_key = self._epoch_prefix + username
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(epoch_key)
            pipe.pexpire(epoch_key, self.limits.absolute_ms)
            pipe.smembers(self._user_key(username))
            pipe.delete(self._user_key(username))
            *_, sids, _ = await pipe.execute()
        if not sids:
            return 0
        async with self.redis.pipeline(transaction=True) as pipe:
            for sid in sids:
                pipe.delete(self.key(str(sid)))
            pipe.zrem(self.live_key, *sids)
            results = await pipe.execute()
        return sum(results[:-1])

    async def count_live(self) -> int:
        now_ms = int(time.time() * 1000)
        return int(await self.redis.zcount(self.live_key, now_ms, "+inf"))
