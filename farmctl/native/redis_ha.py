"""The Redis nodes of a farm in sentinel mode (REDIS=sentinel), as its Sentinels see them.

Used by `farmctl up` (wait until a failover is possible), by the node launcher (rejoin as a
replica of whoever is primary) and by the chaos (find the primary, never kill it unprotected)."""

from collections import Counter
from collections.abc import Collection

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from farmctl.config import SENTINEL_MASTER, FarmConfig


def _client(port: int) -> redis.Redis:
    # No retries: every question here is asked again by a polling loop anyway.
    return redis.Redis("127.0.0.1", port, socket_timeout=0.5, socket_connect_timeout=0.5,
                       retry=Retry(NoBackoff(), 0), decode_responses=True)


def primary_port(sentinel_ports: Collection[int]) -> int | None:
    """The primary's port as a majority of the Sentinels name it; None while they disagree or are down."""
    votes: Counter[int] = Counter()
    for port in sentinel_ports:
        with _client(port) as sentinel:
            try:
                address = sentinel.sentinel_get_master_addr_by_name(SENTINEL_MASTER)
            except redis.RedisError:
                continue
        if address:
            votes[int(address[1])] += 1
    if not votes:
        return None
    port, count = votes.most_common(1)[0]
    return port if count * 2 > len(sentinel_ports) else None


def primary_name(config: FarmConfig) -> str | None:
    """The supervisor program that is primary now (`redis` or `redis-replica`)."""
    port = primary_port(config.sentinel_ports)
    return next((name for name, p in config.redis_nodes.items() if p == port), None)


def replica_in_sync(config: FarmConfig) -> bool:
    """The primary has a replica that is online and at most a second behind."""
    port = primary_port(config.sentinel_ports)
    if port is None:
        return False
    with _client(port) as primary:
        try:
            info = primary.info("replication")
        except redis.RedisError:
            return False
    replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
    return any(r.get("state") == "online" and int(r.get("lag", 99)) <= 1 for r in replicas)


def failover_ready(config: FarmConfig) -> bool:
    """Every Sentinel knows the primary, both other Sentinels and a replica whose link to the primary
    was up at their last look (they refresh it every 10 s), and that replica is in sync: a SIGKILL of
    the primary now ends in a failover, not in "no good replica to promote"."""
    for port in config.sentinel_ports:
        with _client(port) as sentinel:
            try:
                state = sentinel.sentinel_master(SENTINEL_MASTER)
                replicas = sentinel.sentinel_slaves(SENTINEL_MASTER)
            except redis.RedisError:
                return False
        if not state["is_master"] or state["is_sdown"] \
                or state["num-other-sentinels"] < len(config.sentinel_ports) - 1:
            return False
        if not any(r["master-link-status"] == "ok" and not r["is_sdown"] and not r["is_disconnected"]
                   for r in replicas):
            return False
    return replica_in_sync(config)
