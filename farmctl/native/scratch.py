"""A throw-away redis-server, or a Redis Cluster of six: no persistence, free loopback ports, stopped when
done. For the tests of the session store itself and for bench.inprocess, which need a Redis but not a farm."""

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from farmctl.native import cluster
from farmctl.ports import free_cluster_block, free_port_block
from farmctl.wait import wait_until


def _server(port: int, workdir: Path, *args: str) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    return subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                             "--dir", str(workdir), *args], stdout=subprocess.DEVNULL)


@contextmanager
def scratch_cluster(workdir: Path, create: bool = True) -> Iterator[list[int]]:
    """The ports of six nodes made one healthy cluster (three primaries, three replicas); with
    `create=False`, six cluster-enabled nodes that are no cluster yet (`cluster.create` makes them one)."""
    base = free_cluster_block(6)
    ports = list(range(base, base + 6))
    procs = [_server(port, workdir, *cluster.node_args(port)) for port in ports]
    try:
        if create:
            cluster.create(ports)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


@contextmanager
def scratch_redis(workdir: Path) -> Iterator[str]:
    """Its URL, once it answers (RuntimeError if it does not within 10 s)."""
    port = free_port_block(1)
    proc = _server(port, workdir)
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
