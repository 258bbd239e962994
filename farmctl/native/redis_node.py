"""Start one Redis data node of a sentinel-mode farm (what supervisord runs as `redis` and
`redis-replica`), or of a cluster-mode farm (`redis-node1`..`redis-node6`).

    python -m farmctl.native.redis_node --me PORT --sentinels P1,P2,P3 [--replica-of PORT] -- redis-server ARGS...
    python -m farmctl.native.redis_node --me PORT --cluster P1,...,P6 -- redis-server ARGS...

The role comes from the Sentinels, not from the command line: a node starts as the replica of
whichever node they name primary (`--replica-of` only counts when no Sentinel answers, i.e. at the
first start). A node restarted after a crash while the Sentinels still name it primary stays down
until they have promoted the replica (at most FAILOVER_WAIT_S): restarted at once, the old primary
would answer again before the Sentinels noticed it was gone (down-after 1 s), there would be no
failover, and a primary that loses its process would rely on its AOF alone.

In a cluster the roles are the cluster's own (nodes.conf): a killed primary stays down, the same way,
until the others have promoted its replica (cluster-node-timeout, then the election), and then
rejoins as the replica of its replacement."""

import argparse
import os
import sys
from pathlib import Path

from farmctl.native.cluster import still_serving
from farmctl.native.redis_ha import primary_port
from farmctl.wait import wait_until

FAILOVER_WAIT_S = 10.0


def started_marker(data_dir: Path) -> Path:
    """Exists once the node has started in this run of the farm; `farmctl up` removes it."""
    return data_dir / "farmctl-started"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="farmctl.native.redis_node", description=__doc__)
    parser.add_argument("--me", type=int, required=True, help="this node's port")
    parser.add_argument("--sentinels", default="", help="the Sentinels' ports, comma-separated")
    parser.add_argument("--cluster", default="", help="the cluster's nodes' ports (this one's too), comma-separated")
    parser.add_argument("--replica-of", type=int, help="the primary's port at the first start")
    parser.add_argument("--dir", type=Path, required=True, help="the node's data directory")
    parser.add_argument("server", nargs=argparse.REMAINDER, help="-- redis-server and its arguments")
    args = parser.parse_args(argv)
    server = args.server[1:] if args.server[:1] == ["--"] else args.server
    marker = started_marker(args.dir)
    if args.cluster:
        peers = [int(p) for p in args.cluster.split(",")]
        if marker.exists():  # restarted after a crash (or a stop)
            wait_until(lambda: not still_serving(args.me, peers), FAILOVER_WAIT_S, interval_s=0.2)
        marker.touch()
        os.execv(server[0], server)
    sentinels = [int(p) for p in args.sentinels.split(",")]
    if marker.exists():  # restarted after a crash (or a stop)
        wait_until(lambda: primary_port(sentinels) not in (args.me, None), FAILOVER_WAIT_S, interval_s=0.2)
    marker.touch()
    primary = primary_port(sentinels) or args.replica_of
    if primary and primary != args.me:
        server += ["--replicaof", "127.0.0.1", str(primary)]
        print(f"redis_node: port {args.me} starts as the replica of {primary}", flush=True)
    else:
        print(f"redis_node: port {args.me} starts as the primary", flush=True)
    os.execv(server[0], server)


if __name__ == "__main__":
    main(sys.argv[1:])
