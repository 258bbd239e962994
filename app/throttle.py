"""Brute-force throttling of logins and registrations, counted in Redis so that N instances
share one allowance.

Each attempt is decided and counted in ONE script (INCR-first): N concurrent guesses at one
account evaluate at most the limit, whichever instances they land on. The policy follows
OWASP's Authentication cheat sheet, so that a lockout is not a denial of service for others:

- per (account, address) pair: `per_pair` failures, then 429 for that pair until the window ends;
- per account, from all addresses (distributed guessing), and per address, at all accounts
  (password spraying): past `per_account` / `per_address` failures, only pairs that have signed
  in successfully before ("known" pairs) may still try. An account remembers its KNOWN_ADDRESSES
  latest addresses, each for 30 days after its last successful sign-in: one key per account.

So an attacker at your address cannot lock you out of an account you have used from there, and
an attacker elsewhere cannot lock you out at all; a brand-new pair behind an attacked address
waits for the window. The `limits` library was considered: it counts one key at a time, and this
decision spans three counters and the known-pair exemption atomically, so it is one small script."""

from dataclasses import dataclass

from redis.asyncio import Redis

KNOWN_PAIR_MS = 30 * 24 * 3600 * 1000
#: Addresses an account remembers as known (the most recent ones); older ones are forgotten.
KNOWN_ADDRESSES = 20

# KEYS: pair, account, address, known-addresses. ARGV: window_ms, per_pair, per_account, per_address, address,
# known_pair_ms. Returns 0 (go ahead, counted) or the milliseconds until the blocking counter's window ends.
_ATTEMPT = """
local seen = redis.call('ZSCORE', KEYS[4], ARGV[5])
local t = redis.call('TIME')
local known = seen and tonumber(seen) > t[1] * 1000 - tonumber(ARGV[6])
local limits = {tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])}
for i = 1, 3 do
    if (i == 1 or not known) and tonumber(redis.call('GET', KEYS[i]) or '0') >= limits[i] then
        return math.max(redis.call('PTTL', KEYS[i]), 1)
    end
end
for i = 1, 3 do
    redis.call('INCR', KEYS[i])
    redis.call('PEXPIRE', KEYS[i], ARGV[1], 'NX')
end
return 0
"""

# KEYS: pair, account, address, known-addresses. ARGV: known_pair_ms, address, known addresses kept.
# The attempt was no failure after all. A writing script (the shebang): a full Redis refuses it whole.
_SUCCEEDED = """#!lua
redis.call('DEL', KEYS[1])
for i = 2, 3 do
    if tonumber(redis.call('GET', KEYS[i]) or '0') > 0 then redis.call('DECR', KEYS[i]) end
end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[4], t[1] * 1000, ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -1 - tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[4], ARGV[1])
"""

# KEYS: counter. ARGV: window_ms, limit.
_COUNT = """
if tonumber(redis.call('GET', KEYS[1]) or '0') >= tonumber(ARGV[2]) then
    return math.max(redis.call('PTTL', KEYS[1]), 1)
end
redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1], 'NX')
return 0
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after_s: int = 0

    @classmethod
    def from_wait_ms(cls, wait_ms: int) -> "Verdict":
        return cls(True) if not wait_ms else cls(False, max(1, -(-int(wait_ms) // 1000)))


class LoginThrottle:
    def __init__(self, redis: Redis, prefix: str, per_pair: int, per_account: int, per_address: int,
                 window_s: int, register_per_address: int, register_window_s: int) -> None:
        self.prefix = prefix
        self.limits = (per_pair, per_account, per_address)
        self.window_ms = window_s * 1000
        self.register_limit = register_per_address
        self.register_window_ms = register_window_s * 1000
        self._attempt = redis.register_script(_ATTEMPT)
        self._succeeded = redis.register_script(_SUCCEEDED)
        self._count = redis.register_script(_COUNT)

    def _keys(self, username: str, address: str) -> list[str]:
        base = f"{self.prefix}:login-failures"
        return [f"{base}:pair:{username}|{address}", f"{base}:user:{username}", f"{base}:addr:{address}",
                f"{self.prefix}:login-known:{username}"]

    async def attempt(self, username: str, address: str) -> Verdict:
        """May this login attempt be evaluated? If so it is counted, as a failure until `succeeded`."""
        return Verdict.from_wait_ms(await self._attempt(self._keys(username, address),
                                                        [self.window_ms, *self.limits, address, KNOWN_PAIR_MS]))

    async def succeeded(self, username: str, address: str) -> None:
        await self._succeeded(self._keys(username, address), [KNOWN_PAIR_MS, address, KNOWN_ADDRESSES])

    async def register(self, address: str) -> Verdict:
        """May this address register an account now? Counted either way the registration ends."""
        key = f"{self.prefix}:registrations:addr:{address}"
        return Verdict.from_wait_ms(await self._count([key], [self.register_window_ms, self.register_limit]))
