"""Sessions as Redis hashes, ``<prefix>:{<tag>}:session:<sha256(token)>``, expired by Redis TTL.

Every authenticated request is ONE call to ``touch``: check, count the request, slide the idle
TTL, apply an optional cart add, and return the record - one Lua script, one round trip, atomic,
and unable to resurrect a session that a logout on another instance deleted.

At the store's limits: a Redis that refuses writes (full: OOM; unable to persist: MISCONF) still
answers reads, so `touch` then checks the session with a script that writes nothing (the request
is not counted and the idle expiry does not slide); ending sessions runs in scripts allowed on a
full Redis (they only free memory). What one account can make the store keep is bounded: at most
`max_sessions_per_account` sessions (the oldest end first) in an index they leave as they end, and
one record of the session's recent cart adds (`applied_window_s`), deleted with the session.

Every script names all of its keys, and they all carry the user's tag (app.keys): the same scripts run
on a single Redis, behind Sentinel and on Redis Cluster. Only the ids a script reads from an index
(the sessions a cap or a sign-out-everywhere ends) are keys it could not name beforehand; they share
the tag, so they live in the same slot."""

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError

from app import keys
from app.metrics import IDEMPOTENT_REPEATS
from app.redis_client import Lane, acknowledged
from app.sessions.base import (
    CartAdd,
    CartFull,
    CartRefused,
    Limits,
    Session,
    SessionKey,
    SessionStore,
    StoreState,
)

log = logging.getLogger(__name__)

CART_PREFIX = "cart:"

# KEYS: session, live-index, user-index, user-epoch. ARGV: sid, username, created_on, idle_ms, epoch, absolute_ms,
# max sessions per account, session key prefix, applied key prefix (both of the user's tag), expired entries to
# trim. The user's index
# is a sorted set of session ids by creation time: past the cap, the oldest end here (at most the few over it).
# Expired sessions leave the live index a bounded number per login (they are the lowest ranks): after a mass
# expiry, one ZREMRANGEBYSCORE would hold Redis until all were gone (a million: 0.3 s), and each session
# that expires was started by a login, so the trimming keeps up.
_CREATE = """
local epoch = redis.call('GET', KEYS[4]) or '0'
if epoch ~= ARGV[5] then return false end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('HSET', KEYS[1], 'username', ARGV[2], 'created_on', ARGV[3], 'created_at_ms', now,
           'requests', 0, 'epoch', epoch, 'listed', now + ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local expired = math.min(redis.call('ZCOUNT', KEYS[2], '-inf', now), tonumber(ARGV[10]))
if expired > 0 then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, expired - 1) end
redis.call('ZADD', KEYS[2], now + ARGV[4], ARGV[1])
-- Scored in microseconds: the oldest first, also among logins of the same millisecond.
local now_us = t[1] * 1000000 + t[2]
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_us - ARGV[6] * 1000)  -- past the absolute timeout: gone
redis.call('ZADD', KEYS[3], now_us, ARGV[1])
local over = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[7])
if over > 0 then
    for _, sid in ipairs(redis.call('ZRANGE', KEYS[3], 0, over - 1)) do
        redis.call('DEL', ARGV[8] .. sid, ARGV[9] .. sid)
        redis.call('ZREM', KEYS[2], sid)
    end
    redis.call('ZREMRANGEBYRANK', KEYS[3], 0, over - 1)
end
redis.call('PEXPIRE', KEYS[3], ARGV[6])
-- The epoch must outlive every session started under it (see delete_user).
if epoch ~= '0' then redis.call('PEXPIRE', KEYS[4], ARGV[6]) end
return now
"""

# The check every authenticated request starts with, and the slide it ends with: the start and the end of the
# two scripts below. KEYS (`_session_keys`): session, live-index, applied (the request ids of the session's adds),
# user-epoch, user-index - the cookie names the user (app.keys), so every key is declared. ARGV: sid, idle_ms,
# absolute_ms, requests. Both are declared writing scripts (the shebang): a Redis that refuses writes refuses them
# whole, before they run. Without one, a full Redis lets every write through once the first that frees memory has
# run (for the script's atomicity).
_CHECK = """#!lua
local s = redis.call('HMGET', KEYS[1], 'created_at_ms', 'username', 'epoch', 'created_on', 'listed')
if not s[1] then return false end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local left = tonumber(s[1]) + tonumber(ARGV[3]) - now
local epoch = redis.call('GET', KEYS[4]) or '0'
if left <= 0 or epoch ~= (s[3] or '0') then
    redis.call('DEL', KEYS[1], KEYS[3])
    redis.call('ZREM', KEYS[2], ARGV[1])
    redis.call('ZREM', KEYS[5], ARGV[1])
    return false
end
local ttl = math.min(tonumber(ARGV[2]), left)
"""
# The live index is moved on only when the expiry it lists falls short of the session's by more than a
# twentieth of the idle timeout (LIST_SLACK): a ZADD on every request into the one index every session shares
# was the largest Redis cost of a request. So a session idle for more than 95 % of the idle timeout may be
# missing from the live count a little before it expires (at the default 30 minutes, its last 90 s).
_SLIDE = """
redis.call('PEXPIRE', KEYS[1], ttl)
if tonumber(s[5] or '0') < now + ttl - ARGV[2] / 20 then
    redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
    redis.call('HSET', KEYS[1], 'listed', now + ttl)
end
"""
#: The fields of a session's hash that are not cart items (the cart's item limit counts the others).
_FIELDS = ("username", "created_on", "created_at_ms", "requests", "epoch", "listed")

# Who holds this session (GET /api/me in exact mode): checked, counted, slid; its identity returned, not the
# whole record. ARGV as _CHECK's.
_IDENTIFY = _CHECK + """
local requests = redis.call('HINCRBY', KEYS[1], 'requests', ARGV[4])
""" + _SLIDE + """
return {s[2], s[4], s[1], requests}
"""

# Checked, counted, slid, and a cart add applied (once per request id); the whole record returned. ARGV:
# _CHECK's, then cart field, qty, max items, max qty, request id, applied_ms.
_TOUCH = _CHECK + f"""
local status = 'ok'
if ARGV[5] ~= '' then
    local have = tonumber(redis.call('HGET', KEYS[1], ARGV[5]) or '0')
    if ARGV[9] ~= '' then redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - ARGV[10]) end
    if ARGV[9] ~= '' and redis.call('ZSCORE', KEYS[3], ARGV[9]) then
        status = 'duplicate'
    elseif have == 0 and redis.call('HLEN', KEYS[1]) - {len(_FIELDS)} >= tonumber(ARGV[7]) then
        status = 'too_many_items'
    elseif have + tonumber(ARGV[6]) > tonumber(ARGV[8]) then
        status = 'quantity_too_high'
    else
        redis.call('HINCRBY', KEYS[1], ARGV[5], ARGV[6])
        if ARGV[9] ~= '' then
            redis.call('ZADD', KEYS[3], now, ARGV[9])
            redis.call('PEXPIRE', KEYS[3], ARGV[10])
        end
    end
end
if status ~= 'duplicate' then redis.call('HINCRBY', KEYS[1], 'requests', ARGV[4]) end
""" + _SLIDE + """
local record = redis.call('HGETALL', KEYS[1])
table.insert(record, 1, status)
return record
"""

# The check alone, for a store that refuses writes: no-writes, so that a full Redis and one that cannot
# persist both run it. KEYS: _CHECK's. ARGV: absolute_ms.
_PEEK = """#!lua flags=no-writes
local s = redis.call('HMGET', KEYS[1], 'created_at_ms', 'username', 'epoch')
if not s[1] then return false end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local epoch = redis.call('GET', KEYS[4]) or '0'
if tonumber(s[1]) + tonumber(ARGV[1]) <= now or epoch ~= (s[3] or '0') then return false end
local record = redis.call('HGETALL', KEYS[1])
table.insert(record, 1, 'ok')
return record
"""

# allow-oom: ending sessions must work on a full Redis, and these only free memory (the epoch's INCR
# aside, a few bytes). A Redis that cannot persist refuses them all the same: nothing is ended then.
# KEYS: _CHECK's. ARGV: sid.
_DELETE = """#!lua flags=allow-oom
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
"""

# Deletes up to ARGV[1] sessions of an index whose sessions have ended already (by their epoch), and takes
# them out of the live index. KEYS: that index, live-index. ARGV: batch, session key prefix, applied key
# prefix (of the user's tag). Returns how many of those sessions still existed, and how many ids the index has left.
_END_BATCH_LUA = """
local popped = redis.call('ZPOPMIN', KEYS[1], ARGV[1])
if #popped == 0 then return {0, 0} end
local sids, sessions, applied = {}, {}, {}
for i = 1, #popped, 2 do
    sids[#sids + 1] = popped[i]
    sessions[#sessions + 1] = ARGV[2] .. popped[i]
    applied[#applied + 1] = ARGV[3] .. popped[i]
end
local ended = redis.call('DEL', unpack(sessions))
redis.call('DEL', unpack(applied))
redis.call('ZREM', KEYS[2], unpack(sids))
return {ended, redis.call('ZCARD', KEYS[1])}
"""

# allow-oom, as _DELETE. The INCR alone ends every session of the user, at once; the index then moves
# to a name of its own (KEYS[3], not yet taken: RENAME is O(1), and keeps the TTL) before the first
# batch is deleted, so that the next batches, each a script of its own, reach only sessions of the
# ended epoch: a login meanwhile starts a new index. One script for all would hold Redis for as long
# as the user has sessions (10,000: 40 ms). KEYS: ending (that name), live-index, user-epoch,
# user-index. ARGV: as _END_BATCH_LUA's, absolute_ms.
_DELETE_USER = """#!lua flags=allow-oom
redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
if redis.call('EXISTS', KEYS[4]) == 0 then return {0, 0} end
redis.call('RENAME', KEYS[4], KEYS[1])
""" + _END_BATCH_LUA

# allow-oom, as _DELETE. KEYS and ARGV: as _END_BATCH_LUA's.
_END_BATCH = "#!lua flags=allow-oom\n" + _END_BATCH_LUA

#: Sessions deleted per script by sign-out-everywhere: half a millisecond of Redis each, with 200,000 live.
END_BATCH = 100
#: Expired entries a login removes from the live index at most (tens of microseconds).
LIVE_TRIM = 100

#: After a write was refused, reads go straight to the check for this long, instead of being refused
#: first (each refusal costs the lane its connections).
_REFUSING_S = 1.0

#: The touch script's status for a cart add whose request id it has applied already.
_DUPLICATE = "duplicate"
_REFUSALS = {"too_many_items": CartRefused.TOO_MANY_ITEMS, "quantity_too_high": CartRefused.QUANTITY_TOO_HIGH}


def refusal(exc: RedisError) -> StoreState | None:
    """The state a refused write tells of: FULL (OOM), NOT_PERSISTING (MISCONF); None for any other error."""
    if isinstance(exc, OutOfMemoryError):
        return StoreState.FULL
    if isinstance(exc, ResponseError) and str(exc).startswith("MISCONF"):
        return StoreState.NOT_PERSISTING
    return None


def session_from_fields(fields: dict[str, str]) -> Session:
    cart = {k.removeprefix(CART_PREFIX): int(v) for k, v in fields.items() if k.startswith(CART_PREFIX)}
    return Session(
        username=fields["username"],
        created_on=fields["created_on"],
        created_at=int(fields["created_at_ms"]) / 1000,
        requests=int(fields["requests"]),
        cart=cart,
    )


def _identity(reply: Any) -> Session | None:
    """The identity script's reply: username, created_on, created_at_ms, requests (nothing when gone)."""
    if not reply:
        return None
    username, created_on, created_at_ms, requests = reply
    return Session(username, created_on, int(created_at_ms) / 1000, int(requests))


class RedisSessionStore(SessionStore):
    """With ``replicas_to_wait`` (behind Sentinel, or on a cluster), ``create`` returns only once that
    many replicas have acknowledged the new session (WAIT), or after ``wait_timeout_ms`` - so a
    failover right after a login rarely loses the session. Rarely, not never: replication stays
    asynchronous, and a replica that acknowledged can still lose the write in a failover (Jepsen found
    as much for Sentinel); the login succeeds either way."""

    def __init__(self, redis: Redis, prefix: str, limits: Limits, replicas_to_wait: int = 0,
                 wait_timeout_ms: int = 200, lane_size: int = 64) -> None:
        super().__init__(limits)
        self.redis = redis
        self.lane = Lane(redis, lane_size)  # every authenticated request's one round trip
        self.prefix = prefix
        self.replicas_to_wait = replicas_to_wait
        self.wait_timeout_ms = wait_timeout_ms
        self._create = redis.register_script(_CREATE)
        self._touch = redis.register_script(_TOUCH)
        self._identify = redis.register_script(_IDENTIFY)
        self._delete = redis.register_script(_DELETE)
        self._delete_user = redis.register_script(_DELETE_USER)
        self._end_batch = redis.register_script(_END_BATCH)
        self._refusing_until = 0.0

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.lane.close()

    def key(self, key: SessionKey) -> str:
        return self.key_in(self.prefix, key)

    @staticmethod
    def key_in(prefix: str, key: SessionKey) -> str:
        """The session's key in a store of `prefix`."""
        return f"{keys.tagged(prefix, key.tag)}session:{key.id}"

    def live_key(self, key: SessionKey) -> str:
        """The index of live sessions that lists this one (one per tag)."""
        return keys.live_key(self.prefix, key.tag)

    def user_key(self, username: str) -> str:
        """The user's session index: ids by creation time, at most `max_sessions_per_account`."""
        return f"{keys.user_space(self.prefix, username)}user-index:{keys.uid(username)}"

    def epoch_key(self, username: str) -> str:
        return f"{keys.user_space(self.prefix, username)}user-epoch:{keys.uid(username)}"

    def _session_keys(self, key: SessionKey) -> list[str]:
        """What _CHECK and the scripts after it name: session, live-index, applied, user-epoch, user-index."""
        space = keys.tagged(self.prefix, key.tag)
        return [f"{space}session:{key.id}", keys.live_key(self.prefix, key.tag), f"{space}applied:{key.id}",
                f"{space}user-epoch:{key.uid}", f"{space}user-index:{key.uid}"]

    async def epoch(self, username: str) -> int:
        return int(await self.redis.get(self.epoch_key(username)) or 0)

    def _create_call(self, key: SessionKey, username: str, created_on: str,
                     epoch: int) -> tuple[list[str], list[str | int]]:
        """The create script's KEYS and ARGV."""
        session, live, _, epoch_key, index = self._session_keys(key)
        space = keys.tagged(self.prefix, key.tag)
        return ([session, live, index, epoch_key],
                [key.id, username, created_on, self.limits.idle_ms, epoch, self.limits.absolute_ms,
                 self.limits.max_sessions_per_account, f"{space}session:", f"{space}applied:", LIVE_TRIM])

    async def create_many(self, logins: Sequence[tuple[str, int]],
                          created_on: str) -> list[tuple[SessionKey, Session] | None]:
        """`create` for each (username, epoch), in one pipeline: the same script (the same keys,
        indexes, cap and TTLs), one round trip for them all, no WAIT. For a bulk loader (the
        bench's million sessions); an instance signs users in one at a time, with `create`."""
        started = [SessionKey.new(username) for username, _ in logins]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, (username, epoch) in zip(started, logins, strict=True):
                await self._create(*self._create_call(key, username, created_on, epoch), client=pipe)
            replies = await pipe.execute()
        return [None if now_ms is None else (key, Session(username, created_on, int(now_ms) / 1000, 0))
                for key, (username, _), now_ms in zip(started, logins, replies, strict=True)]

    async def create(self, username: str, created_on: str, epoch: int) -> tuple[SessionKey, Session] | None:
        key = SessionKey.new(username)
        script_keys, args = self._create_call(key, username, created_on, epoch)
        if not self.replicas_to_wait:
            now_ms = await self._create(script_keys, args)
        else:
            now_ms, replicas = await acknowledged(self.redis, self._create, script_keys, args,
                                                  self.replicas_to_wait, self.wait_timeout_ms)
            if replicas < self.replicas_to_wait:
                log.warning("session of %s not acknowledged by a replica within %d ms", username,
                            self.wait_timeout_ms)
        if now_ms is None:
            return None
        return key, Session(username, created_on, int(now_ms) / 1000, 0)

    async def touch(self, key: SessionKey, add: CartAdd | None = None, requests: int = 1) -> Session | None:
        field, qty = (CART_PREFIX + add.sku, add.qty) if add else ("", 0)
        return await self._checked(key, requests, self._touch, self._session, add, [
            field, qty, self.limits.max_cart_items, self.limits.max_item_qty, add.request_id if add else "",
            self.limits.applied_ms])

    async def identify(self, key: SessionKey) -> Session | None:
        """As `touch` without an add, in a script that returns the identity alone: a request that
        only asks who this is reads neither the cart nor the rest of the record."""
        return await self._checked(key, 1, self._identify, _identity, None, [])

    async def _checked(self, key: SessionKey, requests: int, script: AsyncScript,
                       parse: Callable[[Any], Session | None], add: CartAdd | None,
                       args: list[str | int]) -> Session | None:
        """Run one of the scripts that start with _CHECK, on the hot path's lane. On a store that
        refuses writes, a run without an add degrades to the check alone: the session is validated,
        but neither counted nor kept alive (its idle expiry does not slide)."""
        script_keys = self._session_keys(key)
        if add is None and time.monotonic() < self._refusing_until:
            # EVAL, not EVALSHA: a Redis that cannot persist refuses SCRIPT LOAD, which a NOSCRIPT needs.
            return self._session(await self.redis.eval(_PEEK, len(script_keys), *script_keys,
                                                       self.limits.absolute_ms))
        try:
            reply = await self.lane.run(script, script_keys, [
                key.id, self.limits.idle_ms, self.limits.absolute_ms, requests, *args])
        except RedisError as exc:
            if refusal(exc) is None:
                raise
            self._refusing_until = time.monotonic() + _REFUSING_S
            if add is not None:
                raise
            log.warning("session store refuses writes (%s): sessions checked, not counted or slid", exc)
            return await self._checked(key, requests, script, parse, add, args)
        return parse(reply)

    @staticmethod
    def _session(reply: Any) -> Session | None:
        if not reply:
            return None
        status, *record = reply
        if status in _REFUSALS:
            raise CartFull(_REFUSALS[status])
        if status == _DUPLICATE:
            IDEMPOTENT_REPEATS.labels("cart_add").inc()
        return session_from_fields(dict(zip(record[::2], record[1::2], strict=True)))

    async def delete(self, key: SessionKey) -> None:
        await self._delete(self._session_keys(key), [key.id])

    async def delete_user(self, username: str) -> int:
        """Move the epoch on (that alone ends every session, those of logins in flight included),
        then delete the sessions the index knows of, so that they stop counting as live: the first
        END_BATCH in the epoch's script, the rest END_BATCH per script, so that no command holds
        Redis long however many sessions the user has. Once the epoch has moved, every session has
        ended: a batch that fails then is logged, not raised, and what it left expires on its own
        (idle TTL; a touch deletes it at once)."""
        space, tag = keys.user_space(self.prefix, username), keys.tag_of(keys.uid(username))
        ending = f"{space}user-index-ending:{keys.uid(username)}:{secrets.token_hex(8)}"
        live = keys.live_key(self.prefix, tag)
        batch: list[str | int] = [END_BATCH, f"{space}session:", f"{space}applied:"]
        ended, left = await self._delete_user(
            [ending, live, self.epoch_key(username), self.user_key(username)], [*batch, self.limits.absolute_ms])
        while left:
            try:
                deleted, left = await self._end_batch([ending, live], batch)
            except RedisError as exc:
                log.warning("sessions of %s ended, %d left to expire on their own: %s", username, left, exc)
                break
            ended += deleted
        return int(ended)

    async def count_live(self) -> int:
        """The sum over every tag's live index (one pipeline: on a cluster, one round trip per primary)."""
        return await count_live(self.redis, self.prefix)


async def count_live(redis: Redis, prefix: str) -> int:
    """Sessions listed live now, as the farm panel shows them (a session idle for most of its idle
    timeout may be missing: see _SLIDE)."""
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for live in keys.live_keys(prefix):
            pipe.zcount(live, now_ms, "+inf")
        return sum(int(n) for n in await pipe.execute())
