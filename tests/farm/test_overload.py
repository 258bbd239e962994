"""Overload without collapse: a storm of sign-ups or sign-ins (argon2, expensive on purpose) from
hundreds of addresses at once, while a signed-in user keeps reading /api/me.

Each instance admits a couple of hashes at a time and refuses the excess at once with 503 and
Retry-After (app/admission.py), so the user never notices, every instance stays in the rotation
and small, and nginx never sees a timeout."""

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import psutil
import pytest
import redis

from app.keys import user_space
from farmctl.runtime import Farm
from farmctl.wait import wait_until
from tests.conftest import FarmFactory
from tests.farm.users import PASSWORD, SSL_CONTEXT, browser_like, new_username, signed_in

pytestmark = pytest.mark.farm

STORM = 300
MAX_RSS_MB = 300
BUSY = "too busy, try again shortly"


@pytest.fixture(scope="module")
def storm_farm(farm_factory: FarmFactory) -> Farm:
    """A farm of its own: the storms leave accounts and sessions behind, and RSS is measured from its start."""
    return farm_factory(3)


@dataclass
class Reads:
    """What the signed-in user saw: (status, seconds, X-Served-By) of each GET /api/me."""

    answers: list[tuple[int, float, str]] = field(default_factory=list)

    def p99(self) -> float:
        seconds = sorted(a[1] for a in self.answers)
        return seconds[int(len(seconds) * 0.99)]

    def failed(self) -> list[tuple[int, float, str]]:
        return [a for a in self.answers if a[0] != 200]


@contextmanager
def reading_me(farm: Farm) -> Iterator[Reads]:
    """The user's reads from before the storm (once every instance has served one: the storm must
    find the whole farm in the rotation) until after it."""
    base_url, names = farm.config.balancer_url, {i.name for i in farm.config.web}
    reads, stop = Reads(), threading.Event()

    def run() -> None:
        with signed_in(base_url) as client:
            client.timeout = httpx.Timeout(15)
            ready.set()
            while not stop.is_set():
                started = time.monotonic()
                response, _ = browser_like(client, "GET", "/api/me")
                reads.answers.append((response.status_code, time.monotonic() - started,
                                      response.headers.get("x-served-by", "")))
                time.sleep(0.02)

    ready = threading.Event()
    thread = threading.Thread(target=run)
    thread.start()
    assert ready.wait(30)
    try:
        assert wait_until(lambda: {a[2] for a in reads.answers} >= names, 15, interval_s=0.05), \
            (Counter(a[2] for a in reads.answers), farm.out_of_rotation())
        reads.answers.clear()
        time.sleep(0.5)
        yield reads
    finally:
        stop.set()
        thread.join(30)


async def storm(base_url: str, path: str, bodies: list[dict[str, str]]) -> list[httpx.Response]:
    """Every body POSTed at once, each from a loopback address of its own (127.1.x.y)."""
    async def post(i: int, body: dict[str, str]) -> httpx.Response:
        transport = httpx.AsyncHTTPTransport(local_address=f"127.1.{i // 250}.{i % 250 + 2}", verify=SSL_CONTEXT)
        async with httpx.AsyncClient(base_url=base_url, transport=transport, timeout=60) as client:
            return await client.post(path, json=body)

    return await asyncio.gather(*(post(i, body) for i, body in enumerate(bodies)))


def rss_mb(farm: Farm) -> dict[str, float]:
    return {i.name: psutil.Process(farm.pid(i.name)).memory_info().rss / 2**20 for i in farm.config.web}


def storm_while_reading(farm: Farm, path: str, bodies: list[dict[str, str]]) -> list[httpx.Response]:
    base = farm.config.balancer_url
    with reading_me(farm) as reads:
        started = time.monotonic()
        answers = asyncio.run(storm(base, path, bodies))
        took = time.monotonic() - started
        time.sleep(1)
    statuses = Counter(r.status_code for r in answers)
    print(f"{len(bodies)} x {path} in {took:.1f} s: {dict(statuses)}; the user: {len(reads.answers)} reads, "
          f"p99 {reads.p99() * 1000:.0f} ms, max {max(a[1] for a in reads.answers) * 1000:.0f} ms, "
          f"{len(reads.failed())} failed; RSS MB {rss_mb(farm)}")
    for response in answers:
        # An instance answered: never nginx's 502, 504 or "no instance available".
        assert response.headers.get("x-served-by"), (response.status_code, response.text)
        if response.status_code == 503:  # refused before any work: no attempt counted, nothing written
            assert response.json() == {"detail": BUSY}
        if response.status_code in (429, 503):
            assert int(response.headers["retry-after"]) >= 1
    assert reads.failed() == []
    assert reads.p99() < 1.0
    held_out = f"held out: {farm.out_of_rotation()}\n{farm.tail('health')}"
    assert {a[2] for a in reads.answers} == {i.name for i in farm.config.web}, held_out
    served_after = Counter(a[2] for a in reads.answers[-30:])  # every instance still in the rotation
    assert set(served_after) == {i.name for i in farm.config.web}, (served_after, held_out)
    assert all(mb < MAX_RSS_MB for mb in rss_mb(farm).values()), rss_mb(farm)
    return answers


def test_a_registration_storm_leaves_signed_in_users_unharmed(storm_farm: Farm) -> None:
    names = [new_username("storm") for _ in range(STORM)]
    answers = storm_while_reading(storm_farm, "/api/register", [{"username": n, "password": PASSWORD} for n in names])
    statuses = Counter(r.status_code for r in answers)
    assert set(statuses) <= {201, 503}
    assert statuses[201] > 0
    assert statuses[503] > 0  # more than the farm hashes at once: the excess was refused
    created = [name for name, r in zip(names, answers, strict=True) if r.status_code == 201]
    refused = [name for name, r in zip(names, answers, strict=True) if r.status_code == 503]
    with httpx.Client(base_url=storm_farm.config.balancer_url, timeout=10) as client:
        assert client.post("/api/login", json={"username": created[-1], "password": PASSWORD}).status_code == 200
        assert client.post("/api/login", json={"username": refused[-1], "password": PASSWORD}).status_code == 401


def test_a_login_storm_leaves_signed_in_users_unharmed_and_counts_only_what_it_evaluated(
        storm_farm: Farm) -> None:
    """Credential stuffing: hundreds of wrong passwords at one account (a hash each), from as many
    addresses. A refused one is refused before the throttle counts it as an attempt."""
    with signed_in(storm_farm.config.balancer_url) as owner:
        username = owner.get("/api/me").json()["username"]
    answers = storm_while_reading(storm_farm, "/api/login",
                                  [{"username": username, "password": f"wrong-{i}-password"} for i in range(STORM)])
    statuses = Counter(r.status_code for r in answers)
    assert set(statuses) <= {401, 429, 503}  # 429: past the account's 100 failures (a faster machine than ours)
    assert statuses[401] > 0
    assert statuses[503] > 0
    with redis.Redis.from_url(storm_farm.config.redis_url) as store:
        space = user_space(storm_farm.config.key_prefix, username)
        counted = int(store.get(f"{space}login-failures:user:{username}") or 0)
    assert counted == statuses[401]

