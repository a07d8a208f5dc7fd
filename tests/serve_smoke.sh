#!/usr/bin/env bash
# `llmo serve` end to end: started on a fresh state file (models answered by the mock
# provider in 700 ms, so the browser sees runs while they run), it passes the same API checks
# as the deployed composition's local mode (tests/api_smoke.sh: `llmo submit --wait`,
# schemathesis against docs/openapi.json, the run and answer pages in headless Chromium,
# /metrics); then it is stopped with Ctrl-C (SIGINT) mid-run and started again, and the run
# finishes.
#
#   tests/serve_smoke.sh [ADDR]      (default 127.0.0.1:18090; target/debug/llmo)
set -euo pipefail
cd "$(dirname "$0")/.."
addr=${1:-127.0.0.1:18090}
llmo=${LLMO:-target/debug/llmo}
log=.llmo/serve-smoke
rm -rf "$log" && mkdir -p "$log"
state=$log/state.db
pid=
start() {
  LLMO_MOCK_DELAY_MS=${LLMO_MOCK_DELAY_MS:-700} "$llmo" serve --mock --state "$state" --addr "$addr" \
    >> "$log/serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$addr/workflows")" = 401 ] && return 0
    sleep 0.1
  done
  echo "llmo serve did not start: $log/serve.log" >&2
  cat "$log/serve.log" >&2
  exit 1
}
stop() { [ -n "$pid" ] && kill -INT "$pid" 2> /dev/null && wait "$pid" 2> /dev/null || true; pid=; }
trap stop EXIT
start
# The printed development token is an operator admin of tenant `local`.
token=$(sed -n 's/.*LLMO_TOKEN=\([^ ]*\).*/\1/p' "$log/serve.log" | head -1)
[ -n "$token" ] || { echo "FAIL: llmo serve printed no token" >&2; exit 1; }
export LLMO_TOKEN=$token
FUZZ_TOKEN=$token LLMO=$llmo LOG=$log METRICS="llmo_steps_total llmo_step_seconds_bucket" \
  tests/api_smoke.sh "http://$addr"

echo "== the load generator once, small (tests/bench/api_load.sh measures)"
${LOAD:-target/debug/examples/load} "http://$addr" "$token" --clients 4 --seconds 2 --waiting 50 --check \
  > "$log/load.json" 2> "$log/load.err" || { cat "$log/load.err" >&2; exit 1; }

echo "== Ctrl-C mid-run, then a restart: the run finishes"
run=$(curl -sf -H "Authorization: Bearer $token" -H 'content-type: application/json' \
  -d "{\"source\": $(python3 -c 'import json,sys; print(json.dumps(open("workflows/article-pipeline.yaml").read()))'), \"inputs\": {\"topic\": \"graceful stops\"}}" \
  "http://$addr/runs" | python3 -c 'import json,sys; print(json.load(sys.stdin)["run_id"])')
sleep 1
stop
start
for _ in $(seq 1 120); do
  "$llmo" status "$run" --api "http://$addr" > "$log/after-restart.json" 2>&1 || true
  grep -qE '"status": "(succeeded|failed|cancelled|timed_out)"' "$log/after-restart.json" && break
  sleep 0.5
done
grep -q '"status": "succeeded"' "$log/after-restart.json" \
  || { cat "$log/after-restart.json" >&2; echo "FAIL: the run did not succeed after a restart" >&2; exit 1; }
echo "llmo serve: ok"
