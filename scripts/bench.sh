#!/usr/bin/env bash
# Performance benchmark: brings up a PRIVATE nats-server and PostgreSQL (under ./data/bench),
# and in ONE run on the same instances measures:
#   1. limit     COPY of the same unique rows into an empty table identical to `events`
#   2. drain     N events (30% duplicates, 10 topics) pre-loaded in the stream: time for the
#                aggregator to store and count them all; ratio = copy seconds / drain seconds
#   3. live      publisher at full speed alongside the aggregator: sustained events/s;
#                then publisher at 5,000 events/s: p50/p99 lag from event time to commit
#   4. baseline  the earlier design (one transaction per event + one hot stats row, 4
#                clients, pgbench) and our multiple of it
#   5. peak RSS of the aggregator
#   6. WAL       append rate while Postgres is down, replay rate once it is back
#   7. publish   JetStream publish throughput (publisher, every PubAck awaited) against a
#                fresh nats-server with the default sync (fsync every 2 min) and with
#                `sync_interval: always`, side by side (README "Guarantees")
# It prints a table and writes the same figures as JSON.
#
#   scripts/bench.sh [--events N] [--runs R] [--json PATH]
#       --runs R repeats 1 and 2 R times (each on an empty database and stream of its own) and
#       reports the median and the spread (min-max) of the ratio; every run prints the
#       CPU-seconds per 100,000 events each program spent draining (the median is in the table)
#   scripts/bench.sh --drain-only [--runs R] [--events N]   # only 1 and 2 (quick iterations)
#   scripts/bench.sh --replicas [--events N]   # drain with 1 and with 2 aggregator replicas
#   scripts/bench.sh --publish [--publish-events N]   # only 7, table + JSON
#   scripts/bench.sh --downstream [--runs R]   # only 8, table + JSON
# and 8. downstream: a drain with the stream out off and on (its cost, and how fast it catches
#   up) and the live tail's fan-out to 100 clients (scripts/lib/bench-downstream.sh).
#
# synchronous_commit stays on and the WAL is fsynced: durability is not traded for speed.
set -euo pipefail
trap 'echo "bench.sh: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."
source scripts/lib/stack.sh
source scripts/lib/bench-downstream.sh

N=300000 JSON=bench-results/bench.json LIVE_N=300000 LAG_N=50000 WAL_N=100000 BASE_SECS=20
PUBLISH_N=50000 REPLICAS_ONLY=0 PUBLISH_ONLY=0 RUNS=1 DRAIN_ONLY=0 DOWNSTREAM_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --replicas) REPLICAS_ONLY=1; shift ;;
    --publish) PUBLISH_ONLY=1; shift ;;
    --publish-events) PUBLISH_N=$2; shift 2 ;;
    --events) N=$2; LIVE_N=$2; shift 2 ;;
    --json) JSON=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --drain-only) DRAIN_ONLY=1; shift ;;
    --downstream) DOWNSTREAM_ONLY=1; shift ;;
    --wal-events) WAL_N=$2; shift 2 ;;
    --baseline-seconds) BASE_SECS=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$(dirname "$JSON")"

scripts/install-deps.sh
command -v pgbench >/dev/null || ls "$(pg_bin)/pgbench" >/dev/null
cargo build --release --bins -q
AGG=./target/release/aggregator PUB=./target/release/publisher
DIR=$PWD/data/bench
rm -rf "$DIR"
trap stack_down EXIT
stack_up "$DIR"
PSQL=(psql "$DATABASE_URL" -Atq -v ON_ERROR_STOP=1)
now() { date +%s.%N; }
elapsed() { echo "$2 - $1" | bc -l; }
rate() { printf '%.0f' "$(echo "$1 / $2" | bc -l)"; }
stats_num() { curl -fsS "$AGG_URL/stats" | json_num "$1"; }
wait_received() { # target
  while :; do r=$(stats_num received || echo 0); [ "${r:-0}" -ge "$1" ] && break; sleep 0.05; done
}
publish() { "$PUB" --nats-url "$NATS_URL" --summary json --no-progress --topics 10 --duplicate-rate 0.3 "$@"; }
AGG_ENV=(RUST_LOG=warn)

# publish_rate SYNC: events/s of PUBLISH_N publishes (30% duplicates, every PubAck awaited)
# into the aggregator's stream on a fresh private nats-server whose JetStream syncs by
# SYNC: `default` (fsync every 2 minutes, acknowledged before) or `always` (fsync before
# each acknowledgement). The aggregator only creates the stream and is stopped before.
publish_rate() {
  local sync=$1 d="$DIR/publish-$1" port mport pid conf=() rate
  mkdir -p "$d"; port=$(free_port); mport=$(free_port)
  if [ "$sync" = always ]; then
    printf 'jetstream { sync_interval: always }\n' >"$d/nats.conf"; conf=(-c "$d/nats.conf")
  fi
  "$(nats_bin)" "${conf[@]}" -a 127.0.0.1 -p "$port" -m "$mport" -js -sd "$d/store" >"$d/nats.log" 2>&1 &
  pid=$!
  wait_port "$port"; wait_port "$mport"
  # The server reports what it runs with: the figure is labelled by fact, not by intent.
  if [ "$(curl -fsS "127.0.0.1:$mport/varz" | grep -c '"sync_always": *true')" != "$([ "$sync" = always ] && echo 1 || echo 0)" ]; then
    echo "error: nats-server on $port does not run with sync=$sync" >&2; kill "$pid"; return 1
  fi
  HTTP_PORT=$(free_port) agg_up "$AGG" "${AGG_ENV[@]}" \
    NATS_URL="nats://127.0.0.1:$port" DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/publish_$sync"
  kill -TERM "$AGG_PID"; wait "$AGG_PID" || true; AGG_PID=""
  rate=$("$PUB" --nats-url "nats://127.0.0.1:$port" --summary json --no-progress --topics 10 \
    --duplicate-rate 0.3 --count "$PUBLISH_N" --seed 6 | json_num events_per_s)
  kill -TERM "$pid"; wait "$pid" || true
  printf '%.0f' "$rate"
}
publish_figures() {
  echo "== publish: $PUBLISH_N events, JetStream sync default vs always" >&2
  PUB_DEFAULT=$(publish_rate default); PUB_ALWAYS=$(publish_rate always)
  echo "   default $PUB_DEFAULT events/s, sync_interval always $PUB_ALWAYS events/s" >&2
}
# row MEASURE FIGURE [TARGET]: one line of the table.
row() { printf '%-44s %14s %10s\n' "$1" "$2" "${3:-}"; }
publish_table() {
  row "publish, sync default (events/s)" "$PUB_DEFAULT"
  row "publish, sync_interval always (events/s)" "$PUB_ALWAYS"
}
publish_json() { echo "\"publish_events\": $PUBLISH_N, \"publish_sync_default_events_per_s\": $PUB_DEFAULT, \"publish_sync_always_events_per_s\": $PUB_ALWAYS"; }

if [ "$PUBLISH_ONLY" = 1 ]; then
  publish_figures
  printf '\n%-44s %14s\n' "measure (nats-server $(nats_version "$(nats_bin)"))" "figure"
  publish_table
  echo "{\"nats_server\": \"$(nats_version "$(nats_bin)")\", $(publish_json)}" >"${JSON%.json}-publish.json"
  echo "JSON: ${JSON%.json}-publish.json"
  exit 0
fi

if [ "$REPLICAS_ONLY" = 1 ]; then
  # Same Postgres, same NATS; a separate stream, subject prefix and database per run.
  declare -A RATES
  for R in 1 2; do
    run_env=(STREAM_NAME="R$R" SUBJECT_PREFIX="r$R"
             DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/replicas_$R")
    HTTP_PORT=$(free_port) agg_up "$AGG" "${AGG_ENV[@]}" "${run_env[@]}"
    kill -TERM "$AGG_PID"; wait "$AGG_PID" || true
    "$PUB" --nats-url "$NATS_URL" --subject-prefix "r$R" --summary json --no-progress \
      --topics 10 --duplicate-rate 0.3 --count "$N" --seed 5 >/dev/null
    pids=() urls=()
    t0=$(now)
    for i in $(seq "$R"); do
      HTTP_PORT=$(free_port) WAL_PATH="$DIR/wal-r$R-$i" agg_up "$AGG" "${AGG_ENV[@]}" "${run_env[@]}"
      pids+=("$AGG_PID"); urls+=("$AGG_URL")
    done
    while :; do
      r=$(curl -fsS "${urls[0]}/stats" | json_num received || echo 0)
      [ "${r:-0}" -ge "$N" ] && break; sleep 0.05
    done
    t1=$(now)
    RATES[$R]=$(rate "$N" "$(elapsed "$t0" "$t1")")
    echo "   $R replica(s): $N events drained at ${RATES[$R]} events/s" >&2
    for p in "${pids[@]}"; do kill -TERM "$p"; wait "$p" || true; done
    AGG_PID=""
  done
  printf '\n'
  row "drain with 1 aggregator (events/s)" "${RATES[1]}"
  row "drain with 2 aggregators (events/s)" "${RATES[2]}"
  row "speed-up" "$(printf '%.2f' "$(echo "${RATES[2]} / ${RATES[1]}" | bc -l)")x"
  echo "{\"events\": $N, \"replicas_1_events_per_s\": ${RATES[1]}, \"replicas_2_events_per_s\": ${RATES[2]}}" >"${JSON%.json}-replicas.json"
  exit 0
fi

# --- CPU accounting ---------------------------------------------------------------------------
# cpu_ticks PID: clock ticks of CPU the process has used, with its threads, its live children
# and the children it has reaped (Postgres runs one process per connection, the postmaster
# reaps them), read from /proc. Differences of it give each program's CPU for a phase.
cpu_ticks() {
  { cat "/proc/$1/stat"; for c in $(pgrep -P "$1"); do cat "/proc/$c/stat" 2>/dev/null; done; } |
    awk '{ sub(/^.*\) /, ""); t += $12 + $13; if (NR == 1) t += $14 + $15 } END { print t + 0 }'
}
TCK=$(getconf CLK_TCK)
# cpu_per_100k TICKS EVENTS: CPU-seconds per 100,000 events.
cpu_per_100k() { printf '%.2f' "$(echo "$1 / $TCK * 100000 / $2" | bc -l)"; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
spread() { sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s-%s", lo, hi }'; }

# drain_run I: one repetition of 1 and 2, on a database, stream and subject prefix of its own
# (so every run starts empty and the same): sets DRAIN_S, DRAIN_RATE, UNIQUE, COPY_S,
# COPY_RATE, RATIO and the CPU ticks of each program for the drain (and Postgres for COPY).
drain_run() {
  local i=$1 run_env t0 t1 pg0 nats0
  run_env=(STREAM_NAME="DRAIN$i" SUBJECT_PREFIX="drain$i"
           DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/drain_$i")
  # Start once to create database, stream and consumer; stop; pre-load; start and time.
  HTTP_PORT=$(free_port) agg_up "$AGG" "${AGG_ENV[@]}" "${run_env[@]}"
  kill -TERM "$AGG_PID"; wait "$AGG_PID" || true
  publish --subject-prefix "drain$i" --count "$N" --seed 1 >"$DIR/preload.json"
  pg0=$(cpu_ticks "$(pg_pid)"); nats0=$(cpu_ticks "$NATS_PID")
  t0=$(now)
  HTTP_PORT=$(free_port) WAL_PATH="$DIR/wal-drain$i" agg_up "$AGG" "${AGG_ENV[@]}" "${run_env[@]}"
  wait_received "$N"
  t1=$(now)
  AGG_TICKS=$(cpu_ticks "$AGG_PID")
  PG_TICKS=$(( $(cpu_ticks "$(pg_pid)") - pg0 )); NATS_TICKS=$(( $(cpu_ticks "$NATS_PID") - nats0 ))
  kill -TERM "$AGG_PID"; wait "$AGG_PID" || true; AGG_PID=""
  DRAIN_S=$(elapsed "$t0" "$t1"); DRAIN_RATE=$(rate "$N" "$DRAIN_S")
  local db=("${PSQL[@]/%aggregator/drain_$i}")
  UNIQUE=$("${db[@]}" -c "SELECT count(*) FROM events")
  "${db[@]}" -c "COPY (SELECT topic, event_id, ts, source, payload FROM events) TO STDOUT" >"$DIR/rows.tsv"
  "${db[@]}" -c "CREATE TABLE events_copy (LIKE events INCLUDING ALL)"
  pg0=$(cpu_ticks "$(pg_pid)")
  t0=$(now)
  "${db[@]}" -c "\\copy events_copy (topic, event_id, ts, source, payload) FROM '$DIR/rows.tsv'"
  t1=$(now)
  sleep 0.5 # psql's backend has exited: let the postmaster reap it (its CPU is then counted)
  COPY_TICKS=$(( $(cpu_ticks "$(pg_pid)") - pg0 ))
  COPY_S=$(elapsed "$t0" "$t1"); COPY_RATE=$(rate "$UNIQUE" "$COPY_S")
  # The drain stores UNIQUE rows but counts N messages; compare time for the same rows.
  RATIO=$(printf '%.2f' "$(echo "$COPY_S / $DRAIN_S" | bc -l)")
  "${PSQL[@]/%aggregator/postgres}" -c "DROP DATABASE drain_$i"
  rm -f "$DIR/rows.tsv"
  echo "   run $i: drained $N ($UNIQUE unique) in ${DRAIN_S}s = $DRAIN_RATE events/s;" \
    "COPY ${COPY_S}s = $COPY_RATE rows/s; ratio $RATIO;" \
    "CPU-s/100k events: postgres $(cpu_per_100k "$PG_TICKS" "$N")," \
    "nats $(cpu_per_100k "$NATS_TICKS" "$N"), aggregator $(cpu_per_100k "$AGG_TICKS" "$N");" \
    "COPY postgres $(cpu_per_100k "$COPY_TICKS" "$UNIQUE")/100k rows" >&2
  printf '%s %s %s %s %s %s %s %s\n' "$RATIO" "$DRAIN_RATE" "$COPY_RATE" "$PG_TICKS" \
    "$NATS_TICKS" "$AGG_TICKS" "$COPY_TICKS" "$UNIQUE" >>"$DIR/runs.txt"
}

if [ "$DOWNSTREAM_ONLY" = 1 ]; then
  downstream_figures
  printf '\n'; row "measure" "figure"
  downstream_table
  echo "{$(downstream_json)}" >"${JSON%.json}-downstream.json"
  echo "JSON: ${JSON%.json}-downstream.json"
  exit 0
fi

echo "== drain vs COPY: $N events pre-loaded (30% duplicates, 10 topics), $RUNS run(s)" >&2
: >"$DIR/runs.txt"
for i in $(seq "$RUNS"); do drain_run "$i"; done
col() { awk -v c="$1" '{ print $c }' "$DIR/runs.txt"; }
RATIO=$(col 1 | median); RATIO_SPREAD=$(col 1 | spread)
DRAIN_RATE=$(col 2 | median | xargs printf '%.0f'); COPY_RATE=$(col 3 | median | xargs printf '%.0f')
UNIQUE=$(col 8 | head -1)
CPU_PG=$(cpu_per_100k "$(col 4 | median)" "$N"); CPU_NATS=$(cpu_per_100k "$(col 5 | median)" "$N")
CPU_AGG=$(cpu_per_100k "$(col 6 | median)" "$N"); CPU_COPY=$(cpu_per_100k "$(col 7 | median)" "$UNIQUE")
echo "   median of $RUNS: ratio $RATIO ($RATIO_SPREAD), drain $DRAIN_RATE events/s, COPY $COPY_RATE rows/s" >&2

drain_table() {
  row "COPY limit (rows/s)" "$COPY_RATE"
  row "drain $N events (events/s)" "$DRAIN_RATE"
  row "ratio copy s / drain s (median of $RUNS)" "$RATIO" ">= 0.6"
  row "ratio spread (min-max)" "$RATIO_SPREAD"
  row "drain CPU-s/100k events: Postgres" "$CPU_PG"
  row "drain CPU-s/100k events: nats-server" "$CPU_NATS"
  row "drain CPU-s/100k events: aggregator" "$CPU_AGG"
  row "COPY CPU-s/100k rows: Postgres" "$CPU_COPY"
}
if [ "$DRAIN_ONLY" = 1 ]; then
  printf '\n'; row "measure" "figure" "target"
  drain_table
  exit 0
fi

# The live, lag, RSS and WAL phases run on a fresh aggregator of the default database.
agg_up "$AGG" "${AGG_ENV[@]}"

echo "== live: publisher at full speed alongside the aggregator ($LIVE_N events)" >&2
before=$(stats_num received)
t0=$(now)
publish --count "$LIVE_N" --seed 2 >"$DIR/live.json"
PUB_S=$(elapsed "$t0" "$(now)")
wait_received $((before + LIVE_N))
t1=$(now)
LIVE_S=$(elapsed "$t0" "$t1"); LIVE_RATE=$(rate "$LIVE_N" "$LIVE_S")
PUB_RATE=$(rate "$LIVE_N" "$PUB_S")
echo "   $LIVE_N published and counted in ${LIVE_S}s = $LIVE_RATE events/s (publisher alone: $PUB_RATE/s)" >&2

echo "== lag at 5,000 events/s ($LAG_N events)" >&2
before=$(stats_num received)
mark=$("${PSQL[@]}" -c "SELECT coalesce(max(id), 0) FROM events")
publish --count "$LAG_N" --seed 3 --rate 5000 >"$DIR/lag.json"
wait_received $((before + LAG_N))
read -r LAG_P50 LAG_P99 LAG_MAX < <("${PSQL[@]}" -F ' ' -c "
  SELECT round(1000 * percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - ts)))::int,
         round(1000 * percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - ts)))::int,
         round(1000 * max(extract(epoch FROM stored_at - ts)))::int
  FROM events WHERE id > $mark")
echo "   event time -> commit lag: p50 ${LAG_P50} ms, p99 ${LAG_P99} ms, max ${LAG_MAX} ms" >&2

RSS_KB=$(awk '/VmHWM/ {print $2}' "/proc/$AGG_PID/status")
RSS_MB=$(( RSS_KB / 1024 ))
echo "== peak RSS of the aggregator: ${RSS_MB} MB" >&2

echo "== WAL: $WAL_N events while Postgres is down, then replay" >&2
kill -TERM "$AGG_PID"; wait "$AGG_PID" || true
AGG_PID=""
# One attempt per batch (MAX_RETRIES counts attempts) and the breaker opens at the first
# failure, so batches go straight to the WAL. Only the breaker's probe closes it, so the
# replay time below includes up to one CIRCUIT_BREAKER_TIMEOUT (1s) before the first probe.
WAL_PATH="$DIR/wal-bench" agg_up "$AGG" "${AGG_ENV[@]}" CIRCUIT_BREAKER_THRESHOLD=1 \
  CIRCUIT_BREAKER_TIMEOUT=1s MAX_RETRIES=1 HEALTH_CHECK_INTERVAL=200ms WAL_MAX_SIZE=2000000000
before=$(stats_num received)
pg_stop
publish --count "$WAL_N" --seed 4 >"$DIR/wal.json"
wal_count() { curl -sS "$AGG_URL/health" | json_num wal_record_count; }
# Time from the first record in the WAL to the last.
while [ "$(wal_count)" -eq 0 ]; do sleep 0.01; done
t0=$(now)
while [ "$(wal_count)" -lt "$WAL_N" ]; do sleep 0.01; done
t1=$(now)
WAL_APPEND_S=$(elapsed "$t0" "$t1"); WAL_APPEND_RATE=$(rate "$WAL_N" "$WAL_APPEND_S")
pg_start
t0=$(now)
while [ "$(wal_count)" -gt 0 ]; do sleep 0.01; done
t1=$(now)
WAL_REPLAY_S=$(elapsed "$t0" "$t1"); WAL_REPLAY_RATE=$(rate "$WAL_N" "$WAL_REPLAY_S")
wait_received $((before + WAL_N))
echo "   append $WAL_APPEND_RATE events/s, replay $WAL_REPLAY_RATE events/s (Postgres up -> WAL empty ${WAL_REPLAY_S}s)" >&2

echo "== baseline: earlier design (transaction per event, one hot stats row, 4 clients), ${BASE_SECS}s" >&2
"${PSQL[@]}" <<'SQL'
CREATE TABLE baseline_events (LIKE events INCLUDING ALL);
CREATE TABLE baseline_stats (id int PRIMARY KEY, received bigint NOT NULL, unique_processed bigint NOT NULL);
INSERT INTO baseline_stats VALUES (1, 0, 0);
SQL
cat >"$DIR/baseline.sql" <<'SQL'
\set n random(1, 700000)
BEGIN;
WITH ins AS (
  INSERT INTO baseline_events (topic, event_id, ts, source, payload)
  VALUES ('telemetry.satellite.status', 'evt-' || :n, now(), 'SAT-0001',
          '{"battery_charge_percent": 85.5, "storage_usage_mb": 45000.0, "signal_strength_dbm": -55.0, "is_anomaly": false}')
  ON CONFLICT (topic, event_id) DO NOTHING RETURNING 1)
UPDATE baseline_stats SET received = received + 1,
       unique_processed = unique_processed + (SELECT count(*) FROM ins) WHERE id = 1;
END;
SQL
PGBENCH=$(command -v pgbench || echo "$(pg_bin)/pgbench")
"$PGBENCH" -n -h 127.0.0.1 -p "$PG_PORT" -U postgres -c 4 -j 2 -T "$BASE_SECS" -f "$DIR/baseline.sql" aggregator >"$DIR/pgbench.txt" 2>&1
BASE_RATE=$(grep -oE 'tps = [0-9.]+' "$DIR/pgbench.txt" | head -1 | grep -oE '[0-9.]+' | cut -d. -f1)
MULTIPLE=$(printf '%.1f' "$(echo "$DRAIN_RATE / $BASE_RATE" | bc -l)")
echo "   baseline $BASE_RATE events/s; drain is ${MULTIPLE}x" >&2

publish_figures
downstream_figures

cat >"$JSON" <<EOF
{"events": $N, "unique": $UNIQUE,
 "copy_rows_per_s": $COPY_RATE,
 "runs": $RUNS, "drain_events_per_s": $DRAIN_RATE, "copy_over_drain_ratio": $RATIO,
 "copy_over_drain_ratio_spread": "$RATIO_SPREAD",
 "cpu_s_per_100k_events": {"postgres": $CPU_PG, "nats_server": $CPU_NATS, "aggregator": $CPU_AGG},
 "copy_postgres_cpu_s_per_100k_rows": $CPU_COPY,
 "live_events": $LIVE_N, "live_events_per_s": $LIVE_RATE, "publisher_alone_events_per_s": $PUB_RATE,
 "lag_rate_events_per_s": 5000, "lag_p50_ms": $LAG_P50, "lag_p99_ms": $LAG_P99, "lag_max_ms": $LAG_MAX,
 "baseline_events_per_s": $BASE_RATE, "multiple_of_baseline": $MULTIPLE,
 "aggregator_peak_rss_mb": $RSS_MB,
 "wal_events": $WAL_N, "wal_append_events_per_s": $WAL_APPEND_RATE, "wal_replay_events_per_s": $WAL_REPLAY_RATE,
 $(publish_json),
 $(downstream_json)}
EOF

printf '\n'; row "measure" "figure" "target"
drain_table
row "earlier design baseline (events/s)" "$BASE_RATE"
row "multiple of baseline" "${MULTIPLE}x" ">= 25x"
row "live, publisher at full speed (events/s)" "$LIVE_RATE" ">= 30000"
row "lag p50 at 5,000 events/s (ms)" "$LAG_P50"
row "lag p99 at 5,000 events/s (ms)" "$LAG_P99" "<= 100"
row "aggregator peak RSS (MB)" "$RSS_MB" "<= 100"
row "WAL append (events/s)" "$WAL_APPEND_RATE" ">= 50000"
row "WAL replay (events/s)" "$WAL_REPLAY_RATE" ">= 30000"
publish_table
downstream_table
echo "JSON: $JSON"
