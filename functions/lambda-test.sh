#!/usr/bin/env bash
# Runs the api, step, schedule and dlq functions under `cargo lambda watch` (the Lambda runtime
# API emulator) and calls them with `cargo lambda invoke` and real event payloads, against the
# local stack (functions/lambda_test.py says what is checked). Part of `make test`.
#
#   localstack/with-stack.sh functions/lambda-test.sh             the debug binaries
#                                                                 (target/debug/NAME)
#   localstack/with-stack.sh functions/lambda-test.sh --packaged  `cargo lambda build --profile lambda`
#                                                                 first, then the packaged bootstraps
#
# Either way watch serves only the runtime API and each function polls it as it would Lambda's.
# The debug binaries come from one `cargo build --workspace --bins --examples`, whose features
# are those `cargo test --workspace` builds with: no second copy of the dependencies (a
# `cargo run --bin NAME` per function builds each with its own features, a copy of the AWS SDK
# each, and filled CI's disk).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/tools/bin:$PATH"
command -v cargo-lambda > /dev/null || localstack/stack.sh install
packaged=false
[ "${1:-}" = --packaged ] && packaged=true
mkdir -p .llmo/stack
functions="api step schedule dlq"

if $packaged; then
  echo "== cargo lambda build --profile lambda (every function)"
  cargo lambda build --profile lambda --compiler cargo --locked \
    -p llmo-fn-api -p llmo-fn-step -p llmo-fn-dlq -p llmo-fn-schedule
  for f in $functions; do
    test -x "${CARGO_TARGET_DIR:-target}/lambda/$f/bootstrap" || { echo "FAIL: no ${CARGO_TARGET_DIR:-target}/lambda/$f/bootstrap" >&2; exit 1; }
  done
fi

# The functions, `llmo` (`llmo infra` makes the event rule the events check puts on the bus) and
# the provision example.
cargo build -q --locked --workspace --bins --examples
debug=${CARGO_TARGET_DIR:-target}/debug

# A table, queues and bucket of this test's own.
name="lambda-test-$$"
eval "$(LLMO_TABLE=$name LLMO_BUCKET=$name LLMO_QUEUE=$name "$debug/examples/provision" | sed 's/^/export /')"
export LLMO_TABLE LLMO_QUEUE_URL LLMO_DLQ_URL LLMO_BUCKET LLMO_MOCK=1 LLMO_AUTH=apigateway LLMO_FIXTURES=$PWD/workflows/fixtures/document-intake.http.yaml RUST_LOG=${RUST_LOG:-info}

export LAMBDA_TEST_PORT=$((19000 + RANDOM % 1000))
log=.llmo/stack/lambda-watch.log
pids=()
cleanup() {
  for p in "${pids[@]}"; do pkill -P "$p" 2> /dev/null || true; kill "$p" 2> /dev/null || true; done
}
trap cleanup EXIT
cargo lambda watch --invoke-port "$LAMBDA_TEST_PORT" --only-lambda-apis > "$log" 2>&1 &
pids+=($!)
echo "== cargo lambda watch on port $LAMBDA_TEST_PORT (log: $log)"
for _ in $(seq 1 150); do
  (: < "/dev/tcp/127.0.0.1/$LAMBDA_TEST_PORT") 2> /dev/null && break # listening
  sleep 0.2
done
for f in $functions; do
  bin=$debug/$f
  $packaged && bin=${CARGO_TARGET_DIR:-target}/lambda/$f/bootstrap
  AWS_LAMBDA_RUNTIME_API="http://127.0.0.1:$LAMBDA_TEST_PORT/.rt/$f" AWS_LAMBDA_FUNCTION_NAME=$f \
    AWS_LAMBDA_FUNCTION_VERSION=1 AWS_LAMBDA_FUNCTION_MEMORY_SIZE=128 \
    "$bin" > ".llmo/stack/lambda-$f.log" 2>&1 &
  pids+=($!)
done
sleep 0.5
for p in "${pids[@]}"; do
  kill -0 "$p" 2> /dev/null || { echo "FAIL: a function exited at start (.llmo/stack/lambda-*.log)" >&2; exit 1; }
done

python=.venv/localstack/bin/python # has boto3 (LocalStack and moto both depend on it)
[ -x "$python" ] || python=.venv/tools/bin/python
if ! "$python" functions/lambda_test.py; then
  for l in "$log" .llmo/stack/lambda-{api,step,schedule,dlq}.log; do
    echo "--- last lines of $l" >&2
    tail -n 25 "$l" >&2
  done
  exit 1
fi
