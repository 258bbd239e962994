"""What the console shows, sampled once a second: each instance as the runtime and its own /metrics
see it, and the store as Redis sees it. Rates and quantiles are over the last WINDOW_S, from the
differences of the instances' counters and histogram buckets (what Prometheus' rate() and
histogram_quantile() do over a range), so they hold across a restart (a counter that went down
started again from 0)."""

import contextlib
import logging
import math
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import gevent
import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from app import keys
from farmctl.config import Instance
from farmctl.runtime import Farm, ProcessStatus

log = logging.getLogger("console")

#: How often the console samples the farm, and the range its rates and quantiles cover.
EVERY_S = 1.0
WINDOW_S = 5.0
#: An instance that takes longer than this to answer /metrics is not answering (hung, or busy beyond use).
SCRAPE_TIMEOUT_S = 0.5
#: How long a tick waits for the runtime's view of the processes (see Sampler._processes).
STATUS_WAIT_S = 0.2
STATUS_COST_FACTOR = 4.0
#: The runtimes' states of a process that is on its way back (supervisord's, Docker's).
COMING_BACK = ("STARTING", "BACKOFF", "RESTARTING")
#: A held-out instance's reason as the health loop gives it, and the state the console shows.
HELD_OUT_STATE = {"timeout": "hung", "unready": "out"}


@dataclass(frozen=True)
class Scrape:
    """One instance's counters at one moment: requests and 5xx answered, near-cache lookups, and the
    request-duration histogram (cumulative counts by upper bound, every route summed)."""

    at: float
    requests: float
    errors: float
    hits: float
    misses: float
    buckets: tuple[tuple[float, float], ...]


def parse_metrics(text: str, at: float) -> Scrape:
    requests = errors = hits = misses = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "webfarm_http_requests_total":
                requests += sample.value
                errors += sample.value if sample.labels["code"].startswith("5") else 0.0
            elif sample.name == "webfarm_near_cache_lookups_total":
                hits += sample.value if sample.labels["result"] == "hit" else 0.0
                misses += sample.value if sample.labels["result"] == "miss" else 0.0
            elif sample.name == "webfarm_http_request_duration_seconds_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return Scrape(at, requests, errors, hits, misses, tuple(sorted(buckets.items())))


def increase(now: float, then: float) -> float:
    """What a counter grew by; a counter that went down was reset (a restart) and counts from 0."""
    return now - then if now >= then else now


def quantile(q: float, now: Scrape, then: Scrape) -> float | None:
    """The `q` quantile of the durations between the two scrapes, in seconds, interpolated within
    its bucket as Prometheus' histogram_quantile() does; None without a request."""
    reset = now.requests < then.requests
    old = dict(then.buckets)
    counts = [(bound, increase(count, 0.0 if reset else old.get(bound, 0.0))) for bound, count in now.buckets]
    if not counts or counts[-1][1] <= 0:
        return None
    rank = q * counts[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in counts:
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the last finite bound: its lower edge, as Prometheus answers
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = bound, count
    return lower


@dataclass
class InstanceRow:
    """One instance on the console: `state` serving | out | hung | restarting | down, and why."""

    name: str
    state: str
    why: str = ""
    pid: int = 0
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors_per_s: float | None = None
    near_cache_hit_ratio: float | None = None


@dataclass
class NodeRow:
    name: str
    port: int
    role: str  # master | slave (Redis' words) | "not answering"
    ops_per_s: int | None = None
    memory_bytes: int | None = None


@dataclass
class StoreRow:
    mode: str
    primary: str | None
    nodes: list[NodeRow] = field(default_factory=list)
    live_sessions: int | None = None


@dataclass
class Tick:
    at: float
    instances: list[InstanceRow]
    store: StoreRow

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class Sampler:
    """Keeps WINDOW_S of scrapes per instance and makes one Tick from them and the runtime's view."""

    def __init__(self, farm: Farm) -> None:
        self.farm = farm
        self.scrapes: dict[str, deque[Scrape]] = {}
        config = farm.config
        self.redis = {name: redis.Redis(port=port, password=config.redis_password or None, socket_timeout=0.5,
                                        socket_connect_timeout=0.5, decode_responses=True)
                      for name, port in config.redis_nodes.items()}
        self._statuses: dict[str, ProcessStatus] = {}
        self._status_job: gevent.Greenlet | None = None
        self._status_next = 0.0

    def tick(self) -> Tick:
        now = time.time()
        web = self.farm.config.web
        jobs = [gevent.spawn(self._scrape, inst, now) for inst in web]
        store_job = gevent.spawn(self._store)
        processes = self._processes()
        held_out = self.farm.out_of_rotation()
        gevent.joinall([*jobs, store_job], timeout=2 * SCRAPE_TIMEOUT_S + 0.5)
        rows = []
        for inst, job in zip(web, jobs, strict=True):
            proc = processes.get(inst.name)
            answer = job.value if job.successful() else "timeout"
            # Not known to the runtime's view yet (its first answer is still coming): its scrape says.
            row = self._row(inst.name, proc.state if proc else "RUNNING", proc.pid if proc else 0,
                            held_out.get(inst.name), answer)
            rows.append(row)
        store = store_job.value if store_job.successful() and store_job.value else StoreRow(
            self.farm.config.redis_mode, None)
        return Tick(now, rows, store)

    def _processes(self) -> dict[str, ProcessStatus]:
        """The runtime's view of the processes, as fresh as it is cheap: natively one `status()` is a
        call to the supervisor, under Docker compose and the engine asked per service - seconds of
        CPU. So a tick waits for it at most STATUS_WAIT_S, a new one starts only STATUS_COST_FACTOR
        times its last duration after it ended, and the last answer stands meanwhile: a refused or
        unanswered scrape shows a dead or hung instance at once anyway."""
        job = self._status_job
        if job is None or (job.ready() and time.monotonic() >= self._status_next):
            started = time.monotonic()

            def status() -> list[ProcessStatus]:
                try:
                    return self.farm.status()
                finally:
                    self._status_next = time.monotonic() + STATUS_COST_FACTOR * (time.monotonic() - started)

            job = self._status_job = gevent.spawn(status)
        job.join(timeout=STATUS_WAIT_S)
        if job.ready() and job.successful():
            self._statuses = {p.name: p for p in job.value}
        return self._statuses

    def _scrape(self, inst: Instance, now: float) -> str:
        """"ok" (its counters kept), "refused" (not listening: dead or starting) or "timeout"."""
        try:
            text = httpx.get(f"{inst.url}/metrics", timeout=SCRAPE_TIMEOUT_S).text
        except httpx.TimeoutException:
            return "timeout"
        except httpx.HTTPError:  # refused, or (Docker's port proxy) accepted and closed: nobody listens
            return "refused"
        scrapes = self.scrapes.setdefault(inst.name, deque())
        scrapes.append(parse_metrics(text, now))
        while len(scrapes) > 1 and scrapes[1].at <= now - WINDOW_S:
            scrapes.popleft()
        return "ok"

    def _row(self, name: str, proc_state: str, pid: int, held_out: str | None, answer: str) -> InstanceRow:
        if proc_state in COMING_BACK or (proc_state == "RUNNING" and answer == "refused"):
            return InstanceRow(name, "restarting", "the supervisor is starting it again", pid)
        if proc_state != "RUNNING":
            return InstanceRow(name, "down", proc_state.lower(), pid)
        if held_out:
            row = InstanceRow(name, HELD_OUT_STATE.get(held_out, "out"),
                              {"timeout": "no answer to the health checks: out of the rotation",
                               "unready": "cannot reach the store: out of the rotation"}.get(held_out, held_out), pid)
        elif answer == "timeout":
            row = InstanceRow(name, "hung", "does not answer (the health checks will take it out)", pid)
        else:
            row = InstanceRow(name, "serving", "", pid)
        if answer == "ok":
            self._rates(row)
        return row

    def _rates(self, row: InstanceRow) -> None:
        scrapes = self.scrapes.get(row.name)
        if not scrapes or len(scrapes) < 2:
            return
        then, now = scrapes[0], scrapes[-1]
        span = max(now.at - then.at, 1e-3)
        reset = now.requests < then.requests
        row.rps = round(increase(now.requests, 0.0 if reset else then.requests) / span, 2)
        row.errors_per_s = round(increase(now.errors, 0.0 if reset else then.errors) / span, 2)
        lookups = increase(now.hits + now.misses, 0.0 if reset else then.hits + then.misses)
        if lookups > 0:
            row.near_cache_hit_ratio = round(increase(now.hits, 0.0 if reset else then.hits) / lookups, 3)
        for q, attr in ((0.5, "p50_ms"), (0.99, "p99_ms")):
            value = quantile(q, now, then)
            setattr(row, attr, None if value is None else round(value * 1000, 2))

    def _store(self) -> StoreRow:
        config = self.farm.config
        primary = self.farm.redis_primary() if config.sentinel or config.cluster else next(iter(config.redis_nodes))
        store = StoreRow(config.redis_mode, primary)
        counted = 0
        for name, client in self.redis.items():
            try:
                info = client.info()
            except redis.RedisError:
                store.nodes.append(NodeRow(name, config.redis_nodes[name], "not answering"))
                continue
            store.nodes.append(NodeRow(name, config.redis_nodes[name], str(info.get("role", "?")),
                                       int(info.get("instantaneous_ops_per_sec", 0)), int(info.get("used_memory", 0))))
            # The live indexes this node holds: the primary's, or on a cluster each primary's share.
            if name == primary or (config.cluster and info.get("role") == "master"):
                with contextlib.suppress(redis.RedisError):  # it answered INFO: a stall just began
                    counted += live_sessions(client, config.key_prefix)
                    store.live_sessions = counted
        return store


def live_sessions(client: redis.Redis, prefix: str) -> int:
    """The live sessions the indexes on this node list (app.keys: one index per tag). On a cluster
    node, the indexes of other nodes' slots answer MOVED and count nothing here."""
    now_ms = int(time.time() * 1000)
    with client.pipeline(transaction=False) as pipe:
        for key in keys.live_keys(prefix):
            pipe.zcount(key, now_ms, "+inf")
        return sum(n for n in pipe.execute(raise_on_error=False) if isinstance(n, int))
