"""CSRF protection, in two layers:

- every state-changing request (a form POST, an API write) must come from one of our own origins
  (`from_our_origin`, checked by deps.same_origin);
- and a form POST must carry a token: an HMAC, under the server's secret, of the session id - or, before signing
  in, of a pre-session cookie that the server itself issued and signed. A cookie value the client
  chose (planted by a sibling site or a man in the middle on plain HTTP) fails the signature, so
  it cannot be paired with a token the attacker computed. Over HTTPS the pre-session cookie has
  the __Host- prefix, so it cannot be planted at all."""

import hashlib
import hmac
import secrets
from collections.abc import Collection, Mapping

from fastapi import Request, Response

from app.auth import is_https
from app.config import Settings, normalized_origin
from app.sessions import SessionKey

PRE_SESSION_COOKIE = "webfarm_csrf"


def from_our_origin(request: Request, settings: Settings) -> bool:
    """False when the browser says the request comes from a page that is not ours.

    Browsers send Origin with every POST, and Sec-Fetch-Site; a page cannot forge either. Origin is
    compared with ALLOWED_ORIGINS, never with Host: a DNS-rebinding page (its own name resolved to
    the farm's address) sends its own name in both. Non-browser clients send neither."""
    return origin_allowed(request.headers, settings.allowed_origins)


def origin_allowed(headers: Mapping[str, str], allowed_origins: Collection[str]) -> bool:
    """`from_our_origin` for any server's request headers (the console's too)."""
    if headers.get("sec-fetch-site") in ("cross-site", "same-site"):
        return False
    origin = headers.get("origin")
    return origin is None or normalized_origin(origin) in allowed_origins


def sign(secret: str, purpose: str, value: str) -> str:
    """The token for `value` used for `purpose`, under `secret` (the farm's CSRF secret)."""
    return hmac.new(secret.encode(), f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


def _sign(settings: Settings, purpose: str, value: str) -> str:
    return sign(settings.csrf_secret, purpose, value)


def cookie_name(request: Request) -> str:
    return f"__Host-{PRE_SESSION_COOKIE}" if is_https(request) else PRE_SESSION_COOKIE


def _pre_session(request: Request, settings: Settings) -> str | None:
    """The pre-session cookie's nonce, if the cookie is one this server signed."""
    nonce, _, signature = request.cookies.get(cookie_name(request), "").partition(".")
    if nonce and hmac.compare_digest(_sign(settings, "cookie", nonce), signature):
        return nonce
    return None


def issue(request: Request, settings: Settings, session: SessionKey | None) -> tuple[str, str | None]:
    """A token for the forms of this page, and a pre-session cookie to set if one is needed."""
    if session:
        return _sign(settings, "session", session.id), None
    nonce = _pre_session(request, settings)
    if nonce:
        return _sign(settings, "pre-session", nonce), None
    nonce = secrets.token_urlsafe(32)
    return _sign(settings, "pre-session", nonce), f"{nonce}.{_sign(settings, 'cookie', nonce)}"


def set_pre_session_cookie(request: Request, response: Response, value: str) -> None:
    response.set_cookie(cookie_name(request), value, httponly=True, samesite="strict", path="/",
                        secure=is_https(request))


def is_valid(request: Request, settings: Settings, session: SessionKey | None, token: str) -> bool:
    if session and hmac.compare_digest(_sign(settings, "session", session.id), token):
        return True
    nonce = _pre_session(request, settings)
    return nonce is not None and hmac.compare_digest(_sign(settings, "pre-session", nonce), token)
