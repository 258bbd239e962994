"""The farm's Prometheus (monitoring/): its rendered config and rules pass promtool, and on a real
farm it scrapes every instance, the health loop, nginx's and Redis' exporters (and the Sentinels)
- the server-side request count per instance equals what was sent, an instance added by `make
scale` is scraped without a hand edit, a hung instance shows as out of the rotation within a scrape
or two, and a Redis failover shows in the Sentinels' view."""

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from farmctl.config import PROJECT_ROOT
from farmctl.docker.render import config_dir_of
from farmctl.lifecycle import open_farm
from farmctl.native.render import render_prometheus
from farmctl.render import SCRAPE_INTERVAL_S
from farmctl.runtime import Farm
from farmctl.wait import wait_until
from loadtest.serverside import Prometheus, prometheus_url
from tests.conftest import FarmFactory

pytestmark = [
    pytest.mark.farm,
    pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (`make test` installs it)"),
]
MONITORING = PROJECT_ROOT / "monitoring"


def promtool(*args: str, cwd: Path = MONITORING) -> str:
    result = subprocess.run(["promtool", *args], capture_output=True, text=True, check=False, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_rules_pass_their_unit_tests() -> None:
    """Each alert with input that fires it and input that must not (monitoring/rules_test.yml)."""
    promtool("check", "rules", "rules.yml")
    out = promtool("test", "rules", "rules_test.yml")
    assert "SUCCESS" in out


def test_a_broken_rule_fails_its_unit_test(tmp_path: Path) -> None:
    """The rule tests can fail: with the 5xx threshold raised tenfold, the alert test does."""
    rules = (MONITORING / "rules.yml").read_text()
    assert "> 0.05" in rules
    (tmp_path / "rules.yml").write_text(rules.replace("> 0.05", "> 0.5"))
    shutil.copy(MONITORING / "rules_test.yml", tmp_path)
    result = subprocess.run(["promtool", "test", "rules", "rules_test.yml"], capture_output=True, text=True,
                            check=False, cwd=tmp_path)
    assert result.returncode != 0
    assert "WebfarmHigh5xxRatio" in result.stdout + result.stderr


def query(farm: Farm, expr: str) -> dict[str, float]:
    """An instant query's result, by farm_instance (or farm_node, or job); PrometheusError for an
    answer that is not a success."""
    url = prometheus_url(farm.config)
    assert url is not None

    def key(labels: dict[str, str]) -> str:
        return labels.get("farm_instance") or labels.get("farm_node") or labels.get("job", "")

    return {key(labels): samples[0][1] for labels, samples in Prometheus(url).query(expr, time.time())}


@pytest.fixture(scope="module", params=["native", "docker"])
def watched_farm(request: pytest.FixtureRequest, farm_factory: FarmFactory) -> Farm:
    """A farm with its Prometheus: natively one of this module's; under Docker the shared one, whose
    monitoring profile is on."""
    if request.param == "docker":
        farm: Farm = request.getfixturevalue("docker_farm")
        return farm
    return farm_factory(3, spare=1, monitoring=True)


def test_the_rendered_config_passes_promtool(watched_farm: Farm, tmp_path: Path) -> None:
    if watched_farm.name == "docker":  # as farm-config wrote it, its rules and instances beside it
        promtool("check", "config", str(config_dir_of(watched_farm.config) / "prometheus.yml"))
        return
    (tmp_path / "prometheus.yml").write_text(render_prometheus(watched_farm.config))
    promtool("check", "config", str(tmp_path / "prometheus.yml"))


def test_prometheus_sees_every_instance_and_what_each_was_sent(watched_farm: Farm) -> None:
    farm = watched_farm
    assert wait_until(lambda: query(farm, 'up{job="webfarm"}') == {i.name: 1.0 for i in farm.config.web}, 15), \
        query(farm, "up")
    assert wait_until(lambda: query(farm, 'up{job="webfarm-health"}') == {"webfarm-health": 1.0}, 15)
    expr = 'sum by (farm_instance) (webfarm_http_requests_total{route="/api/me"})'
    sent = {inst.name: 10 * (i + 1) for i, inst in enumerate(farm.config.web)}
    before = query(farm, expr)
    for inst in farm.config.web:
        with httpx.Client(base_url=inst.url) as client:
            for _ in range(sent[inst.name]):
                client.get("/api/me")
    # The next scrapes carry them (every SCRAPE_INTERVAL_S).
    assert wait_until(lambda: {name: query(farm, expr).get(name, 0) - before.get(name, 0) for name in sent} == sent,
                      4 * SCRAPE_INTERVAL_S, interval_s=0.5), (query(farm, expr), before, sent)
    # The recording rules evaluate: a per-instance rate and p99 for each instance.
    assert wait_until(lambda: set(query(farm, "farm_instance:webfarm_http_requests:rate1m")) == set(sent),
                      4 * SCRAPE_INTERVAL_S, interval_s=0.5)


def test_the_balancer_and_the_store_are_scraped_through_their_exporters(watched_farm: Farm) -> None:
    farm = watched_farm
    assert wait_until(lambda: query(farm, 'up{job=~"nginx|redis"}') == {"nginx": 1.0, "redis": 1.0}, 15), \
        query(farm, "up")
    assert query(farm, 'redis_up{farm_node="redis"}') == {"redis": 1.0}
    expr = "nginx_http_requests_total"
    before = query(farm, expr)["nginx"]
    with httpx.Client(base_url=farm.config.balancer_url) as client:
        for _ in range(20):
            client.get("/healthz")
    # stub_status counts every request, the exporter's and the health loop's included: at least these.
    assert wait_until(lambda: query(farm, expr)["nginx"] - before >= 20, 4 * SCRAPE_INTERVAL_S, interval_s=0.5)


def test_a_hung_instance_shows_out_of_the_rotation_within_a_scrape(watched_farm: Farm) -> None:
    farm = watched_farm
    farm.pause("web2")
    try:
        paused = time.monotonic()
        assert wait_until(lambda: query(farm, "webfarm_health_in_rotation == 0") == {"web2": 0.0},
                          10, interval_s=0.1), query(farm, "webfarm_health_in_rotation")
        seen = time.monotonic() - paused
        held = query(farm, 'webfarm_health_held_out{reason="timeout"} == 1')
    finally:
        farm.resume("web2")
    print(f"hung web2: out of the rotation in Prometheus after {seen:.1f} s")
    assert held == {"web2": 1.0}
    assert seen < 1.5 + 2 * SCRAPE_INTERVAL_S  # the health loop's ~1.5 s, then the next scrape
    assert wait_until(lambda: query(farm, "webfarm_health_in_rotation == 0") == {}, 15, interval_s=0.2)


def test_the_sentinels_view_shows_a_failover(farm_factory: FarmFactory) -> None:
    """REDIS=sentinel: each Sentinel is scraped; once the primary is SIGKILLed and replaced, their
    view names a second address within the alert's window (WebfarmRedisFailover's expression)."""
    farm = farm_factory(2, redis_mode="sentinel", monitoring=True)
    addresses = 'count by (master_name) (count by (master_name, master_address) ' \
                '(count_over_time(redis_sentinel_master_status{job="redis"}[10m])))'
    assert wait_until(lambda: len(query(farm, 'redis_sentinel_master_status{job="redis"}')) == 3, 15), \
        query(farm, 'up{job="redis"}')
    assert query(farm, addresses) == {"": 1.0}
    old = farm.redis_primary()
    farm.kill(old or "redis", "KILL")
    assert wait_until(lambda: farm.redis_primary() not in (None, old), 30)
    assert wait_until(lambda: query(farm, addresses) == {"": 2.0}, 5 * SCRAPE_INTERVAL_S, interval_s=0.5), \
        query(farm, 'redis_sentinel_master_status{job="redis"}')
    farm.wait_healthy()


def scraped(farm: Farm) -> set[str]:
    """The instances Prometheus scrapes now (its active targets of job webfarm)."""
    response = httpx.get(f"http://127.0.0.1:{farm.config.prometheus_port}/api/v1/targets", timeout=5)
    return {t["labels"]["farm_instance"] for t in response.json()["data"]["activeTargets"]
            if t["labels"]["job"] == "webfarm"}


def test_an_instance_added_by_scale_is_scraped_without_a_hand_edit(watched_farm: Farm) -> None:
    bigger = open_farm(watched_farm.config.replace(instances=4), watched_farm.name)
    bigger.up()
    try:
        assert wait_until(lambda: query(bigger, 'up{job="webfarm"}').get("web4") == 1.0,
                          5 * SCRAPE_INTERVAL_S, interval_s=0.5), query(bigger, "up")
    finally:
        watched_farm.up()  # back to 3
    assert wait_until(lambda: scraped(watched_farm) == {"web1", "web2", "web3"}, 10, interval_s=0.2), \
        scraped(watched_farm)
