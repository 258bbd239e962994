#!/usr/bin/env bash
# Make sure the system binaries the farm runs on are present: ./prereqs.sh nginx redis-server [chromium ...]
# As root on Debian/Ubuntu it installs what is missing with apt-get; elsewhere it prints the command.
set -euo pipefail
declare -A package=([nginx]=nginx-light [redis-server]=redis-server [chromium]=chromium [wrk]=wrk [dockerd]=docker.io
                   [prometheus]=prometheus [promtool]=prometheus)
missing=()
for bin in "$@"; do
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing+=("${package[$bin]:-$bin}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} with apt-get ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts the packaged services on install; the farm runs its own on other ports.
  for svc in nginx redis-server prometheus prometheus-nginx-exporter prometheus-redis-exporter; do
    (command -v service >/dev/null && service "$svc" stop >/dev/null 2>&1) || true
  done
  exit 0
fi
echo "missing: ${missing[*]}. Install them, e.g.:" >&2
echo "  sudo apt-get install -y ${missing[*]}      (Debian/Ubuntu)" >&2
echo "  brew install ${missing[*]/nginx-light/nginx}   (macOS)" >&2
exit 1
