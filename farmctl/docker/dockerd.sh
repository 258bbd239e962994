#!/usr/bin/env bash
# A Docker engine for machines without one running (no systemd, CI): `dockerd.sh start` installs
# Debian's docker.io and mmdebstrap when missing (root with apt-get), starts dockerd in the
# background and waits until it answers; `dockerd.sh stop` stops the one it started. An engine
# that already answers is left alone either way. Images stay in /var/lib/docker between runs.
set -euo pipefail
RUN_DIR=${DOCKERD_RUN_DIR:-/run/webfarm-dockerd}
PIDFILE=$RUN_DIR/dockerd.pid

answers() { docker info >/dev/null 2>&1; }

case "${1:-}" in
  start)
    answers && { echo "dockerd: an engine answers already"; exit 0; }
    "$(dirname "$0")/../prereqs.sh" dockerd mmdebstrap
    [ "$(id -u)" = 0 ] || { echo "dockerd: starting an engine needs root (sudo $0 start)" >&2; exit 1; }
    mkdir -p "$RUN_DIR"
    # --pidfile of its own: a leftover /var/run/docker.pid of an engine that died would stop it.
    # --userland-proxy=false: published loopback ports by iptables, not a docker-proxy process copying
    # every byte of every connection (it cost the store-fault crowd its bound on 2 cores).
    nohup dockerd --pidfile "$PIDFILE" --userland-proxy=false >"$RUN_DIR/dockerd.log" 2>&1 &
    for _ in $(seq 1 120); do
      answers && { echo "dockerd: started (pid $(cat "$PIDFILE"), log $RUN_DIR/dockerd.log)"; exit 0; }
      sleep 0.25
    done
    echo "dockerd: no answer after 30 s; $RUN_DIR/dockerd.log says:" >&2
    tail -20 "$RUN_DIR/dockerd.log" >&2
    exit 1 ;;
  stop)
    [ -f "$PIDFILE" ] || exit 0
    pid=$(cat "$PIDFILE")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    rm -f "$PIDFILE"
    echo "dockerd: stopped" ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
