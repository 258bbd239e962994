"""The shape of a farm: how many instances, which ports, which session backend.

`FarmConfig` reads the `make` variables (N, HTTP_PORT, REDIS, ...) from the environment; a process
that must drive the same farm (the load test's Locust) receives it serialized, as one value."""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.__main__ import KEEPALIVE_S
from app.config import HTTP_PORT, HTTPS_PORT, LOOPBACK_HOSTS, origins

PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: uvicorn keeps idle connections longer than nginx does (see nginx/nginx.conf.j2).
APP_KEEPALIVE_S = KEEPALIVE_S
NGINX_KEEPALIVE_S = 60
#: The name under which the Sentinels monitor the primary (REDIS=sentinel).
SENTINEL_MASTER = "webfarm"
#: FarmConfig's ports of the farm's monitoring, in the order free_layout gives them out.
MONITORING_PORTS = ("prometheus_port", "health_port", "nginx_status_port", "nginx_exporter_port",
                    "redis_exporter_port")
#: The environment variable that carries a whole FarmConfig to another process, as JSON.
CONFIG_VARIABLE = "WEBFARM_FARM_CONFIG"
#: A name nginx's server_name takes literally: a DNS name, an IPv4 address or a bracketed IPv6 one.
_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")


@dataclass(frozen=True)
class Instance:
    name: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"


def _env(field: str, variable: str) -> AliasChoices:
    return AliasChoices(field, variable)


class FarmConfig(BaseSettings):
    """Everything that differs between one farm and another (make up, a test, a compare run).

    Each field is read from its upper-case environment variable (`instances` from N, `redis_mode`
    from REDIS); keyword arguments win over the environment."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, env_ignore_empty=True, extra="forbid",
                                      frozen=True, populate_by_name=True)

    instances: int = Field(3, ge=1, le=50, validation_alias=_env("instances", "N"))
    http_port: int = HTTP_PORT
    https_port: int = Field(HTTPS_PORT, description="0: no HTTPS")
    base_port: int = Field(8001, description="web1's port; webN's is base_port + N - 1")
    redis_port: int = 6380
    redis_password: str = Field("", description="Docker: the farm's own (its Redis shares a network)")
    redis_mode: Literal["single", "sentinel", "cluster"] = Field(
        "single", validation_alias=_env("redis_mode", "REDIS"),
        description="sentinel: a replica and three Sentinels beside the primary; cluster: a Redis Cluster of "
                    "three primaries and three replicas")
    replica_port: int = 6381
    sentinel_ports: Annotated[tuple[int, int, int], NoDecode] = (26380, 26381, 26382)
    cluster_ports: Annotated[tuple[int, int, int, int, int, int], NoDecode] = Field(
        (6391, 6392, 6393, 6394, 6395, 6396),
        description="REDIS=cluster: the six nodes' ports (each also uses port + 10000, its cluster bus)")
    session_backend: Literal["redis", "memory"] = "redis"
    balance: Literal["round_robin", "sticky"] = "round_robin"
    demo_controls: bool = False
    state_dir: Path = PROJECT_ROOT / ".farm"
    key_prefix: str = "webfarm"
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        LOOPBACK_HOSTS, description="the names nginx serves, with or without the port (comma-separated); any "
                                    "other Host is refused 421 before it reaches an instance")
    extra_env: dict[str, str] = Field(default_factory=dict, description="more variables for every instance")
    prometheus_port: int = Field(9090, description="the farm's Prometheus (0: none, and none of the four below)")
    health_port: int = Field(9091, description="the health loop's metrics")
    nginx_status_port: int = Field(9092, description="nginx's stub_status, for its exporter only")
    nginx_exporter_port: int = 9093
    redis_exporter_port: int = Field(9094, description="one exporter for every Redis node and Sentinel (/scrape)")
    console_port: int = Field(9089, description="the live console (with demo controls, natively), reached through "
                                                "nginx at /console/; 0: none")

    @field_validator("sentinel_ports", "cluster_ports", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return tuple(int(p) for p in value.split(",")) if isinstance(value, str) else value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _host_names(cls, value: object) -> object:
        return tuple(h.strip().lower() for h in value.split(",") if h.strip()) if isinstance(value, str) else value

    @field_validator("allowed_hosts")
    @classmethod
    def _served_by_its_own_address(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if bad := [host for host in value if not _HOST_NAME.fullmatch(host)]:
            raise ValueError(f"ALLOWED_HOSTS: not a host name (no port, no wildcard): {bad[0]!r}")
        if "127.0.0.1" not in value:  # balancer_url
            raise ValueError("ALLOWED_HOSTS must include 127.0.0.1: farmctl and the tests reach the balancer by it")
        return value

    @classmethod
    def from_env(cls, **overrides: object) -> Self:
        """Defaults, then the environment, then the `overrides` that are not None."""
        given: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
        return cls(**given)

    @classmethod
    def from_json(cls, text: str) -> Self:
        """The config another process serialized with `model_dump_json()`; the environment is not read."""
        return cls.model_validate_json(text)

    def replace(self, **changes: object) -> Self:
        """A validated copy with `changes`."""
        return type(self).model_validate({**self.model_dump(), **changes})

    @property
    def web(self) -> list[Instance]:
        return [Instance(f"web{i}", "127.0.0.1", self.base_port + i - 1) for i in range(1, self.instances + 1)]

    @property
    def balancer_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def redis_url(self) -> str:
        auth = f":{self.redis_password}@" if self.redis_password else ""
        return f"redis://{auth}127.0.0.1:{self.redis_port}/0"

    @property
    def sentinel(self) -> bool:
        return self.redis_mode == "sentinel"

    @property
    def cluster(self) -> bool:
        return self.redis_mode == "cluster"

    @property
    def redis_nodes(self) -> dict[str, int]:
        """Supervisor program name -> port of each Redis data node (the roles swap on a failover)."""
        if self.cluster:
            return {f"redis-node{i}": port for i, port in enumerate(self.cluster_ports, 1)}
        nodes = {"redis": self.redis_port}
        return {**nodes, "redis-replica": self.replica_port} if self.sentinel else nodes

    @property
    def cluster_nodes(self) -> str:
        """What the instances get as REDIS_CLUSTER_NODES (empty unless REDIS=cluster)."""
        return ",".join(f"127.0.0.1:{port}" for port in self.cluster_ports) if self.cluster else ""

    @property
    def sentinels(self) -> dict[str, int]:
        """Supervisor program name -> port of each Sentinel (none in single mode)."""
        return {f"sentinel{i}": port for i, port in enumerate(self.sentinel_ports, 1)} if self.sentinel else {}

    @property
    def sentinel_addresses(self) -> str:
        """What the instances get as REDIS_SENTINELS (empty in single mode)."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinels.values())

    @property
    def allowed_origins(self) -> tuple[str, ...]:
        """What the instances get as ALLOWED_ORIGINS: every allowed name on the HTTP and HTTPS port."""
        return origins(self.allowed_hosts, self.http_port, self.https_port)

    @property
    def https_url(self) -> str | None:
        return f"https://127.0.0.1:{self.https_port}" if self.https_port else None

    @property
    def ports(self) -> list[int]:
        https = [self.https_port] if self.https_port else []
        console = [self.console_port] if self.console else []
        bus = [port + 10000 for port in self.cluster_ports] if self.cluster else []  # the cluster bus
        return [self.http_port, *https, *self.redis_nodes.values(), *bus, *self.sentinels.values(),
                *(i.port for i in self.web), *self.monitoring.values(), *console]

    @property
    def console(self) -> bool:
        """The live console runs (console/): only a demo has one, for it breaks the farm on request."""
        return self.demo_controls and bool(self.console_port)

    @property
    def monitoring(self) -> dict[str, int]:
        """Supervisor program name (or nginx's status server) -> port, with a Prometheus; else none."""
        if not self.prometheus_port:
            return {}
        return {"prometheus": self.prometheus_port, "health": self.health_port, "nginx-status": self.nginx_status_port,
                "nginx-exporter": self.nginx_exporter_port, "redis-exporter": self.redis_exporter_port}
