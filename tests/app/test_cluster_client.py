"""The app's Redis Cluster client (app.redis_client) against real nodes, where it differs from
redis-py's defaults."""

import asyncio
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from app.config import Settings
from app.redis_client import close, connect_redis
from farmctl.native import cluster
from farmctl.native.scratch import scratch_cluster


async def test_a_client_started_before_its_cluster_was_made_serves_once_it_is(tmp_path: Path) -> None:
    """The farm's instances start beside nodes that `farmctl up` makes a cluster only then. Until it
    has, a command is a connection error (a 503); after, the same client serves. With redis-py's
    dynamic startup nodes it never did: a node that is no cluster yet reports no nodes, and the
    client replaced the nodes it was given with that empty list."""
    with scratch_cluster(tmp_path, create=False) as ports:
        client = connect_redis(Settings(redis_cluster_nodes=cluster.startup_nodes(ports)))
        try:
            with pytest.raises(RedisConnectionError):
                await client.set("before", 1)
            await asyncio.to_thread(cluster.create, ports)
            assert await client.set("after", 1)
            assert await client.get("after") == "1"
        finally:
            await close(client)
