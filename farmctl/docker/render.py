"""The Docker runtime's files: nginx's config for compose.yaml's services, the Sentinel services'
initial configs, and the proxy secret's include - written by compose.yaml's one-shot farm-config
service (`python -m farmctl render-docker`) into the volume nginx and the Sentinels mount."""

import json
import os
from pathlib import Path
from typing import Any, Literal

from farmctl.config import SENTINEL_MASTER, FarmConfig, Instance
from farmctl.render import (
    PROMETHEUS_RULES,
    PROXY_SECRET_CONF,
    SENTINEL_TEMPLATE,
    render_nginx_in_a_container,
    render_prometheus_config,
    render_template,
    write_whole,
)
from farmctl.secret import proxy_secret_conf

DOCKER_INSTANCES = 3  # web1..web3, as declared in compose.yaml
#: Where compose.yaml's farm-config service writes what it renders, as nginx and the Sentinels mount it.
DOCKER_CONFIG_DIR = "/etc/webfarm"
#: The Sentinel services of compose.yaml (profile `sentinel`), each on Sentinel's default port.
DOCKER_SENTINEL_NAMES = ("sentinel1", "sentinel2", "sentinel3")
DOCKER_SENTINEL_PORT = 26379
#: What the web services get as REDIS_SENTINELS with REDIS=sentinel.
DOCKER_SENTINELS = ",".join(f"{name}:{DOCKER_SENTINEL_PORT}" for name in DOCKER_SENTINEL_NAMES)
#: The Redis nodes of compose.yaml's profile `cluster` (three primaries and three replicas once the
#: one-shot redis-cluster-create has made them a cluster), each on Redis' default port; named as
#: FarmConfig.redis_nodes names a cluster's nodes, and published on their loopback ports.
DOCKER_CLUSTER_NODE_NAMES = tuple(f"redis-node{i}" for i in range(1, 7))
DOCKER_REDIS_PORT = 6379
#: What the web services get as REDIS_CLUSTER_NODES with REDIS=cluster (any one would do: the client
#: discovers the others; all six, so that a client starting while one is down still finds the cluster).
DOCKER_CLUSTER_NODES = ",".join(f"{name}:{DOCKER_REDIS_PORT}" for name in DOCKER_CLUSTER_NODE_NAMES)
#: The one-shot service of the profile `cluster` that makes the nodes a cluster, or checks it.
DOCKER_CLUSTER_CREATE = "redis-cluster-create"
#: FarmConfig.redis_mode's values.
RedisMode = Literal["single", "sentinel", "cluster"]


#: The monitoring profile's ports, inside the containers (none is published but Prometheus').
DOCKER_NGINX_STATUS_PORT = 8081
DOCKER_HEALTH_METRICS_PORT = 9091
#: What the health service writes for Prometheus' file-based discovery of web1..webN.
WEB_TARGETS = "web-targets.json"


def render_nginx_docker(instances: int = DOCKER_INSTANCES, balance: str = "round_robin",
                        down: frozenset[str] = frozenset()) -> str:
    """nginx.conf for web1..webN (service names), those in `down` out of the rotation (the health
    service); and nginx's stub_status for the monitoring profile's exporter on the container's port
    8081, which no host publishes."""
    web = [Instance(f"web{i}", f"web{i}", 8000) for i in range(1, instances + 1)]
    return render_nginx_in_a_container("docker", web, balance, f"{DOCKER_CONFIG_DIR}/{PROXY_SECRET_CONF}",
                                       down=down, status_port=DOCKER_NGINX_STATUS_PORT, status_host="0.0.0.0")


def redis_targets_docker(mode: RedisMode) -> dict[str, str]:
    """The Redis exporter's targets: compose.yaml's Redis, and with the sentinel profile its replica
    and Sentinels; with the cluster profile its six nodes instead (farmctl runs no `redis` then)."""
    if mode == "cluster":
        return {name: f"redis://{name}:{DOCKER_REDIS_PORT}" for name in DOCKER_CLUSTER_NODE_NAMES}
    nodes = {"redis": f"redis://redis:{DOCKER_REDIS_PORT}"}
    if mode == "sentinel":
        nodes["redis-replica"] = f"redis://redis-replica:{DOCKER_REDIS_PORT}"
        nodes |= {name: f"redis://{name}:{DOCKER_SENTINEL_PORT}" for name in DOCKER_SENTINEL_NAMES}
    return nodes


def render_prometheus_docker(mode: RedisMode) -> str:
    """prometheus.yml for compose.yaml's monitoring profile: the services by name; the rules and the
    instances' file beside it (paths relative to it, so that promtool checks it anywhere)."""
    return render_prometheus_config(
        farm="docker", rules=PROMETHEUS_RULES.name, web_targets_file=WEB_TARGETS,
        health_target=f"health:{DOCKER_HEALTH_METRICS_PORT}", nginx_exporter_target="nginx-exporter:9113",
        redis_exporter_target="redis-exporter:9121", prometheus_target="127.0.0.1:9090",
        redis_targets=redis_targets_docker(mode))


def web_targets(instances: int) -> str:
    """web1..webN for Prometheus' file-based discovery, each labelled as natively (farm_instance)."""
    return json.dumps([{"targets": [f"web{i}:8000"], "labels": {"farm_instance": f"web{i}"}}
                       for i in range(1, instances + 1)], indent=2)


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
    if config.cluster:
        # The cluster's nodes instead of the single Redis: `redis` in a profile never turned on, and
        # no longer a dependency the instances need (compose.yaml's depends_on merged, not replaced).
        services["redis"] = {"profiles": ["single"]}
        for name in names:
            services[name]["depends_on"] = {"redis": {"condition": "service_healthy", "required": False}}
        services |= {name: {"ports": [f"127.0.0.1:{port}:{DOCKER_REDIS_PORT}"], "networks": ["store", "redis-host"]}
                     for name, port in config.redis_nodes.items()}
    else:
        services["redis"] = {"ports": [f"127.0.0.1:{config.redis_port}:{DOCKER_REDIS_PORT}"],
                             "networks": ["store", "redis-host"]}
    # farm-config keeps compose.yaml's command (nginx.conf for web1..web3) whatever N: nginx restarts
    # when it is recreated (`restart: true`), so `make scale` must not change it. The health
    # service renders nginx.conf for its N at its start (farmctl/docker/health.py).
    services["nginx"] = {"depends_on": {name: {"condition": "service_healthy"} for name in names}}
    services["health"] = {"command": ["python", "-m", "farmctl.docker.health", "run", "--instances",
                                      str(config.instances), "--balance", config.balance,
                                      "--metrics-port", str(DOCKER_HEALTH_METRICS_PORT)]}
    # The rendered configs in the farm's state dir rather than in a named volume: the runtime reads
    # the rotation from there (compose merges a service's mounts by their path in the container).
    config_dir = str(config_dir_of(config))
    for name, mode in (("farm-config", ""), ("health", ""), ("nginx", ":ro"), ("prometheus", ":ro"),
                       ("redis-exporter", ":ro"), *((sentinel, ":ro") for sentinel in DOCKER_SENTINEL_NAMES)):
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
    """Write nginx.conf, its proxy-secret include, one sentinelN.conf per Sentinel service and the
    monitoring profile's files (prometheus.yml, its rules, web1..webN, the Redis exporter's
    passwords) into `out` (compose's config volume), each whole."""
    password = os.environ.get("REDIS_PASSWORD", "")
    mode: RedisMode = "cluster" if os.environ.get("REDIS_CLUSTER_NODES") else \
        "sentinel" if os.environ.get("REDIS_SENTINELS") else "single"
    files = {"nginx.conf": render_nginx_docker(instances, balance), PROXY_SECRET_CONF: proxy_secret_conf(proxy_secret)}
    files |= {f"{name}.conf": render_sentinel_docker(name, password) for name in DOCKER_SENTINEL_NAMES}
    files |= {"prometheus.yml": render_prometheus_docker(mode), PROMETHEUS_RULES.name: PROMETHEUS_RULES.read_text(),
              WEB_TARGETS: web_targets(instances),
              # The Sentinels have no password: an AUTH would fail their scrape.
              "redis-passwords.json": json.dumps({target: password for name, target in
                                                  redis_targets_docker(mode).items() if name.startswith("redis")})}
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        write_whole(out / name, text)
