"""One way to run a farm, for make, the tests, the bench, the load test and `make compare`:
pick the runtime, start the farm, and always stop it."""

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Literal, TypeVar, overload

from farmctl.config import FarmConfig
from farmctl.docker import DockerFarm, engine_available
from farmctl.native import NativeFarm
from farmctl.runtime import Farm

RUNTIMES = ("auto", "native", "docker")
F = TypeVar("F", bound=Farm)


@overload
def open_farm(config: FarmConfig, runtime: Literal["native"]) -> NativeFarm: ...
@overload
def open_farm(config: FarmConfig, runtime: str = "auto") -> Farm: ...
def open_farm(config: FarmConfig, runtime: str = "auto") -> Farm:
    """The farm `config` describes, under `runtime`; `auto` picks Docker when an engine answers, native otherwise."""
    if runtime == "auto":
        runtime = "docker" if engine_available() else "native"
    if runtime == "docker":
        return DockerFarm(config)
    if runtime == "native":
        return NativeFarm(config)
    raise ValueError(f"RUNTIME must be {', '.join(RUNTIMES)}, not {runtime!r}")


@overload
def running_farm(config: FarmConfig, runtime: Literal["native"], *, start: bool = ...,
                 timeout_s: float = ...) -> AbstractContextManager[NativeFarm]: ...
@overload
def running_farm(config: FarmConfig, runtime: str = "auto", *, start: bool = ...,
                 timeout_s: float = ...) -> AbstractContextManager[Farm]: ...
def running_farm(config: FarmConfig, runtime: str = "auto", *, start: bool = True,
                 timeout_s: float = 60) -> AbstractContextManager[Farm]:
    """`with running_farm(config) as farm:` - the farm is up (healthy) inside, and down after, whatever
    happened. `start=False` leaves starting it to the caller (a test of `up` itself); it is still stopped."""
    return _running(open_farm(config, runtime), start, timeout_s)


@contextmanager
def _running(farm: F, start: bool, timeout_s: float) -> Iterator[F]:
    try:
        if start:
            farm.up(timeout_s)
        yield farm
    finally:
        farm.down()
