"""The console's faults: the load test's own kinds (loadtest.faults), caused and watched by the
chaos's own code (loadtest.chaos.inject and watch), one at a time, each lifted by the console
itself after its time - whether or not a browser still watches."""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import gevent

from farmctl.runtime import Farm
from loadtest.chaos import inject, watch
from loadtest.faults import ChaosMode, FaultKind, Hang, Kill, LoginStorm, Partition, PrimaryKill, RedisStall, Scene
from loadtest.ledger import Fault, Ledger

log = logging.getLogger("console")

#: What the console offers, by the name its form sends.
KINDS: dict[str, type[FaultKind]] = {"kill": Kill, "hang": Hang, "partition": Partition, "redis-stall": RedisStall,
                                     "storm": LoginStorm, "failover": PrimaryKill}
#: Kinds that hit the instance the user names; the others pick their own victim (Redis, the primary, the farm).
AIMED = frozenset({"kill", "hang", "partition"})
#: Kinds held for the number of seconds the user asks, within these bounds.
HELD = frozenset({"hang", "partition", "redis-stall"})
MIN_HOLD_S, MAX_HOLD_S = 1, 60
#: The faults kept for the console's log.
KEPT = 50


class Refused(ValueError):
    """A fault the console will not cause; `status` is the HTTP answer (409: not now, 422: never)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Entry:
    """One fault on the console: the chaos's record of it, and who asked for it."""

    record: Fault
    by: str
    hold_s: float

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self.record), "by": self.by, "hold_s": self.hold_s}


class Desk:
    """Causes the faults the console's users ask for; `ledger()` says where each is recorded (the
    crowd's ledger while a crowd runs, so its verdict knows of the fault)."""

    def __init__(self, farm: Farm, ledger: Callable[[], Ledger]) -> None:
        self.farm = farm
        self.ledger = ledger
        self.log: list[Entry] = []
        self.current: Entry | None = None
        self._lock = threading.Lock()

    def mend(self) -> None:
        """Undo what a console that died mid-fault left behind: a paused process, a cut-off instance."""
        ChaosMode("console", tuple(KINDS.values())).mend(self.farm)

    def cause(self, kind_name: str, target: str | None, seconds: float | None, by: str) -> Entry:
        """Start one fault and watch it in the background; Refused if it cannot be caused now."""
        kind = KINDS.get(kind_name)
        if kind is None:
            raise Refused(422, f"no such fault: {kind_name!r} (one of {', '.join(KINDS)})")
        if why := kind.refusal(self.farm):
            raise Refused(409, f"{kind_name} {why}")
        hold_s: float | None = None
        if kind_name in HELD:
            if seconds is None or not MIN_HOLD_S <= seconds <= MAX_HOLD_S:
                raise Refused(422, f"{kind_name} is held for {MIN_HOLD_S}-{MAX_HOLD_S} seconds")
            hold_s = float(seconds)
        with self._lock:
            if self.current is not None:
                raise Refused(409, f"one fault at a time: {self.current.record.kind} of "
                                   f"{self.current.record.name} is under way")
            victim = self._victim(kind, kind_name, target)
            ledger = self.ledger()
            fault = kind(Scene(self.farm, ledger), victim, hold_s)
            record = inject(fault, ledger)
            entry = Entry(record, by, fault.hold_s)
            self.current = entry
            self.log = [*self.log[-(KEPT - 1):], entry]
        log.info("console: %s %s by %s", kind_name, victim, by)
        gevent.spawn(self._watch, fault, entry)
        return entry

    def _victim(self, kind: type[FaultKind], kind_name: str, target: str | None) -> str:
        if kind_name not in AIMED:
            victim = kind.pick_victim(self.farm, ())
            if victim is None:
                raise Refused(409, f"{kind_name}: not now (no replica in sync with the primary yet)")
            return victim
        names = self.farm.instance_names()
        if target not in names:
            raise Refused(422, f"{kind_name} needs an instance: one of {', '.join(names)}")
        if not any(self.farm.is_serving(n) for n in names if n != target):
            raise Refused(409, f"{target} is the last instance serving: no fault takes it")
        return target

    def _watch(self, fault: FaultKind, entry: Entry) -> None:
        try:
            watch(fault, entry.record)
        except Exception:
            log.exception("console: watching %s %s failed", entry.record.kind, entry.record.name)
        finally:
            with self._lock:
                self.current = None

    def wait_idle(self, timeout_s: float) -> bool:
        deadline = time.time() + timeout_s
        while self.current is not None and time.time() < deadline:
            gevent.sleep(0.1)
        return self.current is None

