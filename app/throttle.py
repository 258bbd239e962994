"""Brute-force throttling of logins, counted in Redis so that N instances share one allowance.

An in-process counter would give an attacker N times the attempts behind a round-robin
balancer; here every instance increments the same keys. Failures are counted per account and per
client address within a fixed window; a success clears the account's count."""

from dataclasses import dataclass

from redis.asyncio import Redis


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after_s: int = 0


class LoginThrottle:
    def __init__(self, redis: Redis, prefix: str, per_account: int, per_address: int, window_s: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.limits = (per_account, per_address)
        self.window_ms = window_s * 1000

    def _keys(self, username: str, address: str) -> tuple[str, str]:
        return f"{self.prefix}:login-failures:user:{username}", f"{self.prefix}:login-failures:addr:{address}"

    async def check(self, username: str, address: str) -> Verdict:
        """One round trip: both counters and their remaining lifetimes."""
        keys = self._keys(username, address)
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
                pipe.pttl(key)
            user_n, user_ttl, addr_n, addr_ttl = await pipe.execute()
        blocked = [ttl for n, ttl, limit in ((user_n, user_ttl, self.limits[0]), (addr_n, addr_ttl, self.limits[1]))
                   if n is not None and int(n) >= limit]
        if blocked:
            return Verdict(False, max(1, -(-max(blocked) // 1000)))
        return Verdict(True)

    async def failed(self, username: str, address: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in self._keys(username, address):
                pipe.incr(key)
                pipe.pexpire(key, self.window_ms, nx=True)
            await pipe.execute()

    async def succeeded(self, username: str, address: str) -> None:
        await self.redis.delete(self._keys(username, address)[0])
