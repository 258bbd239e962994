"""What every runtime's config files share: the template environment, the nginx template and its
common values, the Sentinel template; and the Kubernetes render (k8s/base/nginx.conf), which has
no runtime package of its own. Each runtime package renders the rest (`native/render.py`, ...)."""

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from app.config import LOOPBACK_HOSTS, Settings
from farmctl.config import APP_KEEPALIVE_S, NGINX_KEEPALIVE_S, PROJECT_ROOT, Instance

NGINX_TEMPLATE = PROJECT_ROOT / "nginx" / "nginx.conf.j2"
SENTINEL_TEMPLATE = Path(__file__).parent / "sentinel.conf.j2"
PROMETHEUS_TEMPLATE = PROJECT_ROOT / "monitoring" / "prometheus.yml.j2"
PROMETHEUS_RULES = PROJECT_ROOT / "monitoring" / "rules.yml"
#: How often the farm's Prometheus scrapes (and evaluates its rules).
SCRAPE_INTERVAL_S = 2
PROXY_SECRET_CONF = "proxy-secret.conf"  # noqa: S105 - a file name


def write_whole(path: Path, text: str) -> None:
    """Write, then rename: nothing ever reads half of the file (a reader that takes no lock, or a
    process in another container)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def template_env(directory: Path) -> Environment:
    return Environment(loader=FileSystemLoader(directory), undefined=StrictUndefined,
                       keep_trailing_newline=True, autoescape=False)  # noqa: S701 - config files, not HTML


def render_template(template: Path, **values: object) -> str:
    return template_env(template.parent).get_template(template.name).render(**values)


def render_nginx(runtime: str, **values: object) -> str:
    """nginx/nginx.conf.j2 for `runtime`, with the timeouts every runtime shares; `status_port`:
    a server of nginx's stub_status for the farm's exporter, on `status_host` (loopback by default);
    `console_port`: the live console's (console/) on loopback, at /console/."""
    values.setdefault("status_port", 0)
    values.setdefault("console_port", 0)
    values.setdefault("status_host", "127.0.0.1")
    return render_template(
        NGINX_TEMPLATE,
        runtime=runtime,
        app_keepalive_s=APP_KEEPALIVE_S,
        nginx_keepalive_s=NGINX_KEEPALIVE_S,
        next_upstream_tries=3,
        next_upstream_timeout_s=5,
        read_timeout_s=2,
        # What every instance answers within, whatever Redis does (REQUEST_TIMEOUT_S); nginx's read
        # timeout must be longer, or a slow store would look like a hung instance.
        app_deadline_s=Settings.model_fields["request_timeout_s"].default,
        **values,
    )


def render_nginx_in_a_container(runtime: str, instances: list[Instance], balance: str, proxy_secret_conf: str,
                                allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS, down: frozenset[str] = frozenset(),
                                **values: object) -> str:
    """What the Docker and Kubernetes configs share: port 8080 on every interface, HTTP only (TLS
    terminates in front), static files from /srv/static; the names served, `allowed_hosts`, are the
    loopback ones unless the deployment names its own."""
    return render_nginx(runtime, instances=instances, down=down, balance=balance, allowed_hosts=allowed_hosts,
                        listen_host="0.0.0.0", http_port=8080, https_port=None, static_dir="/srv/static",
                        proxy_secret_conf=proxy_secret_conf, **values)


def render_prometheus_config(*, farm: str, rules: str, health_target: str, nginx_exporter_target: str,
                             redis_exporter_target: str, prometheus_target: str, redis_targets: dict[str, str],
                             web_targets: list[tuple[str, str]] | None = None, web_targets_file: str = "") -> str:
    """monitoring/prometheus.yml.j2 with every target as the runtime reaches it ("host:port"; Redis
    nodes as the exporter's redis:// targets): the instances listed (`web_targets`, name and
    address), or in a file the runtime keeps (`web_targets_file`, Prometheus' file-based discovery)."""
    return render_template(PROMETHEUS_TEMPLATE, farm=farm, rules=rules, scrape_interval_s=SCRAPE_INTERVAL_S,
                           web_targets=web_targets or [], web_targets_file=web_targets_file,
                           health_target=health_target, nginx_exporter_target=nginx_exporter_target,
                           redis_exporter_target=redis_exporter_target, prometheus_target=prometheus_target,
                           redis_targets=redis_targets)


def render_nginx_kubernetes(namespace: str = "webfarm", service: str = "web", port: int = 8000,
                            cluster_domain: str = "cluster.local",
                            resolver: str = "kube-dns.kube-system.svc.cluster.local",
                            allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS, status_port: int = 8081) -> str:
    """The balancer's config for k8s/ (committed as k8s/base/nginx.conf): one upstream name, the web
    pods' headless Service, which nginx re-resolves through the cluster DNS, so pods join and leave
    the rotation with their readiness. Unprivileged: port 8080, pid and temp files under /tmp; the
    stub_status on 127.0.0.1:`status_port`, for the exporter beside nginx in its pod only."""
    web = [Instance(service, f"{service}.{namespace}.svc.{cluster_domain}", port)]
    # The proxy secret's include is written at the pod's start from the Secret (k8s/base/balancer.yaml).
    return render_nginx_in_a_container("kubernetes", web, "round_robin", f"/etc/nginx/secret/{PROXY_SECRET_CONF}",
                                       allowed_hosts, resolver=resolver, status_port=status_port)
