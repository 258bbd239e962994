"""The client of supervisord's XML-RPC interface, over its unix socket."""

import xmlrpc.client
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import SupervisorTransport


class Supervisor:
    """supervisord of one state dir: is it up, its processes, and the calls farmctl makes."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

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

    def shutdown(self) -> None:
        self.rpc.shutdown()
