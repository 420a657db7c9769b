#!/usr/bin/env bash
# Chaos monkey, made real: runs a fault scenario against a private stack (its own
# nats-server, PostgreSQL and aggregator, under ./data/chaos) while the publisher sends at a
# steady rate, then prints the figures before and after and checks that nothing was lost or
# double counted.
#
#   scripts/chaos.sh [--scenario pg-kill|pg-stop|pg-pause|agg-kill] [--outage SECONDS]
#                    [--rate EVENTS_PER_S] [--count N] [--duplicate-rate R]
#
# pg-kill   SIGKILL the postmaster and its backends, restart after the outage
# pg-stop   clean (fast) shutdown, restart after the outage
# pg-pause  SIGSTOP Postgres (connections hang), SIGCONT after the outage
# agg-kill  stop Postgres, SIGKILL the aggregator mid-outage (its WAL holds records),
#           restart both
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/stack.sh

SCENARIO=pg-kill OUTAGE=10 RATE=2000 COUNT=60000 DUP=0.3
while [ $# -gt 0 ]; do
  case "$1" in
    --scenario) SCENARIO=$2; shift 2 ;;
    --outage) OUTAGE=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --count) COUNT=$2; shift 2 ;;
    --duplicate-rate) DUP=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

scripts/install-deps.sh
cargo build --release --bins -q
DIR=$PWD/data/chaos
rm -rf "$DIR"
trap stack_down EXIT
stack_up "$DIR"
AGG_ENV=(CIRCUIT_BREAKER_TIMEOUT=5s HEALTH_CHECK_INTERVAL=1s WRITE_TIMEOUT=3s RUST_LOG=warn)
agg_up ./target/release/aggregator "${AGG_ENV[@]}"

stats() { curl -fsS "$AGG_URL/stats"; }
health() { curl -sS "$AGG_URL/health"; }
before=$(stats)
echo "before: $before"

./target/release/publisher --nats-url "$NATS_URL" --count "$COUNT" --duplicate-rate "$DUP" \
  --rate "$RATE" --seed 42 --summary json --no-progress >"$DIR/publisher.json" 2>"$DIR/publisher.err" &
PUB=$!
sleep 3
echo "fault: $SCENARIO for ${OUTAGE}s at $RATE events/s"
case "$SCENARIO" in
  pg-kill) pg_kill ;;
  pg-stop) pg_stop ;;
  pg-pause) pg_pause ;;
  agg-kill) pg_stop ;;
  *) echo "unknown scenario $SCENARIO" >&2; exit 2 ;;
esac
if [ "$SCENARIO" = agg-kill ]; then
  sleep $((OUTAGE / 2))
  echo "during: $(health)"
  kill -KILL "$AGG_PID"; wait "$AGG_PID" 2>/dev/null || true
  sleep $((OUTAGE - OUTAGE / 2))
else
  sleep "$OUTAGE"
  echo "during: $(health)"
fi
case "$SCENARIO" in
  pg-pause) pg_resume ;;
  *) pg_start ;;
esac
t_up=$(date +%s.%N)
[ "$SCENARIO" = agg-kill ] && agg_up ./target/release/aggregator "${AGG_ENV[@]}"

# Time until the WAL is empty again.
peak=0
while :; do
  h=$(health || true)
  n=$(echo "$h" | json_num wal_record_count); n=${n:-0}
  [ "$n" -gt "$peak" ] && peak=$n
  [ "$n" -eq 0 ] && echo "$h" | grep -q '"status":"healthy"' && break
  sleep 0.2
done
t_empty=$(date +%s.%N)

wait "$PUB" || { echo "publisher failed:"; cat "$DIR/publisher.err"; exit 1; }
summary=$(cat "$DIR/publisher.json")
published=$(echo "$summary" | json_num published)
unique=$(echo "$summary" | json_num unique)
b_recv=$(echo "$before" | json_num received); b_uniq=$(echo "$before" | json_num unique_processed)
for _ in $(seq 600); do
  r=$(stats | json_num received); [ "$r" -ge $((b_recv + published)) ] && break; sleep 0.2
done
after=$(stats)
echo "after:  $after"
a_recv=$(echo "$after" | json_num received); a_uniq=$(echo "$after" | json_num unique_processed)
rows=$(psql "$DATABASE_URL" -Atc "SELECT count(*) FROM events")
replayed=$(curl -fsS "$AGG_URL/metrics" | awk '/^aggregator_wal_replayed_records_total/ {s+=$2} END {print s+0}')

printf '\n%-34s %s\n' "scenario" "$SCENARIO, ${OUTAGE}s outage, $RATE ev/s"
printf '%-34s %s\n' "published (publisher)" "$published (unique $unique)"
printf '%-34s %s\n' "received delta (/stats)" "$((a_recv - b_recv))"
printf '%-34s %s\n' "unique delta (/stats)" "$((a_uniq - b_uniq))"
printf '%-34s %s\n' "rows in events" "$rows"
printf '%-34s %s\n' "WAL peak records" "$peak"
printf '%-34s %s\n' "WAL replayed (this process)" "$replayed"
printf '%-34s %.1f s\n' "Postgres back -> WAL empty" "$(echo "$t_empty - $t_up" | bc)"
if [ $((a_recv - b_recv)) -eq "$published" ] && [ $((a_uniq - b_uniq)) -eq "$unique" ]; then
  echo "RESULT: no loss, no double count"
else
  echo "RESULT: MISMATCH"; exit 1
fi
