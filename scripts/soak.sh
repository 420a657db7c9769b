#!/usr/bin/env bash
# Soak run of the seeded fault-schedule checker: builds the workspace binaries, then runs
# consecutive seeds for N minutes and prints one line per schedule and the totals.
#
#   scripts/soak.sh --minutes N [--first-seed S]
#
# A failing seed prints `CHECKER FAILED seed=<n>: ...` with its schedule and log tails;
# replay it with `fault-checker --seed <n>`. Exit status: non-zero if any schedule failed.
# CARGO_TARGET_DIR is honoured (default: ./target).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: $0 --minutes N [--first-seed S]" >&2; exit 2; }
minutes=""
first=()
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) [ $# -ge 2 ] || usage; minutes="$2"; shift 2 ;;
    --first-seed) [ $# -ge 2 ] || usage; first=(--first-seed "$2"); shift 2 ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
done
[ -n "$minutes" ] || usage

cargo build --workspace --bins --features aggregator/failpoints
target="${CARGO_TARGET_DIR:-target}"
export IT_SKIP_BUILD=1
exec "$target/debug/fault-checker" --minutes "$minutes" "${first[@]}"
