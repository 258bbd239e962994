"""Signed-in HTTP clients for the farm tests."""

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

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
