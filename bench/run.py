"""Start what is measured (a farm in each session mode, a farm with in-process sessions, the peer
libraries), then measure every configuration with wrk, round after round, in alternating order;
each round also has an idle window (what Redis does on its own) and the open-loop measurements
at a fixed rate."""

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx
from redis import Redis

from app.config import DEMO_PASSWORD, DEMO_USERNAME
from bench.cpu import CpuUse, children, cpu_use, snapshot
from bench.openloop import OpenLoopResult, run_openloop
from bench.redisstats import Calls, Counts, calls, delta
from bench.wrk import WrkResult, duration_seconds, run_wrk
from farmctl.config import PROJECT_ROOT, FarmConfig
from farmctl.lifecycle import open_farm, running_farm
from farmctl.native import cluster
from farmctl.ports import free_port_block, on_free_ports
from farmctl.runtime import Farm, FarmError
from farmctl.wait import answers, wait_until

DEMO_CREDENTIALS = {"username": DEMO_USERNAME, "password": DEMO_PASSWORD}
#: The session modes of the farm: the instances' environment for each. `near`: as shipped (a near
#: cache of identities in front of Redis); `exact`: no near cache, one Redis round trip per request.
MODES: dict[str, dict[str, str]] = {"near": {}, "exact": {"SESSION_NEAR_CACHE_S": "0"}}
#: Each mode again on a one-instance farm of its own with the instances' metrics off (METRICS=0):
#: what measuring every request costs, against direct-<mode>/me.
UNMEASURED: dict[str, dict[str, str]] = {f"{mode}-m0": {**env, "METRICS": "0"} for mode, env in MODES.items()}
#: The floors (bench.floors), run as a farm's instances - the same server, flags, supervisor and
#: nginx as ours - and the session mode each one bounds: the near cache asks Redis nothing per
#: request (the bare floor), exact mode asks it once (the one-round-trip floor).
FLOORS: dict[str, str] = {"floor-bare": "bench.floors:bare_app", "floor-1rt": "bench.floors:roundtrip_app"}
FLOOR_OF_MODE = {"near": "floor-bare", "exact": "floor-1rt"}
#: Exact mode again, on a Redis Cluster of three primaries and three replicas (REDIS=cluster). A short
#: name: supervisord's socket lives in the farm's state dir, and a unix socket's path has 107 bytes.
CLUSTER = "cluster"


@dataclass(frozen=True)
class PeerApp:
    factory: str  # uvicorn factory in bench/peers.py
    versus: str  # the mode of ours it is compared with, like for like: a store round trip per request or none


PEERS = {"starsessions": PeerApp("bench.peers:starsessions_app", "exact"),
         "redis-getset": PeerApp("bench.peers:getset_app", "exact"),
         "starlette-cookie": PeerApp("bench.peers:cookie_app", "near")}
#: The farm whose Redis the peers use (their own processes aside, they share its Redis).
PEER_FARM = "exact"


def farm_of(system: str) -> str:
    """The farm whose processes (Redis at least) serve `system`: itself, or PEER_FARM for a peer."""
    return PEER_FARM if system in PEERS else system


class BenchError(RuntimeError):
    """Something the user can act on; the CLI prints it without a traceback."""


@dataclass(frozen=True)
class BenchSpec:
    """What to run: `rounds` x every configuration, each for `duration` (wrk's format: 3s, 1m), and
    the open-loop measurements at `rate` requests/s for as long."""

    rounds: int = 3
    duration: str = "3s"
    connections: int = 16
    threads: int = 1
    instances: int = 3
    warmup: str = "1s"  # one unrecorded pass over every configuration first; "0" for none
    rate: float = 1000.0
    out: Path = PROJECT_ROOT / "reports" / "bench"
    state_root: Path = PROJECT_ROOT / ".farm"


@dataclass(frozen=True)
class Target:
    """One configuration: a URL hit by wrk, served by `system` (a farm: near, exact, memory; or a
    peer's name), and how many instances nginx balances over (None: no nginx)."""

    key: str
    label: str
    system: str
    url: str
    headers: tuple[str, ...] = ()
    active: int | None = None
    connections: int | None = None  # None: the spec's
    fixed_rate: bool = False  # also measured open loop at the spec's rate


@dataclass(frozen=True)
class Sample:
    """One wrk run: its figures, the CPU it cost, and Redis's calls per command meanwhile (raw: the
    background is subtracted in the report, from every idle window of the run)."""

    wrk: WrkResult
    cpu: CpuUse
    redis_calls: Counts
    redis_seconds: float


@dataclass
class Measurements:
    todo: list[Target]
    samples: dict[str, list[Sample]]
    fixed_rate: dict[str, list[OpenLoopResult]]
    #: system -> (calls per command, seconds) of each idle window of its Redis
    idle: dict[str, list[tuple[Counts, float]]]


@dataclass(frozen=True)
class Peer:
    url: str
    pid: int


@dataclass
class Stage:
    """Everything started for the bench, and what to account a measurement's work to."""

    farms: dict[str, Farm]  # near, exact, memory
    peers: dict[str, Peer] = field(default_factory=dict)
    _redis: dict[str, list[Redis]] = field(default_factory=dict)

    def cpu_groups(self, system: str) -> dict[str, list[int]]:
        """The processes that serve `system`: its app process(es), its nginx (and workers), its Redis."""
        farm = self.farms[farm_of(system)]
        instances = set(farm.instance_names())
        app, nginx, redis = [], [], []
        for proc in farm.status():
            if proc.name in instances:
                app.append(proc.pid)
            elif proc.name == "nginx":
                nginx += [proc.pid, *children(proc.pid)]
            elif proc.name.startswith("redis"):
                redis.append(proc.pid)
        if system in self.peers:
            app, nginx = [self.peers[system].pid], []
        return {"app": app, "nginx": nginx, "redis": redis}

    def redis(self, system: str) -> list[Redis]:
        """The Redis nodes whose commands `system`'s requests are: the one Redis, or a cluster's primaries."""
        name = farm_of(system)
        if name not in self._redis:
            config = self.farms[name].config
            ports = cluster.primaries(config.cluster_ports) if config.cluster else [config.redis_port]
            self._redis[name] = [Redis(port=port, socket_timeout=5) for port in ports]
        return self._redis[name]

    def close(self) -> None:
        for clients in self._redis.values():
            for client in clients:
                client.close()


def bench_farm(name: str, instances: int, session_backend: Literal["redis", "memory"],
               state_root: Path, env: dict[str, str] | None = None,
               redis_mode: Literal["single", "cluster"] = "single") -> FarmConfig:
    """The config of a bench farm: no HTTPS, free ports, a fresh state dir (one left behind by an
    interrupted run is stopped and removed first)."""
    config = on_free_ports(FarmConfig(
        instances=instances, https_port=0, session_backend=session_backend, redis_mode=redis_mode,
        balance="round_robin", demo_controls=False, extra_env=env or {}, state_dir=state_root / f"bench-{name}",
        prometheus_port=0))  # no scraper beside what is measured
    open_farm(config, "native").down()
    shutil.rmtree(config.state_dir, ignore_errors=True)
    return config


@contextmanager
def running_peer(name: str, factory: str, redis_url: str, log_dir: Path) -> Iterator[Peer]:
    """One peer app under uvicorn with the farm instances' flags (python -m app)."""
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
        yield Peer(url, proc.pid)
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
    n = instances
    near, exact, memory = (stage.farms[name].config for name in ("near", "exact", "memory"))
    cookie = {"near": login(near.balancer_url), "exact": login(exact.balancer_url)}
    web1 = near.web[0].url
    direct = [
        Target("direct/healthz", "web1 direct, GET /healthz", "near", f"{web1}/healthz", fixed_rate=True),
        Target("direct-1conn/healthz", "web1 direct, GET /healthz, 1 connection", "near", f"{web1}/healthz",
               connections=1),
        Target("direct-memory/me", "web1 direct, GET /api/me, in-process sessions", "memory",
               f"{memory.web[0].url}/api/me", (login(memory.web[0].url),)),
        Target("direct-exact/me", "web1 direct, GET /api/me, exact", "exact", f"{exact.web[0].url}/api/me",
               (cookie["exact"],), fixed_rate=True),
        Target("direct-near/me", "web1 direct, GET /api/me, near cache", "near", f"{web1}/api/me",
               (cookie["near"],), fixed_rate=True),
        *(Target(f"direct-{name}/me", f"web1 direct, GET /api/me, {name.removesuffix('-m0')}, METRICS=0",
                 name, f"{stage.farms[name].config.web[0].url}/api/me",
                 (login(stage.farms[name].config.web[0].url),)) for name in UNMEASURED),
        *(Target(f"{name}/me", f"{name}, GET /api/me", name, f"{peer.url}/api/me", (login(peer.url),),
                 fixed_rate=True) for name, peer in stage.peers.items()),
    ]
    floors = [stage.farms[name].config for name in FLOORS]
    direct += [Target(f"direct-{name}/me", f"web1 direct, GET /api/me, {name} (bench/floors.py)", name,
                      f"{config.web[0].url}/api/me") for name, config in zip(FLOORS, floors, strict=True)]
    balanced = [Target(f"{name}-nginx-{n}/me", f"nginx -> {n} instance(s), GET /api/me, {name}", name,
                       f"{config.balancer_url}/api/me", active=n) for name, config in zip(FLOORS, floors, strict=True)]
    balanced += [Target("nginx-1-1conn/healthz", "nginx -> 1 instance, GET /healthz, 1 connection", "near",
                       f"{near.balancer_url}/healthz", active=1, connections=1)]
    for k in range(1, n + 1):
        balanced += [
            Target(f"nginx-{k}/healthz", f"nginx -> {k} instance(s), GET /healthz", "near",
                   f"{near.balancer_url}/healthz", active=k),
            Target(f"nginx-{k}/me", f"nginx -> {k} instance(s), GET /api/me, near cache", "near",
                   f"{near.balancer_url}/api/me", (cookie["near"],), active=k, fixed_rate=k == n),
        ]
    balanced += [
        Target(f"exact-nginx-{n}/healthz", f"nginx -> {n} instance(s), GET /healthz, exact farm", "exact",
               f"{exact.balancer_url}/healthz", active=n),
        Target(f"exact-nginx-{n}/me", f"nginx -> {n} instance(s), GET /api/me, exact", "exact",
               f"{exact.balancer_url}/api/me", (cookie["exact"],), active=n, fixed_rate=True),
    ]
    on_cluster = stage.farms[CLUSTER].config
    cookie[CLUSTER] = login(on_cluster.balancer_url)
    direct += [Target(f"direct-{CLUSTER}/me", "web1 direct, GET /api/me, exact, Redis Cluster", CLUSTER,
                      f"{on_cluster.web[0].url}/api/me", (cookie[CLUSTER],), fixed_rate=True)]
    balanced += [Target(f"{CLUSTER}-nginx-{n}/me", f"nginx -> {n} instance(s), GET /api/me, exact, Redis Cluster",
                        CLUSTER, f"{on_cluster.balancer_url}/api/me", (cookie[CLUSTER],), active=n)]
    return direct + balanced


def measure(spec: BenchSpec, stage: Stage, target: Target, duration: str) -> Sample:
    groups = stage.cpu_groups(target.system)
    redis = stage.redis(target.system)
    calls_before, before = calls(*redis), snapshot(groups)
    connections = target.connections or spec.connections
    result = run_wrk(target.url, duration, connections, min(spec.threads, connections), target.headers)
    after, calls_after = snapshot(groups), calls(*redis)
    counted, seconds = delta(calls_before, calls_after)
    return Sample(result, cpu_use(before, after, result.requests), counted, seconds)


def idle_window(stage: Stage, duration: str) -> dict[str, tuple[Counts, float]]:
    """Nothing measured for `duration`: what each farm's Redis does on its own."""
    before: dict[str, Calls] = {name: calls(*stage.redis(name)) for name in stage.farms}
    time.sleep(duration_seconds(duration))
    return {name: delta(before[name], calls(*stage.redis(name))) for name in stage.farms}


def run_rounds(spec: BenchSpec, stage: Stage, todo: list[Target]) -> Measurements:
    """Every target once per round, then the open-loop ones, after an idle window; odd rounds in
    reverse order, so drift over time (a noisy neighbour, a warming cache) does not always favour
    the same configuration."""
    active = {name: farm.config.instances for name, farm in stage.farms.items()}

    def route(target: Target) -> None:
        farm = stage.farms.get(target.system)
        if farm is not None and target.active is not None and target.active != active[target.system]:
            farm.undrain()
            farm.drain(*(i.name for i in farm.config.web[target.active:]))
            active[target.system] = target.active

    if spec.warmup not in ("", "0", "0s"):
        print(f"warm-up: {len(todo)} configurations x {spec.warmup}", flush=True)
        for target in todo:
            route(target)
            measure(spec, stage, target, spec.warmup)
    found = Measurements(todo, {t.key: [] for t in todo}, {t.key: [] for t in todo if t.fixed_rate},
                         {name: [] for name in stage.farms})
    open_loop = [t for t in todo if t.fixed_rate]
    seconds = duration_seconds(spec.duration)
    for number in range(spec.rounds):
        order = todo if number % 2 == 0 else todo[::-1]
        print(f"round {number + 1}/{spec.rounds}: idle window, {len(order)} configurations x {spec.duration}, "
              f"{len(open_loop)} at {spec.rate:g} req/s", flush=True)
        for name, window in idle_window(stage, spec.duration).items():
            found.idle[name].append(window)
        for target in order:
            route(target)
            sample = measure(spec, stage, target, spec.duration)
            found.samples[target.key].append(sample)
            print(f"  {target.label:<56} {sample.wrk.rps:>9.0f} req/s  p99 {sample.wrk.p99_ms:6.1f} ms", flush=True)
        for target in open_loop if number % 2 == 0 else open_loop[::-1]:
            route(target)
            fixed = run_openloop(target.url, spec.rate, seconds, target.headers)
            found.fixed_rate[target.key].append(fixed)
            print(f"  {target.label:<56} {fixed.achieved_rps:>9.0f} req/s  p50 {fixed.p50_ms:6.2f} ms  "
                  f"p99 {fixed.p99_ms:6.2f} ms (open loop)", flush=True)
    return found


def run_bench(spec: BenchSpec) -> Measurements:
    """Bring everything up, measure, bring everything down (also on failure)."""
    if spec.rounds < 1 or spec.instances < 1 or spec.connections < spec.threads or spec.rate <= 0:
        raise BenchError("need rounds >= 1, instances >= 1, connections >= threads and rate > 0")
    with ExitStack() as stack:
        farms: dict[str, Farm] = {}
        try:
            for mode, env in MODES.items():
                farms[mode] = stack.enter_context(running_farm(
                    bench_farm(mode, spec.instances, "redis", spec.state_root, env), "native"))
            farms["memory"] = stack.enter_context(
                running_farm(bench_farm("memory", 1, "memory", spec.state_root), "native"))
            for name, env in UNMEASURED.items():
                farms[name] = stack.enter_context(
                    running_farm(bench_farm(name, 1, "redis", spec.state_root, env), "native"))
            farms[CLUSTER] = stack.enter_context(running_farm(
                bench_farm(CLUSTER, spec.instances, "redis", spec.state_root, MODES["exact"], "cluster"), "native"))
            for name, factory in FLOORS.items():
                farms[name] = stack.enter_context(running_farm(
                    bench_farm(name, spec.instances, "redis", spec.state_root, {"APP_FACTORY": factory}), "native"))
        except FarmError as exc:
            raise BenchError(str(exc)) from None
        stage = Stage(farms)
        stack.callback(stage.close)
        for name, peer in PEERS.items():
            stage.peers[name] = stack.enter_context(
                running_peer(name, peer.factory, farms[PEER_FARM].config.redis_url, spec.state_root / "bench-peers"))
        return run_rounds(spec, stage, targets(stage, spec.instances))
