"""python -m bench.openloop URL --rate R --duration S [-H 'Name: value']... [--rotate FILE] - GET at a fixed
rate, open loop.

wrk is closed-loop: a connection sends its next request only once the previous one is answered,
so while the server stalls wrk stops asking, and the stall is measured once instead of once per
request that should have been sent ("coordinated omission"). wrk2 fixes that, but Debian does
not package it; this does the same, small: request i is due at start + i / rate whatever happened
before, goes out on an idle keep-alive connection (a new one when none is idle), and its latency
is counted from when it was due, not from when it was sent. A thread keeps the schedule with
time.sleep (the event loop's timers are only good to a millisecond); how late the sends still
were is reported as `lag`, and is part of every latency. With --rotate, each request also
carries the next header line of FILE, in turn (many users' cookies). Prints one JSON object."""

import argparse
import asyncio
import json
import math
import re
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

#: A request still unanswered this long after the schedule ended counts as an error.
GRACE_S = 5.0
MAX_CONNECTIONS = 256
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


class OpenLoopError(RuntimeError):
    """The generator failed, or some answers were errors: the measurement is worthless."""


@dataclass(frozen=True)
class OpenLoopResult:
    rate: float
    seconds: float
    sent: int
    answered: int
    errors: int  # not 2xx, connection lost, or no answer within GRACE_S
    connections: int
    achieved_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    lag_p50_ms: float  # how late the generator sent, already inside the latencies above
    lag_p99_ms: float


def percentile(values: list[float], q: float) -> float:
    """Nearest rank of sorted `values`; 0 for none."""
    if not values:
        return 0.0
    return values[min(len(values), max(1, math.ceil(q / 100 * len(values)))) - 1]


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one request at a time (no pipelining)."""

    def __init__(self, load: "_Load") -> None:
        self.load = load
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.due: float | None = None
        self.status = 0
        self.length: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, due: float) -> None:
        assert self.transport is not None
        self.due = due
        self.load.lags.append(time.monotonic() - due)
        self.transport.write(self.load.next_request())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.length is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end + 2])
            length = _CONTENT_LENGTH.search(head)
            if length is None:  # every server measured here sends Content-Length
                self._fail()
                return
            self.status = int(head[9:12])
            self.length = end + 4 + int(length[1])
        if len(self.buffer) < self.length:
            return
        del self.buffer[:self.length]
        self.length = None
        due, self.due = self.due, None
        assert due is not None
        self.load.answered(self, due, 200 <= self.status < 300)

    def _fail(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.load.lost(self)


class _Load:
    def __init__(self, host: str, port: int, path: str, headers: list[str], rate: float, duration_s: float,
                 rotate: list[str] | None = None) -> None:
        self.host, self.port = host, port
        self.requests = ["\r\n".join([f"GET {path} HTTP/1.1", f"Host: {host}:{port}", *headers, *extra, "", ""])
                         .encode("latin-1") for extra in ([[line] for line in rotate] if rotate else [[]])]
        self.sent = 0
        self.rate = rate
        self.total = max(1, round(rate * duration_s))
        self.idle: list[_Connection] = []
        self.opened = 0
        self.most_opened = 0
        self.opening: set[asyncio.Task[None]] = set()
        self.backlog: deque[float] = deque()  # due times waiting for a connection (all MAX_CONNECTIONS busy)
        self.latencies: list[float] = []
        self.lags: list[float] = []
        self.errors = 0
        self.outstanding = 0
        self.finished = asyncio.Event()

    async def run(self) -> OpenLoopResult:
        loop = asyncio.get_running_loop()
        for _ in range(min(8, self.total)):  # a few warm connections, as wrk opens its own before it starts
            self.opened = self.most_opened = self.opened + 1
            self.idle.append(await self._open())
        start = time.monotonic() + 0.05
        pacer = threading.Thread(target=self._pace, args=(loop, start), daemon=True)
        pacer.start()
        try:
            await asyncio.wait_for(self.finished.wait(), self.total / self.rate + 1 + GRACE_S)
        except TimeoutError:
            self.errors += self.outstanding
        ended = time.monotonic()
        pacer.join()
        for connection in self.idle:
            if connection.transport is not None:
                connection.transport.close()
        latencies = sorted(self.latencies)
        lags = sorted(self.lags)
        seconds = self.total / self.rate
        return OpenLoopResult(
            rate=self.rate, seconds=round(seconds, 3), sent=self.total, answered=len(latencies), errors=self.errors,
            connections=self.most_opened, achieved_rps=round(len(latencies) / max(ended - start, seconds), 1),
            p50_ms=percentile(latencies, 50) * 1000, p90_ms=percentile(latencies, 90) * 1000,
            p99_ms=percentile(latencies, 99) * 1000, max_ms=(latencies[-1] if latencies else 0.0) * 1000,
            lag_p50_ms=percentile(lags, 50) * 1000, lag_p99_ms=percentile(lags, 99) * 1000,
        )

    def next_request(self) -> bytes:
        self.sent += 1
        return self.requests[self.sent % len(self.requests)]

    def _pace(self, loop: asyncio.AbstractEventLoop, start: float) -> None:
        for i in range(self.total):
            due = start + i / self.rate
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            loop.call_soon_threadsafe(self._due, due)

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(lambda: _Connection(self), self.host, self.port)
        return connection

    def _due(self, due: float) -> None:
        self.outstanding += 1
        if self.idle:
            self.idle.pop().send(due)
        elif self.opened < MAX_CONNECTIONS:
            self.opened += 1
            self.most_opened = max(self.most_opened, self.opened)
            task = asyncio.get_running_loop().create_task(self._send_on_new(due))
            self.opening.add(task)
            task.add_done_callback(self.opening.discard)
        else:
            self.backlog.append(due)

    async def _send_on_new(self, due: float) -> None:
        try:
            connection = await self._open()
        except OSError:
            self.opened -= 1
            self._settle(ok=False)
            return
        connection.send(due)

    def answered(self, connection: _Connection, due: float, ok: bool) -> None:
        if ok:
            self.latencies.append(time.monotonic() - due)
        self._settle(ok)
        if self.backlog:
            connection.send(self.backlog.popleft())
        else:
            self.idle.append(connection)

    def lost(self, connection: _Connection) -> None:
        if connection in self.idle:
            self.idle.remove(connection)
        if connection.due is not None:
            connection.due = None
            self._settle(ok=False)
        self.opened -= 1

    def _settle(self, ok: bool) -> None:
        self.outstanding -= 1
        self.errors += not ok
        if self.outstanding == 0 and len(self.latencies) + self.errors >= self.total:
            self.finished.set()


def generate(url: str, rate: float, duration_s: float, headers: list[str],
             rotate: list[str] | None = None) -> OpenLoopResult:
    """Run the schedule in this process (the CLI); the bench runs it as a child, see `run_openloop`."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None or parts.port is None:
        raise OpenLoopError(f"need http://host:port/path, not {url!r}")
    path = parts.path + (f"?{parts.query}" if parts.query else "") or "/"
    sys.setswitchinterval(0.0005)  # the pacer thread gets the GIL back soon after its sleep
    load = _Load(parts.hostname, parts.port, path, headers, rate, duration_s, rotate)
    return asyncio.run(load.run())


def run_openloop(url: str, rate: float, duration_s: float, headers: tuple[str, ...] = (),
                 rotate: Path | None = None) -> OpenLoopResult:
    """One measurement in a child process (its CPU is then accounted like wrk's); raises on any error answer.
    `rotate`: a file of header lines, one per request in turn (see the module's doc)."""
    args = [sys.executable, "-m", "bench.openloop", url, "--rate", str(rate), "--duration", str(duration_s)]
    for header in headers:
        args += ["-H", header]
    if rotate is not None:
        args += ["--rotate", str(rotate)]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise OpenLoopError(f"open-loop load on {url} failed: {done.stderr or done.stdout}")
    result = OpenLoopResult(**json.loads(done.stdout))
    if result.errors or not result.answered:
        raise OpenLoopError(f"{url}: {result.errors} of {result.sent} requests at {rate:g}/s failed")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.openloop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, required=True, help="seconds")
    parser.add_argument("-H", "--header", action="append", default=[], help="'Name: value', repeatable")
    parser.add_argument("--rotate", type=Path, help="a file of 'Name: value' lines: each request carries the next")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0:
        parser.error("--rate and --duration must be positive")
    rotate = args.rotate.read_text().splitlines() if args.rotate else None
    print(json.dumps(asdict(generate(args.url, args.rate, args.duration, args.header, rotate))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
