#!/usr/bin/env bash
# The whole serverless system on this machine, in one command: the local AWS (stack.sh up), the
# table, queues (with the dead-letter queue) and bucket, then the functions in their local modes:
# `api --local` on 127.0.0.1:8080, two `step --local` workers and `dlq --local`. Ctrl-C stops
# the functions and the local AWS.
#
#   localstack/run-local.sh            models answered by the `mock` provider (offline)
#   LLMO_MOCK=0 localstack/run-local.sh   real providers (keys from the environment)
#   localstack/run-local.sh --cfn      the table, queues and bucket created by deploying
#                                      infra/template.yaml on moto's CloudFormation
#   localstack/run-local.sh --smoke    start everything, submit workflows/simple-inference.yaml
#                                      with `llmo submit --wait`, check it succeeded, fuzz the
#                                      API against docs/openapi.json (schemathesis), stop
#
# Then, from another shell: llmo submit workflows/simple-inference.yaml -i question=hi --wait
# Builds with the dev profile (PROFILE=release for optimized binaries). Logs: .llmo/stack/.
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=false
cfn=false
for a in "$@"; do
  case $a in
    --smoke) smoke=true ;;
    --cfn) cfn=true ;;
  esac
done
profile=${PROFILE:-dev}
dir=${CARGO_TARGET_DIR:-target}/debug
[ "$profile" = release ] && dir=${CARGO_TARGET_DIR:-target}/release
addr=${LLMO_API_ADDR:-127.0.0.1:8080}

echo "== building the functions and the CLI ($profile profile)"
# The whole workspace's binaries and examples in one build: its dependencies' features are those
# `cargo test --workspace` builds with, so under `make test` this reuses that build (a build of a
# few packages unifies features over those alone and compiles its own copy of the AWS SDK).
cargo build --profile "$profile" --locked --workspace --bins --examples

echo "== local AWS"
localstack/stack.sh up > /dev/null
pids=()
stop() {
  for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
  wait 2> /dev/null || true
  localstack/stack.sh down > /dev/null 2>&1 || true
}
trap stop EXIT
trap 'exit 130' INT TERM
set -a
eval "$(localstack/stack.sh env)"
if $cfn; then
  # The stack itself, from infra/template.yaml, on moto's CloudFormation: the functions then
  # run against exactly the table, queues and bucket it created (all served by moto).
  echo "== infra/template.yaml deployed on the local CloudFormation"
  deployed=$(.venv/tools/bin/python infra/local_deploy.py --endpoint="$AWS_ENDPOINT_URL_DYNAMODB")
  eval "$deployed"
else
  eval "$("$dir/examples/provision")"
fi
LLMO_MOCK=${LLMO_MOCK:-1}
# The local API verifies HS256 tokens with a development secret kept in .llmo/ (made once).
if [ -z "${LLMO_JWT_SECRET:-}" ]; then
  [ -s .llmo/dev-jwt-secret ] || (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > .llmo/dev-jwt-secret)
  LLMO_JWT_SECRET=$(cat .llmo/dev-jwt-secret)
fi
LLMO_AUTH=hs256
# Approvals' single-use answer links are signed with another development secret.
if [ -z "${LLMO_LINK_SECRET:-}" ]; then
  [ -s .llmo/dev-link-secret ] || (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > .llmo/dev-link-secret)
  LLMO_LINK_SECRET=$(cat .llmo/dev-link-secret)
fi
# Queue messages are signed with a development key (`stack.sh env` sets one; else made once).
if [ -z "${LLMO_QUEUE_KEYS:-}" ]; then
  [ -s .llmo/dev-queue-key ] || (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > .llmo/dev-queue-key)
  LLMO_QUEUE_KEYS=$(cat .llmo/dev-queue-key)
fi
set +a
echo "   table $LLMO_TABLE, queue $LLMO_QUEUE_URL, bucket $LLMO_BUCKET"

log=.llmo/stack
"$dir/api" --local --addr "$addr" > "$log/api.log" 2>&1 &
pids+=($!)
# In the smoke test model calls take 700 ms (the mock's delay), so that the browser test sees
# a run while it runs. The first worker serves its Prometheus metrics.
$smoke && export LLMO_MOCK_DELAY_MS=${LLMO_MOCK_DELAY_MS:-700}
for i in 1 2; do
  metrics=""
  [ "$i" = 1 ] && metrics=${LLMO_STEP_METRICS_ADDR:-127.0.0.1:19464}
  LLMO_METRICS_ADDR=$metrics "$dir/step" --local > "$log/step-$i.log" 2>&1 &
  pids+=($!)
done
"$dir/dlq" --local > "$log/dlq.log" 2>&1 &
pids+=($!)
up() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$addr/workflows")" = 401 ]; }
for _ in $(seq 1 100); do
  up && break
  sleep 0.1
done
up || { echo "the api did not start (or answers without a token): $log/api.log" >&2; exit 1; }
LLMO_TOKEN=$("$dir/llmo" token --tenant local --role admin --sub "$(whoami)" --ttl 86400)
export LLMO_TOKEN
echo "== api on http://$addr, 2 step workers, dlq (logs in $log/)"

if $smoke; then
  # The same end-to-end checks as `llmo serve`'s (tests/api_smoke.sh), then the step worker's
  # metrics.
  FUZZ_TOKEN=$("$dir/llmo" token --tenant local --role admin --role operator --sub fuzz --ttl 3600) \
    LLMO="$dir/llmo" LOG="$log" tests/api_smoke.sh "http://$addr"
  echo "== the step worker's metrics"
  .venv/tools/bin/python tests/ui/metrics_check.py "http://${LLMO_STEP_METRICS_ADDR:-127.0.0.1:19464}/metrics" \
    llmo_steps_total llmo_step_seconds_bucket llmo_queue_wait_seconds_count
  echo "local system: ok"
  exit 0
fi
echo "   export LLMO_TOKEN=$LLMO_TOKEN   # admin of tenant local, for a day"
echo "   run page: http://$addr/ui#token=$LLMO_TOKEN"
echo "   (or: LLMO_JWT_SECRET=\$(cat .llmo/dev-jwt-secret) llmo token --tenant local --role developer)"
echo "   llmo submit workflows/simple-inference.yaml -i question=hi --wait --api http://$addr"
echo "   Ctrl-C stops everything."
wait
