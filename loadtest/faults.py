"""The kinds of fault the chaos can cause, one class each, and the CHAOS modes made of them.

A kind says which farms can take it (`refusal`), whom it hits (`pick_victim`), how to cause and lift
it, when the farm has detected it and recovered from it, and how long the chaos holds it. One
instance of the class is one fault: it keeps what that fault needs to be lifted and judged.
Adding a kind is a class here and its place in FAULT_KINDS; it then is a CHAOS mode of its own
(`standalone`), and part of CHAOS=mixed (`in_mixed`)."""

import contextlib
import logging
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass
from typing import ClassVar

from farmctl.health import LIVENESS_S
from farmctl.runtime import Capability, Farm
from farmctl.wait import answers
from loadtest.ledger import Fault, Ledger
from loadtest.storm import Storm

log = logging.getLogger("chaos")

#: How long after it ends (at once for a kill) a fault may take to be recovered from.
RETURN_TIMEOUT_S = 30.0
#: Before asking whether a killed instance serves again: time for it to die (SIGTERM: uvicorn
#: finishes what it has) and for the supervisor to notice.
KILL_SETTLE_S = 0.3


@dataclass(frozen=True)
class Scene:
    """What a fault may need of the run: the farm, the ledger, the signal the kills send."""

    farm: Farm
    ledger: Ledger
    signal: str = "KILL"


def _serving_instance(farm: Farm, busy: Collection[str]) -> str | None:
    """A random instance no fault holds - never the last one serving."""
    alive = [n for n in farm.instance_names() if n not in busy]
    if len(alive) < 2:
        log.info("chaos: skipping a fault, only %s is serving", alive)
        return None
    return random.choice(alive)


def _in_rotation(farm: Farm, name: str) -> bool:
    return name not in farm.out_of_rotation() and farm.is_serving(name)


def _store_answers(farm: Farm) -> bool:
    return answers(f"{farm.config.balancer_url}/readyz", 3)


class FaultKind(ABC):
    """One kind of fault. Subclasses set the class variables and override what differs."""

    #: As the ledger and the summary record it; also its CHAOS mode's name if `standalone`.
    name: ClassVar[str]
    #: Its colour on the report's timeline.
    colour: ClassVar[str]
    #: Whom it hits, for the run's description ("a SIGKILL to an instance").
    target: ClassVar[str] = "an instance"
    #: How long the chaos holds it before lifting it (unless it ends first, see `ended`); one fault
    #: may be held for another time (the console's "hang for N s").
    hold_s: float = 0.0
    #: It ends as it is caused (a kill): nothing to lift; a line on the timeline, not a span.
    instant: ClassVar[bool] = False
    #: CHAOS=<name> runs this kind alone, one fault at a time.
    standalone: ClassVar[bool] = True
    #: CHAOS=mixed includes it.
    in_mixed: ClassVar[bool] = True

    def __init__(self, scene: Scene, victim: str, hold_s: float | None = None) -> None:
        self.scene = scene
        self.farm = scene.farm
        self.victim = victim
        if hold_s is not None:
            self.hold_s = hold_s

    @classmethod
    def refusal(cls, farm: Farm) -> str | None:
        """Why `farm` cannot take this fault by design, as "CHAOS=x <reason>" completes it; None: it can."""
        return None

    @classmethod
    def pick_victim(cls, farm: Farm, busy: Collection[str]) -> str | None:
        """Whom the next fault hits, `busy` being held by faults under way; None: skip this one."""
        return _serving_instance(farm, busy)

    @classmethod  # noqa: B027 - most kinds leave nothing behind
    def mend(cls, farm: Farm) -> None:
        """Undo what a fault of this kind may have left behind (a chaos that died mid-fault);
        harmless on a healthy farm."""

    @property
    def signal(self) -> str:
        """The signal it sends, for the ledger and the log ("" for none)."""
        return ""

    @abstractmethod
    def inject(self) -> None: ...

    def lift(self) -> None:  # noqa: B027 - a kill or a storm has nothing to undo
        """End the fault (called once its `hold_s` is up, unless it `ended` itself)."""

    def ended(self) -> bool:
        """It ended before its time without the chaos (the farm restarted a hung instance)."""
        return False

    def detected(self) -> bool:
        return False

    @abstractmethod
    def recovered(self) -> bool:
        """The farm serves normally again (asked only once the fault has ended)."""

    def settle(self, fault: Fault, ended_itself: bool) -> None:  # noqa: B027 - most records are complete
        """Complete the record once the fault is over and recovered from (or given up on)."""


class Kill(FaultKind):
    """SIGKILL (or KILL_SIGNAL) an instance; recovered when it serves again (the supervisor restarts it)."""

    name = "kill"
    colour = "#d62728"
    instant = True
    standalone = False  # CHAOS=instances: a kill every K s, overlapping

    @property
    def signal(self) -> str:
        return self.scene.signal

    def inject(self) -> None:
        self.farm.kill(self.victim, self.signal)
        self._settled_at = time.time() + KILL_SETTLE_S

    def recovered(self) -> bool:
        return time.time() >= self._settled_at and self.farm.is_serving(self.victim)


class PrimaryKill(Kill):
    """SIGKILL the Redis primary (on a cluster: one of its primaries), recorded as a kill; recovered
    when another node is primary in its place (named by the Sentinels; on a cluster, every slot
    served by a primary again) and the balancer's /readyz answers 200."""

    target = "the Redis primary"
    in_mixed = False  # CHAOS=redis

    @classmethod
    def refusal(cls, farm: Farm) -> str | None:
        if not (farm.config.sentinel or farm.config.cluster) or Capability.REDIS_FAILOVER not in farm.capabilities:
            return ("kills the Redis primary and needs a native farm with REDIS=sentinel or REDIS=cluster "
                    "(a replica to fail over to)")
        return None

    @classmethod
    def pick_victim(cls, farm: Farm, busy: Collection[str]) -> str | None:
        primary = farm.redis_primary()
        if busy or primary is None or not farm.failover_ready():
            log.info("chaos: skipping a kill, no replica in sync with the primary (%s) yet", primary)
            return None
        return primary

    def inject(self) -> None:
        self.farm.kill(self.victim, self.signal)

    def recovered(self) -> bool:
        primary = self.farm.redis_primary()
        return primary is not None and primary != self.victim and _store_answers(self.farm)


def _needs_two_instances(farm: Farm) -> str | None:
    if farm.config.instances < 2:
        return "takes an instance out and never the last one: it needs N=2 or more"
    return None


class Paused(FaultKind):
    """A process frozen (SIGSTOP) for the fault, resumed (SIGCONT) when it is lifted."""

    @property
    def signal(self) -> str:
        return "STOP"

    def inject(self) -> None:
        self.farm.pause(self.victim)

    def lift(self) -> None:
        self.farm.resume(self.victim)


class Hang(Paused):
    """SIGSTOP an instance for longer than the farm's liveness bound: the farm must take it out of
    the rotation, then restart it. If it has not when `hold_s` is up, the chaos resumes it
    (SIGCONT) and the fault counts as not recovered."""

    name = "hang"
    colour = "#9467bd"
    #: The farm SIGKILLs an instance that has answered nothing for 10 s (farmctl/native/health.py);
    #: this leaves it time to, and to be seen restarted.
    hold_s = 15.0

    def __init__(self, scene: Scene, victim: str, hold_s: float | None = None) -> None:
        super().__init__(scene, victim, hold_s)
        self.pid = self.farm.pid(victim)

    @classmethod
    def refusal(cls, farm: Farm) -> str | None:
        return _needs_two_instances(farm)

    @classmethod
    def mend(cls, farm: Farm) -> None:
        for name in farm.instance_names():
            with contextlib.suppress(Exception):  # not running (restarting): nothing to resume
                farm.resume(name)

    def ended(self) -> bool:
        return self.farm.pid(self.victim) not in (self.pid, 0)

    def detected(self) -> bool:
        return self.victim in self.farm.out_of_rotation()

    def recovered(self) -> bool:
        return _in_rotation(self.farm, self.victim)

    def settle(self, fault: Fault, ended_itself: bool) -> None:
        # A hang shorter than the liveness bound is not the farm's to end: it only has to hold it out.
        fault.restarted = ended_itself if self.hold_s > LIVENESS_S else None


class RedisStall(Paused):
    """SIGSTOP the one Redis for `hold_s`, then SIGCONT: a store that stops answering but keeps its
    connections open, like a VM pause or a long blocking command."""

    name = "redis-stall"
    colour = "#8c564b"
    target = "Redis"
    #: Longer than the app's bound on a store call (its answer within ~2 s), short enough not to be an outage.
    hold_s = 4.0

    @classmethod
    def refusal(cls, farm: Farm) -> str | None:
        if farm.config.sentinel or farm.config.cluster:
            return (f"stalls the one Redis of a single-Redis farm; with REDIS={farm.config.redis_mode} a stall "
                    f"of {cls.hold_s:g} s is a failover (CHAOS=redis)")
        return None

    @classmethod
    def pick_victim(cls, farm: Farm, busy: Collection[str]) -> str | None:
        return next(iter(farm.config.redis_nodes))

    @classmethod
    def mend(cls, farm: Farm) -> None:
        for name in farm.config.redis_nodes:
            with contextlib.suppress(Exception):
                farm.resume(name)

    def recovered(self) -> bool:
        return _store_answers(self.farm)

    def settle(self, fault: Fault, ended_itself: bool) -> None:
        # Detected when the users were first told: the app's own 503 "session store unavailable".
        fault.detected_at = min((r.end for r in self.scene.ledger.requests
                                 if r.status == 503 and r.served_by and r.end >= fault.sent_at), default=None)


class Partition(FaultKind):
    """Cut one instance off from Redis for `hold_s` (the runtime drops its packets)."""

    name = "partition"
    colour = "#17becf"
    #: Long enough for the health checks to take the instance out (~1.5 s) and to see it held out.
    hold_s = 5.0

    @classmethod
    def refusal(cls, farm: Farm) -> str | None:
        if Capability.CUT_OFF not in farm.capabilities:
            return f"cuts an instance off from Redis, which the {farm.name} runtime cannot do"
        return _needs_two_instances(farm)

    @classmethod
    def mend(cls, farm: Farm) -> None:
        for name in farm.instance_names():
            with contextlib.suppress(Exception):  # not cut off
                farm.reconnect(name)

    def inject(self) -> None:
        self.farm.cut_off(self.victim)

    def lift(self) -> None:
        self.farm.reconnect(self.victim)

    def detected(self) -> bool:
        return self.victim in self.farm.out_of_rotation()

    def recovered(self) -> bool:
        return _in_rotation(self.farm, self.victim)


class LoginStorm(FaultKind):
    """A burst of registrations and logins while the users browse (loadtest.storm); detected at
    its first refusal, recovered when the burst is over and every instance is in the rotation."""

    name = "storm"
    colour = "#ff7f0e"
    target = "the farm"
    hold_s = 30.0

    def __init__(self, scene: Scene, victim: str, hold_s: float | None = None) -> None:
        super().__init__(scene, victim, hold_s)
        self.storm = Storm(self.farm.config.balancer_url)
        self.burst = threading.Thread(target=self.storm.run, daemon=True)

    @classmethod
    def pick_victim(cls, farm: Farm, busy: Collection[str]) -> str | None:
        return "farm"

    def inject(self) -> None:
        self.burst.start()

    def lift(self) -> None:
        self.storm.cancelled.set()

    def ended(self) -> bool:
        return not self.burst.is_alive()

    def recovered(self) -> bool:
        return all(_in_rotation(self.farm, n) for n in self.farm.instance_names())

    def settle(self, fault: Fault, ended_itself: bool) -> None:
        self.burst.join()
        fault.detected_at = self.storm.first_refused_at
        fault.counts = self.storm.summary()
        log.info("chaos: storm %s", fault.counts)


#: Every kind, in CHAOS=mixed's order.
FAULT_KINDS: tuple[type[FaultKind], ...] = (Hang, RedisStall, Partition, LoginStorm, Kill, PrimaryKill)


def recorded_as(name: str) -> type[FaultKind]:
    """The kind of a fault the ledger recorded under `name` (a kill of the primary is a kill)."""
    return next(kind for kind in FAULT_KINDS if kind.name == name)


@dataclass(frozen=True)
class ChaosMode:
    """What CHAOS=`name` causes: `kinds` in turn, every K s. `overlapping`: each fault is watched
    in the background, so kills may overlap and run to the end; otherwise one fault at a time,
    with calm on either side, none in the run's last half interval."""

    name: str
    kinds: tuple[type[FaultKind], ...]
    overlapping: bool = False

    def refusal(self, farm: Farm) -> str | None:
        """Why `farm` cannot take this mode by design (None: it can)."""
        for kind in self.kinds:
            if why := kind.refusal(farm):
                return f"CHAOS={self.name} {why}"
        return None

    def mend(self, farm: Farm) -> None:
        """Undo whatever this mode's faults may have left behind (see `FaultKind.mend`)."""
        for kind in self.kinds:
            kind.mend(farm)


INSTANCES = ChaosMode("instances", (Kill,), overlapping=True)
REDIS = ChaosMode("redis", (PrimaryKill,), overlapping=True)
MIXED = ChaosMode("mixed", tuple(kind for kind in FAULT_KINDS if kind.in_mixed))
#: Every CHAOS mode by name, in the order `make help` lists them.
MODES: dict[str, ChaosMode] = {mode.name: mode for mode in (
    INSTANCES, REDIS, *(ChaosMode(kind.name, (kind,)) for kind in FAULT_KINDS if kind.standalone), MIXED)}


def chaos_mode(name: str) -> ChaosMode:
    """The mode CHAOS=`name` names; ValueError for another name."""
    if name not in MODES:
        raise ValueError(f"CHAOS must be one of {', '.join(MODES)}, not {name!r}")
    return MODES[name]
