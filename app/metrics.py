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
from typing import Any

from anyio import CapacityLimiter
from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# No *_created series beside every counter (process_start_time_seconds says when they started).
disable_created_metrics()  # type: ignore[no-untyped-call]

#: From a quarter of a millisecond (GET /api/me from the near cache) past the 1.5 s request deadline.
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0)
#: Where a request no route took is counted (404s, and what the limits refused before routing).
UNROUTED = "(unrouted)"
#: Where a handler that answers before the router (app.api.WhoAmIMiddleware) puts its route template.
ROUTE_KEY = "webfarm.route"
METRICS_PATH = "/metrics"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The text format Prometheus 2.x reads (the client's default, 1.0.0, is for UTF-8 names we do not use).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

REQUESTS = Counter("webfarm_http_requests", "Requests answered, by route template, method and status code",
                   ["route", "method", "code"])
LATENCY = Histogram("webfarm_http_request_duration_seconds", "From the request's arrival to its last byte",
                    ["route", "method"], buckets=LATENCY_BUCKETS)
IN_FLIGHT = Gauge("webfarm_http_requests_in_flight", "Requests being answered now")
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
    template = getattr(route, "path", None) or scope.get(ROUTE_KEY)
    return str(template) if template else UNROUTED


class MetricsMiddleware:
    """Counts and times every HTTP request (the outermost middleware: the limits' 413s and the
    deadline's 503s included), and answers GET /metrics itself.

    On the hot path (GET /api/me, ~150 us of CPU) the client library's per-call costs show: so each
    label set's children are looked up once and kept, and requests in flight are a plain count
    (one event loop: no lock needed) that the gauge reads at each scrape."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.in_flight = 0
        IN_FLIGHT.set_function(lambda: self.in_flight)
        self._counters: dict[tuple[str, str, int], Any] = {}
        self._timers: dict[tuple[str, str], Any] = {}

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

        self.in_flight += 1
        try:
            await self.app(scope, receive, send_counted)
        finally:
            self.in_flight -= 1
            route, method = route_of(scope), scope["method"]
            method = method if method in METHODS else "OTHER"  # what reaches an instance directly is any token
            counter = self._counters.get((route, method, code))
            if counter is None:
                counter = self._counters[route, method, code] = REQUESTS.labels(route, method, str(code))
            timer = self._timers.get((route, method))
            if timer is None:
                timer = self._timers[route, method] = LATENCY.labels(route, method)
            counter.inc()
            timer.observe(time.perf_counter() - started)


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
