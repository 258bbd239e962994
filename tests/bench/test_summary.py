"""The bench summary committed in docs/ reads through the model, key for key, and renders."""

import json
from pathlib import Path

import pytest

from bench.report import chart, table
from bench.summary import BenchSummary
from farmctl.config import PROJECT_ROOT

COMMITTED = PROJECT_ROOT / "docs" / "bench-summary.json"
#: The run that added the Redis Cluster's rows (docs/cluster.md quotes it).
WITH_CLUSTER = PROJECT_ROOT / "docs" / "bench-cluster-summary.json"


@pytest.mark.parametrize("committed", [COMMITTED, WITH_CLUSTER], ids=lambda p: p.name)
def test_committed_bench_summary_reads_through_the_model(committed: Path) -> None:
    raw = json.loads(committed.read_text())
    summary = BenchSummary.read(committed)
    assert summary.model_dump(mode="json") == raw
    assert {k for k, r in summary.results.items() if r.fixed_rate is not None} == set(summary.fixed_rate.rows)


def test_committed_bench_summary_renders_its_table_and_chart(tmp_path: Path) -> None:
    summary = BenchSummary.read(COMMITTED)
    text = table(summary)
    assert f"session_ratio exact    {summary.modes['exact'].session_ratio:.2f}" in text
    assert summary.results["starsessions/me"].label in text
    chart(summary, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes().startswith(b"\x89PNG")


def test_summary_reads_back_as_written(tmp_path: Path) -> None:
    summary = BenchSummary.read(COMMITTED)
    summary.write(tmp_path / "summary.json")
    assert BenchSummary.read(tmp_path / "summary.json") == summary
