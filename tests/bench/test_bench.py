"""The smallest whole bench: it must run end to end and report every figure. It asserts
nothing about speed - a benchmark is not a timed test."""

import shutil
from pathlib import Path

import pytest

from bench.__main__ import main
from bench.report import CPU_GROUPS
from bench.summary import BenchSummary

pytestmark = [
    pytest.mark.farm,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (`make bench` installs it)"),
]

CONFIGURATIONS = {
    "direct/healthz", "direct-1conn/healthz", "nginx-1-1conn/healthz",
    "direct-memory/me", "direct-near/me", "direct-exact/me",
    "starsessions/me", "redis-getset/me", "starlette-cookie/me",
    "nginx-1/healthz", "nginx-1/me", "nginx-2/healthz", "nginx-2/me",
    "exact-nginx-2/healthz", "exact-nginx-2/me",
    "direct-near-m0/me", "direct-exact-m0/me",  # METRICS=0: what the metrics cost
    # the floors (bench/floors.py), direct and through nginx
    "direct-floor-bare/me", "direct-floor-1rt/me", "floor-bare-nginx-2/me", "floor-1rt-nginx-2/me",
    # exact mode on a Redis Cluster, direct and through nginx
    "direct-cluster/me", "cluster-nginx-2/me",
}
#: Measured open loop at a fixed rate as well.
FIXED_RATE = {"direct/healthz", "direct-near/me", "direct-exact/me", "starsessions/me", "redis-getset/me",
              "starlette-cookie/me", "nginx-2/me", "exact-nginx-2/me", "direct-cluster/me"}


def test_bench_tiny_run_reports_every_configuration_and_metric(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = main(["--rounds", "1", "--duration", "1s", "--instances", "2", "--warmup", "0", "--rate", "200",
                 "--out", str(out), "--state-root", str(tmp_path / "state")])

    assert code == 0
    summary = BenchSummary.read(out / "summary.json")
    results = summary.results
    assert set(results) == CONFIGURATIONS
    for key, result in results.items():
        assert result.rps > 0, key
        assert len(result.rounds) == 1, key
        assert set(result.cpu_us_per_request) == set(CPU_GROUPS), key
        assert result.cpu_us_per_request["app"] > 0, key
        assert all(calls >= 0.001 for calls in result.redis_commands_per_request.values()), key
        assert (result.fixed_rate is not None) == (key in FIXED_RATE), key
    assert set(summary.fixed_rate.rows) == FIXED_RATE
    for key, row in summary.fixed_rate.rows.items():
        assert row.achieved_rps > 0, key
        assert 0 < row.p50_ms <= row.p99_ms <= row.max_ms, key

    # Redis work per request: commands the app issues show up, the background does not.
    assert results["exact-nginx-2/me"].redis_commands_total >= 1
    assert results["direct-exact/me"].redis_commands_total >= 1
    assert {"get", "set"} <= set(results["redis-getset/me"].redis_commands_per_request)
    assert results["starlette-cookie/me"].redis_commands_total < 0.1
    assert results["nginx-2/healthz"].redis_commands_total < 0.1
    assert results["exact-nginx-2/healthz"].redis_commands_total < 0.1
    assert set(summary.redis_background_per_s) == {"near", "exact", "memory", "near-m0", "exact-m0", "floor-bare",
                                                    "floor-1rt", "cluster"}
    # On the cluster too, one script per request (counted on its primaries), as on one Redis.
    for key in ("direct-cluster/me", "cluster-nginx-2/me", "direct-exact/me"):
        assert results[key].redis_scripts_per_request == pytest.approx(1, abs=0.1), key
    assert set(summary.cluster_vs_single) == {"direct", "nginx"}
    assert all(ratio > 0 for ratio in summary.cluster_vs_single.values())
    # The floors: the bare one asks Redis nothing, the other one script per request.
    assert results["direct-floor-bare/me"].redis_commands_total < 0.1
    assert results["floor-1rt-nginx-2/me"].redis_scripts_per_request == pytest.approx(1, abs=0.1)
    # Our instances heartbeat on their own (the floors write nothing unasked).
    assert all(sum(rates.values()) > 0 for name, rates in summary.redis_background_per_s.items()
               if not name.startswith("floor"))

    assert set(summary.modes) == {"near", "exact"}
    for mode, figures in summary.modes.items():
        assert figures.session_ratio > 0, mode
        assert figures.direct_session_ratio > 0, mode
        assert figures.goal > 0, mode
        assert set(figures.cpu_us_per_request) == set(CPU_GROUPS), mode
        assert figures.cpu_us_per_request["nginx"] > 0, mode
        assert figures.fixed_rate.p99_ms > 0, mode
        assert figures.floor_ratio_direct > 0, mode
        assert figures.floor_ratio_nginx > 0, mode
        assert figures.floor_goal > 0, mode
    assert summary.modes["exact"].instance_env == {"SESSION_NEAR_CACHE_S": "0"}
    assert summary.modes["exact"].cpu_us_per_request["redis"] > 0

    assert summary.balancer_ratio > 0
    assert summary.balancer_ratio_one_connection > 0
    assert set(summary.redis_vs_memory_ratio) == {"near", "exact"}
    # A share of throughput, whatever its sign in a one-second round (a figure, not a speed test).
    assert set(summary.metrics_cost) == {"near", "exact"}
    assert all(-1 < cost < 1 for cost in summary.metrics_cost.values())
    assert [row.instances for row in summary.scaling] == [1, 2]
    assert all(row.me_vs_one > 0 and row.healthz_vs_one > 0 for row in summary.scaling)
    assert {name: set(rows) for name, rows in summary.peers.items()} == {
        "exact": {"webfarm exact", "starsessions", "redis-getset"},
        "near": {"webfarm near", "starlette-cookie"}}
    for rows in summary.peers.values():
        assert all(row.ratio_vs_webfarm > 0 and row.fixed_rate_p99_ms > 0 for row in rows.values())
    assert {row.key for section in summary.sections for row in section.rows} == CONFIGURATIONS
    assert summary.machine.nproc >= 1
    assert (out / "bench.png").read_bytes().startswith(b"\x89PNG")
    assert not list((tmp_path / "state").glob("bench-*/supervisor.sock")), "a bench farm was left running"
