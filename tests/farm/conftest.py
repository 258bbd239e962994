"""What several farm test modules take from the shared farm: a client of its balancer, and one of its Redis."""

from collections.abc import Iterator

import httpx
import pytest
import redis

from farmctl.runtime import Farm
from tests.farm.users import store_of


@pytest.fixture
def api(farm: Farm) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=farm.config.balancer_url, timeout=10) as client:
        yield client


@pytest.fixture
def store(farm: Farm) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(farm.config.redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def any_store(any_farm: Farm) -> Iterator[redis.Redis]:
    """The Redis of `any_farm` (under Docker published on loopback, behind its password)."""
    client = store_of(any_farm)
    yield client
    client.close()
