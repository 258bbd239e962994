"""What the load test saw: every request with its verdict, every kill and return.

Pure bookkeeping, no Locust here: the locustfile records into a Ledger, the report reads it."""

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path


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
    #: 5xx or a broken connection that cannot be blamed on a kill.
    REQUEST_ERROR = "request_error"
    #: A non-idempotent request in flight on an instance when it was killed (as Jepsen counts a
    #: request cut off by a crash): it may or may not have been applied, and the cart check allows both.
    INDETERMINATE = "indeterminate"


#: Outcomes that make the run FAIL: the guarantees of a shared session store.
BROKEN_PROMISES = (Outcome.SESSION_LOST, Outcome.MIXUP, Outcome.LOST_UPDATE, Outcome.PHANTOM_UPDATE)

#: A request "was in flight at a kill" if it ended after the kill was sent and started no later
#: than this after the supervisor confirmed it.
KILL_SLACK_S = 0.2


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
class KillRecord:
    name: str
    signal: str
    at: float
    sent_at: float
    returned_at: float | None = None


@dataclass
class Ledger:
    started_at: float = 0.0
    stopped_at: float = 0.0
    settings: dict[str, object] = field(default_factory=dict)
    requests: list[RequestRecord] = field(default_factory=list)
    kills: list[KillRecord] = field(default_factory=list)

    def in_flight_at_kill(self, start: float, end: float) -> bool:
        return any(start <= k.at + KILL_SLACK_S and end >= k.sent_at for k in self.kills)

    def classify_error(self, method: str, start: float, end: float, served_by: str) -> Outcome:
        """A 5xx or broken connection: indeterminate if it was a POST cut off by a kill.

        Only answers that no instance signed (no X-Served-By: nginx's own "no instance available")
        qualify; a 5xx that an instance sent itself is an error of that instance."""
        if method != "GET" and not served_by and self.in_flight_at_kill(start, end):
            return Outcome.INDETERMINATE
        return Outcome.REQUEST_ERROR

    def record(self, start: float, end: float, method: str, name: str, status: int, served_by: str,
               outcome: Outcome) -> None:
        self.requests.append(RequestRecord(start, end, method, name, status, served_by, outcome.value))

    def outcomes(self) -> Counter[str]:
        return Counter(r.outcome for r in self.requests)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> "Ledger":
        raw = json.loads(path.read_text())
        return cls(
            started_at=raw["started_at"],
            stopped_at=raw["stopped_at"],
            settings=raw["settings"],
            requests=[RequestRecord(**r) for r in raw["requests"]],
            kills=[KillRecord(**k) for k in raw["kills"]],
        )


@dataclass
class CartBook:
    """What one user knows about its own cart: confirmed adds, and adds of unknown fate."""

    confirmed: Counter[str] = field(default_factory=Counter)
    uncertain: Counter[str] = field(default_factory=Counter)

    def check(self, actual: dict[str, int]) -> Outcome:
        """Compare the server's cart with the book, then believe the server for what comes next."""
        outcome = Outcome.OK
        for sku in set(self.confirmed) | set(actual):
            have, want, maybe = actual.get(sku, 0), self.confirmed[sku], self.uncertain[sku]
            if have < want:
                outcome = Outcome.LOST_UPDATE
            elif have > want + maybe and outcome is Outcome.OK:
                outcome = Outcome.PHANTOM_UPDATE
            # An indeterminate add that shows up was applied after all; one that does not, was not.
            self.uncertain[sku] = 0
            self.confirmed[sku] = have
        return outcome
