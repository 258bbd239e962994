"""CSRF tokens: bound to the server's secret and the session, never to a value the client chose."""

from http.cookies import SimpleCookie

from starlette.requests import Request
from starlette.responses import Response

from app import csrf
from app.config import Settings
from app.sessions import SessionKey

SETTINGS = Settings(csrf_secret="s" * 32)


def request(cookies: dict[str, str] | None = None, scheme: str = "http") -> Request:
    header = "; ".join(f"{k}={v}" for k, v in (cookies or {}).items()).encode()
    return Request({"type": "http", "method": "POST", "path": "/", "scheme": scheme, "query_string": b"",
                    "headers": [(b"cookie", header)] if header else [], "server": ("127.0.0.1", 80)})


def test_a_session_token_is_valid_for_its_session_only() -> None:
    mine, other = SessionKey.new(), SessionKey.new()
    token, cookie = csrf.issue(request(), SETTINGS, mine)
    assert cookie is None
    assert csrf.is_valid(request(), SETTINGS, mine, token)
    assert not csrf.is_valid(request(), SETTINGS, other, token)


def test_a_pre_session_token_needs_the_cookie_the_server_signed() -> None:
    token, cookie = csrf.issue(request(), SETTINGS, None)
    assert cookie is not None
    assert csrf.is_valid(request({csrf.PRE_SESSION_COOKIE: cookie}), SETTINGS, None, token)
    assert not csrf.is_valid(request(), SETTINGS, None, token)
    assert not csrf.is_valid(request({csrf.PRE_SESSION_COOKIE: cookie}), Settings(csrf_secret="t" * 32), None, token)


def test_a_planted_cookie_is_not_signed_and_gets_replaced() -> None:
    planted = {csrf.PRE_SESSION_COOKIE: "attacker-chosen-value"}
    token, cookie = csrf.issue(request(planted), SETTINGS, None)
    assert cookie is not None  # not trusted: a fresh, signed one is issued
    assert not cookie.startswith("attacker-chosen-value")
    # Whatever token the attacker derives for their value, it is not accepted with it.
    for guess in (token, "attacker-chosen-value", ""):
        assert not csrf.is_valid(request(planted), SETTINGS, None, guess)


def test_over_https_the_cookie_is_host_prefixed_and_secure() -> None:
    _, cookie = csrf.issue(request(scheme="https"), SETTINGS, None)
    assert cookie is not None
    response = Response()
    csrf.set_pre_session_cookie(request(scheme="https"), response, cookie)
    morsel = SimpleCookie(response.headers["set-cookie"])[f"__Host-{csrf.PRE_SESSION_COOKIE}"]
    assert morsel["secure"]
    assert morsel["path"] == "/"
    assert not morsel["domain"]
