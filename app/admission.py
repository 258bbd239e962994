"""Admission control for the expensive requests: register, log in and change password, each an
argon2id hash that is slow and memory-hard on purpose (ARGON2_MEMORY_KIB a hash).

Hashing as many at once as requests arrive lets a burst of sign-ups make every instance slow and
big: measured before this, 300 registrations at once ran 40 hashes per instance (anyio's default
thread pool) and left each instance at 600-880 MB. So an instance admits `concurrency` such
requests at a time, lets `queue` more wait up to `wait_s`, and refuses the rest at once (Busy: 503
with Retry-After) - before any work: no throttle attempt counted, no Redis touched.

The hashes run on `concurrency` threads of their own. A thread cannot be stopped: a request that
gives up (its deadline, app.middleware) leaves its hash to finish, and the next one waits for
that thread, so no more than `concurrency` hashes ever run at once, whatever gives up."""

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TypeVar, TypeVarTuple

from anyio import CapacityLimiter

from app.metrics import ADMISSION_REFUSED

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class Busy(Exception):
    """Refused by admission control; answered 503 with Retry-After."""


class Admission:
    def __init__(self, concurrency: int, queue: int, wait_s: float) -> None:
        self.limiter = CapacityLimiter(concurrency)
        self.queue = queue
        self.wait_s = wait_s
        self.threads = ThreadPoolExecutor(concurrency, thread_name_prefix="argon2")

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold one of the slots for the block; Busy at once when the queue is full, or after `wait_s`."""
        stats = self.limiter.statistics()
        if stats.borrowed_tokens >= stats.total_tokens and stats.tasks_waiting >= self.queue:
            ADMISSION_REFUSED.inc()
            raise Busy
        try:
            async with asyncio.timeout(self.wait_s):
                await self.limiter.acquire()
        except TimeoutError:
            ADMISSION_REFUSED.inc()
            raise Busy from None
        try:
            yield
        finally:
            self.limiter.release()

    async def run(self, work: Callable[[*Ts], T], *args: *Ts) -> T:
        """`work(*args)` on one of the hashing threads."""
        return await asyncio.get_running_loop().run_in_executor(self.threads, work, *args)

    def close(self) -> None:
        self.threads.shutdown(wait=False, cancel_futures=True)
