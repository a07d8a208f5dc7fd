#!/usr/bin/env bash
# Packages every function with cargo-lambda, then runs `api` and `step` under
# `cargo lambda watch` (the Lambda runtime API emulator) and invokes them with real event
# payloads (API Gateway HTTP API v2, SQS) from functions/events/. Needs the local stack:
#   localstack/with-stack.sh functions/lambda-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/tools/bin:$PATH"
command -v cargo-lambda > /dev/null || localstack/stack.sh install

echo "== cargo lambda build --release (every function)"
cargo lambda build --release --compiler cargo \
  -p llmo-fn-api -p llmo-fn-step -p llmo-fn-dlq -p llmo-fn-schedule
for f in api step dlq schedule; do
  test -x "target/lambda/$f/bootstrap" || { echo "FAIL: no target/lambda/$f/bootstrap" >&2; exit 1; }
done

# A table, queues and bucket of this test's own.
name="lambda-test-$$"
eval "$(LLMO_TABLE=$name LLMO_BUCKET=$name cargo run -q --release -p llmo-aws --example provision | sed 's/^/export /')"
export LLMO_TABLE LLMO_QUEUE_URL LLMO_DLQ_URL LLMO_BUCKET LLMO_MOCK=1

port=$((19000 + RANDOM % 1000))
echo "== cargo lambda watch --invoke-port $port"
cargo lambda watch --invoke-port "$port" --only-lambda-apis > .llmo/stack/lambda-watch.log 2>&1 &
watch_pid=$!
trap 'kill $watch_pid 2>/dev/null; pkill -P $watch_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 150); do
  curl -s -o /dev/null "http://127.0.0.1:$port/" && break
  sleep 0.2
done

invoke() { # function, event file
  cargo lambda invoke "$1" --invoke-port "$port" --data-file "$2" --output-format json
}

echo "== invoke api: POST /runs (API Gateway v2 event)"
out=$(invoke api functions/events/apigw-v2-start-run.json)
echo "$out"
run_id=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); assert r["statusCode"]==201, r; print(json.loads(r["body"])["run_id"])' "$out")

echo "== invoke step: an SQS batch (the run's start, and a start of a run that does not exist)"
sed "s/RUN_ID/$run_id/" functions/events/sqs-step.json > .llmo/stack/sqs-event.json
out=$(invoke step .llmo/stack/sqs-event.json)
echo "$out"
python3 - "$out" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
failed = [f["itemIdentifier"] for f in r["batchItemFailures"]]
assert failed == ["2e1424d4-f796-459a-8184-9c92662be6da"], f"only the unknown run's message fails: {r}"
PY

echo "== invoke api: GET /runs (the run is listed, started)"
out=$(invoke api functions/events/apigw-v2-list-runs.json)
echo "$out"
python3 - "$out" "$run_id" <<'PY'
import json, sys
r = json.loads(sys.argv[1]); body = json.loads(r["body"])
runs = {x["run_id"]: x for x in body["runs"]}
assert r["statusCode"] == 200 and sys.argv[2] in runs, r
assert runs[sys.argv[2]]["status"] == "running", runs[sys.argv[2]]
PY
echo "lambda test: ok"
