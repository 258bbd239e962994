"""What an instance serves: its two most frequent requests answered in front of the app.

GET /api/me (every page of the demo and every user of the load test asks it) and GET /healthz
(every health check) are answered here, before FastAPI, Starlette and the middleware chain, each
layer of which is a coroutine, a closure and a `send` wrapper per request: profiled, the chain
cost more than the request's own work (README, "Performance"). Every other request, and any of
these two that is not plain - a body, headers past the limits - goes to the app as it is.

What the middleware chain does to a request is done here with its own functions, in its order:
counted and timed (app.metrics), stamped with X-Served-By and Cache-Control (app.middleware's
`served_by`), the scheme taken from the balancer only with its secret (`forwarded`), and the
store asked within the request's deadline. The answers are the app's own (app.api's `whoami`
and routes, which document them); tests/app/test_hotpath.py holds the two side by side."""

import asyncio
import logging
import time
from functools import lru_cache
from typing import Any

from redis.exceptions import RedisError
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api import REFUSED_RETRY_AFTER_S, whoami
from app.config import PROXY_HEADER
from app.deps import NOT_SIGNED_IN
from app.metrics import HTTP, STORE_ERRORS
from app.middleware import STORE_UNAVAILABLE, forwarded, headers_too_large, json_messages, send_json, served_by
from app.redis_client import store_failed
from app.schemas import Health
from app.services import Services
from app.sessions import Session, SessionKey, refusal

log = logging.getLogger("webfarm")

ME, HEALTHZ = "/api/me", "/healthz"
_PROXY_KEY, _PROTO_KEY = PROXY_HEADER.lower().encode("latin-1"), b"x-forwarded-proto"
#: Headers that mean a body follows: such a request is the app's (its limits read bodies).
_BODY = frozenset({b"content-length", b"transfer-encoding"})
_RETRY_1, _RETRY_REFUSED = {"Retry-After": "1"}, {"Retry-After": str(REFUSED_RETRY_AFTER_S)}
#: Sessions whose cookie (parsed and hashed once) and answer (with the near cache, where it does not change
#: from one request to the next) an instance keeps at hand; cookies longer than MEMO_COOKIE are not kept.
MEMO, MEMO_COOKIE = 4096, 512

Answer = tuple[Message, Message]


class HotPath:
    """The ASGI app an instance serves: `app` (the FastAPI app) behind the two hot requests."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        settings = services.settings
        self.app = app
        self.services = services
        self.secret = settings.proxy_secret.encode()
        self.limits = settings.max_headers, settings.max_header_bytes
        self.deadline_s = settings.request_timeout_s
        self.counted = settings.metrics
        self.stamp = served_by(settings.instance_name)
        self.healthz = self.json(200, Health(status="ok", instance=settings.instance_name).model_dump())
        self.not_signed_in = self.json(401, NOT_SIGNED_IN)
        self.cookie, self.secure_cookie = settings.session_cookie, f"__Host-{settings.session_cookie}"
        self.exact = not settings.session_near_cache_s
        self.memo_key = lru_cache(maxsize=MEMO)(self.session_key)
        self.template = lru_cache(maxsize=MEMO)(self._template)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or (path := scope["path"]) not in (ME, HEALTHZ):
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        cookie = proxy = proto = b""
        for name, value in headers:
            if name == b"cookie":
                cookie = cookie or value  # the first, as Starlette's request.cookies reads it
            elif name == _PROXY_KEY:
                proxy = value
            elif name == _PROTO_KEY:
                proto = value
            elif name in _BODY:
                await self.app(scope, receive, send)
                return
        if headers_too_large(headers, *self.limits):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        HTTP.in_flight += 1
        self.services.presence.count_request()
        start: Message = {"status": 500}
        try:
            if path == HEALTHZ:
                start, body = self.healthz
            else:
                key = (self.memo_key if len(cookie) <= MEMO_COOKIE else self.session_key)(
                    cookie, proxy, proto, scope["scheme"])
                if key is None:
                    start, body = self.not_signed_in
                elif (session := self.services.sessions.cached(key)) is not None:
                    start, body = self.answer(session)  # from memory: no coroutine, no deadline
                else:
                    start, body = await self.me(key)
            await send(start)
            await send(body)
        except Exception:
            # What the app's last-resort handler answers (app.main); here nothing can have been sent yet.
            log.exception("unhandled error on GET %s", path)
            await send_json(send, 500, "internal error", raw_headers=self.stamp[:1])
        finally:
            HTTP.in_flight -= 1
            if self.counted:
                HTTP.count(path, "GET", start["status"], time.perf_counter() - started)

    async def me(self, key: SessionKey) -> Answer:
        """GET /api/me's answer from the store, as app.api's `me` gives it behind the middleware chain."""
        services = self.services
        deadline = asyncio.timeout(self.deadline_s)
        try:
            async with deadline:
                session = await services.sessions.identify(key)
        except TimeoutError:
            if not deadline.expired():
                raise
            log.warning("GET %s: no answer within %.1f s, 503", ME, self.deadline_s)
            STORE_ERRORS.labels("deadline").inc()
            return self.json(503, STORE_UNAVAILABLE, _RETRY_1)
        except RedisError as exc:
            if state := refusal(exc):
                STORE_ERRORS.labels("refused").inc()
                return self.json(503, state.refusal, _RETRY_REFUSED)
            STORE_ERRORS.labels("unavailable").inc()
            await store_failed(services.redis, exc)
            return self.json(503, STORE_UNAVAILABLE, _RETRY_1)
        return self.not_signed_in if session is None else self.answer(session)

    def answer(self, session: Session) -> Answer:
        answer = self.template(session.username, session.created_on, session.created_at)
        if not self.exact:  # under the near cache `whoami` shows no count: one answer for every request
            return answer
        # In exact mode the count is the answer's last field, and the rest is the same for every request.
        return json_messages(200, answer[1]["body"][:-2] + b"%d}" % session.requests, raw_headers=self.stamp)

    def _template(self, username: str, created_on: str, created_at: float) -> Answer:
        """The session's answer with its count (in exact mode) 0, the last field: `...,"requests_in_session":0}`."""
        answer = self.json(200, whoami(self.services.settings, Session(username, created_on, created_at, 0)))
        assert answer[1]["body"].endswith(b":0}" if self.exact else b":null}"), answer
        return answer

    def json(self, status: int, content: str | dict[str, Any], headers: dict[str, str] | None = None) -> Answer:
        """An answer's two messages, stamped as ServedByMiddleware stamps the app's."""
        return json_messages(status, content, headers, self.stamp)

    def session_key(self, cookie: bytes, proxy: bytes, proto: bytes, scheme: str) -> SessionKey | None:
        """The session cookie (its __Host- name when the balancer says the client came over HTTPS), as
        app.auth's `session_key` reads it from a request the middleware chain has passed."""
        said = forwarded(((_PROXY_KEY, proxy), (_PROTO_KEY, proto)), self.secret)
        if said and said[1] in ("http", "https"):
            scheme = said[1]
        if not cookie:
            return None
        token = cookie_parser(cookie.decode("latin-1")).get(self.secure_cookie if scheme == "https" else self.cookie)
        return SessionKey.parse(token or "")
