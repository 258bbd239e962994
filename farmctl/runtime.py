"""The runtime interface: everything make, the tests, the bench and the chaos may ask of a farm,
whatever supervises it, and the types that go with it.

Implementations: `farmctl.native.NativeFarm` (supervisord) and `farmctl.docker.DockerFarm` (docker
compose); `farmctl.lifecycle` picks one. Callers use `Farm` only; what one runtime cannot do is a
`Capability` it lacks, and asking for it anyway raises `Unsupported`."""

from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from farmctl.config import FarmConfig


class FarmError(RuntimeError):
    """Something the user can act on; the CLI prints it without a traceback."""


class Unsupported(FarmError):
    """The runtime lacks the `Capability` the call needs."""


class Capability(StrEnum):
    """What not every runtime can do."""

    #: `cut_off`/`reconnect`: a real network fault between one instance and Redis.
    CUT_OFF = "cut-off"
    #: `out_of_rotation`: active health checks hold a hung or store-less instance out of the rotation.
    ACTIVE_HEALTH = "active-health"
    #: `drain`/`undrain`: the balancer stops sending new requests to an instance on demand.
    DRAIN = "drain"
    #: `up` with another number of instances while the farm runs.
    SCALE = "scale"
    #: `redis_primary`/`failover_ready`, and a SIGKILLed primary replaced (REDIS=sentinel).
    REDIS_FAILOVER = "redis-failover"


#: The state of a process that runs although its supervisor does not (nothing restarts it if it dies).
UNSUPERVISED = "UNSUPERVISED"


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
    """A farm that can be started, inspected, broken and mended."""

    name: str
    config: FarmConfig
    capabilities: frozenset[Capability]

    # -- lifecycle ------------------------------------------------------------------------------
    def up(self, timeout_s: float = ...) -> None:
        """Start the farm, or bring a running one in line with the config; return once it is healthy."""

    def down(self, timeout_s: float = ...) -> None:
        """Stop everything (a no-op if nothing runs)."""

    def is_running(self) -> bool: ...

    def restart(self, name: str) -> None:
        """Stop and start one process, and return once the farm is healthy again."""

    def roll(self) -> list[tuple[str, float]]:
        """Restart every instance, one at a time, without failing a request; returns (name, seconds)."""

    def drain(self, *names: str) -> None:
        """Take these instances out of the rotation for an operation (the balancer finishes what they
        have); returns once no new request reaches them. `Capability.DRAIN`."""

    def undrain(self, *names: str) -> None:
        """Put drained instances back into the rotation (all of them if no name is given)."""

    # -- inspecting -----------------------------------------------------------------------------
    def status(self) -> list[ProcessStatus]: ...
    def instance_names(self) -> list[str]: ...

    def pid(self, name: str) -> int:
        """The pid of a process's main process as this machine sees it; 0 if it is not running."""

    def is_serving(self, name: str) -> bool:
        """Instance `name` answers its own /healthz (directly, not through the balancer)."""

    def unhealthy(self) -> list[str]:
        """Names of the parts that are not healthy yet (empty when all is)."""

    def wait_healthy(self, timeout_s: float = ...) -> None:
        """Return once `unhealthy()` is empty; FarmError (with the logs' tails) after `timeout_s`."""

    def out_of_rotation(self) -> dict[str, str]:
        """Instances the health checks hold out of the rotation now, with the reason ("timeout",
        "unready"). `Capability.ACTIVE_HEALTH`; without it, always empty."""

    def redis_primary(self) -> str | None:
        """The Redis node that is primary now (a name of `config.redis_nodes`); None while the
        Sentinels disagree or are down. `Capability.REDIS_FAILOVER`."""

    def cluster_roles(self) -> dict[str, str]:
        """REDIS=cluster: each node's role as the cluster sees it ("primary, 5461 slots", "replica of
        redis-node1", "down"), by node name; {} without a cluster, or when no node answers."""

    def failover_ready(self) -> bool:
        """A SIGKILL of the primary now would end in a failover (a replica in sync, every Sentinel in
        agreement). `Capability.REDIS_FAILOVER`."""

    def log_path(self, name: str) -> str: ...

    def tail(self, name: str, lines: int = ...) -> str:
        """The last lines of a process's log."""

    # -- breaking and mending -------------------------------------------------------------------
    def kill(self, name: str, sig: str = ...) -> int:
        """Send a signal to a process's main process, as a crash would; returns its pid (0 if unknown)."""

    def pause(self, name: str) -> None:
        """Freeze a process (SIGSTOP): it keeps its sockets and answers nothing - a hang."""

    def resume(self, name: str) -> None:
        """Undo `pause` (SIGCONT); harmless if it is not paused."""

    def stop(self, name: str) -> None: ...
    def start(self, name: str) -> None: ...

    def cut_off(self, name: str) -> None:
        """Instance `name` loses its path to Redis (its packets are dropped) while the other instances
        keep theirs. `Capability.CUT_OFF`."""

    def reconnect(self, name: str) -> None:
        """Undo `cut_off` (a no-op if `name` is not cut off)."""


def require(farm: Farm, capability: Capability, what: str) -> None:
    """Raise `Unsupported` naming `what` if `farm` lacks `capability`."""
    if capability not in farm.capabilities:
        raise Unsupported(f"{what} needs {capability.value}, which the {farm.name} runtime does not have")


def as_rows(statuses: Collection[ProcessStatus]) -> list[tuple[str, str, str, str]]:
    """(name, port, pid, state) strings for a status table; "-" where unknown."""
    return [(s.name, str(s.port or "-"), str(s.pid or "-"), "up" if s.up else s.state.lower())
            for s in statuses]
