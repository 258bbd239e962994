"""Free ports, the one layout of a farm's ports, and a config moved onto them."""

import socket

import pytest

from farmctl.config import FarmConfig
from farmctl.ports import free_layout, free_port_block, on_free_ports, port_is_free


def test_port_is_free_false_while_something_listens() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        assert not port_is_free(port)
    assert port_is_free(port)


def test_free_port_block_every_port_free_and_below_the_ephemeral_range() -> None:
    base = free_port_block(8)
    assert all(port_is_free(p) for p in range(base, base + 8))
    assert base >= 10000


@pytest.mark.parametrize(("https", "spare", "sentinel"), [(True, 0, False), (False, 2, False), (True, 1, True)])
def test_free_layout_distinct_ports_in_one_block(https: bool, spare: int, sentinel: bool) -> None:
    ports = free_layout(3, https=https, spare=spare, sentinel=sentinel)
    assert all(isinstance(v, int | tuple) for v in ports.values())
    singles = [v for v in ports.values() if isinstance(v, int) and v]
    base = ports["base_port"]
    assert isinstance(base, int)
    sentinels = ports.get("sentinel_ports", ())
    assert isinstance(sentinels, tuple)
    taken = [*singles, *range(base + 1, base + 3 + spare), *sentinels]
    assert len(set(taken)) == len(taken) == 2 + https + 3 + spare + 4 * sentinel + 1  # + the console's
    assert max(taken) - min(taken) == len(taken) - 1  # one block: nothing else lands in between
    assert (ports["https_port"] != 0) is https


def test_on_free_ports_moves_every_port_and_keeps_the_rest() -> None:
    config = FarmConfig(instances=4, balance="sticky", redis_mode="sentinel")
    moved = on_free_ports(config, spare=2)
    assert all(port_is_free(p) for p in moved.ports)
    assert not set(moved.ports) & set(config.ports)
    assert len(set(moved.ports)) == len(moved.ports)
    # The spare ports lie before the replica's, and Prometheus' after the Sentinels'.
    assert max(i.port for i in moved.replace(instances=6).web) < moved.replica_port
    assert max(moved.sentinel_ports) < moved.prometheus_port < moved.health_port
    assert (moved.instances, moved.balance, moved.state_dir) == (4, "sticky", config.state_dir)
    assert on_free_ports(FarmConfig(https_port=0)).https_port == 0
