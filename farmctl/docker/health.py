"""Active health checks and the rotation under Docker: compose.yaml's `health` service.

The native loop's readiness (farmctl/native/health.py: the same probes, FALL/RISE, never every
instance out), run in a container that shares nginx's process namespace (`pid: service:nginx`) and
its config volume: it re-renders nginx.conf with the failing instances `down` and sends nginx's
master SIGHUP. Liveness stays in each web container (app/probe.py SIGKILLs an app hung for 10 s,
its init exits, the restart policy starts it again): this container can signal nginx, but no
instance - an instance's fate is its own container's business, not a sibling's.

  python -m farmctl.docker.health run --instances N --balance B     the loop (the service's command)
  python -m farmctl.docker.health drain|undrain [web2 ...]           what `DockerFarm.drain` execs here

`make scale` recreates this service with the new N: its start puts everyone in the rotation, renders
nginx.conf for web1..webN and reloads nginx; rotation.json names N once the old workers are done.

No psutil here (the image has the app's dependencies only): nginx's processes are read from /proc."""

import argparse
import fcntl
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypedDict

import httpx
from prometheus_client import REGISTRY, start_http_server

from farmctl.docker.render import DOCKER_CONFIG_DIR, WEB_TARGETS, render_nginx_docker, web_targets
from farmctl.health import PROBE_EVERY_S, PROBE_TIMEOUT_S, Instance, RotationMetrics, decide, probe
from farmctl.render import write_whole

log = logging.getLogger("health")
CONFIG_DIR = Path(DOCKER_CONFIG_DIR)
ROTATION = CONFIG_DIR / "rotation.json"


class Rotation(TypedDict):
    instances: int  # web1..webN are in nginx.conf (set by the loop's start)
    draining: list[str]  # instances a graceful operation (roll) restarts
    out: dict[str, str]  # instances the loop holds out, with the reason ("timeout", "unready")


def _nginx() -> tuple[int, set[int]]:
    """nginx's master pid and its live (not shutting down) workers, from /proc."""
    master, workers = 0, dict[int, tuple[int, bool]]()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if title.startswith("nginx: master process"):
            master = int(entry.name)
        elif title.startswith("nginx: worker process"):
            workers[int(entry.name)] = (ppid, "shutting down" in title)
    return master, {pid for pid, (ppid, leaving) in workers.items() if ppid == master and not leaving}


def _gone(before: set[int]) -> bool:
    for pid in before:
        try:
            os.kill(pid, 0)
            return False
        except ProcessLookupError:
            continue
    return True


def current() -> Rotation:
    """The rotation as last written (whole: it is replaced, never written in place)."""
    rotation: Rotation = json.loads(ROTATION.read_text()) if ROTATION.exists() else \
        {"instances": 0, "draining": [], "out": {}}
    return rotation


@contextmanager
def editing() -> Iterator[Rotation]:
    """The rotation ({"draining": [...], "out": {name: reason}}) under a lock, written after the block."""
    with (CONFIG_DIR / "rotation.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rotation = current()
        yield rotation
        write_whole(ROTATION, json.dumps(rotation))  # the runtime reads it from the host (farmctl/docker/farm.py)


def apply(balance: str, change: Callable[[Rotation], None], timeout_s: float = 15, finish: bool = True) -> None:
    """Change the rotation, re-render nginx.conf and reload nginx; return once new workers run and,
    with `finish`, the old ones are gone (their requests done: a drained instance can then be
    restarted). The loop's own changes do not wait: old workers may be waiting on a hung instance."""
    with editing() as rotation:
        change(rotation)
        down = frozenset([*rotation["draining"], *rotation["out"]])
        write_whole(CONFIG_DIR / "nginx.conf", render_nginx_docker(rotation["instances"], balance, down))
        master, before = _nginx()
        if not master:
            return  # nginx is (re)starting: it reads the new file itself
        os.kill(master, signal.SIGHUP)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            _, now = _nginx()
            if now - before and (not finish or _gone(before)):
                return
            time.sleep(0.05)
        raise RuntimeError(f"nginx did not finish reloading within {timeout_s:.0f} s")


def view() -> tuple[list[str], dict[str, str]]:
    """The rotation's instances, and those held out with why (for RotationMetrics)."""
    rotation = current()
    names = [f"web{i}" for i in range(1, rotation["instances"] + 1)]
    return names, {**dict.fromkeys(rotation["draining"], "draining"), **rotation["out"]}


def run(instances: int, balance: str, metrics_port: int = 0) -> None:
    names = [f"web{i}" for i in range(1, instances + 1)]
    checked = [Instance(name, f"http://{name}:8000") for name in names]
    client = httpx.Client(timeout=PROBE_TIMEOUT_S)
    pool = ThreadPoolExecutor(max_workers=8)

    def everyone_in(rotation: Rotation) -> None:  # a farm that starts (or scales) has everyone in rotation
        rotation["instances"], rotation["out"], rotation["draining"] = instances, {}, []

    apply(balance, everyone_in)
    # The monitoring profile's Prometheus discovers web1..webN from this file, and reads our view.
    write_whole(CONFIG_DIR / WEB_TARGETS, web_targets(instances))
    if metrics_port:
        REGISTRY.register(RotationMetrics(view))
        start_http_server(metrics_port)
    while True:
        started = time.monotonic()
        try:
            for inst, (result, _) in zip(checked, pool.map(lambda i: probe(client, i.url), checked), strict=True):
                inst.saw(result, started)
            held = dict(current()["out"])
            wanted = decide(checked, held)
            if wanted != held:
                def hold(rotation: Rotation) -> None:
                    rotation["out"] = wanted  # noqa: B023 - called at once

                apply(balance, hold, finish=False)
                for name in wanted.keys() - held.keys():
                    log.warning("%s out of rotation: %s", name, wanted[name])
                for name in held.keys() - wanted.keys():
                    log.warning("%s back in rotation", name)
        except Exception:  # a reload hiccup must not end the health checks
            log.exception("health round failed")
        time.sleep(max(0.0, PROBE_EVERY_S - (time.monotonic() - started)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="farmctl.docker.health", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "drain", "undrain"])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--instances", type=int, default=int(os.environ.get("INSTANCES", "3")),
                        help="run: web1..webN (drain and undrain keep the running loop's N)")
    parser.add_argument("--balance", default=os.environ.get("BALANCE") or "round_robin")
    parser.add_argument("--metrics-port", type=int, default=0, help="run: serve the rotation as metrics there")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.command == "run":
        run(args.instances, args.balance, args.metrics_port)
    else:
        def change(rotation: Rotation) -> None:
            draining = set(rotation["draining"])
            if args.command == "drain":
                draining |= set(args.names)
            else:
                draining -= set(args.names or draining)
            rotation["draining"] = sorted(draining)

        apply(args.balance, change)
    return 0


if __name__ == "__main__":
    sys.exit(main())
