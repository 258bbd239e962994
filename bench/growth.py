"""python -m bench.growth - what grows with the work: two exact-mode farms, one holding --small live
sessions and one --sessions, loaded through the store's own create script, measured in the same
run, rounds alternating between them: Redis memory per session, GET /api/me throughput (wrk) and
latency at a fixed rate (open loop), both over many sessions' cookies, and the farm panel's cost
(GET /api/farm, and its Redis commands). Then, on the large farm, one user with --user-sessions
sessions signs out everywhere while other users' requests arrive at the fixed rate: the slowest
Redis command meanwhile (SLOWLOG), the endpoint's latency, and the others' latency during it
against just before.

The farm's Redis is capped at 256 MB (farmctl), which holds a few hundred thousand sessions:
these two farms' cap is lifted. Loading pauses the AOF's automatic rewrite and rewrites it once
at the end, so that no rewrite (a fork of the whole dataset) falls into a measurement."""

import argparse
import asyncio
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx
from pydantic import BaseModel
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from app.config import SESSION_MAX_PER_ACCOUNT, Settings
from app.services import session_limits
from app.sessions import RedisSessionStore, SessionKey
from bench.openloop import OpenLoopError, OpenLoopResult, run_openloop
from bench.report import machine
from bench.run import MODES, BenchError, bench_farm
from bench.summary import Latency, Machine
from bench.wrk import WrkError, duration_seconds, rotating_script, run_wrk
from farmctl.config import PROJECT_ROOT, FarmConfig
from farmctl.lifecycle import running_farm
from farmctl.runtime import Farm, FarmError
from farmctl.wait import wait_until

#: Sessions per pipeline of the loader, and pipelines in flight (one fills while Redis runs the other).
LOAD_BATCH = 2000
LOADERS = 2
#: The panel's Redis commands (app.api.farm): the live count (ZCOUNT) and the instances (app.presence).
#: Its SET (app.api.store_state) is left out: the instances' heartbeats and /readyz send SETs as well.
PANEL_COMMANDS = ("zcount", "smembers", "hmget", "exists")
#: Redis grows its key tables by rehashing them in the background, 1 ms per tick of its cron (hz 10),
#: and until that is done each lookup probes both tables and moves a bucket: after a million sessions
#: it took 20 s here, the touch script 1.7x as slow meanwhile. Loading lets it finish (hz raised) first.
SETTLE_HZ, SETTLE_S = 500, 3.0
#: SLOWLOG during sign-out-everywhere: every command over this many microseconds.
SLOWLOG_US = 100
PASSWORD = "growth-bench-password"  # noqa: S105 - an account of a throw-away farm


@dataclass(frozen=True)
class GrowthSpec:
    small: int = 1_000
    sessions: int = 1_000_000
    user_sessions: int = 10_000
    per_user: int = 10  # loaded sessions per username
    cookies: int = 500  # of the loaded sessions, whose cookies carry the load
    rounds: int = 3
    duration: str = "5s"
    connections: int = 16
    rate: float = 1000.0
    instances: int = 3
    panel_calls: int = 20
    out: Path = PROJECT_ROOT / "reports" / "bench-growth"
    state_root: Path = PROJECT_ROOT / ".farm"


class GrowthSettings(BaseModel):
    small: int
    sessions: int
    user_sessions: int
    per_user: int
    cookies: int
    rounds: int
    duration: str
    connections: int
    rate: float
    instances: int
    panel_calls: int


class Round(BaseModel):
    rps: float
    wrk_p99_ms: float
    fixed_rate_p99_ms: float
    touch_us: float
    panel_ms: float


class Scale(BaseModel):
    """One farm with `sessions` live sessions: medians over the rounds, and each round."""

    sessions: int
    #: What the live-sessions index counted once they were loaded (the panel's figure).
    live_index: int
    load_s: float
    #: INFO memory's used_memory before and after the last `measured_sessions` were loaded.
    measured_sessions: int
    used_memory_before: int
    used_memory_after: int
    bytes_per_session: float
    rps: float
    wrk_p99_ms: float
    fixed_rate: Latency
    #: Redis's time per touch script (EVALSHA) while wrk ran, from INFO commandstats.
    touch_us: float
    panel_ms: float
    panel_live_sessions: int
    #: Redis's time per call of each of the panel's commands while it was asked (PANEL_COMMANDS).
    panel_redis_us: dict[str, float]
    rounds: list[Round]


class SignOutRound(BaseModel):
    live_before: int
    live_after: int
    #: The user's sessions still in Redis afterwards.
    left: int
    endpoint_ms: float
    slowest_command_ms: float
    slowest_command: str
    #: Commands SLOWLOG saw over SLOWLOG_US, and over a millisecond.
    slow_commands: int
    commands_over_1ms: int
    others_before: Latency
    others_during: Latency


class SignOut(BaseModel):
    """A user with `user_sessions` sessions signs out everywhere on the large farm, under other users'
    load, once a round (a new user each time): medians over the rounds, the slowest command of all."""

    user_sessions: int
    endpoint_ms: float
    slowest_command_ms: float
    slowest_command: str
    commands_over_1ms: int
    others_before: Latency
    others_during: Latency
    rounds: list[SignOutRound]


class GrowthSummary(BaseModel):
    machine: Machine
    settings: GrowthSettings
    runtime_s: float
    small: Scale
    large: Scale
    sign_out: SignOut

    def write(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> Self:
        return cls.model_validate_json(path.read_text())


def farm_settings(config: FarmConfig) -> Settings:
    """The settings the farm's instances run with, as far as the store is concerned."""
    given: dict[str, Any] = {name.lower(): value for name, value in config.extra_env.items()}
    return Settings(redis_url=config.redis_url, key_prefix=config.key_prefix, **given)


def store_of(redis: AsyncRedis, settings: Settings) -> RedisSessionStore:
    """A store like the instances' own: the same prefix and rules."""
    return RedisSessionStore(redis, settings.key_prefix, session_limits(settings))


@dataclass
class Loaded:
    """A farm, the sessions loaded into it, and the files that carry some of their cookies."""

    name: str
    farm: Farm
    settings: Settings
    redis: Redis
    sessions: int = 0
    measured: int = 0  # the sessions loaded between the two memory readings
    live_index: int = 0
    load_s: float = 0.0
    used_memory_before: int = 0
    used_memory_after: int = 0
    wrk_script: Path | None = None
    cookie_lines: Path | None = None

    @property
    def me_url(self) -> str:
        return f"{self.farm.config.balancer_url}/api/me"


async def _create(settings: Settings, n: int, login: Callable[[int], str], keep: int) -> tuple[int, list[SessionKey]]:
    """Start `n` sessions, the i-th for user `login(i)` at that user's epoch, LOAD_BATCH per pipeline;
    how many started, and `keep` of their keys spread over them (all of them for keep >= n)."""
    step = max(1, n // keep) if keep else n + 1
    started, kept = 0, list[SessionKey]()
    async with AsyncRedis.from_url(settings.redis_url, decode_responses=True, socket_timeout=60) as redis, \
            store_of(redis, settings) as store:
        epochs: dict[str, int] = {}

        async def loader(first: int) -> None:
            nonlocal started
            for start in range(first, n, LOAD_BATCH * LOADERS):
                users = [login(i) for i in range(start, min(n, start + LOAD_BATCH))]
                for user in set(users) - set(epochs):
                    epochs[user] = await store.epoch(user)
                done = await store.create_many([(user, epochs[user]) for user in users], "bench")
                started += sum(session is not None for session in done)
                kept.extend(session[0] for i, session in enumerate(done, start)
                            if session is not None and i % step == 0 and len(kept) < keep)

        await asyncio.gather(*(loader(w * LOAD_BATCH) for w in range(LOADERS)))
    return started, kept


async def _count_live(settings: Settings) -> int:
    async with AsyncRedis.from_url(settings.redis_url, decode_responses=True) as redis, \
            store_of(redis, settings) as store:
        return await store.count_live()


def bulk_username(i: int, per_user: int) -> str:
    return f"bulk{i // per_user:07d}"


def wait_for_aof_rewrite(redis: Redis) -> None:
    redis.bgrewriteaof()
    if not wait_until(lambda: not any(int(redis.info("persistence")[flag]) for flag in (
            "aof_rewrite_in_progress", "aof_rewrite_scheduled")), 300, interval_s=0.2):
        raise BenchError("the AOF rewrite after loading did not finish within 300 s")


def settle_tables(redis: Redis) -> None:
    """Let Redis finish growing its key tables (SETTLE_HZ)."""
    hz = str(redis.config_get("hz")["hz"])
    redis.config_set("hz", SETTLE_HZ)
    time.sleep(SETTLE_S)
    redis.config_set("hz", hz)


def load(loaded: Loaded, spec: GrowthSpec, n: int, out: Path) -> None:
    """Start `n` sessions in `loaded`'s farm (spec.per_user per username), and keep spec.cookies of
    their cookies in a wrk script and a file of header lines (bench.openloop's --rotate). Memory is
    measured over all but the first few: those warm Redis up (its Lua VM, the script cache, the
    loader's connections; 200 kB at first on this machine)."""
    redis = loaded.redis
    redis.config_set("maxmemory", 0)
    rewrite = str(redis.config_get("auto-aof-rewrite-percentage")["auto-aof-rewrite-percentage"])
    redis.config_set("auto-aof-rewrite-percentage", 0)
    warm = max(1, min(100, n // 10))
    started = time.monotonic()
    warmed, _ = asyncio.run(_create(loaded.settings, warm, lambda i: bulk_username(i, spec.per_user), 0))
    wait_for_aof_rewrite(redis)
    loaded.used_memory_before = int(redis.info("memory")["used_memory"])
    loaded.measured, keys = asyncio.run(_create(loaded.settings, n - warm,
                                                lambda i: bulk_username(warm + i, spec.per_user), spec.cookies))
    loaded.load_s = time.monotonic() - started
    settle_tables(redis)
    wait_for_aof_rewrite(redis)
    redis.config_set("auto-aof-rewrite-percentage", rewrite)
    loaded.used_memory_after = int(redis.info("memory")["used_memory"])
    loaded.sessions = warmed + loaded.measured
    loaded.live_index = asyncio.run(_count_live(loaded.settings))
    cookies = [f"{loaded.settings.session_cookie}={key.token}" for key in keys]
    out.mkdir(parents=True, exist_ok=True)
    loaded.wrk_script = rotating_script(out / f"{loaded.name}-cookies.lua", "Cookie", cookies)
    loaded.cookie_lines = out / f"{loaded.name}-cookies.txt"
    loaded.cookie_lines.write_text("".join(f"Cookie: {cookie}\n" for cookie in cookies))
    print(f"{loaded.name}: {loaded.sessions:,} sessions loaded in {loaded.load_s:.1f} s "
          f"({loaded.sessions / max(loaded.load_s, 1e-9):,.0f}/s, into a Redis with its AOF on), "
          f"the live index counts {loaded.live_index:,}", flush=True)


def commandstats(redis: Redis) -> dict[str, tuple[int, int]]:
    """calls and microseconds per command, as Redis counted them."""
    return {name.removeprefix("cmdstat_"): (int(stat["calls"]), int(stat["usec"]))
            for name, stat in redis.info("commandstats").items()}


def us_per_call(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], command: str) -> float:
    calls = after.get(command, (0, 0))[0] - before.get(command, (0, 0))[0]
    usec = after.get(command, (0, 0))[1] - before.get(command, (0, 0))[1]
    return usec / calls if calls else 0.0


@dataclass
class Panel:
    ms: float
    live_sessions: int
    redis_us: dict[str, float]


def ask_panel(loaded: Loaded, calls: int) -> Panel:
    """GET /api/farm `calls` times (after one unrecorded): the median latency, and its Redis commands' cost."""
    with httpx.Client(base_url=loaded.farm.config.balancer_url, timeout=10) as client:
        client.get("/api/farm").raise_for_status()
        before = commandstats(loaded.redis)
        times, live = [], 0
        for _ in range(calls):
            started = time.perf_counter()
            answer = client.get("/api/farm")
            times.append(time.perf_counter() - started)
            answer.raise_for_status()
            live = int(answer.json()["live_sessions"])
        after = commandstats(loaded.redis)
    return Panel(statistics.median(times) * 1000, live,
                 {command: round(us_per_call(before, after, command), 2) for command in PANEL_COMMANDS})


@dataclass
class Measured:
    rounds: list[Round]
    fixed_rate: list[OpenLoopResult]
    panels: list[Panel]


def measure_round(loaded: Loaded, spec: GrowthSpec, found: Measured) -> None:
    assert loaded.wrk_script is not None
    before = commandstats(loaded.redis)
    wrk = run_wrk(loaded.me_url, spec.duration, spec.connections, script=loaded.wrk_script)
    touch_us = us_per_call(before, commandstats(loaded.redis), "evalsha")
    fixed = run_openloop(loaded.me_url, spec.rate, duration_seconds(spec.duration), rotate=loaded.cookie_lines)
    panel = ask_panel(loaded, spec.panel_calls)
    found.fixed_rate.append(fixed)
    found.panels.append(panel)
    found.rounds.append(Round(rps=wrk.rps, wrk_p99_ms=wrk.p99_ms, fixed_rate_p99_ms=fixed.p99_ms,
                              touch_us=round(touch_us, 2), panel_ms=round(panel.ms, 3)))
    print(f"  {loaded.sessions:>9,} sessions: {wrk.rps:>7.0f} req/s (p99 {wrk.p99_ms:.1f} ms), "
          f"p99 at {spec.rate:g}/s {fixed.p99_ms:.2f} ms, touch {touch_us:.1f} us in Redis, "
          f"panel {panel.ms:.2f} ms", flush=True)


def scale(loaded: Loaded, found: Measured) -> Scale:
    def median(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    return Scale(
        sessions=loaded.sessions, live_index=loaded.live_index, load_s=round(loaded.load_s, 2),
        measured_sessions=loaded.measured,
        used_memory_before=loaded.used_memory_before, used_memory_after=loaded.used_memory_after,
        bytes_per_session=round((loaded.used_memory_after - loaded.used_memory_before) / max(loaded.measured, 1), 1),
        rps=median([r.rps for r in found.rounds]), wrk_p99_ms=median([r.wrk_p99_ms for r in found.rounds]),
        fixed_rate=Latency(**{field: median([getattr(f, field) for f in found.fixed_rate])
                              for field in Latency.model_fields}),
        touch_us=median([r.touch_us for r in found.rounds]), panel_ms=median([p.ms for p in found.panels]),
        panel_live_sessions=found.panels[-1].live_sessions,
        panel_redis_us={command: median([p.redis_us[command] for p in found.panels]) for command in PANEL_COMMANDS},
        rounds=found.rounds)


def sign_out_round(loaded: Loaded, spec: GrowthSpec) -> SignOutRound:
    """A real account (registered and signed in through the balancer) with spec.user_sessions
    sessions in all (the rest started by the store's create at its epoch) signs out everywhere,
    half-way through an open-loop load of other users' GET /api/me at spec.rate; the same load
    just before is what it is compared with."""
    username = f"growth{secrets.token_hex(4)}"
    seconds = duration_seconds(spec.duration)
    redis = loaded.redis
    with httpx.Client(base_url=loaded.farm.config.balancer_url, timeout=30) as client:
        credentials = {"username": username, "password": PASSWORD}
        if (answer := client.post("/api/register", json=credentials)).status_code != 201:
            raise BenchError(f"could not register {username}: {answer.status_code} {answer.text}")
        if (answer := client.post("/api/login", json=credentials)).status_code != 200:
            raise BenchError(f"could not sign {username} in: {answer.status_code} {answer.text}")
        signed_in = SessionKey.parse(client.cookies[loaded.settings.session_cookie])
        assert signed_in is not None
        started, keys = asyncio.run(_create(loaded.settings, spec.user_sessions - 1, lambda _: username,
                                            spec.user_sessions))
        if started != spec.user_sessions - 1:
            raise BenchError(f"{username}: {started} of {spec.user_sessions - 1} sessions started")
        keys.append(signed_in)
        live_before = asyncio.run(_count_live(loaded.settings))
        others_before = run_openloop(loaded.me_url, spec.rate, seconds, rotate=loaded.cookie_lines)
        slowlog_config = redis.config_get("slowlog-*")
        redis.config_set("slowlog-log-slower-than", SLOWLOG_US)
        redis.config_set("slowlog-max-len", 100_000)
        redis.slowlog_reset()
        try:
            with ThreadPoolExecutor(1) as pool:
                during = pool.submit(run_openloop, loaded.me_url, spec.rate, seconds, (), loaded.cookie_lines)
                time.sleep(seconds / 2)
                sent = time.perf_counter()
                answer = client.post("/api/logout/everywhere")
                endpoint_ms = (time.perf_counter() - sent) * 1000
                others_during = during.result()
            entries: list[dict[str, Any]] = redis.slowlog_get(100_000)
        finally:
            for name, value in slowlog_config.items():
                redis.config_set(str(name), str(value))
    if answer.status_code != 204:
        raise BenchError(f"sign-out-everywhere answered {answer.status_code} {answer.text}")
    session_keys = [f"{loaded.settings.key_prefix}:session:{key.id}" for key in keys]
    left = sum(int(redis.exists(*session_keys[i:i + 500])) for i in range(0, len(session_keys), 500))
    slowest = max(entries, key=lambda entry: int(entry["duration"]), default=None)
    found = SignOutRound(
        live_before=live_before, live_after=asyncio.run(_count_live(loaded.settings)), left=left,
        endpoint_ms=round(endpoint_ms, 2), slowest_command_ms=int(slowest["duration"]) / 1000 if slowest else 0.0,
        slowest_command=_command_name(slowest["command"]) if slowest else "", slow_commands=len(entries),
        commands_over_1ms=sum(int(entry["duration"]) > 1000 for entry in entries),
        others_before=Latency.model_validate(others_before, from_attributes=True),
        others_during=Latency.model_validate(others_during, from_attributes=True))
    print(f"  {spec.user_sessions:,} sessions ended in {found.endpoint_ms:.1f} ms, slowest Redis command "
          f"{found.slowest_command_ms:.2f} ms; others' p99 {found.others_before.p99_ms:.2f} ms before, "
          f"{found.others_during.p99_ms:.2f} ms during", flush=True)
    return found


def sign_out_everywhere(loaded: Loaded, spec: GrowthSpec) -> SignOut:
    print(f"sign-out-everywhere of {spec.user_sessions:,} sessions, {spec.rounds} round(s), others at "
          f"{spec.rate:g} req/s before and during", flush=True)
    rounds = [sign_out_round(loaded, spec) for _ in range(spec.rounds)]
    slowest = max(rounds, key=lambda r: r.slowest_command_ms)

    def median(field: str, of: str) -> float:
        return round(float(statistics.median(getattr(getattr(r, of), field) for r in rounds)), 3)

    return SignOut(
        user_sessions=spec.user_sessions, endpoint_ms=round(statistics.median(r.endpoint_ms for r in rounds), 2),
        slowest_command_ms=slowest.slowest_command_ms, slowest_command=slowest.slowest_command,
        commands_over_1ms=sum(r.commands_over_1ms for r in rounds),
        others_before=Latency(**{field: median(field, "others_before") for field in Latency.model_fields}),
        others_during=Latency(**{field: median(field, "others_during") for field in Latency.model_fields}),
        rounds=rounds)


def _command_name(command: bytes | str) -> str:
    text = command.decode(errors="replace") if isinstance(command, bytes) else command
    return text.split(" ", 1)[0].upper()


def run_growth(spec: GrowthSpec) -> GrowthSummary:
    """Bring both farms up, load, measure, sign out everywhere, bring them down (also on failure)."""
    if min(spec.small, spec.rounds, spec.per_user, spec.cookies, spec.panel_calls) < 1 or spec.rate <= 0 \
            or spec.sessions <= spec.small or spec.user_sessions < 2:
        raise BenchError("need sessions > small >= 1, user_sessions >= 2, rate > 0, and rounds, per_user, "
                         "cookies, panel_calls >= 1")
    started = time.monotonic()
    env = {**MODES["exact"], "SESSION_MAX_PER_ACCOUNT": str(max(spec.user_sessions, spec.per_user,
                                                                SESSION_MAX_PER_ACCOUNT))}
    with ExitStack() as stack:
        farms: dict[str, Loaded] = {}
        try:
            for name in ("small", "large"):
                farm = stack.enter_context(running_farm(
                    bench_farm(f"growth-{name}", spec.instances, "redis", spec.state_root, env), "native"))
                redis = stack.enter_context(Redis.from_url(farm.config.redis_url, socket_timeout=60,
                                                                    decode_responses=True))
                farms[name] = Loaded(name, farm, farm_settings(farm.config), redis)
        except FarmError as exc:
            raise BenchError(str(exc)) from None
        small, large = farms["small"], farms["large"]
        load(small, spec, spec.small, spec.out)
        load(large, spec, spec.sessions, spec.out)
        found = {name: Measured([], [], []) for name in farms}
        for number in range(spec.rounds):
            print(f"round {number + 1}/{spec.rounds}: wrk {spec.duration} x {spec.connections} connections, "
                  f"{spec.rate:g} req/s open loop, {spec.panel_calls} panel calls", flush=True)
            for loaded in (small, large) if number % 2 == 0 else (large, small):
                measure_round(loaded, spec, found[loaded.name])
        sign_out = sign_out_everywhere(large, spec)
        return GrowthSummary(
            machine=machine(), settings=GrowthSettings(**{k: v for k, v in vars(spec).items()
                                                          if k in GrowthSettings.model_fields}),
            runtime_s=round(time.monotonic() - started, 1), small=scale(small, found["small"]),
            large=scale(large, found["large"]), sign_out=sign_out)


def table(summary: GrowthSummary) -> str:
    small, large, out = summary.small, summary.large, summary.sign_out
    rate = f"{summary.settings.rate:g}/s"

    def row(label: str, a: str, b: str) -> str:
        return f"{label:<40} {a:>16} {b:>18}"

    lines = [
        row("", f"{small.sessions:,} sessions", f"{large.sessions:,} sessions"),
        row("live index after loading", f"{small.live_index:,}", f"{large.live_index:,}"),
        row("loaded in", f"{small.load_s:.1f} s", f"{large.load_s:.1f} s"),
        row("Redis used_memory per session", f"{small.bytes_per_session:.0f} B", f"{large.bytes_per_session:.0f} B"),
        row("GET /api/me, exact, wrk", f"{small.rps:,.0f} req/s", f"{large.rps:,.0f} req/s"),
        row(f"GET /api/me at {rate}: p50 / p99", f"{small.fixed_rate.p50_ms:.2f} / {small.fixed_rate.p99_ms:.2f} ms",
            f"{large.fixed_rate.p50_ms:.2f} / {large.fixed_rate.p99_ms:.2f} ms"),
        row("touch script, Redis time per call", f"{small.touch_us:.1f} us", f"{large.touch_us:.1f} us"),
        row("farm panel, GET /api/farm (median)", f"{small.panel_ms:.2f} ms", f"{large.panel_ms:.2f} ms"),
        *(row(f"  its {command.upper()}, Redis time per call", f"{small.panel_redis_us[command]:.1f} us",
              f"{large.panel_redis_us[command]:.1f} us") for command in PANEL_COMMANDS),
        "",
        f"sign-out-everywhere of {out.user_sessions:,} sessions beside {large.sessions:,}, median of "
        f"{len(out.rounds)}: {out.endpoint_ms:.1f} ms; sessions left: {sum(r.left for r in out.rounds)}",
        f"  slowest Redis command meanwhile: {out.slowest_command_ms:.2f} ms ({out.slowest_command or '-'}); "
        f"{out.commands_over_1ms} over 1 ms",
        f"  other users at {rate}: p99 {out.others_before.p99_ms:.2f} ms before, {out.others_during.p99_ms:.2f} ms "
        f"during (max {out.others_before.max_ms:.2f} / {out.others_during.max_ms:.2f} ms)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    defaults = GrowthSpec()
    parser = argparse.ArgumentParser(prog="python -m bench.growth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=defaults.small, help="live sessions of the small farm")
    parser.add_argument("--sessions", type=int, default=defaults.sessions, help="live sessions of the large farm")
    parser.add_argument("--user-sessions", type=int, default=defaults.user_sessions,
                        help="sessions of the user who signs out everywhere")
    parser.add_argument("--per-user", type=int, default=defaults.per_user, help="loaded sessions per username")
    parser.add_argument("--cookies", type=int, default=defaults.cookies, help="loaded sessions the load uses")
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--duration", default=defaults.duration, help="per measurement, wrk's format (5s, 1m)")
    parser.add_argument("--connections", type=int, default=defaults.connections)
    parser.add_argument("--rate", type=float, default=defaults.rate, help="requests/s of the open-loop load")
    parser.add_argument("--instances", type=int, default=defaults.instances)
    parser.add_argument("--panel-calls", type=int, default=defaults.panel_calls)
    parser.add_argument("--out", type=Path, default=defaults.out)
    parser.add_argument("--state-root", type=Path, default=defaults.state_root,
                        help="the farms live in <state-root>/bench-growth-*")
    args = parser.parse_args(argv)
    spec = GrowthSpec(**{name: value for name, value in vars(args).items()})
    try:
        summary = run_growth(spec)
    except (BenchError, WrkError, OpenLoopError) as exc:
        print(f"bench.growth: {exc}", file=sys.stderr)
        return 1
    spec.out.mkdir(parents=True, exist_ok=True)
    summary.write(spec.out / "summary.json")
    print("\n" + table(summary))
    print(f"\nwritten: {spec.out}/summary.json ({summary.runtime_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
