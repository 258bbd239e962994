"""The load test's verdict as it crosses files: summary.json, written by loadtest.run and read by the
report, `make compare`, the tests and the committed examples in docs/. One model, one JSON shape."""

import json
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, Field, RootModel

from loadtest.ledger import Outcome


class FaultRow(BaseModel):
    """One fault and what the users saw from its start to its recovery (seconds; None: never)."""

    kind: str
    name: str
    at_s: float
    detect_s: float | None
    lasted_s: float | None
    recover_s: float | None
    recovered: bool
    restarted: bool | None
    requests: int
    failed: int
    failures: dict[Outcome, int]
    app_503: int
    p99_ms: float
    #: A storm's requests admitted / refused / failed per path (loadtest.storm); absent for the other kinds.
    storm: dict[str, int] | None = Field(default=None, exclude_if=lambda counts: counts is None)


class InstanceCounts(BaseModel):
    """One instance over the run, as its Prometheus counted it (the probes' routes left out)."""

    requests: int
    errors_5xx: int
    #: The highest p99 of its latency histogram over any rate window of the run (None: no requests).
    max_p99_ms: float | None


class ServerSide(BaseModel):
    """The run as the farm's Prometheus saw it (loadtest.serverside); without one, or one that did
    not answer, `reachable` is false, `note` says why and there are no figures."""

    prometheus: str | None = None
    reachable: bool
    note: str = ""
    rate_window_s: float | None = None
    requests: int | None = None
    instances: dict[str, InstanceCounts] = {}


class LoadSummary(BaseModel):
    """One run. The fields after `p99_steady_ms` came with the gray faults, `server_side` with the
    farm's Prometheus: older summaries lack them."""

    verdict: Literal["PASS", "FAIL"]
    session_backend: str | None = None
    balance: str | None = None
    redis: str | None = None
    runtime: str | None = None
    duration_s: float
    users: int
    instances: int
    chaos: str
    kill_every_s: float | None
    kill_signal: str | None
    kills: int
    returns: int
    unreturned: int
    return_times_s: list[float]
    max_return_s: float | None
    requests: int
    failures: dict[Outcome, int]
    sessions_lost: int
    mixups: int
    lost_updates: int
    per_instance: dict[str, int]
    rps: float
    p50_ms: float
    p99_ms: float
    p99_after_kill_ms: float
    p99_steady_ms: float
    unrecovered: int = 0
    faults: list[FaultRow] = []
    p99_between_faults_ms: float | None = None
    server_side: ServerSide | None = None

    @property
    def passed(self) -> bool:
        return self.verdict == "PASS"

    def write(self, path: Path) -> None:
        write_json(self, path)

    @classmethod
    def read(cls, path: Path) -> Self:
        return cls.model_validate_json(path.read_text())


class Comparison(RootModel[dict[str, LoadSummary]]):
    """`make compare`'s summary.json: one run per setup, by the setup's name."""

    def write(self, path: Path) -> None:
        write_json(self, path)

    @classmethod
    def read(cls, path: Path) -> Self:
        return cls.model_validate_json(path.read_text())


def write_json(model: BaseModel, path: Path) -> None:
    """Indented as the summaries always were (json.dumps), so a new one diffs cleanly against docs/."""
    path.write_text(json.dumps(model.model_dump(mode="json"), indent=2) + "\n")
