"""The JSON API contract through the real balancer, bad input included."""

import hashlib

import httpx
import pytest

from app.config import DEMO_USERNAME, SESSION_COOKIE
from farmctl.runtime import Farm
from tests.farm.users import PASSWORD, new_username, signed_in

pytestmark = pytest.mark.farm


def test_healthz_names_the_instance_without_redis(farm: Farm) -> None:
    for inst in farm.config.web:
        response = httpx.get(f"{inst.url}/healthz")
        assert response.json() == {"status": "ok", "instance": inst.name}
        assert response.headers["x-served-by"] == inst.name


def test_login_sets_a_strong_httponly_lax_cookie(api: httpx.Client) -> None:
    username = new_username()
    assert api.post("/api/register", json={"username": username, "password": PASSWORD}).status_code == 201
    response = api.post("/api/login", json={"username": username, "password": PASSWORD})
    assert response.status_code == 200
    assert response.json() == {"username": username}
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "samesite=lax" in cookie.lower()
    assert "Path=/" in cookie
    token = response.cookies[SESSION_COOKIE]
    assert len(token) >= 22  # >= 128 bits in URL-safe base64
    me = api.get("/api/me").json()
    assert me["username"] == username
    assert me["requests_in_session"] is None  # the near cache is on: see test_counter.py


def test_register_taken_name_is_409(api: httpx.Client) -> None:
    username = new_username()
    assert api.post("/api/register", json={"username": username, "password": PASSWORD}).status_code == 201
    again = api.post("/api/register", json={"username": username, "password": "another-password"})
    assert again.status_code == 409
    assert again.json() == {"detail": "username already taken"}


@pytest.mark.parametrize(
    "body",
    [
        {"username": "ab", "password": PASSWORD},
        {"username": "a" * 33, "password": PASSWORD},
        {"username": "Alice", "password": PASSWORD},
        {"username": "al ice", "password": PASSWORD},
        {"username": "\u0430lice", "password": PASSWORD},  # Cyrillic a: a look-alike
        {"username": "alice", "password": "short"},
        {"username": "alice", "password": "x" * 129},
        {"username": "alice"},
        {"username": 12345, "password": PASSWORD},
        {"username": "alice", "password": PASSWORD, "admin": True},
    ],
)
def test_register_invalid_input_is_422_and_stores_nothing(api: httpx.Client, body: dict[str, object]) -> None:
    response = api.post("/api/register", json=body)
    assert response.status_code == 422
    assert response.json()["detail"]
    if isinstance(body.get("username"), str) and "password" in body:
        login = api.post("/api/login", json={"username": body["username"], "password": body["password"]})
        assert login.status_code in (401, 422)


@pytest.mark.parametrize("raw", [b"{", b"not json", b'{"username": "alice", "password": ', b"[1, 2"])
def test_malformed_json_is_422_with_a_readable_message(api: httpx.Client, raw: bytes) -> None:
    response = api.post("/api/login", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "JSON decode error: " in response.json()["detail"][0]["msg"]


def test_body_that_is_not_utf8_is_a_400(api: httpx.Client) -> None:
    response = api.post("/api/login", content=b"\xff\xfe\x00", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["detail"]


def test_wrong_password_and_unknown_user_get_the_same_401(api: httpx.Client) -> None:
    wrong = api.post("/api/login", json={"username": DEMO_USERNAME, "password": "not-the-password"})
    unknown = api.post("/api/login", json={"username": new_username(), "password": "not-the-password"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert "set-cookie" not in wrong.headers


@pytest.mark.parametrize(
    "cookie",
    [
        "garbage",
        "A" * 43,  # well-formed, never issued
        hashlib.sha256(b"x").hexdigest(),
        "x" * 4000,
        "%00%ff%c3%28",
        "é" * 10,
    ],
)
def test_forged_or_garbage_cookie_is_401_not_500(farm: Farm, cookie: str) -> None:
    raw_header = f"{SESSION_COOKIE}={cookie}".encode()
    for path in ("/api/me", "/api/cart"):
        response = httpx.get(f"{farm.config.balancer_url}{path}", headers={b"cookie": raw_header})
        assert response.status_code == 401
        assert response.json() == {"detail": "not signed in"}


def test_errors_carry_x_served_by(api: httpx.Client) -> None:
    for response in (
        api.get("/no-such-page"),
        api.get("/api/me"),
        api.post("/api/login", content=b"{"),
    ):
        assert response.status_code >= 400
        assert response.headers["x-served-by"].startswith("web")


def test_cart_rejects_bad_items_and_keeps_the_cart(farm: Farm) -> None:
    with signed_in(farm.config.balancer_url) as client:
        assert client.post("/api/cart/items", json={"sku": "pear", "qty": 2}).status_code == 200
        for bad in ({"sku": "", "qty": 1}, {"sku": "pear", "qty": 0}, {"sku": "pear", "qty": 101},
                    {"sku": "a/b", "qty": 1}, {"sku": "pear"}, {"sku": "pear", "qty": "many"}):
            assert client.post("/api/cart/items", json=bad).status_code == 422
        assert client.get("/api/cart").json() == {"items": {"pear": 2}}


@pytest.mark.parametrize("qty", ["5", True, 100.0, 5.5, None])
def test_qty_must_be_a_json_integer(farm: Farm, qty: object) -> None:
    with signed_in(farm.config.balancer_url) as client:
        assert client.post("/api/cart/items", json={"sku": "apple", "qty": qty}).status_code == 422
        assert client.get("/api/cart").json() == {"items": {}}


def test_authenticated_json_is_never_cached(farm: Farm) -> None:
    with signed_in(farm.config.balancer_url) as client:
        for path in ("/api/me", "/api/cart", "/api/farm"):
            assert client.get(path).headers["cache-control"] == "no-store"


def test_requests_through_balancer_get_a_request_id(api: httpx.Client) -> None:
    first, second = api.get("/healthz"), api.get("/healthz")
    assert len(first.headers["x-request-id"]) == 32
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


@pytest.mark.parametrize(("method", "path", "status"), [
    ("POST", "/static/style.css", 405), ("GET", "/static/no-such-file.css", 404),
    ("GET", "/_webfarm/uri-too-long", 404), ("GET", "/" + "a" * 10_000, 414), ("GET", "/api/me?" + "q" * 9000, 414)])
def test_errors_nginx_answers_itself_are_json_too(farm: Farm, method: str, path: str, status: int) -> None:
    response = httpx.request(method, f"{farm.config.balancer_url}{path}")
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) == {"detail"}


def test_duplicate_session_cookies_are_refused_never_500(farm: Farm) -> None:
    with signed_in(farm.config.balancer_url) as client:
        good = client.cookies[SESSION_COOKIE]
    for header in (f"{SESSION_COOKIE}={good}; {SESSION_COOKIE}=garbage",
                   f"{SESSION_COOKIE}=garbage; {SESSION_COOKIE}={'B' * 43}"):
        response = httpx.get(f"{farm.config.balancer_url}/api/me", headers={"cookie": header})
        assert response.status_code == 401
        assert response.json() == {"detail": "not signed in"}


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          "application/xml"])
def test_wrong_content_type_is_422_and_stores_nothing(api: httpx.Client, content_type: str) -> None:
    username = new_username()
    body = f'{{"username": "{username}", "password": "{PASSWORD}"}}'
    response = api.post("/api/register", content=body, headers={"content-type": content_type})
    assert response.status_code == 422
    assert api.post("/api/login", json={"username": username, "password": PASSWORD}).status_code == 401


def test_large_json_under_the_body_limit_is_422(api: httpx.Client) -> None:
    response = api.post("/api/register", json={"username": "a" * 30_000, "password": PASSWORD})
    assert response.status_code == 422


def test_validation_errors_do_not_echo_the_password(api: httpx.Client) -> None:
    secret = "hunter2-but-longer-than-8"
    response = api.post("/api/register", json={"username": "X", "password": secret})
    assert response.status_code == 422
    assert secret not in response.text

