"""CSRF tokens for the HTML forms: an HMAC of whatever identifies the browser.

Signed in, that is the session token (so a token dies with its session); before signing in,
a random pre-session cookie. An attacker's page can neither read these cookies nor compute
the HMAC without the server's secret."""

import hashlib
import hmac
import secrets

from fastapi import Request, Response

from app.config import Settings
from app.deps import raw_token

PRE_SESSION_COOKIE = "webfarm_csrf"


def _sign(settings: Settings, basis: str) -> str:
    return hmac.new(settings.csrf_secret.encode(), basis.encode(), hashlib.sha256).hexdigest()


def issue(request: Request, settings: Settings, new_session: str | None = None) -> tuple[str, str | None]:
    """A token for the forms of this page, and a pre-session cookie value to set if one is needed."""
    basis = new_session or raw_token(request, settings) or request.cookies.get(PRE_SESSION_COOKIE)
    if basis:
        return _sign(settings, basis), None
    fresh = secrets.token_urlsafe(32)
    return _sign(settings, fresh), fresh


def set_pre_session_cookie(request: Request, response: Response, value: str) -> None:
    response.set_cookie(PRE_SESSION_COOKIE, value, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")


def is_valid(request: Request, settings: Settings, token: str) -> bool:
    bases = [raw_token(request, settings), request.cookies.get(PRE_SESSION_COOKIE)]
    return any(basis and hmac.compare_digest(_sign(settings, basis), token) for basis in bases)
