#!/usr/bin/env bash
# The main job (README "Run it"): bring up NATS and PostgreSQL if they are not running, start
# the aggregator, publish 20,000 events with 30% duplicates, wait until every one is counted,
# and print the stats.
#
#   scripts/run.sh [--count N] [--duplicate-rate R] [--topics K] [--seed S]
#
# Environment: NATS_URL, HTTP_ADDR (aggregator defaults), DATA_DIR (./data). Without
# DATABASE_URL the run uses its own database, `aggregator_demo` on 127.0.0.1:5432, dropped
# and created again at the start so the stats printed are this run's; with DATABASE_URL set,
# that database is used as it is and the totals accumulate across runs.
# The aggregator is stopped again at the end (SIGTERM, graceful); its log is in $DATA_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=20000 RATE=0.3 TOPICS=10 SEED=42
while [ $# -gt 0 ]; do
  case "$1" in
    --count) COUNT=$2; shift 2 ;;
    --duplicate-rate) RATE=$2; shift 2 ;;
    --topics) TOPICS=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

export NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
FRESH_DB=""
if [ -z "${DATABASE_URL:-}" ]; then
  export DATABASE_URL=postgres://postgres@127.0.0.1:5432/aggregator_demo
  FRESH_DB=aggregator_demo
fi
export HTTP_ADDR=${HTTP_ADDR:-127.0.0.1:8080}
DATA_DIR=${DATA_DIR:-$PWD/data}
export WAL_PATH=${WAL_PATH:-$DATA_DIR/wal}
mkdir -p "$DATA_DIR"

scripts/install-deps.sh

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
host_port() { local hp=${1#*://}; hp=${hp#*@}; hp=${hp%%/*}; hp=${hp%%,*}; echo "${hp%:*} ${hp##*:}"; }

# --- NATS -------------------------------------------------------------------------------
read -r nhost nport < <(host_port "$NATS_URL")
if ! port_open "$nhost" "$nport"; then
  # NATS_SERVER_BIN, else the pinned current server if installed, else PATH.
  # shellcheck source=lib/nats-server.sh
  source scripts/lib/nats-server.sh
  NATS_BIN=$(nats_bin)
  echo "starting nats-server $(nats_version "$NATS_BIN") ($NATS_BIN) with JetStream on $nhost:$nport (store: $DATA_DIR/nats)" >&2
  nohup "$NATS_BIN" -a "$nhost" -p "$nport" -js -sd "$DATA_DIR/nats" >"$DATA_DIR/nats.log" 2>&1 &
  for _ in $(seq 100); do port_open "$nhost" "$nport" && break; sleep 0.1; done
fi

# --- PostgreSQL ---------------------------------------------------------------------------
read -r phost pport < <(host_port "$DATABASE_URL")
if ! port_open "$phost" "$pport"; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -n "$(ls /etc/postgresql 2>/dev/null)" ]; then
    ver=$(ls /etc/postgresql | sort -V | tail -1)
    echo "starting PostgreSQL cluster $ver/main" >&2
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  fi
fi
if ! port_open "$phost" "$pport"; then
  BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  PGDATA_DIR="$DATA_DIR/pg"
  echo "initialising a private PostgreSQL in $PGDATA_DIR on port $pport" >&2
  if [ ! -f "$PGDATA_DIR/PG_VERSION" ]; then
    mkdir -p "$PGDATA_DIR"; chown postgres "$PGDATA_DIR" 2>/dev/null || true
    runuser -u postgres -- "$BIN/initdb" -D "$PGDATA_DIR" -U postgres -A trust >/dev/null
  fi
  runuser -u postgres -- "$BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGDATA_DIR/log" -w \
    -o "-p $pport -c listen_addresses=$phost -k /tmp" start >/dev/null
fi
for _ in $(seq 100); do port_open "$phost" "$pport" && break; sleep 0.1; done

if [ -n "$FRESH_DB" ]; then
  psql "postgres://postgres@$phost:$pport/postgres" -qc "DROP DATABASE IF EXISTS $FRESH_DB (FORCE)" >/dev/null
  # A WAL left by an earlier demo run belongs to the database just dropped.
  rm -rf "$WAL_PATH"
fi

# --- aggregator ---------------------------------------------------------------------------
cargo build --release --bins -q
AGG_PID=""
cleanup() { [ -n "$AGG_PID" ] && kill -TERM "$AGG_PID" 2>/dev/null && wait "$AGG_PID" 2>/dev/null; true; }
trap cleanup EXIT
./target/release/aggregator >"$DATA_DIR/aggregator.log" 2>&1 &
AGG_PID=$!
BASE="http://$HTTP_ADDR"
for _ in $(seq 600); do
  curl -fsS "$BASE/ready" >/dev/null 2>&1 && break
  kill -0 "$AGG_PID" 2>/dev/null || { echo "aggregator exited; log:" >&2; tail -20 "$DATA_DIR/aggregator.log" >&2; exit 1; }
  sleep 0.1
done
curl -fsS "$BASE/ready" >/dev/null || { echo "aggregator not ready; log:" >&2; tail -20 "$DATA_DIR/aggregator.log" >&2; exit 1; }

# First occurrence of a numeric field in a JSON object (the top-level one in /stats).
num() { grep -o "\"$1\": *[0-9]*" | head -1 | grep -o '[0-9]*$'; }
before=$(curl -fsS "$BASE/stats" | num received)

# --- publish --------------------------------------------------------------------------------
echo "publishing $COUNT events ($RATE duplicates, $TOPICS topics, seed $SEED)..." >&2
summary=$(./target/release/publisher --nats-url "$NATS_URL" --count "$COUNT" \
  --duplicate-rate "$RATE" --topics "$TOPICS" --seed "$SEED" --summary json)
echo "publisher: $summary" >&2
published=$(echo "$summary" | num published)

target=$((before + published))
for _ in $(seq 1200); do
  got=$(curl -fsS "$BASE/stats" | num received)
  [ "${got:-0}" -ge "$target" ] && break
  sleep 0.1
done

echo "stats:" >&2
curl -fsS "$BASE/stats"
echo
