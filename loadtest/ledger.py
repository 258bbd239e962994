"""What the load test saw: every request with its verdict, every fault the chaos caused and how the farm coped.

Pure bookkeeping, no Locust here: the locustfile records into a Ledger, the report reads it."""

import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
from pydantic import TypeAdapter


class Outcome(StrEnum):
    OK = "ok"
    #: 401 (or a redirect to the login page) for a user who logged in and never logged out.
    SESSION_LOST = "session_lost"
    #: The answer belongs to ANOTHER user: the worst failure a session layer can have.
    MIXUP = "mixup"
    #: An add the server confirmed is missing from the cart.
    LOST_UPDATE = "lost_update"
    #: The cart holds more than was added, even counting the indeterminate adds.
    PHANTOM_UPDATE = "phantom_update"
    #: 5xx or a broken connection that cannot be blamed on a fault.
    REQUEST_ERROR = "request_error"
    #: A non-idempotent request in flight on an instance when it was killed or hung (as Jepsen
    #: counts a request cut off by a crash), or refused by the app with 503 + Retry-After after it
    #: may have reached the store, and still so after the client's retries with the same
    #: Idempotency-Key: it may or may not have been applied, and the cart check allows both.
    INDETERMINATE = "indeterminate"


#: Outcomes that make the run FAIL: the guarantees of a shared session store.
BROKEN_PROMISES = (Outcome.SESSION_LOST, Outcome.MIXUP, Outcome.LOST_UPDATE, Outcome.PHANTOM_UPDATE)

#: A request "was in flight at a fault" if it ended after the fault was sent and started no later
#: than this after the fault ended (a kill ends at once, when the supervisor confirms it).
FAULT_SLACK_S = 0.2


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (a latency that was actually measured); 0 for no values."""
    return float(np.percentile(values, q, method="inverted_cdf")) if values else 0.0


@dataclass
class RequestRecord:
    start: float
    end: float
    method: str
    name: str
    status: int
    served_by: str
    outcome: str


@dataclass
class Fault:
    """One fault the chaos caused (see loadtest.chaos) and what the farm did about it; epoch seconds.

    `at`: in place (`sent_at`: asked for); `detected_at`: the farm noticed (the victim left the
    rotation, the app answered 503); `lifted_at`: the fault ended (a kill at once; a hang when the
    farm restarted the instance, or when the chaos resumed it itself; a stall or partition when the
    chaos lifted it; a storm at its last answer); `recovered_at`: everything served normally again."""

    kind: str  # the name of its loadtest.faults.FaultKind
    name: str  # the victim: an instance, a Redis node, or "farm" for a storm
    at: float
    sent_at: float
    signal: str = ""
    detected_at: float | None = None
    lifted_at: float | None = None
    recovered_at: float | None = None
    #: hang: whether the farm restarted the instance (False: the chaos had to resume it; None: a hang
    #: shorter than the liveness bound, which the farm only has to hold out of the rotation).
    restarted: bool | None = None
    #: storm: its requests admitted / refused / failed, per path.
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def recovered(self) -> bool:
        """Serving normally again - for a hang, only after the farm restarted it (its liveness check)."""
        return self.recovered_at is not None and self.restarted is not False


@dataclass(frozen=True)
class RunSettings:
    """How the chaos was set: its CHAOS mode's name, and the interval and signal of its faults."""

    chaos: str = "instances"
    kill_every_s: float | None = None
    kill_signal: str | None = None


@dataclass
class Ledger:
    """Written by the locustfile (ledger.json), read by loadtest.run for the summary."""

    started_at: float = 0.0
    stopped_at: float = 0.0
    settings: RunSettings = field(default_factory=RunSettings)
    requests: list[RequestRecord] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)

    def in_flight_at_fault(self, start: float, end: float) -> bool:
        """Did the request overlap a fault (still going on, if it has not been lifted yet)?"""
        return any(start <= (math.inf if f.lifted_at is None else f.lifted_at) + FAULT_SLACK_S and end >= f.sent_at
                   for f in self.faults)

    def classify_error(self, method: str, start: float, end: float, served_by: str,
                       retry_after: bool = False) -> Outcome:
        """A 5xx or broken connection: indeterminate if it was a POST of unknown fate.

        That is an answer no instance signed (no X-Served-By: nginx's own "no instance available")
        to a POST in flight at a fault, or the app's own 503 with Retry-After (its store did not
        answer in time, perhaps after the write); any other 5xx is an error of that instance."""
        refused_by_app = bool(served_by) and retry_after
        cut_off = not served_by and self.in_flight_at_fault(start, end)
        if method != "GET" and (refused_by_app or cut_off):
            return Outcome.INDETERMINATE
        return Outcome.REQUEST_ERROR

    def settled(self, start: float, end: float, at: float) -> bool:
        """Whether, at `at`, every fault a request from `start` to `end` overlapped is over (lifted
        FAULT_SLACK_S ago): what it left behind - a request in a frozen instance's socket, a command
        in a stalled Redis's - has been applied by then, or never will be."""
        return all(f.lifted_at is not None and f.lifted_at + FAULT_SLACK_S <= at for f in self.faults
                   if start <= (math.inf if f.lifted_at is None else f.lifted_at) + FAULT_SLACK_S
                   and end >= f.sent_at)

    def record(self, start: float, end: float, method: str, name: str, status: int, served_by: str,
               outcome: Outcome) -> None:
        self.requests.append(RequestRecord(start, end, method, name, status, served_by, outcome.value))

    def outcomes(self) -> Counter[str]:
        return Counter(r.outcome for r in self.requests)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> "Ledger":
        return TypeAdapter(cls).validate_json(path.read_text())


@dataclass(frozen=True)
class Pending:
    """An add of unknown fate, and the span of its request."""

    sku: str
    qty: int
    start: float
    end: float


@dataclass
class CartBook:
    """What one user knows about its own cart: confirmed adds, and adds of unknown fate."""

    confirmed: Counter[str] = field(default_factory=Counter)
    pending: list[Pending] = field(default_factory=list)

    def check(self, actual: dict[str, int], settled: Callable[[Pending], bool] = lambda _: True) -> Outcome:
        """Compare the server's cart with the book, then believe the server for what comes next.

        An add of unknown fate may show up, or not; once it is `settled` (the faults it met are
        over: see Ledger.settled), one that has not shown up never will. Until then it may still
        be applied - a request held by a frozen instance, or by a stalled Redis, is applied when
        that one resumes - and it stays pending."""
        outcome = Outcome.OK
        maybe: Counter[str] = Counter()
        for add in self.pending:
            maybe[add.sku] += add.qty
        for sku in set(self.confirmed) | set(actual):
            have, want = actual.get(sku, 0), self.confirmed[sku]
            if have < want:
                outcome = Outcome.LOST_UPDATE
            elif have > want + maybe[sku] and outcome is Outcome.OK:
                outcome = Outcome.PHANTOM_UPDATE
            self.confirmed[sku] = have
        self.pending = [add for add in self.pending if not settled(add)]
        return outcome
