"""Request dependencies, as Annotated aliases so that route signatures read as declarations."""

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, HTTPException, Request, status
from redis.asyncio import Redis

from app import csrf
from app.admission import Admission
from app.auth import Auth
from app.config import Settings
from app.presence import Presence
from app.services import Services
from app.sessions import Session, SessionKey, SessionStore
from app.users import UserStore

T = TypeVar("T")

NOT_SIGNED_IN = "not signed in"


def part(pick: Callable[[Services], T]) -> Any:
    """A dependency on one part of the app's services (app.services): `Annotated[Settings,
    part(lambda s: s.settings)]`. Async, so that FastAPI does not send it to a thread."""
    async def dependency(request: Request) -> T:
        return pick(Services.of(request.app))

    return Depends(dependency)


SettingsDep = Annotated[Settings, part(lambda s: s.settings)]
RedisDep = Annotated[Redis, part(lambda s: s.redis)]
StoreDep = Annotated[SessionStore, part(lambda s: s.sessions)]
UsersDep = Annotated[UserStore, part(lambda s: s.users)]
PresenceDep = Annotated[Presence, part(lambda s: s.presence)]
AdmissionDep = Annotated[Admission, part(lambda s: s.admission)]
AuthDep = Annotated[Auth, part(lambda s: s.auth)]
StartedDep = Annotated[asyncio.Event, part(lambda s: s.started)]


async def session_key(request: Request, auth: AuthDep) -> SessionKey | None:
    """The session cookie, parsed once per request (FastAPI caches a dependency's value)."""
    return auth.session_key(request)


MaybeKey = Annotated[SessionKey | None, Depends(session_key)]


def signed_in(session: Session | None) -> Session:
    if session is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, NOT_SIGNED_IN)
    return session


def required(key: SessionKey | None) -> SessionKey:
    if key is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, NOT_SIGNED_IN)
    return key


async def current_session(store: StoreDep, key: MaybeKey) -> Session:
    """The caller's whole session, cart included, read from the store."""
    return signed_in(await store.touch(required(key)))


async def current_identity(store: StoreDep, key: MaybeKey) -> Session:
    """Who the caller is (the cart left out), possibly from the near cache."""
    return signed_in(await store.identify(required(key)))


async def optional_session(store: StoreDep, key: MaybeKey) -> Session | None:
    """For pages: the session if there is a valid one, None (not 401) otherwise."""
    return await store.touch(key) if key else None


CurrentSession = Annotated[Session, Depends(current_session)]
CurrentIdentity = Annotated[Session, Depends(current_identity)]
MaybeSession = Annotated[Session | None, Depends(optional_session)]


async def idempotency_key(key: Annotated[str | None, Header(alias="Idempotency-Key", pattern=r"^[A-Za-z0-9_-]{8,64}$",
                                                               description="Repeat a write with the same key and "
                                                                           "it applies once.")] = None) -> str:
    """The client's key for a write, or a fresh one: either way the write applies once, even when
    the Redis client repeats it after a dropped connection."""
    return key or request_id()


def request_id() -> str:
    return secrets.token_urlsafe(12)


IdempotencyKey = Annotated[str, Depends(idempotency_key)]


async def admitted(admission: AdmissionDep) -> AsyncIterator[None]:
    """For the requests that hash a password: admitted first (app.admission), or 503 at once,
    before anything is counted or written."""
    async with admission.admit():
        yield


#: `dependencies=[Admitted]` on a route whose work includes an argon2 hash.
Admitted = Depends(admitted)


async def same_origin(request: Request, settings: SettingsDep) -> None:
    """Refuse state-changing requests that a browser marks as coming from a page not ours
    (app.csrf.from_our_origin: Origin against ALLOWED_ORIGINS)."""
    if request.method not in ("GET", "HEAD", "OPTIONS") and not csrf.from_our_origin(request, settings):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-site request refused")
