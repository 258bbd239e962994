#!/bin/sh
# Redis Cluster (REDIS=cluster) in containers: one node, or the cluster made of them. The same script
# under Docker Compose (compose.yaml's profile `cluster`, mounted from here) and on Kubernetes
# (k8s/cluster/, a copy a test keeps identical: kustomize reads no file outside its directory).
#
#   redis-cluster.sh node     start this container's node (exec redis-server)
#   redis-cluster.sh create   make a cluster of CLUSTER_NODES, three primaries and their replicas, once;
#                             when it exists already, only check it. Returns once every node says ok.
#
# From the environment: NODE_HOSTNAME (node: the name this node announces, where clients are sent to
# reach it), CLUSTER_NODES (create: host:port of every node, comma-separated), NODE_TIMEOUT_MS
# (default 2000), REDIS_PASSWORD (optional: requirepass and masterauth, in a file, never on a
# command line; without one, protected mode is off and the network is the only gate, as in k8s/),
# DATA_DIR (default /data: the AOF and nodes.conf) and TMPDIR (default /tmp: scratch, kept across
# restarts of the container).
set -eu
NODE_TIMEOUT_MS=${NODE_TIMEOUT_MS:-2000}
DATA=${DATA_DIR:-/data}
TMP=${TMPDIR:-/tmp}
STARTED=$TMP/redis-cluster-node.started

# The cluster bus knows peers by address, and a container that is created again (make down/up, a
# rescheduled pod) comes back at a new one: every peer nodes.conf names by hostname gets the address
# that name has now. A peer not resolvable yet keeps its old one until it reaches us (gossip).
refresh_addresses() {
    [ -s "$1" ] || return 0
    for name in $(sed -n 's/^[^ ]* [^ ,]*,\([^ ]*\) .*/\1/p' "$1"); do
        address=$(getent hosts "$name" | awk '{ print $1; exit }') || address=""
        [ -n "$address" ] || continue
        sed -i "s/^\([^ ]* \)[^ :]*\(:[0-9]*@[0-9]*,$name \)/\1$address\2/" "$1"
    done
}

node() {
    : "${NODE_HOSTNAME:?NODE_HOSTNAME: the name this node announces}"
    conf=$TMP/redis-cluster-node.conf
    if [ -n "${REDIS_PASSWORD:-}" ]; then
        printf 'requirepass %s\nmasterauth %s\n' "$REDIS_PASSWORD" "$REDIS_PASSWORD" > "$conf"
    else
        printf 'protected-mode no\n' > "$conf"
    fi
    # Started before in this container (or pod): it crashed, and the restart policy brought it back
    # at once. Back within cluster-node-timeout, a primary would simply carry on, so whether a crash
    # fails over would be a race with the restart; waiting three timeouts makes it always fail over
    # (its replica promoted, the node back as the new primary's replica), as a lost machine does.
    if [ -e "$STARTED" ]; then
        delay=$((NODE_TIMEOUT_MS * 3 / 1000))
        echo "redis-cluster: $NODE_HOSTNAME restarted: waiting $delay s for the cluster to fail it over"
        # Stopped meanwhile: at once (as the container's first process, the shell ignores SIGTERM
        # unless it traps it, and sleep would hold it until the engine's SIGKILL).
        trap 'exit 0' TERM INT
        sleep "$delay" &
        wait $!
        trap - TERM INT
    fi
    touch "$STARTED"
    refresh_addresses "$DATA/nodes.conf"
    # cluster-require-full-coverage no: while one shard fails over, the other shards keep serving.
    # cluster-replica-validity-factor 0: a replica takes over however long ago it last heard from its
    # primary (as natively, farmctl/native/cluster.py). repl-diskless-sync-delay 0: a node back as a
    # replica is synced at once, not 5 s later.
    exec redis-server "$conf" --port 6379 --dir "$DATA" --appendonly yes --appendfsync everysec \
        --maxmemory 256mb --maxmemory-policy noeviction --repl-diskless-sync-delay 0 \
        --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout "$NODE_TIMEOUT_MS" \
        --cluster-require-full-coverage no --cluster-replica-validity-factor 0 \
        --cluster-announce-hostname "$NODE_HOSTNAME" --cluster-preferred-endpoint-type hostname
}

cli() {
    address=$1; shift
    timeout 5 redis-cli -h "${address%:*}" -p "${address##*:}" "$@" 2>/dev/null
}

info() {  # the value of one field of CLUSTER INFO
    cli "$1" cluster info | tr -d '\r' | sed -n "s/^$2://p"
}

# Every node in the cluster, covering every slot, known to every node by its hostname, and half of
# them replicas (one per primary).
settled() {
    for address in $nodes; do
        [ "$(info "$address" cluster_state)" = ok ] || return 1
        [ "$(info "$address" cluster_known_nodes)" = "$count" ] || return 1
        [ "$(cli "$address" cluster nodes | grep -c ',[^ ]')" = "$count" ] || return 1
    done
    [ "$(cli "${nodes%% *}" cluster nodes | grep -c -E '^[^ ]+ [^ ]+ ([^ ]*,)?slave')" = $((count / 2)) ]
}

create() {
    : "${CLUSTER_NODES:?CLUSTER_NODES: host:port of every node, comma-separated}"
    [ -z "${REDIS_PASSWORD:-}" ] || export REDISCLI_AUTH="$REDIS_PASSWORD"
    nodes=$(echo "$CLUSTER_NODES" | tr ',' ' ')
    count=$(echo "$nodes" | wc -w)
    for address in $nodes; do
        waited=0
        until cli "$address" ping | grep -q PONG; do
            waited=$((waited + 1))
            [ "$waited" -le 60 ] || { echo "redis-cluster: $address does not answer PONG" >&2; exit 1; }
            sleep 1
        done
    done
    existing=""
    for address in $nodes; do
        if [ "$(info "$address" cluster_known_nodes)" != 1 ] || [ "$(info "$address" cluster_slots_assigned)" != 0 ]; then
            existing=$address
        fi
    done
    if [ -n "$existing" ]; then
        echo "redis-cluster: a cluster exists ($existing is in it): checking it"
    else
        # By address: CLUSTER MEET takes no hostname. The names are announced by the nodes themselves.
        addresses=""
        for address in $nodes; do
            ip=$(getent hosts "${address%:*}" | awk '{ print $1; exit }')
            addresses="$addresses ${ip:?cannot resolve ${address%:*}}:${address##*:}"
        done
        echo "redis-cluster: creating a cluster of$addresses"
        # shellcheck disable=SC2086 # one argument per node
        redis-cli --cluster create $addresses --cluster-replicas 1 --cluster-yes
    fi
    waited=0
    until settled; do
        waited=$((waited + 1))
        [ "$waited" -le 120 ] || { echo "redis-cluster: not settled after 60 s" >&2; exit 1; }
        sleep 0.5
    done
    redis-cli --cluster check "${nodes%% *}"
    echo "redis-cluster: ok"
}

case "${1:-}" in
    node) node ;;
    create) create ;;
    *) echo "usage: $0 node|create" >&2; exit 2 ;;
esac
