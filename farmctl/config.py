"""The shape of a farm: how many instances, which ports, which session backend."""

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: nginx connects to the instances from this loopback address; only it may set X-Forwarded-*.
PROXY_SOURCE = "127.0.0.2"
#: uvicorn keeps idle connections longer than nginx does (see nginx/nginx.conf.j2).
APP_KEEPALIVE_S = 75
NGINX_KEEPALIVE_S = 60
#: The name under which the Sentinels monitor the primary (REDIS=sentinel).
SENTINEL_MASTER = "webfarm"


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


@dataclass(frozen=True)
class FarmConfig:
    """Everything that differs between one farm and another (make up, a test, a compare run)."""

    instances: int = 3
    http_port: int = 8080
    https_port: int = 8443  # 0: no HTTPS
    base_port: int = 8001
    redis_port: int = 6380
    redis_mode: str = "single"  # sentinel: a replica and three Sentinels beside the primary
    replica_port: int = 6381
    sentinel_ports: tuple[int, ...] = (26380, 26381, 26382)
    session_backend: str = "redis"
    balance: str = "round_robin"
    demo_controls: bool = False
    state_dir: Path = PROJECT_ROOT / ".farm"
    key_prefix: str = "webfarm"
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.instances <= 50:
            raise ValueError(f"instances must be 1..50, not {self.instances}")
        if self.session_backend not in ("redis", "memory"):
            raise ValueError(f"SESSION_BACKEND must be redis or memory, not {self.session_backend!r}")
        if self.balance not in ("round_robin", "sticky"):
            raise ValueError(f"BALANCE must be round_robin or sticky, not {self.balance!r}")
        if self.redis_mode not in ("single", "sentinel"):
            raise ValueError(f"REDIS must be single or sentinel, not {self.redis_mode!r}")
        if len(self.sentinel_ports) != 3:
            raise ValueError(f"three Sentinel ports are needed (quorum 2), not {self.sentinel_ports}")

    @classmethod
    def from_env(cls, **overrides: object) -> "FarmConfig":
        """Defaults, then WEBFARM_* / make variables from the environment, then explicit overrides."""
        env = os.environ
        values: dict[str, object] = {}
        casts: list[tuple[str, str, Callable[[str], object]]] = [
            ("instances", "N", int),
            ("http_port", "HTTP_PORT", int),
            ("https_port", "HTTPS_PORT", int),
            ("base_port", "BASE_PORT", int),
            ("redis_port", "REDIS_PORT", int),
            ("redis_mode", "REDIS", str),
            ("replica_port", "REPLICA_PORT", int),
            ("sentinel_ports", "SENTINEL_PORTS", lambda v: tuple(int(p) for p in v.split(","))),
            ("session_backend", "SESSION_BACKEND", str),
            ("balance", "BALANCE", str),
            ("demo_controls", "DEMO_CONTROLS", lambda v: v.lower() in ("1", "true", "yes")),
            ("state_dir", "STATE_DIR", Path),
        ]
        for name, var, cast in casts:
            if env.get(var):
                values[name] = cast(env[var])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    @property
    def web(self) -> list[Instance]:
        return [Instance(f"web{i}", "127.0.0.1", self.base_port + i - 1) for i in range(1, self.instances + 1)]

    @property
    def balancer_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def sentinel(self) -> bool:
        return self.redis_mode == "sentinel"

    @property
    def redis_nodes(self) -> dict[str, int]:
        """Supervisor program name -> port of each Redis data node (the roles swap on a failover)."""
        nodes = {"redis": self.redis_port}
        return {**nodes, "redis-replica": self.replica_port} if self.sentinel else nodes

    @property
    def sentinels(self) -> dict[str, int]:
        """Supervisor program name -> port of each Sentinel (none in single mode)."""
        return {f"sentinel{i}": port for i, port in enumerate(self.sentinel_ports, 1)} if self.sentinel else {}

    @property
    def sentinel_addresses(self) -> str:
        """What the instances get as REDIS_SENTINELS (empty in single mode)."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinels.values())

    @property
    def https_url(self) -> str | None:
        return f"https://127.0.0.1:{self.https_port}" if self.https_port else None

    @property
    def ports(self) -> list[int]:
        https = [self.https_port] if self.https_port else []
        return [self.http_port, *https, *self.redis_nodes.values(), *self.sentinels.values(),
                *(i.port for i in self.web)]
