"""CSRF tokens: bound to the server's secret and the session, never to a value the client chose."""

from http.cookies import SimpleCookie

import pytest
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from app import csrf
from app.config import Settings
from app.sessions import SessionKey

SETTINGS = Settings(csrf_secret="s" * 32)


def request(cookies: dict[str, str] | None = None, scheme: str = "http",
            headers: dict[str, str] | None = None) -> Request:
    header = "; ".join(f"{k}={v}" for k, v in (cookies or {}).items()).encode()
    return Request({"type": "http", "method": "POST", "path": "/", "scheme": scheme, "query_string": b"",
                    "headers": [*([(b"cookie", header)] if header else []),
                                *((k.encode(), v.encode()) for k, v in (headers or {}).items())],
                    "server": ("127.0.0.1", 80)})


def test_an_origin_is_ours_only_if_configured_whatever_the_host() -> None:
    settings = Settings(csrf_secret="s" * 32, allowed_origins="https://shop.example,http://127.0.0.1:8080")
    for ours in ("https://shop.example", "https://SHOP.example:443", "http://127.0.0.1:8080"):
        assert csrf.from_our_origin(request(headers={"origin": ours, "host": "elsewhere.example"}), settings), ours
    # DNS rebinding: a foreign page's Origin matches the Host it sends; neither is configured.
    for host in ("rebind.example", "rebind.example:8080"):
        rebound = request(headers={"origin": f"http://{host}", "host": host, "sec-fetch-site": "same-origin"})
        assert not csrf.from_our_origin(rebound, settings), host
    for foreign in ("http://shop.example", "https://shop.example:8443", "http://127.0.0.1:8081", "null",
                    "https://shop.example.evil.example"):
        assert not csrf.from_our_origin(request(headers={"origin": foreign}), settings), foreign


def test_a_browser_s_cross_site_mark_is_refused_and_no_origin_is_a_non_browser() -> None:
    assert csrf.from_our_origin(request(), SETTINGS)
    for site in ("cross-site", "same-site"):
        assert not csrf.from_our_origin(request(headers={"sec-fetch-site": site, "origin": "http://127.0.0.1:8080"}),
                                        SETTINGS)


def test_allowed_origins_are_refused_unless_they_are_origins() -> None:
    assert Settings(allowed_origins="http://[::1]:80/, HTTPS://Shop.Example").allowed_origins == (
        "http://[::1]:80", "https://shop.example:443")
    for bad in ("null", "https://shop.example/path", "ftp://shop.example", "https://user@shop.example", "shop.example"):
        with pytest.raises(ValidationError, match="not an origin"):
            Settings(allowed_origins=bad)


def test_a_session_token_is_valid_for_its_session_only() -> None:
    mine, other = SessionKey.new("alice"), SessionKey.new("alice")
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
