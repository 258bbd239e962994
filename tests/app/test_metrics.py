"""The metrics middleware on its own: bounded labels, requests in flight, and the exposition."""

import asyncio

import pytest
from prometheus_client import REGISTRY
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from app.metrics import UNROUTED, MetricsMiddleware


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def call(app: MetricsMiddleware, method: str, path: str) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "method": method, "path": path}, receive, send))
    return sent


def test_unknown_methods_and_unrouted_paths_share_one_series() -> None:
    async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = MetricsMiddleware(not_found)
    before = sample("webfarm_http_requests_total", route=UNROUTED, method="OTHER", code="404")
    for method, path in (("FOO", "/x"), ("BAR", "/y/z"), ("PROPFIND", "/")):
        call(app, method, path)
    assert sample("webfarm_http_requests_total", route=UNROUTED, method="OTHER", code="404") == before + 3
    assert sample("webfarm_http_requests_total", route="/x", method="FOO", code="404") == 0


def test_requests_in_flight_are_counted_while_they_run_and_errors_as_500() -> None:
    seen: list[float] = []

    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = Route("/api/me", failing)  # as the router leaves it
        seen.append(sample("webfarm_http_requests_in_flight"))
        raise RuntimeError("boom")

    app = MetricsMiddleware(failing)
    before = sample("webfarm_http_requests_total", route="/api/me", method="GET", code="500")
    with pytest.raises(RuntimeError, match="boom"):  # passed on: the app's handlers answer it
        call(app, "GET", "/api/me")
    assert seen == [1.0]
    assert sample("webfarm_http_requests_in_flight") == 0
    assert sample("webfarm_http_requests_total", route="/api/me", method="GET", code="500") == before + 1


def test_metrics_are_served_in_the_text_format_prometheus_2_reads() -> None:
    async def never(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("/metrics reached the app")

    [start, body] = call(MetricsMiddleware(never), "GET", "/metrics")
    assert start["status"] == 200
    assert (b"content-type", b"text/plain; version=0.0.4; charset=utf-8") in start["headers"]
    assert b"# TYPE webfarm_http_requests_total counter" in body["body"]
