"""The native runtime's files: supervisord's config (every process and its environment), the
Sentinels' initial configs, and nginx's config with the rotation applied - all in the state dir."""

import getpass
import os
import shutil
import subprocess
import sys
from collections.abc import Collection, Iterator
from pathlib import Path

from farmctl.config import PROJECT_ROOT, SENTINEL_MASTER, FarmConfig, Instance
from farmctl.native import cluster, rotation
from farmctl.native.redis_node import started_marker
from farmctl.render import (
    PROMETHEUS_RULES,
    PROXY_SECRET_CONF,
    SENTINEL_TEMPLATE,
    render_nginx,
    render_prometheus_config,
    render_template,
)
from farmctl.runtime import FarmError
from farmctl.secret import csrf_secret, proxy_secret, proxy_secret_conf
from farmctl.tls import certificate_paths, ensure_certificate

SUPERVISORD_TEMPLATE = Path(__file__).parent / "supervisord.conf.j2"
#: What the farm's monitoring runs (Debian's packages prometheus, prometheus-nginx-exporter, prometheus-redis-exporter).
MONITORING_BINARIES = ("prometheus", "prometheus-nginx-exporter", "prometheus-redis-exporter")
#: Redis's memory policy. A limit of its own, so that a full store refuses writes (OOM) instead of
#: the kernel killing it; and noeviction, so that no session is ever evicted silently - a full Redis
#: still serves reads and deletes (logouts), and frees memory as sessions expire.
REDIS_MAXMEMORY = "256mb"
REDIS_MAXMEMORY_POLICY = "noeviction"


def render_nginx_native(config: FarmConfig, down: Collection[str] = ()) -> str:
    """The native config; instances in `down` are out of rotation (farmctl/native/rotation.py)."""
    cert, key = certificate_paths(config.state_dir)
    return render_nginx(
        "native",
        instances=config.web,
        down=set(down),
        balance=config.balance,
        allowed_hosts=config.allowed_hosts,
        listen_host="127.0.0.1",
        http_port=config.http_port,
        https_port=config.https_port,
        tls_cert=cert,
        tls_key=key,
        proxy_secret_conf=proxy_secret_path(config.state_dir),
        state_dir=config.state_dir,
        static_dir=PROJECT_ROOT / "app" / "static",
        # nginx started by root drops its workers to `nobody`, who cannot read a private state dir.
        run_as=getpass.getuser() if os.geteuid() == 0 else None,
        status_port=config.monitoring.get("nginx-status", 0),
        console_port=config.console_port if config.console else 0,
    )


def proxy_secret_path(state_dir: Path) -> Path:
    """Where the native nginx finds the directive that adds the proxy secret (farmctl.secret)."""
    return state_dir / "nginx" / PROXY_SECRET_CONF


def instance_env(config: FarmConfig, inst: Instance) -> Iterator[tuple[str, str]]:
    """The environment of one native instance: a demo, with the farm's own CSRF and proxy secrets."""
    yield "INSTANCE_NAME", inst.name
    yield "ENVIRONMENT", "demo"
    yield "CSRF_SECRET", csrf_secret(config.state_dir)
    yield "PROXY_SECRET", proxy_secret(config.state_dir)
    yield "ALLOWED_ORIGINS", ",".join(config.allowed_origins)
    yield "REDIS_URL", config.redis_url
    if config.sentinel:
        yield "REDIS_SENTINELS", config.sentinel_addresses
        yield "REDIS_SENTINEL_MASTER", SENTINEL_MASTER
    if config.cluster:
        yield "REDIS_CLUSTER_NODES", config.cluster_nodes
    yield "SESSION_BACKEND", config.session_backend
    yield "KEY_PREFIX", config.key_prefix
    yield "DEMO_CONTROLS", "1" if config.demo_controls else "0"
    yield "CONSOLE_URL", "/console/" if config.console else ""
    yield "PYTHONUNBUFFERED", "1"
    yield from config.extra_env.items()


def require_binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if path is None:
        raise FileNotFoundError(name)
    return path


def render_supervisord(config: FarmConfig, python: str) -> str:
    return render_template(
        SUPERVISORD_TEMPLATE,
        state_dir=config.state_dir,
        root=PROJECT_ROOT,
        python=python,
        redis_server=require_binary("redis-server"),
        nginx=require_binary("nginx"),
        redis_port=config.redis_port,
        redis_memory=f"--maxmemory {REDIS_MAXMEMORY} --maxmemory-policy {REDIS_MAXMEMORY_POLICY}",
        redis_nodes=config.redis_nodes,
        sentinels=config.sentinels,
        cluster_args=cluster.node_args if config.cluster else None,
        instances=config.web,
        env=lambda inst: instance_env(config, inst),
        monitoring=config.monitoring,
        console=config.console,
        binaries={name: require_binary(name) for name in MONITORING_BINARIES} if config.monitoring else {},
    )


def render_prometheus(config: FarmConfig) -> str:
    loopback = {name: f"127.0.0.1:{port}" for name, port in config.monitoring.items()}
    return render_prometheus_config(
        farm=config.state_dir.name, rules=str(PROMETHEUS_RULES), web_targets=[(i.name, i.address) for i in config.web],
        health_target=loopback["health"], nginx_exporter_target=loopback["nginx-exporter"],
        redis_exporter_target=loopback["redis-exporter"], prometheus_target=loopback["prometheus"],
        redis_targets={name: f"redis://127.0.0.1:{port}" for name, port in {**config.redis_nodes,
                                                                            **config.sentinels}.items()})


def render_sentinel(config: FarmConfig, port: int) -> str:
    """The initial config of one native Sentinel; it rewrites the file itself from then on."""
    return render_template(
        SENTINEL_TEMPLATE,
        runtime="native",
        port=port,
        state_dir=config.state_dir,
        master=SENTINEL_MASTER,
        primary_host="127.0.0.1",
        primary_port=config.redis_port,
        replica_host="127.0.0.1",
        replica_port=config.replica_port,
    )


def write_configs(config: FarmConfig, starting: bool) -> None:
    """Write every file of the farm into its state dir, and check nginx's (`nginx -t`). `starting`:
    supervisord is not running yet. Only then are the Sentinels' files written: from their first
    start on, they belong to the Sentinels, who rewrite them."""
    for sub in ("logs", "nginx", *config.redis_nodes):
        (config.state_dir / sub).mkdir(parents=True, exist_ok=True)
    if starting:
        rotation.reset(config.state_dir)
        for node in config.redis_nodes:
            started_marker(config.state_dir / node).unlink(missing_ok=True)
        for i, port in enumerate(config.sentinels.values(), 1):
            (config.state_dir / f"sentinel-{i}.conf").write_text(render_sentinel(config, port))
    if config.https_port:
        ensure_certificate(config.state_dir)
    try:
        supervisord_conf = render_supervisord(config, sys.executable)
    except FileNotFoundError as missing:
        raise FarmError(
            f"'{missing}' is not installed. On Debian/Ubuntu: sudo apt-get install -y nginx-light redis-server "
            "prometheus (or PROMETHEUS_PORT=0: no Prometheus)"
        ) from None
    (config.state_dir / "supervisord.conf").write_text(supervisord_conf)
    (config.state_dir / "farm.json").write_text(config.model_dump_json())  # for the health loop and the console
    if config.prometheus_port:
        (config.state_dir / "prometheus.yml").write_text(render_prometheus(config))
    secret_conf = proxy_secret_path(config.state_dir)
    secret_conf.touch(0o600)
    secret_conf.write_text(proxy_secret_conf(proxy_secret(config.state_dir)))
    (config.state_dir / "nginx.conf").write_text(render_nginx_native(config, rotation.read(config.state_dir).down))
    check = subprocess.run(
        [require_binary("nginx"), "-t", "-q", "-p", f"{config.state_dir}/nginx",
         "-c", f"{config.state_dir}/nginx.conf"],
        capture_output=True, text=True, check=False,
    )
    if check.returncode != 0:
        raise FarmError(f"the rendered nginx config is invalid:\n{check.stderr}")
