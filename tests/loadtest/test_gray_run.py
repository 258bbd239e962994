"""A short real load test with the gray fault of CHAOS=hang: the farm must detect it, restart the
hung instance, recover, and break no promise meanwhile. (The other faults' farm behaviour is tested
in tests/farm/test_gray.py and test_store_faults.py; `make loadtest CHAOS=mixed` runs them all.)"""

from pathlib import Path

import psutil
import pytest

from farmctl.runtime import Farm
from loadtest.faults import MODES, Hang
from loadtest.run import LoadSpec, run_scenario
from loadtest.summary import FaultRow, LoadSummary
from tests.conftest import FarmFactory

pytestmark = pytest.mark.loadtest


def one_fault(farm: Farm, chaos: str, duration: str, out: Path) -> tuple[LoadSummary, FaultRow]:
    """A run with a fault at 6 s that ends too soon for a second one; returns the summary and the fault."""
    spec = LoadSpec(users=6, duration=duration, kill_every_s=6, spawn_rate=6, chaos=MODES[chaos])
    summary = run_scenario(farm, spec, out)
    print([fault.model_dump_json() for fault in summary.faults])
    assert summary.verdict == "PASS", summary
    assert summary.requests > 100
    [fault] = summary.faults
    assert fault.kind == chaos
    assert fault.detect_s is not None
    assert fault.detect_s < 3
    assert fault.recover_s is not None
    assert fault.recover_s < 5
    return summary, fault


def test_a_hung_instance_leaves_the_rotation_and_is_restarted(farm_factory: FarmFactory, tmp_path: Path) -> None:
    farm = farm_factory(3)
    summary, hang = one_fault(farm, Hang.name, "22s", tmp_path)
    assert hang.restarted is True  # by the farm's liveness check, not resumed by the chaos
    assert hang.lasted_s is not None
    assert 9 < hang.lasted_s < Hang.hold_s
    # Nothing of the farm is left frozen by the fault (SIGSTOP): the chaos always lifts what it caused.
    pids = [farm.pid(s.name) for s in farm.status() if s.up]
    assert pids
    assert all(psutil.Process(pid).status() != psutil.STATUS_STOPPED for pid in pids)
    assert LoadSummary.read(tmp_path / "summary.json") == summary
    assert (tmp_path / "timeline.png").stat().st_size > 10_000
