#!/usr/bin/env bash
# The test command (README "Run the tests"): installs what is missing, then checks formatting,
# lints with warnings as errors, and runs every unit and integration test. Integration tests
# start their own private nats-server and PostgreSQL on random ports; the machine's services
# are not touched.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh --test
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p aggregator --features failpoints -- -D warnings
# Binaries first: integration tests run the real `aggregator` and `publisher` processes, the
# aggregator with its test-only fault injection (AGGREGATOR_FAILPOINT) compiled in.
cargo build --workspace --bins --features aggregator/failpoints
# The tests use exactly these binaries (no rebuild from inside the test run).
export IT_SKIP_BUILD=1
# Every private nats-server is the pinned current one (installed above; the harness logs which
# binary it runs, tests/src/nats_server.rs).
# The same features as the build above: building the aggregator package's own tests rebuilds
# its binary, which must keep its failpoints.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --features aggregator/failpoints --no-fail-fast
else
  cargo test --workspace --features aggregator/failpoints --no-fail-fast
fi

# Smoke run against Debian's nats-server 2.9.10 (2022, the oldest supported; README
# "Guarantees"): the 20,000-event pipeline run, the stream identity (2.9 drops stream
# metadata), a cluster failover and a Postgres outage, in about a minute.
OLD_NATS=/usr/sbin/nats-server
if [ -x "$OLD_NATS" ]; then
  echo "smoke run against $("$OLD_NATS" --version)" >&2
  SMOKE='test(=twenty_thousand_events_with_thirty_percent_duplicates_are_counted_exactly)
    | test(=stream_identity_does_not_depend_on_the_creation_time_the_server_reports)
    | test(=cluster_failover_keeps_counts_exact)
    | test(=postgres_killed_for_ten_seconds_under_load_loses_nothing)'
  if cargo nextest --version >/dev/null 2>&1; then
    NATS_SERVER_BIN=$OLD_NATS cargo nextest run --workspace --features aggregator/failpoints \
      --no-fail-fast -E "$SMOKE"
  else
    for t in twenty_thousand_events_with_thirty_percent_duplicates_are_counted_exactly \
      stream_identity_does_not_depend_on_the_creation_time_the_server_reports \
      cluster_failover_keeps_counts_exact postgres_killed_for_ten_seconds_under_load_loses_nothing; do
      NATS_SERVER_BIN=$OLD_NATS cargo test --workspace --features aggregator/failpoints -- --exact "$t"
    done
  fi
else
  echo "note: $OLD_NATS missing, no smoke run against nats-server 2.9" >&2
fi

# docker-compose.yml validated offline (no Docker engine needed), and a short k6 load test
# with its thresholds (failure rate, p95) against a private stack (port 1 never answers, so
# k6.sh brings up its own nats-server, Postgres and aggregator).
scripts/validate-compose.sh
BASE_URL=http://127.0.0.1:1 scripts/k6.sh publish --short
