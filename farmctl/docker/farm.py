"""The Docker runtime: the same interface as the native one, driven through `docker compose`.

compose.yaml declares Redis, web1..web3 and nginx (in its `sentinel` profile a replica and three
Sentinels, in its `cluster` profile six Redis Cluster nodes instead of the one Redis); Docker's
restart policy is the supervisor. Each farm is one compose project:
`webfarm` for the one in the repo's .farm, another name per state dir (the tests run several).
What a farm changes in compose.yaml (more instances, the tests' extra variables, another number of
instances for nginx) goes into an override file in its state dir, rendered by farmctl.docker.render.

Faults mean what they mean natively: a crash is the instance's process dying (SIGKILL from inside
its container: the restart policy undoes it; `docker kill` would be a manual stop it does not), a
hang is that process stopped (SIGSTOP), an instance cut off from Redis leaves the `store` network."""

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import redis

from farmctl import clusternodes
from farmctl.config import PROJECT_ROOT, FarmConfig
from farmctl.docker import console
from farmctl.docker.engine import compose_command
from farmctl.docker.render import (
    DOCKER_CLUSTER_CREATE,
    DOCKER_CLUSTER_NODES,
    DOCKER_INSTANCES,
    DOCKER_SENTINELS,
    compose_override,
    config_dir_of,
)
from farmctl.runtime import Capability, FarmError, ProcessStatus, require
from farmctl.secret import csrf_secret, farm_secret, proxy_secret
from farmctl.wait import answers, balancer_answers, wait_until

#: The app's process in a web container: the only child of its init (`init: true`).
APP_PID = "$(cat /proc/1/task/1/children)"


class DockerFarm:
    """The farm of compose.yaml. `make up` is a demo: ENVIRONMENT=demo, and secrets made once in the
    state dir, unless the environment brings its own."""

    name = "docker"
    #: compose.yaml's health service holds the rotation; compose.yaml's Sentinels are not driven by
    #: the runtime (not yet).
    capabilities: frozenset[Capability] = frozenset({Capability.CUT_OFF, Capability.ACTIVE_HEALTH, Capability.DRAIN,
                                                     Capability.SCALE})

    def __init__(self, config: FarmConfig) -> None:
        if config.instances < DOCKER_INSTANCES:
            raise FarmError(f"compose.yaml declares {DOCKER_INSTANCES} instances (web1..web{DOCKER_INSTANCES}); "
                            f"N={config.instances} needs RUNTIME=native")
        # HTTP only: TLS terminates in front of a container farm (see README), so none is printed.
        # PROMETHEUS_PORT non-zero: compose.yaml's monitoring profile (Prometheus and the exporters).
        self.config = config.replace(https_port=0, redis_password=config.redis_password
                                     or farm_secret(config.state_dir, "redis_password"))
        default = config.state_dir.resolve() == (PROJECT_ROOT / ".farm").resolve()
        self.project = "webfarm" if default else \
            "webfarm-" + hashlib.sha256(str(config.state_dir.resolve()).encode()).hexdigest()[:10]

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        state = self.config.state_dir
        env.setdefault("ENVIRONMENT", "demo")
        env["CSRF_SECRET"] = env.get("CSRF_SECRET") or csrf_secret(state)
        env["PROXY_SECRET"] = env.get("PROXY_SECRET") or proxy_secret(state)
        env["REDIS_PASSWORD"] = self.config.redis_password
        env["HTTP_PORT"] = str(self.config.http_port)
        env["BALANCE"] = self.config.balance
        env["SESSION_BACKEND"] = self.config.session_backend
        env["DEMO_CONTROLS"] = "1" if self.config.demo_controls else "0"
        env["CONSOLE_URL"] = console.url(self.config) if self.config.console else ""
        env["REDIS_SENTINELS"] = DOCKER_SENTINELS if self.config.sentinel else ""
        env["REDIS_CLUSTER_NODES"] = DOCKER_CLUSTER_NODES if self.config.cluster else ""
        env["PROMETHEUS_PORT"] = str(self.config.prometheus_port)
        return env

    def _files(self) -> list[str]:
        override = self.config.state_dir / "compose.override.json"
        override.parent.mkdir(parents=True, exist_ok=True)
        override.write_text(json.dumps(compose_override(self.config, PROJECT_ROOT / "compose.yaml"), indent=2))
        return ["--file", str(PROJECT_ROOT / "compose.yaml"), "--file", str(override)]

    def _profiles(self) -> list[str]:
        """compose.yaml's profiles this farm turns on."""
        return [*(["sentinel"] if self.config.sentinel else []), *(["cluster"] if self.config.cluster else []),
                *(["monitoring"] if self.config.prometheus_port else [])]

    def _compose(self, *args: str, capture: bool = False, check: bool = True) -> str:
        profiles = [arg for profile in self._profiles() for arg in ("--profile", profile)]
        cmd = [*compose_command(), "--progress", "quiet", "--project-name", self.project,
               "--project-directory", str(PROJECT_ROOT), *self._files(), *profiles, *args]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False, env=self._environment())
        if check and result.returncode != 0:
            raise FarmError(f"{' '.join(cmd[-len(args) - 1:])} failed:\n{result.stderr.strip()}")
        if not capture and result.stdout:
            print(result.stdout, end="")
        return result.stdout

    def _container(self, name: str) -> str:
        """`name`'s container, by its compose labels (one quick `docker ps`, not a compose run)."""
        labels = [f"com.docker.compose.project={self.project}", f"com.docker.compose.service={name}"]
        result = subprocess.run(["docker", "ps", "--all", "--quiet", *(f"--filter=label={x}" for x in labels)],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0 or not result.stdout.strip():
            raise FarmError(f"no container for {name} in project {self.project}")
        return result.stdout.split()[0]

    def _exec(self, name: str, script: str) -> None:
        """`script` in `name`'s container, as root (a web container runs its app unprivileged)."""
        result = subprocess.run(["docker", "exec", "--user", "root", self._container(name), "sh", "-c", script],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise FarmError(f"in {name}: {script}: {result.stderr.strip()}")

    def _network(self, action: str, network: str, name: str) -> None:
        result = subprocess.run(["docker", "network", action, f"{self.project}_{network}", self._container(name)],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise FarmError(f"docker network {action} {network} {name}: {result.stderr.strip()}")

    def is_running(self) -> bool:
        return any(s.up for s in self.status())

    def up(self, timeout_s: float = 180) -> None:
        """Start the farm, or scale a running one to this config's N (dropping no request)."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        running = [s.name for s in self.status() if s.name.startswith("web")]
        if running and len(running) != self.config.instances:
            self._scale(running, timeout_s)  # only the instances and the health service change
            self.wait_healthy(timeout_s)
            return
        if not running:  # the last run's rotation: the health service writes this run's at its start
            (config_dir_of(self.config) / "rotation.json").unlink(missing_ok=True)
        try:
            self._compose("up", "--detach", "--build", "--wait", "--wait-timeout", str(int(timeout_s)),
                          "--remove-orphans", "--quiet-pull")
        except FarmError as exc:
            if "registry" in str(exc) or "pull access denied" in str(exc):
                raise FarmError(f"{exc}\nNo image registry answers: `make images` builds stand-ins from Debian's "
                                f"packages, and prints the variables that make the farm use them.") from exc
            raise
        self.wait_healthy(timeout_s)  # `up --wait` has been seen returning 0 with nginx never started
        if not running:  # a farm already up keeps its health service (and its rotation file) as it was
            self._wait_rotation(timeout_s)
        if self.config.console:
            console.start(self.config)

    def _scale(self, running: list[str], timeout_s: float) -> None:
        """As natively: new instances serve before nginx sends them anything, and nginx sends nothing
        to removed ones (its old workers done) before they stop. nginx itself is never recreated (its
        depends_on, the only thing of it N changes, is not in compose's config hash); the health
        service is, with the new N: its start renders nginx.conf for web1..webN and reloads nginx."""
        wanted = self.instance_names()
        added = [name for name in wanted if name not in running]
        removed = [name for name in running if name not in wanted]
        if added:
            self._compose("up", "--detach", "--no-deps", "--wait", "--wait-timeout", str(int(timeout_s)), *added)
            self._wait(lambda: all(self.is_serving(name) for name in added), timeout_s, f"{', '.join(added)} serving")
        containers = {name: self._container(name) for name in removed}
        self._compose("up", "--detach", "--no-deps", "--force-recreate", "health")
        self._wait_rotation(timeout_s)
        for name, container in containers.items():
            for command in (["stop", "--time", "15"], ["rm", "--volumes"]):
                subprocess.run(["docker", *command, container], capture_output=True, check=False)
            if self.project != "webfarm":  # as `down` does for a test's farm
                subprocess.run(["docker", "image", "rm", f"{self.project}-{name}"], capture_output=True, check=False)

    def _wait_rotation(self, timeout_s: float) -> None:
        """Until nginx runs with web1..webN in its rotation (the health service's start, then its reload)."""
        n = self.config.instances
        self._wait(lambda: self._rotation().get("instances") == n, timeout_s, f"nginx reloaded for {n} instances")

    @staticmethod
    def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        if not wait_until(condition, timeout_s, interval_s=0.1):
            raise FarmError(f"not {what} after {timeout_s:.0f} s: docker compose logs")

    def down(self, timeout_s: float = 30) -> None:
        # --volumes: a farm's Redis data goes with it, as the native farm's state dir goes on `make clean`;
        # the default farm keeps its volume (`make down`, then `make up`: everyone still signed in).
        # A test's farm also takes its image tags (the layers stay cached for the next one).
        volumes = ["--volumes", "--rmi", "local"] if self.project != "webfarm" else []
        console.stop(self.config)
        self._compose("down", "--timeout", str(int(timeout_s)), "--remove-orphans", *volumes)

    def status(self) -> list[ProcessStatus]:
        out = self._compose("ps", "--all", "--format", "json", capture=True)
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        statuses = [ProcessStatus(r["Service"], int((r.get("Publishers") or [{}])[0].get("PublishedPort") or 0),
                                  self.pid(r["Service"]) if r.get("State") == "running" else 0,
                                  "RUNNING" if r.get("State") == "running" else str(r.get("State", "?")).upper())
                    for r in rows if r["Service"] not in ("farm-config", DOCKER_CLUSTER_CREATE)]
        pid = console.pid(self.config)
        if self.config.console or pid:  # on the host, not a compose service
            statuses.append(ProcessStatus("console", self.config.console_port, pid, "RUNNING" if pid else "STOPPED"))
        return statuses

    def instance_names(self) -> list[str]:
        return [i.name for i in self.config.web]

    def kill(self, name: str, sig: str = "KILL") -> int:
        """`sig` to the process the container runs (the app under its init, or Redis): when it dies,
        the container exits and the restart policy starts it again."""
        pid = self.pid(name)
        if name.startswith("web"):
            self._exec(name, f"kill -{sig} {APP_PID}")
        elif pid:  # a container's first process ignores signals sent from inside it; from the host it does not
            os.kill(pid, getattr(signal, f"SIG{sig}"))
        return pid

    def pid(self, name: str) -> int:
        """The host pid of the container's first process (0 when it is not running)."""
        try:
            container = self._container(name)
        except FarmError:
            return 0
        result = subprocess.run(["docker", "inspect", "--format", "{{.State.Pid}}", container],
                                capture_output=True, text=True, check=False)
        return int(result.stdout.strip() or 0) if result.returncode == 0 else 0

    def pause(self, name: str) -> None:
        """A hang: an instance's app stopped (SIGSTOP), its socket open, its init and healthcheck not;
        Redis frozen whole (`docker compose pause`: it is its container's first process)."""
        if name.startswith("web"):
            self._exec(name, f"kill -STOP {APP_PID}")
        else:
            self._compose("pause", name)

    def resume(self, name: str) -> None:
        if name.startswith("web"):
            self._exec(name, f"kill -CONT {APP_PID}")
        else:
            self._compose("unpause", name)

    def stop(self, name: str) -> None:
        self._compose("stop", name)

    def start(self, name: str, timeout_s: float = 30) -> None:
        """Started and answering (as the supervisor's start waits for a program to stay up)."""
        self._compose("start", name)
        if not wait_until(lambda: self._answers(name), timeout_s, interval_s=0.05):
            raise FarmError(f"{name} does not answer {timeout_s:.0f} s after its start: docker compose logs {name}")

    def _answers(self, name: str) -> bool:
        if name in self.instance_names():
            return self.is_serving(name)
        if self.config.cluster and name in self.config.redis_nodes:
            return self._cluster_node_answers(name)
        if name == "redis":
            try:
                with redis.Redis.from_url(self.config.redis_url, socket_timeout=1) as client:
                    client.ping()
            except redis.RedisError:
                return False
            # Answering the host is not answering the instances: for up to a second after its
            # container starts again, their connections to it can time out (seen: one instance's
            # 24 of 40 requests 503 "session store unavailable" right after the host's PING).
            return all(self.is_serving(name) for name in self.instance_names())
        return True

    def _cluster_node(self, name: str) -> redis.Redis:
        """A client of cluster node `name` alone, on its loopback port (not a cluster client)."""
        return redis.Redis(port=self.config.redis_nodes[name], password=self.config.redis_password or None,
                           socket_timeout=1, decode_responses=True)

    def _cluster_node_answers(self, name: str) -> bool:
        try:
            with self._cluster_node(name) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def cluster_roles(self) -> dict[str, str]:
        """Each cluster node's role as the cluster sees it ("primary, 5461 slots", "replica of
        redis-node1", "down"), from the first node that answers CLUSTER NODES; {} when none does."""
        for name in self.config.redis_nodes if self.config.cluster else ():
            try:
                with self._cluster_node(name) as client:
                    text = client.execute_command("CLUSTER", "NODES")  # raw: redis-py parses "CLUSTER NODES"
            except redis.RedisError:
                continue
            return cluster_roles(str(text))
        return {}

    def restart(self, name: str) -> None:
        """`docker compose restart`: SIGTERM, then the container starts again; nginx fails over meanwhile."""
        self._compose("restart", name)
        self.wait_healthy()

    def roll(self) -> list[tuple[str, float]]:
        """Restart the web containers one at a time, as natively: out of the rotation (nginx reloaded,
        its old workers done), restarted, serving again, back in."""
        took = []
        for name in self.instance_names():
            started = time.monotonic()
            self.drain(name)
            try:
                self._compose("restart", name)
                if not wait_until(lambda: self.is_serving(name), 60, interval_s=0.2):  # noqa: B023 - called at once
                    raise FarmError(f"{name} is not serving 60 s after its restart: docker compose logs {name}")
            finally:
                self.undrain(name)
            took.append((name, time.monotonic() - started))
        return took

    def _health(self, *args: str) -> str:
        result = subprocess.run(["docker", "exec", self._container("health"), "python", "-m", "farmctl.docker.health",
                                 *args, "--balance", self.config.balance],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise FarmError(f"health {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def drain(self, *names: str) -> None:
        """Out of nginx's rotation; returns once nginx's old workers finished their requests."""
        self._health("drain", *names)

    def undrain(self, *names: str) -> None:
        self._health("undrain", *names)

    def cut_off(self, name: str) -> None:
        """`name` leaves the `store` network: it still takes requests from nginx, and reaches no Redis."""
        self._network("disconnect", "store", name)

    def reconnect(self, name: str) -> None:
        self._network("connect", "store", name)

    def redis_primary(self) -> str | None:
        require(self, Capability.REDIS_FAILOVER, "naming the Redis primary")
        return None

    def failover_ready(self) -> bool:
        require(self, Capability.REDIS_FAILOVER, "a Redis failover")
        return False

    def _rotation(self) -> dict[str, Any]:
        """What the health service last applied (farmctl/docker/health.py's Rotation), {} before its start."""
        try:
            rotation: dict[str, Any] = json.loads((config_dir_of(self.config) / "rotation.json").read_text())
        except FileNotFoundError:
            return {}
        return rotation

    def out_of_rotation(self) -> dict[str, str]:
        """Who the health service holds out, and why ("timeout", "unready"); drained ones are not counted."""
        out: dict[str, str] = self._rotation().get("out", {})
        return out

    def is_serving(self, name: str) -> bool:
        """Answering its readiness probe on its loopback port (what a native instance is asked)."""
        return any(i.name == name and answers(f"{i.url}/readyz") for i in self.config.web)

    def unhealthy(self) -> list[str]:
        bad = [name for name in self.instance_names() if not self.is_serving(name)]
        return bad if balancer_answers(self.config.balancer_url, "/readyz", instances_serve=not bad) \
            else [*bad, "nginx"]

    def wait_healthy(self, timeout_s: float = 60) -> None:
        if not wait_until(lambda: not self.unhealthy(), timeout_s, interval_s=0.5):
            raise FarmError(f"not healthy after {timeout_s:.0f} s: {', '.join(self.unhealthy())}; docker compose logs")

    def log_path(self, name: str) -> str:
        return f"docker compose --project-name {self.project} logs {name}"

    def tail(self, name: str, lines: int = 15) -> str:
        return self._compose("logs", "--no-log-prefix", "--tail", str(lines), name, capture=True)


def cluster_roles(text: str) -> dict[str, str]:
    """CLUSTER NODES as hostname -> "primary, N slots", "replica of NAME" or "down" (under Docker every
    node listens on the same port, so they are told apart by the name each announces)."""
    nodes = clusternodes.parse(text)
    names = {node.id: node.hostname or str(node.port) for node in nodes}
    return {names[node.id]: clusternodes.describe(node, names) for node in nodes}
