"""The JSON API: register, log in and out, who am I, and a cart kept in the session."""

import logging
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse

from app.config import Settings
from app.deps import (
    CurrentIdentity,
    CurrentSession,
    PresenceDep,
    SessionToken,
    SettingsDep,
    StoreDep,
    ThrottleDep,
    UsersDep,
    client_address,
    cookie_name,
    raw_token,
    same_origin,
    signed_in,
)
from app.schemas import Cart, CartItem, Credentials, Detail, FarmOut, Health, InstanceOut, Me, PasswordChange, UserOut
from app.sessions import Session, SessionStore
from app.throttle import LoginThrottle
from app.users import UserStore

log = logging.getLogger("webfarm")

Responses = dict[int | str, dict[str, Any]]
STORE_DOWN: Responses = {503: {"model": Detail, "description": "Session store unavailable"}}
NEEDS_SESSION: Responses = {401: {"model": Detail, "description": "Not signed in"}, **STORE_DOWN}
BODY_CHECKS: Responses = {
    400: {"model": Detail, "description": "The body could not be read (e.g. not UTF-8)"},
    403: {"model": Detail, "description": "Cross-site request refused"},
}
THROTTLED: Responses = {429: {"model": Detail, "description": "Too many failed logins; see Retry-After"}}

router = APIRouter()
# Every state-changing API call refuses what a browser marks as cross-site (CSRF).
state_changing = APIRouter(dependencies=[Depends(same_origin)], responses=BODY_CHECKS)
_warned_plain_http = False


@router.get("/healthz", response_model=Health, tags=["ops"])
async def healthz(settings: SettingsDep) -> Health:
    """Liveness: the process answers. Does not touch Redis."""
    return Health(status="ok", instance=settings.instance_name)


@router.get("/readyz", response_model=Health, responses=STORE_DOWN, tags=["ops"])
async def readyz(request: Request, settings: SettingsDep) -> Health:
    """Readiness: the session store answers."""
    await request.app.state.redis.ping()
    return Health(status="ready", instance=settings.instance_name)


@state_changing.post("/api/register", status_code=201, response_model=UserOut, tags=["auth"],
                     responses={409: {"model": Detail, "description": "Username taken"}, **STORE_DOWN})
async def register(body: Credentials, users: UsersDep) -> UserOut:
    if not await users.create(body.username, body.password):
        raise HTTPException(status.HTTP_409_CONFLICT, "username already taken")
    return UserOut(username=body.username)


async def start_session(request: Request, response: Response, username: str,
                        store: SessionStore, settings: Settings) -> Session:
    """Sign in: a fresh token every time, so a cookie planted before login is worth nothing."""
    global _warned_plain_http
    old = raw_token(request, settings)
    if old:
        await store.delete(old)
    token, session = await store.create(username, settings.instance_name)
    secure = request.url.scheme == "https"
    if not secure and not _warned_plain_http:
        _warned_plain_http = True
        log.warning("plain HTTP: session cookies go out without Secure (fine on loopback; use HTTPS elsewhere)")
    response.set_cookie(cookie_name(request, settings), token, httponly=True, samesite="lax", path="/",
                        secure=secure)
    return session


async def verify_password(request: Request, username: str, password: str,
                          users: UserStore, throttle: LoginThrottle) -> None:
    """Check a password under the brute-force throttle: 429 while blocked, 401 when wrong."""
    address = client_address(request)
    verdict = await throttle.check(username, address)
    if not verdict.allowed:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "too many failed logins, try again later",
                            headers={"Retry-After": str(verdict.retry_after_s)})
    if not await users.authenticate(username, password):
        await throttle.failed(username, address)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong username or password")
    await throttle.succeeded(username, address)


@state_changing.post("/api/login", response_model=UserOut, tags=["auth"],
                     responses={401: {"model": Detail, "description": "Wrong credentials"}, **THROTTLED,
                                **STORE_DOWN})
async def login(body: Credentials, request: Request, response: Response, users: UsersDep, store: StoreDep,
                throttle: ThrottleDep, settings: SettingsDep) -> UserOut:
    await verify_password(request, body.username, body.password, users, throttle)
    await start_session(request, response, body.username, store, settings)
    return UserOut(username=body.username)


def end_session_response(request: Request, settings: Settings) -> Response:
    response = Response(status_code=204)
    response.delete_cookie(cookie_name(request, settings), path="/", httponly=True, samesite="lax",
                           secure=request.url.scheme == "https")
    return response


@state_changing.post("/api/logout", status_code=204, tags=["auth"], responses=STORE_DOWN)
async def logout(request: Request, store: StoreDep, settings: SettingsDep) -> Response:
    token = raw_token(request, settings)
    if token:
        await store.delete(token)
    return end_session_response(request, settings)


@state_changing.post("/api/logout/everywhere", status_code=204, tags=["auth"], responses=NEEDS_SESSION)
async def logout_everywhere(request: Request, session: CurrentSession, store: StoreDep,
                            settings: SettingsDep) -> Response:
    """End every session of this user, on every instance and every device."""
    await store.delete_user(session.username)
    return end_session_response(request, settings)


@state_changing.post("/api/password", response_model=UserOut, tags=["auth"],
                     responses={**NEEDS_SESSION, **THROTTLED})
async def change_password(body: PasswordChange, request: Request, response: Response, session: CurrentSession,
                          users: UsersDep, store: StoreDep, throttle: ThrottleDep, settings: SettingsDep) -> UserOut:
    """Change the password: every other session of the user ends, this one gets a new id."""
    await verify_password(request, session.username, body.current_password, users, throttle)
    await users.set_password(session.username, body.new_password)
    await store.delete_user(session.username)
    await start_session(request, response, session.username, store, settings)
    return UserOut(username=session.username)


@router.get("/api/me", response_model=None, responses={200: {"model": Me}, **NEEDS_SESSION}, tags=["session"])
async def me(request: Request, session: CurrentIdentity) -> JSONResponse:
    """Who am I. The hot path: identity from the near cache, the JSON built directly (the
    schema above still documents it, and the fuzz test checks answers against it)."""
    return JSONResponse({
        "username": session.username,
        "served_by": request.app.state.settings.instance_name,
        "session_created_on": session.created_on,
        "session_created_at": datetime.fromtimestamp(session.created_at, UTC).isoformat(timespec="milliseconds"),
        "requests_in_session": session.requests,
    })


@router.get("/api/cart", response_model=Cart, responses=NEEDS_SESSION, tags=["session"])
async def get_cart(session: CurrentSession) -> Cart:
    return Cart(items=session.cart)


@state_changing.post("/api/cart/items", response_model=Cart, responses=NEEDS_SESSION, tags=["session"])
async def add_to_cart(item: CartItem, token: SessionToken, store: StoreDep) -> Cart:
    """Atomic: concurrent adds through different instances all count."""
    return Cart(items=signed_in(await store.touch(token, add_item=(item.sku, item.qty))).cart)


@router.get("/api/farm", response_model=FarmOut, responses=STORE_DOWN, tags=["ops"])
async def farm(presence: PresenceDep, store: StoreDep, settings: SettingsDep) -> FarmOut:
    """What the farm panel shows: every instance, whether it is up, requests each served, live sessions."""
    return FarmOut(
        served_by=settings.instance_name,
        session_backend=settings.session_backend.value,
        live_sessions=await store.count_live(),
        instances=[InstanceOut(name=i.name, up=i.up, requests=i.requests) for i in await presence.instances()],
    )
