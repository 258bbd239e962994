"""The Docker runtime: the same interface as the native one, driven through `docker compose`.

compose.yaml declares Redis, web1..web3 and nginx (and, in its `sentinel` profile, a replica and
three Sentinels); Docker's restart policy is the supervisor."""

import json
import os
import subprocess
import time

from farmctl.config import PROJECT_ROOT, FarmConfig
from farmctl.render import DOCKER_INSTANCES, DOCKER_SENTINEL_NAMES, DOCKER_SENTINEL_PORT
from farmctl.runtime import FarmError, ProcessStatus
from farmctl.secret import csrf_secret, proxy_secret
from farmctl.wait import answers, wait_until

#: What the web services get as REDIS_SENTINELS with REDIS=sentinel: the Sentinel services of compose.yaml.
DOCKER_SENTINELS = ",".join(f"{name}:{DOCKER_SENTINEL_PORT}" for name in DOCKER_SENTINEL_NAMES)


def engine_available() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class DockerFarm:
    """The farm of compose.yaml. `make up` is a demo: ENVIRONMENT=demo, and a CSRF secret made once
    in the state dir, unless the environment brings its own."""

    name = "docker"

    def __init__(self, config: FarmConfig) -> None:
        if config.instances != DOCKER_INSTANCES:
            raise FarmError(f"compose.yaml declares {DOCKER_INSTANCES} instances (web1..web{DOCKER_INSTANCES}); "
                            f"N={config.instances} needs RUNTIME=native or more services in compose.yaml")
        self.config = config

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("ENVIRONMENT", "demo")
        if not env.get("CSRF_SECRET"):
            env["CSRF_SECRET"] = csrf_secret(self.config.state_dir)
        if not env.get("PROXY_SECRET"):
            env["PROXY_SECRET"] = proxy_secret(self.config.state_dir)
        if self.config.sentinel:
            env["REDIS_SENTINELS"] = DOCKER_SENTINELS
        return env

    def _compose(self, *args: str, capture: bool = False) -> str:
        profiles = ["--profile", "demo"] if self.config.demo_controls else []
        if self.config.sentinel:
            profiles += ["--profile", "sentinel"]
        cmd = ["docker", "compose", "--project-directory", str(PROJECT_ROOT), *profiles, *args]
        result = subprocess.run(cmd, capture_output=capture, text=True, check=False, env=self._environment())
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

    def restart(self, name: str) -> None:
        """`docker compose restart`: SIGTERM, then the container starts again; nginx fails over meanwhile."""
        self._compose("restart", name)
        self.wait_healthy()

    def roll(self) -> list[tuple[str, float]]:
        """Restart the web containers one at a time, each back to healthy before the next. nginx cannot
        be told to drain one here, so a request in flight to a stopping instance relies on its failover."""
        took = []
        for name in self.instance_names():
            started = time.monotonic()
            self._compose("restart", name)
            if not wait_until(lambda: self.is_serving(name), 60, interval_s=0.5):  # noqa: B023 - called at once
                raise FarmError(f"{name} is not healthy 60 s after its restart: docker compose logs {name}")
            took.append((name, time.monotonic() - started))
        return took

    def cut_off(self, name: str) -> None:
        raise FarmError("cutting one instance off from Redis is a fault of the native runtime "
                        "(iptables and cgroups of this host); under Docker, `docker network disconnect` "
                        "would cut it off from nginx too")

    def reconnect(self, name: str) -> None:
        pass

    def out_of_rotation(self) -> dict[str, str]:
        """Nothing: under Docker nginx has passive checks only (see compose.yaml's healthchecks)."""
        return {}

    def is_serving(self, name: str) -> bool:
        # Instances publish no ports; ask Docker for the container's health instead.
        out = self._compose("ps", "--format", "json", name, capture=True)
        return any(json.loads(line).get("Health") == "healthy" for line in out.splitlines() if line.strip())

    def wait_healthy(self, timeout_s: float = 60) -> None:
        if not wait_until(lambda: answers(f"{self.config.balancer_url}/readyz"), timeout_s, interval_s=0.5):
            raise FarmError(f"the balancer did not answer within {timeout_s:.0f} s: docker compose logs")

    def log_path(self, name: str) -> str:
        return f"docker compose logs {name}"
