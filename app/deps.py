"""Request dependencies, as Annotated aliases so that route signatures read as declarations."""

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from app.config import Settings
from app.presence import Presence
from app.sessions import Session, SessionStore, session_id
from app.users import UserStore

NOT_SIGNED_IN = "not signed in"


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_store(request: Request) -> SessionStore:
    store: SessionStore = request.app.state.sessions
    return store


def get_users(request: Request) -> UserStore:
    users: UserStore = request.app.state.users
    return users


def get_presence(request: Request) -> Presence:
    presence: Presence = request.app.state.presence
    return presence


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[SessionStore, Depends(get_store)]
UsersDep = Annotated[UserStore, Depends(get_users)]
PresenceDep = Annotated[Presence, Depends(get_presence)]


def session_token(request: Request, settings: SettingsDep) -> str:
    """The raw token from the cookie; 401 when absent or not even shaped like one of ours."""
    token = request.cookies.get(settings.session_cookie, "")
    if session_id(token) is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, NOT_SIGNED_IN)
    return token


SessionToken = Annotated[str, Depends(session_token)]


async def current_session(token: SessionToken, store: StoreDep) -> Session:
    session = await store.touch(token)
    if session is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, NOT_SIGNED_IN)
    return session


CurrentSession = Annotated[Session, Depends(current_session)]


async def optional_session(request: Request, settings: SettingsDep, store: StoreDep) -> Session | None:
    """For pages: the session if there is a valid one, None (not 401) otherwise."""
    token = request.cookies.get(settings.session_cookie, "")
    return await store.touch(token) if session_id(token) else None


MaybeSession = Annotated[Session | None, Depends(optional_session)]
