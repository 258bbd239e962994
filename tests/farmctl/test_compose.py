"""compose.yaml and the Dockerfile as files: the schema and `docker compose config`, what failover
relies on (healthchecks, restart policies, start order), and agreement with the rendered nginx
config. What they do when they run is tests/farm's, on the Docker runtime (`any_farm`)."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from jsonschema import Draft7Validator

from app.__main__ import KEEPALIVE_S
from farmctl.config import APP_KEEPALIVE_S, PROJECT_ROOT, SENTINEL_MASTER, FarmConfig
from farmctl.docker import DockerFarm
from farmctl.docker.engine import compose_command
from farmctl.docker.farm import cluster_roles
from farmctl.docker.render import (
    DOCKER_CLUSTER_CREATE,
    DOCKER_CLUSTER_NODE_NAMES,
    DOCKER_CLUSTER_NODES,
    DOCKER_INSTANCES,
    DOCKER_NGINX_STATUS_PORT,
    DOCKER_SENTINELS,
    compose_override,
    render_docker,
    render_nginx_docker,
)
from farmctl.ports import free_port_block
from farmctl.wait import wait_until

COMPOSE_FILE = PROJECT_ROOT / "compose.yaml"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
# Shared beside the checkout, not vendored into it.
COMPOSE_SCHEMA = Path(__file__).resolve().parents[3] / "shared" / "schemas" / "compose-spec.json"
APP_PORT = 8000
WEB_SERVICES = [f"web{i}" for i in range(1, DOCKER_INSTANCES + 1)]
EXPORTERS = {"nginx-exporter", "redis-exporter"}

Service = dict[str, Any]
Instruction = tuple[str, str]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Service]:
    result = compose["services"]
    assert isinstance(result, dict)
    return result


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    """(KEYWORD, arguments) per instruction, continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    return instructions


@pytest.fixture(scope="module")
def uvicorn_cmd(dockerfile: list[Instruction]) -> list[str]:
    cmds = [args for keyword, args in dockerfile if keyword == "CMD"]
    assert len(cmds) == 1
    cmd = json.loads(cmds[0])  # exec form: uvicorn is PID 1 and receives SIGTERM itself
    assert isinstance(cmd, list)
    return [str(arg) for arg in cmd]


def option(argv: list[str], name: str) -> str:
    assert name in argv, argv
    return argv[argv.index(name) + 1]


def command_argv(service: Service) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]


def depends_on(service: Service) -> dict[str, str]:
    """{dependency: condition}; the short (list) syntax means service_started."""
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def required(service: Service) -> dict[str, str]:
    """depends_on without the dependencies compose leaves out when their profile is off (`required: false`)."""
    deps = service.get("depends_on", {})
    optional = {name for name, spec in deps.items() if isinstance(spec, dict) and spec.get("required") is False} \
        if isinstance(deps, dict) else set()
    return {name: condition for name, condition in depends_on(service).items() if name not in optional}


def one_shot(services: dict[str, Service]) -> set[str]:
    """Services something waits on to exit 0: jobs, not daemons."""
    return {name for svc in services.values() for name, condition in depends_on(svc).items()
            if condition == "service_completed_successfully"}


def test_validate_compose_against_spec_schema(compose: dict[str, Any]) -> None:
    if not COMPOSE_SCHEMA.is_file():
        pytest.skip(f"the Compose Specification schema is not at {COMPOSE_SCHEMA}")
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    Draft7Validator.check_schema(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in Draft7Validator(schema).iter_errors(compose)]
    assert errors == []


@pytest.mark.parametrize("with_override", [False, True])
def test_validate_compose_with_docker_compose(with_override: bool, tmp_path: Path) -> None:
    """Compose v2 itself reads compose.yaml (and a farm's override: 5 instances, extra variables)."""
    files = ["--file", str(COMPOSE_FILE)]
    if with_override:
        override = compose_override(FarmConfig(instances=5, extra_env={"SESSION_NEAR_CACHE_S": "0"}), COMPOSE_FILE)
        (tmp_path / "override.json").write_text(json.dumps(override))
        files += ["--file", str(tmp_path / "override.json")]
    secrets = {"CSRF_SECRET": "x" * 32, "PROXY_SECRET": "p" * 32, "REDIS_PASSWORD": "r" * 32}
    result = subprocess.run([*compose_command(), "--project-directory", str(PROJECT_ROOT), *files, "config",
                             "--format", "json"], capture_output=True, text=True, timeout=60, check=False,
                            env={**os.environ, **secrets})
    assert result.returncode == 0, result.stderr
    merged = json.loads(result.stdout)["services"]
    expected = 5 if with_override else DOCKER_INSTANCES
    assert sorted(n for n in merged if n.startswith("web")) == [f"web{i}" for i in range(1, expected + 1)]
    if with_override:
        assert merged["web5"]["environment"]["INSTANCE_NAME"] == "web5"
        assert merged["web5"]["environment"]["SESSION_NEAR_CACHE_S"] == "0"
        assert merged["web5"]["healthcheck"] == merged["web1"]["healthcheck"]
        assert set(merged["nginx"]["depends_on"]) >= {f"web{i}" for i in range(1, 6)}


def test_refuse_compose_without_its_secrets() -> None:
    result = subprocess.run([*compose_command(), "--project-directory", str(PROJECT_ROOT), "config", "--quiet"],
                            capture_output=True, text=True, timeout=60, check=False,
                            env={k: v for k, v in os.environ.items()
                                 if k not in ("CSRF_SECRET", "PROXY_SECRET", "REDIS_PASSWORD")})
    assert result.returncode != 0
    assert "set CSRF_SECRET" in result.stderr or "set PROXY_SECRET" in result.stderr \
        or "set REDIS_PASSWORD" in result.stderr


def test_declare_healthcheck_and_restart_on_every_long_lived_service(services: dict[str, Service]) -> None:
    jobs = one_shot(services)
    assert jobs == {"farm-config", DOCKER_CLUSTER_CREATE}
    daemons = {name: svc for name, svc in services.items() if name not in jobs}
    assert {"redis", "nginx", *WEB_SERVICES, "prometheus", *EXPORTERS} <= set(daemons)
    for name, svc in daemons.items():
        # `always` also restarts a container killed with SIGKILL, which is what the chaos test does.
        assert svc.get("restart") == "always", name
        if name in EXPORTERS:  # their official images hold the binary alone: nothing to run a check with
            continue  # (Prometheus' `up` of each is their health)
        healthcheck = svc.get("healthcheck", {})
        assert healthcheck.get("test"), name
        assert not healthcheck.get("disable"), name
    for name in jobs:
        assert services[name].get("restart") == "no", name


def test_declare_web_services_identical_but_for_their_name(services: dict[str, Service]) -> None:
    assert sorted(n for n in services if re.fullmatch(r"web\d+", n)) == WEB_SERVICES

    def without_name(svc: Service) -> Service:
        env = {k: v for k, v in svc["environment"].items() if k != "INSTANCE_NAME"}
        return {**svc, "environment": env}

    for name in WEB_SERVICES:
        svc = services[name]
        assert svc["environment"]["INSTANCE_NAME"] == name
        assert without_name(svc) == without_name(services[WEB_SERVICES[0]]), name


def test_declare_web_environment_pointing_at_compose_redis(services: dict[str, Service]) -> None:
    env = services[WEB_SERVICES[0]]["environment"]
    # A password from a required variable: Redis shares its network with other containers.
    host = re.fullmatch(r"redis://:\$\{REDIS_PASSWORD:\?[^}]+\}@([\w-]+):6379/\d+", env["REDIS_URL"])
    assert host is not None
    assert host.group(1) in services
    assert required(services[WEB_SERVICES[0]]) == {host.group(1): "service_healthy"}
    # The crash button is opt-in (make up sets DEMO_CONTROLS=1); a plain `docker compose up` hides it.
    assert env["DEMO_CONTROLS"] in ("0", "${DEMO_CONTROLS:-0}")


def test_declare_web_secret_required_and_production_by_default(services: dict[str, Service]) -> None:
    env = services[WEB_SERVICES[0]]["environment"]
    # `${VAR:?message}`: compose refuses to start without it; no demo value to fall back on.
    assert re.fullmatch(r"\$\{CSRF_SECRET:\?.+\}", env["CSRF_SECRET"])
    assert env["ENVIRONMENT"] == "${ENVIRONMENT:-production}"


def test_start_nginx_after_config_and_every_healthy_instance(services: dict[str, Service]) -> None:
    assert depends_on(services["nginx"]) == {
        "farm-config": "service_completed_successfully",
        **dict.fromkeys(WEB_SERVICES, "service_healthy"),
    }
    # nginx reads its config once: a re-rendered one must restart it.
    assert services["nginx"]["depends_on"]["farm-config"].get("restart") is True


def test_publish_only_nginx_and_prometheus_on_loopback(services: dict[str, Service]) -> None:
    publishers = {name for name, svc in services.items() if svc.get("ports")}
    assert publishers == {"nginx", "prometheus"}
    for name in publishers:
        for port in services[name]["ports"]:
            host_ip = port["host_ip"] if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", port


def test_declare_monitoring_profile_without_a_way_to_the_store(services: dict[str, Service]) -> None:
    """Prometheus reaches the instances, the health service and the exporters, never Redis itself;
    the Redis exporter is the one monitoring part on the store's network."""
    monitoring = {name for name, svc in services.items() if "monitoring" in svc.get("profiles", [])}
    assert monitoring == {"prometheus", *EXPORTERS}
    on_store = {name for name, svc in services.items() if "store" in svc.get("networks", {})}
    assert monitoring & on_store == {"redis-exporter"}
    assert set(services["prometheus"]["networks"]) == {"front", "monitoring"}


def redis_argv(service: Service) -> list[str]:
    """redis-server's own arguments: the command is `sh -c '<write the password file> && exec redis-server ...'`."""
    script = command_argv(service)[-1]
    return shlex.split(script.partition("exec ")[2])


def test_require_a_password_of_every_redis_node(services: dict[str, Service]) -> None:
    for name in ("redis", "redis-replica"):
        script = command_argv(services[name])[-1]
        assert "requirepass" in script, name
        assert "masterauth" in script, name
        assert redis_argv(services[name])[:2] == ["redis-server", "/tmp/auth.conf"], name
        assert "REDIS_PASSWORD" not in " ".join(redis_argv(services[name])), name  # not on its command line


def test_enable_redis_append_only_fsync_every_second(services: dict[str, Service]) -> None:
    argv = redis_argv(services["redis"])
    assert option(argv, "--appendonly") == "yes"
    assert option(argv, "--appendfsync") == "everysec"
    assert option(argv, "--maxmemory-policy") == "noeviction"  # full: refuse writes, never evict a session
    assert any(str(v).endswith(":/data") for v in services["redis"]["volumes"])


@pytest.mark.parametrize("balance", ["round_robin", "sticky"])
def test_render_docker_upstreams_naming_web_services(balance: str, services: dict[str, Service],
                                                     uvicorn_cmd: list[str]) -> None:
    rendered = render_nginx_docker(balance=balance)
    servers = re.findall(r"^\s*server\s+([\w-]+):(\d+)\b([^;]*);", rendered, re.M)
    assert servers
    assert {host for host, _, _ in servers} == set(WEB_SERVICES)
    for host, port, flags in servers:
        assert host in services
        assert int(port) == APP_PORT == int(option(uvicorn_cmd, "--port")), host
        # Without `resolve` nginx keeps a restarted container's old address.
        assert "resolve" in flags.split(), host


def test_render_docker_listen_matching_published_port(services: dict[str, Service]) -> None:
    listen = re.findall(r"^\s*listen\s+[\d.]+:(\d+);", render_nginx_docker(), re.M)
    container_ports = {str(p["target"]) if isinstance(p, dict) else str(p).rsplit(":", 1)[-1]
                       for p in services["nginx"]["ports"]}
    # 8080 the farm's, published; 8081 stub_status, for the nginx exporter alone (published nowhere).
    assert [int(p) for p in listen] == [8080, DOCKER_NGINX_STATUS_PORT]
    assert container_ports == {"8080"}
    assert "http://127.0.0.1:8080/" in " ".join(services["nginx"]["healthcheck"]["test"])
    assert f"http://nginx:{DOCKER_NGINX_STATUS_PORT}/stub_status" in command_argv(services["nginx-exporter"])[0]


def test_render_docker_config_where_nginx_reads_it(compose: dict[str, Any], services: dict[str, Service]) -> None:
    argv = command_argv(services["farm-config"])
    assert argv[:4] == ["python", "-m", "farmctl", "render-docker"]
    assert int(option(argv, "--instances")) == DOCKER_INSTANCES
    conf = option(command_argv(services["nginx"]), "-c")
    assert conf == option(argv, "--out") + "/nginx.conf"

    def mount_of(service: str, path: str) -> str:
        for volume in services[service]["volumes"]:
            source, target = str(volume).split(":")[:2]
            if path.startswith(target.rstrip("/") + "/"):
                return source
        raise AssertionError(f"{service} mounts nothing at {path}")

    assert mount_of("farm-config", conf) == mount_of("nginx", conf)
    assert mount_of("nginx", conf) in compose["volumes"]
    static = re.search(r"alias (\S+)/;", render_nginx_docker())
    assert static is not None
    assert mount_of("nginx", f"{static.group(1)}/style.css") == "./app/static"


def test_run_uvicorn_keepalive_longer_than_nginx(uvicorn_cmd: list[str]) -> None:
    # python -m app: the uvicorn flags the native instances and the bench's peers get too.
    assert uvicorn_cmd[:3] == ["python", "-m", "app"]
    assert "--factory" not in uvicorn_cmd  # app/__main__.py's default: app.main:create_instance
    assert KEEPALIVE_S == APP_KEEPALIVE_S
    timeouts = [int(s) for s in re.findall(r"^\s*keepalive_timeout (\d+)s;", render_nginx_docker(), re.M)]
    assert timeouts
    assert max(timeouts) < APP_KEEPALIVE_S


def test_build_image_as_non_root(dockerfile: list[Instruction]) -> None:
    users = [args for keyword, args in dockerfile if keyword == "USER"]
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")


def test_build_image_with_unbuffered_python(dockerfile: list[Instruction]) -> None:
    env = dict(item.partition("=")[::2] for keyword, args in dockerfile if keyword == "ENV"
               for item in shlex.split(args))
    assert env.get("PYTHONUNBUFFERED") == "1"


def test_build_image_with_healthcheck_tool_it_contains(dockerfile: list[Instruction]) -> None:
    checks = [args for keyword, args in dockerfile if keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    # python:*-slim has neither curl nor wget; python itself is the HTTP client.
    assert dockerfile[0] == ("ARG", "PYTHON_IMAGE=python:3.11-slim")
    assert dockerfile[1] == ("FROM", "${PYTHON_IMAGE}")
    argv = json.loads(checks[0].partition("CMD ")[2])
    assert argv[:3] == ["python", "-m", "app.probe"]
    assert f"http://127.0.0.1:{APP_PORT}/healthz" in argv
    assert ("EXPOSE", str(APP_PORT)) in dockerfile


def test_restart_a_hung_instance(services: dict[str, Service]) -> None:
    """Liveness under Docker: the web check kills an app hung for 10 s (app/probe.py), which needs
    the app to run under an init, and the restart policy starts the container again."""
    web = {name: svc for name, svc in services.items() if name.startswith("web")}
    assert web
    for name, svc in web.items():
        argv = svc["healthcheck"]["test"]
        assert argv[:4] == ["CMD", "python", "-m", "app.probe"], name
        assert float(argv[argv.index("--restart-after") + 1]) <= 10, name
        assert svc.get("init") is True, name
        assert svc["restart"] == "always", name


def test_build_image_dependencies_before_source(dockerfile: list[Instruction]) -> None:
    steps = [f"{keyword} {args}" for keyword, args in dockerfile]

    def first(prefix: str) -> int:
        return next(i for i, step in enumerate(steps) if step.startswith(prefix))

    assert first("COPY pyproject.toml requirements.lock") < first("RUN python -m venv") < first("COPY app/")
    # farmctl/ and nginx/ are what the farm-config service runs.
    assert {"COPY app/ app/", "COPY farmctl/ farmctl/", "COPY nginx/ nginx/"} <= set(steps)


def test_build_image_installing_locked_runtime_dependencies(dockerfile: list[Instruction], tmp_path: Path) -> None:
    install = next(args for keyword, args in dockerfile if keyword == "RUN" and "pip install" in args)
    assert "-c requirements.lock -r requirements.txt" in install
    # The list is pyproject.toml's own: run the image's extraction step on it.
    script = shlex.split(install.partition(" > requirements.txt")[0].partition("&& ")[2])
    assert script[:2] == ["python", "-c"]
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path)
    listed = subprocess.run([sys.executable, "-c", script[2]], cwd=tmp_path, capture_output=True, text=True,
                            check=True).stdout.split()
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    assert listed == project["dependencies"]

    def name(requirement: str) -> str:
        return re.split(r"[\[<>=~! ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")

    locked = {name(line) for line in (PROJECT_ROOT / "requirements.lock").read_text().splitlines() if line.strip()}
    assert {name(dep) for dep in listed} <= locked
    assert "supervisor" not in {name(dep) for dep in listed}


def test_render_docker_configs_without_supervisor_or_psutil(tmp_path: Path) -> None:
    """What the farm-config service runs, with the native runtime's libraries made unimportable, as in the image."""
    blocker = ("import sys\n"
               "class Block:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in ('supervisor', 'psutil'):\n"
               "            raise ImportError(f'{name} is not in the image')\n"
               "sys.meta_path.insert(0, Block())\n"
               "import farmctl.docker.health\n"  # the health service's loop, too
               "from farmctl.__main__ import main\n"
               f"sys.exit(main(['render-docker', '--out', {str(tmp_path)!r}]))\n")
    done = subprocess.run([sys.executable, "-c", blocker], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          check=False, env={**os.environ, "PROXY_SECRET": "s3cret-for-the-test",
                                            "REDIS_PASSWORD": "redis-pw-for-the-test"})
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([
        "nginx.conf", "proxy-secret.conf", *(f"{s}.conf" for s in SENTINELS),
        "prometheus.yml", "rules.yml", "web-targets.json", "redis-passwords.json"])
    assert (tmp_path / "proxy-secret.conf").read_text() == 'proxy_set_header X-Webfarm-Proxy "s3cret-for-the-test";\n'
    assert "s3cret" not in (tmp_path / "nginx.conf").read_text()
    # The monitoring profile's: the exporter's password for the one Redis (no Sentinel profile here),
    # never in Prometheus' config; web1..web3 for its discovery, labelled as natively.
    passwords = json.loads((tmp_path / "redis-passwords.json").read_text())
    assert passwords == {"redis://redis:6379": "redis-pw-for-the-test"}
    assert "redis-pw" not in (tmp_path / "prometheus.yml").read_text()
    assert json.loads((tmp_path / "web-targets.json").read_text()) == [
        {"targets": [f"{name}:8000"], "labels": {"farm_instance": name}} for name in WEB_SERVICES]


def test_render_docker_refuses_a_missing_proxy_secret(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "farmctl", "render-docker", "--out", str(tmp_path)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, check=False,
                          env={k: v for k, v in os.environ.items() if k != "PROXY_SECRET"})
    assert done.returncode != 0
    assert "proxy secret" in done.stderr
    assert not (tmp_path / "nginx.conf").exists()


SENTINELS = ["sentinel1", "sentinel2", "sentinel3"]


def sentinel_script(services: dict[str, Service], rendered: Path, conf: Path) -> str:
    """The sentinel services' start script as the container's shell runs it: copying from `rendered`
    (farm-config's output) to `conf`."""
    script = command_argv(services["sentinel1"])[-1]
    config_dir = next(str(v).split(":")[1] for v in services["sentinel1"]["volumes"])
    return script.replace("$$", "$").replace("/tmp/sentinel.conf", str(conf)).replace(config_dir, str(rendered))


def test_declare_sentinel_profile_with_replica_and_three_sentinels(services: dict[str, Service]) -> None:
    profiled = {name for name, svc in services.items() if "sentinel" in svc.get("profiles", [])}
    assert profiled == {"redis-replica", *SENTINELS}
    replica = redis_argv(services["redis-replica"])
    assert option(replica, "--replicaof") == "redis"
    assert option(replica, "--appendonly") == "yes"
    assert option(replica, "--appendfsync") == "everysec"
    for name in ("redis", "redis-replica"):
        assert option(redis_argv(services[name]), "--replica-announce-ip") == name
    for name in SENTINELS:
        assert services[name]["environment"]["SENTINEL_NAME"] == name
        assert depends_on(services[name]) == {"farm-config": "service_completed_successfully",
                                              "redis": "service_healthy"}
        assert any(str(v).startswith("farm-config:") and str(v).endswith(":ro") for v in services[name]["volumes"])


def test_declare_web_sentinels_matching_sentinel_services(services: dict[str, Service], tmp_path: Path) -> None:
    # Empty by default (single Redis); farmctl sets it with REDIS=sentinel, naming the Sentinel services.
    assert services[WEB_SERVICES[0]]["environment"]["REDIS_SENTINELS"] == "${REDIS_SENTINELS:-}"
    named = [address.split(":") for address in DOCKER_SENTINELS.split(",")]
    assert [host for host, _ in named] == SENTINELS
    render_docker(tmp_path / "rendered", DOCKER_INSTANCES, "round_robin", "test-proxy-secret")
    subprocess.run(["sh", "-c", sentinel_script(services, tmp_path / "rendered", tmp_path / "sentinel.conf")
                    .replace("exec ", "true ")],
                   env={"SENTINEL_NAME": "sentinel1", "PATH": "/usr/bin:/bin"}, check=True, timeout=10)
    assert {port for _, port in named} == set(re.findall(r"^port (\d+)$", (tmp_path / "sentinel.conf").read_text(),
                                                         re.M))


def test_write_sentinel_config_once_and_accepted_by_redis(services: dict[str, Service], tmp_path: Path) -> None:
    """The script keeps the file Sentinel rewrites across restarts, and real Redis accepts what it copied."""
    conf = tmp_path / "sentinel.conf"
    render_docker(tmp_path / "rendered", DOCKER_INSTANCES, "round_robin", "test-proxy-secret")
    script = sentinel_script(services, tmp_path / "rendered", conf).replace("exec ", "true ")
    subprocess.run(["sh", "-c", script], env={"SENTINEL_NAME": "sentinel2", "PATH": "/usr/bin:/bin"}, check=True)
    written = conf.read_text()
    assert "sentinel announce-ip sentinel2\n" in written
    assert "sentinel resolve-hostnames yes\n" in written
    assert "sentinel announce-hostnames yes\n" in written
    assert f"sentinel monitor {SENTINEL_MASTER} redis 6379 2\n" in written
    conf.write_text(written + "# rewritten by Sentinel\n")
    subprocess.run(["sh", "-c", script], env={"SENTINEL_NAME": "sentinel2", "PATH": "/usr/bin:/bin"}, check=True)
    assert conf.read_text().endswith("# rewritten by Sentinel\n")

    redis_server = shutil.which("redis-server")
    if redis_server is None:
        pytest.skip("redis-server is not installed")
    port = free_port_block(2)
    # Here no host is called `redis` (nor listens where it points); the rest is what the container runs.
    conf.write_text(written.replace("port 26379", f"port {port}\nbind 127.0.0.1")
                    .replace(f"{SENTINEL_MASTER} redis 6379", f"{SENTINEL_MASTER} 127.0.0.1 {port + 1}"))
    proc = subprocess.Popen([redis_server, str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
    try:
        with redis.Redis(port=port, decode_responses=True) as client:
            def master() -> dict[str, Any] | None:
                assert proc.poll() is None, "redis-server refused the sentinel config"
                try:
                    return dict(client.sentinel_master(SENTINEL_MASTER))
                except redis.ConnectionError:
                    return None

            state = wait_until(master, 10, interval_s=0.05)
        assert state is not None
        assert state["down-after-milliseconds"] == 1000
    finally:
        proc.terminate()
        proc.wait(10)


CLUSTER_NODES = list(DOCKER_CLUSTER_NODE_NAMES)
CLUSTER_SCRIPT = PROJECT_ROOT / "farmctl" / "redis-cluster.sh"
SECRETS = {"CSRF_SECRET": "x" * 32, "PROXY_SECRET": "p" * 32, "REDIS_PASSWORD": "r" * 32}


def script_mount(service: Service) -> str:
    """Where a service mounts farmctl/redis-cluster.sh (read-only), in the container."""
    mounts = [str(v).split(":") for v in service.get("volumes", [])]
    targets = [target for source, target, *mode in mounts
               if (PROJECT_ROOT / source).resolve() == CLUSTER_SCRIPT and mode == ["ro"]]
    assert len(targets) == 1, service.get("volumes")
    return targets[0]


def test_declare_cluster_profile_of_six_nodes_and_the_one_shot_that_makes_them_a_cluster(
        services: dict[str, Service], compose: dict[str, Any]) -> None:
    profiled = {name for name, svc in services.items() if "cluster" in svc.get("profiles", [])}
    assert profiled == {*CLUSTER_NODES, DOCKER_CLUSTER_CREATE}
    data = set()
    for name in CLUSTER_NODES:
        node = services[name]
        assert command_argv(node) == ["sh", script_mount(node), "node"], name
        # Announced by its service name, which every container of the store network resolves.
        assert node["environment"]["NODE_HOSTNAME"] == name
        assert node["environment"]["REDIS_PASSWORD"] == services["redis"]["environment"]["REDIS_PASSWORD"]
        assert node["networks"] == ["store"]
        assert node["user"] == "redis"
        volume = next(str(v).split(":")[0] for v in node["volumes"] if str(v).endswith(":/data"))
        assert volume in compose["volumes"]
        data.add(volume)
    assert len(data) == len(CLUSTER_NODES)  # nodes.conf and the AOF: one volume each
    create = services[DOCKER_CLUSTER_CREATE]
    assert command_argv(create) == ["sh", script_mount(create), "create"]
    assert create["environment"]["CLUSTER_NODES"] == DOCKER_CLUSTER_NODES
    assert [address.split(":")[0] for address in DOCKER_CLUSTER_NODES.split(",")] == CLUSTER_NODES
    assert depends_on(create) == dict.fromkeys(CLUSTER_NODES, "service_healthy")


def test_name_the_cluster_services_as_the_farm_names_its_nodes() -> None:
    """What a farm is asked of a node by name (kill, pause, its port) reaches that service."""
    config = FarmConfig(redis_mode="cluster")
    assert list(config.redis_nodes) == CLUSTER_NODES
    override = compose_override(config, COMPOSE_FILE)["services"]
    assert [override[name]["ports"] for name in CLUSTER_NODES] == \
        [[f"127.0.0.1:{port}:6379"] for port in config.redis_nodes.values()]


def test_declare_web_cluster_nodes_waiting_for_the_cluster_only_with_its_profile(services: dict[str, Service]) -> None:
    for name in WEB_SERVICES:
        web = services[name]
        # Empty by default (a single Redis); farmctl sets it with REDIS=cluster.
        assert web["environment"]["REDIS_CLUSTER_NODES"] == "${REDIS_CLUSTER_NODES:-}"
        assert web["depends_on"][DOCKER_CLUSTER_CREATE] == {"condition": "service_completed_successfully",
                                                            "required": False}
    assert services["farm-config"]["environment"]["REDIS_CLUSTER_NODES"] == "${REDIS_CLUSTER_NODES:-}"


@pytest.mark.parametrize("mode", ["single", "sentinel", "cluster"])
def test_docker_farm_turns_on_the_cluster_profile_with_redis_cluster(mode: str, tmp_path: Path) -> None:
    farm = DockerFarm(FarmConfig(state_dir=tmp_path, redis_mode=mode))
    env = farm._environment()
    assert ("cluster" in farm._profiles()) == (mode == "cluster")
    assert env["REDIS_CLUSTER_NODES"] == (DOCKER_CLUSTER_NODES if mode == "cluster" else "")
    assert env["REDIS_SENTINELS"] == (DOCKER_SENTINELS if mode == "sentinel" else "")


def test_validate_cluster_farm_with_docker_compose_and_the_spec_schema(tmp_path: Path) -> None:
    """What `make up REDIS=cluster RUNTIME=docker` runs: compose.yaml, the farm's override and the
    cluster profile, as Compose v2 merges them - and each file, and the merge, valid by the spec."""
    ports = (16391, 16392, 16393, 16394, 16395, 16396)
    farm = DockerFarm(FarmConfig(state_dir=tmp_path, redis_mode="cluster", cluster_ports=ports, prometheus_port=0))
    files = farm._files()
    profiles = [arg for profile in farm._profiles() for arg in ("--profile", profile)]
    result = subprocess.run([*compose_command(), "--project-directory", str(PROJECT_ROOT), *files, *profiles,
                             "config", "--format", "json"], capture_output=True, text=True, timeout=60, check=False,
                            env={**farm._environment(), **SECRETS})
    assert result.returncode == 0, result.stderr
    merged = json.loads(result.stdout)
    services = merged["services"]
    # The cluster instead of the single Redis, whose volume and port are left alone.
    assert "redis" not in services
    assert not {"redis-replica", *SENTINELS} & set(services)
    assert {*CLUSTER_NODES, DOCKER_CLUSTER_CREATE, *WEB_SERVICES, "nginx", "health", "farm-config"} <= set(services)
    for name, port in zip(CLUSTER_NODES, ports, strict=True):
        published = [(p["host_ip"], int(p["published"]), p["target"]) for p in services[name]["ports"]]
        assert published == [("127.0.0.1", port, 6379)], name
    for name in WEB_SERVICES:
        env = services[name]["environment"]
        assert env["REDIS_CLUSTER_NODES"] == DOCKER_CLUSTER_NODES
        assert env["REDIS_SENTINELS"] == ""
        assert services[name]["depends_on"][DOCKER_CLUSTER_CREATE]["condition"] == "service_completed_successfully"
    if not COMPOSE_SCHEMA.is_file():
        pytest.skip(f"the Compose Specification schema is not at {COMPOSE_SCHEMA}")
    validator = Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    override = json.loads(Path(files[-1]).read_text())
    for document in (override, merged):
        assert [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)] == []


def test_render_docker_monitoring_of_the_cluster_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_PASSWORD", "redis-pw-for-the-test")
    monkeypatch.setenv("REDIS_CLUSTER_NODES", DOCKER_CLUSTER_NODES)
    monkeypatch.delenv("REDIS_SENTINELS", raising=False)
    render_docker(tmp_path, DOCKER_INSTANCES, "round_robin", "test-proxy-secret")
    passwords = json.loads((tmp_path / "redis-passwords.json").read_text())
    assert passwords == {f"redis://{name}:6379": "redis-pw-for-the-test" for name in CLUSTER_NODES}
    prometheus = (tmp_path / "prometheus.yml").read_text()
    assert all(f"redis://{name}:6379" in prometheus for name in CLUSTER_NODES)
    assert "redis://redis:6379" not in prometheus  # farmctl runs no single Redis beside a cluster
    assert "redis-pw" not in prometheus


def run_node(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str], str]:
    """`redis-cluster.sh node` with a stand-in redis-server that records its arguments and config file:
    the script's exit, redis-server's argv and its config."""
    bin_dir, data, scratch = tmp_path / "bin", tmp_path / "data", tmp_path / "tmp"
    for directory in (bin_dir, data, scratch):
        directory.mkdir(exist_ok=True)
    (bin_dir / "redis-server").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/argv\n'
                                          f'cp "$1" {tmp_path}/conf\n')
    (bin_dir / "redis-server").chmod(0o755)
    (tmp_path / "argv").unlink(missing_ok=True)
    done = subprocess.run(["sh", str(CLUSTER_SCRIPT), "node"], capture_output=True, text=True, timeout=30, check=False,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", "DATA_DIR": str(data), "TMPDIR": str(scratch),
                               "NODE_HOSTNAME": "redis-node3", **env})
    argv = (tmp_path / "argv").read_text().splitlines() if (tmp_path / "argv").exists() else []
    return done, argv, (tmp_path / "conf").read_text() if argv else ""


def test_start_a_cluster_node_persistent_announcing_its_name_with_its_password_in_a_file(tmp_path: Path) -> None:
    done, argv, conf = run_node(tmp_path, REDIS_PASSWORD="s3cret-pw")
    assert done.returncode == 0, done.stderr
    assert conf == "requirepass s3cret-pw\nmasterauth s3cret-pw\n"
    assert "s3cret-pw" not in " ".join(argv)
    assert option(argv, "--cluster-enabled") == "yes"
    assert option(argv, "--cluster-announce-hostname") == "redis-node3"
    assert option(argv, "--cluster-preferred-endpoint-type") == "hostname"
    assert option(argv, "--cluster-node-timeout") == "2000"
    # While one shard fails over, the others serve.
    assert option(argv, "--cluster-require-full-coverage") == "no"
    assert option(argv, "--dir") == str(tmp_path / "data")
    assert option(argv, "--cluster-config-file") == "nodes.conf"
    # As compose.yaml's `redis`.
    expected = {"--appendonly": "yes", "--appendfsync": "everysec", "--maxmemory-policy": "noeviction"}
    assert {name: option(argv, name) for name in expected} == expected
    assert option(argv, "--maxmemory") == option(redis_argv(yaml.safe_load(COMPOSE_FILE.read_text())["services"]
                                                           ["redis"]), "--maxmemory")
    # Without a password (k8s/'s nodes ask for none), protected mode would refuse every other pod.
    (tmp_path / "open").mkdir()
    assert run_node(tmp_path / "open")[2] == "protected-mode no\n"


def test_start_a_cluster_node_with_its_peers_at_the_addresses_their_names_have_now(tmp_path: Path) -> None:
    """A node created again (make down/up, a rescheduled pod) finds peers that came back at other addresses."""
    (tmp_path / "data").mkdir()
    nodes_conf = tmp_path / "data" / "nodes.conf"
    lines = ["a1 10.9.9.1:6379@16379,localhost myself,master - 0 0 1 connected 0-8191",
             "b2 10.9.9.2:6379@16379,no-such-node.invalid slave a1 0 0 1 connected",
             "c3 10.9.9.3:6379@16379 master - 0 0 2 connected 8192-16383",
             "vars currentEpoch 2 lastVoteEpoch 0"]
    nodes_conf.write_text("\n".join(lines) + "\n")
    done, argv, _ = run_node(tmp_path)
    assert done.returncode == 0, done.stderr
    assert argv
    address = subprocess.run(["getent", "hosts", "localhost"], capture_output=True, text=True,
                             check=True).stdout.split()[0]
    assert nodes_conf.read_text().splitlines() == [lines[0].replace("10.9.9.1", address), *lines[1:]]


def test_restart_a_cluster_node_only_after_the_cluster_failed_it_over(tmp_path: Path) -> None:
    """Started again in the same container: it waits three node timeouts (its replica promoted
    meanwhile) - and a stop during the wait ends it at once, never starting Redis."""
    started = time.monotonic()
    assert run_node(tmp_path, NODE_TIMEOUT_MS="400")[1]
    first = time.monotonic() - started
    started = time.monotonic()
    done, argv, _ = run_node(tmp_path, NODE_TIMEOUT_MS="400")
    assert argv
    assert "waiting 1 s for the cluster to fail it over" in done.stdout
    assert first < 1 <= time.monotonic() - started
    waiting = subprocess.Popen(["sh", str(CLUSTER_SCRIPT), "node"], stdout=subprocess.DEVNULL,
                               env={"PATH": f"{tmp_path}/bin:/usr/bin:/bin", "DATA_DIR": str(tmp_path / "data"),
                                    "TMPDIR": str(tmp_path / "tmp"), "NODE_HOSTNAME": "redis-node3",
                                    "NODE_TIMEOUT_MS": "20000"})
    time.sleep(0.3)
    (tmp_path / "argv").unlink()
    waiting.terminate()
    assert waiting.wait(5) == 0
    assert not (tmp_path / "argv").exists()


def test_read_cluster_roles_by_node_name() -> None:
    text = ("a1 172.18.0.2:6379@16379,redis-node1 myself,master - 0 0 1 connected 0-5460 5462\n"
            "b2 172.18.0.3:6379@16379,redis-node4 slave a1 0 1 1 connected\n"
            "c3 172.18.0.4:6379@16379,redis-node2 master,fail - 0 1 2 disconnected 5461\n")
    assert cluster_roles(text) == {"redis-node1": "primary, 5462 slots", "redis-node4": "replica of redis-node1",
                                   "redis-node2": "down"}
