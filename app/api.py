"""The JSON API: register, log in and out, who am I, and a cart kept in the session."""

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import Field
from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app import redis_client
from app.config import Settings
from app.deps import (
    Admitted,
    AuthDep,
    CurrentIdentity,
    CurrentSession,
    IdempotencyKey,
    MaybeKey,
    PresenceDep,
    RedisDep,
    SettingsDep,
    StartedDep,
    StoreDep,
    UsersDep,
    required,
    same_origin,
    signed_in,
)
from app.metrics import SESSIONS_ENDED, STORE_ERRORS
from app.schemas import Cart, CartItem, Credentials, Detail, FarmOut, Health, InstanceOut, Me, PasswordChange, UserOut
from app.sessions import CartAdd, CartFull, Session, StoreState, refusal

Responses = dict[int | str, dict[str, Any]]
STORE_DOWN: Responses = {503: {"model": Detail, "description": "Session store unavailable, or refusing writes "
                                                             "(full, or cannot persist); see Retry-After"}}
#: Requests that hash a password are admitted a few at a time per instance (app.admission).
EXPENSIVE: Responses = {503: {"model": Detail, "description": "Session store unavailable, or too busy (too "
                                                              "many sign-ups or sign-ins at once); see Retry-After"}}
NEEDS_SESSION: Responses = {401: {"model": Detail, "description": "Not signed in"}, **STORE_DOWN}
BODY_CHECKS: Responses = {
    400: {"model": Detail, "description": "The body could not be read (e.g. not UTF-8)"},
    403: {"model": Detail, "description": "Cross-site request refused"},
}
THROTTLED: Responses = {429: {"model": Detail, "description": "Too many attempts; see Retry-After"}}
RACED: Responses = {409: {"model": Detail, "description": "Every session of the account ended meanwhile"}}

#: A store that refuses writes for a while yet: a retry much sooner is wasted.
REFUSED_RETRY_AFTER_S = 5


async def refusals_explained() -> AsyncIterator[None]:
    """A write the store refused (full, or unable to persist) is a 503 that says so, not the
    "session store unavailable" of a store that does not answer: the operator's fix differs."""
    try:
        yield
    except RedisError as exc:
        if (state := refusal(exc)) is None:
            raise
        STORE_ERRORS.labels("refused").inc()
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, state.refusal,
                            headers={"Retry-After": str(REFUSED_RETRY_AFTER_S)}) from exc


Explained = Depends(refusals_explained, scope="function")
router = APIRouter(dependencies=[Explained])
# Every state-changing API call refuses what a browser marks as cross-site (CSRF).
state_changing = APIRouter(dependencies=[Explained, Depends(same_origin)], responses=BODY_CHECKS)


async def store_state(redis: Redis, settings: Settings) -> StoreState:
    """Whether the store takes writes, by writing: a PING would not tell a full Redis (it answers
    PONG) and fails on one that cannot persist (MISCONF), so it would tell neither. On a cluster the
    key is in one shard: while that shard fails over, this instance still reaches the others, and is
    as ready as every other instance (the failing shard's users get 503 from any of them); only an
    instance that no primary answers is not."""
    try:
        await redis.set(f"{settings.key_prefix}:ready:{settings.instance_name}", 1, px=10_000)
    except RedisError as exc:
        if (state := refusal(exc)) is not None:
            return state
        if redis_client.is_cluster(redis) and await redis_client.a_primary_answers(redis):
            return StoreState.OK
        raise
    return StoreState.OK


@router.get("/healthz", response_model=Health, tags=["ops"])
async def healthz(settings: SettingsDep) -> Health:
    """Liveness: the process answers. Does not touch Redis."""
    return Health(status="ok", instance=settings.instance_name)


@router.get("/readyz", response_model=Health, responses=STORE_DOWN, tags=["ops"])
async def readyz(redis: RedisDep, settings: SettingsDep, started: StartedDep) -> Health:
    """Readiness: the session store answers, within READINESS_TIMEOUT_S - else 503, as fast. A store
    that answers but refuses writes is still 200 ("store full", "store not persisting"): this
    instance serves what the store allows, as every other does - taking instances out would not help.
    Before that, 503 until the instance has started (the demo account made)."""
    if not started.is_set():
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "starting: the demo account is not made yet",
                            headers={"Retry-After": "1"})
    try:
        async with asyncio.timeout(settings.readiness_timeout_s):
            state = await store_state(redis, settings)
    except TimeoutError:
        raise RedisTimeoutError(f"no reply within {settings.readiness_timeout_s} s") from None
    return Health(status="ready" if state is StoreState.OK else f"store {state}", instance=settings.instance_name)


@state_changing.post("/api/register", status_code=201, response_model=UserOut, tags=["auth"], dependencies=[Admitted],
                     responses={409: {"model": Detail, "description": "Username taken"}, **THROTTLED, **EXPENSIVE})
async def register(body: Credentials, request: Request, auth: AuthDep, request_id: IdempotencyKey) -> UserOut:
    """Create an account (limited per client address, see Auth.register)."""
    await auth.register(request, body.username, body.password, request_id)
    return UserOut(username=body.username)


@state_changing.post("/api/login", response_model=UserOut, tags=["auth"],
                     responses={401: {"model": Detail, "description": "Wrong credentials"}, **THROTTLED, **RACED,
                                **EXPENSIVE})
async def login(body: Credentials, request: Request, response: Response, auth: AuthDep) -> UserOut:
    epoch = await auth.check_login(request, body.username, body.password)
    await auth.start_session(request, response, body.username, epoch)
    return UserOut(username=body.username)


@state_changing.post("/api/logout", status_code=204, tags=["auth"], responses=STORE_DOWN)
async def logout(request: Request, auth: AuthDep) -> Response:
    response = Response(status_code=204)
    await auth.end_session(request, response)
    return response


@state_changing.post("/api/logout/everywhere", status_code=204, tags=["auth"], responses=NEEDS_SESSION)
async def logout_everywhere(request: Request, session: CurrentSession, store: StoreDep, auth: AuthDep) -> Response:
    """End every session of this user, on every instance and every device - logins in flight included."""
    SESSIONS_ENDED.labels("everywhere").inc(await store.delete_user(session.username))
    response = Response(status_code=204)
    auth.forget_cookie(request, response)
    return response


@state_changing.post("/api/password", response_model=UserOut, tags=["auth"], dependencies=[Admitted],
                     responses={**NEEDS_SESSION, **THROTTLED, **RACED, **EXPENSIVE})
async def change_password(body: PasswordChange, request: Request, response: Response, session: CurrentSession,
                          users: UsersDep, store: StoreDep, auth: AuthDep) -> UserOut:
    """Change the password: every other session of the user ends (logins that checked the old
    password and have not finished included), this one gets a new id."""
    await auth.check_password(request, session.username, body.current_password)
    await users.set_password(session.username, body.new_password)
    # After the new hash is in place (see SessionStore); this one ends too, and starts again below.
    SESSIONS_ENDED.labels("password").inc(await store.delete_user(session.username))
    await auth.start_session(request, response, session.username, await store.epoch(session.username))
    return UserOut(username=session.username)


def whoami(settings: Settings, session: Session) -> dict[str, Any]:
    return {
        "username": session.username,
        "served_by": settings.instance_name,
        "session_created_on": session.created_on,
        "session_created_at": datetime.fromtimestamp(session.created_at, UTC).isoformat(timespec="milliseconds"),
        "requests_in_session": None if settings.session_near_cache_s else session.requests,
    }


@router.get("/api/me", response_model=None, responses={200: {"model": Me}, **NEEDS_SESSION}, tags=["session"])
async def me(session: CurrentIdentity, settings: SettingsDep) -> JSONResponse:
    """Who am I. The hot path: an instance answers it in front of the app (app.hotpath), so this
    route is what documents it, and what answers where the app runs without it."""
    return JSONResponse(whoami(settings, session))


@router.get("/api/cart", response_model=Cart, responses=NEEDS_SESSION, tags=["session"])
async def get_cart(session: CurrentSession) -> Cart:
    return Cart(items=session.cart)


@state_changing.post("/api/cart/items", response_model=Cart, tags=["session"],
                     responses={**NEEDS_SESSION, 409: {"model": Detail, "description": "Cart limits reached"}})
async def add_to_cart(item: CartItem, key: MaybeKey, store: StoreDep, request_id: IdempotencyKey) -> Cart:
    """Atomic: concurrent adds through different instances all count, and each counts once."""
    try:
        session = await store.touch(required(key), CartAdd(item.sku, item.qty, request_id))
    except CartFull as full:
        raise HTTPException(status.HTTP_409_CONFLICT, full.reason.value) from None
    return Cart(items=signed_in(session).cart)


class FarmStateOut(FarmOut):
    store: StoreState = Field(description="Whether the store takes writes. While it refuses them, the instances' "
                                          "heartbeats cannot be written either: `up` is then unknown, not down")


@router.get("/api/farm", response_model=FarmStateOut, responses=STORE_DOWN, tags=["ops"])
async def farm(presence: PresenceDep, store: StoreDep, redis: RedisDep, settings: SettingsDep) -> FarmStateOut:
    """What the farm panel shows: every instance, whether it is up, requests each served, live sessions,
    and whether the store takes writes."""
    return FarmStateOut(
        served_by=settings.instance_name,
        session_backend=settings.session_backend.value,
        live_sessions=await store.count_live(),
        instances=[InstanceOut(name=i.name, up=i.up, requests=i.requests) for i in await presence.instances()],
        store=await store_state(redis, settings),
    )
