"""Redis with a replica and three Sentinels (REDIS=sentinel): the instances follow a failover on their
own - no restart, 503 while there is no primary, never 500 - and signed-in users stay signed in."""

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field

import httpx
import pytest
import redis

from app.config import SESSION_COOKIE
from farmctl.config import SENTINEL_MASTER
from farmctl.runtime import Farm
from farmctl.wait import wait_until
from tests.conftest import FarmFactory
from tests.farm.users import session_key, signed_in

pytestmark = pytest.mark.farm

USERS = 4
FOLLOW_WITHIN_S = 15


@pytest.fixture(scope="module")
def sentinel_farm(farm_factory: FarmFactory) -> Farm:
    return farm_factory(2, redis_mode="sentinel")


@dataclass
class Watch:
    """Signed-in users reading /api/me through nginx in a loop: what each one saw, and when."""

    statuses: Counter[int] = field(default_factory=Counter)
    wrong_bodies: list[str] = field(default_factory=list)
    last_ok: dict[str, float] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def follow(self, client: httpx.Client, username: str) -> None:
        while not self.stop.is_set():
            response = client.get("/api/me")
            self.statuses[response.status_code] += 1
            if response.status_code == 200 and response.json()["username"] == username:
                self.last_ok[username] = time.monotonic()
            elif response.status_code != 503 or response.json() != {"detail": "session store unavailable"} \
                    or response.headers.get("retry-after") != "1":
                self.wrong_bodies.append(f"{response.status_code} {response.text}")
            time.sleep(0.02)


@pytest.fixture
def watch(sentinel_farm: Farm) -> Iterator[Watch]:
    """USERS signed in before the failover (their logins WAITed for the replica), all following."""
    watch = Watch()
    with ExitStack() as stack:
        threads = []
        for _ in range(USERS):
            client = stack.enter_context(signed_in(sentinel_farm.config.balancer_url))
            username = client.get("/api/me").json()["username"]
            threads.append(threading.Thread(target=watch.follow, args=(client, username), daemon=True))
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        yield watch
        watch.stop.set()
        for thread in threads:
            thread.join(10)


def wait_until_every_user_is_served(watch: Watch, since: float) -> float | None:
    """Seconds from `since` until every user had a 200 after it; None if not within FOLLOW_WITHIN_S."""
    def served() -> bool:
        return len(watch.last_ok) == USERS and min(watch.last_ok.values()) > since

    if not wait_until(served, FOLLOW_WITHIN_S - (time.monotonic() - since)):
        return None
    return max(watch.last_ok.values()) - since


def wait_failover_ready(farm: Farm, timeout_s: float = 30) -> None:
    assert wait_until(farm.failover_ready, timeout_s, interval_s=0.2), \
        "the old primary did not rejoin as an in-sync replica"


def test_login_acknowledged_by_the_replica_before_the_answer(sentinel_farm: Farm) -> None:
    config = sentinel_farm.config
    primary = sentinel_farm.redis_primary()
    replica_port = next(port for name, port in config.redis_nodes.items() if name != primary)
    with signed_in(config.balancer_url) as client:
        token = client.cookies[SESSION_COOKIE]
    key = session_key(config.key_prefix, token)
    with redis.Redis(port=replica_port) as replica:
        assert replica.exists(key) == 1  # WAIT returned only once the replica had it


def test_sigkill_of_the_primary_is_followed_without_restarting_an_instance(sentinel_farm: Farm,
                                                                          watch: Watch) -> None:
    pids = {name: sentinel_farm.pid(name) for name in sentinel_farm.instance_names()}
    old = sentinel_farm.redis_primary()
    assert old is not None
    assert sentinel_farm.failover_ready()

    killed_at = time.monotonic()
    sentinel_farm.kill(old, "KILL")
    took = wait_until_every_user_is_served(watch, killed_at)

    assert took is not None, f"not every user was served within {FOLLOW_WITHIN_S} s: {watch.statuses}"
    # The instances follow the first Sentinel that answers; a majority may agree a moment later.
    assert wait_until(lambda: sentinel_farm.redis_primary() not in (None, old), 5), "the Sentinels disagree"
    assert {name: sentinel_farm.pid(name) for name in pids} == pids  # followed, not restarted
    assert set(watch.statuses) <= {200, 503}, watch.statuses
    assert watch.wrong_bodies == []
    wait_failover_ready(sentinel_farm)  # the old primary is back, as an in-sync replica


def test_manual_failover_without_a_crash_is_followed(sentinel_farm: Farm, watch: Watch) -> None:
    """The old primary stays alive and is demoted (READONLY for writes; Sentinel also closes its clients)."""
    config = sentinel_farm.config
    wait_failover_ready(sentinel_farm)
    old = sentinel_farm.redis_primary()
    with redis.Redis(port=config.sentinel_ports[0]) as sentinel:
        assert sentinel.sentinel_failover(SENTINEL_MASTER)
    assert wait_until(lambda: sentinel_farm.redis_primary() not in (None, old), FOLLOW_WITHIN_S), \
        "the Sentinels did not fail over"
    took = wait_until_every_user_is_served(watch, time.monotonic())

    assert took is not None, f"not every user was served within {FOLLOW_WITHIN_S} s: {watch.statuses}"
    assert set(watch.statuses) <= {200, 503}, watch.statuses
    assert watch.wrong_bodies == []


def test_a_login_waiting_for_a_hung_replica_holds_no_hash_slot(farm_factory: FarmFactory) -> None:
    """A login waits (WAIT) for the replica to have its session, up to REDIS_WAIT_TIMEOUT_MS; with
    the replica hung it waits all of it. That wait must not hold the login's argon2 slot: with one
    slot and no queue, a second login arriving meanwhile is hashed, not refused "too busy"."""
    farm = farm_factory(1, redis_mode="sentinel", extra_env={
        "ARGON2_CONCURRENCY": "1", "ARGON2_QUEUE": "0", "REDIS_WAIT_TIMEOUT_MS": "900"})
    base = farm.config.balancer_url
    with httpx.Client(base_url=base, timeout=10) as setup:
        for name in ("first-in-line", "second-in-line"):
            assert setup.post("/api/register", json={"username": name, "password": "password-of-" + name}) \
                .status_code == 201
    primary = farm.redis_primary()
    replica = next(name for name in farm.config.redis_nodes if name != primary)
    results: dict[str, tuple[int, float]] = {}

    def login(name: str) -> None:
        started = time.monotonic()
        with httpx.Client(base_url=base, timeout=10) as client:
            status = client.post("/api/login", json={"username": name, "password": "password-of-" + name}).status_code
        results[name] = (status, time.monotonic() - started)

    farm.pause(replica)
    try:
        first = threading.Thread(target=login, args=("first-in-line",))
        first.start()
        time.sleep(0.5)  # its hash (tens of ms) is done; it is waiting for the replica
        login("second-in-line")
        first.join(10)
    finally:
        farm.resume(replica)
    assert results["first-in-line"][0] == 200, results
    assert results["first-in-line"][1] >= 0.9, results  # it did wait for the hung replica
    assert results["second-in-line"][0] == 200, results  # not 503 "too busy"
