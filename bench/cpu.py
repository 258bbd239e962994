"""Where the CPU went during a measurement, per group of processes, read from /proc (Linux)."""

import os
import resource
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat from the state on (the command name may contain spaces)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and int(fields[1]) == pid:
            kids.append(int(entry.name))
    return kids


def process_seconds(pid: int) -> float:
    """User + system CPU time of one process so far; 0 once it is gone."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS if fields else 0.0


def machine_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of all cores since boot."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return (total - idle - iowait) / CLOCK_TICKS, total / CLOCK_TICKS


def _children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Snapshot:
    groups: dict[str, float]
    waited_children: float
    busy: float
    total: float


def snapshot(groups: Mapping[str, Sequence[int]]) -> Snapshot:
    busy, total = machine_seconds()
    return Snapshot({name: sum(process_seconds(p) for p in pids) for name, pids in groups.items()},
                    _children_seconds(), busy, total)


@dataclass(frozen=True)
class CpuUse:
    """CPU microseconds per request by group (`wrk` is the load generator, `other` the rest of the
    machine: the kernel's loopback work, supervisord, this script), and how busy all cores were."""

    us_per_request: dict[str, float]
    busy_fraction: float


def cpu_use(before: Snapshot, after: Snapshot, requests: int) -> CpuUse:
    """What happened between two snapshots; `wrk` is every child process waited for in between."""
    spent = {name: after.groups[name] - before.groups[name] for name in before.groups}
    spent["wrk"] = after.waited_children - before.waited_children
    busy = after.busy - before.busy
    spent["other"] = max(0.0, busy - sum(spent.values()))
    per_request = {name: seconds * 1e6 / max(requests, 1) for name, seconds in spent.items()}
    return CpuUse(per_request, busy / max(after.total - before.total, 1e-9))
