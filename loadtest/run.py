"""Bring a farm up, run Locust with the chaos against it, and write the verdict."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from farmctl.config import CONFIG_VARIABLE, PROJECT_ROOT
from farmctl.runtime import Farm, FarmError
from loadtest.faults import INSTANCES, MIXED, ChaosMode
from loadtest.ledger import Ledger, Outcome
from loadtest.report import comparison_chart, summarize, timeline_chart
from loadtest.serverside import observe
from loadtest.summary import Comparison, LoadSummary

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


@dataclass(frozen=True)
class LoadSpec:
    users: int = 50
    duration: str = "2m"  # Locust's format: 45s, 2m, 1h30m
    kill_every_s: float = 15.0  # a kill, or for the other modes a fault, every this many seconds
    kill_signal: str = "KILL"
    spawn_rate: float = 10.0
    chaos: ChaosMode = INSTANCES  # CHAOS: one of loadtest.faults.MODES

    @classmethod
    def for_chaos(cls, chaos: ChaosMode) -> "LoadSpec":
        """The defaults of `make loadtest CHAOS=...`. A gray fault costs more than a kill (a hang lasts
        ~13 s), so those runs are sized for a 2-core machine: 20 users, a fault every 15 s for a minute -
        a minute and a half for mixed, one fault of each kind."""
        if chaos.overlapping:
            return cls(chaos=chaos)
        return cls(users=20, duration="90s" if chaos is MIXED else "60s", chaos=chaos)


def check_chaos(farm: Farm, spec: LoadSpec) -> None:
    """Refuse a chaos the farm cannot survive by design, before anything starts."""
    if why := spec.chaos.refusal(farm):
        raise FarmError(why)


def run_scenario(farm: Farm, spec: LoadSpec, out: Path, title: str = "webfarm load test") -> LoadSummary:
    """Run one load test against `farm`, which is up (see farmctl.lifecycle); returns the summary and
    writes summary.json, report.html, timeline.png - with the farm's Prometheus, if it has one, for
    what the servers saw of the same run (loadtest.serverside)."""
    check_chaos(farm, spec)
    config = farm.config
    out.mkdir(parents=True, exist_ok=True)
    (out / "ledger.json").unlink(missing_ok=True)
    # The chaos inside Locust drives this very farm: it gets the config whole, not re-read from make variables.
    env = {**os.environ, CONFIG_VARIABLE: config.model_dump_json(), "RUNTIME": farm.name, "LOADTEST_OUT": str(out),
           "LOADTEST_KILL_EVERY": str(spec.kill_every_s), "LOADTEST_KILL_SIGNAL": spec.kill_signal,
           "LOADTEST_CHAOS": spec.chaos.name, "PYTHONPATH": str(PROJECT_ROOT)}
    mode = spec.chaos
    chaos = f"a SIG{spec.kill_signal} to {mode.kinds[0].target}" if mode.overlapping else f"a fault ({mode.name})"
    print(f"locust: {spec.users} users for {spec.duration} against {config.balancer_url} "
          f"({config.instances} x {config.session_backend} sessions, {config.balance}, Redis {config.redis_mode}), "
          f"{chaos} every {spec.kill_every_s:g} s", flush=True)
    try:
        subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--users", str(spec.users),
             "--spawn-rate", str(spec.spawn_rate), "--run-time", spec.duration, "--host", config.balancer_url,
             "--html", str(out / "report.html"), "--stop-timeout", "5", "--exit-code-on-error", "0",
             "--loglevel", "INFO"],
            env=env, cwd=PROJECT_ROOT, check=True,
        )
    finally:
        mode.mend(farm)  # a Locust that died mid-fault must not leave a process stopped or cut off
    ledger = Ledger.load(out / "ledger.json")
    server = observe(config, ledger.started_at, ledger.stopped_at)
    summary = summarize(ledger, spec.users, config.instances, session_backend=config.session_backend,
                        balance=config.balance, redis=config.redis_mode, runtime=farm.name,
                        server_side=server.summary)
    summary.write(out / "summary.json")
    timeline_chart(ledger, out / "timeline.png", f"{title}: {summary.verdict}", server)
    return summary


#: name -> (SESSION_BACKEND, BALANCE)
SCENARIOS = {
    "in-proc + round-robin": ("memory", "round_robin"),
    "in-proc + sticky": ("memory", "sticky"),
    "redis + round-robin": ("redis", "round_robin"),
}


#: The columns of `make compare`'s table: fields of LoadSummary, or failures by outcome.
COMPARED = ("verdict", "sessions_lost", "mixups", "lost_updates", Outcome.REQUEST_ERROR, Outcome.INDETERMINATE,
            "kills", "rps", "p99_ms")


def comparison_table(comparison: Comparison) -> str:
    def cell(summary: LoadSummary, column: str) -> str:
        return str(summary.failures[column] if isinstance(column, Outcome) else getattr(summary, column))

    summaries = comparison.root
    width = max(len(s) for s in summaries) + 2
    lines = [f"{'':{width}}" + "".join(f"{c:>15}" for c in COMPARED)]
    lines += [f"{name:{width}}" + "".join(f"{cell(s, c):>15}" for c in COMPARED) for name, s in summaries.items()]
    return "\n".join(lines)


def write_comparison(comparison: Comparison, out: Path) -> None:
    comparison.write(out / "summary.json")
    comparison_chart(comparison, out / "compare.png")
