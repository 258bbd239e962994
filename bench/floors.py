"""The floors the session layer is measured against: what one uvicorn process can answer at all.

Two ASGI apps with no framework and no middleware, answering GET /api/me with the same JSON as
ours (and /healthz, /readyz, so that a farm can run them as its instances):

- ``bare_app``: the body is made once; each request is answered from memory - the bare floor,
  what the server, its event loop and its HTTP parser cost;
- ``roundtrip_app``: the same, plus one EVALSHA of a two-command script (HINCRBY, PEXPIRE on one
  key) on a plain redis-py asyncio pool - the one-round-trip floor, what a request that must ask
  Redis once costs at the least.

Run like an instance (``python -m app --factory bench.floors:bare_app``: the same server, flags,
loop and parser); REDIS_URL names the Redis of the second."""

import json
import os

from redis.asyncio import Redis
from starlette.types import ASGIApp, Receive, Scope, Send

#: Shaped like our GET /api/me's answer, so that both send as many bytes.
ME = {"username": "demo", "served_by": "web1", "session_created_on": "web1",
      "session_created_at": "2026-12-01T00:00:00.000+00:00", "requests_in_session": 1}
_SCRIPT = "redis.call('HINCRBY', KEYS[1], 'requests', 1) return redis.call('PEXPIRE', KEYS[1], ARGV[1])"
_KEY = "bench-floor:session"


def _answer(body: bytes) -> tuple[dict[str, object], dict[str, object]]:
    start = {"type": "http.response.start", "status": 200,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
    return start, {"type": "http.response.body", "body": body}


_ME_START, _ME_BODY = _answer(json.dumps(ME, separators=(",", ":")).encode())
_OK_START, _OK_BODY = _answer(b'{"status":"ok"}')


async def _lifespan(receive: Receive, send: Send, redis: Redis | None = None) -> None:
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    if redis is not None:
        await redis.aclose()
    await send({"type": "lifespan.shutdown.complete"})


async def _other(scope: Scope, send: Send) -> None:
    """/healthz and /readyz (what a farm's health checks ask), 404 for the rest."""
    if scope["path"] in ("/healthz", "/readyz"):
        await send(_OK_START)
        await send(_OK_BODY)
        return
    await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


def bare_app() -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["path"] == "/api/me":
            await send(_ME_START)
            await send(_ME_BODY)
        else:
            await _other(scope, send)

    return app


def roundtrip_app() -> ASGIApp:
    redis = Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
    script = redis.register_script(_SCRIPT)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, redis)
        elif scope["path"] == "/api/me":
            await script([_KEY], [1_800_000])
            await send(_ME_START)
            await send(_ME_BODY)
        else:
            await _other(scope, send)

    return app
