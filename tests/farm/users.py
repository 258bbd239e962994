"""Signed-in HTTP clients for the farm tests."""

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

PASSWORD = "correct-horse-battery"


def new_username(prefix: str = "t") -> str:
    return f"{prefix}{secrets.token_hex(6)}"


@contextmanager
def signed_in(base_url: str, username: str | None = None) -> Iterator[httpx.Client]:
    """Register a fresh user through `base_url`, log in, and yield a client holding the cookie."""
    username = username or new_username()
    with httpx.Client(base_url=base_url, timeout=10) as client:
        assert client.post("/api/register", json={"username": username, "password": PASSWORD}).status_code == 201
        response = client.post("/api/login", json={"username": username, "password": PASSWORD})
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
        if "without sending a response" not in str(exc) and "reset by peer" not in str(exc):
            raise
        return client.request(method, url, **kwargs), 1
