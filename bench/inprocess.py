"""python -m bench.inprocess - what one GET /api/me costs in the instance's own process, without
sockets or a server: the ASGI app called in a loop on uvloop, its CPU time per call, against the
bare floor (bench/floors.py) and against the same app without its hot path (the middleware chain
and FastAPI's route). With --profile, cProfile's table of the hot path, function by function.

It starts a throw-away redis-server of its own on a free loopback port (the near cache needs its
subscription, exact mode its round trip) and stops it when done."""

import argparse
import asyncio
import cProfile
import os
import pstats
import secrets
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import uvloop
from starlette.types import ASGIApp, Message, Scope

from app.config import SESSION_COOKIE, Settings
from app.hotpath import HotPath
from app.main import create_app
from app.services import Services
from bench.floors import bare_app, roundtrip_app
from farmctl.native.scratch import scratch_redis


def request(path: str, cookie: str) -> Scope:
    """A GET as uvicorn hands it over from wrk through nginx-less loopback."""
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000),
            "headers": [(b"host", b"127.0.0.1:8000"), (b"cookie", cookie.encode())]}


async def per_call_us(app: ASGIApp, scope: Scope, calls: int, profile: cProfile.Profile | None = None) -> float:
    statuses: list[int] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    for _ in range(100):  # warm: caches, connections
        await app(scope, receive, send)
    if set(statuses) != {200}:
        raise RuntimeError(f"{scope['path']}: answered {sorted(set(statuses))}, not 200")
    if profile:
        profile.enable()
    began = time.process_time()
    for _ in range(calls):
        await app(scope, receive, send)
    spent = time.process_time() - began
    if profile:
        profile.disable()
    return spent / calls * 1e6


async def run(calls: int, profile_mode: str | None) -> dict[str, float]:
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as workdir, scratch_redis(Path(workdir)) as redis_url:
        out["floor: bare app"] = await per_call_us(bare_app(), request("/api/me", ""), calls)
        os.environ["REDIS_URL"] = redis_url
        out["floor: bare app + one EVALSHA"] = await per_call_us(roundtrip_app(), request("/api/me", ""), calls)
        for mode, near_s in (("near", 2.0), ("exact", 0.0)):
            settings = Settings(redis_url=redis_url, key_prefix=f"b{secrets.token_hex(4)}", demo_user=None,
                                session_near_cache_s=near_s)
            app = create_app(settings)
            async with AsyncExitStack() as stack:
                await stack.enter_async_context(app.router.lifespan_context(app))
                services = Services.of(app)
                started = await services.sessions.create("bench", "web1", 0)
                assert started is not None
                scope = request("/api/me", f"{SESSION_COOKIE}={started[0].token}")
                await asyncio.sleep(0.3)  # the near cache's subscription confirmed: its lease running
                hot = HotPath(app, services)
                profile = cProfile.Profile() if profile_mode == mode else None
                out[f"{mode}: hot path"] = await per_call_us(hot, scope, calls, profile)
                out[f"{mode}: the app (middleware chain, route)"] = await per_call_us(app, scope, calls)
                if profile:
                    pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.inprocess", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--profile", choices=["near", "exact"], help="cProfile the hot path in this mode")
    args = parser.parse_args(argv)
    figures = uvloop.run(run(args.calls, args.profile))
    for name, us in figures.items():
        print(f"{name:42} {us:7.1f} us of CPU per GET /api/me")
    return 0


if __name__ == "__main__":
    sys.exit(main())
