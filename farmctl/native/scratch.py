"""A throw-away redis-server: no persistence, its own free loopback port, stopped when done. For the
tests of the session store itself and for bench.inprocess, which need a Redis but not a farm."""

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from farmctl.ports import free_port_block
from farmctl.wait import wait_until


@contextmanager
def scratch_redis(workdir: Path) -> Iterator[str]:
    """Its URL, once it answers (RuntimeError if it does not within 10 s)."""
    port = free_port_block(1)
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL)
    try:
        with redis.Redis(port=port) as client:
            def answers() -> bool:
                try:
                    return bool(client.ping())
                except redis.ConnectionError:
                    return False

            if not wait_until(answers, 10, interval_s=0.05):
                raise RuntimeError(f"redis-server on port {port} did not answer within 10 s")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
