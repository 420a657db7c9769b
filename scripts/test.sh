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
# The same features as the build above: building the aggregator package's own tests rebuilds
# its binary, which must keep its failpoints.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --features aggregator/failpoints --no-fail-fast
else
  cargo test --workspace --features aggregator/failpoints --no-fail-fast
fi

# docker-compose.yml validated offline (no Docker engine needed), and a short k6 load test
# with its thresholds (failure rate, p95) against a private stack (port 1 never answers, so
# k6.sh brings up its own nats-server, Postgres and aggregator).
scripts/validate-compose.sh
BASE_URL=http://127.0.0.1:1 scripts/k6.sh publish --short
