"""python -m bench.inprocess on a tiny run: every figure is reported (nothing asserted about speed)."""

import uvloop

from bench.inprocess import run


def test_a_tiny_run_reports_every_setup() -> None:
    figures = uvloop.run(run(200, None))
    assert set(figures) == {"floor: bare app", "floor: bare app + one EVALSHA", "near: hot path",
                            "near: the app (middleware chain, route)", "exact: hot path",
                            "exact: the app (middleware chain, route)"}
    assert all(us > 0 for us in figures.values()), figures
