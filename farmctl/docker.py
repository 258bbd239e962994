"""The Docker runtime: the same interface as the native one, driven through `docker compose`.

compose.yaml declares Redis, web1..web3 and nginx (and, in its `sentinel` profile, a replica and
three Sentinels); Docker's restart policy is the supervisor."""

import json
import os
import subprocess
import time

import httpx

from farmctl.config import PROJECT_ROOT, FarmConfig
from farmctl.native import FarmError, ProcessStatus
from farmctl.render import DOCKER_INSTANCES

#: What the web services get as REDIS_SENTINELS with REDIS=sentinel: the Sentinel services of compose.yaml.
DOCKER_SENTINELS = "sentinel1:26379,sentinel2:26379,sentinel3:26379"


def engine_available() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class DockerFarm:
    name = "docker"

    def __init__(self, config: FarmConfig) -> None:
        if config.instances != DOCKER_INSTANCES:
            raise FarmError(f"compose.yaml declares {DOCKER_INSTANCES} instances (web1..web{DOCKER_INSTANCES}); "
                            f"N={config.instances} needs RUNTIME=native or more services in compose.yaml")
        self.config = config

    def _compose(self, *args: str, capture: bool = False) -> str:
        env_profiles = ["--profile", "demo"] if self.config.demo_controls else []
        env = dict(os.environ)
        if self.config.sentinel:
            env_profiles += ["--profile", "sentinel"]
            env["REDIS_SENTINELS"] = DOCKER_SENTINELS
        cmd = ["docker", "compose", "--project-directory", str(PROJECT_ROOT), *env_profiles, *args]
        result = subprocess.run(cmd, capture_output=capture, text=True, check=False, env=env)
        if result.returncode != 0:
            raise FarmError(f"{' '.join(cmd)} failed:\n{result.stderr if capture else ''}")
        return result.stdout if capture else ""

    def is_running(self) -> bool:
        return any(s.up for s in self.status())

    def up(self, timeout_s: float = 120) -> None:
        self._compose("up", "--detach", "--build", "--wait", "--wait-timeout", str(int(timeout_s)))

    def down(self, timeout_s: float = 30) -> None:
        self._compose("down", "--timeout", str(int(timeout_s)))

    def status(self) -> list[ProcessStatus]:
        out = self._compose("ps", "--all", "--format", "json", capture=True)
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        return [ProcessStatus(r["Service"], int((r.get("Publishers") or [{}])[0].get("PublishedPort") or 0), 0,
                              "RUNNING" if r.get("State") == "running" else str(r.get("State", "?")).upper())
                for r in rows]

    def instance_names(self) -> list[str]:
        return [f"web{i}" for i in range(1, DOCKER_INSTANCES + 1)]

    def kill(self, name: str, sig: str = "KILL") -> int:
        """`docker kill` with SIGKILL: the restart policy brings the container back."""
        self._compose("kill", "--signal", sig, name)
        return 0

    def stop(self, name: str) -> None:
        self._compose("stop", name)

    def start(self, name: str) -> None:
        self._compose("start", name)

    def is_serving(self, name: str) -> bool:
        # Instances publish no ports; ask Docker for the container's health instead.
        out = subprocess.run(["docker", "compose", "--project-directory", str(PROJECT_ROOT), "ps", "--format",
                              "json", name], capture_output=True, text=True, check=False).stdout
        return any(json.loads(line).get("Health") == "healthy" for line in out.splitlines() if line.strip())

    def wait_healthy(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.config.balancer_url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise FarmError(f"the balancer did not answer within {timeout_s:.0f} s: docker compose logs")

    def log_path(self, name: str) -> str:
        return f"docker compose logs {name}"
