"""The load test's bookkeeping: what counts as lost, phantom or indeterminate."""

from collections.abc import Callable
from pathlib import Path

from loadtest.faults import Hang, Kill
from loadtest.ledger import CartBook, Fault, Ledger, Outcome, Pending, RunSettings, percentile


def test_cart_check_finds_a_lost_update() -> None:
    book = CartBook()
    book.confirmed["apple"] = 3
    assert book.check({"apple": 2}) is Outcome.LOST_UPDATE
    assert book.check({"apple": 2}) is Outcome.OK  # reported once, then the server is believed


def test_cart_check_accepts_an_indeterminate_add_either_way() -> None:
    applied, dropped = CartBook(), CartBook()
    for book in (applied, dropped):
        book.confirmed["apple"] = 1
        book.pending.append(Pending("apple", 2, 1.0, 3.0))
    assert applied.check({"apple": 3}) is Outcome.OK
    assert dropped.check({"apple": 1}) is Outcome.OK
    assert applied.confirmed["apple"] == 3
    assert applied.pending == dropped.pending == []  # settled: what did not show up never will
    assert dropped.check({"apple": 3}) is Outcome.PHANTOM_UPDATE


def test_an_add_held_by_a_frozen_instance_may_still_show_up_until_the_hang_is_over() -> None:
    """A POST nginx gave up on sits in the frozen instance's socket, and is applied when it resumes."""
    hang = Fault(Hang.name, "web3", at=10.0, sent_at=9.99, signal="STOP")
    ledger = Ledger(started_at=0, faults=[hang])
    book = CartBook()
    book.pending.append(Pending("apple", 2, 11.0, 13.0))  # nginx's 503 after its read timeout

    def settled_at(at: float) -> Callable[[Pending], bool]:
        return lambda add: ledger.settled(add.start, add.end, at)

    assert book.check({}, settled_at(14.0)) is Outcome.OK  # not applied yet: the instance is frozen
    assert book.pending
    hang.lifted_at = 16.0  # resumed: it reads the request and applies it
    assert book.check({}, settled_at(16.1)) is Outcome.OK  # within the slack: still pending
    assert book.check({"apple": 2}, settled_at(17.0)) is Outcome.OK
    assert book.pending == []
    assert book.check({"apple": 4}, settled_at(18.0)) is Outcome.PHANTOM_UPDATE


def test_cart_check_finds_a_phantom_item() -> None:
    book = CartBook()
    assert book.check({"caviar": 1}) is Outcome.PHANTOM_UPDATE


def kill(name: str, at: float) -> Fault:
    return Fault(Kill.name, name, at=at, sent_at=at - 0.01, signal="KILL", lifted_at=at)


def test_classify_error_blames_a_kill_only_for_an_unsigned_post_in_flight() -> None:
    ledger = Ledger(started_at=0, faults=[kill("web2", 10.0)])
    assert ledger.classify_error("POST", 9.5, 10.1, "") is Outcome.INDETERMINATE
    assert ledger.classify_error("POST", 9.5, 10.1, "web2") is Outcome.REQUEST_ERROR
    assert ledger.classify_error("GET", 9.5, 10.1, "") is Outcome.REQUEST_ERROR
    assert ledger.classify_error("POST", 12.0, 12.1, "") is Outcome.REQUEST_ERROR


def test_classify_error_keeps_a_hang_open_until_it_is_lifted() -> None:
    hang = Fault(Hang.name, "web2", at=10.0, sent_at=9.99, signal="STOP")
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


def test_percentile_is_nearest_rank() -> None:
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([5.0], 50) == 5.0
    assert percentile([], 99) == 0.0


def test_ledger_reads_back_as_written(tmp_path: Path) -> None:
    ledger = Ledger(started_at=1.0, stopped_at=9.0, settings=RunSettings(chaos="hang", kill_every_s=6.0,
                                                                         kill_signal="KILL"))
    ledger.record(2.0, 2.1, "GET", "/api/me", 200, "web1", Outcome.OK)
    ledger.faults.append(Fault(Hang.name, "web2", at=3.0, sent_at=2.9, signal="STOP", lifted_at=5.0, restarted=True))
    ledger.save(tmp_path / "ledger.json")
    assert Ledger.load(tmp_path / "ledger.json") == ledger
