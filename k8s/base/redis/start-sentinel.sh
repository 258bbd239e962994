#!/bin/sh
# Start one Sentinel of the StatefulSet `sentinel`. Sentinel rewrites its config file, so the file
# is written here, into the pod's writable /data, at every start: monitoring the primary the other
# Sentinels name (after a failover that is no longer redis-0), or redis-0 on a fresh farm.
# Not rendered from farmctl/sentinel.conf.j2: see README "Run on Kubernetes".
set -eu
self="$(hostname).sentinel"
primary=""
for sentinel in sentinel-0.sentinel sentinel-1.sentinel sentinel-2.sentinel; do
    [ "$sentinel" = "$self" ] && continue
    primary="$(timeout 2 redis-cli -h "$sentinel" -p 26379 --raw \
        sentinel get-master-addr-by-name "$REDIS_SENTINEL_MASTER" 2>/dev/null | head -n 1)" || primary=""
    [ -n "$primary" ] && break
done
[ -n "$primary" ] || primary="redis-0.redis"
cat > /data/sentinel.conf <<CONF
port 26379
dir /data
# Pods get new addresses when they are recreated: Sentinels and nodes know each other by DNS name.
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $self
# Quorum 2 of 3: two Sentinels must agree the primary is down before one of them fails over.
sentinel monitor $REDIS_SENTINEL_MASTER $primary 6379 2
# 5 s, not the native demo's 1 s: pods on different nodes see network hiccups that are not deaths.
sentinel down-after-milliseconds $REDIS_SENTINEL_MASTER 5000
sentinel failover-timeout $REDIS_SENTINEL_MASTER 10000
sentinel parallel-syncs $REDIS_SENTINEL_MASTER 1
CONF
echo "sentinel: $self, monitoring $primary"
exec redis-server /data/sentinel.conf --sentinel
