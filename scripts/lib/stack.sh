# Shell helpers to run a PRIVATE stack (nats-server + PostgreSQL + aggregator) under one
# directory, on chosen ports, for scripts/chaos.sh and scripts/bench.sh. Source it.
# Nothing here touches the machine's own services.

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
# nats_bin: NATS_SERVER_BIN, else the pinned current server if installed, else PATH.
# shellcheck source=nats-server.sh
source "$(dirname "${BASH_SOURCE[0]}")/nats-server.sh"
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { for _ in $(seq 300); do port_open "$1" && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; return 1; }
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# stack_up DIR: starts nats (NATS_PORT) and postgres (PG_PORT) under DIR.
stack_up() {
  STACK_DIR=$1; mkdir -p "$STACK_DIR"
  [ "$(id -u)" -eq 0 ] && chown postgres "$STACK_DIR" && chmod 755 "$STACK_DIR"
  NATS_PORT=${NATS_PORT:-$(free_port)}; PG_PORT=${PG_PORT:-$(free_port)}
  local nats; nats=$(nats_bin)
  echo "private stack: nats-server $(nats_version "$nats") ($nats)" >&2
  "$nats" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$STACK_DIR/nats" >"$STACK_DIR/nats.log" 2>&1 &
  NATS_PID=$!
  PGDATA="$STACK_DIR/pg"
  if [ ! -f "$PGDATA/PG_VERSION" ]; then
    as_pg "$(pg_bin)/initdb" -D "$PGDATA" -U postgres -A trust --no-sync >/dev/null
  fi
  pg_start
  wait_port "$NATS_PORT"
  export NATS_URL="nats://127.0.0.1:$NATS_PORT" DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/aggregator"
}

pg_start() {
  as_pg "$(pg_bin)/pg_ctl" -D "$PGDATA" -l "$STACK_DIR/pg.log" -w -o \
    "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $STACK_DIR -c max_connections=200 ${PG_EXTRA_OPTS:-}" start >/dev/null
}
pg_pid() { head -1 "$PGDATA/postmaster.pid" 2>/dev/null; }
pg_kill() { local p; p=$(pg_pid); [ -n "$p" ] && { pkill -KILL -P "$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; }; sleep 0.5; }
pg_stop() { as_pg "$(pg_bin)/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1 || true; }
pg_pause() { local p; p=$(pg_pid); kill -STOP "$p"; pkill -STOP -P "$p"; }
pg_resume() { local p; p=$(pg_pid); pkill -CONT -P "$p"; kill -CONT "$p"; }

# agg_up BINARY [ENV=VALUE...]: starts the aggregator on HTTP_PORT, waits for /ready.
agg_up() {
  local bin=$1; shift
  HTTP_PORT=${HTTP_PORT:-$(free_port)}
  AGG_URL="http://127.0.0.1:$HTTP_PORT"
  env HTTP_ADDR="127.0.0.1:$HTTP_PORT" WAL_PATH="${WAL_PATH:-$STACK_DIR/wal}" "$@" "$bin" >>"$STACK_DIR/aggregator.log" 2>&1 &
  AGG_PID=$!
  for _ in $(seq 600); do curl -fsS "$AGG_URL/ready" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "aggregator not ready; log:" >&2; tail -20 "$STACK_DIR/aggregator.log" >&2; return 1
}

stack_down() {
  set +e
  [ -n "${AGG_PID:-}" ] && kill -TERM "$AGG_PID" 2>/dev/null && wait "$AGG_PID" 2>/dev/null
  [ -n "${PGDATA:-}" ] && { pg_resume 2>/dev/null; pg_stop; }
  [ -n "${NATS_PID:-}" ] && kill -TERM "$NATS_PID" 2>/dev/null && wait "$NATS_PID" 2>/dev/null
  true
}

# json_num FIELD: first numeric value of FIELD in the JSON on stdin.
json_num() { grep -o "\"$1\": *[0-9.]*" | head -1 | grep -o '[0-9.]*$'; }
json_str() { grep -o "\"$1\": *\"[^\"]*\"" | head -1 | sed 's/.*: *"\(.*\)"/\1/'; }
