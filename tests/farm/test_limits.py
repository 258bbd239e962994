"""What a request can make the farm spend: bodies and headers refused at the balancer and at an
instance before they are read, a cart's size, and a username's length in the store's keys."""

import socket

import httpx
import psutil
import pytest
import redis

from app.config import CART_MAX_ITEMS, CART_MAX_QTY, SESSION_COOKIE
from farmctl.runtime import Farm
from tests.farm.users import CSRF_FIELD, PASSWORD, signed_in

pytestmark = pytest.mark.farm


def instance_rss_mb(farm: Farm, name: str) -> float:
    return psutil.Process(farm.pid(name)).memory_info().rss / 2**20


def test_a_huge_body_sent_to_an_instance_is_refused_before_it_is_read(farm: Farm) -> None:
    web1 = farm.config.web[0]
    before = instance_rss_mb(farm, web1.name)
    with socket.create_connection(("127.0.0.1", web1.port), timeout=10) as conn:
        conn.sendall(b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 200000000\r\n\r\n" + b"{" * 65536)
        received = b""
        while b'"}' not in received and (chunk := conn.recv(4096)):  # headers and body may come apart
            received += chunk
    reply = received.decode()
    assert reply.startswith("HTTP/1.1 413"), reply
    assert '{"detail":"request body too large"}' in reply
    # Without a Content-Length (chunked), the body is counted as it arrives.
    chunked = httpx.post(f"{web1.url}/api/login", content=iter([b"x" * 65536] * 4),
                         headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    assert instance_rss_mb(farm, web1.name) < before + 20


def test_oversized_body_is_413_from_the_balancer(api: httpx.Client) -> None:
    response = api.post("/api/login", content=b"x" * 100_000, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json() == {"detail": "request body too large"}


def test_too_many_headers_sent_to_an_instance_are_a_431(farm: Farm) -> None:
    headers = [(f"x-h{i}", "v") for i in range(1000)]
    response = httpx.get(f"{farm.config.web[0].url}/api/me", headers=headers)
    assert response.status_code == 431
    assert response.json() == {"detail": "request headers too large"}


def test_an_8kb_cookie_is_a_json_431_from_the_balancer(farm: Farm) -> None:
    response = httpx.get(f"{farm.config.balancer_url}/api/me", headers={"cookie": f"{SESSION_COOKIE}=" + "a" * 9000})
    assert response.status_code == 431
    assert response.json() == {"detail": "request headers too large"}


def test_a_cart_has_a_size_limit_answered_with_a_clear_409(farm: Farm) -> None:
    with signed_in(farm.config.balancer_url) as client:
        for i in range(CART_MAX_ITEMS):
            assert client.post("/api/cart/items", json={"sku": f"s{i}", "qty": 1}).status_code == 200
        full = client.post("/api/cart/items", json={"sku": "one-more", "qty": 1})
        assert full.status_code == 409
        assert full.json() == {"detail": "too many different items in the cart"}
        fit = (CART_MAX_QTY - 1) // 100  # adds of 100 (the most one add may ask for) that fit on s0's 1
        for _ in range(fit):
            assert client.post("/api/cart/items", json={"sku": "s0", "qty": 100}).status_code == 200
        too_many = client.post("/api/cart/items", json={"sku": "s0", "qty": 100})
        assert too_many.json() == {"detail": "quantity of one item too high"}
        cart = client.get("/api/cart").json()["items"]
        assert len(cart) == CART_MAX_ITEMS
        assert cart["s0"] == 1 + fit * 100


def test_the_login_form_validates_usernames_as_the_api_does(farm: Farm) -> None:
    base = farm.config.balancer_url
    with httpx.Client(base_url=base) as client:
        token = CSRF_FIELD.search(client.get("/login").text)
        assert token
        for username in ("x" * 50_000, "Alice", "ab"):
            response = client.post("/login", data={"csrf_token": token[1], "username": username,
                                                   "password": PASSWORD})
            assert response.status_code == 422
            assert "3-32 characters" in response.text
    with redis.Redis.from_url(farm.config.redis_url) as store:
        assert max((len(k) for k in store.scan_iter(f"{farm.config.key_prefix}:*", count=1000)), default=0) < 200

