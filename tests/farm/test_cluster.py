"""A farm on a Redis Cluster of six nodes (REDIS=cluster) under the faults a cluster has: a primary
SIGKILLed while users browse and sign in, and slots moved between primaries while they browse - on
the shared cluster farm, which each test leaves healthy (which node is primary of what changes). Each
user's keys live in one slot (app.keys); these tests read which primary holds it."""

import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import httpx
import pytest
from redis.crc import key_slot

from app import keys
from app.config import SESSION_COOKIE
from farmctl.native import cluster
from farmctl.runtime import Farm
from farmctl.wait import wait_until
from loadtest.faults import PrimaryKill, Scene
from loadtest.ledger import Ledger
from tests.farm.users import client_from, login, new_username, register

pytestmark = pytest.mark.farm


def slot_of(username: str) -> int:
    return key_slot(f"{{{keys.tag_of(keys.uid(username))}}}".encode())


@dataclass
class User:
    name: str
    cookies: httpx.Cookies
    slot: int
    adds: int = 0  # cart adds the farm confirmed (200)
    answers: list[tuple[float, int, str]] = field(default_factory=list)  # (when, status, Retry-After)
    unexpected: list[str] = field(default_factory=list)  # the answers neither 200 nor 503, and their bodies


def sign_up(farm: Farm, count: int, slots: range = range(cluster.SLOTS)) -> list[User]:
    """`count` new users, signed in; their keys in `slots`."""
    users = []
    with client_from(farm.config.balancer_url) as client:
        for _ in range(count):
            while slot_of(name := new_username()) not in slots:
                pass
            register(client, name)
            assert login(client, name).status_code == 200
            users.append(User(name, httpx.Cookies({SESSION_COOKIE: client.cookies[SESSION_COOKIE]}), slot_of(name)))
            client.cookies.clear()
    return users


@contextmanager
def browsing(farm: Farm, users: list[User]) -> Iterator[None]:
    """Every user browses (who am I, add to the cart) in a thread of its own until the block ends."""
    stop = threading.Event()

    def browse(user: User) -> None:
        with httpx.Client(base_url=farm.config.balancer_url, cookies=user.cookies, timeout=10) as client:
            while not stop.is_set():
                me = resent_once(partial(client.get, "/api/me"), user)
                add = resent_once(partial(client.post, "/api/cart/items", json={"sku": "apple", "qty": 1},
                                          headers={"Idempotency-Key": secrets.token_hex(8)}), user)
                for answer in (me, add):
                    user.answers.append((time.monotonic(), answer.status_code, answer.headers.get("retry-after", "")))
                    if answer.status_code != 200:
                        user.unexpected.append(f"{answer.request.method} {answer.status_code} "
                                               f"{answer.headers.get('x-served-by')} {answer.text[:80]}")
                user.adds += add.status_code == 200
                time.sleep(0.02)

    threads = [threading.Thread(target=browse, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)  # calm first
        yield
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def resent_once(send: Callable[[], httpx.Response], user: User) -> httpx.Response:
    """Send, and once more if the connection was closed under it unanswered: a browser's behaviour.
    Every change of the rotation reloads nginx, which closes idle keep-alive connections, and a
    client that reuses one at that instant must resend (README, trade-offs); a cart add goes again
    with its Idempotency-Key, so at most once."""
    try:
        return send()
    except httpx.TransportError as exc:
        user.unexpected.append(f"resent after {type(exc).__name__}")
        return send()


def carts_and_sessions_intact(farm: Farm, users: list[User]) -> None:
    """Every session still answers, and every cart holds what the farm confirmed (no add lost; an add
    answered 503 may or may not have been applied, so at most that many more)."""
    for user in users:
        with httpx.Client(base_url=farm.config.balancer_url, cookies=user.cookies, timeout=10) as client:
            me, cart = client.get("/api/me"), client.get("/api/cart")
        assert me.status_code == 200, (user.name, me.text)
        maybe = sum(1 for _, status, _ in user.answers if status == 503)
        assert user.adds <= cart.json()["items"].get("apple", 0) <= user.adds + maybe, (user, cart.text)


#: Slots the reshard moves: a fifth of a primary's.
MOVED = 1000


def test_a_reshard_under_load_fails_no_request_and_loses_no_session(cluster_farm: Farm) -> None:
    farm = cluster_farm
    ports = farm.config.cluster_ports
    source, target = cluster.primaries(ports)[:2]
    lowest = min(low for low, _, primary in cluster.slot_ranges(ports) if primary == source)
    # Half of them in the slots on the move (redis-cli takes the source's lowest), half anywhere.
    users = sign_up(farm, 12, range(lowest, lowest + MOVED)) + sign_up(farm, 12)
    before = {user.name: cluster.primary_of_slot(ports, user.slot) for user in users}
    with browsing(farm, users):
        started = time.monotonic()
        cluster.reshard(ports, source, target, MOVED)
        took = time.monotonic() - started
    moved = [u for u in users if cluster.primary_of_slot(ports, u.slot) != before[u.name]]
    statuses = Counter(status for user in users for _, status, _ in user.answers)
    print(f"\nreshard of {MOVED} slots in {took:.1f} s under load: {sum(statuses.values())} requests {dict(statuses)}, "
          f"{len(moved)} of {len(users)} users' slots moved")
    assert moved, "no user's slot was among those moved"
    assert statuses == {200: sum(statuses.values())}
    carts_and_sessions_intact(farm, users)


def test_a_primary_killed_under_load_only_its_shards_users_notice_and_no_acknowledged_login_is_lost(
        cluster_farm: Farm) -> None:
    """The kill is CHAOS=redis's own (loadtest.faults.PrimaryKill): its victim, its SIGKILL, its
    recovery - what `make loadtest REDIS=cluster CHAOS=redis` does every KILL_EVERY seconds."""
    farm = cluster_farm
    ports = farm.config.cluster_ports
    assert PrimaryKill.refusal(farm) is None
    assert wait_until(farm.failover_ready, 30), "no replica in sync with every primary"
    users = sign_up(farm, 24)
    owner = {user.name: cluster.primary_of_slot(ports, user.slot) for user in users}
    victim = PrimaryKill.pick_victim(farm, [])
    assert victim is not None
    victim_port = farm.config.redis_nodes[victim]
    kill = PrimaryKill(Scene(farm, Ledger()), victim)
    acknowledged: list[tuple[float, str, httpx.Cookies]] = []  # logins answered 200, and when
    stop = threading.Event()

    def sign_in_repeatedly() -> None:
        names = [user.name for user in users]
        with client_from(farm.config.balancer_url) as client:
            while not stop.is_set():
                name = secrets.choice(names)
                if login(client, name).status_code == 200:
                    acknowledged.append((time.monotonic(), name, httpx.Cookies(
                        {SESSION_COOKIE: client.cookies[SESSION_COOKIE]})))
                client.cookies.clear()

    signer = threading.Thread(target=sign_in_repeatedly)
    signer.start()
    try:
        with browsing(farm, users):
            time.sleep(1)  # a second more of logins before the kill
            killed_at = time.monotonic()
            kill.inject()
            promoted = wait_until(lambda: not cluster.still_serving(victim_port, ports), 20, interval_s=0.1)
            failover_s = time.monotonic() - killed_at
            assert promoted, f"{victim} was not replaced within 20 s"
            assert wait_until(kill.recovered, 10), "the chaos would not see the failover as recovered"
    finally:
        stop.set()
        signer.join()

    theirs = [u for u in users if owner[u.name] == victim_port]
    others = [u for u in users if owner[u.name] != victim_port]
    their_answers = Counter(status for u in theirs for _, status, _ in u.answers)
    other_answers = Counter(status for u in others for _, status, _ in u.answers)
    before_kill = [(name, cookies) for at, name, cookies in acknowledged if at < killed_at]
    print(f"\n{victim} killed, its replica promoted {failover_s:.1f} s later; its shard's {len(theirs)} users: "
          f"{dict(their_answers)}; the {len(others)} others: {dict(other_answers)}; "
          f"{len(before_kill)} logins acknowledged before the kill")
    print("others' answers that were not 200:", [a for u in others for a in u.unexpected])
    assert theirs
    assert others
    assert set(their_answers) <= {200, 503}
    assert their_answers[503] > 0  # they did notice: 503, told when to come back...
    assert all(retry == "1" for u in theirs for _, status, retry in u.answers if status == 503)
    assert other_answers == {200: sum(other_answers.values())}  # ...and nobody else did
    lost = []
    for name, cookies in before_kill:
        with httpx.Client(base_url=farm.config.balancer_url, cookies=cookies, timeout=10) as client:
            if client.get("/api/me").status_code != 200:
                lost.append(name)
    assert before_kill
    assert lost == []  # acknowledged = on the replica too (WAIT): promoted with it
    carts_and_sessions_intact(farm, users)
    # The shared cluster farm, as the next tests expect it: every primary with a replica in sync.
    assert wait_until(farm.failover_ready, 30), "the killed node did not rejoin as a replica"

