"""Where the CPU went during a measurement, per group of processes (psutil)."""

import resource
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import psutil


def children(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.Error:
        return []


def process_seconds(pid: int) -> float:
    """User + system CPU time of one process so far; 0 once it is gone."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def machine_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of all cores since boot."""
    times = psutil.cpu_times()
    # guest time is already counted in user time; iowait is idle time spent waiting.
    idle = times.idle + getattr(times, "iowait", 0.0)
    total = sum(getattr(times, name, 0.0) for name in
                ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"))
    return total - idle, total


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
