"""A short real load test with the gray fault of CHAOS=hang: the farm must detect it, restart the
hung instance, recover, and break no promise meanwhile. (The other faults' farm behaviour is tested
in tests/farm/test_gray.py and test_store_faults.py; `make loadtest CHAOS=mixed` runs them all.)"""

import json
from pathlib import Path
from typing import Any

import psutil
import pytest

from farmctl.runtime import Farm
from loadtest.chaos import HANG_GIVE_UP_S
from loadtest.run import LoadSpec, run_scenario
from tests.conftest import FarmFactory

pytestmark = pytest.mark.loadtest


def one_fault(farm: Farm, chaos: str, duration: str, out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run with a fault at 6 s that ends too soon for a second one; returns the summary and the fault."""
    summary = run_scenario(farm, LoadSpec(users=6, duration=duration, kill_every_s=6, spawn_rate=6, chaos=chaos), out)
    print(json.dumps(summary["faults"]))
    assert summary["verdict"] == "PASS", summary
    assert summary["requests"] > 100
    [fault] = summary["faults"]
    assert fault["kind"] == chaos
    assert fault["detect_s"] is not None
    assert fault["detect_s"] < 3
    assert fault["recover_s"] is not None
    assert fault["recover_s"] < 5
    return summary, fault


def test_a_hung_instance_leaves_the_rotation_and_is_restarted(farm_factory: FarmFactory, tmp_path: Path) -> None:
    farm = farm_factory(3)
    summary, hang = one_fault(farm, "hang", "22s", tmp_path)
    assert hang["restarted"] is True  # by the farm's liveness check, not resumed by the chaos
    assert 9 < hang["lasted_s"] < HANG_GIVE_UP_S
    # Nothing of the farm is left frozen by the fault (SIGSTOP): the chaos always lifts what it caused.
    pids = [farm.pid(s.name) for s in farm.status() if s.up]
    assert pids
    assert all(psutil.Process(pid).status() != psutil.STATUS_STOPPED for pid in pids)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert (tmp_path / "timeline.png").stat().st_size > 10_000
