"""The server-side view of a load test (loadtest.serverside): Prometheus' answers parsed as recorded
from a real run, and on a real farm with its Prometheus the exact count of what each instance
answered - across a SIGKILL and restart of one, which resets its counters."""

import math
import shutil
import time

import httpx
import pytest

from farmctl.config import FarmConfig
from farmctl.ports import free_port_block
from farmctl.runtime import Farm
from farmctl.wait import wait_until
from loadtest.ledger import Ledger
from loadtest.report import summarize, verdict_table
from loadtest.serverside import (
    Prometheus,
    PrometheusError,
    by_instance,
    counted,
    observe,
    on_grid,
    parse_series,
    prometheus_url,
)
from tests.conftest import FarmFactory

#: From `make loadtest USERS=8 DURATION=25s` (web1 SIGKILLed at +15 s, back at +18.6 s): P99 over the
#: run for web1 (no figure before its series had two samples, none after the kill - one value made
#: NaN, as histogram_quantile answers for a window of no requests), and web1's raw POST counters.
STARTED, STOPPED = 1796202239.7756789, 1796202263.9430647
P99_ANSWER = ('{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"farm_instance":"web1"},'
              '"values":[[1796202243.776,"0.4609644874899108"],[1796202245.776,"0.4450000000000003"],'
              '[1796202247.776,"0.009149999999999991"],[1796202249.776,"NaN"],'
              '[1796202251.776,"0.004787499999999998"],[1796202253.776,"0.00247"],'
              '[1796202255.776,"0.00247625"],[1796202257.776,"0.002473"]]}]}}')
RAW_ANSWER = ('{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"__name__":'
              '"webfarm_http_requests_total","code":"200","farm_instance":"web1","instance":"127.0.0.1:8001",'
              '"job":"webfarm","method":"POST","route":"(unrouted)"},"values":[[1796202242.059,"5"],'
              '[1796202244.059,"8"],[1796202246.059,"10"],[1796202248.059,"12"],[1796202250.059,"13"],'
              '[1796202252.059,"16"],[1796202254.059,"16"],[1796202262.059,"1"],[1796202264.059,"2"],'
              '[1796202266.059,"2"]]},{"metric":{"__name__":"webfarm_http_requests_total","code":"201",'
              '"farm_instance":"web1","instance":"127.0.0.1:8001","job":"webfarm","method":"POST",'
              '"route":"(unrouted)"},"values":[[1796202240.059,"2"],[1796202242.059,"2"],[1796202244.059,"2"],'
              '[1796202246.059,"2"],[1796202248.059,"2"],[1796202250.059,"2"],[1796202252.059,"2"],'
              '[1796202254.059,"2"]]}]}}')
ERROR_ANSWER = ('{"status":"error","errorType":"bad_data","error":"invalid parameter \\"query\\": 1:11: parse '
                'error: missing unit character in duration"}')


def test_parse_series_puts_a_range_answer_on_the_run_grid_with_gaps() -> None:
    [(labels, samples)] = parse_series(P99_ANSWER)
    assert labels == {"farm_instance": "web1"}
    grid = on_grid(by_instance([(labels, samples)])["web1"], STARTED, STOPPED, 2.0)
    assert len(grid) == 13  # 0, 2, ... 24 s
    assert [i for i, v in enumerate(grid) if math.isfinite(v)] == [2, 3, 4, 6, 7, 8, 9]
    assert grid[2] == pytest.approx(0.46096, rel=1e-4)


def test_counted_is_exact_across_a_restart() -> None:
    """The restart (16, then 1) counts from 0 again: 18 POSTs answered 200, 2 sign-ups answered 201;
    a sample at or before `since` is the baseline, not counted."""
    (_, ok), (_, created) = parse_series(RAW_ANSWER)
    assert counted(ok, STARTED) == 18
    assert counted(created, STARTED) == 2
    assert counted(ok, 1796202250.059) == 3 + 1 + 1
    assert counted(created, 1796202254.059) == 0


def test_parse_series_raises_prometheus_error_on_an_error_answer() -> None:
    with pytest.raises(PrometheusError, match="parse error"):
        parse_series(ERROR_ANSWER)
    with pytest.raises(PrometheusError, match="not an answer"):
        parse_series("<html>502</html>")


def test_observe_a_farm_without_prometheus_says_so_and_the_report_goes_on() -> None:
    view = observe(FarmConfig(prometheus_port=0), STARTED, STOPPED)
    assert not view.summary.reachable
    assert view.summary.prometheus is None
    assert view.rate == view.p99_ms == {}
    ledger = Ledger(started_at=STARTED, stopped_at=STOPPED)
    table = verdict_table(summarize(ledger, 1, 3, server_side=view.summary))
    assert "server side       none: the farm has no Prometheus (prometheus_port=0)" in table


def test_observe_a_prometheus_that_does_not_answer_is_unreachable_not_an_error() -> None:
    port = free_port_block(1)  # nothing listens there
    view = observe(FarmConfig(prometheus_port=port), STARTED, STOPPED)
    assert not view.summary.reachable
    assert view.summary.prometheus == f"http://127.0.0.1:{port}"
    assert "does not answer" in view.summary.note


@pytest.fixture(scope="module")
def watched_farm(farm_factory: FarmFactory) -> Farm:
    return farm_factory(2, monitoring=True)


def send(farm: Farm, counts: dict[str, int]) -> None:
    """GET /api/me (401: no session) straight to each instance, `counts[name]` times."""
    for inst in farm.config.web:
        with httpx.Client(base_url=inst.url, timeout=5) as client:
            for _ in range(counts.get(inst.name, 0)):
                client.get("/api/me")


@pytest.mark.farm
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed (`make test` installs it)")
def test_observe_counts_what_each_instance_answered_across_a_kill(watched_farm: Farm) -> None:
    farm = watched_farm
    url = prometheus_url(farm.config)
    assert url is not None
    prometheus = Prometheus(url)
    assert wait_until(lambda: {labels["farm_instance"]: s[0][1] for labels, s in
                               prometheus.query('up{job="webfarm"}', time.time())} == {"web1": 1, "web2": 1}, 15)
    # A series' first sample is its start, not an increase: the run's routes are scraped once before it.
    send(farm, {"web1": 1, "web2": 1})
    warmed = time.time()
    assert wait_until(lambda: prometheus.scraped_since(warmed), 6, interval_s=0.25)
    started = time.time()
    send(farm, {"web1": 30, "web2": 20})
    sent = time.time()
    # Stored before the kill: what a killed instance answered since its last scrape dies with it.
    assert wait_until(lambda: prometheus.scraped_since(sent), 6, interval_s=0.25)
    farm.kill("web1", "KILL")
    assert wait_until(lambda: farm.is_serving("web1"), 15)
    send(farm, {"web1": 10, "web2": 5})  # fewer than before: web1's counter ends lower than it was
    view = observe(farm.config, started, time.time())
    server = view.summary
    assert server.reachable, server.note
    assert {name: c.requests for name, c in server.instances.items()} == {"web1": 40, "web2": 25}
    assert server.requests == 65
    assert {name: c.errors_5xx for name, c in server.instances.items()} == {"web1": 0, "web2": 0}
    assert set(view.rate) == {"web1", "web2"}
    assert all(len(values) == len(view.times) for values in view.rate.values())
    assert all(max((v for v in values if math.isfinite(v)), default=0) > 0 for values in view.rate.values())
    for name in ("web1", "web2"):
        p99 = server.instances[name].max_p99_ms
        assert p99 is not None
        assert 0 < p99 < 1500  # the histogram's: a 401 answered in milliseconds


@pytest.mark.farm
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed (`make test` installs it)")
def test_a_real_prometheus_error_answer_raises_prometheus_error(watched_farm: Farm) -> None:
    url = prometheus_url(watched_farm.config)
    assert url is not None
    with pytest.raises(PrometheusError, match="parse error"):
        Prometheus(url).query("rate(webfarm_http_requests_total[6])", time.time())
