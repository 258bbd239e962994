"""The chaos monkey: break the farm through the runtime's own interface (supervisord natively, the
Docker engine otherwise) and time what the farm does about it. CHAOS picks the mode
(loadtest.faults has each kind of fault):

- instances (the default): SIGKILL a random instance every K s; timed until it serves again.
- redis (REDIS=sentinel or REDIS=cluster, native): SIGKILL the Redis PRIMARY (on a cluster, one of
  the three in turn); timed until another node is primary in its place (the Sentinels name it; the
  cluster serves every slot again) and the balancer's /readyz answers 200.
- hang: SIGSTOP an instance for longer than the farm's liveness bound: the farm must take it out of
  the rotation, then restart it. If it has not within Hang.hold_s, the chaos resumes it itself
  (SIGCONT) and the fault counts as not recovered.
- redis-stall (single Redis): SIGSTOP Redis for RedisStall.hold_s, then SIGCONT - a store that stops
  answering but keeps its connections open, like a VM pause or a long blocking command.
- partition: cut one instance off from Redis for Partition.hold_s (the runtime drops its packets).
- storm: a burst of registrations and logins while the users browse (loadtest.storm).
- mixed: hang, redis-stall, partition, storm and a kill, in turn.

The two kill modes run as they always have: a kill every K s, and kills may overlap. The others run
one fault at a time, start the next K s after the previous one started but no sooner than
STEADY_GAP_S after it recovered (calm on either side to compare with), start none in the last half
interval of the run, and always lift a fault they caused. No fault ever takes the last instance."""

import itertools
import logging
import math
import threading
import time

from farmctl.runtime import Farm
from farmctl.wait import wait_until
from loadtest.faults import INSTANCES, RETURN_TIMEOUT_S, ChaosMode, FaultKind, Scene
from loadtest.ledger import Fault, Ledger

log = logging.getLogger("chaos")

STEADY_GAP_S = 3.0
POLL_S = 0.1


class Chaos:
    """Causes the faults of `mode` in `farm` every `every_s` seconds from `start` to `stop`, each
    recorded in `ledger` with what the farm did about it."""

    def __init__(self, farm: Farm, ledger: Ledger, every_s: float, signal: str = "KILL",
                 mode: ChaosMode = INSTANCES, ends_at: float = math.inf) -> None:
        if every_s <= 0:
            raise ValueError("the kill interval must be positive")
        if why := mode.refusal(farm):
            raise ValueError(why)
        self.farm = farm
        self.mode = mode
        self.scene = Scene(farm, ledger, signal)
        self.ledger = ledger
        self.every_s = every_s
        self.ends_at = ends_at
        #: Victims of the faults under way.
        self.down: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Start no new fault; let the one under way finish and the killed instances return (bounded)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(max(kind.hold_s for kind in self.mode.kinds) + RETURN_TIMEOUT_S)
        wait_until(lambda: not self.down, 15, interval_s=0.2)

    def run(self) -> None:
        """Every `every_s` seconds, cause the mode's next fault (see the module's docstring for when)."""
        kinds = itertools.cycle(self.mode.kinds)
        due = time.time() + self.every_s
        while not self._stop.wait(max(0.0, due - time.time())):
            started = time.time()
            if not self.mode.overlapping and started + self.every_s / 2 > self.ends_at:
                return
            try:
                self.cause(next(kinds))
            except Exception:  # recorded as a fault never recovered: the run FAILs, the chaos goes on
                log.exception("chaos: the fault could not be caused")
            due = max(started + self.every_s, time.time() + STEADY_GAP_S)

    def cause(self, kind: type[FaultKind]) -> None:
        """One fault of `kind`, watched to its end - in the background if the mode's faults overlap."""
        if (victim := kind.pick_victim(self.farm, self.down)) is None:
            return
        fault = kind(self.scene, victim)
        record = inject(fault, self.ledger)
        self.down.add(fault.victim)
        if self.mode.overlapping:
            threading.Thread(target=self._watch, args=(fault, record), daemon=True).start()
        else:
            self._watch(fault, record)

    def _watch(self, fault: FaultKind, record: Fault) -> None:
        try:
            watch(fault, record)
        finally:
            self.down.discard(record.name)


def inject(fault: FaultKind, ledger: Ledger) -> Fault:
    """Cause `fault` and record it in `ledger`; a fault that could not be caused is recorded as
    lifted at once and never recovered, and raises."""
    sent_at = time.time()
    try:
        fault.inject()
    except Exception:
        ledger.faults.append(Fault(fault.name, fault.victim, sent_at, sent_at, fault.signal, lifted_at=time.time()))
        raise
    record = Fault(fault.name, fault.victim, time.time(), sent_at, fault.signal)
    if fault.instant:
        record.lifted_at = record.at
    ledger.faults.append(record)
    log.info("chaos: %s %s at +%.1fs", f"SIG{fault.signal}" if fault.signal else fault.name, fault.victim,
             record.at - ledger.started_at)
    return record


def watch(fault: FaultKind, record: Fault) -> None:
    """Every POLL_S: note when the farm detects the fault; lift it after its `hold_s` unless it
    has ended first (the farm restarted a hung instance, the burst is over); then time the
    recovery, for at most RETURN_TIMEOUT_S after `hold_s`. Lifted whatever happens."""
    ended_itself = False
    try:
        while time.time() < record.at + fault.hold_s + RETURN_TIMEOUT_S:
            if record.detected_at is None and fault.detected():
                record.detected_at = time.time()
            if record.lifted_at is None:
                ended_itself = fault.ended()
                if ended_itself or time.time() >= record.at + fault.hold_s:
                    if not ended_itself:
                        fault.lift()
                    record.lifted_at = time.time()
                    log.info("chaos: %s %s %s after %.1fs", record.kind, record.name,
                             "ended" if ended_itself else "lifted", record.lifted_at - record.at)
            elif fault.recovered():
                record.recovered_at = time.time()
                log.info("chaos: %s %s recovered %.1fs after it ended", record.kind, record.name,
                         record.recovered_at - record.lifted_at)
                break
            time.sleep(POLL_S)
        else:
            log.error("chaos: %s %s NOT recovered within %.0fs", record.kind, record.name, RETURN_TIMEOUT_S)
    finally:
        if record.lifted_at is None:  # an error mid-fault: never leave a stopped or cut-off process behind
            fault.lift()
            record.lifted_at = time.time()
    fault.settle(record, ended_itself)
