"""The bench's figures as they cross files: bench-summary.json, built by bench.report, written by
`python -m bench`, read by its table and chart, the tests and docs/. One model, one JSON shape."""

import json
from pathlib import Path
from typing import Self

from pydantic import BaseModel, Field

#: Calls per request by Redis command; CPU microseconds per request by process group (bench.report.CPU_GROUPS).
PerCommand = dict[str, float]
PerGroup = dict[str, float]


class Machine(BaseModel):
    nproc: int
    cpu_model: str
    kernel: str
    python: str
    wrk: str


class Settings(BaseModel):
    rounds: int
    duration: str
    connections: int
    threads: int
    instances: int
    warmup: str
    rate: float


class WrkRound(BaseModel):
    rps: float
    p50_ms: float
    p99_ms: float
    socket_errors: int
    cpu_busy: float


class FixedRateRound(BaseModel):
    p50_ms: float
    p99_ms: float
    max_ms: float
    achieved_rps: float


class FixedRate(BaseModel):
    """The open-loop measurement of one configuration: medians over rounds, and each round."""

    achieved_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    lag_p50_ms: float
    lag_p99_ms: float
    connections: int
    rounds: list[FixedRateRound]


class FixedRateRow(FixedRate):
    label: str


class Result(BaseModel):
    """One configuration: medians over rounds of wrk's figures, its CPU and its Redis commands."""

    label: str
    system: str
    url: str
    behind_nginx: int | None
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_busy: float
    cpu_us_per_request: PerGroup
    redis_commands_per_request: PerCommand
    redis_commands_total: float
    redis_scripts_per_request: float
    rounds: list[WrkRound]
    #: Only for the configurations also measured open loop.
    fixed_rate: FixedRate | None = Field(default=None, exclude_if=lambda value: value is None)


class Latency(BaseModel):
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


class ModeFigures(BaseModel):
    """One session mode: the ratio issue #12 sets a goal for, and what one authenticated request costs."""

    label: str
    instance_env: dict[str, str]
    healthz_rps: float
    me_rps: float
    session_ratio: float
    goal: float
    direct_me_rps: float
    direct_session_ratio: float
    redis_commands_per_request: PerCommand
    redis_commands_total: float
    redis_scripts_per_request: float
    cpu_us_per_request: PerGroup
    cpu_us_per_request_healthz: PerGroup
    fixed_rate: Latency
    #: Against the floor this mode is bounded by (bench.floors; near: the bare app, exact: the bare
    #: app plus one EVALSHA), one process direct and through nginx; 0 in summaries from before.
    floor: str = ""
    floor_ratio_direct: float = 0.0
    floor_ratio_nginx: float = 0.0
    floor_goal: float = 0.0


class PeerRow(BaseModel):
    rps: float
    ratio_vs_webfarm: float
    redis_commands_total: float
    redis_commands_per_request: PerCommand
    cpu_us_per_request: PerGroup
    fixed_rate_p50_ms: float
    fixed_rate_p99_ms: float


class ScalingRow(BaseModel):
    instances: int
    healthz_rps: float
    me_rps: float
    healthz_vs_one: float
    me_vs_one: float
    cpu_busy: float


class SlowestPeak(BaseModel):
    key: str
    rps: float
    rate_share: float


class FixedRateSummary(BaseModel):
    rate: float
    seconds: float
    measured_by: str
    slowest_peak: SlowestPeak
    rows: dict[str, FixedRateRow]


class SectionRow(BaseModel):
    key: str
    ratio: float


class Section(BaseModel):
    """A comparison: each row's throughput against the first's."""

    title: str
    baseline: str
    rows: list[SectionRow]


class BenchSummary(BaseModel):
    machine: Machine
    settings: Settings
    runtime_s: float
    balancer_ratio: float
    balancer_ratio_one_connection: float
    balancer_latency_us: int
    modes: dict[str, ModeFigures]
    redis_vs_memory_ratio: dict[str, float]
    #: mode -> the share of GET /api/me's throughput the instance's metrics cost (1 - with/without);
    #: empty in summaries from before they were measured.
    metrics_cost: dict[str, float] = {}
    #: Exact mode's GET /api/me on a Redis Cluster against one Redis (direct, through nginx); empty in
    #: summaries from before it was measured.
    cluster_vs_single: dict[str, float] = {}
    background_cpu_share: float
    redis_background_per_s: dict[str, PerCommand]
    scaling: list[ScalingRow]
    scaling_note: str
    peers: dict[str, dict[str, PeerRow]]
    fixed_rate: FixedRateSummary
    sections: list[Section]
    #: Every configuration by its key ("nginx-3/me").
    results: dict[str, Result]

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> Self:
        return cls.model_validate_json(path.read_text())
