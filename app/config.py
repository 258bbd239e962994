"""Settings of one web instance, read from the environment (pydantic-settings)."""

from collections.abc import Iterable
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Self
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: The CSRF secret of the demo; refused outside ENVIRONMENT=demo.
DEMO_CSRF_SECRET = "webfarm-demo-only-change-me"  # noqa: S105 - public on purpose, refused in production
#: The account created at start-up in the demo (the login page shows it).
DEMO_USERNAME = "demo"
DEMO_PASSWORD = "demo-password"  # noqa: S105 - public on purpose, like the CSRF secret above
#: The default name of the session cookie (SESSION_COOKIE); over HTTPS it gets the __Host- prefix (app.auth).
SESSION_COOKIE = "webfarm_session"
#: The default cart limits (CART_MAX_ITEMS, CART_MAX_QTY), which app.sessions.Limits defaults to as well.
CART_MAX_ITEMS = 50
CART_MAX_QTY = 999
#: The default cap on one account's sessions (SESSION_MAX_PER_ACCOUNT): signing in past it ends the oldest.
SESSION_MAX_PER_ACCOUNT = 100
#: The default time a cart add's Idempotency-Key is remembered (IDEMPOTENCY_WINDOW_S).
IDEMPOTENCY_WINDOW_S = 10 * 60
#: The header the balancer sends PROXY_SECRET in, with every request it forwards (see app.middleware).
PROXY_HEADER = "X-Webfarm-Proxy"
#: The names a farm on this machine answers to; nginx refuses any other Host (farmctl's ALLOWED_HOSTS).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
#: The balancer's ports under `make up` and compose (HTTP_PORT, HTTPS_PORT): the default origins' ports.
HTTP_PORT = 8080
HTTPS_PORT = 8443
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalized_origin(url: str) -> str | None:
    """`scheme://host:port` of an origin (the port spelled out, the host in lower case), or None if
    `url` is not one: another scheme, a path, credentials, or the "null" of an opaque origin."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if (parts.scheme not in _DEFAULT_PORTS or not host or parts.path not in ("", "/") or parts.query
            or parts.fragment or parts.username is not None):
        return None
    return f"{parts.scheme}://{f'[{host}]' if ':' in host else host}:{port or _DEFAULT_PORTS[parts.scheme]}"


def origins(hosts: Iterable[str], http_port: int, https_port: int | None) -> tuple[str, ...]:
    """The origins of a balancer that serves `hosts` on these ports (no HTTPS if `https_port` is 0)."""
    ports = [("http", http_port), *([("https", https_port)] if https_port else [])]
    return tuple(f"{scheme}://{host}:{port}" for scheme, port in ports for host in hosts)


class Environment(StrEnum):
    #: `make up`, the tests: the demo account and the demo secret are allowed.
    DEMO = "demo"
    #: Anywhere else: a real CSRF_SECRET is required and no demo account is created.
    PRODUCTION = "production"


class SessionBackend(StrEnum):
    REDIS = "redis"
    #: Sessions in the instance's own memory: the anti-pattern the farm is built to show.
    MEMORY = "memory"


class Settings(BaseSettings):
    """Every knob of an instance. Each field maps to the upper-case environment variable."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", env_ignore_empty=True)

    environment: Environment = Environment.DEMO
    instance_name: str = Field("web1", description="Shown in X-Served-By and in session records.")
    redis_url: str = Field("redis://127.0.0.1:6380/0", description="The shared session store.")
    redis_sentinels: str = Field(
        "",
        description="host:port,... of Redis Sentinels; when set, the primary is found through them and "
                    "REDIS_URL is not used. Empty: a single Redis at REDIS_URL.",
    )
    redis_sentinel_master: str = Field("webfarm", description="The name the Sentinels monitor the primary under.")
    redis_cluster_nodes: str = Field(
        "",
        description="host:port,... of Redis Cluster nodes (any of them: the client discovers the rest and "
                    "follows failovers and resharding); when set, REDIS_URL gives only the password and "
                    "REDIS_SENTINELS must be empty.",
    )
    redis_wait_timeout_ms: int = Field(
        200, ge=1, description="With Sentinels: how long a login waits for the replica to acknowledge the session."
    )
    redis_socket_timeout_s: float = Field(
        1.0, gt=0, description="One command's reply (and the handshake's); a timed-out command is never retried.")
    redis_connect_timeout_s: float = Field(0.5, gt=0, description="TCP connect timeout.")
    redis_max_connections: int = Field(64, ge=1, description="Pool size per instance.")
    redis_pool_timeout_s: float = Field(
        0.5, gt=0, description="Wait for a free pooled connection (all busy: Redis is slow or hung).")
    redis_retries: int = Field(2, ge=0, description="Retries on connection errors, with backoff.")
    request_timeout_s: float = Field(
        1.5, gt=0, description="Every request answers within this, 503 with Retry-After past it, however many "
                               "Redis calls it makes: below the balancer's proxy_read_timeout (2 s), so that a slow "
                               "store never looks like a hung instance to nginx.")
    readiness_timeout_s: float = Field(
        0.25, gt=0, description="/readyz answers 503 when Redis has not answered a PING within this.")
    key_prefix: str = Field("webfarm", description="Prefix of every Redis key.")
    metrics: bool = Field(True, description="Count and time every request for /metrics (off: to measure the cost).")

    session_backend: SessionBackend = SessionBackend.REDIS
    session_cookie: str = Field(SESSION_COOKIE, description="Name of the session cookie.")
    session_idle_timeout_s: int = Field(30 * 60, gt=0, description="Sliding idle expiry.")
    session_near_cache_s: float = Field(
        2.0, ge=0, description="Max age of a near-cached session identity; 0 turns the near cache off.")
    session_absolute_timeout_s: int = Field(8 * 3600, gt=0, description="Hard cap since login.")

    login_max_attempts_per_pair: int = Field(
        5, ge=1, description="Failed logins per account from one address; then 429 until the window ends.")
    login_max_failures_per_account: int = Field(
        100, ge=1, description="From all addresses; then only addresses that signed in to it before may try.")
    login_max_failures_per_address: int = Field(
        100, ge=1, description="At all accounts; then only accounts that signed in from it before may be tried.")
    login_failure_window_s: int = Field(15 * 60, ge=1)
    register_max_per_address: int = Field(
        30, ge=1, description="Registrations per client address per window (taken names count too).")
    register_window_s: int = Field(10 * 60, ge=1)

    cart_max_items: int = Field(CART_MAX_ITEMS, ge=1, description="Different SKUs in one cart.")
    cart_max_qty: int = Field(CART_MAX_QTY, ge=1, description="Quantity of one SKU in one cart.")

    demo_user: str | None = Field(DEMO_USERNAME, description="Created at start-up, with ENVIRONMENT=demo only.")
    demo_password: str = Field(DEMO_PASSWORD, min_length=8)
    demo_controls: bool = Field(False, description="Show the 'crash this instance' button.")
    console_url: str = Field("", max_length=200, pattern=r"^(|/console/|http://[A-Za-z0-9.:\[\]-]+/console/)$",
                             description="Where the farm's live console is (with demo controls): the dashboard "
                                         "links to it; empty: no link.")
    csrf_secret: str = Field(
        DEMO_CSRF_SECRET,
        min_length=16,
        description="Signs CSRF tokens of the HTML forms. Required (32+ characters) outside ENVIRONMENT=demo.",
    )

    allowed_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        origins(LOOPBACK_HOSTS, HTTP_PORT, HTTPS_PORT),
        description="scheme://host[:port],... of the pages that may send state-changing requests: one whose "
                    "Origin is another is refused 403 (app.csrf), whatever its Host says - a DNS-rebinding page "
                    "sets both. Default: the loopback names on ports 8080 and 8443; farmctl derives them from "
                    "the farm's names and ports, a production deployment sets its public origin(s).")
    proxy_secret: str = Field(
        "", description="The balancer sends it with every request; only such requests may set the client's "
                        "address and scheme (X-Forwarded-For/-Proto). Empty: those headers are never trusted.")
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="As nginx's client_max_body_size.")
    max_headers: int = Field(100, ge=10, description="Header lines per request.")
    max_header_bytes: int = Field(16 * 1024, ge=1024, description="All header lines together.")

    argon2_time_cost: int = Field(2, ge=1)
    argon2_memory_kib: int = Field(19 * 1024, ge=8 * 1024, description="OWASP minimum: 19 MiB.")
    argon2_concurrency: int = Field(
        2, ge=1, description="Hashes (register, login, password change) running at once per instance; each "
                             "takes ARGON2_MEMORY_KIB and a core for tens of milliseconds.")
    argon2_queue: int = Field(
        16, ge=0, description="Requests waiting for a hash slot; past that, 503 at once. Most leave the queue "
                              "within milliseconds: one that the throttle refuses, or a taken name, needs no hash.")
    argon2_queue_wait_s: float = Field(0.5, gt=0, description="Longest wait for a hash slot; then 503.")

    stats_flush_interval_s: float = Field(1.0, gt=0, description="Write-behind of request counts.")

    # What one account can make the store keep (app.sessions).
    session_max_per_account: int = Field(
        SESSION_MAX_PER_ACCOUNT, ge=1, description="Sessions one account may hold; a login past it ends the "
                                                   "account's oldest session, so sign-out-everywhere stays cheap.")
    idempotency_window_s: int = Field(
        IDEMPOTENCY_WINDOW_S, ge=1, description="How long a cart add's Idempotency-Key is remembered (a retry "
                                                "within it applies once); the record goes with the session.")

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _origins(cls, value: object) -> object:
        if not isinstance(value, str | list | tuple):
            return value
        given = [item for item in (value.split(",") if isinstance(value, str) else value) if str(item).strip()]
        parsed = tuple(normalized_origin(str(item)) for item in given)
        if None in parsed:
            raise ValueError(f"ALLOWED_ORIGINS: not an origin (scheme://host[:port]): {given[parsed.index(None)]!r}")
        return parsed

    @model_validator(mode="after")
    def _one_topology(self) -> Self:
        if self.redis_sentinels and self.redis_cluster_nodes:
            raise ValueError("REDIS_SENTINELS and REDIS_CLUSTER_NODES are two topologies: set one")
        return self

    @model_validator(mode="after")
    def _no_demo_secrets_in_production(self) -> Self:
        """As the full-stack FastAPI template does: a public default is fine for a demo, fatal elsewhere."""
        if self.environment is Environment.PRODUCTION:
            if self.csrf_secret == DEMO_CSRF_SECRET or len(self.csrf_secret) < 32:
                raise ValueError("ENVIRONMENT=production needs CSRF_SECRET: 32+ random characters, "
                                 "e.g. `openssl rand -hex 32`")
            self.demo_user = None
            self.demo_controls = False
        return self

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return _addresses(self.redis_sentinels)

    @property
    def cluster_addresses(self) -> list[tuple[str, int]]:
        return _addresses(self.redis_cluster_nodes)


def _addresses(text: str) -> list[tuple[str, int]]:
    """host:port,host:port,... as (host, port) pairs."""
    return [(host, int(port)) for host, port in
            (address.strip().rsplit(":", 1) for address in text.split(",") if address.strip())]


@lru_cache
def get_settings() -> Settings:
    return Settings()
