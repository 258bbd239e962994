"""The client of supervisord's XML-RPC interface, over its unix socket; and the processes supervisord
started, found without it (it may be dead while they run on)."""

import configparser
import os
import signal
import xmlrpc.client
from collections.abc import Collection
from pathlib import Path
from typing import Any

import psutil
from supervisor.xmlrpc import SupervisorTransport

from farmctl.wait import wait_until

#: supervisord's states of a process that is not running and not about to.
STOPPED = frozenset({"STOPPED", "EXITED", "FATAL", "UNKNOWN"})


class Supervisor:
    """supervisord of one state dir: is it up, its processes, and the calls farmctl makes."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.state_dir = socket_path.parent
        self.pid_file = self.state_dir / "supervisord.pid"

    @property
    def rpc(self) -> Any:
        """The `supervisor.*` namespace of the API (a fresh connection per call chain)."""
        transport = SupervisorTransport(serverurl=f"unix://{self.socket_path}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def is_running(self) -> bool:
        if not self.socket_path.exists():
            return False
        try:
            return bool(self.rpc.getState()["statename"] == "RUNNING")
        except (OSError, xmlrpc.client.Fault):
            return False

    def daemon_pid(self) -> int:
        """supervisord's own pid, from its pid file: the last one started (0 if none was, or it was shut
        down - supervisord removes the file then; a SIGKILLed one leaves it)."""
        try:
            return int(self.pid_file.read_text())
        except (OSError, ValueError):
            return 0

    def session(self, sid: int = 0) -> list[psutil.Process]:
        """Every live process supervisord `sid` (by default the last one started) started, and theirs
        (nginx's workers), whoever their parent is now - supervisord itself excluded.

        supervisord daemonizes into a session of its own (setsid); its children move to process
        groups of their own but stay in its session, and so do theirs; and Linux does not give a
        session's number to a new process while any member lives. So a session whose leader is
        gone is still the farm's, if one of its members has a file of the state dir open or names it."""
        sid = sid or self.daemon_pid()
        if not sid or sid == os.getsid(0):
            return []
        members = []
        for proc in psutil.process_iter():
            try:
                if proc.pid != sid and os.getsid(proc.pid) == sid and alive(proc):
                    members.append(proc)
            except (OSError, psutil.Error):
                continue
        leader = _process(sid)
        if leader is not None:
            return members if self._is_ours(leader, cmdline_only=True) else []
        return members if any(self._is_ours(p) for p in members) else []

    def _is_ours(self, proc: psutil.Process, cmdline_only: bool = False) -> bool:
        here = f"{self.state_dir}/"
        try:
            if here in " ".join(proc.cmdline()):
                return True
            return not cmdline_only and (any(f.path.startswith(here) for f in proc.open_files())
                                         or f"{proc.cwd()}/".startswith(here))
        except psutil.Error:
            return False

    def processes(self) -> dict[str, dict[str, Any]]:
        """name -> supervisord's process info (pid, statename, ...)."""
        return {p["name"]: p for p in self.rpc.getAllProcessInfo()}

    def pid(self, name: str) -> int:
        return int(self.rpc.getProcessInfo(name)["pid"])

    def signal(self, name: str, sig: str) -> None:
        self.rpc.signalProcess(name, sig)

    def start(self, name: str) -> None:
        self.rpc.startProcess(name)

    def stop(self, name: str) -> None:
        self.rpc.stopProcess(name)

    def reread(self) -> tuple[list[str], list[str], list[str]]:
        """Re-read the config file: the (added, changed, removed) process groups, not applied yet."""
        [[added, changed, removed]] = self.rpc.reloadConfig()
        return added, changed, removed

    def add(self, name: str) -> None:
        self.rpc.addProcessGroup(name)

    def remove(self, name: str) -> None:
        """Stop a process group and forget it."""
        self.rpc.stopProcessGroup(name)
        self.rpc.removeProcessGroup(name)

    def shutdown(self, timeout_s: float = 30) -> None:
        """Stop every process in supervisord's order (highest priority first: health, nginx, the
        instances, Redis last), then supervisord. Its own shutdown keeps that order too, but moves
        to the next group only at its next one-second tick; asking after the processes wakes it, so
        a farm stops in about a second instead of three."""
        priority = self._priorities()
        running = [name for name, p in self.processes().items() if p["statename"] not in STOPPED]
        for level in sorted({priority.get(name, 999) for name in running}, reverse=True):
            group = [name for name in running if priority.get(name, 999) == level]
            for name in group:
                try:
                    self.rpc.stopProcess(name, False)
                except xmlrpc.client.Fault:  # it stopped by itself meanwhile
                    continue
            wait_until(lambda: self._all_stopped(group), timeout_s, interval_s=0.05)  # noqa: B023
        self.rpc.shutdown()

    def _all_stopped(self, names: list[str]) -> bool:
        processes = self.processes()
        return all(processes[name]["statename"] in STOPPED for name in names)

    def wait_exited(self, timeout_s: float) -> bool:
        """Whether the last supervisord started here is gone (at once if it is; a shut down one exits
        at its next tick, then removes its pid file and socket)."""
        def gone() -> bool:
            pid = self.daemon_pid()
            proc = _process(pid) if pid else None
            return proc is None or not self._is_ours(proc, cmdline_only=True)

        return bool(wait_until(gone, timeout_s, interval_s=0.05))

    def _priorities(self) -> dict[str, int]:
        parser = configparser.RawConfigParser()
        parser.read(self.state_dir / "supervisord.conf")
        return {section.partition(":")[2]: parser.getint(section, "priority", fallback=999)
                for section in parser.sections() if section.startswith("program:")}


def _process(pid: int) -> psutil.Process | None:
    try:
        proc = psutil.Process(pid)
    except psutil.Error:
        return None
    return proc if alive(proc) else None


def alive(proc: psutil.Process) -> bool:
    """Running, not exited: a zombie counts as gone (its sockets are closed; an orphan's may never be
    reaped where PID 1 reaps nothing)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def terminate(procs: Collection[psutil.Process], sig: signal.Signals, timeout_s: float) -> list[psutil.Process]:
    """Send `sig` to each of `procs`, SIGKILL those still alive after `timeout_s`; returns the ones
    that were SIGKILLed (after waiting for them to go too)."""
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            continue
    if wait_until(lambda: not any(alive(p) for p in procs), timeout_s, interval_s=0.05):
        return []
    killed = [p for p in procs if alive(p)]
    for proc in killed:
        try:
            proc.kill()
        except psutil.Error:
            continue
    wait_until(lambda: not any(alive(p) for p in killed), 5, interval_s=0.05)
    return killed
