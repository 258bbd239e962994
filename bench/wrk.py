"""Run wrk, the load generator, and read its report."""

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m)")


class WrkError(RuntimeError):
    """wrk is missing, failed, or measured something other than successful answers."""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int


def _ms(text: str) -> float:
    match = _DURATION_RE.fullmatch(text)
    if match is None:
        raise WrkError(f"unreadable latency {text!r}")
    return float(match[1]) * _UNITS_MS[match[2]]


def duration_seconds(text: str) -> float:
    """wrk's duration format (3s, 500ms, 1m; a bare number is seconds) in seconds."""
    try:
        return float(text)
    except ValueError:
        return _ms(text) / 1000


def _find(pattern: str, output: str) -> re.Match[str]:
    match = re.search(pattern, output, re.M)
    if match is None:
        raise WrkError(f"unexpected wrk output (no {pattern!r}):\n{output}")
    return match


def parse(output: str) -> WrkResult:
    """The figures of a `wrk --latency` report."""
    done = _find(r"^\s*(\d+) requests in ([\d.]+\w+),", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return WrkResult(
        requests=int(done[1]),
        seconds=_ms(done[2]) / 1000,
        rps=float(_find(r"^Requests/sec:\s+([\d.]+)", output)[1]),
        p50_ms=_ms(_find(r"^\s+50%\s+(\S+)", output)[1]),
        p99_ms=_ms(_find(r"^\s+99%\s+(\S+)", output)[1]),
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(map(int, sockets.groups())) if sockets else 0,
    )


def wrk_binary() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkError("wrk is not installed: sudo apt-get install -y wrk (or run `make bench`, which installs it)")
    return path


def run_wrk(url: str, duration: str, connections: int, threads: int = 1,
            headers: tuple[str, ...] = (), script: Path | None = None) -> WrkResult:
    """One measurement; an answer other than 2xx/3xx makes the whole measurement worthless, so it raises.
    `script`: a wrk Lua script (`rotating_script` makes one)."""
    args = [wrk_binary(), f"-t{threads}", f"-c{connections}", f"-d{duration}", "--latency", "--timeout", "5s"]
    for header in headers:
        args += ["-H", header]
    if script is not None:
        args += ["-s", str(script)]
    done = subprocess.run([*args, url], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise WrkError(f"wrk failed on {url}: {done.stderr or done.stdout}")
    result = parse(done.stdout)
    if result.non_2xx or result.requests == 0:
        raise WrkError(f"{url}: {result.non_2xx} of {result.requests} answers were not 2xx/3xx:\n{done.stdout}")
    return result


def rotating_script(path: Path, name: str, values: list[str]) -> Path:
    """Write a wrk script whose requests carry header `name` with each of `values` in turn (many
    users' cookies, say), besides wrk's own headers; the requests are formatted once, in each
    thread's init."""
    quoted = ",\n".join(json.dumps(value) for value in values)  # a JSON string of ASCII is a Lua string
    path.write_text(f"""local values = {{
{quoted}
}}
local requests, n = {{}}, 0
function init(args)
    for i, value in ipairs(values) do
        local headers = {{}}
        for k, v in pairs(wrk.headers) do headers[k] = v end
        headers[{json.dumps(name)}] = value
        requests[i] = wrk.format(nil, nil, headers)
    end
end
function request()
    n = n % #requests + 1
    return requests[n]
end
""")
    return path
