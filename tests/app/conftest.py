"""A client of the throw-away Redis (tests/conftest.py) for the units that keep their state there."""

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app.config import Settings
from app.redis_client import connect_redis


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = connect_redis(Settings(redis_url=redis_url))
    yield client
    await client.aclose()
