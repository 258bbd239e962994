"""k8s/, checked without a cluster: rendered by the real `kubectl kustomize`, every object validated
strictly against the pinned Kubernetes version, checkov with zero failed checks, and the properties
failover relies on (probes, graceful shutdown, rollout, disruption budgets, network policies) and
monitoring does (scrape annotations, exporter sidecars, the `monitoring` namespace's reach)."""

import json
import re
import shlex
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from app.metrics import METRICS_PATH
from farmctl.config import PROJECT_ROOT
from farmctl.render import render_nginx_kubernetes

#: The Kubernetes version the manifests target: 1.30+ for the native preStop `sleep` action.
KUBERNETES_VERSION = "1.31.0"
K8S_DIR = PROJECT_ROOT / "k8s"
TOOLS = PROJECT_ROOT / ".venv-k8s" / "bin"
#: The only checkov checks the manifests may skip; each skip carries its reason in the manifest.
ALLOWED_SKIPS = {"CKV_K8S_43", "CKV_K8S_35"}
COMPONENTS = ("balancer", "web", "redis", "sentinel")
#: Where the team's Prometheus runs: its pods may scrape the farm's metrics ports.
MONITORING_NAMESPACE = "monitoring"
#: (from, to, port) - every connection to the farm's pods that the policies must allow; "monitoring"
#: is any pod of MONITORING_NAMESPACE: the metrics ports, and the balancer's public one as from anywhere.
EXPECTED_FLOWS = {
    ("balancer", "web", 8000),
    ("web", "redis", 6379), ("web", "sentinel", 26379),
    ("sentinel", "redis", 6379), ("sentinel", "sentinel", 26379),
    ("redis", "redis", 6379), ("redis", "sentinel", 26379),
    ("monitoring", "balancer", 8080), ("monitoring", "web", 8000), ("monitoring", "balancer", 9113),
    ("monitoring", "redis", 9121), ("monitoring", "sentinel", 9121),
}
#: The sidecar that turns each component's server into metrics (the web pods serve their own).
EXPORTERS = {"balancer": "nginx-exporter", "redis": "redis-exporter", "sentinel": "redis-exporter"}

Obj = dict[str, Any]


def tool(name: str) -> Path:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(f"{path} is missing: `make test` installs the Kubernetes tools (make .venv-k8s/.installed)")
    return path


def run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=120, check=False)


def kustomize(directory: Path, out: Path) -> Path:
    """`kubectl kustomize DIRECTORY` into `out`: exactly what `kubectl apply -k DIRECTORY` would send."""
    result = run(tool("kubectl"), "kustomize", directory)
    assert result.returncode == 0, result.stderr
    out.write_text(result.stdout)
    return out


def documents(rendered: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(rendered.read_text()) if doc]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `kubectl apply -k k8s/` would send."""
    return kustomize(K8S_DIR, tmp_path_factory.mktemp("k8s") / "webfarm.yaml")


@pytest.fixture(scope="module")
def objects(rendered: Path) -> list[Obj]:
    return documents(rendered)


@pytest.fixture(scope="module")
def find(objects: list[Obj]) -> Callable[[str, str], Obj]:
    def find(kind: str, name: str) -> Obj:
        matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
        assert len(matches) == 1, f"{kind}/{name}: {len(matches)} objects"
        return matches[0]
    return find


@pytest.fixture(scope="module")
def workloads(objects: list[Obj]) -> dict[str, Obj]:
    """The pod-owning objects, by their pods' app.kubernetes.io/component label."""
    found = {o["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: o
             for o in objects if o["kind"] in ("Deployment", "StatefulSet")}
    assert set(found) == set(COMPONENTS)
    return found


def containers(workload: Obj, init: bool = True) -> Iterator[Obj]:
    spec = workload["spec"]["template"]["spec"]
    yield from spec["containers"]
    if init:
        yield from spec.get("initContainers", [])


def container_port(workload: Obj) -> int:
    """The port of the component's own server: its first container's (a sidecar's is a metrics port)."""
    ports = [port["containerPort"] for port in next(containers(workload, init=False)).get("ports", [])]
    assert len(ports) == 1
    return int(ports[0])


def pod_ports(workload: Obj) -> set[int]:
    return {int(port["containerPort"]) for c in containers(workload, init=False) for port in c.get("ports", [])}


def container_named(workload: Obj, name: str) -> Obj:
    matches = [c for c in containers(workload, init=False) if c["name"] == name]
    assert len(matches) == 1, name
    return matches[0]


def flag(container: Obj, name: str) -> str:
    """The value of `--name=value` (or `-name=value`) among a container's args."""
    values = [arg.split("=", 1)[1] for arg in container.get("args", []) if arg.lstrip("-").split("=", 1)[0] == name]
    assert len(values) == 1, (container["name"], name)
    return str(values[0])


def nginx_servers(conf: str) -> list[str]:
    """The bodies of an nginx config's `server { ... }` blocks, comments removed."""
    text = re.sub(r"#[^\n]*", "", conf)
    servers = []
    for start in (m.end() for m in re.finditer(r"^\s*server\s*\{", text, re.M)):
        depth, end = 1, start
        while depth:
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        servers.append(text[start:end - 1])
    return servers


def stub_status_listens(conf: str) -> list[str]:
    """Where the config's one stub_status server listens ("host:port" each)."""
    servers = [server for server in nginx_servers(conf) if re.search(r"^\s*stub_status;", server, re.M)]
    assert len(servers) == 1, f"{len(servers)} servers answer stub_status"
    return re.findall(r"^\s*listen ([^\s;]+)", servers[0], re.M)


def config_map(objects: list[Obj], prefix: str) -> Obj:
    """A configMapGenerator's output (its name carries a content hash)."""
    matches = [o for o in objects if o["kind"] == "ConfigMap" and re.fullmatch(rf"{prefix}-[a-z0-9]{{10}}",
                                                                                 o["metadata"]["name"])]
    assert len(matches) == 1, prefix
    return matches[0]


def uvicorn_graceful_shutdown_s() -> int:
    """uvicorn's graceful shutdown in the image the web pods run unchanged: set by the Dockerfile's CMD
    or by app/__main__.py, which that CMD may run."""
    sources = [PROJECT_ROOT / "Dockerfile", PROJECT_ROOT / "app" / "__main__.py"]
    text = "\n".join(path.read_text() for path in sources if path.exists())
    values = {int(a or b) for a, b in
              re.findall(r'"--timeout-graceful-shutdown",\s*"(\d+)"|^GRACEFUL_SHUTDOWN_S\s*=\s*(\d+)', text, re.M)}
    assert len(values) == 1, values
    return values.pop()


def checkov(path: Path) -> dict[str, Any]:
    result = run(tool("checkov"), "-f", path, "--framework", "kubernetes", "--skip-download", "--compact",
                 "-o", "json")
    report = json.loads(result.stdout)
    assert isinstance(report, dict), result.stderr
    assert (result.returncode == 0) == (report["summary"]["failed"] == 0)
    return report


def test_kustomize_renders_the_whole_farm(objects: list[Obj]) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert {("Namespace", "webfarm"), ("Deployment", "web"), ("Deployment", "balancer"), ("StatefulSet", "redis"),
            ("StatefulSet", "sentinel"), ("HorizontalPodAutoscaler", "web"), ("Service", "webfarm")} <= kinds
    assert all(o["metadata"].get("namespace") == "webfarm" for o in objects if o["kind"] != "Namespace")


def test_validate_strict_accepts_every_object(rendered: Path, objects: list[Obj]) -> None:
    result = run(tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, rendered)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == len(objects), result.stdout


def test_validate_strict_rejects_an_unknown_field(find: Callable[[str, str], Obj], tmp_path: Path) -> None:
    # The same validator must fail on a typo, or the test above proves nothing.
    web = json.loads(json.dumps(find("Deployment", "web")))
    web["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["sleeep"] = {"seconds": 1}
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(web))
    result = run(tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, path)
    assert result.returncode != 0
    assert "sleeep" in result.stdout + result.stderr


def test_checkov_finds_no_failed_check(rendered: Path) -> None:
    report = checkov(rendered)
    failed = [(check["check_id"], check["resource"]) for check in report["results"]["failed_checks"]]
    assert failed == [], failed
    assert report["summary"]["passed"] > 100
    skipped = report["results"]["skipped_checks"]
    assert {check["check_id"] for check in skipped} <= ALLOWED_SKIPS
    assert all(len(check["check_result"]["suppress_comment"]) > 20 for check in skipped)


def test_checkov_fails_a_writable_root_filesystem(find: Callable[[str, str], Obj], tmp_path: Path) -> None:
    web = json.loads(json.dumps(find("Deployment", "web")))
    web["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    path = tmp_path / "writable.yaml"
    path.write_text(yaml.safe_dump(web))
    failed = {check["check_id"] for check in checkov(path)["results"]["failed_checks"]}
    # Alone, without the farm's NetworkPolicies, the pod also fails CKV2_K8S_6 (a pod no policy selects).
    assert {"CKV_K8S_22", "CKV2_K8S_6"} <= failed


def test_nginx_config_is_the_template_rendered() -> None:
    assert (K8S_DIR / "base" / "nginx.conf").read_text() == render_nginx_kubernetes(), \
        "k8s/base/nginx.conf is stale: regenerate it from nginx/nginx.conf.j2 with `make manifests`"


def test_nginx_config_balances_the_ready_web_pods(objects: list[Obj], find: Callable[[str, str], Obj],
                                                   workloads: dict[str, Obj]) -> None:
    conf = config_map(objects, "webfarm-nginx")["data"]["nginx.conf"]
    assert conf == (K8S_DIR / "base" / "nginx.conf").read_text()
    web_service = find("Service", "web")
    assert web_service["spec"]["clusterIP"] == "None"
    assert not web_service["spec"].get("publishNotReadyAddresses")
    assert web_service["spec"]["selector"] == workloads["web"]["spec"]["selector"]["matchLabels"]
    servers = re.findall(r"^\s*server (\S+) ([^;]*);", conf, re.M)
    assert servers == [(f"web.webfarm.svc.cluster.local:{web_service['spec']['ports'][0]['port']}",
                        "max_fails=1 fail_timeout=5s resolve")]
    assert web_service["spec"]["ports"][0]["port"] == container_port(workloads["web"])
    assert re.search(r"^\s*resolver kube-dns\.kube-system\.svc\.cluster\.local valid=2s", conf, re.M)
    public = "\n".join(server for server in nginx_servers(conf) if "stub_status" not in server)
    assert re.findall(r"^\s*listen (\S+);", public, re.M) == [f"0.0.0.0:{container_port(workloads['balancer'])}"]
    assert container_port(workloads["balancer"]) > 1024
    assert "pid /tmp/nginx.pid;" in conf
    assert all(path.startswith("/tmp/") for path in re.findall(r"_temp_path (\S+);", conf))
    nginx = next(containers(workloads["balancer"], init=False))
    assert nginx["image"] == "nginx:1.29-alpine"
    assert "/etc/webfarm-nginx/nginx.conf" in nginx["command"]


def test_web_probes_never_ask_redis_and_catch_a_hung_pod(workloads: dict[str, Obj]) -> None:
    """A Redis outage must neither restart nor unready every pod; a hung pod leaves the rotation
    within ~2 s and is restarted after ~10 s (issue #11, as farmctl/native/health.py does natively)."""
    web = next(containers(workloads["web"], init=False))
    ready, live = web["readinessProbe"], web["livenessProbe"]
    assert ready["httpGet"]["path"] == live["httpGet"]["path"] == "/healthz"
    assert ready["periodSeconds"] * ready["failureThreshold"] <= 2
    assert ready["timeoutSeconds"] <= 1
    assert live["periodSeconds"] * live["failureThreshold"] <= 10
    assert web["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert "exec" not in web["livenessProbe"]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert web[probe]["httpGet"]["port"] == web["ports"][0]["name"]


def test_web_drains_before_shutdown_and_finishes_in_flight_requests(workloads: dict[str, Obj]) -> None:
    pod = workloads["web"]["spec"]["template"]["spec"]
    web = pod["containers"][0]
    pause = web["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pause >= 5
    assert pod["terminationGracePeriodSeconds"] > pause + uvicorn_graceful_shutdown_s()


def test_web_rollout_never_goes_below_the_replica_count(workloads: dict[str, Obj]) -> None:
    web = workloads["web"]
    assert web["spec"]["replicas"] >= 3
    assert web["spec"]["strategy"]["type"] == "RollingUpdate"
    assert web["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert web["spec"]["strategy"]["rollingUpdate"]["maxSurge"] >= 1


def test_disruption_budgets_cover_every_component(objects: list[Obj], workloads: dict[str, Obj]) -> None:
    budgets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PodDisruptionBudget"}
    for component, workload in workloads.items():
        matching = [b for b in budgets.values()
                    if b["spec"]["selector"]["matchLabels"].items()
                    <= workload["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matching) == 1, component
        assert matching[0]["spec"].get("maxUnavailable") == 1
    assert workloads["sentinel"]["spec"]["replicas"] - budgets["sentinel"]["spec"]["maxUnavailable"] >= 2  # quorum


def test_autoscaler_scales_the_web_deployment_on_cpu(find: Callable[[str, str], Obj]) -> None:
    hpa = find("HorizontalPodAutoscaler", "web")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}
    assert hpa["spec"]["minReplicas"] >= 3
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]


def test_csrf_secret_comes_from_the_user_s_secret(objects: list[Obj], workloads: dict[str, Obj],
                                                  rendered: Path) -> None:
    env = {e["name"]: e for e in next(containers(workloads["web"], init=False))["env"]}
    assert env["CSRF_SECRET"] == {"name": "CSRF_SECRET",
                                  "valueFrom": {"secretKeyRef": {"name": "webfarm", "key": "CSRF_SECRET"}}}
    assert not [o for o in objects if o["kind"] == "Secret"]
    assert all("CSRF_SECRET" not in o["data"] for o in objects if o["kind"] == "ConfigMap")
    assert "webfarm-demo-only-change-me" not in rendered.read_text()


def test_proxy_secret_reaches_the_web_pods_and_nginx_from_the_user_s_secret(workloads: dict[str, Obj],
                                                                            rendered: Path) -> None:
    env = {e["name"]: e for e in next(containers(workloads["web"], init=False))["env"]}
    assert env["PROXY_SECRET"]["valueFrom"] == {"secretKeyRef": {"name": "webfarm", "key": "PROXY_SECRET"}}
    assert "FORWARDED_ALLOW_IPS" not in rendered.read_text()  # trust by secret, not by address
    balancer = workloads["balancer"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in balancer["volumes"]}
    assert volumes["webfarm-secret"]["secret"]["secretName"] == "webfarm"
    writer = next(c for c in balancer["initContainers"] if c["name"] == "proxy-secret")
    assert "/etc/nginx/secret/proxy-secret.conf" in writer["command"][-1]
    nginx_conf = (K8S_DIR / "base" / "nginx.conf").read_text()
    assert "include /etc/nginx/secret/proxy-secret.conf;" in nginx_conf
    nginx = next(c for c in balancer["containers"] if c["name"] == "nginx")
    assert {m["mountPath"] for m in nginx["volumeMounts"]} >= {"/etc/nginx/secret"}


def test_web_settings_follow_the_app_s_production_contract(objects: list[Obj], workloads: dict[str, Obj]) -> None:
    web = next(containers(workloads["web"], init=False))
    settings = config_map(objects, "webfarm")
    assert web["envFrom"] == [{"configMapRef": {"name": settings["metadata"]["name"]}}]
    data = settings["data"]
    assert data["ENVIRONMENT"] == "production"
    assert data["SESSION_BACKEND"] == "redis"
    assert data["DEMO_CONTROLS"] == "0"
    assert data["REDIS_SENTINEL_MASTER"] == "webfarm"
    assert data["KEY_PREFIX"]
    assert "REDIS_URL" not in data
    sentinels = workloads["sentinel"]
    port = container_port(sentinels)
    assert data["REDIS_SENTINELS"].split(",") == [
        f"{sentinels['metadata']['name']}-{i}.{sentinels['spec']['serviceName']}:{port}"
        for i in range(sentinels["spec"]["replicas"])]
    env = {e["name"]: e for e in web["env"]}
    assert env["INSTANCE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_images_are_pinned_like_compose_s(workloads: dict[str, Obj]) -> None:
    version = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["version"]
    compose = yaml.safe_load((PROJECT_ROOT / "compose.yaml").read_text())

    def default(service: str) -> str:  # compose.yaml's images are settings: ${NGINX_IMAGE:-nginx:1.29-alpine}
        return re.sub(r"^\$\{\w+:-(.+)\}$", r"\1", compose["services"][service]["image"])

    # Every long-running container, sidecars included (compose's Prometheus has no counterpart here:
    # the cluster's runs in its own namespace).
    expected = {("web", "web"): f"webfarm:{version}",
                ("balancer", "nginx"): default("nginx"), ("balancer", "nginx-exporter"): default("nginx-exporter"),
                ("redis", "redis"): default("redis"), ("redis", "redis-exporter"): default("redis-exporter"),
                ("sentinel", "sentinel"): default("redis"), ("sentinel", "redis-exporter"): default("redis-exporter")}
    assert {(component, container["name"]): container["image"] for component, workload in workloads.items()
            for container in containers(workload, init=False)} == expected
    for workload in workloads.values():
        for container in containers(workload):
            name, _, tag = container["image"].rpartition(":")
            assert name, container["image"]
            assert tag not in ("", "latest"), container["image"]
            assert not name.startswith(("bitnami/", "docker.io/bitnami")), container["image"]


def test_every_pod_runs_unprivileged_on_a_read_only_root(workloads: dict[str, Obj]) -> None:
    for component, workload in workloads.items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, component
        assert pod["securityContext"]["runAsUser"] >= 10000, component
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, component
        assert pod["automountServiceAccountToken"] is False, component
        for container in containers(workload):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert context["allowPrivilegeEscalation"] is False, container["name"]
            assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
            assert set(container["resources"]["requests"]) == set(container["resources"]["limits"]) \
                == {"cpu", "memory"}, container["name"]


def test_redis_keeps_sessions_on_volumes_with_aof(objects: list[Obj], workloads: dict[str, Obj]) -> None:
    redis = workloads["redis"]
    assert redis["spec"]["replicas"] >= 2
    claims = [claim["metadata"]["name"] for claim in redis["spec"]["volumeClaimTemplates"]]
    mounts = {m["name"]: m["mountPath"] for m in next(containers(redis))["volumeMounts"]}
    assert mounts[claims[0]] == "/data"
    scripts = config_map(objects, "webfarm-redis")["data"]
    start = shlex.split(scripts["start-redis.sh"], comments=True)
    assert {"--appendonly", "yes", "--appendfsync", "everysec", "--dir", "/data"} <= set(start)
    assert workloads["sentinel"]["spec"]["replicas"] == 3
    assert re.search(r"^sentinel monitor \$REDIS_SENTINEL_MASTER \$primary 6379 2$", scripts["start-sentinel.sh"],
                     re.M)
    for component in ("redis", "sentinel"):
        assert next(containers(workloads[component]))["command"] == ["sh", f"/scripts/start-{component}.sh"]


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are modelled here"
    return bool(selector.get("matchLabels", {}).items() <= labels.items())


#: A pod as the policies see it: its namespace and its labels.
Pod = tuple[str, dict[str, str]]


def peer_admits(peers: list[Obj] | None, pod: Pod | None, namespace: str) -> bool:
    """Does a from/to list of a policy in `namespace` admit `pod` (None: a peer outside the cluster)?"""
    if peers is None:
        return True
    assert not any("ipBlock" in peer for peer in peers), "ipBlock peers are not modelled here"
    if pod is None:
        return False
    pod_namespace, labels = pod
    # Without a namespaceSelector a peer is in the policy's own namespace; namespaces are told apart by
    # the label Kubernetes gives each, kubernetes.io/metadata.name.
    return any((selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": pod_namespace})
                if "namespaceSelector" in peer else pod_namespace == namespace)
               and selects(peer.get("podSelector", {}), labels) for peer in peers)


def port_admits(ports: list[Obj] | None, port: int) -> bool:
    return ports is None or any(p.get("protocol", "TCP") == "TCP" and p["port"] == port for p in ports)


def allowed(policies: list[Obj], direction: str, pod: Pod, peer: Pod | None, port: int) -> bool:
    """As Kubernetes decides: a pod that no policy of its namespace selects for `direction` is open."""
    namespace, labels = pod
    applying = [p for p in policies if p["metadata"]["namespace"] == namespace
                and selects(p["spec"]["podSelector"], labels) and direction.capitalize() in p["spec"]["policyTypes"]]
    key, peers = ("ingress", "from") if direction == "ingress" else ("egress", "to")
    return not applying or any(peer_admits(rule.get(peers), peer, namespace) and port_admits(rule.get("ports"), port)
                               for policy in applying for rule in policy["spec"].get(key, []))


def flow(policies: list[Obj], source: Pod, target: Pod, port: int) -> bool:
    return allowed(policies, "egress", source, target, port) and allowed(policies, "ingress", target, source, port)


@pytest.fixture(scope="module")
def policies(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if o["kind"] == "NetworkPolicy"]


@pytest.fixture(scope="module")
def pods(workloads: dict[str, Obj]) -> dict[str, Pod]:
    """Each component's pod, and "monitoring": a pod of the Prometheus namespace, whatever its labels."""
    found = {c: (w["metadata"]["namespace"], w["spec"]["template"]["metadata"]["labels"]) for c, w in workloads.items()}
    return found | {"monitoring": (MONITORING_NAMESPACE, {"app.kubernetes.io/name": "prometheus"})}


def test_network_policies_allow_exactly_the_farm_s_connections(policies: list[Obj], workloads: dict[str, Obj],
                                                                pods: dict[str, Pod]) -> None:
    default_deny = [p for p in policies if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"]
                    and "egress" not in p["spec"]]
    assert len(default_deny) == 1
    assert set(default_deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    # Every port any container declares, metrics ports included.
    ports = set().union(*(pod_ports(w) for w in workloads.values()))
    for source in pods:
        for target in COMPONENTS:
            for port in ports:
                assert flow(policies, pods[source], pods[target], port) == ((source, target, port) in EXPECTED_FLOWS), \
                    (source, target, port)
    # From outside the cluster or any other namespace: the balancer's port and nothing else.
    front_door = ("balancer", container_port(workloads["balancer"]))
    for outsider in (None, ("default", {"app.kubernetes.io/name": "prometheus"})):
        for target in COMPONENTS:
            for port in ports:
                assert allowed(policies, "ingress", pods[target], outsider, port) == ((target, port) == front_door), \
                    (outsider, target, port)
    # Every pod may ask the cluster DNS.
    dns = [rule for p in policies if p["spec"]["podSelector"] == {} for rule in p["spec"].get("egress", [])]
    assert any({"protocol": "UDP", "port": 53} in rule["ports"]
               and rule["to"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}
               for rule in dns)


def test_monitoring_reaches_only_the_ports_its_pods_are_scraped_on(policies: list[Obj], workloads: dict[str, Obj],
                                                                   pods: dict[str, Pod]) -> None:
    ports = set().union(*(pod_ports(w) for w in workloads.values()))
    elsewhere: Pod = ("default", pods["monitoring"][1])
    for component, workload in workloads.items():
        scraped = int(workload["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"])
        reached = {port for port in ports if flow(policies, pods["monitoring"], pods[component], port)}
        # Beyond what a pod of any namespace reaches (the balancer's public port): the scraped port only.
        public = {port for port in ports if flow(policies, elsewhere, pods[component], port)}
        assert reached - public == {scraped}, component
        assert scraped not in public, component
        # ...and the farm's pods reach nothing of that namespace's.
        assert not any(flow(policies, pods[component], pods["monitoring"], port) for port in ports), component


def test_every_pod_is_annotated_for_scraping_a_port_it_declares(workloads: dict[str, Obj]) -> None:
    for component, workload in workloads.items():
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true", component
        assert annotations.get("prometheus.io/path") == METRICS_PATH, component
        port = int(annotations["prometheus.io/port"])
        serving = [(c["name"], p.get("name")) for c in containers(workload, init=False) for p in c.get("ports", [])
                   if p["containerPort"] == port]
        # The web pods' metrics are the app's own (app/metrics.py); the others' come from their exporter.
        expected = (EXPORTERS[component], "metrics") if component in EXPORTERS else (component, "http")
        assert serving == [expected], component


def test_exporters_scrape_their_own_pod_over_loopback(workloads: dict[str, Obj]) -> None:
    status = stub_status_listens((K8S_DIR / "base" / "nginx.conf").read_text())
    for component, name in EXPORTERS.items():
        workload = workloads[component]
        exporter = container_named(workload, name)
        metrics = [p["containerPort"] for p in exporter["ports"] if p["name"] == "metrics"]
        assert flag(exporter, "web.listen-address") == f":{metrics[0]}", component
        if name == "nginx-exporter":
            target = urlsplit(flag(exporter, "nginx.scrape-uri"))
            # The very address nginx's stub_status server listens on, not just any loopback name.
            assert (target.scheme, target.path) == ("http", "/stub_status")
            assert [f"{target.hostname}:{target.port}"] == status
        else:
            env = {e["name"]: e for e in exporter.get("env", [])}
            target = urlsplit(env["REDIS_ADDR"]["value"])
            assert target.scheme == "redis"
            assert target.port == container_port(workload), component
            # Authenticated exactly as the server it scrapes asks (k8s/'s Redis asks for no password).
            server = {e["name"]: e for e in next(containers(workload, init=False)).get("env", [])}
            assert env.get("REDIS_PASSWORD") == server.get("REDIS_PASSWORD"), component
        assert target.hostname in ("127.0.0.1", "localhost"), (component, target.hostname)


def test_nginx_serves_stub_status_only_on_loopback(workloads: dict[str, Obj]) -> None:
    conf = (K8S_DIR / "base" / "nginx.conf").read_text()
    listens = stub_status_listens(conf)
    assert len(listens) == 1
    host, _, port = listens[0].rpartition(":")
    assert host == "127.0.0.1"
    # No other server shares its port (where `listen 0.0.0.0:PORT` would make it public), and no
    # container declares it: it is not part of the pod's network surface.
    others = [listen for server in nginx_servers(conf) if "stub_status" not in server
              for listen in re.findall(r"^\s*listen ([^\s;]+)", server, re.M)]
    assert others
    assert not [listen for listen in others if listen.endswith(f":{port}")], others
    assert int(port) not in pod_ports(workloads["balancer"])


# k8s/cluster/: the same farm with its sessions on a Redis Cluster (six nodes, three primaries).
CLUSTER_DIR = K8S_DIR / "cluster"
CLUSTER_SCRIPT = PROJECT_ROOT / "farmctl" / "redis-cluster.sh"
CLUSTER_COMPONENTS = ("balancer", "web", "redis", "redis-cluster-create")
#: (from, to, port) on a cluster: the nodes reach each other on the client port (replication) and the
#: cluster bus; the Job that makes the cluster reaches their client port; no Sentinel anywhere.
CLUSTER_FLOWS = {
    ("balancer", "web", 8000),
    ("web", "redis", 6379),
    ("redis", "redis", 6379), ("redis", "redis", 16379),
    ("redis-cluster-create", "redis", 6379),
    ("monitoring", "balancer", 8080), ("monitoring", "web", 8000), ("monitoring", "balancer", 9113),
    ("monitoring", "redis", 9121),
}


@pytest.fixture(scope="module")
def cluster_rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `kubectl apply -k k8s/cluster/` would send."""
    return kustomize(CLUSTER_DIR, tmp_path_factory.mktemp("k8s-cluster") / "webfarm-cluster.yaml")


@pytest.fixture(scope="module")
def cluster_objects(cluster_rendered: Path) -> list[Obj]:
    return documents(cluster_rendered)


@pytest.fixture(scope="module")
def cluster_workloads(cluster_objects: list[Obj]) -> dict[str, Obj]:
    """The pod-owning objects of the cluster overlay (the Job's too), by component."""
    found = {o["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: o
             for o in cluster_objects if o["kind"] in ("Deployment", "StatefulSet", "Job")}
    assert set(found) == set(CLUSTER_COMPONENTS)
    return found


def test_kustomize_renders_the_farm_on_a_redis_cluster_without_sentinels(
        objects: list[Obj], cluster_objects: list[Obj], cluster_workloads: dict[str, Obj]) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in cluster_objects}
    assert {("Namespace", "webfarm"), ("Deployment", "web"), ("Deployment", "balancer"), ("StatefulSet", "redis"),
            ("Job", "redis-cluster-create"), ("Service", "redis"), ("PodDisruptionBudget", "redis"),
            ("HorizontalPodAutoscaler", "web"), ("Service", "webfarm")} <= kinds
    assert not [name for _, name in kinds if "sentinel" in name]
    assert all(o["metadata"].get("namespace") == "webfarm" for o in cluster_objects if o["kind"] != "Namespace")
    assert all(o["metadata"]["labels"].get("app.kubernetes.io/part-of") == "webfarm" for o in cluster_objects)
    # The rest of the farm as k8s/ deploys it: the balancer the same, the web pods but for their settings.
    base = {(o["kind"], o["metadata"]["name"]): o for o in objects}

    def settings_unnamed(deployment: Obj) -> Obj:
        copy: Obj = json.loads(json.dumps(deployment))
        copy["spec"]["template"]["spec"]["containers"][0]["envFrom"] = []
        return copy

    assert cluster_workloads["balancer"] == base[("Deployment", "balancer")]
    assert settings_unnamed(cluster_workloads["web"]) == settings_unnamed(base[("Deployment", "web")])
    assert [o for o in cluster_objects if o["kind"] == "HorizontalPodAutoscaler"] == \
        [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]


def test_validate_strict_accepts_every_object_of_the_cluster_overlay(cluster_rendered: Path,
                                                                     cluster_objects: list[Obj]) -> None:
    result = run(tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, cluster_rendered)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == len(cluster_objects), result.stdout


def test_checkov_finds_no_failed_check_in_the_cluster_overlay(cluster_rendered: Path) -> None:
    report = checkov(cluster_rendered)
    failed = [(check["check_id"], check["resource"]) for check in report["results"]["failed_checks"]]
    assert failed == [], failed
    assert report["summary"]["passed"] > 100
    skipped = report["results"]["skipped_checks"]
    assert {check["check_id"] for check in skipped} <= ALLOWED_SKIPS
    assert all(len(check["check_result"]["suppress_comment"]) > 20 for check in skipped)


def test_cluster_overlay_runs_the_image_k8s_runs() -> None:
    """kustomize refuses to build k8s/cluster/ on k8s/ (its parent): the image is set in both."""
    images = [yaml.safe_load((directory / "kustomization.yaml").read_text())["images"]
              for directory in (K8S_DIR, CLUSTER_DIR)]
    assert images[0] == images[1]


def test_cluster_nodes_run_the_script_compose_runs(cluster_objects: list[Obj],
                                                   cluster_workloads: dict[str, Obj]) -> None:
    copy = CLUSTER_DIR / "redis" / CLUSTER_SCRIPT.name
    assert copy.read_text() == CLUSTER_SCRIPT.read_text(), \
        f"{copy.relative_to(PROJECT_ROOT)} is stale: cp {CLUSTER_SCRIPT.relative_to(PROJECT_ROOT)} {copy.parent}/"
    scripts = config_map(cluster_objects, "webfarm-redis")
    assert scripts["data"] == {CLUSTER_SCRIPT.name: CLUSTER_SCRIPT.read_text()}
    for component, mode in (("redis", "node"), ("redis-cluster-create", "create")):
        pod = cluster_workloads[component]["spec"]["template"]["spec"]
        container = next(containers(cluster_workloads[component], init=False))
        mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "scripts")
        assert container["command"] == ["sh", f"{mount}/{CLUSTER_SCRIPT.name}", mode], component
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["scripts"]["configMap"]["name"] == scripts["metadata"]["name"], component


def test_cluster_nodes_announce_their_stable_names_and_keep_their_state_on_volumes(
        cluster_workloads: dict[str, Obj], find: Callable[[str, str], Obj], cluster_objects: list[Obj]) -> None:
    nodes = cluster_workloads["redis"]
    assert nodes["spec"]["replicas"] == 6
    assert nodes["spec"]["podManagementPolicy"] == "Parallel"  # all answer before the Job makes the cluster
    service = next(o for o in cluster_objects if o["kind"] == "Service" and o["metadata"]["name"] ==
                   nodes["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    redis = next(containers(nodes, init=False))
    env = {e["name"]: e for e in redis["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # redis-N.redis: the pod's DNS name under the headless Service, resolvable from every pod of the namespace.
    assert env["NODE_HOSTNAME"]["value"] == f"$(POD_NAME).{service['metadata']['name']}"
    assert list(env).index("POD_NAME") < list(env).index("NODE_HOSTNAME")  # $(VAR) sees earlier variables only
    assert "REDIS_PASSWORD" not in env  # as the base's nodes: the NetworkPolicies are the gate
    assert {p["name"]: p["containerPort"] for p in redis["ports"]} == {"redis": 6379, "cluster-bus": 16379}
    mounts = {m["mountPath"]: m["name"] for m in redis["volumeMounts"]}
    assert mounts["/data"] == nodes["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]  # nodes.conf, AOF
    volumes = {v["name"]: v for v in nodes["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]  # lives as long as the pod: a restart in it is seen
    assert "cluster_state:ok" in " ".join(redis["readinessProbe"]["exec"]["command"])
    assert find("PodDisruptionBudget", "redis")["spec"]["maxUnavailable"] == 1


def test_web_pods_and_the_job_name_every_cluster_node(cluster_objects: list[Obj],
                                                      cluster_workloads: dict[str, Obj]) -> None:
    settings = config_map(cluster_objects, "webfarm")
    web = next(containers(cluster_workloads["web"], init=False))
    assert web["envFrom"] == [{"configMapRef": {"name": settings["metadata"]["name"]}}]
    nodes = cluster_workloads["redis"]
    name, service, port = nodes["metadata"]["name"], nodes["spec"]["serviceName"], container_port_named(nodes, "redis")
    assert settings["data"]["REDIS_CLUSTER_NODES"].split(",") == [
        f"{name}-{i}.{service}:{port}" for i in range(nodes["spec"]["replicas"])]
    assert settings["data"]["REDIS_SENTINELS"] == ""  # the app refuses both topologies at once
    assert "REDIS_URL" not in settings["data"]
    job = cluster_workloads["redis-cluster-create"]
    env = {e["name"]: e for e in next(containers(job, init=False))["env"]}
    assert env["CLUSTER_NODES"]["valueFrom"] == {"configMapKeyRef": {"name": settings["metadata"]["name"],
                                                                     "key": "REDIS_CLUSTER_NODES"}}
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
    assert job["spec"]["backoffLimit"] >= 1


def container_port_named(workload: Obj, name: str) -> int:
    return int(next(p["containerPort"] for c in containers(workload, init=False) for p in c.get("ports", [])
                    if p.get("name") == name))


def test_every_cluster_pod_runs_unprivileged_on_a_read_only_root(cluster_workloads: dict[str, Obj]) -> None:
    for component, workload in cluster_workloads.items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, component
        assert pod["securityContext"]["runAsUser"] >= 10000, component
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, component
        assert pod["automountServiceAccountToken"] is False, component
        for container in containers(workload):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert context["allowPrivilegeEscalation"] is False, container["name"]
            assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
            assert set(container["resources"]["requests"]) == set(container["resources"]["limits"]) \
                == {"cpu", "memory"}, container["name"]


def test_network_policies_allow_exactly_the_cluster_farm_s_connections(cluster_objects: list[Obj],
                                                                        cluster_workloads: dict[str, Obj]) -> None:
    policies = [o for o in cluster_objects if o["kind"] == "NetworkPolicy"]
    pods: dict[str, Pod] = {c: (w["metadata"]["namespace"], w["spec"]["template"]["metadata"]["labels"])
                            for c, w in cluster_workloads.items()}
    pods["monitoring"] = (MONITORING_NAMESPACE, {"app.kubernetes.io/name": "prometheus"})
    ports = set().union(*(pod_ports(w) for w in cluster_workloads.values()))
    assert 16379 in ports
    for source in pods:
        for target in CLUSTER_COMPONENTS:
            for port in ports:
                assert flow(policies, pods[source], pods[target], port) == ((source, target, port) in CLUSTER_FLOWS), \
                    (source, target, port)
    front_door = ("balancer", container_port(cluster_workloads["balancer"]))
    for outsider in (None, ("default", {"app.kubernetes.io/name": "prometheus"})):
        for target in CLUSTER_COMPONENTS:
            for port in ports:
                assert allowed(policies, "ingress", pods[target], outsider, port) == ((target, port) == front_door), \
                    (outsider, target, port)
