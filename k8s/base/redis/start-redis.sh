#!/bin/sh
# Start one Redis data node of the StatefulSet `redis`: AOF fsync'd every second (as in compose.yaml),
# known by its stable DNS name. It replicates whatever primary the Sentinels name; when no Sentinel
# answers (a fresh farm), redis-0 is the primary and the others replicate it. A restarted node that
# the Sentinels still call primary (not failed over yet) comes back as primary with its AOF.
set -eu
self="$(hostname).redis"
primary=""
for sentinel in sentinel-0.sentinel sentinel-1.sentinel sentinel-2.sentinel; do
    primary="$(timeout 2 redis-cli -h "$sentinel" -p 26379 --raw \
        sentinel get-master-addr-by-name "$REDIS_SENTINEL_MASTER" 2>/dev/null | head -n 1)" || primary=""
    [ -n "$primary" ] && break
done
[ -n "$primary" ] || primary="redis-0.redis"
# --protected-mode no: without a password Redis 7 refuses every client that is not on loopback (the
# image's entrypoint turns it off, and a pod's `command:` skips the entrypoint); the NetworkPolicies
# are the gate, as in k8s/cluster/.
set -- --port 6379 --dir /data --appendonly yes --appendfsync everysec --replica-announce-ip "$self" \
    --maxmemory 256mb --maxmemory-policy noeviction --protected-mode no
if [ "$primary" != "$self" ]; then
    set -- "$@" --replicaof "$primary" 6379
fi
echo "redis: $self, primary $primary"
exec redis-server "$@"
