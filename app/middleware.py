"""Pure-ASGI middleware: the stamp every response gets, whom we trust to say where a request came
from, which requests we accept at all, and how long one may take."""

import asyncio
import hmac
import json
import logging
from collections.abc import Sequence
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import PROXY_HEADER
from app.metrics import STORE_ERRORS
from app.presence import Presence

log = logging.getLogger("webfarm")

#: As ASGI spells header names: only a request that carries the farm's proxy secret in it may tell
#: us the client's address and scheme.
_PROXY_HEADER_KEY = PROXY_HEADER.lower().encode("latin-1")
RawHeaders = Sequence[tuple[bytes, bytes]]


#: The app's answer whenever the session store fails it: a timeout, a refused connection, or the
#: request's deadline (below). Clients retry after Retry-After.
STORE_UNAVAILABLE = "session store unavailable"


def json_body(content: str | dict[str, Any]) -> bytes:
    """The API's JSON; a string is sent as its {"detail": ...}."""
    return json.dumps({"detail": content} if isinstance(content, str) else content, separators=(",", ":")).encode()


def json_messages(status: int, content: str | dict[str, Any] | bytes, headers: dict[str, str] | None = None,
                  raw_headers: RawHeaders = ()) -> tuple[Message, Message]:
    """A JSON answer's two ASGI messages, without a Response object (`content` already encoded, or
    as json_body takes it)."""
    body = content if isinstance(content, bytes) else json_body(content)
    return ({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()), *raw_headers]},
            {"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, content: str | dict[str, Any] | bytes,
                    headers: dict[str, str] | None = None, raw_headers: RawHeaders = ()) -> None:
    """Send a JSON answer (json_messages)."""
    start, body = json_messages(status, content, headers, raw_headers)
    await send(start)
    await send(body)


def headers_too_large(headers: RawHeaders, max_headers: int, max_header_bytes: int) -> bool:
    """Past what one request may make an instance hold: the count of its header lines, or their bytes."""
    return len(headers) > max_headers or sum(len(k) + len(v) for k, v in headers) > max_header_bytes


def forwarded(headers: RawHeaders, secret: bytes) -> tuple[str, str] | None:
    """The client's address and scheme as the balancer names them (X-Forwarded-For's last hop,
    X-Forwarded-Proto; '' for what it leaves out) - only if the request carries the balancer's
    secret, else None. As Starlette reads headers, a repeated one counts by its last value."""
    named = dict(headers)
    if not secret or not hmac.compare_digest(named.get(_PROXY_HEADER_KEY, b""), secret):
        return None
    return (named.get(b"x-forwarded-for", b"").decode("latin-1").split(",")[-1].strip(),
            named.get(b"x-forwarded-proto", b"").decode("latin-1").strip())


def served_by(instance: str) -> RawHeaders:
    """What ServedByMiddleware adds to an answer of the app's that does not set its own Cache-Control."""
    return ((b"x-served-by", instance.encode()), (b"cache-control", b"no-store"))


class DeadlineMiddleware:
    """Every request answers within `seconds`, however many Redis calls (each with its own
    timeouts) or waits it makes: past that its work is cancelled and the answer is 503 with
    Retry-After. Kept below the balancer's read timeout, so that a stalled store reaches users as
    this 503 rather than as an instance that nginx (or the health checks) take for hung.

    Cancelling is safe here: redis-py closes a connection whose command was cancelled (no late
    reply can reach another request), a write that Redis applies later anyway carries a request id
    where applying it twice would matter (app.sessions.redis), and hashes are left to finish on
    their own threads (app.admission). Once the answer has started, the deadline is off."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline, answered = asyncio.timeout(self.seconds), False

        async def send_in_time(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
                if not deadline.expired():  # else it struck just now, as the answer was ready
                    deadline.reschedule(None)
            await send(message)

        try:
            async with deadline:
                await self.app(scope, receive, send_in_time)
        except TimeoutError:
            if not deadline.expired():
                raise
            if answered:  # it struck as the answer went out: that answer stands, nothing can follow it
                return
            log.warning("%s %s: no answer within %.1f s, 503", scope["method"], scope["path"], self.seconds)
            STORE_ERRORS.labels("deadline").inc()
            await send_json(send, 503, STORE_UNAVAILABLE, {"Retry-After": "1"})


class RequestLimitsMiddleware:
    """What one request may make an instance spend, enforced here and not only by nginx (anything
    on the host can reach an instance directly): the header count and size (431) and the body size
    (413), read in chunks and refused as soon as it goes over - never buffered whole."""

    def __init__(self, app: ASGIApp, max_body: int, max_headers: int, max_header_bytes: int) -> None:
        self.app = app
        self.max_body = max_body
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        if headers_too_large(headers, self.max_headers, self.max_header_bytes):
            await send_json(send, 431, "request headers too large")
            return
        length = next((v for k, v in headers if k == b"content-length"), b"0")
        if not length.isdigit() or int(length) > self.max_body:
            await send_json(send, 413 if length.isdigit() else 400,
                            "request body too large" if length.isdigit() else "bad Content-Length")
            return
        received = 0

        async def limited_receive() -> Message:
            """A chunked body has no Content-Length: count as it comes."""
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    # An HTTPException passes FastAPI's body parsing untouched and becomes the JSON 413.
                    raise HTTPException(413, "request body too large")
            return message

        await self.app(scope, limited_receive, send)


class TrustedProxyMiddleware:
    """Take the client's address and scheme from X-Forwarded-For / -Proto only when the request
    carries the balancer's secret. Trusting a source address instead (uvicorn's
    --forwarded-allow-ips) trusts every local process that can connect from it."""

    def __init__(self, app: ASGIApp, secret: str) -> None:
        self.app = app
        self.secret = secret.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (said := forwarded(scope["headers"], self.secret)):
            forwarded_for, proto = said
            scope = dict(scope)
            if forwarded_for:
                scope["client"] = (forwarded_for, 0)
            if proto in ("http", "https"):
                scope["scheme"] = proto
        await self.app(scope, receive, send)


class ServedByMiddleware:
    """Stamp every response with the instance's name (and count it); responses from the app are
    never cached (they are per user, or about the farm's state right now)."""

    def __init__(self, app: ASGIApp, instance: str, presence: Presence | None = None) -> None:
        self.app = app
        self.stamp, self.no_store = served_by(instance)
        self.presence = presence

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.presence is not None:
            self.presence.count_request()

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), self.stamp]
                if not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append(self.no_store)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_header)
