# The stream out and the live tail in scripts/bench.sh (sourced; uses its helpers and stack).
#
# downstream_figures sets:
#   OUT_OFF_RATE / OUT_ON_RATE  drain of DS_N pre-loaded events (events/s until all counted),
#                               stream out off and on (median of RUNS each, alternating)
#   OUT_CAUGHT_RATE             stream out on: stored events/s until the output stream held
#                               every one of them (published, acknowledged, cursor saved)
#   OUT_CPU_{PG,NATS,AGG}       CPU-s per 100k events of the drain with the stream out on,
#                               until it caught up, and OUT_OFF_CPU_* with it off
#   SSE_* fan-out: SSE_CLIENTS live tails open while SSE_N events (30% duplicates) are
#         published at full speed; time until every client had every stored event
DS_N=${DS_N:-100000} SSE_N=${SSE_N:-20000} SSE_CLIENTS=${SSE_CLIENTS:-100}

# metric_sum NAME: the sum of every series of NAME on this aggregator's /metrics.
metric_sum() { curl -fsS "$AGG_URL/metrics" | awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%d", s }'; }
# wait_counted N: until the aggregator counted N messages, read from /metrics (its /stats would
# also count the stream out's lag on every poll, a cost of the poll and not of the service).
wait_counted() { while [ "$(metric_sum aggregator_events_received_total)" -lt "$1" ]; do sleep 0.05; done; }

# outbox_drain_run I on|off: one drain on a database, stream and output stream of its own.
outbox_drain_run() {
  local i=$1 mode=$2 run_env t0 t1 t2 pg0 nats0 unique published
  run_env=(STREAM_NAME="OUT$i$mode" SUBJECT_PREFIX="out$i$mode"
           DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/out_${i}_$mode")
  [ "$mode" = on ] && run_env+=(OUTPUT_SUBJECT_PREFIX="uniq$i" OUTPUT_STREAM_NAME="UNIQ$i")
  HTTP_PORT=$(free_port) agg_up "$AGG" "${AGG_ENV[@]}" "${run_env[@]}"
  kill -TERM "$AGG_PID"; wait "$AGG_PID" || true
  publish --subject-prefix "out$i$mode" --count "$DS_N" --seed 1 >"$DIR/ds-preload.json"
  unique=$(json_num unique <"$DIR/ds-preload.json")
  pg0=$(cpu_ticks "$(pg_pid)"); nats0=$(cpu_ticks "$NATS_PID")
  t0=$(now)
  HTTP_PORT=$(free_port) WAL_PATH="$DIR/wal-out$i$mode" agg_up "$AGG" "${AGG_ENV[@]}" "${run_env[@]}"
  wait_counted "$DS_N"
  t1=$(now)
  t2=$t1
  if [ "$mode" = on ]; then
    # The publisher's own counter (one replica): /stats would count the lag on every poll.
    while [ "$(metric_sum aggregator_outbox_published_total)" -lt "$unique" ]; do sleep 0.02; done
    t2=$(now)
  fi
  local agg_ticks pg_ticks nats_ticks
  agg_ticks=$(cpu_ticks "$AGG_PID")
  pg_ticks=$(( $(cpu_ticks "$(pg_pid)") - pg0 )); nats_ticks=$(( $(cpu_ticks "$NATS_PID") - nats0 ))
  kill -TERM "$AGG_PID"; wait "$AGG_PID" || true; AGG_PID=""
  "${PSQL[@]/%aggregator/postgres}" -c "DROP DATABASE out_${i}_$mode"
  local drain caught
  drain=$(rate "$DS_N" "$(elapsed "$t0" "$t1")"); caught=$(rate "$unique" "$(elapsed "$t0" "$t2")")
  echo "   run $i, stream out $mode: drained $DS_N in $(elapsed "$t0" "$t1")s = $drain events/s;" \
    "$( [ "$mode" = on ] && echo "all $unique published after $(elapsed "$t0" "$t2")s = $caught stored events/s;")" \
    "CPU-s/100k: postgres $(cpu_per_100k "$pg_ticks" "$DS_N"), nats $(cpu_per_100k "$nats_ticks" "$DS_N")," \
    "aggregator $(cpu_per_100k "$agg_ticks" "$DS_N")" >&2
  printf '%s %s %s %s %s %s\n' "$mode" "$drain" "$caught" "$pg_ticks" "$nats_ticks" "$agg_ticks" >>"$DIR/out-runs.txt"
}

# sse_fanout: SSE_CLIENTS curl clients on /events/stream of a fresh aggregator, SSE_N events
# published at full speed; the time until the last client has every stored event.
sse_fanout() {
  local run_env t0 t1 unique pids=() i done_n
  run_env=(STREAM_NAME="SSE" SUBJECT_PREFIX="sse"
           DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/sse")
  HTTP_PORT=$(free_port) WAL_PATH="$DIR/wal-sse" agg_up "$AGG" "${AGG_ENV[@]}" "${run_env[@]}"
  mkdir -p "$DIR/sse"
  for i in $(seq "$SSE_CLIENTS"); do
    curl -sN "$AGG_URL/events/stream" >"$DIR/sse/$i.txt" 2>/dev/null &
    pids+=($!)
  done
  while [ "$(curl -fsS "$AGG_URL/metrics" | awk '$1 == "aggregator_event_streams" { print $2 }')" != "$SSE_CLIENTS" ]; do
    sleep 0.05
  done
  local agg0 pg0
  agg0=$(cpu_ticks "$AGG_PID"); pg0=$(cpu_ticks "$(pg_pid)")
  t0=$(now)
  publish --subject-prefix sse --count "$SSE_N" --seed 7 >"$DIR/sse.json"
  unique=$(json_num unique <"$DIR/sse.json")
  while :; do
    done_n=0
    for i in $(seq "$SSE_CLIENTS"); do
      [ "$(grep -c '^data:' "$DIR/sse/$i.txt")" -ge "$unique" ] && done_n=$((done_n + 1))
    done
    [ "$done_n" -eq "$SSE_CLIENTS" ] && break
    sleep 0.2
  done
  t1=$(now)
  SSE_AGG_CPU=$(cpu_per_100k $(( $(cpu_ticks "$AGG_PID") - agg0 )) $(( unique * SSE_CLIENTS )))
  SSE_PG_CPU=$(cpu_per_100k $(( $(cpu_ticks "$(pg_pid)") - pg0 )) $(( unique * SSE_CLIENTS )))
  SSE_DROPPED=$(curl -fsS "$AGG_URL/metrics" | awk '$1 == "aggregator_event_streams_dropped_total" { print $2 }')
  SSE_S=$(elapsed "$t0" "$t1"); SSE_UNIQUE=$unique
  SSE_RATE=$(rate $(( unique * SSE_CLIENTS )) "$SSE_S")
  # Every client got each stored event once: as many events as unique ones, all distinct (the
  # tail's opening line is an id without data, not an event).
  SSE_EXACT=yes
  for i in $(seq "$SSE_CLIENTS"); do
    [ "$(grep '^data:' "$DIR/sse/$i.txt" | sort -u | wc -l)" -eq "$unique" ] || SSE_EXACT=no
    [ "$(grep -c '^data:' "$DIR/sse/$i.txt")" -eq "$unique" ] || SSE_EXACT=no
  done
  kill "${pids[@]}" 2>/dev/null || true
  kill -TERM "$AGG_PID"; wait "$AGG_PID" || true; AGG_PID=""
  rm -rf "$DIR/sse"
  echo "   $SSE_CLIENTS live tails: $unique stored events each in ${SSE_S}s = $SSE_RATE deliveries/s;" \
    "each once: $SSE_EXACT; dropped ${SSE_DROPPED:-0};" \
    "CPU-s/100k deliveries: aggregator $SSE_AGG_CPU, postgres $SSE_PG_CPU" >&2
}

downstream_figures() {
  echo "== stream out: drain of $DS_N pre-loaded events with it off and on, $RUNS run(s) each" >&2
  : >"$DIR/out-runs.txt"
  for i in $(seq "$RUNS"); do outbox_drain_run "$i" off; outbox_drain_run "$i" on; done
  ocol() { awk -v m="$1" -v c="$2" '$1 == m { print $c }' "$DIR/out-runs.txt"; }
  OUT_OFF_RATE=$(ocol off 2 | median | xargs printf '%.0f'); OUT_ON_RATE=$(ocol on 2 | median | xargs printf '%.0f')
  OUT_CAUGHT_RATE=$(ocol on 3 | median | xargs printf '%.0f')
  OUT_CPU_PG=$(cpu_per_100k "$(ocol on 4 | median)" "$DS_N"); OUT_OFF_CPU_PG=$(cpu_per_100k "$(ocol off 4 | median)" "$DS_N")
  OUT_CPU_NATS=$(cpu_per_100k "$(ocol on 5 | median)" "$DS_N"); OUT_OFF_CPU_NATS=$(cpu_per_100k "$(ocol off 5 | median)" "$DS_N")
  OUT_CPU_AGG=$(cpu_per_100k "$(ocol on 6 | median)" "$DS_N"); OUT_OFF_CPU_AGG=$(cpu_per_100k "$(ocol off 6 | median)" "$DS_N")
  echo "== live tail fan-out: $SSE_CLIENTS clients, $SSE_N events (30% duplicates) at full speed" >&2
  sse_fanout
}

downstream_table() {
  row "drain $DS_N, stream out off (events/s)" "$OUT_OFF_RATE"
  row "drain $DS_N, stream out on (events/s)" "$OUT_ON_RATE"
  row "stream out caught up (stored events/s)" "$OUT_CAUGHT_RATE"
  row "CPU-s/100k off -> on: Postgres" "$OUT_OFF_CPU_PG -> $OUT_CPU_PG"
  row "CPU-s/100k off -> on: nats-server" "$OUT_OFF_CPU_NATS -> $OUT_CPU_NATS"
  row "CPU-s/100k off -> on: aggregator" "$OUT_OFF_CPU_AGG -> $OUT_CPU_AGG"
  row "$SSE_CLIENTS live tails: deliveries/s" "$SSE_RATE"
  row "$SSE_CLIENTS live tails: all $SSE_UNIQUE events in (s)" "$(printf '%.1f' "$SSE_S")"
  row "$SSE_CLIENTS live tails: each event once, dropped" "$SSE_EXACT, ${SSE_DROPPED:-0}"
  row "live tails CPU-s/100k deliveries: aggregator" "$SSE_AGG_CPU"
}

downstream_json() {
  echo "\"downstream_events\": $DS_N, \"stream_out_off_events_per_s\": $OUT_OFF_RATE," \
    "\"stream_out_on_events_per_s\": $OUT_ON_RATE, \"stream_out_caught_up_events_per_s\": $OUT_CAUGHT_RATE," \
    "\"stream_out_cpu_s_per_100k\": {\"off\": {\"postgres\": $OUT_OFF_CPU_PG, \"nats_server\": $OUT_OFF_CPU_NATS, \"aggregator\": $OUT_OFF_CPU_AGG}," \
    "\"on\": {\"postgres\": $OUT_CPU_PG, \"nats_server\": $OUT_CPU_NATS, \"aggregator\": $OUT_CPU_AGG}}," \
    "\"sse_clients\": $SSE_CLIENTS, \"sse_events\": $SSE_UNIQUE, \"sse_seconds\": $SSE_S," \
    "\"sse_deliveries_per_s\": $SSE_RATE, \"sse_each_once\": \"$SSE_EXACT\", \"sse_dropped\": ${SSE_DROPPED:-0}," \
    "\"sse_aggregator_cpu_s_per_100k_deliveries\": $SSE_AGG_CPU"
}
