"""k8s/, checked without a cluster: rendered by the real `kubectl kustomize`, every object validated
strictly against the pinned Kubernetes version, checkov with zero failed checks, and the properties
failover relies on (probes, graceful shutdown, rollout, disruption budgets, network policies)."""

import json
import re
import shlex
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from farmctl.config import PROJECT_ROOT
from farmctl.render import render_nginx_kubernetes

#: The Kubernetes version the manifests target: 1.30+ for the native preStop `sleep` action.
KUBERNETES_VERSION = "1.31.0"
K8S_DIR = PROJECT_ROOT / "k8s"
TOOLS = PROJECT_ROOT / ".venv-k8s" / "bin"
#: The only checkov checks the manifests may skip; each skip carries its reason in the manifest.
ALLOWED_SKIPS = {"CKV_K8S_43", "CKV_K8S_35"}
COMPONENTS = ("balancer", "web", "redis", "sentinel")
#: (from, to, port) - every connection between the farm's pods that the policies must allow.
EXPECTED_FLOWS = {
    ("balancer", "web", 8000),
    ("web", "redis", 6379), ("web", "sentinel", 26379),
    ("sentinel", "redis", 6379), ("sentinel", "sentinel", 26379),
    ("redis", "redis", 6379), ("redis", "sentinel", 26379),
}

Obj = dict[str, Any]


def tool(name: str) -> Path:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(f"{path} is missing: `make test` installs the Kubernetes tools (make .venv-k8s/.installed)")
    return path


def run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`kubectl kustomize k8s/`, exactly what `kubectl apply -k k8s/` would send."""
    result = run(tool("kubectl"), "kustomize", K8S_DIR)
    assert result.returncode == 0, result.stderr
    path = tmp_path_factory.mktemp("k8s") / "webfarm.yaml"
    path.write_text(result.stdout)
    return path


@pytest.fixture(scope="module")
def objects(rendered: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(rendered.read_text()) if doc]


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
    ports = [port["containerPort"] for c in containers(workload, init=False) for port in c.get("ports", [])]
    assert len(ports) == 1
    return int(ports[0])


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
    assert re.findall(r"^\s*listen (\S+);", conf, re.M) == [f"0.0.0.0:{container_port(workloads['balancer'])}"]
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

    def default(image: str) -> str:  # compose.yaml's images are settings: ${NGINX_IMAGE:-nginx:1.29-alpine}
        return re.sub(r"^\$\{\w+:-(.+)\}$", r"\1", image)

    expected = {"web": f"webfarm:{version}", "balancer": default(compose["services"]["nginx"]["image"]),
                "redis": default(compose["services"]["redis"]["image"]),
                "sentinel": default(compose["services"]["redis"]["image"])}
    for component, workload in workloads.items():
        assert next(containers(workload, init=False))["image"] == expected[component]
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


def peer_admits(peers: list[Obj] | None, labels: dict[str, str] | None) -> bool:
    """Does a rule's from/to list admit a pod of this namespace with `labels` (None: outside the cluster)?"""
    if peers is None:
        return True
    # A peer with a namespaceSelector names other namespaces here (kube-system's DNS only).
    return labels is not None and any("namespaceSelector" not in peer and "ipBlock" not in peer
                                      and selects(peer["podSelector"], labels) for peer in peers)


def port_admits(ports: list[Obj] | None, port: int) -> bool:
    return ports is None or any(p.get("protocol", "TCP") == "TCP" and p["port"] == port for p in ports)


def allowed(policies: list[Obj], direction: str, pod: dict[str, str], peer: dict[str, str] | None,
            port: int) -> bool:
    applying = [p for p in policies if selects(p["spec"]["podSelector"], pod)
                and direction.capitalize() in p["spec"]["policyTypes"]]
    key, peers = ("ingress", "from") if direction == "ingress" else ("egress", "to")
    return any(peer_admits(rule.get(peers), peer) and port_admits(rule.get("ports"), port)
               for policy in applying for rule in policy["spec"].get(key, []))


def test_network_policies_allow_exactly_the_farm_s_connections(objects: list[Obj],
                                                                workloads: dict[str, Obj]) -> None:
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    default_deny = [p for p in policies if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"]
                    and "egress" not in p["spec"]]
    assert len(default_deny) == 1
    assert set(default_deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    labels = {c: w["spec"]["template"]["metadata"]["labels"] for c, w in workloads.items()}
    ports = {c: container_port(w) for c, w in workloads.items()}
    for source in COMPONENTS:
        for target in COMPONENTS:
            for port in set(ports.values()):
                flow = allowed(policies, "egress", labels[source], labels[target], port) \
                    and allowed(policies, "ingress", labels[target], labels[source], port)
                assert flow == ((source, target, port) in EXPECTED_FLOWS), (source, target, port)
    # From outside the farm: the balancer's port and nothing else.
    for target in COMPONENTS:
        assert allowed(policies, "ingress", labels[target], None, ports[target]) == (target == "balancer"), target
    # Every pod may ask the cluster DNS.
    dns = [rule for p in policies if p["spec"]["podSelector"] == {} for rule in p["spec"].get("egress", [])]
    assert any({"protocol": "UDP", "port": 53} in rule["ports"]
               and rule["to"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}
               for rule in dns)
