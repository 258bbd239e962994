"""What the demo shows must never step backwards (issue #12): `requests_in_session` read through
round-robin is exact with the near cache off, and not shown at all with it on (instances count on
their own then, and write behind once a second); the dashboard, which always reads the session
from Redis, counts exactly in both modes."""

import re

import pytest

from farmctl.runtime import Farm
from farmctl.wait import wait_until
from tests.conftest import FarmFactory
from tests.farm.users import signed_in

pytestmark = pytest.mark.farm

COUNT = re.compile(r'id="request-count">(\d+)<')


def test_exact_mode_counts_every_request_once_whichever_instance_serves_it(farm_factory: FarmFactory) -> None:
    farm = farm_factory(3, extra_env={"SESSION_NEAR_CACHE_S": "0"})
    # A probe timed out on a loaded machine right after the start takes an instance out for a moment.
    assert wait_until(lambda: not farm.out_of_rotation(), 10, interval_s=0.1), farm.out_of_rotation()
    with signed_in(farm.config.balancer_url) as client:
        answers = [client.get("/api/me").json() for _ in range(30)]
    assert {a["served_by"] for a in answers} == {"web1", "web2", "web3"}
    assert [a["requests_in_session"] for a in answers] == list(range(1, 31))


def test_near_cache_mode_shows_no_count_it_cannot_keep_and_the_dashboard_never_steps_back(
        any_farm: Farm) -> None:
    with signed_in(any_farm.config.balancer_url) as client:
        answers = [client.get("/api/me").json() for _ in range(30)]
        assert {a["served_by"] for a in answers} == {"web1", "web2", "web3"}
        assert {a["requests_in_session"] for a in answers} == {None}
        shown = [int(COUNT.findall(client.get("/dashboard").text)[0]) for _ in range(12)]
    assert shown == sorted(set(shown))  # strictly increasing: never back, never the same twice
