"""The nearest libraries, doing what our /api/me does, for a like-for-like comparison.

Two tiny FastAPI apps (FastAPI like ours, so the difference is the session layer), each with
POST /api/login that starts a session (no accounts: only /api/me is measured) and GET /api/me
that reads it, counts the request and slides the expiry - our /api/me's work:

- ``starsessions_app``: starsessions' SessionMiddleware with its RedisStore (a JSON blob per
  session; a GET and a SET per request);
- ``cookie_app``: Starlette's SessionMiddleware, the session signed into the cookie itself (no
  store at all, so no server-side logout).

Run with uvicorn's --factory, like the farm's instances; REDIS_URL names the Redis."""

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, status
from redis.asyncio import Redis
from starlette.middleware.sessions import SessionMiddleware as CookieSessionMiddleware
from starsessions import SessionMiddleware, load_session
from starsessions.stores.redis import RedisStore

from app.schemas import Credentials, Health, Me, UserOut

COOKIE = "webfarm_session"
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


def starsessions_app() -> FastAPI:
    """starsessions + RedisStore, rolling expiry like ours."""
    redis = Redis.from_url(os.environ["REDIS_URL"])

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await redis.aclose()

    async def load(request: Request) -> None:
        await load_session(request)

    app = FastAPI(title="starsessions peer", lifespan=lifespan)
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
