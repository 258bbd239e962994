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
- a store that answers but refuses writes (full, or unable to persist) is 200 "store full" /
  "store not persisting": the instances serve what it allows, so they stay in; the store is logged;
- an instance that has answered nothing for LIVENESS_S is SIGKILLed; supervisord restarts it;
- and, like Envoy's panic threshold, it never takes every instance out: when no instance can reach
  the store, Redis is down, not the instances, and users should get the app's own 503 "session
  store unavailable" rather than nginx's "no instance available"."""

import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from prometheus_client import REGISTRY, start_http_server

from farmctl.config import FarmConfig
from farmctl.health import LIVENESS_S, PROBE_EVERY_S, PROBE_TIMEOUT_S, Instance, RotationMetrics, decide, probe
from farmctl.native.farm import NativeFarm

log = logging.getLogger("health")


class HealthLoop:
    """Checks the farm described by `config_file` (written by `farmctl up`, re-read when it changes)."""

    def __init__(self, config_file: Path) -> None:
        self.config_file = config_file
        self.client = httpx.Client(timeout=PROBE_TIMEOUT_S)
        self.pool = ThreadPoolExecutor(max_workers=8)
        self.loaded = 0.0
        self.store = "ready"  # what the instances last said of the store
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
        said = set()
        for inst, (result, store) in zip(self.instances, self.pool.map(lambda i: probe(self.client, i.url),
                                                                       self.instances), strict=True):
            inst.saw(result, now)
            said |= {store} if store else set()
        store = next(iter(sorted(said - {"ready"})), "ready" if said else self.store)
        if store != self.store:
            log.warning("session store refusing writes: %s (instances kept in rotation)" if store != "ready"
                        else "session store takes writes again%.0s", store)
            self.store = store
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

    def view(self) -> tuple[list[str], dict[str, str]]:
        """The instances, and those out of nginx's rotation with why (for RotationMetrics)."""
        current = self.farm.rotation_state()
        return [i.name for i in self.instances], {**dict.fromkeys(current.draining, "draining"), **current.out}

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
    loop = HealthLoop(Path(sys.argv[1]))
    if loop.farm.config.prometheus_port:
        REGISTRY.register(RotationMetrics(loop.view))
        start_http_server(loop.farm.config.health_port, addr="127.0.0.1")
    loop.run()


if __name__ == "__main__":
    main()
