"""Redis work per request: INFO commandstats deltas, less the idle background."""

import pytest
import redis

from bench.redisstats import background_rate, calls, delta, per_request


def test_delta_counts_the_commands_run_between_two_readings_and_not_its_own(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        before = calls(client)
        for i in range(3):
            client.set(f"bench-test:{i}", i)
            client.get(f"bench-test:{i}")
        client.eval("return redis.call('INCR', KEYS[1])", 1, "bench-test:n")
        counted, seconds = delta(before, calls(client))

    assert counted["set"] == counted["get"] == 3
    # A script counts as itself and as every command it calls.
    assert counted["eval"] == counted["incr"] == 1
    assert "info" not in counted
    assert seconds > 0


def test_background_rate_is_calls_per_second_over_all_idle_windows() -> None:
    rate = background_rate([({"ping": 4.0, "set": 3.0}, 2.0), ({"ping": 2.0}, 1.0)])
    assert rate == pytest.approx({"ping": 2.0, "set": 1.0})
    assert background_rate([]) == {}


def test_per_request_takes_the_background_of_the_measurement_s_length_off() -> None:
    # 3 s at 2 pings/s of background: 6 of the 1006 pings were not the requests'.
    counted = {"ping": 1006.0, "evalsha": 1000.0}
    result = per_request(counted, 3.0, {"ping": 2.0, "set": 1.0}, requests=1000)
    assert result["ping"] == pytest.approx(1.0)
    assert result["evalsha"] == pytest.approx(1.0)
    # Background that did not show up in the measurement goes negative, to average out over rounds.
    assert result["set"] == pytest.approx(-0.003)
