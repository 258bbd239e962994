"""The native supervisord config and the Sentinels' files: single mode as it always was, sentinel mode
with a replica and three Sentinels, and Sentinel's own rewrites left alone while the farm runs."""

import configparser
from pathlib import Path

import pytest

from farmctl.config import FarmConfig
from farmctl.native.render import render_sentinel, render_supervisord, write_configs
from farmctl.secret import csrf_secret

SUPERVISOR_SECTIONS = {"unix_http_server", "supervisord", "rpcinterface:supervisor", "supervisorctl"}


def programs(config: FarmConfig) -> dict[str, configparser.SectionProxy]:
    parser = configparser.RawConfigParser()
    parser.read_string(render_supervisord(config, "/venv/bin/python"))
    assert set(parser.sections()) >= SUPERVISOR_SECTIONS
    return {name.removeprefix("program:"): parser[name] for name in parser.sections() if name.startswith("program:")}


def test_render_single_mode_with_one_redis_and_no_sentinel(tmp_path: Path) -> None:
    config = FarmConfig(instances=2, state_dir=tmp_path)
    rendered = programs(config)
    assert set(rendered) == {"redis", "web1", "web2", "nginx", "health", "prometheus", "nginx-exporter",
                             "redis-exporter"}
    prometheus = rendered["prometheus"]["command"].split()
    assert f"--web.listen-address=127.0.0.1:{config.prometheus_port}" in prometheus  # loopback only
    assert "--storage.tsdb.retention.time=6h" in prometheus
    assert "--storage.tsdb.retention.size=256MB" in prometheus
    assert set(programs(config.replace(prometheus_port=0))) == {"redis", "web1", "web2", "nginx", "health"}
    argv = rendered["redis"]["command"].split()
    assert argv[0].endswith("redis-server")
    assert argv[argv.index("--port") + 1] == str(config.redis_port)
    assert "REDIS_SENTINELS" not in rendered["web1"]["environment"]


def test_render_sentinel_mode_with_replica_and_three_sentinels(tmp_path: Path) -> None:
    config = FarmConfig(instances=2, redis_mode="sentinel", replica_port=7001, sentinel_ports=(7101, 7102, 7103),
                        state_dir=tmp_path)
    rendered = programs(config)
    assert set(rendered) == {"redis", "redis-replica", "sentinel1", "sentinel2", "sentinel3", "web1", "web2", "nginx",
                             "health", "prometheus", "nginx-exporter", "redis-exporter"}
    for name, port in config.redis_nodes.items():
        argv = rendered[name]["command"].split()
        assert argv[1:3] == ["-m", "farmctl.native.redis_node"]
        assert argv[argv.index("--port") + 1] == str(port)
        assert argv[argv.index("--appendfsync") + 1] == "everysec"
    assert f"--replica-of {config.redis_port} " in rendered["redis-replica"]["command"]
    assert "--replica-of" not in rendered["redis"]["command"]
    for i, name in enumerate(config.sentinels, 1):
        assert rendered[name]["command"].endswith(f"{tmp_path}/sentinel-{i}.conf --sentinel")
        assert rendered[name]["autorestart"] == "true"
    assert 'REDIS_SENTINELS="127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103"' in rendered["web1"]["environment"]
    sentinel = render_sentinel(config, 7102).splitlines()
    assert "port 7102" in sentinel
    assert f"sentinel monitor webfarm 127.0.0.1 {config.redis_port} 2" in sentinel
    assert "sentinel known-replica webfarm 127.0.0.1 7001" in sentinel


def test_render_instances_through_python_m_app_as_a_demo_with_the_farm_secret(tmp_path: Path) -> None:
    config = FarmConfig(instances=2, state_dir=tmp_path)
    rendered = programs(config)
    argv = rendered["web2"]["command"].split()
    assert argv == ["/venv/bin/python", "-m", "app", "--host", "127.0.0.1", "--port", str(config.web[1].port)]
    secret = (tmp_path / "csrf_secret").read_text()
    assert len(secret) >= 32
    assert f'CSRF_SECRET="{secret}"' in rendered["web1"]["environment"]
    assert f'PROXY_SECRET="{(tmp_path / "proxy_secret").read_text()}"' in rendered["web1"]["environment"]
    assert 'ENVIRONMENT="demo"' in rendered["web1"]["environment"]
    assert programs(config)["web1"]["environment"] == rendered["web1"]["environment"]  # made once, then kept
    assert csrf_secret(tmp_path / "other") != secret


@pytest.mark.parametrize(("starting", "kept"), [(False, True), (True, False)], ids=["running", "starting"])
def test_write_sentinel_files_only_when_the_farm_starts(tmp_path: Path, starting: bool, kept: bool) -> None:
    config = FarmConfig(instances=1, https_port=0, redis_mode="sentinel", state_dir=tmp_path)
    rewritten = "# what Sentinel wrote\n"
    (tmp_path / "sentinel-2.conf").write_text(rewritten)
    write_configs(config, starting=starting)
    assert ((tmp_path / "sentinel-2.conf").read_text() == rewritten) is kept


def test_render_nginx_through_the_wrapper_that_clears_a_dead_masters_workers(tmp_path: Path) -> None:
    nginx = programs(FarmConfig(instances=1, state_dir=tmp_path))["nginx"]
    argv = nginx["command"].split()
    assert argv[:4] == ["/venv/bin/python", "-m", "farmctl.native.nginx_master", "--"]
    assert argv[4].endswith("nginx")
    assert argv[argv.index("-c") + 1] == f"{tmp_path}/nginx.conf"
    assert nginx["killasgroup"] == "true"  # a master SIGKILLed on stop takes its workers along
