"""The kinds of fault and the CHAOS modes: which farms can take them, whom they hit, and the names
that `make loadtest CHAOS=...` accepts. (The faults themselves, on real farms: test_gray_run.py,
test_failover_run.py.)"""

import re
from pathlib import Path
from typing import Literal

import pytest

from farmctl.config import PROJECT_ROOT, FarmConfig
from farmctl.lifecycle import open_farm
from farmctl.runtime import Farm
from loadtest.faults import (
    FAULT_KINDS,
    MIXED,
    MODES,
    FaultKind,
    Hang,
    Kill,
    LoginStorm,
    Partition,
    PrimaryKill,
    RedisStall,
    chaos_mode,
    recorded_as,
)
from loadtest.run import LoadSpec


def farm(tmp_path: Path, instances: int = 3, redis_mode: Literal["single", "sentinel"] = "single",
         runtime: str = "native") -> Farm:
    """A farm that is described, not started: a refusal reads only its config and capabilities."""
    return open_farm(FarmConfig(instances=instances, redis_mode=redis_mode, state_dir=tmp_path), runtime)


@pytest.mark.parametrize(("kind", "instances", "redis_mode", "runtime", "why"), [
    (Kill, 1, "single", "native", None),  # the chaos skips a kill that would take the last instance
    (Kill, 3, "single", "docker", None),
    (PrimaryKill, 3, "single", "native", "needs a native farm with REDIS=sentinel"),
    (PrimaryKill, 3, "sentinel", "docker", "needs a native farm with REDIS=sentinel"),
    (PrimaryKill, 3, "sentinel", "native", None),
    (Hang, 1, "single", "native", "never the last one: it needs N=2"),
    (Hang, 2, "single", "native", None),
    (RedisStall, 3, "sentinel", "native", "stalls the one Redis of a single-Redis farm"),
    (RedisStall, 3, "single", "docker", None),
    (Partition, 3, "single", "docker", None),
    (Partition, 1, "single", "native", "never the last one: it needs N=2"),
    (Partition, 2, "single", "native", None),
    (LoginStorm, 3, "sentinel", "docker", None),
])
def test_refusal_follows_the_config_and_the_capabilities(
        tmp_path: Path, kind: type[FaultKind], instances: int, redis_mode: Literal["single", "sentinel"],
        runtime: str, why: str | None) -> None:
    refusal = kind.refusal(farm(tmp_path, instances, redis_mode, runtime))
    if why is None:
        assert refusal is None
    else:
        assert refusal is not None
        assert why in refusal


def test_mode_refusal_names_the_mode_and_its_first_refused_kind(tmp_path: Path) -> None:
    assert MIXED.refusal(farm(tmp_path, redis_mode="sentinel")) == (
        "CHAOS=mixed stalls the one Redis of a single-Redis farm; with REDIS=sentinel a stall of 4 s is a "
        "failover (CHAOS=redis)")
    assert MIXED.refusal(farm(tmp_path)) is None
    assert MODES["redis"].refusal(farm(tmp_path, redis_mode="sentinel")) is None


def test_makes_chaos_names_are_the_modes_in_order() -> None:
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    listed = re.search(r"CHAOS=([a-z|-]+)\)", makefile)
    assert listed is not None
    assert list(MODES) == listed[1].split("|")
    assert list(MODES) == ["instances", "redis", "hang", "redis-stall", "partition", "storm", "mixed"]


def test_modes_are_made_of_the_kinds() -> None:
    assert MODES["instances"].kinds == (Kill,)
    assert MODES["redis"].kinds == (PrimaryKill,)
    assert MIXED.kinds == (Hang, RedisStall, Partition, LoginStorm, Kill)
    assert [m.name for m in MODES.values() if m.overlapping] == ["instances", "redis"]
    assert all(MODES[kind.name].kinds == (kind,) for kind in FAULT_KINDS if kind.standalone)
    with pytest.raises(ValueError, match="CHAOS must be one of instances, redis, hang"):
        chaos_mode("kill")


def test_each_recorded_name_has_one_kind_and_colour() -> None:
    """A kill of the Redis primary is recorded as a kill: on the timeline and among the summary's kills."""
    assert recorded_as(PrimaryKill.name) is Kill
    names = {kind.name for kind in FAULT_KINDS}
    assert all(recorded_as(name).name == name for name in names)
    assert len({recorded_as(name).colour for name in names}) == len(names)
    assert [name for name in names if recorded_as(name).instant] == [Kill.name]


@pytest.mark.parametrize("kind", [Kill, Hang, Partition])
def test_an_instance_fault_never_takes_the_last_instance(tmp_path: Path, kind: type[FaultKind]) -> None:
    three = farm(tmp_path)
    assert kind.pick_victim(three, {"web1"}) in {"web2", "web3"}
    assert kind.pick_victim(three, {"web1", "web2"}) is None


def test_load_spec_defaults_follow_the_mode() -> None:
    assert (LoadSpec.for_chaos(MODES["instances"]).users, LoadSpec.for_chaos(MODES["instances"]).duration) == (50, "2m")
    assert (LoadSpec.for_chaos(MODES["hang"]).users, LoadSpec.for_chaos(MODES["hang"]).duration) == (20, "60s")
    assert LoadSpec.for_chaos(MIXED).duration == "90s"
