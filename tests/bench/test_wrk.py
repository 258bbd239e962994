"""Reading wrk's report: the figures the bench's ratios are made of; and a script that rotates a
header over many values (many users' cookies)."""

import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench.wrk import WrkError, parse, rotating_script, run_wrk

REPORT = """Running 1s test @ http://127.0.0.1:27123/api/me
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     7.05ms    6.52ms  67.24ms   91.19%
    Req/Sec     2.73k   595.48     3.42k    50.00%
  Latency Distribution
     50%  476.00us
     75%    6.18ms
     90%   11.96ms
     99%    1.20s
  2716 requests in 1.00s, 469.61KB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 12
Requests/sec:   2709.14
Transfer/sec:    468.43KB
"""


def test_parse_reads_throughput_percentiles_and_errors() -> None:
    result = parse(REPORT)
    assert result.requests == 2716
    assert result.seconds == pytest.approx(1.0)
    assert result.rps == pytest.approx(2709.14)
    assert result.p50_ms == pytest.approx(0.476)
    assert result.p99_ms == pytest.approx(1200.0)
    assert result.non_2xx == 12
    assert result.socket_errors == 3


def test_parse_clean_report_has_no_errors() -> None:
    clean = "\n".join(line for line in REPORT.splitlines() if "errors" not in line and "Non-2xx" not in line)
    result = parse(clean)
    assert (result.non_2xx, result.socket_errors) == (0, 0)


def test_parse_without_latency_distribution_fails() -> None:
    with pytest.raises(WrkError, match="50%"):
        parse(REPORT.replace("     50%  476.00us\n", ""))


@dataclass
class Recording:
    """A keep-alive HTTP server that answers 200 and counts each request's (Cookie, X-Fixed) headers."""

    url: str
    seen: Counter[tuple[str, str]]


@pytest.fixture
def recording() -> Iterator[Recording]:
    seen: Counter[tuple[str, str]] = Counter()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as wrk expects
        disable_nagle_algorithm = True  # the head and the body are two writes

        def do_GET(self) -> None:
            seen[self.headers.get("Cookie", ""), self.headers.get("X-Fixed", "")] += 1
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Recording(f"http://127.0.0.1:{server.server_address[1]}/", seen)
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (`make bench` installs it)")
def test_rotating_script_sends_each_value_in_turn_beside_the_fixed_headers(recording: Recording,
                                                                          tmp_path: Path) -> None:
    values = [f"s={n}" for n in range(5)]
    result = run_wrk(recording.url, "1s", 2, headers=("X-Fixed: 1",),
                     script=rotating_script(tmp_path / "rotate.lua", "Cookie", values))

    assert 0 < result.requests <= sum(recording.seen.values())  # wrk leaves out those in flight at its end
    assert {fixed for _, fixed in recording.seen} == {"1"}
    per_value = Counter({cookie: n for (cookie, _), n in recording.seen.items()})
    assert set(per_value) == set(values)
    assert max(per_value.values()) - min(per_value.values()) <= 2  # in turn on each of the 2 connections
