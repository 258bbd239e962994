"""Bring a farm up, run Locust with the chaos against it, and write the verdict."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farmctl.config import PROJECT_ROOT, FarmConfig
from farmctl.native import FarmError
from farmctl.runtime import open_farm
from loadtest.ledger import Ledger
from loadtest.report import comparison_chart, summarize, timeline_chart

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


@dataclass(frozen=True)
class LoadSpec:
    users: int = 50
    duration: str = "2m"  # Locust's format: 45s, 2m, 1h30m
    kill_every_s: float = 15.0
    kill_signal: str = "KILL"
    spawn_rate: float = 10.0
    chaos: str = "instances"  # or "redis": kill the Redis primary (needs REDIS=sentinel)


def farm_environment(config: FarmConfig, runtime: str) -> dict[str, str]:
    """The variables FarmConfig.from_env reads, so the chaos inside Locust finds this farm."""
    return {
        "N": str(config.instances), "HTTP_PORT": str(config.http_port), "BASE_PORT": str(config.base_port),
        "REDIS_PORT": str(config.redis_port), "STATE_DIR": str(config.state_dir), "RUNTIME": runtime,
        "SESSION_BACKEND": config.session_backend, "BALANCE": config.balance, "REDIS": config.redis_mode,
        "REPLICA_PORT": str(config.replica_port), "SENTINEL_PORTS": ",".join(map(str, config.sentinel_ports)),
    }


def run_scenario(config: FarmConfig, spec: LoadSpec, out: Path, runtime: str = "auto",
                 title: str = "webfarm load test") -> dict[str, Any]:
    """Run one load test; returns the summary and writes summary.json, report.html, timeline.png."""
    farm = open_farm(config, runtime)
    if spec.chaos == "redis" and (not config.sentinel or farm.name != "native"):
        raise FarmError("CHAOS=redis kills the Redis primary and needs a native farm with REDIS=sentinel "
                        "(a replica and Sentinels to fail over to)")
    farm.up()
    out.mkdir(parents=True, exist_ok=True)
    (out / "ledger.json").unlink(missing_ok=True)
    env = {**os.environ, **farm_environment(config, farm.name), "LOADTEST_OUT": str(out),
           "LOADTEST_KILL_EVERY": str(spec.kill_every_s), "LOADTEST_KILL_SIGNAL": spec.kill_signal,
           "LOADTEST_CHAOS": spec.chaos, "PYTHONPATH": str(PROJECT_ROOT)}
    victim = "the Redis primary" if spec.chaos == "redis" else "an instance"
    print(f"locust: {spec.users} users for {spec.duration} against {config.balancer_url} "
          f"({config.instances} x {config.session_backend} sessions, {config.balance}, Redis {config.redis_mode}), "
          f"a SIG{spec.kill_signal} to {victim} every {spec.kill_every_s:g} s", flush=True)
    subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--users", str(spec.users),
         "--spawn-rate", str(spec.spawn_rate), "--run-time", spec.duration, "--host", config.balancer_url,
         "--html", str(out / "report.html"), "--stop-timeout", "5", "--exit-code-on-error", "0",
         "--loglevel", "INFO"],
        env=env, cwd=PROJECT_ROOT, check=True,
    )
    ledger = Ledger.load(out / "ledger.json")
    summary = summarize(ledger, spec.users, config.instances, session_backend=config.session_backend,
                        balance=config.balance, redis=config.redis_mode, runtime=farm.name)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    timeline_chart(ledger, out / "timeline.png", f"{title}: {summary['verdict']}")
    return summary


#: name -> (SESSION_BACKEND, BALANCE)
SCENARIOS = {
    "in-proc + round-robin": ("memory", "round_robin"),
    "in-proc + sticky": ("memory", "sticky"),
    "redis + round-robin": ("redis", "round_robin"),
}


def comparison_table(summaries: dict[str, dict[str, Any]]) -> str:
    columns = ["verdict", "sessions_lost", "mixups", "lost_updates", "request_error", "indeterminate",
               "kills", "rps", "p99_ms"]

    def cell(summary: dict[str, Any], column: str) -> str:
        return str(summary.get(column, summary["failures"].get(column, "")))

    width = max(len(s) for s in summaries) + 2
    lines = [f"{'':{width}}" + "".join(f"{c:>15}" for c in columns)]
    lines += [f"{name:{width}}" + "".join(f"{cell(s, c):>15}" for c in columns) for name, s in summaries.items()]
    return "\n".join(lines)


def write_comparison(summaries: dict[str, dict[str, Any]], out: Path) -> None:
    (out / "summary.json").write_text(json.dumps(summaries, indent=2) + "\n")
    comparison_chart(summaries, out / "compare.png")
