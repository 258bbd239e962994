"""Request dependencies, as Annotated aliases so that route signatures read as declarations."""

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request, status

from app.config import Settings
from app.presence import Presence
from app.sessions import Session, SessionStore, session_id
from app.throttle import LoginThrottle
from app.users import UserStore

NOT_SIGNED_IN = "not signed in"


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_store(request: Request) -> SessionStore:
    store: SessionStore = request.app.state.sessions
    return store


async def get_users(request: Request) -> UserStore:
    users: UserStore = request.app.state.users
    return users


async def get_presence(request: Request) -> Presence:
    presence: Presence = request.app.state.presence
    return presence


async def get_throttle(request: Request) -> LoginThrottle:
    throttle: LoginThrottle = request.app.state.throttle
    return throttle


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[SessionStore, Depends(get_store)]
UsersDep = Annotated[UserStore, Depends(get_users)]
PresenceDep = Annotated[Presence, Depends(get_presence)]
ThrottleDep = Annotated[LoginThrottle, Depends(get_throttle)]


def cookie_name(request: Request, settings: Settings) -> str:
    """Over HTTPS the cookie gets the __Host- prefix: Secure, no Domain, Path=/ - enforced by browsers."""
    return f"__Host-{settings.session_cookie}" if request.url.scheme == "https" else settings.session_cookie


def raw_token(request: Request, settings: Settings) -> str:
    return request.cookies.get(cookie_name(request, settings), "")


def client_address(request: Request) -> str:
    """The client's IP. uvicorn takes it from X-Forwarded-For only when the connection came from
    the balancer (--forwarded-allow-ips); anyone else's X-Forwarded-For is ignored."""
    return request.client.host if request.client else "unknown"


async def session_token(request: Request, settings: SettingsDep) -> str:
    """The raw token from the cookie; 401 when absent or not even shaped like one of ours."""
    token = raw_token(request, settings)
    if session_id(token) is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, NOT_SIGNED_IN)
    return token


SessionToken = Annotated[str, Depends(session_token)]


def signed_in(session: Session | None) -> Session:
    if session is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, NOT_SIGNED_IN)
    return session


# The two below run on every authenticated request: flat (no nested dependencies) and async
# (FastAPI runs plain `def` dependencies in a thread pool, which costs more than they do).
async def current_session(request: Request) -> Session:
    """The caller's whole session, cart included, read from the store."""
    state = request.app.state
    return signed_in(await state.sessions.touch(raw_token(request, state.settings)))


async def current_identity(request: Request) -> Session:
    """Who the caller is (the cart left out), possibly from the near cache."""
    state = request.app.state
    return signed_in(await state.sessions.identify(raw_token(request, state.settings)))


CurrentSession = Annotated[Session, Depends(current_session)]
CurrentIdentity = Annotated[Session, Depends(current_identity)]


async def optional_session(request: Request, settings: SettingsDep, store: StoreDep) -> Session | None:
    """For pages: the session if there is a valid one, None (not 401) otherwise."""
    token = raw_token(request, settings)
    return await store.touch(token) if session_id(token) else None


MaybeSession = Annotated[Session | None, Depends(optional_session)]


async def same_origin(request: Request) -> None:
    """Refuse state-changing requests that a browser marks as coming from another site.

    Browsers send Origin (and Sec-Fetch-Site) on cross-site POSTs; a page elsewhere cannot
    forge them. Non-browser clients send neither and are not affected."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    origin = request.headers.get("origin")
    cross_site = request.headers.get("sec-fetch-site") == "cross-site"
    if cross_site or (origin and urlsplit(origin).netloc != request.headers.get("host")):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "cross-site request refused")
