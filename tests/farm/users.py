"""What the farm tests share: registering and logging in, signed-in clients, clients from an
address of their own, the forms' CSRF token, a browser's resend of a request a closing connection
never read, and a real Redis stall."""

import re
import secrets
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import httpx
import redis
from redis.cluster import ClusterNode

from app.sessions import RedisSessionStore, SessionKey
from farmctl.runtime import Farm

PASSWORD = "correct-horse-battery"
#: One for tests that open hundreds of clients: httpx would load the CA bundle for each (15 ms of CPU each).
SSL_CONTEXT = ssl.create_default_context()
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def new_username(prefix: str = "t") -> str:
    return f"{prefix}{secrets.token_hex(6)}"


def register(client: httpx.Client, username: str, password: str = PASSWORD) -> None:
    assert client.post("/api/register", json={"username": username, "password": password}).status_code == 201


def login(client: httpx.Client, username: str, password: str = PASSWORD,
          headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post("/api/login", json={"username": username, "password": password}, headers=headers)


def form_token(client: httpx.Client, page: str) -> str:
    """The CSRF token of the form on `page`."""
    match = CSRF_FIELD.search(client.get(page).text)
    assert match
    return match[1]


@contextmanager
def signed_in(base_url: str, username: str | None = None) -> Iterator[httpx.Client]:
    """Register a fresh user through `base_url`, log in, and yield a client holding the cookie."""
    username = username or new_username()
    with httpx.Client(base_url=base_url, timeout=10) as client:
        register(client, username)
        response = login(client, username)
        assert response.status_code == 200, response.text
        yield client


def with_cookie(base_url: str, cookies: httpx.Cookies) -> httpx.Client:
    """Another client (another instance, say) presenting the same session cookie."""
    client = httpx.Client(base_url=base_url, timeout=10)
    for name, value in cookies.items():
        client.cookies.set(name, value)
    return client


def browser_like(client: httpx.Client, method: str, url: str, **kwargs: Any) -> tuple[httpx.Response, int]:
    """Send a request; if the server closed the (idle, kept-alive) connection before sending a
    single byte back, send it once more on a new connection, as browsers do. A reloading nginx
    closes its idle client connections; it never read a request from them, so the retry is safe
    even for a POST (RFC 9112, 9.3.1). Returns the response and how many times it was resent."""
    try:
        return client.request(method, url, **kwargs), 0
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        if not closed_unanswered(exc):
            raise
        return client.request(method, url, **kwargs), 1


def closed_unanswered(exc: httpx.HTTPError) -> bool:
    """The server closed the connection before a single byte of the answer: safe to send again
    (a bare ReadError('') is that too: an EOF on a reused connection, as seen through Docker's NAT)."""
    return ("without sending a response" in str(exc) or "reset by peer" in str(exc)
            or (isinstance(exc, httpx.ReadError) and not str(exc)))


def source_address() -> str:
    """A loopback address of a test's own (all of 127/8 is loopback on Linux): per-address limits
    tripped by one test do not spill into others."""
    return f"127.0.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 2}"


@contextmanager
def client_from(base_url: str, address: str | None = None) -> Iterator[httpx.Client]:
    transport = httpx.HTTPTransport(local_address=address or source_address())
    with httpx.Client(base_url=base_url, transport=transport, timeout=15) as client:
        yield client


@contextmanager
def redis_blocked(farm: Farm, seconds: float) -> Iterator[None]:
    """Redis itself busy in a long Lua script: every other client waits, for real."""
    def block() -> None:
        with redis.Redis.from_url(farm.config.redis_url, socket_timeout=seconds + 5) as client:
            client.eval("local t0 = tonumber(redis.call('TIME')[1]) "
                        "while tonumber(redis.call('TIME')[1]) - t0 < tonumber(ARGV[1]) do end", 0, str(seconds))

    blocker = threading.Thread(target=block)
    blocker.start()
    time.sleep(0.2)
    try:
        yield
    finally:
        blocker.join()


def session_key(prefix: str, token: str) -> str:
    """The Redis key of the session whose cookie is `token`."""
    key = SessionKey.parse(token)
    assert key is not None, f"not a session token: {token!r}"
    return RedisSessionStore.key_in(prefix, key)


def store_of(farm: Farm) -> redis.Redis:
    """A client of the farm's Redis (on a cluster, a cluster client typed as one: it answers the keyed
    commands the tests send)."""
    config = farm.config
    if config.cluster:
        nodes = [ClusterNode("127.0.0.1", port) for port in config.cluster_ports]  # type: ignore[no-untyped-call]
        return cast(redis.Redis, redis.RedisCluster(startup_nodes=nodes, decode_responses=True,
                                                    password=config.redis_password or None))
    return redis.Redis.from_url(config.redis_url, decode_responses=True)
