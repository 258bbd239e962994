"""Short real load tests with chaos: Redis sessions must PASS, in-process sessions must FAIL -
the proof that the check can fail."""

from pathlib import Path

import pytest

from farmctl.runtime import FarmError
from loadtest.faults import MODES, REDIS
from loadtest.run import LoadSpec, run_scenario
from loadtest.summary import LoadSummary
from tests.conftest import FarmFactory

pytestmark = pytest.mark.loadtest

SHORT = LoadSpec(users=6, duration="15s", kill_every_s=4, spawn_rate=6)


def test_redis_sessions_survive_repeated_kills(farm_factory: FarmFactory, tmp_path: Path) -> None:
    summary = run_scenario(farm_factory(3), SHORT, tmp_path)
    assert summary.verdict == "PASS", summary
    assert summary.kills >= 3
    assert summary.returns == summary.kills
    assert summary.sessions_lost == summary.mixups == summary.lost_updates == 0
    assert summary.requests > 100
    assert set(summary.per_instance) == {"web1", "web2", "web3"}
    assert LoadSummary.read(tmp_path / "summary.json") == summary
    assert (tmp_path / "timeline.png").stat().st_size > 10_000
    assert (tmp_path / "report.html").exists()


def test_in_process_sessions_fail_the_same_run(farm_factory: FarmFactory, tmp_path: Path) -> None:
    summary = run_scenario(farm_factory(3, session_backend="memory"), SHORT, tmp_path)
    assert summary.verdict == "FAIL"
    assert summary.sessions_lost > 10


def test_redis_primary_kill_run_completes_with_failover(farm_factory: FarmFactory, tmp_path: Path) -> None:
    """CHAOS=redis: a SIGKILL of the Redis primary mid-run, timed until the Sentinels name a new one.
    What it cost (sessions lost, lost updates, 503s) is reported, not asserted: replication is
    asynchronous. On a cluster the same fault kind is driven under load by tests/farm/test_cluster.py."""
    spec = LoadSpec(users=6, duration="20s", kill_every_s=8, spawn_rate=6, chaos=REDIS)
    summary = run_scenario(farm_factory(3, redis_mode="sentinel"), spec, tmp_path)
    print(summary.model_dump_json(include={"kills", "return_times_s", "sessions_lost", "lost_updates", "failures",
                                           "requests"}))
    assert summary.chaos == REDIS.name
    assert summary.kills >= 1
    assert summary.returns >= 1
    assert summary.requests > 100
    assert LoadSummary.read(tmp_path / "summary.json") == summary


@pytest.mark.parametrize(("chaos", "instances", "redis_mode", "why"), [
    ("redis", 1, "single", "needs a native farm with REDIS=sentinel"),
    ("redis-stall", 3, "sentinel", "stalls the one Redis of a single-Redis farm"),
    ("mixed", 3, "sentinel", "stalls the one Redis of a single-Redis farm"),
    ("hang", 1, "single", "never the last one: it needs N=2"),
    ("partition", 1, "single", "never the last one: it needs N=2"),
])
def test_chaos_refused_where_the_farm_cannot_take_it(farm_factory: FarmFactory, tmp_path: Path, chaos: str,
                                                     instances: int, redis_mode: str, why: str) -> None:
    farm = farm_factory(instances, start=False, redis_mode=redis_mode)
    with pytest.raises(FarmError, match=why):
        run_scenario(farm, LoadSpec(chaos=MODES[chaos]), tmp_path)
