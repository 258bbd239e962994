"""The near cache's revocation under real store faults (REDIS=sentinel): when a logout answers 204,
no instance serves its cookie any more - through a frozen primary that fails over and comes back
(two masters for a while), a subscription that silently stops delivering, and a frozen instance
that never acknowledges. Each logout is followed by every instance asked for the dead cookie."""

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import psutil
import pytest
import redis
from redis.crc import key_slot

from app.config import SESSION_COOKIE
from app.sessions.nearcache import LEASE_S, NearCache
from farmctl.native import cluster
from farmctl.runtime import Farm
from farmctl.wait import wait_until
from tests.conftest import FarmFactory
from tests.farm.users import signed_in

pytestmark = pytest.mark.farm

#: How long after its 204 a logout's cookie is tried on every instance.
WATCH_S = 1.0
#: The request deadline (Settings.request_timeout_s): a logout that answers later has failed.
DEADLINE_S = 1.5


@pytest.fixture(scope="module")
def farm(farm_factory: FarmFactory) -> Farm:
    return farm_factory(3, redis_mode="sentinel")


@pytest.fixture(scope="module", params=["sentinel", "cluster"])
def store_farm(request: pytest.FixtureRequest) -> Farm:
    """This module's farm behind Sentinel, then one on a Redis Cluster (where the invalidations go
    through the primary of their channel's slot)."""
    farm: Farm = request.getfixturevalue("farm" if request.param == "sentinel" else "cluster_farm")
    return farm


@dataclass
class Logouts:
    """What the logouts of a test answered, and every time an instance served a cookie after its 204."""

    answers: list[tuple[int, float]] = field(default_factory=list)
    served_after: list[tuple[str, float]] = field(default_factory=list)

    @property
    def worst_s(self) -> float:
        return max((took for _, took in self.answers), default=0.0)


def cookie_of(client: httpx.Client) -> httpx.Cookies:
    return httpx.Cookies({SESSION_COOKIE: client.cookies[SESSION_COOKIE]})


def warm(farm: Farm, cookies: httpx.Cookies, names: list[str] | None = None, timeout_s: float = 10) -> None:
    """Every instance (or `names`) has served the session at least once: cached where it may be."""
    for inst in farm.config.web:
        if names is not None and inst.name not in names:
            continue
        with httpx.Client(base_url=inst.url, cookies=cookies, timeout=3) as client:
            def served(client: httpx.Client = client) -> bool:
                return client.get("/api/me").status_code == 200

            assert wait_until(served, timeout_s, interval_s=0.05), f"{inst.name} did not serve the session"
            client.get("/api/me")


def log_out_and_watch(farm: Farm, cookies: httpx.Cookies, logouts: Logouts, via: str = "web1") -> None:
    """Log out on `via` (asked again after a 503: the session is still usable then), then ask every
    instance for the cookie for WATCH_S: any 200 after the 204 is recorded."""
    inst = next(i for i in farm.config.web if i.name == via)
    with httpx.Client(base_url=inst.url, cookies=cookies, timeout=5) as client:
        for _ in range(20):
            started = time.monotonic()
            response = client.post("/api/logout")
            logouts.answers.append((response.status_code, time.monotonic() - started))
            if response.status_code == 204:
                break
            time.sleep(0.2)
    answered = time.monotonic()
    clients = [httpx.Client(base_url=i.url, cookies=cookies, timeout=3) for i in farm.config.web]
    try:
        while time.monotonic() - answered < WATCH_S:
            for client, web in zip(clients, farm.config.web, strict=True):
                try:
                    status = client.get("/api/me").status_code
                except httpx.HTTPError:  # a frozen instance: it serves nobody
                    continue
                if status == 200:
                    logouts.served_after.append((web.name, round(time.monotonic() - answered, 3)))
    finally:
        for client in clients:
            client.close()


def primary_port(farm: Farm) -> int:
    """The node the invalidations go through: the primary (on a cluster, the primary of their slot)."""
    if farm.config.cluster:
        slot = key_slot(NearCache.channel_of(farm.config.key_prefix).encode())
        port = cluster.primary_of_slot(farm.config.cluster_ports, slot)
        assert port is not None
        return port
    primary = farm.redis_primary()
    assert primary is not None
    return farm.config.redis_nodes[primary]


def subscription_port(farm: Farm, name: str) -> int | None:
    """The local port of instance `name`'s subscription connection to the primary, as Redis lists it."""
    port = primary_port(farm)
    with redis.Redis(port=port, decode_responses=True) as primary:
        subscribers = {int(c["addr"].rsplit(":", 1)[1]) for c in primary.client_list(_type="pubsub")}
    mine = {c.laddr.port for c in psutil.Process(farm.pid(name)).net_connections(kind="tcp")
            if c.raddr and c.raddr.port == port}
    found = subscribers & mine
    assert len(found) <= 1, found
    return next(iter(found), None)


def _iptables(*args: str) -> None:
    binary = shutil.which("iptables") or "/usr/sbin/iptables"
    subprocess.run([binary, "-w", *args], check=True, capture_output=True)


@contextmanager
def deliveries_dropped(redis_port: int, local_port: int) -> Iterator[None]:
    """Redis's packets to one connection are dropped (only that one: matched by both ports), while
    what the instance sends still arrives: the subscription looks fine from Redis's side."""
    rule = ["OUTPUT", "-p", "tcp", "-s", "127.0.0.1", "--sport", str(redis_port),
            "-d", "127.0.0.1", "--dport", str(local_port), "-j", "DROP"]
    _iptables("-I", *rule)
    try:
        yield
    finally:
        _iptables("-D", *rule)


def test_a_subscription_that_stops_delivering_is_detected_and_bypassed(store_farm: Farm) -> None:
    farm = store_farm
    logouts, detected = Logouts(), []
    for _ in range(4):
        with signed_in(farm.config.web[0].url) as client:
            cookies = cookie_of(client)
        warm(farm, cookies)
        before = subscription_port(farm, "web2")
        assert before is not None
        with deliveries_dropped(primary_port(farm), before):
            dropped_at = time.monotonic()
            log_out_and_watch(farm, cookies, logouts)
            # A new subscription on a new connection (the dropped one can deliver nothing).
            def resubscribed(before: int = before) -> bool:
                return subscription_port(farm, "web2") not in (None, before)

            assert wait_until(resubscribed, 5, 0.05), "web2 never noticed: no new subscription"
            detected.append(time.monotonic() - dropped_at)
    print(f"\nsubscription silently dead: logouts {logouts.answers}, served after 204: {logouts.served_after}, "
          f"resubscribed after {[round(d, 2) for d in detected]} s")
    assert logouts.served_after == []
    assert [status for status, _ in logouts.answers] == [204] * 4
    assert logouts.worst_s < DEADLINE_S


def test_logout_while_an_instance_is_frozen_answers_in_time_and_holds(store_farm: Farm) -> None:
    """The frozen instance never acknowledges: the logout's wait for it ends on time, by a bound
    no library can ignore, and the instance serves none of the cookies once it thaws."""
    farm = store_farm
    sessions = []
    for _ in range(5):
        with signed_in(farm.config.web[0].url) as client:
            sessions.append(cookie_of(client))
    for cookies in sessions:
        warm(farm, cookies)
    answers: list[tuple[int, float]] = []
    farm.pause("web3")
    try:
        for cookies in sessions:
            with httpx.Client(base_url=farm.config.web[0].url, cookies=cookies, timeout=5) as client:
                started = time.monotonic()
                answers.append((client.post("/api/logout").status_code, time.monotonic() - started))
    finally:
        farm.resume("web3")
    web3 = farm.config.web[2]
    served = []
    for cookies in sessions:
        with httpx.Client(base_url=web3.url, cookies=cookies, timeout=5) as client:
            served.append(client.get("/api/me").status_code)
    print(f"\nfrozen instance: logouts {answers}, web3 after thawing: {served}")
    assert served.count(200) == 0, served
    assert [status for status, _ in answers] == [204] * len(sessions), answers
    assert max(took for _, took in answers) < LEASE_S + 0.3, answers


def test_logouts_around_a_frozen_primary_that_fails_over_are_honoured_everywhere(farm: Farm) -> None:
    """The primary is SIGSTOPped until the Sentinels have promoted the replica, then resumed: it
    answers ROLE master for a while next to the new one. Logouts in both phases must hold."""
    assert wait_until(farm.failover_ready, 30, interval_s=0.2)
    sessions = []
    for _ in range(4):
        with signed_in(farm.config.web[0].url) as client:
            sessions.append(cookie_of(client))
    for cookies in sessions:
        warm(farm, cookies)
    old = farm.redis_primary()
    assert old is not None
    frozen, thawed = Logouts(), Logouts()
    farm.pause(old)
    paused_at = time.monotonic()
    try:
        assert wait_until(lambda: farm.redis_primary() not in (None, old), 15, interval_s=0.1), "no failover"
        failed_over_s = time.monotonic() - paused_at
        for cookies in sessions[:2]:
            warm(farm, cookies)
            log_out_and_watch(farm, cookies, frozen)
        time.sleep(max(0.0, 6 - (time.monotonic() - paused_at)))
    finally:
        farm.resume(old)
    with redis.Redis(port=farm.config.redis_nodes[old], decode_responses=True) as node:
        role_after_resume = node.role()[0]
    for cookies in sessions[2:]:
        warm(farm, cookies)
        log_out_and_watch(farm, cookies, thawed)
    print(f"\nfailover after {failed_over_s:.1f} s; old primary after resume: {role_after_resume}; "
          f"frozen phase: {frozen.answers} served after 204 {frozen.served_after}; "
          f"thawed phase: {thawed.answers} served after 204 {thawed.served_after}")
    assert frozen.served_after == []
    assert thawed.served_after == []
    assert all(took < DEADLINE_S for _, took in frozen.answers + thawed.answers)
    assert wait_until(farm.failover_ready, 40, interval_s=0.2), "the old primary did not rejoin as a replica"
