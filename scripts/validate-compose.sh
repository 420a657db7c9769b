#!/usr/bin/env bash
# Validates docker-compose.yml (and docker-compose.secure.yml) offline, with no Docker engine: `docker-compose config -q` on
# the default services, then with the `testing` and `cluster` profiles enabled, and checks
# that the files it builds from or mounts exist. Installs Debian's `docker-compose` package
# when the command is missing (as root, else with sudo). Exits non-zero on the first error.
#
#   scripts/validate-compose.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v docker-compose >/dev/null 2>&1; then
  echo "installing docker-compose (Debian package)" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq docker-compose >/dev/null
fi

FILE=docker-compose.yml
echo "docker-compose $(docker-compose version --short)"

# active_services PROFILES...: services that `up` would start with those profiles, read from
# the normalized `config` output (compose 1.x's `config --services` ignores profiles).
active_services() {
  docker-compose -f "$FILE" config | awk -v want=" $* " '
    /^[^ ]/ { in_services = ($0 == "services:"); next }
    !in_services { next }
    /^  [^ ]/ { svc = $1; sub(/:$/, "", svc); order[++n] = svc; prof[svc] = ""; in_prof = 0; next }
    /^    profiles:/ { in_prof = 1; next }
    in_prof && /^    - / { prof[svc] = prof[svc] " " $2; next }
    /^    [^ ]/ { in_prof = 0 }
    END {
      for (i = 1; i <= n; i++) {
        s = order[i]; on = (prof[s] == ""); split(prof[s], p, " ")
        for (j in p) if (index(want, " " p[j] " ")) on = 1
        if (on) printf "%s%s ", s, (prof[s] == "" ? "" : "[" substr(prof[s], 2) "]")
      }
    }'
}

validate() { # PROFILES...
  local args=() p
  for p in "$@"; do args+=(--profile "$p"); done
  docker-compose -f "$FILE" "${args[@]}" config -q
  echo "ok: docker-compose -f $FILE${args[*]:+ ${args[*]}} config -q"
  local services; services=$(active_services "$@")
  echo "    services: ${services% }"
}

validate
validate testing cluster

# The secured setup (README "Security"): its own file, with the secrets make-secrets.sh makes.
SECURE=docker-compose.secure.yml
docker-compose -f "$SECURE" --profile testing config -q
echo "ok: docker-compose -f $SECURE --profile testing config -q"

for f in Dockerfile .dockerignore deploy/prometheus.yml deploy/nats/nats.conf \
  deploy/secure/make-secrets.sh deploy/secure/nats.conf deploy/secure/pg_hba.conf \
  deploy/grafana/dashboards/aggregator.json \
  deploy/grafana/provisioning/datasources/prometheus.yml \
  deploy/grafana/provisioning/dashboards/dashboards.yml; do
  [ -f "$f" ] || { echo "error: $f is missing (used by $FILE)" >&2; exit 1; }
done
echo "ok: build context and mounts present: Dockerfile .dockerignore deploy/prometheus.yml deploy/nats/nats.conf deploy/secure/* deploy/grafana/*"

# NATS: every compose file runs the version the tests run against, and every NATS config
# fsyncs before acknowledging (README "Guarantees").
PINNED=$(cat scripts/lib/nats-server-version)
for f in "$FILE" "$SECURE"; do
  bad=$(grep -E '^ +image: nats:' "$f" | grep -vF "image: nats:$PINNED-alpine" || true)
  [ -z "$bad" ] || { echo "error: $f: NATS image is not nats:$PINNED-alpine:$bad" >&2; exit 1; }
done
for f in deploy/nats/nats.conf deploy/secure/nats.conf; do
  grep -qE '^[^#]*sync_interval: *always' "$f" || { echo "error: $f lacks sync_interval: always" >&2; exit 1; }
done
echo "ok: NATS images nats:$PINNED-alpine, sync_interval: always in deploy/nats and deploy/secure"
