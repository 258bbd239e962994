"""The Docker runtime: the same interface as the native one, driven through `docker compose`.

compose.yaml declares Redis, web1..web3 and nginx (and, in its `sentinel` profile, a replica and
three Sentinels); Docker's restart policy is the supervisor."""

import json
import os
import subprocess
import time

from farmctl.config import PROJECT_ROOT, FarmConfig
from farmctl.docker.render import DOCKER_INSTANCES, DOCKER_SENTINELS
from farmctl.runtime import Capability, FarmError, ProcessStatus, require
from farmctl.secret import csrf_secret, proxy_secret
from farmctl.wait import answers, wait_until


def engine_available() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class DockerFarm:
    """The farm of compose.yaml. `make up` is a demo: ENVIRONMENT=demo, and a CSRF secret made once
    in the state dir, unless the environment brings its own."""

    name = "docker"
    #: nginx has passive checks only, N is fixed by compose.yaml, and the Docker network cannot cut
    #: one instance off from Redis without cutting it off from nginx too.
    capabilities: frozenset[Capability] = frozenset()

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

    def pid(self, name: str) -> int:
        container = self._compose("ps", "--quiet", name, capture=True).strip()
        if not container:
            return 0
        result = subprocess.run(["docker", "inspect", "--format", "{{.State.Pid}}", container],
                                capture_output=True, text=True, check=False)
        return int(result.stdout.strip() or 0) if result.returncode == 0 else 0

    def pause(self, name: str) -> None:
        """`docker compose pause`: the container's processes are frozen (cgroup freezer), sockets open."""
        self._compose("pause", name)

    def resume(self, name: str) -> None:
        self._compose("unpause", name)

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

    def drain(self, *names: str) -> None:
        require(self, Capability.DRAIN, "draining an instance")

    def undrain(self, *names: str) -> None:
        require(self, Capability.DRAIN, "draining an instance")

    def cut_off(self, name: str) -> None:
        require(self, Capability.CUT_OFF, "cutting one instance off from Redis")

    def reconnect(self, name: str) -> None:
        pass

    def redis_primary(self) -> str | None:
        require(self, Capability.REDIS_FAILOVER, "naming the Redis primary")
        return None

    def failover_ready(self) -> bool:
        require(self, Capability.REDIS_FAILOVER, "a Redis failover")
        return False

    def out_of_rotation(self) -> dict[str, str]:
        """Nothing: under Docker nginx has passive checks only (see compose.yaml's healthchecks)."""
        return {}

    def _healthy(self, *names: str) -> set[str]:
        """Which of the services `names` Docker's healthchecks call healthy (one `docker compose ps`)."""
        out = self._compose("ps", "--format", "json", *names, capture=True)
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        return {r["Service"] for r in rows if r.get("Health") == "healthy"}

    def is_serving(self, name: str) -> bool:
        # Instances publish no ports; ask Docker for the container's health instead.
        return name in self._healthy(name)

    def unhealthy(self) -> list[str]:
        healthy = self._healthy(*self.instance_names())
        bad = [name for name in self.instance_names() if name not in healthy]
        return bad if answers(f"{self.config.balancer_url}/readyz") else [*bad, "nginx"]

    def wait_healthy(self, timeout_s: float = 60) -> None:
        if not wait_until(lambda: not self.unhealthy(), timeout_s, interval_s=0.5):
            raise FarmError(f"not healthy after {timeout_s:.0f} s: {', '.join(self.unhealthy())}; docker compose logs")

    def log_path(self, name: str) -> str:
        return f"docker compose logs {name}"

    def tail(self, name: str, lines: int = 15) -> str:
        return self._compose("logs", "--no-log-prefix", "--tail", str(lines), name, capture=True)
