"""The smallest whole bench: it must run end to end and report every figure. It asserts
nothing about speed - a benchmark is not a timed test."""

import json
import shutil
from pathlib import Path

import pytest

from bench.__main__ import main

pytestmark = [
    pytest.mark.farm,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (`make bench` installs it)"),
]

CONFIGURATIONS = {
    "direct/healthz", "direct-1conn/healthz", "nginx-1-1conn/healthz",
    "direct/me", "direct-memory/me", "starsessions/me", "starlette-cookie/me",
    "nginx-1/healthz", "nginx-1/me", "nginx-2/healthz", "nginx-2/me",
}


def test_bench_tiny_run_reports_every_configuration(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = main(["--rounds", "1", "--duration", "1s", "--instances", "2", "--warmup", "0",
                 "--out", str(out), "--state-root", str(tmp_path / "state")])

    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["results"]) == CONFIGURATIONS
    for key, result in summary["results"].items():
        assert result["rps"] > 0, key
        assert len(result["rounds"]) == 1, key
    for ratio in ("balancer_ratio", "session_ratio", "redis_vs_memory_ratio"):
        assert summary[ratio] > 0, ratio
    assert [row["instances"] for row in summary["scaling"]] == [1, 2]
    assert all(row["me_vs_one"] > 0 and row["healthz_vs_one"] > 0 for row in summary["scaling"])
    assert {name for name in summary["peers"]} == {"webfarm", "starsessions", "starlette-cookie"}
    assert all(peer["ratio_vs_webfarm"] > 0 for name, peer in summary["peers"].items() if name != "webfarm")
    assert summary["machine"]["nproc"] >= 1
    assert (out / "bench.png").read_bytes().startswith(b"\x89PNG")
    assert not list((tmp_path / "state").glob("bench-*/supervisor.sock")), "a bench farm was left running"
