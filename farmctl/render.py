"""Render the farm's config files from their templates."""

import getpass
import os
import shutil
from collections.abc import Collection, Iterator
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from app.config import Settings
from farmctl.config import (
    APP_KEEPALIVE_S,
    NGINX_KEEPALIVE_S,
    PROJECT_ROOT,
    SENTINEL_MASTER,
    FarmConfig,
    Instance,
)
from farmctl.secret import csrf_secret, proxy_secret
from farmctl.tls import certificate_paths

NGINX_TEMPLATE = PROJECT_ROOT / "nginx" / "nginx.conf.j2"
DOCKER_INSTANCES = 3  # web1..web3, as declared in compose.yaml
#: Where compose.yaml's farm-config service writes what it renders, as nginx and the Sentinels mount it.
DOCKER_CONFIG_DIR = "/etc/webfarm"
PROXY_SECRET_CONF = "proxy-secret.conf"  # noqa: S105 - a file name
#: The Sentinel services of compose.yaml (profile `sentinel`), each on Sentinel's default port.
DOCKER_SENTINEL_NAMES = ("sentinel1", "sentinel2", "sentinel3")
DOCKER_SENTINEL_PORT = 26379


def _env(directory: Path) -> Environment:
    return Environment(loader=FileSystemLoader(directory), undefined=StrictUndefined,
                       keep_trailing_newline=True, autoescape=False)  # noqa: S701 - config files, not HTML


def _nginx_common() -> dict[str, object]:
    return {
        "app_keepalive_s": APP_KEEPALIVE_S,
        "nginx_keepalive_s": NGINX_KEEPALIVE_S,
        "next_upstream_tries": 3,
        "next_upstream_timeout_s": 5,
        "read_timeout_s": 2,
        # What every instance answers within, whatever Redis does (REQUEST_TIMEOUT_S); nginx's read
        # timeout must be longer, or a slow store would look like a hung instance.
        "app_deadline_s": Settings.model_fields["request_timeout_s"].default,
    }


def render_nginx_native(config: FarmConfig, down: Collection[str] = ()) -> str:
    """The native config; instances in `down` are out of rotation (farmctl/rotation.py)."""
    return _env(NGINX_TEMPLATE.parent).get_template(NGINX_TEMPLATE.name).render(
        runtime="native",
        instances=config.web,
        down=set(down),
        balance=config.balance,
        listen_host="127.0.0.1",
        http_port=config.http_port,
        https_port=config.https_port,
        tls_cert=certificate_paths(config.state_dir)[0],
        tls_key=certificate_paths(config.state_dir)[1],
        proxy_secret_conf=proxy_secret_path(config.state_dir),
        state_dir=config.state_dir,
        static_dir=PROJECT_ROOT / "app" / "static",
        # nginx started by root drops its workers to `nobody`, who cannot read a private state dir.
        run_as=getpass.getuser() if os.geteuid() == 0 else None,
        **_nginx_common(),
    )


def _render_nginx_in_a_container(runtime: str, instances: list[Instance], balance: str, proxy_secret_conf: str,
                                 **values: object) -> str:
    """What the Docker and Kubernetes configs share: port 8080 on every interface, HTTP only (TLS
    terminates in front), static files from /srv/static."""
    return _env(NGINX_TEMPLATE.parent).get_template(NGINX_TEMPLATE.name).render(
        runtime=runtime, instances=instances, down=set(), balance=balance, listen_host="0.0.0.0",
        http_port=8080, https_port=None, static_dir="/srv/static", proxy_secret_conf=proxy_secret_conf,
        **values, **_nginx_common(),
    )


def render_nginx_docker(instances: int = DOCKER_INSTANCES, balance: str = "round_robin") -> str:
    web = [Instance(f"web{i}", f"web{i}", 8000) for i in range(1, instances + 1)]
    return _render_nginx_in_a_container("docker", web, balance, f"{DOCKER_CONFIG_DIR}/{PROXY_SECRET_CONF}")


def proxy_secret_path(state_dir: Path) -> Path:
    """Where the native nginx finds the directive that adds the proxy secret (farmctl.secret)."""
    return state_dir / "nginx" / PROXY_SECRET_CONF


def instance_env(config: FarmConfig, inst: Instance) -> Iterator[tuple[str, str]]:
    """The environment of one native instance: a demo, with the farm's own CSRF and proxy secrets."""
    yield "INSTANCE_NAME", inst.name
    yield "ENVIRONMENT", "demo"
    yield "CSRF_SECRET", csrf_secret(config.state_dir)
    yield "PROXY_SECRET", proxy_secret(config.state_dir)
    yield "REDIS_URL", config.redis_url
    if config.sentinel:
        yield "REDIS_SENTINELS", config.sentinel_addresses
        yield "REDIS_SENTINEL_MASTER", SENTINEL_MASTER
    yield "SESSION_BACKEND", config.session_backend
    yield "KEY_PREFIX", config.key_prefix
    yield "DEMO_CONTROLS", "1" if config.demo_controls else "0"
    yield "PYTHONUNBUFFERED", "1"
    yield from config.extra_env.items()


def require_binary(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if path is None:
        raise FileNotFoundError(name)
    return path


def render_supervisord(config: FarmConfig, python: str) -> str:
    return _env(Path(__file__).parent).get_template("supervisord.conf.j2").render(
        state_dir=config.state_dir,
        root=PROJECT_ROOT,
        python=python,
        redis_server=require_binary("redis-server"),
        nginx=require_binary("nginx"),
        redis_port=config.redis_port,
        redis_nodes=config.redis_nodes,
        sentinels=config.sentinels,
        instances=config.web,
        env=lambda inst: instance_env(config, inst),
    )


def render_sentinel(config: FarmConfig, port: int) -> str:
    """The initial config of one native Sentinel; it rewrites the file itself from then on."""
    return _env(Path(__file__).parent).get_template("sentinel.conf.j2").render(
        runtime="native",
        port=port,
        state_dir=config.state_dir,
        master=SENTINEL_MASTER,
        primary_host="127.0.0.1",
        primary_port=config.redis_port,
        replica_host="127.0.0.1",
        replica_port=config.replica_port,
    )


def render_sentinel_docker(name: str) -> str:
    """The initial config of the Sentinel service `name` of compose.yaml, which copies it to a writable
    place at its first start (Sentinel rewrites it). Services are known by name: their addresses change."""
    return _env(Path(__file__).parent).get_template("sentinel.conf.j2").render(
        runtime="docker",
        port=DOCKER_SENTINEL_PORT,
        announce=name,
        master=SENTINEL_MASTER,
        primary_host="redis",
        primary_port=6379,
    )


def render_nginx_kubernetes(namespace: str = "webfarm", service: str = "web", port: int = 8000,
                            cluster_domain: str = "cluster.local",
                            resolver: str = "kube-dns.kube-system.svc.cluster.local") -> str:
    """The balancer's config for k8s/ (committed as k8s/base/nginx.conf): one upstream name, the web
    pods' headless Service, which nginx re-resolves through the cluster DNS, so pods join and leave
    the rotation with their readiness. Unprivileged: port 8080, pid and temp files under /tmp."""
    web = [Instance(service, f"{service}.{namespace}.svc.{cluster_domain}", port)]
    # The proxy secret's include is written at the pod's start from the Secret (k8s/base/balancer.yaml).
    return _render_nginx_in_a_container("kubernetes", web, "round_robin", f"/etc/nginx/secret/{PROXY_SECRET_CONF}",
                                        resolver=resolver)
