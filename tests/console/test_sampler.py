"""The console's arithmetic on real metrics pages (prometheus_client's own text format): rates
across a restart, and quantiles that land where the observed durations are."""

import random

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from app.metrics import LATENCY_BUCKETS
from console.sampler import increase, parse_metrics, quantile


def page(durations: list[float], codes: list[str]) -> str:
    """A metrics page like an instance's, after it answered `durations` with `codes`."""
    registry = CollectorRegistry()
    requests = Counter("webfarm_http_requests", "", ["route", "method", "code"], registry=registry)
    latency = Histogram("webfarm_http_request_duration_seconds", "", ["route", "method"], buckets=LATENCY_BUCKETS,
                        registry=registry)
    for i, (duration, code) in enumerate(zip(durations, codes, strict=True)):
        route = ("/api/me", "/api/cart")[i % 2]
        requests.labels(route, "GET", code).inc()
        latency.labels(route, "GET").observe(duration)
    return generate_latest(registry).decode()


def test_counts_and_errors_are_summed_over_every_route_and_code() -> None:
    scrape = parse_metrics(page([0.001] * 10, ["200"] * 7 + ["503", "500", "404"]), at=1.0)
    assert scrape.requests == 10
    assert scrape.errors == 2
    assert scrape.buckets[-1] == (float("inf"), 10)


def test_a_counter_that_went_down_was_reset_and_counts_from_zero() -> None:
    assert increase(120, 100) == 20
    assert increase(7, 100) == 7  # restarted, then answered 7


@pytest.mark.parametrize("q", [0.5, 0.99])
def test_quantiles_of_the_window_fall_in_the_bucket_of_the_true_quantile(q: float) -> None:
    rng = random.Random(7)
    before = [rng.uniform(0.2, 0.4) for _ in range(500)]  # slow, and outside the window
    during = [rng.lognormvariate(-6, 0.8) for _ in range(2000)]
    then = parse_metrics(page(before, ["200"] * len(before)), at=0.0)
    now = parse_metrics(page(before + during, ["200"] * (len(before) + len(during))), at=5.0)
    value = quantile(q, now, then)
    true = float(np.quantile(during, q))
    bounds = (0.0, *LATENCY_BUCKETS)
    bucket = next(i for i, b in enumerate(bounds) if b >= true)
    assert value is not None
    assert bounds[bucket - 1] <= value <= bounds[bucket], (value, true)


def test_no_request_in_the_window_has_no_quantile() -> None:
    scrape = parse_metrics(page([0.01] * 5, ["200"] * 5), at=0.0)
    assert quantile(0.99, scrape, scrape) is None
