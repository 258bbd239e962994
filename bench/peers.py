"""The nearest libraries, doing what our /api/me does, for a like-for-like comparison.

Three tiny FastAPI apps (FastAPI like ours, so the difference is the session layer), each with
POST /api/login that starts a session (no accounts: only /api/me is measured) and GET /api/me
that reads it, counts the request and slides the expiry - our /api/me's work:

- ``starsessions_app``: starsessions' SessionMiddleware with its RedisStore (a JSON blob per
  session; a GET and a SET per request);
- ``getset_app``: ``RedisSessionMiddleware`` below, the simplest honest "sessions in Redis": a
  GET of a JSON blob by cookie and a SET of it with the idle TTL, per request;
- ``cookie_app``: Starlette's SessionMiddleware, the session signed into the cookie itself (no
  store at all, so no server-side logout).

Run with uvicorn's --factory, like the farm's instances; REDIS_URL names the Redis."""

import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, status
from redis.asyncio import Redis
from starlette.datastructures import MutableHeaders
from starlette.middleware.sessions import SessionMiddleware as CookieSessionMiddleware
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starsessions import SessionMiddleware, load_session
from starsessions.stores.redis import RedisStore

from app.config import SESSION_COOKIE
from app.schemas import Credentials, Health, Me, UserOut

COOKIE = SESSION_COOKIE
IDLE_TIMEOUT_S = 30 * 60
INSTANCE = "peer"


def _routes(app: FastAPI, load: Callable[[Request], Any]) -> None:
    Loaded = Annotated[None, Depends(load)]

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return Health(status="ok", instance=INSTANCE)

    @app.post("/api/login", response_model=UserOut)
    async def login(body: Credentials, request: Request, _: Loaded) -> UserOut:
        request.session.clear()
        request.session.update(username=body.username, created_on=INSTANCE, created_at=time.time(), requests=0)
        return UserOut(username=body.username)

    @app.get("/api/me", response_model=Me)
    async def me(request: Request, _: Loaded) -> Me:
        session = request.session
        if "username" not in session:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "not signed in")
        session["requests"] += 1
        return Me(
            username=session["username"],
            served_by=INSTANCE,
            session_created_on=session["created_on"],
            session_created_at=datetime.fromtimestamp(session["created_at"], UTC).isoformat(timespec="milliseconds"),
            requests_in_session=session["requests"],
        )


def closing(redis: Redis) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A lifespan that closes the peer's Redis client at shutdown."""
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await redis.aclose()

    return lifespan


def starsessions_app() -> FastAPI:
    """starsessions + RedisStore, rolling expiry like ours."""
    redis = Redis.from_url(os.environ["REDIS_URL"])

    async def load(request: Request) -> None:
        await load_session(request)

    app = FastAPI(title="starsessions peer", lifespan=closing(redis))
    _routes(app, load)
    app.add_middleware(SessionMiddleware, store=RedisStore(connection=redis, prefix="bench-starsessions:"),
                       lifetime=IDLE_TIMEOUT_S, rolling=True, cookie_name=COOKIE, cookie_https_only=False)
    return app


def cookie_app() -> FastAPI:
    """Starlette's signed-cookie sessions: the whole session travels in the cookie."""

    async def load(request: Request) -> None:
        return None  # the middleware has already decoded the cookie

    app = FastAPI(title="signed-cookie peer")
    _routes(app, load)
    app.add_middleware(CookieSessionMiddleware, secret_key=os.environ.get("SESSION_SECRET", "bench-only-secret"),
                       session_cookie=COOKIE, max_age=IDLE_TIMEOUT_S, https_only=False)
    return app


class RedisSessionMiddleware:
    """Pure ASGI: GET the session (JSON) by its cookie before the app runs, SET it back with the idle
    TTL when the answer starts - every request, which also slides the expiry. No script, no index,
    no revocation beyond deleting the key: two round trips per request, nothing else."""

    def __init__(self, app: ASGIApp, redis: Redis, prefix: str, ttl_s: int, cookie: str) -> None:
        self.app, self.redis, self.prefix, self.ttl_s, self.cookie = app, redis, prefix, ttl_s, cookie

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sid = HTTPConnection(scope).cookies.get(self.cookie)
        stored = await self.redis.get(self.prefix + sid) if sid else None
        scope["session"] = json.loads(stored) if stored else {}

        async def send_with_session(message: Message) -> None:
            nonlocal sid
            if message["type"] == "http.response.start":
                session = scope["session"]
                if session:
                    fresh = stored is None
                    sid = secrets.token_urlsafe(32) if fresh or sid is None else sid
                    await self.redis.set(self.prefix + sid, json.dumps(session), ex=self.ttl_s)
                    if fresh:
                        MutableHeaders(scope=message).append(
                            "set-cookie", f"{self.cookie}={sid}; Max-Age={self.ttl_s}; Path=/; HttpOnly; SameSite=Lax")
                elif stored is not None and sid:
                    await self.redis.delete(self.prefix + sid)
            await send(message)

        await self.app(scope, receive, send_with_session)


def getset_app() -> FastAPI:
    """A plain Redis GET/SET per request (RedisSessionMiddleware)."""
    redis = Redis.from_url(os.environ["REDIS_URL"])

    async def load(request: Request) -> None:
        return None  # the middleware has already read the session

    app = FastAPI(title="Redis GET/SET peer", lifespan=closing(redis))
    _routes(app, load)
    app.add_middleware(RedisSessionMiddleware, redis=redis, prefix="bench-getset:", ttl_s=IDLE_TIMEOUT_S,
                       cookie=COOKIE)
    return app
