"""A client of the throw-away Redis, and of the throw-away Redis Cluster (tests/conftest.py), for the
units that keep their state there: each such test runs on both, the same test."""

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app.config import Settings
from app.redis_client import close, connect_redis


@pytest.fixture(params=["single", "cluster"])
async def redis(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Redis]:
    client = connect_redis(settings_of(request, redis_url))
    yield client
    await close(client)


def settings_of(request: pytest.FixtureRequest, redis_url: str, **settings: object) -> Settings:
    """Settings for the Redis this test runs on: the single one, or the cluster."""
    if request.param == "cluster":
        return Settings(redis_cluster_nodes=request.getfixturevalue("redis_cluster"), **settings)  # type: ignore[arg-type]
    return Settings(redis_url=redis_url, **settings)  # type: ignore[arg-type]
