"""Operations: make up / make down semantics on farms of their own, and under a real load, rolling
restarts and scaling that drop nothing, POSTs included (natively and under Docker)."""

import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from farmctl.lifecycle import open_farm
from farmctl.ports import port_is_free
from farmctl.runtime import Farm, FarmError
from tests.conftest import FarmFactory
from tests.farm.users import browser_like, signed_in

pytestmark = pytest.mark.farm


@dataclass
class Load:
    """What a few signed-in clients saw while they read and added to their carts through nginx."""

    statuses: Counter[int] = field(default_factory=Counter)
    added: dict[str, Counter[str]] = field(default_factory=dict)
    carts: dict[str, dict[str, int]] = field(default_factory=dict)
    served_by: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    keepalive_retries: int = 0


def counted(load: Load, client: httpx.Client, method: str, url: str, **kwargs: Any) -> httpx.Response:
    response, resent = browser_like(client, method, url, **kwargs)
    load.keepalive_retries += resent
    return response


SKUS = 40


@contextmanager
def steady_load(base_url: str, clients: int = 4) -> Iterator[Load]:
    load, stop = Load(), threading.Event()

    def user(n: int) -> None:
        added = load.added.setdefault(str(n), Counter())
        with signed_in(base_url) as client:
            while not stop.is_set():
                # Spread over SKUs: a cart holds at most CART_MAX_QTY of one.
                sku = f"sku{added.total() % SKUS}"
                try:
                    responses = (counted(load, client, "GET", "/api/me"),
                                 counted(load, client, "POST", "/api/cart/items", json={"sku": sku, "qty": 1}))
                except httpx.HTTPError as exc:
                    load.errors.append(repr(exc))
                    continue
                for response in responses:
                    load.statuses[response.status_code] += 1
                    load.served_by[response.headers.get("x-served-by", "")] += 1
                    if response.request.method == "POST" and response.status_code == 200:
                        added[sku] += 1
            load.carts[str(n)] = client.get("/api/cart").json()["items"]

    threads = [threading.Thread(target=user, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(1)
    try:
        yield load
    finally:
        time.sleep(1)
        stop.set()
        for thread in threads:
            thread.join(30)


def assert_nothing_failed(load: Load) -> None:
    assert load.errors == []
    assert set(load.statuses) == {200}, load.statuses
    assert load.statuses[200] > 100
    for n, added in load.added.items():
        assert load.carts[n] == dict(added)  # every acknowledged add is there, and no add twice


def test_up_is_idempotent_and_down_frees_every_port(farm_factory: FarmFactory) -> None:
    farm = farm_factory(instances=2)
    pids = {s.name: s.pid for s in farm.status()}
    farm.up()
    assert {s.name: s.pid for s in farm.status()} == pids
    assert all(s.up for s in farm.status())
    farm.down()
    assert not farm.is_running()
    assert all(port_is_free(p) for p in farm.config.ports)


def test_up_refuses_a_taken_port_with_a_clear_message(farm_factory: FarmFactory) -> None:
    farm = farm_factory(instances=1, start=False)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", farm.config.http_port))
        squatter.listen()
        with pytest.raises(FarmError, match=f"port.*{farm.config.http_port}.*in use"):
            farm.up()
    assert not farm.is_running()


@pytest.fixture(scope="module", params=["native", "docker"])
def ops_farm(request: pytest.FixtureRequest, farm_factory: FarmFactory) -> Farm:
    """Natively a farm of this module's own; under Docker the shared one (it has room for 5)."""
    farm: Farm = request.getfixturevalue("docker_farm") if request.param == "docker" else farm_factory(3, spare=2)
    return farm


def test_roll_restarts_every_instance_under_load_without_a_failed_request(ops_farm: Farm) -> None:
    pids = {i.name: ops_farm.pid(i.name) for i in ops_farm.config.web}
    with steady_load(ops_farm.config.balancer_url) as load:
        took = ops_farm.roll()
    assert [name for name, _ in took] == list(pids)
    assert all(ops_farm.pid(name) != pid for name, pid in pids.items())
    assert_nothing_failed(load)
    assert load.keepalive_retries <= 2 * len(pids) * 4  # at most one per client per nginx reload


def test_scale_up_and_down_under_load_without_a_failed_request(ops_farm: Farm) -> None:
    bigger = open_farm(ops_farm.config.replace(instances=5), ops_farm.name)
    with steady_load(ops_farm.config.balancer_url) as load:
        started = time.monotonic()
        bigger.up()
        scaled_up = time.monotonic() - started
        time.sleep(1)
        assert {f"web{i}" for i in range(1, 6)} <= set(load.served_by)
        started = time.monotonic()
        ops_farm.up()  # back to 3
        scaled_down = time.monotonic() - started
    print(f"{ops_farm.name}: 3 -> 5 in {scaled_up:.1f} s, 5 -> 3 in {scaled_down:.1f} s; "
          f"{sum(load.statuses.values())} requests, {len(load.errors)} failed")
    assert_nothing_failed(load)
    assert [s.name for s in ops_farm.status() if s.name.startswith("web")] == ["web1", "web2", "web3"]

