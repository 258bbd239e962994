"""Signing in and out, for the JSON API and the HTML forms alike: the session cookie (its name
and attributes), the password check under the throttle, and starting and ending sessions."""

import logging

from fastapi import HTTPException, Request, Response, status

from app.admission import Busy
from app.config import Settings
from app.metrics import SESSIONS_ENDED, SESSIONS_STARTED, SIGNINS
from app.sessions import Session, SessionKey, SessionStore
from app.throttle import LoginThrottle
from app.users import UserStore

log = logging.getLogger("webfarm")

WRONG_CREDENTIALS = "wrong username or password"


def is_https(request: Request) -> bool:
    """Whether cookies go out Secure: the scheme as the balancer saw it (see app.middleware)."""
    return bool(request.scope["scheme"] == "https")  # not request.url: building a URL costs the hot path


def client_address(request: Request) -> str:
    """The client's IP: from X-Forwarded-For only when the balancer sent the request (app.middleware)."""
    return request.client.host if request.client else "unknown"


class Auth:
    def __init__(self, settings: Settings, store: SessionStore, users: UserStore, throttle: LoginThrottle) -> None:
        self.settings = settings
        self.store = store
        self.users = users
        self.throttle = throttle
        self._warned_plain_http = False

    def cookie_name(self, request: Request) -> str:
        """Over HTTPS the cookie gets the __Host- prefix: Secure, no Domain, Path=/ - enforced by browsers,
        so no other site or subdomain can plant it."""
        name = self.settings.session_cookie
        return f"__Host-{name}" if is_https(request) else name

    def session_key(self, request: Request) -> SessionKey | None:
        """The cookie, parsed once: None when absent or not even shaped like one of ours."""
        return SessionKey.parse(request.cookies.get(self.cookie_name(request), ""))

    async def register(self, request: Request, username: str, password: str, request_id: str) -> None:
        """Create an account: 429 past the per-address limit, 409 when the name is taken. Taken names
        count against the limit too, so probing which names exist is as slow as guessing passwords."""
        verdict = await self.throttle.register(client_address(request))
        if not verdict.allowed:
            raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "too many registrations, try again later",
                                headers={"Retry-After": str(verdict.retry_after_s)})
        if not await self.users.create(username, password, request_id):
            raise HTTPException(status.HTTP_409_CONFLICT, "username already taken")

    async def check_password(self, request: Request, username: str, password: str) -> int:
        """429 while the throttle says no, 401 when wrong; returns the user's epoch as it was
        BEFORE the check, for `start_session` (a sign-out-everywhere meanwhile voids the login)."""
        address = client_address(request)
        verdict = await self.throttle.attempt(username, address)
        if not verdict.allowed:
            raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "too many failed logins, try again later",
                                headers={"Retry-After": str(verdict.retry_after_s)})
        epoch = await self.store.epoch(username)
        if not await self.users.authenticate(username, password):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, WRONG_CREDENTIALS)
        await self.throttle.succeeded(username, address)
        return epoch

    async def check_login(self, request: Request, username: str, password: str) -> int:
        """`check_password` for a sign-in, in an argon2 slot (app.admission) held for the check only:
        the session started next may wait for a replica (WAIT, up to REDIS_WAIT_TIMEOUT_MS), and
        that wait must not keep other sign-ins from hashing."""
        try:
            async with self.users.admission.admit():
                epoch = await self.check_password(request, username, password)
        except Busy:
            SIGNINS.labels("busy").inc()
            raise
        except HTTPException as refused:
            SIGNINS.labels("throttled" if refused.status_code == status.HTTP_429_TOO_MANY_REQUESTS else "wrong").inc()
            raise
        SIGNINS.labels("ok").inc()
        return epoch

    async def start_session(self, request: Request, response: Response, username: str, epoch: int) -> Session:
        """Sign in: a fresh key every time, so a cookie planted before login is worth nothing."""
        old = self.session_key(request)
        if old:
            await self.store.delete(old)
        started = await self.store.create(username, self.settings.instance_name, epoch)
        if started is None:
            raise HTTPException(status.HTTP_409_CONFLICT,
                                "every session of this account was just ended; sign in again")
        key, session = started
        SESSIONS_STARTED.inc()
        if not is_https(request) and not self._warned_plain_http:
            self._warned_plain_http = True
            log.warning("plain HTTP: session cookies go out without Secure (fine on loopback; use HTTPS elsewhere)")
        response.set_cookie(self.cookie_name(request), key.token, httponly=True, samesite="lax", path="/",
                            secure=is_https(request))
        return session

    async def end_session(self, request: Request, response: Response) -> None:
        """Log out: the session ends on every instance, and the browser forgets the cookie."""
        key = self.session_key(request)
        if key:
            await self.store.delete(key)
            SESSIONS_ENDED.labels("logout").inc()
        self.forget_cookie(request, response)

    def forget_cookie(self, request: Request, response: Response) -> None:
        response.delete_cookie(self.cookie_name(request), path="/", httponly=True, samesite="lax",
                               secure=is_https(request))
