"""A Redis Cluster of loopback nodes (REDIS=cluster): made with `redis-cli --cluster create`, and
read the way the status, the waits and the chaos need it (which node is primary of what).

The nodes are plain `redis-server --cluster-enabled yes` processes; the cluster is their own state
(nodes.conf in each node's directory), so a node restarted by the supervisor rejoins by itself - as
the replica of the one promoted in its place."""

import shutil
import subprocess
from collections.abc import Collection, Sequence

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from farmctl.clusternodes import Node, parse
from farmctl.runtime import FarmError
from farmctl.wait import wait_until

#: How long a primary may be unreachable before its replica is promoted (cluster-node-timeout): short,
#: for a demo of a failover; production clusters use seconds more, to ride out a slow network.
NODE_TIMEOUT_MS = 2000
SLOTS = 16384


def node_args(port: int) -> list[str]:
    """What makes a redis-server a cluster node (after its port, dir and persistence)."""
    return ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            # A replica takes over whatever its last contact with its primary: the demo kills primaries.
            "--cluster-replica-validity-factor", "0",
            # A shard whose primary and replica are both down must not stop the others' users.
            "--cluster-require-full-coverage", "no"]


def _client(port: int, password: str = "") -> redis.Redis:
    # No retries: every question here is asked again by a polling loop anyway.
    return redis.Redis("127.0.0.1", port, password=password or None, socket_timeout=0.5, socket_connect_timeout=0.5,
                       retry=Retry(NoBackoff(), 0), decode_responses=True)


def nodes(ports: Collection[int], password: str = "") -> dict[int, Node]:
    """Each node as the cluster sees it, asked of the first node that answers (by port); a port it
    does not list as connected is down."""
    for port in ports:
        try:
            with _client(port, password) as client:
                found = {node.port: node for node in parse(str(client.execute_command("CLUSTER", "NODES")))}
        except redis.RedisError:
            continue
        return {p: found.get(p, Node("", p, "", "down", 0)) for p in ports}
    return {p: Node("", p, "", "down", 0) for p in ports}


def healthy(ports: Collection[int], primaries: int = 3, password: str = "") -> bool:
    """Every node answers, cluster_state is ok on each, and each of `primaries` primaries serving
    slots has a replica in sync with it (so a primary's SIGKILL ends in a failover)."""
    for port in ports:
        try:
            with _client(port, password) as client:
                if client.cluster("info").get("cluster_state") != "ok":
                    return False
        except redis.RedisError:
            return False
    seen = nodes(ports, password)
    serving = [n for n in seen.values() if n.serving]
    covered = {n.primary for n in seen.values() if n.role == "replica"}
    return len(serving) == primaries and all(n.id in covered for n in serving) and \
        sum(n.slots for n in serving) == SLOTS


def _answers(port: int, password: str = "") -> bool:
    try:
        with _client(port, password) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def create(ports: Sequence[int], password: str = "", timeout_s: float = 30) -> None:
    """Make a cluster of the six fresh nodes (three primaries, each with a replica), unless they are
    one already; return once it is healthy (FarmError if not within `timeout_s`)."""
    if not wait_until(lambda: all(_answers(port, password) for port in ports), timeout_s, interval_s=0.05):
        raise FarmError(f"the Redis nodes on {list(ports)} do not all answer after {timeout_s} s")
    if not healthy(ports, len(ports) // 2, password):
        with _client(ports[0], password) as client:
            formed = int(client.cluster("info").get("cluster_known_nodes", 1)) > 1
        if not formed:
            binary = shutil.which("redis-cli") or "/usr/bin/redis-cli"
            auth = ["-a", password, "--no-auth-warning"] if password else []
            result = subprocess.run([binary, *auth, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                                     "--cluster-replicas", "1", "--cluster-yes"],
                                    capture_output=True, text=True, timeout=timeout_s, check=False)
            if result.returncode:
                raise FarmError(f"redis-cli --cluster create failed: {result.stdout[-2000:]}{result.stderr}")
    if not wait_until(lambda: healthy(ports, len(ports) // 2, password), timeout_s, interval_s=0.2):
        raise FarmError(f"the Redis Cluster on {list(ports)} is not healthy after {timeout_s} s")


def still_serving(port: int, peers: Collection[int]) -> bool | None:
    """Whether the cluster, as the first peer that answers sees it, still has `port` serving slots as a
    primary (None if no peer answers)."""
    for peer in peers:
        if peer == port:
            continue
        try:
            with _client(peer) as client:
                text = str(client.execute_command("CLUSTER", "NODES"))
        except redis.RedisError:
            continue
        # Down or not, a primary holds its slots until its replica has taken them.
        return any(n.port == port and n.slots > 0 for n in parse(text))
    return None


def primaries(ports: Collection[int], password: str = "") -> list[int]:
    """The ports of the primaries that serve slots now."""
    return sorted(n.port for n in nodes(ports, password).values() if n.serving)


def slot_ranges(ports: Collection[int], password: str = "") -> list[tuple[int, int, int]]:
    """(first slot, last slot, primary's port) of every range served now, as the first node that
    answers says (CLUSTER SLOTS); [] if none does."""
    for port in ports:
        try:
            with _client(port, password) as client:
                return [(int(low), int(high), int(primary[1]))
                        for low, high, primary, *_ in client.execute_command("CLUSTER", "SLOTS")]
        except redis.RedisError:
            continue
    return []


def primary_of_slot(ports: Collection[int], slot: int, password: str = "") -> int | None:
    """The port of the primary that serves `slot` now, as the first node that answers says."""
    return next((port for low, high, port in slot_ranges(ports, password) if low <= slot <= high), None)


def reshard(ports: Collection[int], source: int, target: int, slots: int, password: str = "",
            timeout_s: float = 120) -> None:
    """Move `slots` slots (the lowest of `source`'s), and their keys, from one primary to another, with
    `redis-cli --cluster reshard` - what an operator runs to even out the shards; the cluster answers
    throughout (MOVED, ASK and TRYAGAIN for the keys on the move)."""
    with _client(source, password) as a, _client(target, password) as b:
        from_id, to_id = str(a.execute_command("CLUSTER", "MYID")), str(b.execute_command("CLUSTER", "MYID"))
    binary = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    auth = ["-a", password, "--no-auth-warning"] if password else []
    result = subprocess.run([binary, *auth, "--cluster", "reshard", f"127.0.0.1:{source}", "--cluster-from", from_id,
                             "--cluster-to", to_id, "--cluster-slots", str(slots), "--cluster-yes"],
                            capture_output=True, text=True, timeout=timeout_s, check=False)
    if result.returncode:
        raise FarmError(f"redis-cli --cluster reshard failed: {result.stdout[-2000:]}{result.stderr}")
    if not wait_until(lambda: healthy(ports, password=password), 30, interval_s=0.2):
        raise FarmError("the cluster is not healthy after the reshard")


def startup_nodes(ports: Collection[int]) -> str:
    """What the instances get as REDIS_CLUSTER_NODES."""
    return ",".join(f"127.0.0.1:{port}" for port in ports)
