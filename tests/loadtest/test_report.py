"""The verdict: what fails a run, and what each fault cost the users."""

from pathlib import Path

from loadtest.faults import MIXED, Hang, Kill, LoginStorm, RedisStall
from loadtest.ledger import Fault, Ledger, Outcome, RunSettings
from loadtest.report import summarize, timeline_chart, verdict_table
from loadtest.summary import LoadSummary


def kill(name: str, at: float) -> Fault:
    return Fault(Kill.name, name, at=at, sent_at=at - 0.01, signal="KILL", lifted_at=at)


def test_summary_fails_on_any_lost_session_and_on_an_instance_that_never_returned() -> None:
    ledger = Ledger(started_at=0, stopped_at=10)
    ledger.record(1, 1.01, "GET", "/api/me", 200, "web1", Outcome.OK)
    assert summarize(ledger, 1, 3).verdict == "PASS"
    ledger.faults.append(kill("web1", 2))
    assert summarize(ledger, 1, 3).verdict == "FAIL"
    ledger.faults[0].recovered_at = 3.5
    ledger.record(4, 4.02, "GET", "/api/me", 401, "web2", Outcome.SESSION_LOST)
    summary = summarize(ledger, 1, 3)
    assert summary.verdict == "FAIL"
    assert summary.sessions_lost == 1
    assert summary.return_times_s == [1.5]
    assert summary.p99_after_kill_ms == 20.0
    assert summary.p99_steady_ms == 10.0


def gray_run() -> Ledger:
    """60 s: a hang of web2 from 10 s (out of rotation at 11.4, restarted at 21, back at 23), a Redis
    stall from 30 s to 34 s (back at 34.2), requests of 10 ms all along, slow and failing ones in the faults."""
    ledger = Ledger(started_at=0, stopped_at=60, settings=RunSettings(chaos=MIXED.name, kill_every_s=15.0))
    ledger.faults = [
        Fault(Hang.name, "web2", at=10.0, sent_at=9.99, signal="STOP", detected_at=11.4, lifted_at=21.0,
              recovered_at=23.0, restarted=True),
        Fault(RedisStall.name, "redis", at=30.0, sent_at=29.99, signal="STOP", detected_at=31.1, lifted_at=34.0,
              recovered_at=34.2),
    ]
    for second in range(60):
        ledger.record(second + 0.5, second + 0.51, "GET", "/api/me", 200, "web1", Outcome.OK)
    ledger.record(10.2, 10.7, "GET", "/api/cart", 200, "web3", Outcome.OK)  # waited on web2, then retried
    ledger.record(12.0, 12.0, "POST", "/api/cart/items", 0, "", Outcome.REQUEST_ERROR)
    for start in (30.1, 31.0, 32.0):
        ledger.record(start, start + 1.5, "GET", "/api/cart", 503, "web1", Outcome.REQUEST_ERROR)
    ledger.record(32.5, 34.1, "POST", "/api/cart/items", 200, "web3", Outcome.OK)
    return ledger


def test_fault_metrics_time_each_fault_and_what_the_users_saw() -> None:
    summary = summarize(gray_run(), 2, 3)
    hang, stall = summary.faults
    assert (hang.kind, hang.name, hang.at_s) == ("hang", "web2", 10.0)
    assert (hang.detect_s, hang.lasted_s, hang.recover_s) == (1.4, 11.0, 2.0)
    assert hang.requests == 15  # 13 of 10 ms (10.5 .. 22.5) + the slow GET + the failed POST
    assert hang.p99_ms == 500.0
    assert (hang.failed, hang.failures, hang.app_503) == (1, {Outcome.REQUEST_ERROR: 1}, 0)
    assert (stall.detect_s, stall.lasted_s, stall.recover_s) == (1.1, 4.0, 0.2)
    assert (stall.failed, stall.app_503) == (3, 3)
    assert stall.p99_ms == 1600.0
    assert summary.p99_between_faults_ms == 10.0
    assert summary.verdict == "PASS"
    assert summary.unrecovered == 0
    table = verdict_table(summary)
    assert "p99 between faults  10.0 ms" in table
    assert "restarted by the farm" in table
    assert "redis-stall redis" in table


def test_a_hang_the_farm_did_not_restart_fails_the_run() -> None:
    ledger = gray_run()
    hang = ledger.faults[0]
    hang.restarted = False  # the chaos had to SIGCONT it; it then served again
    summary = summarize(ledger, 2, 3)
    assert summary.verdict == "FAIL"
    assert summary.unrecovered == 1
    assert "NOT RECOVERED; not restarted: resumed by the chaos" in verdict_table(summary)


def test_a_fault_never_recovered_fails_the_run_and_lasts_to_the_end() -> None:
    ledger = gray_run()
    ledger.faults[1].recovered_at = None
    summary = summarize(ledger, 2, 3)
    assert summary.verdict == "FAIL"
    assert summary.faults[1].recover_s is None
    assert summary.faults[1].requests == 30 + 4  # every second from 30 to the end, and the stall's own


def test_summary_reads_back_as_written_with_a_storm_row_only_for_the_storm(tmp_path: Path) -> None:
    ledger = gray_run()
    ledger.faults.append(Fault(LoginStorm.name, "farm", at=40.0, sent_at=40.0, lifted_at=45.0, recovered_at=45.5,
                               counts={"register_admitted": 3, "refused_p99_ms": 12}))
    summary = summarize(ledger, 2, 3, session_backend="redis", balance="round_robin", redis="single",
                        runtime="native")
    summary.write(tmp_path / "summary.json")
    assert LoadSummary.read(tmp_path / "summary.json") == summary
    rows = summary.model_dump(mode="json")["faults"]
    assert ["storm" in row for row in rows] == [False, False, True]
    assert summary.faults[2].storm == {"register_admitted": 3, "refused_p99_ms": 12}


def test_timeline_draws_every_kind_of_fault(tmp_path: Path) -> None:
    ledger = gray_run()
    ledger.faults.append(kill("web1", 50.0))
    timeline_chart(ledger, tmp_path / "timeline.png", "a test")
    assert (tmp_path / "timeline.png").read_bytes().startswith(b"\x89PNG")
