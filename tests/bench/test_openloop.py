"""The open-loop generator: requests go out on schedule whatever the server does, and a stall is
counted for every request it delays (no coordinated omission)."""

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.openloop import OpenLoopError, generate, percentile, run_openloop

STALL_FROM_S, STALL_UNTIL_S = 0.3, 0.5


@dataclass
class StallingServer:
    """HTTP/1.1 keep-alive on a free port; answers 200 at once, except that requests arriving
    between STALL_FROM_S and STALL_UNTIL_S after the first one wait until STALL_UNTIL_S; 404 off /ok."""

    port: int = 0
    arrivals: list[float] = field(default_factory=list)
    heads: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:  # IncompleteReadError when the client closes ends it
            head = await reader.readuntil(b"\r\n\r\n")
            now = time.monotonic()
            self.arrivals.append(now)
            self.heads.append(head)
            since = now - self.arrivals[0]
            if STALL_FROM_S <= since < STALL_UNTIL_S:
                await asyncio.sleep(STALL_UNTIL_S - since)
            status = b"200 OK" if head.startswith(b"GET /ok ") else b"404 Not Found"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    def serve(self, started: threading.Event, stop: threading.Event) -> None:
        async def main() -> None:
            server = await asyncio.start_server(self._safe, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            started.set()
            while not stop.is_set():  # noqa: ASYNC110 - the stop flag comes from another thread
                await asyncio.sleep(0.05)
            server.close()

        asyncio.run(main())

    async def _safe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self.handle(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
def server() -> Iterator[StallingServer]:
    started, stop = threading.Event(), threading.Event()
    stalling = StallingServer()
    thread = threading.Thread(target=stalling.serve, args=(started, stop), daemon=True)
    thread.start()
    assert started.wait(5)
    yield stalling
    stop.set()
    thread.join(5)


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50.0, 99.0, 100.0)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) == 0.0


def test_openloop_keeps_sending_through_a_stall_and_counts_it_for_every_request(server: StallingServer) -> None:
    rate = 200.0
    result = generate(f"http://127.0.0.1:{server.port}/ok", rate, 1.0, [])

    assert (result.sent, result.answered, result.errors) == (200, 200, 0)
    first = server.arrivals[0]
    during = [t for t in server.arrivals if STALL_FROM_S <= t - first < STALL_UNTIL_S]
    # A closed loop of 8 connections would have sent 8 and waited; on schedule it is 40.
    assert len(during) >= 0.75 * rate * (STALL_UNTIL_S - STALL_FROM_S)
    assert result.connections > 8
    # Each request due in the stall waits for its end: latencies spread over 0..200 ms, not one outlier.
    assert result.max_ms >= 150
    assert result.p90_ms >= 50
    assert result.p50_ms < 50


def test_run_openloop_refuses_a_measurement_with_error_answers(server: StallingServer) -> None:
    with pytest.raises(OpenLoopError, match="50 of 50 requests"):
        run_openloop(f"http://127.0.0.1:{server.port}/missing", 100.0, 0.5)


def test_run_openloop_rotates_the_header_lines_of_a_file(server: StallingServer, tmp_path: Path) -> None:
    lines = tmp_path / "cookies.txt"
    lines.write_text("Cookie: s=a\nCookie: s=b\nCookie: s=c\n")
    result = run_openloop(f"http://127.0.0.1:{server.port}/ok", 300.0, 0.3, ("X-Fixed: 1",), rotate=lines)

    assert result.answered == 90
    cookies = [line for head in server.heads for line in head.split(b"\r\n") if line.startswith(b"Cookie:")]
    assert sorted(set(cookies)) == [b"Cookie: s=a", b"Cookie: s=b", b"Cookie: s=c"]
    assert all(cookies.count(c) == 30 for c in set(cookies))
    assert all(b"\r\nX-Fixed: 1\r\n" in head for head in server.heads)
