"""The load test's bookkeeping: what counts as lost, phantom or indeterminate."""

from loadtest.ledger import CartBook, KillRecord, Ledger, Outcome
from loadtest.report import percentile, summarize


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


def test_classify_error_blames_a_kill_only_for_an_unsigned_post_in_flight() -> None:
    ledger = Ledger(started_at=0, kills=[KillRecord("web2", "KILL", at=10.0, sent_at=9.99)])
    assert ledger.classify_error("POST", 9.5, 10.1, "") is Outcome.INDETERMINATE
    assert ledger.classify_error("POST", 9.5, 10.1, "web2") is Outcome.REQUEST_ERROR
    assert ledger.classify_error("GET", 9.5, 10.1, "") is Outcome.REQUEST_ERROR
    assert ledger.classify_error("POST", 12.0, 12.1, "") is Outcome.REQUEST_ERROR


def test_summary_fails_on_any_lost_session_and_on_an_instance_that_never_returned() -> None:
    ledger = Ledger(started_at=0, stopped_at=10)
    ledger.record(1, 1.01, "GET", "/api/me", 200, "web1", Outcome.OK)
    assert summarize(ledger, 1, 3)["verdict"] == "PASS"
    ledger.kills.append(KillRecord("web1", "KILL", 2, 2))
    assert summarize(ledger, 1, 3)["verdict"] == "FAIL"
    ledger.kills[0].returned_at = 3.5
    ledger.record(4, 4.02, "GET", "/api/me", 401, "web2", Outcome.SESSION_LOST)
    summary = summarize(ledger, 1, 3)
    assert summary["verdict"] == "FAIL"
    assert summary["sessions_lost"] == 1
    assert summary["return_times_s"] == [1.5]
    assert summary["p99_after_kill_ms"] == 20.0
    assert summary["p99_steady_ms"] == 10.0


def test_percentile_is_nearest_rank() -> None:
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([5.0], 50) == 5.0
    assert percentile([], 99) == 0.0
