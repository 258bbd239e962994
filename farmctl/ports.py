"""Loopback ports: which are free, and the one layout of a farm's ports in a block."""

import random
import socket
from pathlib import Path

from farmctl.config import MONITORING_PORTS, FarmConfig
from farmctl.runtime import FarmError


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(count: int) -> int:
    """The first of `count` consecutive free loopback ports, picked at random so that parallel
    or leftover runs do not collide - and below the kernel's ephemeral range, where any outgoing
    connection (to Redis, nginx's to an instance) could take a port between this check and the bind."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    for _ in range(200):
        base = random.randrange(10000, max(ephemeral_low, 10000 + 2 * count) - count)
        if all(port_is_free(p) for p in range(base, base + count)):
            return base
    raise FarmError(f"no block of {count} free ports on 127.0.0.1")


def free_cluster_block(count: int) -> int:
    """The first of `count` consecutive free ports whose cluster bus ports (port + 10000) are free too,
    the bus ports also below the ephemeral range."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    for _ in range(200):
        base = random.randrange(10000, max(ephemeral_low - 10000, 10000 + 2 * count) - count)
        if all(port_is_free(p) and port_is_free(p + 10000) for p in range(base, base + count)):
            return base
    raise FarmError(f"no block of {count} free ports (and their cluster bus ports) on 127.0.0.1")


def free_layout(instances: int, *, https: bool = True, spare: int = 0, sentinel: bool = False,
                monitoring: bool = False) -> dict[str, object]:
    """The ports of a farm in one free block: the balancer, Redis, HTTPS (if any), the instances
    (with `spare` ports after them to scale into), then the replica and the three Sentinels (if
    any), then the monitoring's (if any; else no Prometheus), then the console's. Keys are FarmConfig's field names."""
    size = 2 + https + instances + spare + 4 * sentinel + len(MONITORING_PORTS) * monitoring + 1
    base = free_port_block(size)
    base_port = base + 2 + https
    ports: dict[str, object] = {"http_port": base, "redis_port": base + 1, "https_port": base + 2 if https else 0,
                                "base_port": base_port}
    if sentinel:
        replica = base_port + instances + spare
        ports |= {"replica_port": replica, "sentinel_ports": (replica + 1, replica + 2, replica + 3)}
    first = base + size - 1 - len(MONITORING_PORTS)
    ports |= {name: first + i for i, name in enumerate(MONITORING_PORTS)} if monitoring else {"prometheus_port": 0}
    return ports | {"console_port": base + size - 1}


def on_free_ports(config: FarmConfig, spare: int = 0) -> FarmConfig:
    """`config` moved to a block of free loopback ports (HTTPS only if it had HTTPS); `spare` free
    ports after the instances' leave room to scale up to instances + spare."""
    cluster = {"cluster_ports": tuple(range(base := free_cluster_block(6), base + 6))} if config.cluster else {}
    return config.replace(**free_layout(config.instances, https=bool(config.https_port), spare=spare,
                                        sentinel=config.sentinel, monitoring=bool(config.prometheus_port)), **cluster)
