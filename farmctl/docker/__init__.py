"""The Docker runtime: the services of compose.yaml, driven through `docker compose`."""

from farmctl.docker.farm import DockerFarm, engine_available

__all__ = ["DockerFarm", "engine_available"]
