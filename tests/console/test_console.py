"""The console against a real farm, without a browser: who may reach it (a signed-in user of a demo
farm, with the page's token, from the farm's origin), what bad orders get (a clear error, nothing
caused), and whether its numbers are the instances' own."""

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from app.config import DEMO_PASSWORD, DEMO_USERNAME
from console.sampler import WINDOW_S, parse_metrics
from farmctl.runtime import Farm
from farmctl.wait import wait_until
from tests.conftest import FarmFactory

pytestmark = pytest.mark.farm


@contextmanager
def signed_in(farm: Farm) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=farm.config.balancer_url, timeout=10) as client:
        assert client.post("/api/login", json={"username": DEMO_USERNAME, "password": DEMO_PASSWORD}).status_code == 200
        yield client


def token_of(client: httpx.Client) -> str:
    page = client.get("/console/")
    assert page.status_code == 200, page.text
    match = re.search(r'name="csrf-token" content="([0-9a-f]{64})"', page.text)
    assert match, "no CSRF token on the console page"
    return match.group(1)


@pytest.fixture(scope="module")
def console_farm(farm_factory: FarmFactory) -> Farm:
    farm = farm_factory(3, demo_controls=True)
    assert wait_until(lambda: httpx.post(f"{farm.config.balancer_url}/api/login", timeout=10, json={
        "username": DEMO_USERNAME, "password": DEMO_PASSWORD}).status_code == 200, 20), "no demo account"
    return farm


@pytest.fixture
def user(console_farm: Farm) -> Iterator[httpx.Client]:
    with signed_in(console_farm) as client:
        yield client


def test_the_console_is_for_signed_in_users_only(console_farm: Farm) -> None:
    with httpx.Client(base_url=console_farm.config.balancer_url, timeout=10) as anonymous:
        page = anonymous.get("/console/")
        assert page.status_code == 303
        assert page.headers["location"] == "/login"
        for path in ("/console/events", "/console/api/state"):
            assert anonymous.get(path).status_code == 401, path
        assert anonymous.post("/console/api/faults", json={"kind": "kill", "target": "web1"}).status_code == 401
        assert anonymous.post("/console/api/crowd", json={"users": 5, "seconds": 10}).status_code == 401
        anonymous.cookies.set("webfarm_session", "not-a-session")
        assert anonymous.get("/console/api/state").status_code == 401
        # What anybody may see: that it runs, and its script.
        assert anonymous.get("/console/healthz").json() == {"status": "ok"}
        assert anonymous.get("/console/static/console.js").status_code == 200


def test_a_control_needs_the_pages_token_and_our_origin(console_farm: Farm, user: httpx.Client) -> None:
    pids = {name: console_farm.pid(name) for name in console_farm.instance_names()}
    token = token_of(user)
    kill = {"kind": "kill", "target": "web1"}
    assert user.post("/console/api/faults", json=kill).status_code == 403
    assert user.post("/console/api/faults", json=kill, headers={"X-CSRF-Token": "0" * 64}).status_code == 403
    cross = user.post("/console/api/faults", json=kill,
                      headers={"X-CSRF-Token": token, "Origin": "http://evil.example"})
    assert cross.status_code == 403
    assert "cross-origin" in cross.json()["detail"]
    site = user.post("/console/api/crowd", json={"users": 2, "seconds": 10},
                     headers={"X-CSRF-Token": token, "Sec-Fetch-Site": "cross-site"})
    assert site.status_code == 403
    # Another session's token is not this one's.
    with signed_in(console_farm) as other:
        assert user.post("/console/api/faults", json=kill, headers={"X-CSRF-Token": token_of(other)}).status_code == 403
    state = user.get("/console/api/state").json()
    assert state["faults"] == []
    assert state["crowd"] is None
    assert {name: console_farm.pid(name) for name in pids} == pids


@pytest.mark.parametrize(("path", "body", "status", "says"), [
    ("faults", {"kind": "nuke", "target": "web1"}, 422, "no such fault"),
    ("faults", {"kind": "kill", "target": "web9"}, 422, "needs an instance"),
    ("faults", {"kind": "kill"}, 422, "needs an instance"),
    ("faults", {"kind": "hang", "target": "web1", "seconds": 0}, 422, "1-60 seconds"),
    ("faults", {"kind": "hang", "target": "web1"}, 422, "1-60 seconds"),
    ("faults", {"kind": "partition", "target": "web1", "seconds": 3600}, 422, "1-60 seconds"),
    ("faults", {"kind": "failover"}, 409, "REDIS=sentinel"),
    ("faults", {"kind": "kill", "target": "web1", "then": "more"}, 422, "then"),
    ("faults", {"kind": ["kill"], "target": "web1"}, 422, "kind"),
    ("crowd", {"users": 0, "seconds": 10}, 422, "users"),
    ("crowd", {"users": 51, "seconds": 10}, 422, "users"),
    ("crowd", {"users": 5, "seconds": 3600}, 422, "seconds"),
    ("crowd", {"users": "many"}, 422, "users"),
])
def test_a_bad_order_gets_a_clear_error_and_causes_nothing(console_farm: Farm, user: httpx.Client, path: str,
                                                          body: dict[str, object], status: int, says: str) -> None:
    pids = {name: console_farm.pid(name) for name in console_farm.instance_names()}
    answer = user.post(f"/console/api/{path}", json=body, headers={"X-CSRF-Token": token_of(user)})
    assert answer.status_code == status, answer.text
    assert says in answer.json()["detail"]
    state = user.get("/console/api/state").json()
    assert state["faults"] == []
    assert state["crowd"] is None
    assert {name: console_farm.pid(name) for name in pids} == pids


def test_a_body_that_is_not_json_or_too_large_is_refused(user: httpx.Client) -> None:
    headers = {"X-CSRF-Token": token_of(user)}
    assert user.post("/console/api/faults", content=b"kind=kill", headers=headers).status_code == 415
    not_json = user.post("/console/api/faults", content=b"{kill",
                         headers={**headers, "Content-Type": "application/json"})
    assert not_json.status_code == 422
    huge = user.post("/console/api/faults", json={"kind": "kill", "target": "w" * 8000}, headers=headers)
    assert huge.status_code == 413
    assert user.get("/console/api/state").json()["faults"] == []


def test_a_farm_without_demo_controls_has_no_console(farm_factory: FarmFactory) -> None:
    farm = farm_factory(1, demo_controls=False)
    assert "console" not in {p.name for p in farm.status()}
    with signed_in(farm) as client:
        assert "console-link" not in client.get("/dashboard").text
        assert client.get("/console/").status_code == 404
        assert client.get("/console/events").status_code == 404
        assert client.post("/console/api/faults", json={"kind": "kill", "target": "web1"}).status_code == 404
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{farm.config.console_port}/console/healthz", timeout=2)


def next_tick(user: httpx.Client) -> dict[str, Any]:
    """The next tick the console streams to its pages (what the browser is sent, not /api/state)."""
    with user.stream("GET", "/console/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines) == "event: history"
        for line in lines:
            if line.startswith('data: {"tick": '):  # not the history's {"ticks": ...}
                tick: dict[str, Any] = json.loads(line.removeprefix("data: "))["tick"]
                return tick
    raise AssertionError("the stream ended")


def requests_answered(url: str) -> float:
    return parse_metrics(httpx.get(f"{url}/metrics", timeout=5).text, time.time()).requests


def test_an_instances_rate_on_the_console_is_what_its_own_metrics_count(console_farm: Farm,
                                                                       user: httpx.Client) -> None:
    """20 requests a second straight to web1 (none through the balancer, so no other instance's
    share blurs it): the console's rate for web1 must be what web1's counter grew by over the
    same WINDOW_S, within 10 % + 1 req/s (the two windows are up to a second apart)."""
    web1 = console_farm.config.web[0]
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=5) as client:
            due = time.monotonic()
            while not stop.is_set():
                client.get(f"{web1.url}/healthz")
                due += 0.05
                time.sleep(max(0.0, due - time.monotonic()))

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        user.get("/console/api/state")  # the console samples while it is watched
        time.sleep(1)  # the sender under way: the console's window below is all steady traffic
        first, started = requests_answered(web1.url), time.time()
        time.sleep(WINDOW_S)
        counted = (requests_answered(web1.url) - first) / (time.time() - started)
        shown = next(r for r in next_tick(user)["instances"] if r["name"] == "web1")
    finally:
        stop.set()
        sender.join(5)
    assert shown["state"] == "serving"
    assert 15 <= counted <= 25, f"web1 answered {counted:.1f} req/s (20 sent, and the health checks)"
    assert abs(shown["rps"] - counted) <= 0.1 * counted + 1, (shown, counted)
    assert shown["errors_per_s"] == 0
    assert shown["p50_ms"] is not None
    assert shown["p99_ms"] >= shown["p50_ms"]


def test_a_partition_from_the_console_is_held_out_and_lifted_by_itself(console_farm: Farm,
                                                                       user: httpx.Client) -> None:
    """Without a browser watching: the console lifts the fault at its time, and times it as the chaos does."""
    headers = {"X-CSRF-Token": token_of(user)}
    cut = user.post("/console/api/faults", json={"kind": "partition", "target": "web3", "seconds": 3}, headers=headers)
    assert cut.status_code == 202, cut.text
    again = user.post("/console/api/faults", json={"kind": "kill", "target": "web1"}, headers=headers)
    assert again.status_code == 409  # one at a time
    assert "one fault at a time" in again.json()["detail"]
    assert wait_until(lambda: user.get("/console/api/state").json()["fault"] is None, 40)
    record = user.get("/console/api/state").json()["faults"][-1]
    assert record["kind"] == "partition"
    assert record["name"] == "web3"
    assert record["at"] < record["detected_at"] < record["lifted_at"] < record["recovered_at"]
    assert record["lifted_at"] - record["at"] == pytest.approx(3, abs=0.5)
    assert "web3" not in console_farm.out_of_rotation()
    assert console_farm.is_serving("web3")
