"""Fixtures that start REAL parts on free loopback ports: a bare Redis, and whole farms."""

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from farmctl.config import FarmConfig
from farmctl.native import NativeFarm, free_port_block

FarmFactory = Callable[..., NativeFarm]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throw-away redis-server of its own, for tests of the session store itself."""
    port = free_port_block(1)
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis"))], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    client.close()
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def farm_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FarmFactory]:
    """Start farms on free ports (each in its own state dir); every one is stopped at the end."""
    started: list[NativeFarm] = []

    def start(instances: int = 3, start: bool = True, spare: int = 0, **options: object) -> NativeFarm:
        """`spare` free ports after the instances' leave room to scale up to instances + spare;
        with redis_mode="sentinel", four more for the replica and the Sentinels."""
        ha = 4 if options.get("redis_mode") == "sentinel" else 0
        base = free_port_block(instances + 3 + spare + ha)
        if ha:
            replica = base + 3 + instances + spare
            options |= {"replica_port": replica, "sentinel_ports": (replica + 1, replica + 2, replica + 3)}
        config = FarmConfig(instances=instances, http_port=base, redis_port=base + 1, https_port=base + 2,
                            base_port=base + 3,
                            state_dir=Path(tmp_path_factory.mktemp("farm")), **options)  # type: ignore[arg-type]
        farm = NativeFarm(config)
        started.append(farm)
        if start:
            farm.up(timeout_s=60)
        return farm

    yield start
    for farm in started:
        farm.down()


@pytest.fixture(scope="session")
def farm(farm_factory: FarmFactory) -> NativeFarm:
    """The shared 3-instance farm with Redis sessions. Tests that break it must mend it."""
    return farm_factory(3, demo_controls=True)
