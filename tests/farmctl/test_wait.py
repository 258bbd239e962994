"""wait_until: the one polling helper of farmctl, the bench, the load test and the tests."""

import time

from farmctl.wait import wait_until


def test_wait_until_returns_the_first_truthy_result() -> None:
    calls = iter([None, 0, "ready", "later"])
    assert wait_until(lambda: next(calls), 5, interval_s=0.001) == "ready"
    assert next(calls) == "later"


def test_wait_until_none_after_the_timeout_having_tried_at_least_once() -> None:
    tries: list[float] = []

    def never() -> bool:
        tries.append(time.monotonic())
        return False

    started = time.monotonic()
    assert wait_until(never, 0.2, interval_s=0.05) is None
    assert 0.2 <= time.monotonic() - started < 1
    assert len(tries) >= 2
    tries.clear()
    assert wait_until(never, 0) is None
    assert len(tries) == 1  # a zero timeout still asks once
