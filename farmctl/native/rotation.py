"""Which instances nginx sends requests to, natively: one small file that two writers share.

`farmctl roll` drains an instance for its restart; the health loop (farmctl/native/health.py) takes out
one that hangs or cannot reach the store. Each edits the file under a lock and reloads nginx before
letting go, so neither undoes the other's change. nginx's config marks every name in it `down`."""

import fcntl
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from farmctl.render import write_whole
from farmctl.runtime import FarmError
from farmctl.wait import wait_until


@dataclass
class Rotation:
    #: Instances a graceful operation (roll, scale, restart) is restarting.
    draining: set[str] = field(default_factory=set)
    #: Instances the health loop holds out, with the reason ("timeout", "unready").
    out: dict[str, str] = field(default_factory=dict)

    @property
    def down(self) -> set[str]:
        return self.draining | set(self.out)


def _path(state_dir: Path) -> Path:
    return state_dir / "rotation.json"


def read(state_dir: Path) -> Rotation:
    try:
        raw = json.loads(_path(state_dir).read_text())
    except FileNotFoundError:
        return Rotation()
    return Rotation(set(raw["draining"]), dict(raw["out"]))


def reset(state_dir: Path) -> None:
    """A farm that starts has everything in rotation."""
    _path(state_dir).unlink(missing_ok=True)


@contextmanager
def editing(state_dir: Path) -> Iterator[Rotation]:
    """Read, let the caller change it (and reload nginx), write - all under one lock."""
    with (state_dir / "rotation.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rotation = read(state_dir)
        yield rotation
        # Readers (out_of_rotation, the status) take no lock: they see the old file or the new.
        write_whole(_path(state_dir), json.dumps({"draining": sorted(rotation.draining), "out": rotation.out}))


Change = Callable[[Rotation], object]


def unchanged(_: Rotation) -> None:
    pass


def _workers(master_pid: int) -> dict[int, str]:
    """pid -> title of each child of the nginx master ("nginx: worker process [is shutting down]")."""
    workers = {}
    try:
        children = psutil.Process(master_pid).children()
    except psutil.Error:
        return {}
    for child in children:
        try:
            workers[child.pid] = " ".join(child.cmdline()).strip()
        except psutil.Error:
            continue
    return workers


def reload(state_dir: Path, render: Callable[[set[str]], str], nginx_pid: Callable[[], int],
           hup: Callable[[], None], change: Change = unchanged, timeout_s: float = 15, finish: bool = True) -> None:
    """Apply `change` to the rotation, re-render nginx's config (`render(down)`) and reload nginx
    (`hup`: new workers take new requests, old ones finish theirs); return once the new workers run
    and, with `finish`, every old one is gone (its requests done: a drained instance can then be stopped)."""
    with editing(state_dir) as current:
        change(current)
        (state_dir / "nginx.conf").write_text(render(current.down))
        before = set(_workers(nginx_pid()))
        hup()

        def reloaded() -> bool:
            workers = _workers(nginx_pid())
            new = {pid for pid, title in workers.items() if "shutting down" not in title} - before
            return bool(new) and not (finish and set(workers) - new)

        if not wait_until(reloaded, timeout_s, interval_s=0.05):
            raise FarmError(f"nginx did not finish reloading within {timeout_s:.0f} s")
