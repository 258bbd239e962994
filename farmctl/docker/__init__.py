"""The Docker runtime: the services of compose.yaml, driven through `docker compose`."""

from farmctl.docker.engine import engine_available
from farmctl.docker.farm import DockerFarm

__all__ = ["DockerFarm", "engine_available"]
