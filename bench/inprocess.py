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
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager

import uvloop
from redis import Redis as SyncRedis
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Scope

from app.config import SESSION_COOKIE, Settings
from app.hotpath import HotPath
from app.main import create_app
from app.services import Services
from bench.floors import bare_app, roundtrip_app
from farmctl.ports import free_port_block
from farmctl.wait import wait_until


@contextmanager
def throwaway_redis() -> Iterator[str]:
    port = free_port_block(1)
    with tempfile.TemporaryDirectory() as workdir:
        proc = subprocess.Popen([shutil.which("redis-server") or "/usr/bin/redis-server", "--bind", "127.0.0.1",
                                 "--port", str(port), "--save", "", "--appendonly", "no", "--dir", workdir],
                                stdout=subprocess.DEVNULL)
        try:
            with SyncRedis(port=port) as client:
                wait_until(lambda: _pings(client), 10, interval_s=0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


def _pings(client: SyncRedis) -> bool:
    try:
        return bool(client.ping())
    except RedisError:
        return False


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
    with throwaway_redis() as redis_url:
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
