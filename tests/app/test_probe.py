"""The container health check (app/probe.py) against a real HTTP server and a closed port: it
remembers since when the app fails, and forgets on the first success. (Its SIGKILL needs a
container's PID 1 and is checked statically in tests/farmctl/test_compose.py.)"""

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from farmctl.ports import free_port_block


class Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/healthz"
    httpd.shutdown()


def probe(url: str, state: Path) -> int:
    return subprocess.run([sys.executable, "-m", "app.probe", url, "--timeout", "0.5"],
                          env={"PROBE_STATE_DIR": str(state)}, capture_output=True, check=False).returncode


def test_the_failure_clock_starts_on_a_failure_and_stops_on_a_success(server: str, tmp_path: Path) -> None:
    marker = tmp_path / "webfarm-failing-since"
    assert probe(f"http://127.0.0.1:{free_port_block(1)}/healthz", tmp_path) == 1
    started = marker.read_text()
    assert probe(f"http://127.0.0.1:{free_port_block(1)}/healthz", tmp_path) == 1
    assert marker.read_text() == started  # the clock runs from the FIRST failure
    assert probe(server, tmp_path) == 0
    assert not marker.exists()
