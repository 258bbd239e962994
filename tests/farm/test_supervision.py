"""The native farm's own machinery killed: supervisord SIGKILLed (its children run on, unsupervised), and
nginx's master SIGKILLed (its workers run on, holding the ports). Each on a farm of its own."""

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import psutil
import pytest

from farmctl.native import NativeFarm
from farmctl.ports import port_is_free
from farmctl.runtime import Farm
from farmctl.wait import answers, wait_until
from tests.conftest import FarmFactory

pytestmark = pytest.mark.farm

#: A SIGKILLed nginx master is replaced, and serves alone (none of its workers left), within this.
NGINX_BACK_S = 5.0


def farm_processes(farm: Farm) -> set[int]:
    """Every pid of the farm now: each supervised process and its children (nginx's workers)."""
    pids = {s.pid for s in farm.status() if s.pid}
    return pids | {c.pid for pid in pids for c in psutil.Process(pid).children(recursive=True)}


def kill_supervisord(farm: NativeFarm) -> None:
    pid = farm.supervisor.daemon_pid()
    assert pid
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not psutil.pid_exists(pid), 5)
    assert not farm.is_running()


def farmctl(farm: Farm, command: str) -> subprocess.CompletedProcess[str]:
    """`make <command>` for this farm: python -m farmctl with the farm's make variables."""
    c = farm.config
    env = {**os.environ, "RUNTIME": "native", "N": str(c.instances), "HTTP_PORT": str(c.http_port),
           "HTTPS_PORT": str(c.https_port), "BASE_PORT": str(c.base_port), "REDIS_PORT": str(c.redis_port),
           "STATE_DIR": str(c.state_dir)}
    return subprocess.run([sys.executable, "-m", "farmctl", command], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def running(pid: int) -> bool:
    """Not exited (a zombie has: an orphan's may never be reaped where PID 1 reaps nothing)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_all_gone(farm: Farm, pids: set[int]) -> None:
    alive = [p for p in pids if running(p)]
    assert alive == [], [psutil.Process(p).cmdline() for p in alive]
    assert [p for p in farm.config.ports if not port_is_free(p)] == []


@dataclass
class Probes:
    """What one client saw while it asked the balancer every 20 ms."""

    ok: list[float] = field(default_factory=list)
    failed: list[float] = field(default_factory=list)

    def longest_outage(self) -> float:
        """The longest time from a failed request to the next answered one."""
        outage, since = 0.0, None
        for at, ok in sorted([(t, True) for t in self.ok] + [(t, False) for t in self.failed]):
            if not ok:
                since = at if since is None else since
            elif since is not None:
                outage, since = max(outage, at - since), None
        return outage


@contextmanager
def light_load(url: str) -> Iterator[Probes]:
    probes, stop = Probes(), threading.Event()

    def run() -> None:
        with httpx.Client(timeout=1) as client:
            while not stop.is_set():
                try:
                    ok = client.get(f"{url}/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                (probes.ok if ok else probes.failed).append(time.monotonic())
                time.sleep(0.02)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield probes
    finally:
        stop.set()
        thread.join(10)


def served_by(farm: Farm, requests: int = 12) -> set[str]:
    with httpx.Client(base_url=farm.config.balancer_url, timeout=5) as client:
        return {client.get("/healthz").headers["x-served-by"] for _ in range(requests)}


def test_status_and_down_after_supervisord_is_killed(farm_factory: FarmFactory) -> None:
    farm = farm_factory(instances=2)
    assert isinstance(farm, NativeFarm)
    pids = farm_processes(farm)
    kill_supervisord(farm)
    assert answers(f"{farm.config.balancer_url}/healthz")  # unsupervised, still serving

    status = farmctl(farm, "status")
    assert status.returncode != 0
    assert "supervisord is not running" in status.stderr
    assert "unsupervised" in status.stdout
    assert {"web1", "web2", "redis", "nginx", "health"} <= {line.split()[0] for line in status.stdout.splitlines()}

    started = time.monotonic()
    down = farmctl(farm, "down")
    took = time.monotonic() - started
    assert down.returncode == 0, down.stderr
    assert_all_gone(farm, pids)
    print(f"make down of an unsupervised farm: {took:.1f} s")


def test_up_recovers_after_supervisord_is_killed(farm_factory: FarmFactory) -> None:
    farm = farm_factory(instances=2)
    assert isinstance(farm, NativeFarm)
    pids = farm_processes(farm)
    kill_supervisord(farm)
    started = time.monotonic()
    with light_load(farm.config.balancer_url) as probes:
        farm.up()
    took = time.monotonic() - started
    assert farm.is_running()
    assert all(s.up for s in farm.status())
    assert not any(running(p) for p in pids)
    killed = farm.kill("web1")  # supervised again: what dies comes back
    assert wait_until(lambda: farm.pid("web1") not in (0, killed) and farm.is_serving("web1"), 15)
    print(f"make up of an unsupervised farm, to all healthy: {took:.1f} s, of which nothing answered for "
          f"{probes.longest_outage():.1f} s")


def test_nginx_master_killed_is_replaced_and_reloadable(farm_factory: FarmFactory) -> None:
    farm = farm_factory(instances=2)
    master = farm.pid("nginx")
    workers = {c.pid for c in psutil.Process(master).children()}
    assert workers
    with light_load(farm.config.balancer_url) as probes:
        time.sleep(0.5)
        killed_at = time.monotonic()
        farm.kill("nginx", "KILL")

        def new_master_serves_alone() -> bool:
            return (not any(running(p) for p in workers) and farm.pid("nginx") not in (0, master)
                    and answers(f"{farm.config.balancer_url}/healthz"))

        assert wait_until(new_master_serves_alone, NGINX_BACK_S, interval_s=0.05)
        back = time.monotonic() - killed_at
        time.sleep(0.5)
    assert probes.ok[-1] > killed_at + back  # and it keeps serving

    farm.drain("web1")  # the health loop's way in: a reload of the new master
    assert served_by(farm) == {"web2"}
    farm.undrain("web1")
    assert served_by(farm) == {"web1", "web2"}
    print(f"nginx master SIGKILLed: new master alone serving after {back:.2f} s, "
          f"longest outage {probes.longest_outage():.2f} s, {len(probes.failed)} failed of "
          f"{len(probes.ok) + len(probes.failed)} (at {[round(t - killed_at, 2) for t in probes.failed]} s)")


def test_down_after_nginx_master_is_killed_stops_its_workers(farm_factory: FarmFactory) -> None:
    farm = farm_factory(instances=1)
    pids = farm_processes(farm)
    farm.kill("nginx", "KILL")
    farm.down()
    assert_all_gone(farm, pids)
