"""Start what is measured (a farm, a farm with in-process sessions, the peer libraries), then
measure every configuration with wrk, round after round, in alternating order."""

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx

from bench.cpu import CpuUse, children, cpu_use, snapshot
from bench.wrk import WrkResult, run_wrk
from farmctl.config import PROJECT_ROOT, FarmConfig
from farmctl.lifecycle import open_farm, running_farm
from farmctl.native import NativeFarm
from farmctl.ports import free_port_block
from farmctl.runtime import FarmError
from farmctl.wait import answers, wait_until

DEMO_CREDENTIALS = {"username": "demo", "password": "demo-password"}
#: name -> uvicorn factory of the peer apps in bench/peers.py
PEERS = {"starsessions": "bench.peers:starsessions_app", "starlette-cookie": "bench.peers:cookie_app"}


class BenchError(RuntimeError):
    """Something the user can act on; the CLI prints it without a traceback."""


@dataclass(frozen=True)
class BenchSpec:
    """What to run: `rounds` x every configuration, each for `duration` (wrk's format: 3s, 1m)."""

    rounds: int = 3
    duration: str = "3s"
    connections: int = 16
    threads: int = 1
    instances: int = 3
    warmup: str = "1s"  # one unrecorded pass over every configuration first; "0" for none
    out: Path = PROJECT_ROOT / "reports" / "bench"
    state_root: Path = PROJECT_ROOT / ".farm"


@dataclass(frozen=True)
class Target:
    """One configuration: a URL hit by wrk, and how many instances nginx balances over (None: no nginx)."""

    key: str
    label: str
    url: str
    headers: tuple[str, ...] = ()
    active: int | None = None
    connections: int | None = None  # None: the spec's


@dataclass(frozen=True)
class Sample:
    wrk: WrkResult
    cpu: CpuUse


@dataclass
class Stage:
    """Everything started for the bench, and the pids to account CPU to."""

    farm: NativeFarm
    memory_farm: NativeFarm
    peer_urls: dict[str, str] = field(default_factory=dict)
    peer_pids: list[int] = field(default_factory=list)

    def cpu_groups(self) -> dict[str, list[int]]:
        app, nginx, redis = list(self.peer_pids), [], []
        for farm in (self.farm, self.memory_farm):
            instances = set(farm.instance_names())
            for proc in farm.status():
                if proc.name in instances:
                    app.append(proc.pid)
                elif proc.name == "nginx":
                    nginx += [proc.pid, *children(proc.pid)]
                elif proc.name.startswith(("redis", "sentinel")):
                    redis.append(proc.pid)
        return {"app": app, "nginx": nginx, "redis": redis}


def bench_farm(name: str, instances: int, session_backend: Literal["redis", "memory"],
               state_root: Path) -> FarmConfig:
    """The config of a bench farm: no HTTPS, free ports, a fresh state dir (one left behind by an
    interrupted run is stopped and removed first)."""
    config = FarmConfig(instances=instances, https_port=0, session_backend=session_backend, redis_mode="single",
                        balance="round_robin", demo_controls=False,
                        state_dir=state_root / f"bench-{name}").on_free_ports()
    open_farm(config, "native").down()
    shutil.rmtree(config.state_dir, ignore_errors=True)
    return config


@contextmanager
def running_peer(name: str, factory: str, redis_url: str, log_dir: Path) -> Iterator[tuple[str, int]]:
    """One peer app under uvicorn with the farm instances' flags (python -m app); yields (url, pid)."""
    port = free_port_block(1)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "--factory", factory, "--host", "127.0.0.1", "--port", str(port)],
            cwd=PROJECT_ROOT, env={"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"},
            stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_until(lambda: proc.poll() is not None or answers(f"{url}/healthz"), 30) \
                or proc.poll() is not None:
            raise BenchError(f"peer {name} did not start:\n{log.read_text()[-2000:]}")
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()



def login(base_url: str, timeout_s: float = 30) -> str:
    """Sign in as the demo user; returns the Cookie header for wrk. The instances create the demo
    account in the background after start-up, so a 401 at first just means "not yet"."""
    last = "no answer"
    with httpx.Client(base_url=base_url, timeout=5) as client:

        def attempt() -> str | None:
            nonlocal last
            try:
                response = client.post("/api/login", json=DEMO_CREDENTIALS)
            except httpx.HTTPError as exc:
                last = repr(exc)
                return None
            if response.status_code == 200:
                return "Cookie: " + "; ".join(f"{k}={v}" for k, v in response.cookies.items())
            last = f"{response.status_code} {response.text}"
            return None

        # Each 401 counts against the login throttle (5 per account), hence the pace.
        cookie = wait_until(attempt, timeout_s, interval_s=1.0)
    if cookie:
        return cookie
    raise BenchError(f"could not sign in at {base_url} within {timeout_s:.0f} s: {last}")


def targets(stage: Stage, instances: int) -> list[Target]:
    """Every configuration, grouped so that nginx is reconfigured as seldom as possible."""
    web1, lb = stage.farm.config.web[0].url, stage.farm.config.balancer_url
    cookie = login(lb)
    memory_web1 = stage.memory_farm.config.web[0].url
    direct = [
        Target("direct/healthz", "web1 direct, GET /healthz", f"{web1}/healthz"),
        Target("direct-1conn/healthz", "web1 direct, GET /healthz, 1 connection", f"{web1}/healthz",
               connections=1),
        Target("direct/me", "web1 direct, GET /api/me (Redis sessions)", f"{web1}/api/me", (cookie,)),
        Target("direct-memory/me", "web1 direct, GET /api/me (in-process sessions)", f"{memory_web1}/api/me",
               (login(memory_web1),)),
        *(Target(f"{name}/me", f"{name}, GET /api/me", f"{url}/api/me", (login(url),))
          for name, url in stage.peer_urls.items()),
    ]
    balanced = [Target("nginx-1-1conn/healthz", "nginx -> 1 instance, GET /healthz, 1 connection",
                       f"{lb}/healthz", active=1, connections=1)]
    for k in range(1, instances + 1):
        balanced += [
            Target(f"nginx-{k}/healthz", f"nginx -> {k} instance(s), GET /healthz", f"{lb}/healthz", active=k),
            Target(f"nginx-{k}/me", f"nginx -> {k} instance(s), GET /api/me", f"{lb}/api/me", (cookie,), active=k),
        ]
    return direct + balanced


def measure(spec: BenchSpec, stage: Stage, target: Target, duration: str) -> Sample:
    groups = stage.cpu_groups()
    before = snapshot(groups)
    connections = target.connections or spec.connections
    result = run_wrk(target.url, duration, connections, min(spec.threads, connections), target.headers)
    return Sample(result, cpu_use(before, snapshot(groups), result.requests))


def run_rounds(spec: BenchSpec, stage: Stage, todo: list[Target]) -> dict[str, list[Sample]]:
    """Every target once per round; odd rounds in reverse order, so drift over time
    (a noisy neighbour, a warming cache) does not always favour the same configuration."""
    farm = stage.farm
    active = farm.config.instances

    def route(target: Target) -> None:
        nonlocal active
        if target.active is not None and target.active != active:
            farm.set_draining({i.name for i in farm.config.web[target.active:]})
            active = target.active

    if spec.warmup not in ("", "0", "0s"):
        print(f"warm-up: {len(todo)} configurations x {spec.warmup}", flush=True)
        for target in todo:
            route(target)
            measure(spec, stage, target, spec.warmup)
    samples: dict[str, list[Sample]] = {t.key: [] for t in todo}
    for number in range(spec.rounds):
        order = todo if number % 2 == 0 else todo[::-1]
        print(f"round {number + 1}/{spec.rounds}: {len(order)} configurations x {spec.duration}", flush=True)
        for target in order:
            route(target)
            sample = measure(spec, stage, target, spec.duration)
            samples[target.key].append(sample)
            print(f"  {target.label:<52} {sample.wrk.rps:>9.0f} req/s  p99 {sample.wrk.p99_ms:6.1f} ms", flush=True)
    return samples


def run_bench(spec: BenchSpec) -> tuple[list[Target], dict[str, list[Sample]]]:
    """Bring everything up, measure, bring everything down (also on failure)."""
    if spec.rounds < 1 or spec.instances < 1 or spec.connections < spec.threads:
        raise BenchError("need rounds >= 1, instances >= 1 and connections >= threads")
    with ExitStack() as stack:
        try:
            farm = stack.enter_context(
                running_farm(bench_farm("redis", spec.instances, "redis", spec.state_root), "native"))
            memory = stack.enter_context(running_farm(bench_farm("memory", 1, "memory", spec.state_root), "native"))
        except FarmError as exc:
            raise BenchError(str(exc)) from None
        stage = Stage(farm, memory)
        for name, factory in PEERS.items():
            url, pid = stack.enter_context(
                running_peer(name, factory, farm.config.redis_url, spec.state_root / "bench-peers"))
            stage.peer_urls[name] = url
            stage.peer_pids.append(pid)
        todo = targets(stage, spec.instances)
        return todo, run_rounds(spec, stage, todo)

