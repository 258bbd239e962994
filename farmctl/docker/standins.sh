#!/usr/bin/env bash
# Stand-ins for compose.yaml's official images, built from Debian's packages with mmdebstrap, for
# machines that reach no image registry (CI here, air-gapped sites): `make images`, then use them with
#   PYTHON_IMAGE=webfarm-standin/python:3.11 NGINX_IMAGE=webfarm-standin/nginx:sid \
#   REDIS_IMAGE=webfarm-standin/redis:7 PROMETHEUS_IMAGE=webfarm-standin/monitoring:bookworm \
#   NGINX_EXPORTER_IMAGE=webfarm-standin/monitoring:bookworm REDIS_EXPORTER_IMAGE=webfarm-standin/monitoring:bookworm \
#   make up RUNTIME=docker
# An image already built is kept (delete it to rebuild). nginx comes from sid: the upstream `resolve`
# flag compose.yaml's nginx.conf uses needs nginx 1.27.3+, bookworm has 1.22.
# The python stand-in trusts what this host trusts (its CA bundle, copied in, and PIP_CERT pointing
# at it), so pip inside `docker build` passes a TLS-intercepting proxy as the host does.
set -euo pipefail
PREFIX=${STANDIN_PREFIX:-webfarm-standin}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

need() { command -v "$1" >/dev/null || { echo "standins: need $1 (apt-get install $2)" >&2; exit 1; }; }
need docker docker.io
need mmdebstrap mmdebstrap

# build TAG SUITE PACKAGES [mmdebstrap options...] -- [docker import --change options...]
build() {
  local tag=$1 suite=$2 packages=$3; shift 3
  local opts=() changes=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  changes=("$@")
  if docker image inspect "$tag" >/dev/null 2>&1; then echo "standins: $tag (kept)"; return; fi
  local log; log=$(mktemp)
  # Debian's sid Release on some mirrors is past its Valid-Until; the archive keys still check it.
  if ! mmdebstrap --quiet --variant=apt --include="$packages" --aptopt='Acquire::Check-Valid-Until "false"' \
        "${opts[@]}" "$suite" - 2>"$log" | docker import "${changes[@]}" - "$tag" >/dev/null; then
    cat "$log" >&2; rm -f "$log"; exit 1
  fi
  rm -f "$log"
  echo "standins: $tag built"
}

ca_hook=()
[ -r "$CA_BUNDLE" ] && ca_hook=(--customize-hook="copy-in $CA_BUNDLE /etc/ssl/certs")

# Built side by side: each is mostly waiting for the package mirror.
build "$PREFIX/python:3.11" bookworm python3,python3-venv,python-is-python3,ca-certificates,passwd "${ca_hook[@]}" \
  -- --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' &
build "$PREFIX/nginx:sid" sid nginx,wget,ca-certificates \
  -- --change 'CMD ["nginx", "-g", "daemon off;"]' &
# /data owned by redis, as in the official image (a fresh named volume takes its owner from it).
build "$PREFIX/redis:7" bookworm redis-server --customize-hook='chroot "$1" install -d -o redis -g redis /data' \
  -- --change 'WORKDIR /data' --change 'CMD ["redis-server"]' &
# The monitoring profile's three images in one: Prometheus and both exporters, from bookworm, under the
# official images' paths (compose.yaml names each binary as the official image holds it).
build "$PREFIX/monitoring:bookworm" bookworm prometheus,prometheus-nginx-exporter,prometheus-redis-exporter,wget \
  --customize-hook='chroot "$1" sh -c "ln -s /usr/bin/prometheus-nginx-exporter /usr/bin/nginx-prometheus-exporter \
    && ln -s /usr/bin/prometheus-redis-exporter /redis_exporter && install -d -o 65534 -g 65534 /prometheus"' \
  -- --change 'WORKDIR /prometheus' &
failed=0
for job in $(jobs -p); do wait "$job" || failed=1; done
exit $failed
