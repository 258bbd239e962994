"""REDIS=cluster under Docker: compose.yaml's profile `cluster` run for real - six nodes made a
cluster by its one-shot, the instances on it - and a primary SIGKILLed under requests: its replica
promoted, its users answered 503 with Retry-After meanwhile and then served with the same session,
the other shards' users not noticing, and the node back (the restart policy) as the new primary's
replica."""

import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from redis.crc import key_slot

from app.config import DEMO_PASSWORD, DEMO_USERNAME
from app.keys import user_space
from farmctl.config import FarmConfig
from farmctl.docker import DockerFarm
from farmctl.docker.render import DOCKER_CLUSTER_NODE_NAMES
from farmctl.lifecycle import running_farm
from farmctl.ports import on_free_ports
from farmctl.wait import wait_until
from tests.farm.users import login, register

pytestmark = pytest.mark.farm


@pytest.fixture(scope="module")
def cluster_farm(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerFarm]:
    """A Docker farm of three instances on the cluster profile, every GET /api/me asking the store
    (no near cache), without Prometheus."""
    config = FarmConfig(state_dir=Path(tmp_path_factory.mktemp("cluster-farm")), redis_mode="cluster",
                        prometheus_port=0, extra_env={"SESSION_NEAR_CACHE_S": "0"})
    with running_farm(on_free_ports(config), "docker", timeout_s=180) as farm:
        assert isinstance(farm, DockerFarm)
        yield farm


def node(farm: DockerFarm, name: str) -> redis.Redis:
    """A client of one node alone, on the loopback port farmctl publishes it on."""
    return redis.Redis(port=farm.config.redis_nodes[name], password=farm.config.redis_password, socket_timeout=2)


def primary_of(farm: DockerFarm, username: str) -> str:
    """The node that serves the slot of `username`'s keys now, as the cluster tells clients."""
    slot = key_slot(user_space(farm.config.key_prefix, username).encode())
    with node(farm, DOCKER_CLUSTER_NODE_NAMES[0]) as client:
        for low, high, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
            if int(low) <= slot <= int(high):
                return bytes(primary[0]).decode()
    raise AssertionError(f"no node serves slot {slot}")


@dataclass
class Answer:
    at: float
    status: int
    retry_after: str | None


class Asking(threading.Thread):
    """GET /api/me with one client's cookie, every 50 ms until stopped, each answer kept."""

    def __init__(self, client: httpx.Client) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.answers: list[Answer] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            try:
                response = self.client.get("/api/me")
            except httpx.HTTPError:  # counted as a failure below, as nginx's 502 would be
                self.answers.append(Answer(time.monotonic(), 0, None))
                continue
            self.answers.append(Answer(time.monotonic(), response.status_code, response.headers.get("retry-after")))

    def stop(self) -> list[Answer]:
        self.done.set()
        self.join(10)
        return self.answers


def test_cluster_profile_runs_six_nodes_three_primaries_each_with_a_replica(cluster_farm: DockerFarm) -> None:
    rows = {s.name: s for s in cluster_farm.status()}
    assert "redis" not in rows  # the single Redis is left out on a cluster
    assert list(cluster_farm.config.redis_nodes) == list(DOCKER_CLUSTER_NODE_NAMES)
    for name, port in cluster_farm.config.redis_nodes.items():
        assert rows[name].up, name
        assert rows[name].port == port, name
    seen = cluster_farm.cluster_roles()
    primaries = {name for name, role in seen.items() if role.startswith("primary")}
    assert len(primaries) == 3
    assert sum(int(seen[name].split()[1]) for name in primaries) == 16384
    assert sorted(role.removeprefix("replica of ") for name, role in seen.items() if name not in primaries) \
        == sorted(primaries)


def test_kill_a_primary_and_its_users_keep_their_sessions(cluster_farm: DockerFarm) -> None:
    url = cluster_farm.config.balancer_url
    with httpx.Client(base_url=url, timeout=10) as user, httpx.Client(base_url=url, timeout=10) as other:
        assert login(user, DEMO_USERNAME, DEMO_PASSWORD).status_code == 200
        before = user.get("/api/me").json()
        primary = primary_of(cluster_farm, DEMO_USERNAME)
        replica = next(name for name, role in cluster_farm.cluster_roles().items() if role == f"replica of {primary}")
        # The user's keys are where the key layout says (or killing that node would prove nothing).
        slot = key_slot(user_space(cluster_farm.config.key_prefix, DEMO_USERNAME).encode())
        with node(cluster_farm, primary) as client:
            assert client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) > 0
        # A user whose keys another primary holds.
        username = next(name for name in (f"c{secrets.token_hex(5)}" for _ in range(200))
                        if primary_of(cluster_farm, name) != primary)
        register(other, username)
        assert login(other, username).status_code == 200

        askers = [Asking(user), Asking(other)]
        for asker in askers:
            asker.start()
        time.sleep(0.5)
        killed = time.monotonic()
        assert cluster_farm.kill(primary) > 0  # redis-server's SIGKILL: the restart policy brings it back
        try:
            assert wait_until(lambda: cluster_farm.cluster_roles().get(replica, "").startswith("primary"), 30,
                              interval_s=0.1)
            # Each instance finds the new primary after its own first failed command: served again
            # once two rounds of the three answer 200.
            assert wait_until(lambda: all(user.get("/api/me").status_code == 200 for _ in range(6)), 15,
                              interval_s=0.1)
            time.sleep(0.5)
        finally:
            answers, others = (asker.stop() for asker in askers)

        after = user.get("/api/me")
        assert after.status_code == 200
        assert (after.json()["username"], after.json()["session_created_at"]) == \
            (DEMO_USERNAME, before["session_created_at"])
        during = [a for a in answers if a.at >= killed]
        assert during
        assert {a.status for a in during} <= {200, 503}, [(round(a.at - killed, 2), a.status) for a in during]
        assert all(a.retry_after and int(a.retry_after) > 0 for a in during if a.status == 503)
        assert [a.status for a in during[-5:]] == [200] * 5
        # The other shards' users did not notice.
        assert {a.status for a in others if a.at >= killed} == {200}
    # The killed node came back (the restart policy) and rejoined as the new primary's replica.
    assert wait_until(lambda: cluster_farm.cluster_roles().get(primary) == f"replica of {replica}", 30, interval_s=0.2)
