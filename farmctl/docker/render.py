"""The Docker runtime's files: nginx's config for compose.yaml's services, the Sentinel services'
initial configs, and the proxy secret's include - written by compose.yaml's one-shot farm-config
service (`python -m farmctl render-docker`) into the volume nginx and the Sentinels mount."""

import os
from pathlib import Path
from typing import Any

from farmctl.config import SENTINEL_MASTER, FarmConfig, Instance
from farmctl.render import PROXY_SECRET_CONF, SENTINEL_TEMPLATE, render_nginx_in_a_container, render_template
from farmctl.secret import proxy_secret_conf

DOCKER_INSTANCES = 3  # web1..web3, as declared in compose.yaml
#: Where compose.yaml's farm-config service writes what it renders, as nginx and the Sentinels mount it.
DOCKER_CONFIG_DIR = "/etc/webfarm"
#: The Sentinel services of compose.yaml (profile `sentinel`), each on Sentinel's default port.
DOCKER_SENTINEL_NAMES = ("sentinel1", "sentinel2", "sentinel3")
DOCKER_SENTINEL_PORT = 26379
#: What the web services get as REDIS_SENTINELS with REDIS=sentinel.
DOCKER_SENTINELS = ",".join(f"{name}:{DOCKER_SENTINEL_PORT}" for name in DOCKER_SENTINEL_NAMES)


def render_nginx_docker(instances: int = DOCKER_INSTANCES, balance: str = "round_robin",
                        down: frozenset[str] = frozenset()) -> str:
    """nginx.conf for web1..webN (service names), those in `down` out of the rotation (the health service)."""
    web = [Instance(f"web{i}", f"web{i}", 8000) for i in range(1, instances + 1)]
    return render_nginx_in_a_container("docker", web, balance, f"{DOCKER_CONFIG_DIR}/{PROXY_SECRET_CONF}",
                                       down=down)


def compose_override(config: FarmConfig, compose_file: Path) -> dict[str, Any]:
    """What one farm changes in compose.yaml (a compose file, as JSON): instances past web3, each
    like web1 with its own name; the farm's extra variables on every instance; loopback ports; nginx
    started once every instance is healthy, and the health service rendering it for N."""
    if config.instances < DOCKER_INSTANCES:
        raise ValueError(f"compose.yaml declares {DOCKER_INSTANCES} instances; "
                         f"N={config.instances} needs RUNTIME=native")
    names = [i.name for i in config.web]
    # Each instance and Redis also on loopback at the ports a native farm would use, so that
    # `make status`, the tests and the bench reach them the same way under both runtimes.
    services: dict[str, Any] = {
        i.name: {"environment": {"INSTANCE_NAME": i.name, **config.extra_env},
                 "ports": [f"127.0.0.1:{i.port}:8000"]} for i in config.web}
    for name in names[DOCKER_INSTANCES:]:
        services[name]["extends"] = {"file": str(compose_file), "service": "web1"}
    # `store` is internal (no way out, no published ports): Redis joins a network of its own to be published.
    services["redis"] = {"ports": [f"127.0.0.1:{config.redis_port}:6379"], "networks": ["store", "redis-host"]}
    # farm-config keeps compose.yaml's command (nginx.conf for web1..web3) whatever N: nginx restarts
    # when it is recreated (`restart: true`), so `make scale` must not change it. The health
    # service renders nginx.conf for its N at its start (farmctl/docker/health.py).
    services["nginx"] = {"depends_on": {name: {"condition": "service_healthy"} for name in names}}
    services["health"] = {"command": ["python", "-m", "farmctl.docker.health", "run",
                                      "--instances", str(config.instances), "--balance", config.balance]}
    # The rendered configs in the farm's state dir rather than in a named volume: the runtime reads
    # the rotation from there (compose merges a service's mounts by their path in the container).
    config_dir = str(config_dir_of(config))
    for name, mode in (("farm-config", ""), ("health", ""), ("nginx", ":ro"),
                       *((sentinel, ":ro") for sentinel in DOCKER_SENTINEL_NAMES)):
        services.setdefault(name, {})["volumes"] = [f"{config_dir}:{DOCKER_CONFIG_DIR}{mode}"]
    return {"services": services, "networks": {"redis-host": {}}}


def config_dir_of(config: FarmConfig) -> Path:
    """Where a farm's compose.yaml services find what farm-config rendered (and the rotation)."""
    return config.state_dir.resolve() / "docker-config"


def render_sentinel_docker(name: str, auth_pass: str = "") -> str:
    """The initial config of the Sentinel service `name` of compose.yaml, which copies it to a writable
    place at its first start (Sentinel rewrites it). Services are known by name: their addresses change."""
    return render_template(
        SENTINEL_TEMPLATE,
        runtime="docker",
        port=DOCKER_SENTINEL_PORT,
        announce=name,
        master=SENTINEL_MASTER,
        primary_host="redis",
        primary_port=6379,
        auth_pass=auth_pass,
    )


def render_docker(out: Path, instances: int, balance: str, proxy_secret: str) -> None:
    """Write nginx.conf, its proxy-secret include and one sentinelN.conf per Sentinel service into
    `out` (compose's config volume); each file appears whole (write, then rename) so nothing ever
    reads half of one."""
    files = {"nginx.conf": render_nginx_docker(instances, balance), PROXY_SECRET_CONF: proxy_secret_conf(proxy_secret)}
    files |= {f"{name}.conf": render_sentinel_docker(name, os.environ.get("REDIS_PASSWORD", ""))
              for name in DOCKER_SENTINEL_NAMES}
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / f"{name}.tmp").write_text(text)
        (out / f"{name}.tmp").replace(out / name)
