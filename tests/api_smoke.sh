#!/usr/bin/env bash
# The API's end-to-end checks, against any server that speaks it: the deployed composition's
# local mode (localstack/run-local.sh --smoke) and `llmo serve` (tests/serve_smoke.sh) run the
# same ones. Needs LLMO_TOKEN (an admin of the tenant the runs go to) and FUZZ_TOKEN (an
# operator admin); LLMO is the CLI; LOG the directory for logs; METRICS extra metric names the
# API's /metrics must have.
#
#   tests/api_smoke.sh http://127.0.0.1:8080
set -euo pipefail
cd "$(dirname "$0")/.."
url=$1
: "${LLMO:=target/debug/llmo}" "${LOG:=.llmo/stack}"
mkdir -p "$LOG"
out=$("$LLMO" submit workflows/simple-inference.yaml -i question="What is a DAG?" --api "$url" --wait)
echo "$out"
echo "$out" | grep -q '"answer"' || { echo "FAIL: the run did not end with its outputs" >&2; exit 1; }
# The API's contract: schemathesis fuzzes every route of docs/openapi.json with an operator
# admin's token; no answer may be a 5xx, have an undocumented status, or break its schema.
echo "== schemathesis: every route of docs/openapi.json against $url"
.venv/fuzz/bin/schemathesis run docs/openapi.json --url "$url" \
  -H "Authorization: Bearer $FUZZ_TOKEN" --phases examples,fuzzing --max-examples 30 -w 2 \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --seed 1 > "$LOG/schemathesis.log" 2>&1 \
  || { tail -80 "$LOG/schemathesis.log" >&2; echo "FAIL: schemathesis (log: $LOG/schemathesis.log)" >&2; exit 1; }
grep -E "passed|generated" "$LOG/schemathesis.log" | tail -3
# The run page in headless Chromium: a run drawn live, followed to its end.
echo "== run page in headless Chromium (tests/ui/run_page.py)"
tests/ui/chromium.sh > /dev/null
.venv/tools/bin/python tests/ui/run_page.py "$url"
# An approval answered in the browser through its single-use link, then its event.
echo "== answer page in headless Chromium (tests/ui/answer_page.py)"
.venv/tools/bin/python tests/ui/answer_page.py "$url"
echo "== the API's /metrics (operators), parsed"
LLMO_TOKEN=$FUZZ_TOKEN .venv/tools/bin/python tests/ui/metrics_check.py "$url/metrics" llmo_api_requests_total ${METRICS:-}
