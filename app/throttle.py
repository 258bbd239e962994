"""Brute-force throttling of logins and registrations, counted in Redis so that N instances
share one allowance.

Each attempt is decided and counted INCR-first, in two scripts (the account's keys share one slot,
the address's counter has its own: see LoginThrottle): N concurrent guesses at one account evaluate
at most the limit, whichever instances they land on. The policy follows
OWASP's Authentication cheat sheet, so that a lockout is not a denial of service for others:

- per (account, address) pair: `per_pair` failures, then 429 for that pair until the window ends;
- per account, from all addresses (distributed guessing), and per address, at all accounts
  (password spraying): past `per_account` / `per_address` failures, only pairs that have signed
  in successfully before ("known" pairs) may still try. An account remembers its KNOWN_ADDRESSES
  latest addresses, each for 30 days after its last successful sign-in: one key per account.

So an attacker at your address cannot lock you out of an account you have used from there, and
an attacker elsewhere cannot lock you out at all; a brand-new pair behind an attacked address
waits for the window. The `limits` library was considered: it counts one key at a time, and this
decision needs the known-pair exemption beside the counters, so it is two small scripts."""

from dataclasses import dataclass

from redis.asyncio import Redis

from app import keys

KNOWN_PAIR_MS = 30 * 24 * 3600 * 1000
#: Addresses an account remembers as known (the most recent ones); older ones are forgotten.
KNOWN_ADDRESSES = 20

# The account's part of an attempt: its keys share the user's tag (app.keys). KEYS: pair, account,
# known-addresses. ARGV: window_ms, per_pair, per_account, address, known_pair_ms. Returns {0, known} (go
# ahead, counted; known: 1 if the pair signed in before) or {ms until the blocking counter's window ends}.
_ATTEMPT = """
local seen = redis.call('ZSCORE', KEYS[3], ARGV[4])
local t = redis.call('TIME')
local known = seen and tonumber(seen) > t[1] * 1000 - tonumber(ARGV[5])
local limits = {tonumber(ARGV[2]), tonumber(ARGV[3])}
for i = 1, 2 do
    if (i == 1 or not known) and tonumber(redis.call('GET', KEYS[i]) or '0') >= limits[i] then
        return {math.max(redis.call('PTTL', KEYS[i]), 1)}
    end
end
for i = 1, 2 do
    redis.call('INCR', KEYS[i])
    redis.call('PEXPIRE', KEYS[i], ARGV[1], 'NX')
end
return {0, known and 1 or 0}
"""

# One counter (the address's, or registrations'), INCR-first. KEYS: counter. ARGV: window_ms, limit, enforced
# ('0': counted, never refused - a known pair is not held back by its address). Returns 0 or the ms to wait.
_COUNT = """
if ARGV[3] ~= '0' and tonumber(redis.call('GET', KEYS[1]) or '0') >= tonumber(ARGV[2]) then
    return math.max(redis.call('PTTL', KEYS[1]), 1)
end
redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1], 'NX')
return 0
"""

# Undo one count: an attempt that was no failure after all, or that its address then refused. A writing
# script (the shebang): a full Redis refuses it whole. KEYS: counters. ARGV: the first one is deleted ('1') or
# decremented ('0').
_UNCOUNT = """#!lua
for i = 1, #KEYS do
    if i == 1 and ARGV[1] == '1' then
        redis.call('DEL', KEYS[1])
    elseif tonumber(redis.call('GET', KEYS[i]) or '0') > 0 then
        redis.call('DECR', KEYS[i])
    end
end
"""

# KEYS: known-addresses. ARGV: known_pair_ms, address, known addresses kept.
_KNOWN = """#!lua
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], t[1] * 1000, ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -1 - tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after_s: int = 0

    @classmethod
    def from_wait_ms(cls, wait_ms: int) -> "Verdict":
        return cls(True) if not wait_ms else cls(False, max(1, -(-int(wait_ms) // 1000)))


class LoginThrottle:
    """Each counter is INCR-first in a script of its own slot: the account's pair and account counters
    in one (they share the user's tag), the address's in another (its slot is the address's). Each
    bounds on its own what it counts, so N concurrent guesses evaluate at most the smallest limit that
    applies; an attempt the address refuses after its account counted it is uncounted there again."""

    def __init__(self, redis: Redis, prefix: str, per_pair: int, per_account: int, per_address: int,
                 window_s: int, register_per_address: int, register_window_s: int) -> None:
        self.prefix = prefix
        self.per_pair, self.per_account, self.per_address = per_pair, per_account, per_address
        self.window_ms = window_s * 1000
        self.register_limit = register_per_address
        self.register_window_ms = register_window_s * 1000
        self._attempt = redis.register_script(_ATTEMPT)
        self._count = redis.register_script(_COUNT)
        self._uncount = redis.register_script(_UNCOUNT)
        self._known = redis.register_script(_KNOWN)

    def _account_keys(self, username: str, address: str) -> list[str]:
        """pair, account, known-addresses: all of the user's tag."""
        space = keys.user_space(self.prefix, username)
        return [f"{space}login-failures:pair:{username}|{address}", f"{space}login-failures:user:{username}",
                f"{space}login-known:{username}"]

    def _address_key(self, address: str) -> str:
        return f"{self.prefix}:login-failures:addr:{address}"

    async def attempt(self, username: str, address: str) -> Verdict:
        """May this login attempt be evaluated? If so it is counted, as a failure until `succeeded`."""
        account = self._account_keys(username, address)
        wait_ms, *known = await self._attempt(account, [self.window_ms, self.per_pair, self.per_account, address,
                                                        KNOWN_PAIR_MS])
        if wait_ms:
            return Verdict.from_wait_ms(wait_ms)
        wait_ms = await self._count([self._address_key(address)],
                                    [self.window_ms, self.per_address, 0 if known[0] else 1])
        if wait_ms:
            await self._uncount(account[:2], [0])
        return Verdict.from_wait_ms(wait_ms)

    async def succeeded(self, username: str, address: str) -> None:
        """The attempt was no failure: its pair starts over, its account and address count one less,
        and the pair is known from now on."""
        account = self._account_keys(username, address)
        await self._uncount(account[:2], [1])
        await self._uncount([self._address_key(address)], [0])
        await self._known([account[2]], [KNOWN_PAIR_MS, address, KNOWN_ADDRESSES])

    async def register(self, address: str) -> Verdict:
        """May this address register an account now? Counted either way the registration ends."""
        key = f"{self.prefix}:registrations:addr:{address}"
        return Verdict.from_wait_ms(await self._count([key], [self.register_window_ms, self.register_limit, 1]))
