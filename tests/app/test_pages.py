"""The sign-in and register forms, against the whole app on a real Redis: what each answers on
success, on a refusal and on invalid input, and that a form without the page's CSRF token is refused."""

import re
import secrets
from collections.abc import AsyncIterator

import httpx
import pytest

from app.auth import WRONG_CREDENTIALS
from app.config import SESSION_COOKIE, Settings
from app.main import create_app
from tests.app.sessions.stores import new_username

PASSWORD = "correct horse battery"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    # A prefix of its own per test: accounts and throttle counters outlive a test.
    settings = Settings(redis_url=redis_url, key_prefix=f"p{secrets.token_hex(4)}", demo_user=None,
                        argon2_time_cost=1, argon2_memory_kib=8 * 1024, login_max_attempts_per_pair=2)
    app = create_app(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        yield http


async def post_form(http: httpx.AsyncClient, mode: str, username: str, password: str) -> httpx.Response:
    """Fill in the form the way a browser does: GET the page (its CSRF token and cookie), POST it."""
    page = await http.get(f"/{mode}")
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match is not None
    return await http.post(f"/{mode}", data={"csrf_token": match[1], "username": username, "password": password})


async def test_register_signs_in_and_redirects_to_the_dashboard(client: httpx.AsyncClient) -> None:
    name = new_username()
    response = await post_form(client, "register", name, PASSWORD)
    assert (response.status_code, response.headers["location"]) == (303, "/dashboard")
    assert SESSION_COOKIE in response.cookies
    dashboard = await client.get("/dashboard")
    assert dashboard.status_code == 200
    assert f'<span id="username">{name}</span>' in dashboard.text


async def test_login_starts_a_fresh_session(client: httpx.AsyncClient) -> None:
    name = new_username()
    await post_form(client, "register", name, PASSWORD)
    registered = client.cookies[SESSION_COOKIE]
    response = await post_form(client, "login", name, PASSWORD)
    assert (response.status_code, response.headers["location"]) == (303, "/dashboard")
    assert response.cookies[SESSION_COOKIE] != registered
    assert (await client.get("/api/me")).json()["username"] == name


async def test_a_wrong_password_is_shown_next_to_the_password(client: httpx.AsyncClient) -> None:
    name = new_username()
    await post_form(client, "register", name, PASSWORD)
    client.cookies.delete(SESSION_COOKIE)
    response = await post_form(client, "login", name, "not-the-password")
    assert response.status_code == 401
    assert f'<p class="error" id="password-error">{WRONG_CREDENTIALS}</p>' in response.text
    assert f'value="{name}"' in response.text
    assert SESSION_COOKIE not in response.cookies


async def test_a_throttled_login_keeps_its_retry_after(client: httpx.AsyncClient) -> None:
    name = new_username()
    for _ in range(2):
        assert (await post_form(client, "login", name, "not-the-password")).status_code == 401
    response = await post_form(client, "login", name, "not-the-password")
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) > 0
    assert 'id="password-error">too many failed logins' in response.text


async def test_a_taken_name_is_shown_next_to_the_username(client: httpx.AsyncClient) -> None:
    name = new_username()
    await post_form(client, "register", name, PASSWORD)
    response = await post_form(client, "register", name, PASSWORD)
    assert response.status_code == 409
    assert '<p class="error" id="username-error">username already taken</p>' in response.text
    assert SESSION_COOKIE not in response.cookies


@pytest.mark.parametrize("mode", ["login", "register"])
async def test_invalid_fields_are_shown_next_to_them(client: httpx.AsyncClient, mode: str) -> None:
    response = await post_form(client, mode, "NO SPACES", "short")
    assert response.status_code == 422
    assert 'id="username-error"' in response.text
    assert 'id="password-error">8-128 characters' in response.text
    assert 'value="NO SPACES"' in response.text


@pytest.mark.parametrize("mode", ["login", "register"])
async def test_a_form_without_the_pages_token_is_refused(client: httpx.AsyncClient, mode: str) -> None:
    await client.get(f"/{mode}")  # the pre-session cookie, but not the token that goes with it
    response = await client.post(f"/{mode}", data={"csrf_token": "forged", "username": new_username(),
                                                   "password": PASSWORD})
    assert response.status_code == 403
    assert SESSION_COOKIE not in response.cookies
