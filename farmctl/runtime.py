"""The runtime interface: what make, the tests, the bench and the chaos may ask of any farm, and its types.

Implementations: `farmctl.native.NativeFarm` (supervisord) and `farmctl.docker.DockerFarm` (docker compose);
`farmctl.lifecycle` picks one and runs it."""

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # farmctl.config places configs on free ports, which raises FarmError
    from farmctl.config import FarmConfig


class FarmError(RuntimeError):
    """Something the user can act on; the CLI prints it without a traceback."""


@dataclass(frozen=True)
class ProcessStatus:
    """One supervised process (or container) as the runtime sees it."""

    name: str
    port: int
    pid: int
    state: str

    @property
    def up(self) -> bool:
        return self.state == "RUNNING"


class Farm(Protocol):
    """A farm that can be started, inspected, broken and mended, whatever supervises it."""

    name: str
    config: "FarmConfig"

    def up(self, timeout_s: float = ...) -> None:
        """Start the farm, or bring a running one in line with the config; return once it is healthy."""

    def down(self, timeout_s: float = ...) -> None:
        """Stop everything (a no-op if nothing runs)."""

    def is_running(self) -> bool: ...
    def status(self) -> list[ProcessStatus]: ...
    def instance_names(self) -> list[str]: ...

    def kill(self, name: str, sig: str = ...) -> int:
        """Send a signal to one process; returns its pid where the runtime knows it, else 0."""

    def stop(self, name: str) -> None: ...
    def start(self, name: str) -> None: ...

    def restart(self, name: str) -> None:
        """Stop and start one process, and return once the farm is healthy again."""

    def roll(self) -> list[tuple[str, float]]:
        """Restart every instance, one at a time, without failing a request; returns (name, seconds)."""

    def cut_off(self, name: str) -> None:
        """A real network fault: instance `name` loses its path to Redis (its packets are dropped)
        while the other instances keep theirs. FarmError where the runtime cannot do it."""

    def reconnect(self, name: str) -> None:
        """Undo `cut_off` (a no-op if `name` is not cut off)."""

    def out_of_rotation(self) -> dict[str, str]:
        """Instances the balancer's health checks hold out of the rotation now, with the reason
        ("timeout", "unready", ...); empty where the runtime has no active health checks."""

    def is_serving(self, name: str) -> bool: ...
    def wait_healthy(self, timeout_s: float = ...) -> None: ...
    def log_path(self, name: str) -> str: ...


def as_rows(statuses: Collection[ProcessStatus]) -> list[tuple[str, str, str, str]]:
    """(name, port, pid, state) strings for a status table; "-" where unknown."""
    return [(s.name, str(s.port or "-"), str(s.pid or "-"), "up" if s.up else s.state.lower())
            for s in statuses]
