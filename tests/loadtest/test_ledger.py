"""The load test's bookkeeping: what counts as lost, phantom or indeterminate."""

from loadtest.ledger import CartBook, Fault, Ledger, Outcome, percentile
from loadtest.report import summarize, verdict_table


def test_cart_check_finds_a_lost_update() -> None:
    book = CartBook()
    book.confirmed["apple"] = 3
    assert book.check({"apple": 2}) is Outcome.LOST_UPDATE
    assert book.check({"apple": 2}) is Outcome.OK  # reported once, then the server is believed


def test_cart_check_accepts_an_indeterminate_add_either_way() -> None:
    applied, dropped = CartBook(), CartBook()
    for book in (applied, dropped):
        book.confirmed["apple"] = 1
        book.uncertain["apple"] = 2
    assert applied.check({"apple": 3}) is Outcome.OK
    assert dropped.check({"apple": 1}) is Outcome.OK
    assert applied.confirmed["apple"] == 3


def test_cart_check_finds_a_phantom_item() -> None:
    book = CartBook()
    assert book.check({"caviar": 1}) is Outcome.PHANTOM_UPDATE


def kill(name: str, at: float) -> Fault:
    return Fault("kill", name, at=at, sent_at=at - 0.01, signal="KILL", lifted_at=at)


def test_classify_error_blames_a_kill_only_for_an_unsigned_post_in_flight() -> None:
    ledger = Ledger(started_at=0, faults=[kill("web2", 10.0)])
    assert ledger.classify_error("POST", 9.5, 10.1, "") is Outcome.INDETERMINATE
    assert ledger.classify_error("POST", 9.5, 10.1, "web2") is Outcome.REQUEST_ERROR
    assert ledger.classify_error("GET", 9.5, 10.1, "") is Outcome.REQUEST_ERROR
    assert ledger.classify_error("POST", 12.0, 12.1, "") is Outcome.REQUEST_ERROR


def test_classify_error_keeps_a_hang_open_until_it_is_lifted() -> None:
    hang = Fault("hang", "web2", at=10.0, sent_at=9.99, signal="STOP")
    ledger = Ledger(started_at=0, faults=[hang])
    assert ledger.classify_error("POST", 15.0, 19.0, "") is Outcome.INDETERMINATE  # sent to the hung instance
    hang.lifted_at = 20.5  # the farm restarted it
    assert ledger.classify_error("POST", 15.0, 19.0, "") is Outcome.INDETERMINATE
    assert ledger.classify_error("POST", 21.0, 21.5, "") is Outcome.REQUEST_ERROR


def test_classify_error_makes_the_apps_own_503_on_a_write_indeterminate() -> None:
    """The app answers 503 + Retry-After when its store did not answer in time - perhaps after the write."""
    ledger = Ledger(started_at=0)
    assert ledger.classify_error("POST", 1.0, 2.0, "web1", retry_after=True) is Outcome.INDETERMINATE
    assert ledger.classify_error("POST", 1.0, 2.0, "web1") is Outcome.REQUEST_ERROR
    assert ledger.classify_error("GET", 1.0, 2.0, "web1", retry_after=True) is Outcome.REQUEST_ERROR


def test_summary_fails_on_any_lost_session_and_on_an_instance_that_never_returned() -> None:
    ledger = Ledger(started_at=0, stopped_at=10)
    ledger.record(1, 1.01, "GET", "/api/me", 200, "web1", Outcome.OK)
    assert summarize(ledger, 1, 3)["verdict"] == "PASS"
    ledger.faults.append(kill("web1", 2))
    assert summarize(ledger, 1, 3)["verdict"] == "FAIL"
    ledger.faults[0].recovered_at = 3.5
    ledger.record(4, 4.02, "GET", "/api/me", 401, "web2", Outcome.SESSION_LOST)
    summary = summarize(ledger, 1, 3)
    assert summary["verdict"] == "FAIL"
    assert summary["sessions_lost"] == 1
    assert summary["return_times_s"] == [1.5]
    assert summary["p99_after_kill_ms"] == 20.0
    assert summary["p99_steady_ms"] == 10.0


def gray_run() -> Ledger:
    """60 s: a hang of web2 from 10 s (out of rotation at 11.4, restarted at 21, back at 23), a Redis
    stall from 30 s to 34 s (back at 34.2), requests of 10 ms all along, slow and failing ones in the faults."""
    ledger = Ledger(started_at=0, stopped_at=60, settings={"chaos": "mixed", "kill_every_s": 15.0})
    ledger.faults = [
        Fault("hang", "web2", at=10.0, sent_at=9.99, signal="STOP", detected_at=11.4, lifted_at=21.0,
              recovered_at=23.0, restarted=True),
        Fault("redis-stall", "redis", at=30.0, sent_at=29.99, signal="STOP", detected_at=31.1, lifted_at=34.0,
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
    hang, stall = summary["faults"]
    assert (hang["kind"], hang["name"], hang["at_s"]) == ("hang", "web2", 10.0)
    assert (hang["detect_s"], hang["lasted_s"], hang["recover_s"]) == (1.4, 11.0, 2.0)
    assert hang["requests"] == 15  # 13 of 10 ms (10.5 .. 22.5) + the slow GET + the failed POST
    assert hang["p99_ms"] == 500.0
    assert (hang["failed"], hang["failures"], hang["app_503"]) == (1, {"request_error": 1}, 0)
    assert (stall["detect_s"], stall["lasted_s"], stall["recover_s"]) == (1.1, 4.0, 0.2)
    assert (stall["failed"], stall["app_503"]) == (3, 3)
    assert stall["p99_ms"] == 1600.0
    assert summary["p99_between_faults_ms"] == 10.0
    assert summary["verdict"] == "PASS"
    assert summary["unrecovered"] == 0
    table = verdict_table(summary)
    assert "p99 between faults  10.0 ms" in table
    assert "restarted by the farm" in table
    assert "redis-stall redis" in table


def test_a_hang_the_farm_did_not_restart_fails_the_run() -> None:
    ledger = gray_run()
    hang = ledger.faults[0]
    hang.restarted = False  # the chaos had to SIGCONT it; it then served again
    summary = summarize(ledger, 2, 3)
    assert summary["verdict"] == "FAIL"
    assert summary["unrecovered"] == 1
    assert "NOT RECOVERED; not restarted: resumed by the chaos" in verdict_table(summary)


def test_a_fault_never_recovered_fails_the_run_and_lasts_to_the_end() -> None:
    ledger = gray_run()
    ledger.faults[1].recovered_at = None
    summary = summarize(ledger, 2, 3)
    assert summary["verdict"] == "FAIL"
    assert summary["faults"][1]["recover_s"] is None
    assert summary["faults"][1]["requests"] == 30 + 4  # every second from 30 to the end, and the stall's own


def test_percentile_is_nearest_rank() -> None:
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([5.0], 50) == 5.0
    assert percentile([], 99) == 0.0
