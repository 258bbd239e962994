"""One way to run a farm, for make, the tests, the bench, the load test and `make compare`:
pick the runtime, start the farm, and always stop it."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from farmctl.config import FarmConfig
from farmctl.docker import DockerFarm, engine_available
from farmctl.native import NativeFarm
from farmctl.runtime import Farm

#: Each runtime by the name RUNTIME gives it. A third one is a package like farmctl/docker/ added here.
RUNTIMES: dict[str, Callable[[FarmConfig], Farm]] = {"native": NativeFarm, "docker": DockerFarm}


def pick_runtime(runtime: str = "auto") -> str:
    """`runtime`, or for `auto` Docker when an engine answers, native otherwise."""
    if runtime == "auto":
        return "docker" if engine_available() else "native"
    if runtime not in RUNTIMES:
        raise ValueError(f"RUNTIME must be auto, {', '.join(RUNTIMES)}, not {runtime!r}")
    return runtime


def open_farm(config: FarmConfig, runtime: str = "auto") -> Farm:
    """The farm `config` describes, under `runtime` (see `pick_runtime`)."""
    return RUNTIMES[pick_runtime(runtime)](config)


@contextmanager
def running_farm(config: FarmConfig, runtime: str = "auto", *, start: bool = True,
                 timeout_s: float = 60) -> Iterator[Farm]:
    """`with running_farm(config) as farm:` - the farm is up (healthy) inside, and down after, whatever
    happened. `start=False` leaves starting it to the caller (a test of `up` itself); it is still stopped."""
    farm = open_farm(config, runtime)
    try:
        if start:
            farm.up(timeout_s)
        yield farm
    finally:
        farm.down()
