"""make up / make down semantics on a farm of its own."""

import socket

import pytest

from farmctl.ports import port_is_free
from farmctl.runtime import FarmError
from tests.conftest import FarmFactory

pytestmark = pytest.mark.farm


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
