"""The chaos monkey: break the farm through the runtime's own interface (supervisord natively, the
Docker engine otherwise) and time what the farm does about it. CHAOS picks the fault:

- instances (the default): SIGKILL a random instance every K s; timed until it serves again.
- redis (REDIS=sentinel, native): SIGKILL the Redis PRIMARY; timed until the Sentinels name a new
  one and the balancer's /readyz answers 200.
- hang: SIGSTOP an instance for longer than the farm's liveness bound: the farm must take it out of
  the rotation, then restart it. If it has not within HANG_GIVE_UP_S, the chaos resumes it itself
  (SIGCONT) and the fault counts as not recovered.
- redis-stall (single Redis): SIGSTOP Redis for STALL_S, then SIGCONT - a store that stops answering
  but keeps its connections open, like a VM pause or a long blocking command.
- partition: cut one instance off from Redis for PARTITION_S (the runtime drops its packets).
- storm: a burst of registrations and logins while the users browse (loadtest.storm).
- mixed: hang, redis-stall, partition, storm and a kill, in turn.

The two kill modes run as they always have: a kill every K s, and kills may overlap. The others run
one fault at a time, start the next K s after the previous one started but no sooner than
STEADY_GAP_S after it recovered (calm on either side to compare with), start none in the last half
interval of the run, and always lift a fault they caused."""

import contextlib
import itertools
import logging
import math
import random
import threading
import time
from collections.abc import Callable

from farmctl.runtime import Capability, Farm
from farmctl.wait import answers, wait_until
from loadtest.ledger import Fault, Ledger
from loadtest.storm import Storm

log = logging.getLogger("chaos")

CLASSIC = ("instances", "redis")
MIXED = ("hang", "redis-stall", "partition", "storm", "kill")
MODES = (*CLASSIC, "hang", "redis-stall", "partition", "storm", "mixed")

RETURN_TIMEOUT_S = 30.0
#: The farm SIGKILLs an instance that has answered nothing for 10 s (farmctl.health); this leaves
#: it time to, and to be seen restarted.
HANG_GIVE_UP_S = 15.0
#: Longer than the app's bound on a store call (its answer within ~2 s), short enough not to be an outage.
STALL_S = 4.0
#: Long enough for the health checks to take the instance out (~1.5 s) and to see it held out.
PARTITION_S = 5.0
STORM_MAX_S = 30.0
STEADY_GAP_S = 3.0
POLL_S = 0.1


def refusal(farm: Farm, mode: str) -> str | None:
    """Why `farm` cannot take CHAOS=`mode` by design (None: it can)."""
    if mode not in MODES:
        return f"CHAOS must be one of {', '.join(MODES)}, not {mode!r}"
    if mode == "redis" and (not farm.config.sentinel or Capability.REDIS_FAILOVER not in farm.capabilities):
        return ("CHAOS=redis kills the Redis primary and needs a native farm with REDIS=sentinel "
                "(a replica and Sentinels to fail over to)")
    if mode in ("redis-stall", "mixed") and farm.config.sentinel:
        return (f"CHAOS={mode} stalls the one Redis of a single-Redis farm; with REDIS=sentinel a stall "
                f"of {STALL_S:g} s is a failover (CHAOS=redis)")
    if mode in ("partition", "mixed") and Capability.CUT_OFF not in farm.capabilities:
        return f"CHAOS={mode} cuts an instance off from Redis, which the {farm.name} runtime cannot do"
    if mode in ("hang", "partition", "mixed") and farm.config.instances < 2:
        return f"CHAOS={mode} takes an instance out and never the last one: it needs N=2 or more"
    return None


def mend(farm: Farm) -> None:
    """Undo whatever a fault may have left behind (a chaos that died mid-fault): resume stopped
    processes, reconnect instances cut off. Harmless on a healthy farm."""
    for name in [*farm.config.redis_nodes, *farm.instance_names()]:
        with contextlib.suppress(Exception):  # not running (restarting): nothing to resume
            farm.resume(name)
    for name in farm.instance_names():
        with contextlib.suppress(Exception):  # not cut off, or a runtime that cannot cut off
            farm.reconnect(name)


class Chaos:
    def __init__(self, farm: Farm, ledger: Ledger, every_s: float, signal: str = "KILL",
                 target: str = "instances", ends_at: float = math.inf) -> None:
        if every_s <= 0:
            raise ValueError("the kill interval must be positive")
        if why := refusal(farm, target):
            raise ValueError(why)
        self.farm = farm
        self.target = target
        self.ledger = ledger
        self.every_s = every_s
        self.signal = signal
        self.ends_at = ends_at
        self.kinds = itertools.cycle(MIXED if target == "mixed" else [target])
        self.down: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Start no new fault; let the one under way finish and the killed instances return (bounded)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(HANG_GIVE_UP_S + RETURN_TIMEOUT_S)
        wait_until(lambda: not self.down, 15, interval_s=0.2)

    def run(self) -> None:
        """Every `every_s` seconds, kill one instance that is serving (never the last one) - or the
        Redis primary, when a replica is in sync to take over - or cause the next fault of the mode."""
        faults: dict[str, Callable[[], None]] = {
            "kill": lambda: self._kill_instance(wait=True), "hang": self._hang, "redis-stall": self._redis_stall,
            "partition": self._partition, "storm": self._storm}
        due = time.time() + self.every_s
        while not self._stop.wait(max(0.0, due - time.time())):
            started = time.time()
            if self.target == "instances":
                self._kill_instance()
            elif self.target == "redis":
                self._kill_primary()
            elif started + self.every_s / 2 > self.ends_at:
                return
            else:
                try:
                    faults[next(self.kinds)]()
                except Exception:  # recorded as a fault never recovered: the run FAILs, the chaos goes on
                    log.exception("chaos: the fault could not be caused")
            due = max(started + self.every_s, time.time() + STEADY_GAP_S)

    # -- kills -----------------------------------------------------------------------------
    def _victim(self) -> str | None:
        alive = [n for n in self.farm.instance_names() if n not in self.down]
        if len(alive) < 2:
            log.info("chaos: skipping a fault, only %s is serving", alive)
            return None
        return random.choice(alive)

    def _kill_instance(self, wait: bool = False) -> None:
        if (victim := self._victim()) is None:
            return
        fault = self._kill(victim)
        if wait:
            self._await_return(fault)
        else:
            threading.Thread(target=self._await_return, args=(fault,), daemon=True).start()

    def _kill_primary(self) -> None:
        primary = self.farm.redis_primary()
        if self.down or primary is None or not self.farm.failover_ready():
            log.info("chaos: skipping a kill, no replica in sync with the primary (%s) yet", primary)
            return
        fault = self._kill(primary)
        threading.Thread(target=self._await_failover, args=(fault,), daemon=True).start()

    def _kill(self, victim: str) -> Fault:
        fault = self._inject("kill", victim, lambda: self.farm.kill(victim, self.signal), self.signal)
        fault.lifted_at = fault.at
        return fault

    def _await_return(self, fault: Fault) -> None:
        time.sleep(0.3)  # let the supervisor notice the death before asking whether it serves
        self._await(fault, lambda: self.farm.is_serving(fault.name), "serving again")

    def _await_failover(self, fault: Fault) -> None:
        def failed_over() -> bool:
            primary = self.farm.redis_primary()
            if primary is None or primary == fault.name:
                return False
            return answers(f"{self.farm.config.balancer_url}/readyz", 2)

        self._await(fault, failed_over, "replaced by a new primary")

    def _await(self, fault: Fault, back: Callable[[], bool], what: str) -> None:
        if wait_until(back, fault.at + RETURN_TIMEOUT_S - time.time()):
            fault.recovered_at = time.time()
            log.info("chaos: %s %s after %.1fs", fault.name, what, fault.recovered_at - fault.at)
        else:
            log.error("chaos: %s NOT %s within %.0fs", fault.name, what, RETURN_TIMEOUT_S)
        self.down.discard(fault.name)

    # -- gray faults -----------------------------------------------------------------------
    def _hang(self) -> None:
        if (victim := self._victim()) is None:
            return
        pid = self.farm.pid(victim)
        fault = self._inject("hang", victim, lambda: self.farm.pause(victim), "STOP")
        fault.restarted = self._watch(
            fault, HANG_GIVE_UP_S, lift=lambda: self.farm.resume(victim),
            ended=lambda: self.farm.pid(victim) not in (pid, 0),
            detected=lambda: victim in self.farm.out_of_rotation(), recovered=lambda: self._in_rotation(victim))

    def _partition(self) -> None:
        if (victim := self._victim()) is None:
            return
        fault = self._inject("partition", victim, lambda: self.farm.cut_off(victim))
        self._watch(fault, PARTITION_S, lift=lambda: self.farm.reconnect(victim),
                    detected=lambda: victim in self.farm.out_of_rotation(), recovered=lambda: self._in_rotation(victim))

    def _redis_stall(self) -> None:
        node = next(iter(self.farm.config.redis_nodes))
        fault = self._inject("redis-stall", node, lambda: self.farm.pause(node), "STOP")
        self._watch(fault, STALL_S, lift=lambda: self.farm.resume(node), recovered=self._store_answers)
        # Detected when the users were first told: the app's own 503 "session store unavailable".
        fault.detected_at = min((r.end for r in self.ledger.requests
                                 if r.status == 503 and r.served_by and r.end >= fault.sent_at), default=None)

    def _storm(self) -> None:
        storm = Storm(self.farm.config.balancer_url)
        burst = threading.Thread(target=storm.run, daemon=True)
        fault = self._inject("storm", "farm", burst.start)
        self._watch(fault, STORM_MAX_S, lift=storm.cancelled.set, ended=lambda: not burst.is_alive(),
                    recovered=lambda: all(self._in_rotation(n) for n in self.farm.instance_names()))
        burst.join()
        fault.detected_at = storm.first_refused_at
        fault.counts = storm.summary()
        log.info("chaos: storm %s", fault.counts)

    def _inject(self, kind: str, victim: str, act: Callable[[], object], signal: str = "") -> Fault:
        sent_at = time.time()
        try:
            act()
        except Exception:
            self.ledger.faults.append(Fault(kind, victim, sent_at, sent_at, signal, lifted_at=time.time()))
            raise
        fault = Fault(kind, victim, time.time(), sent_at, signal)
        self.ledger.faults.append(fault)
        self.down.add(victim)
        log.info("chaos: %s %s at +%.1fs", f"SIG{signal}" if signal else kind, victim,
                 fault.at - self.ledger.started_at)
        return fault

    def _watch(self, fault: Fault, hold_s: float, lift: Callable[[], object], recovered: Callable[[], bool],
               detected: Callable[[], bool] | None = None, ended: Callable[[], bool] | None = None) -> bool:
        """Every POLL_S: note when the farm detects the fault; lift it after `hold_s` unless it has
        ended first (`ended`: the farm restarted a hung instance, the burst is over); then time the
        recovery. Returns whether it ended without the chaos lifting it. Lifted whatever happens."""
        ended_itself = False
        try:
            while time.time() < fault.at + hold_s + RETURN_TIMEOUT_S:
                if fault.detected_at is None and detected and detected():
                    fault.detected_at = time.time()
                if fault.lifted_at is None:
                    ended_itself = bool(ended and ended())
                    if ended_itself or time.time() >= fault.at + hold_s:
                        if not ended_itself:
                            lift()
                        fault.lifted_at = time.time()
                        log.info("chaos: %s %s %s after %.1fs", fault.kind, fault.name,
                                 "ended" if ended_itself else "lifted", fault.lifted_at - fault.at)
                elif recovered():
                    fault.recovered_at = time.time()
                    log.info("chaos: %s %s recovered %.1fs after it ended", fault.kind, fault.name,
                             fault.recovered_at - fault.lifted_at)
                    return ended_itself
                time.sleep(POLL_S)
            log.error("chaos: %s %s NOT recovered within %.0fs", fault.kind, fault.name, RETURN_TIMEOUT_S)
            return ended_itself
        finally:
            if fault.lifted_at is None:  # an error mid-fault: never leave a stopped or cut-off process behind
                lift()
                fault.lifted_at = time.time()
            self.down.discard(fault.name)

    def _in_rotation(self, name: str) -> bool:
        return name not in self.farm.out_of_rotation() and self.farm.is_serving(name)

    def _store_answers(self) -> bool:
        return answers(f"{self.farm.config.balancer_url}/readyz", 3)
