"""A real network fault for the native farm: one instance loses its path to Redis, the others keep theirs.

Every process of the farm talks to Redis over the same loopback, so an address or a port cannot
tell the victim's packets apart. Its cgroup can: the instance's process moves into a cgroup of
its own and iptables drops what sockets of that cgroup send to the Redis ports (`-m cgroup`,
cgroup v2), plus what its already open connections send (matched by their source ports: a
socket keeps the cgroup it was created in). Nothing in the app knows: its Redis calls time out,
exactly as when a switch or a security group drops the traffic. Needs root, iptables and cgroup v2."""

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import psutil

from farmctl.runtime import FarmError


def _cgroup2_root() -> Path:
    for line in Path("/proc/mounts").read_text().splitlines():
        _device, mountpoint, fstype, *_ = line.split()
        if fstype == "cgroup2":
            return Path(mountpoint)
    raise FarmError("cutting an instance off needs cgroup v2 (no cgroup2 mount in /proc/mounts)")


def _iptables(*args: str) -> None:
    binary = shutil.which("iptables") or "/usr/sbin/iptables"
    result = subprocess.run([binary, "-w", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise FarmError(f"iptables {' '.join(args)} failed (needs root and iptables): {result.stderr.strip()}")


def _record(state_dir: Path, name: str) -> Path:
    return state_dir / "netfault" / f"{name}.json"


def cut_off(state_dir: Path, name: str, pid: int, ports: list[int]) -> None:
    """Drop every packet instance `name` (process `pid`) sends to any of `ports` from now on."""
    if _record(state_dir, name).exists():
        return
    farm_id = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8]
    cgroup = f"webfarm-{farm_id}-{name}"
    root = _cgroup2_root()
    home = Path(f"/proc/{pid}/cgroup").read_text().split("0::", 1)[1].split("\n", 1)[0]
    (root / cgroup).mkdir(exist_ok=True)
    (root / cgroup / "cgroup.procs").write_text(str(pid))
    rules = [["-p", "tcp", "-d", "127.0.0.1", "--dport", str(port), "-m", "cgroup", "--path", cgroup, "-j", "DROP"]
             for port in ports]
    rules += [["-p", "tcp", "-s", "127.0.0.1", "--sport", str(c.laddr.port), "-d", "127.0.0.1",
               "--dport", str(c.raddr.port), "-j", "DROP"]
              for c in psutil.Process(pid).net_connections(kind="tcp") if c.raddr and c.raddr.port in ports]
    record = _record(state_dir, name)
    record.parent.mkdir(exist_ok=True)
    record.write_text(json.dumps({"pid": pid, "cgroup": cgroup, "home": home, "rules": rules}))
    for rule in rules:
        _iptables("-I", "OUTPUT", *rule)


def reconnect(state_dir: Path, name: str) -> None:
    """Undo `cut_off`: delete its rules, move the process (if it still runs) back, remove the cgroup."""
    record = _record(state_dir, name)
    if not record.exists():
        return
    fault = json.loads(record.read_text())
    for rule in fault["rules"]:
        _iptables("-D", "OUTPUT", *rule)
    root = _cgroup2_root()
    if psutil.pid_exists(fault["pid"]):
        try:
            (root / fault["home"].lstrip("/") / "cgroup.procs").write_text(str(fault["pid"]))
        except OSError:  # its home cgroup is gone: the root takes any process
            (root / "cgroup.procs").write_text(str(fault["pid"]))
    (root / fault["cgroup"]).rmdir()
    record.unlink()


def reconnect_all(state_dir: Path) -> None:
    for record in (state_dir / "netfault").glob("*.json"):
        reconnect(state_dir, record.stem)
