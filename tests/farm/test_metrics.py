"""Each instance's /metrics (app/metrics.py), scraped from its own port after known traffic: the
counters and histograms equal what was sent to that instance - sign-ins by outcome, sessions
started and ended, cart adds, the hot path GET /api/me, the near cache - and a killed instance
starts counting again. The balancer exposes no metrics path."""

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from farmctl.config import Instance
from farmctl.runtime import Farm
from farmctl.wait import wait_until
from tests.farm.users import PASSWORD, login, new_username, register

pytestmark = pytest.mark.farm

Sample = tuple[str, frozenset[tuple[str, str]]]


def scrape(inst: Instance) -> Counter[Sample]:
    response = httpx.get(f"{inst.url}/metrics", timeout=5)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Counter({(s.name, frozenset(s.labels.items())): s.value
                    for family in text_string_to_metric_families(response.text) for s in family.samples})


def value(samples: Counter[Sample], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@contextmanager
def change_of(inst: Instance) -> Iterator[Counter[Sample]]:
    """What the instance's counters gained during the block (filled in after it)."""
    before, change = scrape(inst), Counter[Sample]()
    yield change
    after = scrape(inst)
    change.update({key: after[key] - before[key] for key in after})


def test_scraped_counters_equal_what_each_instance_was_sent(any_farm: Farm) -> None:
    sent = {inst.name: (1 + i, 2 + i, 3 + i, 4 + i) for i, inst in enumerate(any_farm.config.web)}
    for inst in any_farm.config.web:
        signins, wrong, adds, reads = sent[inst.name]
        usernames = [new_username("m") for _ in range(signins)]
        with httpx.Client(base_url=inst.url, timeout=10) as client:
            for username in usernames:
                register(client, username)
            with change_of(inst) as change:
                for i in range(wrong):  # each of another account: no throttle in the way
                    assert login(client, usernames[i % signins], "wrong-password-1").status_code == 401
                for username in usernames:
                    assert login(client, username).status_code == 200
                for i in range(adds):
                    assert client.post("/api/cart/items", json={"sku": f"s{i}", "qty": 1}).status_code == 200
                for _ in range(reads):
                    assert client.get("/api/me").status_code == 200
                assert client.post("/api/logout").status_code == 204
        print(inst.name, {k[0]: v for k, v in change.items() if v and k[0].startswith("webfarm_signins")})
        assert value(change, "webfarm_signins_total", result="ok") == signins
        assert value(change, "webfarm_signins_total", result="wrong") == wrong
        assert value(change, "webfarm_sessions_started_total") == signins
        assert value(change, "webfarm_sessions_ended_total", reason="logout") == 1
        route = {"route": "/api/login", "method": "POST"}
        assert value(change, "webfarm_http_requests_total", **route, code="200") == signins
        assert value(change, "webfarm_http_requests_total", **route, code="401") == wrong
        assert value(change, "webfarm_http_request_duration_seconds_count", **route) == signins + wrong
        add = {"route": "/api/cart/items", "method": "POST"}
        assert value(change, "webfarm_http_requests_total", **add, code="200") == adds
        # The hot path, answered before the router, under its route template like the others.
        me = {"route": "/api/me", "method": "GET"}
        assert value(change, "webfarm_http_requests_total", **me, code="200") == reads
        assert value(change, "webfarm_http_request_duration_seconds_count", **me) == reads
        assert value(change, "webfarm_http_request_duration_seconds_bucket", **me, le="+Inf") == reads
        lookups = value(change, "webfarm_near_cache_lookups_total", result="hit") + \
            value(change, "webfarm_near_cache_lookups_total", result="miss")
        assert lookups == reads  # only a session lookup (identify) asks the cache; adds and logins go to Redis
        assert value(change, "webfarm_store_errors_total", kind="unavailable") == 0


def test_idempotent_repeats_are_counted_once_each_and_applied_once(any_farm: Farm) -> None:
    inst = any_farm.config.web[0]
    username = new_username("r")
    with httpx.Client(base_url=inst.url, timeout=10) as client, change_of(inst) as change:
        for _ in range(3):  # the first creates the account, the two repeats find it created
            assert client.post("/api/register", json={"username": username, "password": PASSWORD},
                               headers={"Idempotency-Key": f"reg-{username}"}).status_code == 201
        assert login(client, username).status_code == 200
        def add(key: str) -> dict[str, int]:
            added = client.post("/api/cart/items", json={"sku": "once", "qty": 1}, headers={"Idempotency-Key": key})
            assert added.status_code == 200, added.text
            items: dict[str, int] = added.json()["items"]
            return items

        assert [add("add-00001") for _ in range(4)] == [{"once": 1}] * 4  # applied once, answered four times
        assert add("add-00002") == {"once": 2}
    assert value(change, "webfarm_idempotent_repeats_total", write="register") == 2
    assert value(change, "webfarm_idempotent_repeats_total", write="cart_add") == 3


def test_the_hot_path_resolves_below_a_millisecond_and_up_to_the_deadline(any_farm: Farm) -> None:
    samples = scrape(any_farm.config.web[0])
    bounds = {float(dict(labels)["le"]) for name, labels in samples
              if name == "webfarm_http_request_duration_seconds_bucket"}
    assert {0.00025, 0.0005, 0.001, 1.5} <= bounds


def test_a_killed_instance_counts_again_from_its_start(any_farm: Farm) -> None:
    victim = any_farm.config.web[1]
    with httpx.Client(base_url=victim.url, timeout=10) as client:
        for _ in range(5):
            client.get("/api/me")
    started = value(scrape(victim), "process_start_time_seconds")
    old_pid = any_farm.pid(victim.name)
    any_farm.kill(victim.name, "KILL")
    assert wait_until(lambda: any_farm.pid(victim.name) not in (0, old_pid) and any_farm.is_serving(victim.name), 30)
    with httpx.Client(base_url=victim.url, timeout=10) as client:
        for _ in range(3):
            assert client.get("/api/me").status_code == 401
    after = scrape(victim)
    assert value(after, "process_start_time_seconds") > started
    assert value(after, "webfarm_http_requests_total", route="/api/me", method="GET", code="401") == 3


@pytest.mark.parametrize("path", ["/metrics", "/metrics?format=text", "/%6detrics", "//metrics"])
def test_the_balancer_exposes_no_metrics(any_farm: Farm, path: str) -> None:
    response = httpx.get(f"{any_farm.config.balancer_url}{path}", timeout=5)
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}
    assert "x-served-by" not in response.headers  # nginx's own answer: no instance was asked
