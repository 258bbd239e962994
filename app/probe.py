"""The container's health check, and its liveness: `python -m app.probe URL --restart-after 10`.

Docker (without Swarm or Kubernetes) marks a container "unhealthy" but never restarts it; its
restart policy acts only when the main process exits. So this check, run by Docker every few
seconds, remembers since when the instance has failed and, once that is `--restart-after`
seconds, SIGKILLs it: under `init: true` the app is a child of the container's init, which then
exits, and the restart policy starts a fresh container. (Natively farmctl/health.py does this;
Kubernetes has liveness probes.) Standard library only: it runs in the slim image."""

import argparse
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path

#: In /dev/shm, a tmpfs Docker mounts afresh at each container start: a restarted container
#: never inherits the previous one's failure clock.
STATE_DIR = os.environ.get("PROBE_STATE_DIR", "/dev/shm")  # noqa: S108 - the container's own tmpfs
FAILING_SINCE = Path(STATE_DIR) / "webfarm-failing-since"


def healthy(url: str, timeout_s: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - our own URL
            return bool(response.status == 200)
    except OSError:
        return False


def kill_the_app() -> None:
    """SIGKILL the children of PID 1 (the container's init): the app, never the init or this check."""
    for pid in Path("/proc/1/task/1/children").read_text().split():
        os.kill(int(pid), signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds to wait for an answer")
    parser.add_argument("--restart-after", type=float, default=0,
                        help="kill the app once it has failed this long (0: never)")
    args = parser.parse_args()
    if healthy(args.url, args.timeout):
        FAILING_SINCE.unlink(missing_ok=True)
        return 0
    if not FAILING_SINCE.exists():
        FAILING_SINCE.write_text(str(time.time()))
    failing_s = time.time() - float(FAILING_SINCE.read_text())
    print(f"{args.url} failing for {failing_s:.0f} s", file=sys.stderr)
    if args.restart_after and failing_s >= args.restart_after:
        FAILING_SINCE.unlink()
        kill_the_app()
    return 1


if __name__ == "__main__":
    sys.exit(main())
