"""What the farm panel shows: which instances are alive and how many requests each served.

Both are written behind the request path (one pipeline a second), so counting costs the
requests nothing; a crash loses at most the last interval's counts, which the panel shows."""

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstanceState:
    name: str
    up: bool
    requests: int


class Presence:
    def __init__(self, redis: Redis, prefix: str, instance: str, interval_s: float) -> None:
        self.redis = redis
        self.instance = instance
        self.interval_s = interval_s
        self.pending: Counter[str] = Counter()
        self._names_key = f"{prefix}:instances"
        self._served_key = f"{prefix}:requests-served"
        self._beat_prefix = f"{prefix}:heartbeat:"

    def count_request(self) -> None:
        self.pending[self.instance] += 1

    async def flush(self) -> None:
        n = self.pending[self.instance]
        ttl_ms = int(self.interval_s * 3000)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.sadd(self._names_key, self.instance)
            pipe.set(self._beat_prefix + self.instance, str(time.time()), px=ttl_ms)
            if n:
                pipe.hincrby(self._served_key, self.instance, n)
            await pipe.execute()
        self.pending[self.instance] -= n

    async def run(self) -> None:
        """Heartbeat and flush forever; Redis outages only delay the counts."""
        while True:
            try:
                await self.flush()
            except RedisError as exc:
                log.warning("presence flush failed, will retry: %s", exc)
            await asyncio.sleep(self.interval_s)

    async def instances(self) -> list[InstanceState]:
        members = await self.redis.smembers(self._names_key)
        names = sorted((str(m) for m in members), key=_natural)
        if not names:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(self._served_key, names)
            for name in names:
                pipe.exists(self._beat_prefix + name)
            served, *alive = await pipe.execute()
        return [InstanceState(n, bool(a), int(s or 0)) for n, a, s in zip(names, alive, served, strict=True)]


def _natural(name: str) -> tuple[str, int]:
    stem = name.rstrip("0123456789")
    digits = name[len(stem):]
    return stem, int(digits) if digits else 0
