"""The hot path answers GET /api/me and GET /healthz as the app behind its middleware chain does:
the two side by side on one real Redis, for every kind of request the chain treats apart (no
cookie, a malformed one, a live session, HTTPS said by the balancer or by anyone else, headers
past the limits, a body, a store that does not answer)."""

import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI

from app.config import PROXY_HEADER, SESSION_COOKIE, Settings
from app.hotpath import HotPath
from app.main import create_app
from app.services import Services
from app.sessions import SessionKey
from farmctl.ports import free_port_block
from tests.app.sessions.stores import new_username

SECRET = "proxy-secret-" + "x" * 20
#: What the answers must agree on (Date and the like are the server's, not the app's).
HEADERS = ("content-type", "content-length", "x-served-by", "cache-control", "retry-after")


@dataclass
class Pair:
    """The same app and services, reached through the hot path and without it."""

    hot: httpx.AsyncClient
    plain: httpx.AsyncClient
    app: FastAPI

    async def both(self, path: str, headers: dict[str, str] | None = None,
                   content: bytes | None = None) -> tuple[httpx.Response, httpx.Response]:
        hot = await self.hot.request("GET", path, headers=headers, content=content)
        plain = await self.plain.request("GET", path, headers=headers, content=content)
        return hot, plain

    async def session(self) -> SessionKey:
        store = Services.of(self.app).sessions
        started = await store.create(new_username(), "web1", 0)
        assert started is not None
        return started[0]


async def pair(settings: Settings) -> AsyncIterator[Pair]:
    app = create_app(settings)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        hot, plain = [await stack.enter_async_context(httpx.AsyncClient(
            transport=httpx.ASGITransport(app=asgi), base_url="http://test"))
            for asgi in (HotPath(app, Services.of(app)), app)]
        yield Pair(hot, plain, app)


def settings_for(redis_url: str, near_cache_s: float = 0) -> Settings:
    return Settings(redis_url=redis_url, key_prefix=f"p{secrets.token_hex(4)}", demo_user=None,
                    proxy_secret=SECRET, session_near_cache_s=near_cache_s, instance_name="web7")


@pytest.fixture(params=[0, 2], ids=["exact", "near-cache"])
async def both(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Pair]:
    async for made in pair(settings_for(redis_url, request.param)):
        yield made


def assert_alike(hot: httpx.Response, plain: httpx.Response, counted: bool = False) -> None:
    assert hot.status_code == plain.status_code, (hot.text, plain.text)
    assert {h: hot.headers.get(h) for h in HEADERS} == {h: plain.headers.get(h) for h in HEADERS}
    if not counted:
        assert hot.json() == plain.json()
        return
    # Each asked the store once: the plain answer counts one request more.
    hot_body, plain_body = hot.json(), plain.json()
    assert plain_body.pop("requests_in_session") == hot_body.pop("requests_in_session") + 1
    assert hot_body == plain_body


async def test_healthz_is_answered_alike(both: Pair) -> None:
    hot, plain = await both.both("/healthz")
    assert hot.status_code == 200
    assert_alike(hot, plain)
    assert hot.json() == {"status": "ok", "instance": "web7"}


async def test_no_cookie_or_a_malformed_one_is_not_signed_in_alike(both: Pair) -> None:
    for cookie in (None, f"{SESSION_COOKIE}=not-a-token", f"{SESSION_COOKIE}={'a' * 43}", "other=1"):
        hot, plain = await both.both("/api/me", {"cookie": cookie} if cookie else None)
        assert hot.status_code == 401, cookie
        assert_alike(hot, plain)


async def test_a_live_session_is_answered_alike(both: Pair, request: pytest.FixtureRequest) -> None:
    key = await both.session()
    exact = "exact" in request.node.callspec.id
    for _ in range(3):
        hot, plain = await both.both("/api/me", {"cookie": f"other=1; {SESSION_COOKIE}={key.token}"})
        assert hot.status_code == 200
        assert_alike(hot, plain, counted=exact)
    assert hot.json()["served_by"] == "web7"
    if exact:  # every request counted, through either way in
        assert plain.json()["requests_in_session"] == 6


async def test_https_counts_only_when_the_balancer_says_so(both: Pair) -> None:
    key = await both.session()
    secure = f"__Host-{SESSION_COOKIE}={key.token}"
    said = {PROXY_HEADER: SECRET, "x-forwarded-proto": "https"}
    cases = [
        ({"cookie": secure, **said}, 200),  # HTTPS from the balancer: the __Host- cookie
        ({"cookie": f"{SESSION_COOKIE}={key.token}", **said}, 401),  # ... and not the plain one
        ({"cookie": secure, PROXY_HEADER: "wrong", "x-forwarded-proto": "https"}, 401),  # anyone else: http
        ({"cookie": secure, "x-forwarded-proto": "https"}, 401),
    ]
    for headers, status in cases:
        hot, plain = await both.both("/api/me", headers)
        assert hot.status_code == status, headers
        assert hot.status_code == plain.status_code, headers
        if status == 401:
            assert_alike(hot, plain)


async def test_what_the_limits_refuse_is_refused_alike(both: Pair) -> None:
    key = await both.session()
    cookie = {"cookie": f"{SESSION_COOKIE}={key.token}"}
    too_many = {**cookie, **{f"x-h{i}": "1" for i in range(120)}}
    too_big = {**cookie, "x-big": "b" * 20_000}
    for headers in (too_many, too_big):
        hot, plain = await both.both("/api/me", headers)
        assert hot.status_code == 431
        assert_alike(hot, plain)
    # A GET with a body goes the app's way (its limits read bodies): what it answers, both answer.
    hot, plain = await both.both("/api/me", {**cookie, "content-length": "x"}, None)
    assert hot.status_code == 400
    assert_alike(hot, plain)


async def test_a_store_that_does_not_answer_is_a_503_alike(redis_url: str) -> None:
    nobody = f"redis://127.0.0.1:{free_port_block(1)}/0"
    async for made in pair(settings_for(nobody)):
        token = SessionKey.new("alice").token
        hot, plain = await made.both("/api/me", {"cookie": f"{SESSION_COOKIE}={token}"})
        assert hot.status_code == 503
        assert hot.headers["retry-after"] == "1"
        assert_alike(hot, plain)
