"""Fixtures that start REAL parts on free loopback ports: a bare Redis, and whole farms - natively,
and under a real Docker engine (`any_farm` runs a test on both runtimes)."""

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from farmctl.config import MONITORING_PORTS, PROJECT_ROOT, FarmConfig
from farmctl.docker import engine_available
from farmctl.lifecycle import running_farm
from farmctl.native import cluster
from farmctl.native.scratch import scratch_cluster, scratch_redis
from farmctl.ports import on_free_ports
from farmctl.runtime import Farm

FarmFactory = Callable[..., Farm]

#: The make variables FarmConfig reads: the tests' farms are shaped by the tests, not by `make test N=5`.
FARM_VARIABLES = ("N", "HTTP_PORT", "HTTPS_PORT", "BASE_PORT", "REDIS_PORT", "REDIS", "REPLICA_PORT",
                  "SENTINEL_PORTS", "SESSION_BACKEND", "BALANCE", "DEMO_CONTROLS", "STATE_DIR", "KEY_PREFIX",
                  "RUNTIME", "ALLOWED_HOSTS", "ALLOWED_ORIGINS", "PYTHON_IMAGE", "NGINX_IMAGE", "REDIS_IMAGE",
                  "PROMETHEUS_IMAGE", "NGINX_EXPORTER_IMAGE", "REDIS_EXPORTER_IMAGE",
                  *(field.upper() for field in MONITORING_PORTS))


def pytest_configure(config: pytest.Config) -> None:
    for variable in FARM_VARIABLES:
        os.environ.pop(variable, None)


def needs_docker(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    return "docker_engine" in getattr(item, "fixturenames", ()) or (
        callspec is not None and "docker" in callspec.params.values())


@pytest.hookimpl(trylast=True)  # after pytest has grouped the tests by their fixtures' parameters
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The Docker tests last, in their order: the Docker farm, once up, stays up to the session's end,
    and its health checks (a `docker exec` each) cost the native tests a fifth of the 2 cores."""
    items.sort(key=needs_docker)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throw-away redis-server of its own, for tests of the session store itself."""
    with scratch_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throw-away Redis Cluster of six nodes (three primaries, three replicas): its nodes, as
    REDIS_CLUSTER_NODES takes them."""
    with scratch_cluster(tmp_path_factory.mktemp("cluster")) as ports:
        yield cluster.startup_nodes(ports)


def _starter(stack: ExitStack, tmp_path_factory: pytest.TempPathFactory, runtime: str = "native") -> FarmFactory:
    def start(instances: int = 3, start: bool = True, spare: int = 0, **options: object) -> Farm:
        # The tests register hundreds of users from 127.0.0.1; the tests of the limit set their own.
        extra_env = {"REGISTER_MAX_PER_ADDRESS": "100000", **options.pop("extra_env", {})}  # type: ignore[dict-item]
        # No Prometheus unless the test asks (monitoring=True): each one scrapes the farm every 2 s.
        prometheus_port = 9090 if options.pop("monitoring", False) else 0
        config = FarmConfig(instances=instances, state_dir=Path(tmp_path_factory.mktemp("farm")),
                            extra_env=extra_env, prometheus_port=prometheus_port, **options)  # type: ignore[arg-type]
        return stack.enter_context(running_farm(on_free_ports(config, spare), runtime, start=start, timeout_s=180))

    return start


@pytest.fixture(scope="module")
def farm_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FarmFactory]:
    """Start farms on free ports (each in its own state dir); each is stopped when the test module
    that started it ends - idle farms must not pile up: every one has a health loop probing its
    instances twice a second, and a module's timing would depend on what ran before it.
    `spare` free ports after the instances' leave room to scale up to instances + spare."""
    with ExitStack() as stack:
        yield _starter(stack, tmp_path_factory)


@pytest.fixture(scope="session")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """The shared 3-instance farm with Redis sessions. Tests that break it must mend it."""
    with ExitStack() as stack:
        yield _starter(stack, tmp_path_factory)(3, demo_controls=True)


DOCKERD = PROJECT_ROOT / "farmctl/docker/dockerd.sh"
STANDINS = PROJECT_ROOT / "farmctl/docker/standins.sh"
#: No registry answers on CI: the Docker farms run on images built here from Debian's packages.
STANDIN_IMAGES = {"PYTHON_IMAGE": "webfarm-standin/python:3.11", "NGINX_IMAGE": "webfarm-standin/nginx:sid",
                  "REDIS_IMAGE": "webfarm-standin/redis:7",
                  **dict.fromkeys(("PROMETHEUS_IMAGE", "NGINX_EXPORTER_IMAGE", "REDIS_EXPORTER_IMAGE"),
                                  "webfarm-standin/monitoring:bookworm")}


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[None]:
    """A Docker engine for the run: the one that answers, else one started for the run and stopped
    after it (root with apt-get installs it); and the stand-in images unless others are set."""
    started = False
    if not engine_available():
        if os.geteuid() != 0 or not (shutil.which("dockerd") or shutil.which("apt-get")):
            pytest.skip(f"no Docker engine answers; `sudo {DOCKERD.relative_to(PROJECT_ROOT)} start` enables this test")
        subprocess.run([DOCKERD, "start"], check=True)
        started = True
    try:
        subprocess.run([STANDINS], check=True)
        for variable, image in STANDIN_IMAGES.items():
            os.environ.setdefault(variable, image)
        yield
    finally:
        if started:
            subprocess.run([DOCKERD, "stop"], check=False)


@pytest.fixture(scope="session")
def docker_farm(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """The shared farm's twin under Docker: compose.yaml's three instances, Redis and nginx (and free
    ports for two more: tests/farm/test_operations.py scales it to 5 and back), with the monitoring
    profile (tests/farm/test_monitoring.py)."""
    with ExitStack() as stack:
        yield _starter(stack, tmp_path_factory, "docker")(3, spare=2, demo_controls=True, monitoring=True)


@pytest.fixture(scope="session")
def cluster_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """The shared farm's twin on a Redis Cluster of six nodes (REDIS=cluster), natively."""
    with ExitStack() as stack:
        # No demo controls: no console sampling it each second for the rest of the run.
        yield _starter(stack, tmp_path_factory)(3, redis_mode="cluster")


@pytest.fixture(scope="session", params=["native", "docker"])
def any_farm(request: pytest.FixtureRequest) -> Farm:
    """The shared farm of each runtime in turn: for the tests of what the farm promises whatever runs it."""
    farm: Farm = request.getfixturevalue("farm" if request.param == "native" else "docker_farm")
    return farm


@pytest.fixture(scope="session", params=["native", "cluster"])
def store_farm(request: pytest.FixtureRequest) -> Farm:
    """The shared farm on a single Redis, then on a Redis Cluster: for the tests of what the session
    store promises (sessions, revocation, the throttle, exactly-once, the near cache)."""
    farm: Farm = request.getfixturevalue("farm" if request.param == "native" else "cluster_farm")
    return farm


@pytest.fixture(scope="session", params=["native", "cluster", "docker"])
def every_farm(request: pytest.FixtureRequest) -> Farm:
    """`any_farm`, and the native farm on a Redis Cluster too."""
    farm: Farm = request.getfixturevalue({"native": "farm", "cluster": "cluster_farm"}.get(request.param,
                                                                                         "docker_farm"))
    return farm
