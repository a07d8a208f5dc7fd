#!/usr/bin/env bash
# The API under load (shared/api/examples/load.rs), on `llmo serve` and on the local stack's
# `api --local` (release builds): POST /runs and GET /runs/{id} latency with many clients, then
# with many runs waiting for an approval, the server's memory and state file, and (from its
# /metrics) its own time apart from time waiting on AWS.
#
#   tests/bench/api_load.sh serve [CLIENTS SECONDS WAITING]   (default 16 20 10000)
#   tests/bench/api_load.sh stack [CLIENTS SECONDS WAITING]   (default 4 20 200: the emulators
#                                                             are the limit, see BENCHMARKS.md)
# Prints the load generator's JSON report on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${1:?serve or stack}
rel=${CARGO_TARGET_DIR:-target}/release
case $mode in
  serve)
    clients=${2:-16} seconds=${3:-20} waiting=${4:-10000}
    dir=$(mktemp -d)
    addr=127.0.0.1:18099
    "$rel/llmo" serve --mock --state "$dir/state.db" --addr "$addr" --workers 4 > "$dir/serve.log" 2>&1 &
    pid=$!
    trap 'kill -INT $pid 2> /dev/null; wait $pid 2> /dev/null; rm -rf "$dir"' EXIT
    for _ in $(seq 1 100); do
      [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$addr/workflows")" = 401 ] && break
      sleep 0.1
    done
    token=$(sed -n 's/.*LLMO_TOKEN=\([^ ]*\).*/\1/p' "$dir/serve.log" | head -1)
    "$rel/examples/load" "http://$addr" "$token" --clients "$clients" --seconds "$seconds" \
      --waiting "$waiting" --pid "$pid" --state "$dir/state.db"
    ;;
  stack)
    clients=${2:-4} seconds=${3:-20} waiting=${4:-200}
    addr=127.0.0.1:18098
    log=$(mktemp)
    PROFILE=release LLMO_API_ADDR=$addr localstack/run-local.sh > "$log" 2>&1 &
    runner=$!
    trap 'kill -INT $runner 2> /dev/null; wait $runner 2> /dev/null; rm -f "$log"' EXIT
    for _ in $(seq 1 600); do
      grep -q "export LLMO_TOKEN" "$log" && break
      sleep 0.5
    done
    token=$(sed -n 's/.*export LLMO_TOKEN=\([^ ]*\).*/\1/p' "$log" | head -1)
    [ -n "$token" ] || { cat "$log" >&2; exit 1; }
    # An operator's token: the API's /metrics (its own time vs time waiting on AWS).
    op=$(LLMO_JWT_SECRET=$(cat .llmo/dev-jwt-secret) "$rel/llmo" token --tenant local --role admin --role operator --ttl 3600)
    pid=$(pgrep -f "release/api --local --addr $addr" | head -1 || true)
    "$rel/examples/load" "http://$addr" "$op" --clients "$clients" --seconds "$seconds" --waiting "$waiting" \
      ${pid:+--pid "$pid"}
    ;;
  *) echo "serve or stack" >&2; exit 2 ;;
esac
