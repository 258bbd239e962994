"""What one instance measures, in Prometheus' format (prometheus-client's default registry: one
per uvicorn process, with its process_* metrics). Served at GET /metrics on the instance's own
port, for a Prometheus that scrapes each instance; nginx answers 404 for that path, so nothing of
it is public and a scrape never goes through the round robin.

RED per route template and method (the template, never the raw path: a fuzzer's paths would be
one series each), saturation (requests in flight, the argon2 admission's slots and refusals, waits
for a Redis connection, the event loop's lag), and what the session layer did. Labels are bounded
sets: route templates, methods, status codes, and the reasons named here."""

import asyncio
import time
from bisect import bisect_left
from collections.abc import Iterator

from anyio import CapacityLimiter
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# No *_created series beside every counter (process_start_time_seconds says when they started).
disable_created_metrics()  # type: ignore[no-untyped-call]

#: From a quarter of a millisecond (GET /api/me from the near cache) past the 1.5 s request deadline.
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0)
#: Where a request no route took is counted (404s, and what the limits refused before routing).
UNROUTED = "(unrouted)"
METRICS_PATH = "/metrics"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The text format Prometheus 2.x reads (the client's default, 1.0.0, is for UTF-8 names we do not use).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


class HttpCounts(Collector):
    """RED for every request, counted in plain ints and turned into Prometheus' families only when
    scraped: on the hot path the client library's own Counter.inc and Histogram.observe (a lock
    each, a child per label set, a bucket search in Python) cost about as much as the rest of a
    cached GET /api/me (README, "What it costs"). One event loop per process counts here, so
    nothing needs a lock; a scrape runs on that loop too. Series, names and buckets are what the
    client library's Counter, Histogram and Gauge would export."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.codes: dict[tuple[str, str, int], int] = {}
        #: (route, method) -> [count per bucket, the +Inf one last], and the sum of the durations
        self.buckets: dict[tuple[str, str], list[int]] = {}
        self.sums: dict[tuple[str, str], float] = {}

    def count(self, route: str, method: str, code: int, seconds: float) -> None:
        codes = self.codes
        codes[route, method, code] = codes.get((route, method, code), 0) + 1
        key = route, method
        buckets = self.buckets.get(key)
        if buckets is None:
            buckets = self.buckets[key] = [0] * (len(LATENCY_BUCKETS) + 1)
            self.sums[key] = 0.0
        buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sums[key] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("webfarm_http_requests", "Requests answered, by route template, method and "
                                       "status code", labels=["route", "method", "code"])
        for (route, method, code), n in list(self.codes.items()):
            requests.add_metric([route, method, str(code)], n)
        latency = HistogramMetricFamily("webfarm_http_request_duration_seconds", "From the request's arrival to "
                                        "its last byte", labels=["route", "method"])
        bounds = [*(str(float(b)) for b in LATENCY_BUCKETS), "+Inf"]
        for (route, method), counts in list(self.buckets.items()):
            cumulative, total = [], 0
            for bound, n in zip(bounds, counts, strict=True):
                total += n
                cumulative.append((bound, float(total)))
            latency.add_metric([route, method], cumulative, self.sums[route, method])
        in_flight = GaugeMetricFamily("webfarm_http_requests_in_flight", "Requests being answered now",
                                      value=self.in_flight)
        return iter((requests, latency, in_flight))


HTTP = HttpCounts()
REGISTRY.register(HTTP)
SIGNINS = Counter("webfarm_signins", "Sign-in attempts by outcome: ok, wrong (password or user), "
                  "throttled (429), busy (refused by admission, 503)", ["result"])
SESSIONS_STARTED = Counter("webfarm_sessions_started", "Sessions started (a sign-in, a password change's new one)")
SESSIONS_ENDED = Counter("webfarm_sessions_ended", "Sessions ended here: logout (one with a session cookie), "
                         "everywhere (sign-out-everywhere), password (a password change); expiry is Redis' and "
                         "the per-account cap's ends are the store's, not counted", ["reason"])
NEAR_CACHE = Counter("webfarm_near_cache_lookups", "Session lookups by the near cache: hit, or miss (read "
                     "from Redis; includes every lookup while the cache is not trusted)", ["result"])
NEAR_CACHE_INVALIDATIONS = Counter("webfarm_near_cache_invalidations", "Near-cache entries dropped: their session "
                                   "ended (here or on another instance), or the cache lost its lease")
STORE_ERRORS = Counter("webfarm_store_errors", "Requests answered 503 because of the session store: unavailable "
                       "(a Redis error), deadline (the request's 1.5 s ran out), refused (full, or cannot persist)",
                       ["kind"])
IDEMPOTENT_REPEATS = Counter("webfarm_idempotent_repeats", "Writes that arrived again with an Idempotency-Key "
                             "already applied, answered without applying them twice: cart_add, register", ["write"])
ADMISSION_REFUSED = Counter("webfarm_admission_refused", "argon2 requests refused at once (503 too busy)")
ADMISSION_IN_USE = Gauge("webfarm_admission_slots_in_use", "argon2 hashing slots held")
ADMISSION_WAITING = Gauge("webfarm_admission_queue_depth", "argon2 requests waiting for a slot")
REDIS_POOL_WAIT = Histogram("webfarm_redis_connection_wait_seconds", "Time to get a Redis connection from the pool "
                            "(a wait when every one is busy, or a connect)", buckets=LATENCY_BUCKETS)
LOOP_LAG = Histogram("webfarm_event_loop_lag_seconds", "How late a 0.25 s sleep of the event loop wakes",
                     buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))


def route_of(scope: Scope) -> str:
    route = scope.get("route")
    template = getattr(route, "path", None)
    return str(template) if template else UNROUTED


class MetricsMiddleware:
    """Counts and times every HTTP request (the outermost middleware: the limits' 413s and the
    deadline's 503s included), and answers GET /metrics itself.

    What it counts goes to HTTP (HttpCounts), the process's one set of RED counts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == METRICS_PATH and scope["method"] == "GET":
            await _exposition(send)
            return
        started, code = time.perf_counter(), 500

        async def send_counted(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        HTTP.in_flight += 1
        try:
            await self.app(scope, receive, send_counted)
        finally:
            HTTP.in_flight -= 1
            method = scope["method"]
            # What reaches an instance directly is any token.
            HTTP.count(route_of(scope), method if method in METHODS else "OTHER", code, time.perf_counter() - started)


async def _exposition(send: Send) -> None:
    body = generate_latest()
    headers = [(b"content-type", CONTENT_TYPE.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def watch_event_loop(every_s: float = 0.25) -> None:
    """The loop's lag: how late a sleep wakes (a blocked loop delays every request by as much)."""
    while True:
        started = time.perf_counter()
        await asyncio.sleep(every_s)
        LOOP_LAG.observe(max(0.0, time.perf_counter() - started - every_s))


def watch_admission(limiter: CapacityLimiter) -> None:
    """The admission's slots (app.admission), read at each scrape."""
    ADMISSION_IN_USE.set_function(lambda: limiter.statistics().borrowed_tokens)
    ADMISSION_WAITING.set_function(lambda: limiter.statistics().tasks_waiting)
