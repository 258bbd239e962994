"""DockerFarm without a Docker engine: what it hands to `docker compose` (its behaviour with one is
tests/farm's, through `any_farm` and `docker_farm`)."""

from pathlib import Path

import pytest

from farmctl.config import FarmConfig
from farmctl.docker import DockerFarm
from farmctl.docker.render import DOCKER_SENTINELS
from farmctl.runtime import FarmError


def test_environment_demo_with_a_secret_made_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CSRF_SECRET", raising=False)
    monkeypatch.delenv("ENVIRONMENT", raising=False)
    farm = DockerFarm(FarmConfig(state_dir=tmp_path))
    env = farm._environment()
    assert env["ENVIRONMENT"] == "demo"
    assert len(env["CSRF_SECRET"]) >= 32
    assert env["CSRF_SECRET"] == (tmp_path / "csrf_secret").read_text()
    assert DockerFarm(FarmConfig(state_dir=tmp_path))._environment()["CSRF_SECRET"] == env["CSRF_SECRET"]
    assert env.get("REDIS_SENTINELS", "") != DOCKER_SENTINELS


def test_environment_keeps_what_the_operator_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSRF_SECRET", "s" * 40)
    monkeypatch.setenv("ENVIRONMENT", "production")
    env = DockerFarm(FarmConfig(state_dir=tmp_path, redis_mode="sentinel"))._environment()
    assert (env["CSRF_SECRET"], env["ENVIRONMENT"]) == ("s" * 40, "production")
    assert env["REDIS_SENTINELS"] == DOCKER_SENTINELS
    assert not (tmp_path / "csrf_secret").exists()


def test_docker_farm_refuses_fewer_instances_than_compose_declares(tmp_path: Path) -> None:
    with pytest.raises(FarmError, match=r"compose\.yaml declares 3 instances"):
        DockerFarm(FarmConfig(instances=2, state_dir=tmp_path))


def test_docker_farm_makes_its_redis_password_once_and_names_its_project_by_state_dir(tmp_path: Path) -> None:
    farm = DockerFarm(FarmConfig(state_dir=tmp_path / "a"))
    again = DockerFarm(FarmConfig(state_dir=tmp_path / "a"))
    other = DockerFarm(FarmConfig(state_dir=tmp_path / "b"))
    assert len(farm.config.redis_password) >= 32
    assert farm.config.redis_password == again.config.redis_password != other.config.redis_password
    assert farm.config.redis_url.startswith(f"redis://:{farm.config.redis_password}@127.0.0.1:")
    assert farm.project == again.project != other.project
    assert farm.config.https_url is None  # HTTP only: compose.yaml publishes no HTTPS port
