"""A crowd from the console: the load test's own users (loadtest.locustfile.FarmUser), run by
Locust as a library in the console's process, recording into a ledger of the crowd's own - which
the console's faults are recorded in too, so the verdict knows what was broken and when. Bounded:
at most MAX_USERS for at most MAX_SECONDS, then it stops by itself."""

import logging
import time
from collections.abc import Callable
from typing import Any

import gevent
from locust.env import Environment

from farmctl.runtime import Farm
from loadtest import locustfile
from loadtest.ledger import BROKEN_PROMISES, Ledger, Outcome, RunSettings
from loadtest.report import summarize

log = logging.getLogger("console")

MIN_USERS, MAX_USERS = 1, 50
MIN_SECONDS, MAX_SECONDS = 10, 300
#: Users start at this rate (a second), as `make loadtest` starts them.
SPAWN_RATE = 10.0
#: How long a crowd's end waits for the fault under way to be over (its longest hold and recovery).
MAX_FAULT_S = 100.0


class Crowd:
    """One crowd: `users` simulated users for `seconds`, started by `by`."""

    def __init__(self, farm: Farm, users: int, seconds: int, by: str,
                 faults_over: Callable[[float], bool] = lambda _: True) -> None:
        self.farm = farm
        self.faults_over = faults_over
        self.users = users
        self.seconds = seconds
        self.by = by
        self.ledger = Ledger(settings=RunSettings(chaos="console"))
        self.verdict: str | None = None
        self.env = Environment(user_classes=[locustfile.FarmUser], host=farm.config.balancer_url,
                               stop_timeout=5)
        self.runner: Any = None

    def start(self) -> None:
        locustfile.record_into(self.ledger)
        self.ledger.started_at = time.time()
        self.runner = self.env.create_local_runner()
        self.runner.start(self.users, spawn_rate=SPAWN_RATE)
        gevent.spawn_later(self.seconds, self.stop)
        log.info("console: a crowd of %d users for %d s, by %s", self.users, self.seconds, self.by)

    @property
    def running(self) -> bool:
        return self.verdict is None

    def stop(self) -> None:
        """Stop the users (each finishes its request, for at most 5 s), let the fault under way end and
        be recovered from (as the load test's chaos does, bounded), and judge the ledger."""
        if not self.running or self.runner is None or self.ledger.stopped_at:
            return
        self.ledger.stopped_at = time.time()
        self.runner.quit()
        self.faults_over(MAX_FAULT_S)
        summary = summarize(self.ledger, self.users, self.farm.config.instances,
                            session_backend=self.farm.config.session_backend, runtime=self.farm.name)
        self.verdict = summary.verdict
        out = self.farm.config.state_dir / "console"
        out.mkdir(exist_ok=True)
        self.ledger.save(out / "ledger.json")  # the last crowd's, every request and fault, as make loadtest's
        summary.write(out / "summary.json")
        log.info("console: the crowd ended: %s, %s (%s)", summary.verdict,
                 {o.value: n for o, n in summary.failures.items()}, out)

    def as_dict(self) -> dict[str, object]:
        outcomes = self.ledger.outcomes()
        now = self.ledger.stopped_at or time.time()
        return {
            "users": self.users, "seconds": self.seconds, "by": self.by, "started_at": self.ledger.started_at,
            "elapsed_s": round(now - self.ledger.started_at, 1), "requests": len(self.ledger.requests),
            "outcomes": {o.value: outcomes.get(o.value, 0) for o in Outcome},
            "broken": sum(outcomes.get(o.value, 0) for o in BROKEN_PROMISES),
            "running": self.running, "verdict": self.verdict,
        }
