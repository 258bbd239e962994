"""The load test seen from the servers: what the farm's Prometheus (monitoring/) counted and timed of a
run, per instance - next to what the users saw (the ledger).

Over the run's window, at each scrape: every instance's request rate, 5xx rate and p99 (from its
latency histogram); and over the whole run its exact request count, from the raw counter samples.
The health loop's and the chaos's probes (/healthz, /readyz) are left out, as the ledger has none."""

import math
import time
from dataclasses import dataclass, field
from typing import Literal

import httpx
from pydantic import BaseModel, ValidationError

from farmctl.config import FarmConfig
from farmctl.render import SCRAPE_INTERVAL_S
from farmctl.wait import wait_until
from loadtest.summary import InstanceCounts, ServerSide

#: rate()'s window: the shortest that still holds two samples when one scrape in it is missed (a
#: hung or restarting instance's, or a late one on a busy machine), so the rate stays defined;
#: a longer one (the recording rules' 1m) would smear a fault of a few seconds over a 30 s run.
RATE_WINDOW_S = 3 * SCRAPE_INTERVAL_S
#: What the health loop and the chaos ask every instance, not the users.
PROBE_ROUTES = ("/healthz", "/readyz")
SELECTOR = f'job="webfarm", route!~"{"|".join(PROBE_ROUTES)}"'
RATE = f"sum by (farm_instance) (rate(webfarm_http_requests_total{{{SELECTOR}}}[{RATE_WINDOW_S}s]))"
ERRORS = f'sum by (farm_instance) (rate(webfarm_http_requests_total{{{SELECTOR}, code=~"5.."}}[{RATE_WINDOW_S}s]))'
P99 = (f"histogram_quantile(0.99, sum by (farm_instance, le) "
       f"(rate(webfarm_http_request_duration_seconds_bucket{{{SELECTOR}}}[{RATE_WINDOW_S}s])))")
COUNTER = f"webfarm_http_requests_total{{{SELECTOR}}}"
#: How long to wait after the run for a scrape of every instance that carries its last requests.
LAST_SCRAPE_TIMEOUT_S = 3 * SCRAPE_INTERVAL_S
TIMEOUT_S = 5.0

Samples = list[tuple[float, float]]


class PrometheusError(Exception):
    """The farm's Prometheus did not answer a query, or answered it with an error."""


class _Series(BaseModel):
    metric: dict[str, str]
    values: list[tuple[float, str]] = []
    value: tuple[float, str] | None = None


class _Data(BaseModel):
    resultType: Literal["matrix", "vector"]
    result: list[_Series]


class _Answer(BaseModel):
    """The HTTP API's envelope (https://prometheus.io/docs/prometheus/latest/querying/api/)."""

    status: Literal["success", "error"]
    data: _Data | None = None
    error: str = ""


def parse_series(body: bytes | str) -> list[tuple[dict[str, str], Samples]]:
    """A query's answer as (labels, [(epoch seconds, value)]) per series: a matrix's samples, a
    vector's one. NaN (a quantile of no requests) stays NaN."""
    try:
        answer = _Answer.model_validate_json(body)
    except ValidationError as exc:
        raise PrometheusError(f"not an answer of Prometheus' query API: {exc}") from exc
    if answer.status != "success" or answer.data is None:
        raise PrometheusError(answer.error or "no data")
    return [(s.metric, [(t, float(v)) for t, v in (s.values if s.value is None else [s.value])])
            for s in answer.data.result]


def by_instance(series: list[tuple[dict[str, str], Samples]]) -> dict[str, Samples]:
    """Series aggregated `by (farm_instance)`, by instance name."""
    return {labels.get("farm_instance", ""): samples for labels, samples in series}


def counted(samples: Samples, since: float) -> float:
    """Increments of a counter's raw samples after `since`, exactly (no extrapolation, unlike
    increase()): from its last sample at or before `since` (0 for a series born later), and across
    a restart of the instance (the value drops: it counts again from 0)."""
    before = [v for t, v in samples if t <= since]
    last = before[-1] if before else 0.0
    total = 0.0
    for t, v in samples:
        if t > since:
            total += v - last if v >= last else v
            last = v
    return total


def on_grid(samples: Samples, start: float, end: float, step: float) -> list[float]:
    """A range query's samples at start, start + step, ... end; NaN where it has none (an instance
    not scraped, or no requests for a quantile), so a plotted line breaks there."""
    at = {round((t - start) / step): v for t, v in samples}
    return [at.get(i, math.nan) for i in range(int((end - start) / step) + 1)]


class Prometheus:
    """The farm's Prometheus HTTP API, as much of it as the report asks."""

    def __init__(self, url: str, timeout_s: float = TIMEOUT_S) -> None:
        self.url = url
        self.timeout_s = timeout_s

    def _get(self, path: str, params: dict[str, str | float]) -> list[tuple[dict[str, str], Samples]]:
        try:
            response = httpx.get(f"{self.url}{path}", params=params, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise PrometheusError(f"{self.url} does not answer: {exc!r}") from exc
        return parse_series(response.content)

    def query(self, expr: str, at: float) -> list[tuple[dict[str, str], Samples]]:
        return self._get("/api/v1/query", {"query": expr, "time": at})

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[tuple[dict[str, str], Samples]]:
        return self._get("/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": step})

    def scraped_since(self, since: float) -> bool:
        """Every instance's last scrape started after `since` (a failed one counts: `up` is 0)."""
        scrapes = self.query('timestamp(up{job="webfarm"})', time.time())
        return bool(scrapes) and all(samples[0][1] > since for _, samples in scrapes)


@dataclass(frozen=True)
class ServerView:
    """What the farm's Prometheus saw of one run: `summary` for summary.json, and per instance its
    request rate, 5xx rate and p99 (ms) at `times` (seconds from the run's start; NaN: no figure)."""

    summary: ServerSide
    times: list[float] = field(default_factory=list)
    rate: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, list[float]] = field(default_factory=dict)
    p99_ms: dict[str, list[float]] = field(default_factory=dict)


def prometheus_url(config: FarmConfig) -> str | None:
    return f"http://127.0.0.1:{config.prometheus_port}" if config.prometheus_port else None


def observe(config: FarmConfig, started_at: float, stopped_at: float) -> ServerView:
    """The server-side view of the run from `started_at` to `stopped_at` (epoch seconds) of the
    farm `config` describes. Without a Prometheus, or one that does not answer, a summary that
    says so and no series: the run's report goes on without them."""
    url = prometheus_url(config)
    if url is None:
        return ServerView(ServerSide(reachable=False, note="the farm has no Prometheus (prometheus_port=0)"))
    prometheus = Prometheus(url)
    try:
        # The last requests are in Prometheus only once a scrape after them has stored them.
        wait_until(lambda: prometheus.scraped_since(stopped_at), LAST_SCRAPE_TIMEOUT_S, interval_s=0.25)
        return _view(prometheus, config, started_at, stopped_at)
    except PrometheusError as exc:
        return ServerView(ServerSide(prometheus=url, reachable=False, note=str(exc)))


def _view(prometheus: Prometheus, config: FarmConfig, started_at: float, stopped_at: float) -> ServerView:
    step = float(SCRAPE_INTERVAL_S)
    now = time.time()
    # Raw samples from a little before the start (the counters' values then) to now.
    reach_ms = math.ceil((now - started_at + 2 * step) * 1000)
    totals: dict[str, float] = {inst.name: 0.0 for inst in config.web}
    errors: dict[str, float] = dict(totals)
    for labels, samples in prometheus.query(f"{COUNTER}[{reach_ms}ms]", now):
        name = labels.get("farm_instance", "")
        n = counted(samples, started_at)
        totals[name] = totals.get(name, 0.0) + n
        if labels.get("code", "").startswith("5"):
            errors[name] = errors.get(name, 0.0) + n

    def series(expr: str, scale: float = 1.0) -> dict[str, list[float]]:
        found = by_instance(prometheus.query_range(expr, started_at, stopped_at, step))
        return {name: [v * scale for v in on_grid(samples, started_at, stopped_at, step)]
                for name, samples in sorted(found.items())}

    rate, error_rate, p99_ms = series(RATE), series(ERRORS), series(P99, 1000.0)

    def peak(values: list[float]) -> float | None:
        finite = [v for v in values if math.isfinite(v)]
        return round(max(finite), 1) if finite else None

    instances = {name: InstanceCounts(requests=round(totals[name]), errors_5xx=round(errors.get(name, 0.0)),
                                      max_p99_ms=peak(p99_ms.get(name, [])))
                 for name in sorted(totals)}
    summary = ServerSide(prometheus=prometheus.url, reachable=True, rate_window_s=RATE_WINDOW_S,
                         requests=sum(i.requests for i in instances.values()), instances=instances)
    times = [i * step for i in range(int((stopped_at - started_at) / step) + 1)]
    return ServerView(summary, times, rate, error_rate, p99_ms)
