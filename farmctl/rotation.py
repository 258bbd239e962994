"""Which instances nginx sends requests to, natively: one small file that two writers share.

`farmctl roll` drains an instance for its restart; the health loop (farmctl/health.py) takes out
one that hangs or cannot reach the store. Each edits the file under a lock and reloads nginx before
letting go, so neither undoes the other's change. nginx's config marks every name in it `down`."""

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


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
        _path(state_dir).write_text(json.dumps({"draining": sorted(rotation.draining), "out": rotation.out}))
