"""What Redis did during a measurement: `INFO commandstats` deltas, less the background.

A farm's Redis is never idle: every instance writes its presence heartbeat once a second, the
health loop's /readyz PINGs it for every instance every 0.5 s, and a near-cached instance pings
its invalidation channel when it is quiet. So the bench also measures an idle window (no load
anywhere) and subtracts that window's rate per command, times the measurement's length, from
what a measurement counted. Redis counts the commands a Lua script calls as well as the
EVALSHA that ran it: one EVALSHA with an HMGET inside reads as two commands and one round trip."""

import time
from collections.abc import Mapping
from dataclasses import dataclass

from redis import Redis

#: The bench's own commands (this module's INFO), never the measured system's.
OWN = frozenset({"info"})

Counts = dict[str, float]


@dataclass(frozen=True)
class Calls:
    """Calls per command, as `INFO commandstats` counted them at `at` (monotonic seconds)."""

    counts: dict[str, int]
    at: float


def calls(*clients: Redis) -> Calls:
    """Summed over `clients`: a cluster's primaries (their replicas only apply what these ran)."""
    counts: dict[str, int] = {}
    for client in clients:
        for name, stat in client.info("commandstats").items():
            if (command := name.removeprefix("cmdstat_")) not in OWN:
                counts[command] = counts.get(command, 0) + int(stat["calls"])
    return Calls(counts, time.monotonic())


def delta(before: Calls, after: Calls) -> tuple[Counts, float]:
    """Calls per command between two readings, and the seconds between them."""
    counts = {name: float(n - before.counts.get(name, 0)) for name, n in after.counts.items()}
    return {name: n for name, n in counts.items() if n}, after.at - before.at


def background_rate(windows: list[tuple[Counts, float]]) -> Counts:
    """Calls per second per command over idle windows."""
    seconds = sum(s for _, s in windows)
    total: Counts = {}
    for counts, _ in windows:
        for name, n in counts.items():
            total[name] = total.get(name, 0.0) + n
    return {name: n / seconds for name, n in total.items()} if seconds > 0 else {}


def per_request(counted: Counts, seconds: float, background: Mapping[str, float], requests: int) -> Counts:
    """Calls per request per command, the background's share over `seconds` taken off. Left signed:
    noise around zero must average out over rounds, not be clipped upwards."""
    names = set(counted) | set(background)
    return {name: (counted.get(name, 0.0) - background.get(name, 0.0) * seconds) / max(requests, 1)
            for name in names}
