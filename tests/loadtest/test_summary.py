"""The summaries committed in docs/ still read through the model, key for key."""

import json
from pathlib import Path

import pytest

from farmctl.config import PROJECT_ROOT
from loadtest.report import verdict_table
from loadtest.summary import Comparison, LoadSummary

DOCS = PROJECT_ROOT / "docs"


@pytest.mark.parametrize("path", sorted(DOCS.glob("loadtest*summary*.json")), ids=lambda p: p.name)
def test_committed_load_test_summary_reads_through_the_model(path: Path) -> None:
    raw = json.loads(path.read_text())
    summary = LoadSummary.read(path)
    dumped = summary.model_dump(mode="json")
    assert {key: dumped[key] for key in raw} == raw  # older summaries lack the gray faults' fields
    assert summary.passed


def test_committed_comparison_reads_through_the_model() -> None:
    path = DOCS / "compare-summary.json"
    raw = json.loads(path.read_text())
    comparison = Comparison.read(path)
    assert set(comparison.root) == set(raw)
    for name, summary in comparison.root.items():
        dumped = summary.model_dump(mode="json")
        assert {key: dumped[key] for key in raw[name]} == raw[name], name
    assert [s.verdict for s in comparison.root.values()] == ["FAIL", "FAIL", "PASS"]


def test_summaries_in_docs_are_all_read_by_some_test() -> None:
    assert {p.name for p in DOCS.glob("*summary*.json")} == {
        "loadtest-summary.json", "loadtest-hang-summary.json", "loadtest-mixed-summary.json",
        "loadtest-cluster-summary.json", "compare-summary.json", "bench-summary.json", "bench-growth-summary.json",
        "bench-cluster-summary.json"}


@pytest.mark.parametrize(("page", "run", "lines"), [("chaos.md", "loadtest-mixed-summary.json", 15),
                                                    ("cluster.md", "loadtest-cluster-summary.json", 12)])
def test_the_table_docs_quote_is_what_the_report_prints_from_the_committed_summary(page: str, run: str,
                                                                                    lines: int) -> None:
    """docs/chaos.md quotes the mixed run's table (leaving a line out), docs/cluster.md the cluster's
    CHAOS=redis run's: every line each quotes, the report prints from the committed summary."""
    printed = [line.rstrip() for line in verdict_table(LoadSummary.read(DOCS / run)).splitlines()]
    quoted = ("verdict" + (DOCS / page).read_text().split("```\nverdict", 1)[1].split("```", 1)[0]).strip()
    assert len(quoted.splitlines()) > lines
    assert [line for line in quoted.splitlines() if line.rstrip() not in printed] == []
