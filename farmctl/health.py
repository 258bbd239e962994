"""What an active health check decides, on any runtime (the native loop, farmctl/native/health.py,
and the Docker one, farmctl/docker/health.py): probe each instance's /readyz, take it out after
FALL bad probes in a row and back after RISE good ones, and never take every instance out.
Like HAProxy's `inter 0.5s fall 2 rise 2` and Kubernetes' readiness probes; the reasons why are
in farmctl/native/health.py."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

import httpx
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PROBE_EVERY_S = 0.5
PROBE_TIMEOUT_S = 0.5
FALL = 2
RISE = 2
LIVENESS_S = 10.0


class Probe(StrEnum):
    READY = "ready"
    UNREADY = "unready"  # answered, but not 200: cannot reach the session store
    TIMEOUT = "timeout"  # no answer in time: hung (or overloaded beyond its own limits)
    REFUSED = "refused"  # nothing listens: dead, or starting


@dataclass
class Instance:
    name: str
    url: str
    recent: list[Probe] = field(default_factory=list)
    silent_since: float | None = None  # the first of an unbroken run of timeouts

    def saw(self, probe: Probe, now: float) -> None:
        if probe is not Probe.REFUSED:
            self.recent = [*self.recent, probe][-max(FALL, RISE):]
        if probe is Probe.TIMEOUT:
            self.silent_since = self.silent_since or now
        else:
            self.silent_since = None

    def failing(self) -> Probe | None:
        """TIMEOUT or UNREADY after FALL bad probes in a row (the latest reason), else None."""
        last = self.recent[-FALL:]
        if len(last) == FALL and Probe.READY not in last:
            return last[-1]
        return None

    def ready(self) -> bool:
        last = self.recent[-RISE:]
        return len(last) == RISE and all(p is Probe.READY for p in last)


def probe(client: httpx.Client, url: str) -> tuple[Probe, str]:
    """The probe's verdict, and what a ready instance said of the store ("ready", "store full", ...)."""
    try:
        response = client.get(f"{url}/readyz")
    except httpx.TimeoutException:
        return Probe.TIMEOUT, ""
    except httpx.TransportError:
        return Probe.REFUSED, ""
    if response.status_code != 200:
        return Probe.UNREADY, ""
    try:
        return Probe.READY, str(response.json().get("status", "ready"))
    except ValueError:
        return Probe.READY, "ready"


def decide(instances: list[Instance], out: dict[str, str]) -> dict[str, str]:
    """The instances to hold out, with the reason: failing ones out, ready ones back in, the rest
    as they were. Never every instance: when all fail, only the hung stay out; when all hang,
    none (a fault they share, and nginx still has its passive checks). One slow probe does not
    count as failing (FALL in a row do), so it cannot bring a store-less instance back either."""
    held = {i.name: out[i.name] for i in instances if i.name in out and not i.ready()}
    held |= {i.name: str(reason) for i in instances if (reason := i.failing())}
    if len(held) == len(instances):  # none left: a fault they share (Redis), not theirs
        held = {name: reason for name, reason in held.items() if reason == Probe.TIMEOUT}
    return held if len(held) < len(instances) else {}


#: Why an instance is out of nginx's rotation: the loop's verdicts, or a graceful operation's drain.
REASONS = (Probe.TIMEOUT.value, Probe.UNREADY.value, "draining")


class RotationMetrics(Collector):
    """The loop's view for the farm's Prometheus, read at each scrape from `view` (the instances,
    and those held out with their reason): whether nginx sends each instance requests, and if not why."""

    def __init__(self, view: Callable[[], tuple[list[str], dict[str, str]]]) -> None:
        self.view = view

    def collect(self) -> Iterator[GaugeMetricFamily]:
        names, held = self.view()
        in_rotation = GaugeMetricFamily("webfarm_health_in_rotation", "1 while nginx sends the instance requests",
                                        labels=["farm_instance"])
        held_out = GaugeMetricFamily("webfarm_health_held_out", "1 while the instance is out of nginx's rotation "
                                     "for this reason", labels=["farm_instance", "reason"])
        for name in names:
            in_rotation.add_metric([name], 0 if name in held else 1)
            for reason in REASONS:
                held_out.add_metric([name, reason], 1 if held.get(name) == reason else 0)
        yield in_rotation
        yield held_out
