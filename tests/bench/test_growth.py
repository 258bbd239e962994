"""The smallest whole growth bench (bench/growth.py): it must run end to end, report every figure
and leave nothing running. It asserts nothing about speed. And the real run's summary in docs/
reads through the model, with the figures docs/performance.md quotes."""

import json
import shutil
from pathlib import Path

import psutil
import pytest

from bench.growth import PANEL_COMMANDS, GrowthSummary, main, table
from farmctl.config import PROJECT_ROOT
from farmctl.wait import wait_until

pytestmark = [
    pytest.mark.farm,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (`make bench-growth` installs it)"),
]

SMALL, LARGE, USER_SESSIONS = 50, 500, 300
DOCS = PROJECT_ROOT / "docs"


def test_growth_tiny_run_reports_every_figure_and_leaves_nothing_running(tmp_path: Path) -> None:
    out, state = tmp_path / "out", tmp_path / "s"  # short: supervisord's socket path has a limit
    code = main(["--small", str(SMALL), "--sessions", str(LARGE), "--user-sessions", str(USER_SESSIONS),
                 "--rounds", "1", "--duration", "1s", "--rate", "100", "--panel-calls", "3", "--instances", "1",
                 "--cookies", "20", "--out", str(out), "--state-root", str(state)])

    assert code == 0
    summary = GrowthSummary.read(out / "summary.json")
    for scale, sessions in ((summary.small, SMALL), (summary.large, LARGE)):
        assert scale.sessions == scale.live_index == scale.panel_live_sessions == sessions
        assert 0 < scale.measured_sessions < sessions
        assert scale.bytes_per_session > 0
        assert scale.rps > 0
        assert len(scale.rounds) == 1
        assert 0 < scale.fixed_rate.p50_ms <= scale.fixed_rate.p99_ms <= scale.fixed_rate.max_ms
        assert scale.touch_us > 0
        assert scale.panel_ms > 0
        assert set(scale.panel_redis_us) == set(PANEL_COMMANDS)
        assert scale.panel_redis_us["zcount"] > 0

    signed_out = summary.sign_out
    assert signed_out.user_sessions == USER_SESSIONS
    assert len(signed_out.rounds) == 1
    for done in signed_out.rounds:
        assert done.left == 0
        assert done.live_before - done.live_after == USER_SESSIONS
        assert done.live_after == LARGE
        assert done.endpoint_ms > 0
        assert done.slowest_command  # the sign-out's own scripts are over SLOWLOG_US at least
        assert done.others_before.p99_ms > 0
        assert done.others_during.p99_ms > 0
    assert signed_out.slowest_command_ms == signed_out.rounds[0].slowest_command_ms > 0

    def running() -> list[int]:
        return [p.pid for p in psutil.process_iter(["cmdline"]) if str(state) in " ".join(p.info["cmdline"] or ())]

    # Every process is stopped by then; supervisord itself exits at its next tick (farmctl's NativeFarm.down).
    assert wait_until(lambda: not running(), 5), running()


def test_committed_growth_summary_reads_through_the_model_and_is_what_the_docs_quote() -> None:
    path = DOCS / "bench-growth-summary.json"
    summary = GrowthSummary.read(path)
    assert summary.model_dump(mode="json") == json.loads(path.read_text())
    assert f"{summary.large.sessions:,} sessions" in table(summary)
    docs = (DOCS / "performance.md").read_text().split("## Cost as the work grows", 1)[1]
    small, large, out = summary.small, summary.large, summary.sign_out
    for quoted in (f"| {small.bytes_per_session:.0f} B | {large.bytes_per_session:.0f} B |",
                   f"| {small.rps:,.0f} req/s | {large.rps:,.0f} req/s |",
                   f"{small.fixed_rate.p99_ms:.2f} ms | {large.fixed_rate.p50_ms:.2f} / "
                   f"{large.fixed_rate.p99_ms:.2f} ms |",
                   f"| {small.touch_us:.1f} us | {large.touch_us:.1f} us |",
                   f"| {out.endpoint_ms:.0f} ms (rounds:",
                   f"| {out.slowest_command_ms:.2f} ms, a batch's `EVALSHA`",
                   f"| {out.others_before.p99_ms:.2f} -> {out.others_during.p99_ms:.2f} ms (rounds:"):
        assert quoted in docs, quoted
