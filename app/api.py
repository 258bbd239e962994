"""The JSON API: register, log in and out, who am I, and a cart kept in the session."""

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status

from app.config import Settings
from app.deps import (
    NOT_SIGNED_IN,
    CurrentSession,
    PresenceDep,
    SessionToken,
    SettingsDep,
    StoreDep,
    UsersDep,
)
from app.schemas import Cart, CartItem, Credentials, Detail, FarmOut, Health, InstanceOut, Me, UserOut
from app.sessions import Session, SessionStore

STORE_DOWN: dict[int | str, dict[str, Any]] = {503: {"model": Detail, "description": "Session store unavailable"}}
NEEDS_SESSION: dict[int | str, dict[str, Any]] = {401: {"model": Detail, "description": "Not signed in"}, **STORE_DOWN}

router = APIRouter()


@router.get("/healthz", response_model=Health, tags=["ops"])
async def healthz(settings: SettingsDep) -> Health:
    """Liveness: the process answers. Does not touch Redis."""
    return Health(status="ok", instance=settings.instance_name)


@router.get("/readyz", response_model=Health, responses=STORE_DOWN, tags=["ops"])
async def readyz(request: Request, settings: SettingsDep) -> Health:
    """Readiness: the session store answers."""
    await request.app.state.redis.ping()
    return Health(status="ready", instance=settings.instance_name)


@router.post("/api/register", status_code=201, response_model=UserOut, tags=["auth"],
             responses={409: {"model": Detail, "description": "Username taken"}, **STORE_DOWN})
async def register(body: Credentials, users: UsersDep) -> UserOut:
    if not await users.create(body.username, body.password):
        raise HTTPException(status.HTTP_409_CONFLICT, "username already taken")
    return UserOut(username=body.username)


async def start_session(request: Request, response: Response, username: str,
                        store: SessionStore, settings: Settings) -> Session:
    """Sign in: a fresh token every time, so a cookie planted before login is worth nothing."""
    old = request.cookies.get(settings.session_cookie)
    if old:
        await store.delete(old)
    token, session = await store.create(username, settings.instance_name)
    response.set_cookie(settings.session_cookie, token, httponly=True, samesite="lax", path="/",
                        secure=request.headers.get("x-forwarded-proto") == "https")
    return session


@router.post("/api/login", response_model=UserOut, tags=["auth"],
             responses={401: {"model": Detail, "description": "Wrong credentials"}, **STORE_DOWN})
async def login(body: Credentials, request: Request, response: Response,
                users: UsersDep, store: StoreDep, settings: SettingsDep) -> UserOut:
    if not await users.authenticate(body.username, body.password):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong username or password")
    await start_session(request, response, body.username, store, settings)
    return UserOut(username=body.username)


@router.post("/api/logout", status_code=204, tags=["auth"], responses=STORE_DOWN)
async def logout(request: Request, store: StoreDep, settings: SettingsDep) -> Response:
    token = request.cookies.get(settings.session_cookie)
    if token:
        await store.delete(token)
    response = Response(status_code=204)
    response.delete_cookie(settings.session_cookie, path="/", httponly=True, samesite="lax")
    return response


@router.get("/api/me", response_model=Me, responses=NEEDS_SESSION, tags=["session"])
async def me(session: CurrentSession, settings: SettingsDep) -> Me:
    return Me(
        username=session.username,
        served_by=settings.instance_name,
        session_created_on=session.created_on,
        session_created_at=datetime.fromtimestamp(session.created_at, UTC).isoformat(timespec="milliseconds"),
        requests_in_session=session.requests,
    )


@router.get("/api/cart", response_model=Cart, responses=NEEDS_SESSION, tags=["session"])
async def get_cart(session: CurrentSession) -> Cart:
    return Cart(items=session.cart)


@router.post("/api/cart/items", response_model=Cart, responses=NEEDS_SESSION, tags=["session"])
async def add_to_cart(item: CartItem, token: SessionToken, store: StoreDep) -> Cart:
    """Atomic: concurrent adds through different instances all count."""
    session = await store.touch(token, add_item=(item.sku, item.qty))
    if session is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, NOT_SIGNED_IN)
    return Cart(items=session.cart)


@router.get("/api/farm", response_model=FarmOut, responses=STORE_DOWN, tags=["ops"])
async def farm(presence: PresenceDep, store: StoreDep, settings: SettingsDep) -> FarmOut:
    """What the farm panel shows: every instance, whether it is up, requests each served, live sessions."""
    return FarmOut(
        served_by=settings.instance_name,
        session_backend=settings.session_backend.value,
        live_sessions=await store.count_live(),
        instances=[InstanceOut(name=i.name, up=i.up, requests=i.requests) for i in await presence.instances()],
    )
