"""Admission control: a few at once, a short queue, the rest refused at once - and never more
hashes running than the limit, even when the requests that wanted them have given up."""

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from app.admission import Admission, Busy


@pytest.fixture
def admission() -> Iterator[Admission]:
    admission = Admission(concurrency=2, queue=2, wait_s=0.2)
    yield admission
    admission.close()


async def hold(admission: Admission, release: asyncio.Event) -> None:
    async with admission.admit():
        await release.wait()


async def test_past_the_slots_and_the_queue_a_request_is_refused_at_once(admission: Admission) -> None:
    release = asyncio.Event()
    holders = [asyncio.create_task(hold(admission, release)) for _ in range(4)]  # 2 admitted, 2 queued
    await asyncio.sleep(0.01)
    began = time.monotonic()
    with pytest.raises(Busy):
        async with admission.admit():
            pass
    assert time.monotonic() - began < 0.01
    release.set()
    await asyncio.gather(*holders)  # the queued two got their turn
    async with admission.admit():
        pass


async def test_a_queued_request_gives_up_after_the_wait(admission: Admission) -> None:
    release = asyncio.Event()
    holders = [asyncio.create_task(hold(admission, release)) for _ in range(2)]
    await asyncio.sleep(0.01)
    began = time.monotonic()
    with pytest.raises(Busy):
        async with admission.admit():
            pass
    assert 0.2 <= time.monotonic() - began < 0.3
    release.set()
    await asyncio.gather(*holders)


async def test_hashes_never_outnumber_the_slots_even_when_their_requests_give_up(admission: Admission) -> None:
    running, most, lock = 0, 0, threading.Lock()

    def hash_like() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    async def impatient() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):  # the request's deadline, long before the hash is done
                await admission.run(hash_like)

    requests = []
    for _ in range(10):  # one after another, each giving up before its hash is done
        requests.append(asyncio.create_task(impatient()))
        await asyncio.sleep(0.015)
    await asyncio.gather(*requests)
    await asyncio.sleep(0.1)
    assert most == 2
