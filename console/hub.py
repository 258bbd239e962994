"""The console's state: the farm sampled once a second (console.sampler), the faults (console.desk),
the crowd (console.crowd), and the browsers that watch, each fed every tick through a queue."""

import json
import logging
import time
from collections import deque

import gevent
import gevent.queue

from console.crowd import Crowd
from console.desk import KINDS, Desk, Refused
from console.sampler import EVERY_S, Sampler
from farmctl.runtime import Farm
from farmctl.secret import csrf_secret
from loadtest.ledger import Ledger

log = logging.getLogger("console")

#: What the page's chart covers, and so what a browser gets when it connects.
HISTORY_S = 180
#: Ticks a browser may fall behind by before the console drops it (it reconnects and catches up).
BACKLOG = 30
#: The console samples only while it is watched (a browser, a crowd, a fault, a client of /api/state)
#: and for this long after: an idle demo farm costs nothing, and a reload finds its chart.
WATCHED_FOR_S = 30.0


class Console:
    def __init__(self, farm: Farm) -> None:
        self.farm = farm
        self.csrf_secret = csrf_secret(farm.config.state_dir)
        self.sampler = Sampler(farm)
        #: Faults outside a crowd are recorded here (no verdict to inform).
        self.idle_ledger = Ledger(started_at=time.time())
        self.crowd: Crowd | None = None
        self.desk = Desk(farm, self._ledger)
        self.ticks: deque[dict[str, object]] = deque(maxlen=int(HISTORY_S / EVERY_S))
        self._subscribers: set[gevent.queue.Queue[str | None]] = set()
        self.watched_at = 0.0

    def _ledger(self) -> Ledger:
        return self.crowd.ledger if self.crowd and self.crowd.running else self.idle_ledger

    def offered_kinds(self) -> dict[str, str | None]:
        """Each fault the console offers, with why this farm cannot take it (None: it can)."""
        return {name: kind.refusal(self.farm) for name, kind in KINDS.items()}

    # -- the loop -----------------------------------------------------------------------------
    def watched(self) -> bool:
        if self._subscribers or self.desk.current or (self.crowd and self.crowd.running):
            self.watched_at = time.time()
        return time.time() - self.watched_at < WATCHED_FOR_S

    def run(self) -> None:
        """Sample the farm every EVERY_S while it is watched, and tell every browser; forever."""
        due = time.time()
        while True:
            if not self.watched():
                self.ticks.clear()  # a gap in the chart would be drawn as a line across it
                due = time.time() + EVERY_S
                gevent.sleep(EVERY_S)
                continue
            try:
                tick = self.sampler.tick().as_dict()
            except Exception:
                log.exception("console: sampling the farm failed")
            else:
                self.ticks.append(tick)
                self._publish(json.dumps(self._now(tick)))
            due += EVERY_S
            gevent.sleep(max(0.0, due - time.time()))

    def _now(self, tick: dict[str, object]) -> dict[str, object]:
        current = self.desk.current
        return {"tick": tick, "fault": current.as_dict() if current else None,
                "faults": [e.as_dict() for e in self.desk.log[-10:]],
                "crowd": self.crowd.as_dict() if self.crowd else None}

    def state(self) -> dict[str, object]:
        """The latest tick with the faults and the crowd (GET /console/api/state)."""
        self.watched_at = time.time()
        return self._now(self.ticks[-1] if self.ticks else {})

    def history(self) -> dict[str, object]:
        """What a browser gets when it connects: the chart's ticks, and the faults on it."""
        return {"ticks": list(self.ticks), "faults": [e.as_dict() for e in self.desk.log],
                "crowd": self.crowd.as_dict() if self.crowd else None}

    # -- the browsers -------------------------------------------------------------------------
    def subscribe(self) -> "gevent.queue.Queue[str | None]":
        queue: gevent.queue.Queue[str | None] = gevent.queue.Queue(BACKLOG)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: "gevent.queue.Queue[str | None]") -> None:
        self._subscribers.discard(queue)

    def _publish(self, item: str | None) -> None:
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(item)
            except gevent.queue.Full:  # a browser that stopped reading: end its stream
                self._subscribers.discard(queue)

    # -- the crowd ----------------------------------------------------------------------------
    def start_crowd(self, users: int, seconds: int, by: str) -> dict[str, object]:
        if self.crowd and self.crowd.running:
            raise Refused(409, "one crowd at a time: stop this one first")
        self.crowd = Crowd(self.farm, users, seconds, by, self.desk.wait_idle)
        self.crowd.start()
        return self.crowd.as_dict()

    def stop_crowd(self) -> dict[str, object]:
        if not self.crowd or not self.crowd.running:
            raise Refused(409, "no crowd is running")
        gevent.spawn(self.crowd.stop)
        return self.crowd.as_dict()

    def shutdown(self) -> None:
        """Lift the fault under way, stop the crowd, end every stream."""
        self.desk.mend()
        if self.crowd and self.crowd.running and self.crowd.runner is not None:
            self.crowd.runner.quit()
        self._publish(None)
