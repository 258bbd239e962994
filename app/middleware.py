"""Pure-ASGI middleware: the stamp every response gets, whom we trust to say where a request came
from, which requests we accept at all, and how long one may take."""

import asyncio
import hmac
import json
import logging
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


#: The app's answer whenever the session store fails it: a timeout, a refused connection, or the
#: request's deadline (below). Clients retry after Retry-After.
STORE_UNAVAILABLE = "session store unavailable"


async def send_json(send: Send, status: int, content: str | dict[str, Any],
                    headers: dict[str, str] | None = None) -> None:
    """A JSON answer without a Response object; a string is sent as the API's {"detail": ...}."""
    body = json.dumps({"detail": content} if isinstance(content, str) else content, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items())]})
    await send({"type": "http.response.body", "body": body})


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
        if len(headers) > self.max_headers or sum(len(k) + len(v) for k, v in headers) > self.max_header_bytes:
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
        if scope["type"] == "http" and self.secret:
            headers = dict(scope["headers"])
            if hmac.compare_digest(headers.get(_PROXY_HEADER_KEY, b""), self.secret):
                forwarded_for = headers.get(b"x-forwarded-for", b"").decode("latin-1").split(",")[-1].strip()
                proto = headers.get(b"x-forwarded-proto", b"").decode("latin-1").strip()
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
        self.headers = [(b"x-served-by", instance.encode())]
        self.presence = presence

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.presence is not None:
            self.presence.count_request()

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), *self.headers]
                if not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_header)
