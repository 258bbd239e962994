"""Start what is measured (a farm, a farm with in-process sessions, the peer libraries), then
measure every configuration with wrk, round after round, in alternating order."""

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.cpu import CpuUse, children, cpu_use, snapshot
from bench.wrk import WrkResult, run_wrk
from farmctl.config import APP_KEEPALIVE_S, PROJECT_ROOT, PROXY_SOURCE, FarmConfig
from farmctl.native import FarmError, NativeFarm, free_port_block

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


@contextmanager
def running_farm(name: str, instances: int, session_backend: str, state_root: Path) -> Iterator[NativeFarm]:
    """A farm of its own on free ports, in a fresh state dir; stopped on the way out."""
    base = free_port_block(instances + 2)
    config = FarmConfig(instances=instances, http_port=base, https_port=0, redis_port=base + 1,
                        base_port=base + 2, session_backend=session_backend,
                        state_dir=state_root / f"bench-{name}")
    farm = NativeFarm(config)
    farm.down()  # one left behind by an interrupted run would hold this state dir
    shutil.rmtree(config.state_dir, ignore_errors=True)
    try:
        farm.up(timeout_s=60)
        yield farm
    finally:
        farm.down()


@contextmanager
def running_peer(name: str, factory: str, redis_url: str, log_dir: Path) -> Iterator[tuple[str, int]]:
    """One peer app under uvicorn with the farm instances' flags; yields (url, pid)."""
    port = free_port_block(1)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", factory, "--factory", "--host", "127.0.0.1", "--port", str(port),
             "--timeout-keep-alive", str(APP_KEEPALIVE_S), "--timeout-graceful-shutdown", "10",
             "--no-server-header", "--no-access-log", "--proxy-headers", "--forwarded-allow-ips", PROXY_SOURCE],
            cwd=PROJECT_ROOT, env={"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"},
            stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not _answers(f"{url}/healthz"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"peer {name} did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def login(base_url: str, timeout_s: float = 30) -> str:
    """Sign in as the demo user; returns the Cookie header for wrk. The instances create the demo
    account in the background after start-up, so a 401 at first just means "not yet"."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    with httpx.Client(base_url=base_url, timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                response = client.post("/api/login", json=DEMO_CREDENTIALS)
            except httpx.HTTPError as exc:
                last, wait = repr(exc), 0.5
            else:
                if response.status_code == 200:
                    return "Cookie: " + "; ".join(f"{k}={v}" for k, v in response.cookies.items())
                last = f"{response.status_code} {response.text}"
                # Each 401 counts against the login throttle (5 per account), hence the pace.
                wait = float(response.headers.get("retry-after", 1))
            time.sleep(wait)
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
            farm.reload_nginx(draining={i.name for i in farm.config.web[target.active:]})
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
            farm = stack.enter_context(running_farm("redis", spec.instances, "redis", spec.state_root))
            memory = stack.enter_context(running_farm("memory", 1, "memory", spec.state_root))
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

