"""Active health checks for the native farm: readiness (take an instance out of nginx's rotation)
and liveness (restart an instance that stays hung). Run by supervisord as `python -m farmctl.native.health`.

nginx OSS only has passive checks: it notices a hung instance when a real request times out on
it, and forgets after `fail_timeout` - each time at the cost of a user's request. Kept checkers do
not fit either: superlance's `httpok` (the supervisord one) restarts on a single failed check, at
5 s tick granularity, through a graceful stop that a hung process cannot honour, and knows nothing
of a balancer. So this small loop does what HAProxy's `inter 0.5s fall 2 rise 2` and Kubernetes'
readiness/liveness probes do:

- every PROBE_EVERY_S it GETs each instance's /readyz with a PROBE_TIMEOUT_S timeout;
- FALL failed probes in a row (a timeout: hung; a 503: alive but cannot reach the store) take it
  out of the rotation, RISE good ones put it back (nginx reloads either way, see farmctl/native/rotation.py);
- a refused connection changes nothing: the process is dead or restarting, supervisord brings it
  back and nginx skips a refused instance at no cost;
- an instance that has answered nothing for LIVENESS_S is SIGKILLed; supervisord restarts it;
- and, like Envoy's panic threshold, it never takes every instance out: when no instance can reach
  the store, Redis is down, not the instances, and users should get the app's own 503 "session
  store unavailable" rather than nginx's "no instance available"."""

import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import httpx

from farmctl.config import FarmConfig
from farmctl.native.farm import NativeFarm

PROBE_EVERY_S = 0.5
PROBE_TIMEOUT_S = 0.5
FALL = 2
RISE = 2
LIVENESS_S = 10.0

log = logging.getLogger("health")


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


def probe(client: httpx.Client, url: str) -> Probe:
    try:
        status = client.get(f"{url}/readyz").status_code
    except httpx.TimeoutException:
        return Probe.TIMEOUT
    except httpx.TransportError:
        return Probe.REFUSED
    return Probe.READY if status == 200 else Probe.UNREADY


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


class HealthLoop:
    """Checks the farm described by `config_file` (written by `farmctl up`, re-read when it changes)."""

    def __init__(self, config_file: Path) -> None:
        self.config_file = config_file
        self.client = httpx.Client(timeout=PROBE_TIMEOUT_S)
        self.pool = ThreadPoolExecutor(max_workers=8)
        self.loaded = 0.0
        self.reload_config()

    def reload_config(self) -> None:
        """(Re)read the farm's config: `make scale` changes the instances."""
        self.loaded = self.config_file.stat().st_mtime
        self.farm = NativeFarm(FarmConfig.from_json(self.config_file.read_text()))
        self.instances = [Instance(i.name, i.url) for i in self.farm.config.web]

    def round(self) -> None:
        if self.config_file.stat().st_mtime != self.loaded:
            self.reload_config()
        now = time.monotonic()
        for inst, result in zip(self.instances, self.pool.map(lambda i: probe(self.client, i.url), self.instances),
                                strict=True):
            inst.saw(result, now)
        current = self.farm.out_of_rotation()
        wanted = decide(self.instances, current)
        if wanted != current:
            self.farm.set_out_of_rotation(wanted)
            for name in wanted.keys() - current.keys():
                log.warning("%s out of rotation: %s", name, wanted[name])
            for name in current.keys() - wanted.keys():
                log.warning("%s back in rotation", name)
        for inst in self.instances:
            if inst.silent_since is not None and now - inst.silent_since >= LIVENESS_S:
                self.restart(inst)

    def restart(self, inst: Instance) -> None:
        if not any(s.name == inst.name and s.up for s in self.farm.status()):
            return  # stopping or starting already: supervisord is on it
        log.warning("%s answered nothing for %.0f s: SIGKILL, supervisord restarts it", inst.name, LIVENESS_S)
        self.farm.kill(inst.name, "KILL")
        inst.silent_since = None

    def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                self.round()
            except Exception:  # a reload or supervisord hiccup must not end the health checks
                log.exception("health round failed")
            time.sleep(max(0.0, PROBE_EVERY_S - (time.monotonic() - started)))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per probe
    HealthLoop(Path(sys.argv[1])).run()


if __name__ == "__main__":
    main()
