#!/usr/bin/env bash
# The `step` and `dlq` functions as real Lambda functions on this machine (LocalStack's Lambda
# in Docker, fed by SQS event source mappings deployed as infra/template.yaml declares them),
# with `api --local` on the host and no local step worker: the example workflows run to
# success through the mappings; a poison message reaches the dead-letter queue and the `dlq`
# function fails its run; a duplicate delivery changes nothing; runs/s and the time from
# `POST /runs` to the first step are printed. Everything it starts is stopped by PID at the end.
# The step queue's visibility timeout is 2 s here (the template's is minutes) so that five
# deliveries of the poison message take seconds.
#
#   localstack/lambda/smoke.sh      (debug binaries: target/debug/{step,dlq,schedule,api,llmo}, examples/)
#   FUNCTIONS=target/lambda localstack/lambda/smoke.sh   the functions from `cargo lambda build`
#                                   (target/lambda/NAME/bootstrap; `make package` runs it so)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${BIN:-target/debug}
functions=${FUNCTIONS:-$bin}
run=.llmo/lambda
addr=${LLMO_LAMBDA_API_ADDR:-127.0.0.1:18332}
api_pid=
stop() {
  [ -n "$api_pid" ] && kill "$api_pid" 2> /dev/null || true
  localstack/lambda/stack.sh down > /dev/null 2>&1 || true
}
trap stop EXIT
t0=$(date +%s)
echo "== the Lambda stack (Docker engine, LocalStack with Lambda, moto)"
ip link > "$run.links.before" 2> /dev/null || true
localstack/lambda/stack.sh up > /dev/null
set -a
eval "$(localstack/lambda/stack.sh env)"
set +a
name=lambda$$
eval "$(LLMO_TABLE=$name LLMO_BUCKET=$name LLMO_QUEUE=$name-provisioned "$bin/examples/provision" \
  | grep -E '^LLMO_(TABLE|BUCKET)=' | sed 's/^/export /')"
# The image is Debian's glibc 2.36; Amazon Linux 2023 has 2.34: a bootstrap that needs more
# would pass here and fail on AWS, so the symbol versions it needs are checked.
for f in step dlq schedule; do
  file=$functions/$f
  [ -f "$file/bootstrap" ] && file=$file/bootstrap
  need=$(objdump -T "$file" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
  [ "$(printf '%s\n2.34\n' "$need" | sort -V | tail -1)" = 2.34 ] \
    || { echo "FAIL: $file needs glibc $need; Amazon Linux 2023 has 2.34" >&2; exit 1; }
  echo "   $f needs glibc $need (Amazon Linux 2023: 2.34)"
done
echo "== step, dlq and schedule deployed from infra/template.yaml"
queues=$(.venv/tools/bin/python localstack/lambda/deploy.py --bin "$functions" --prefix "$name" \
  --env LLMO_TABLE="$LLMO_TABLE" --env LLMO_BUCKET="$LLMO_BUCKET" \
  --env AWS_ENDPOINT_URL_DYNAMODB="$AWS_ENDPOINT_URL_DYNAMODB" \
  --env AWS_ENDPOINT_URL_SECRETS_MANAGER="$AWS_ENDPOINT_URL_SECRETS_MANAGER" \
  --env LLMO_QUEUE_KEYS="$LLMO_QUEUE_KEYS" --env AWS_EC2_METADATA_DISABLED=true \
  --env LLMO_MOCK=1 --env RUST_LOG=info --visibility 2 2> "$run/deploy.log") \
  || { cat "$run/deploy.log" >&2; exit 1; }
set -a
eval "$queues"
LLMO_AUTH=hs256
LLMO_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
LLMO_MOCK=1
set +a
"$bin/api" --local --addr "$addr" > "$run/api.log" 2>&1 &
api_pid=$!
for _ in $(seq 1 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$addr/workflows")" = 401 ] && break
  sleep 0.1
done
export LLMO_TOKEN
LLMO_TOKEN=$("$bin/llmo" token --tenant local --role admin)
echo "== the examples through the step function's mapping (no local step worker)"
for wf in "simple-inference.yaml question=What-is-a-DAG" "article-pipeline.yaml topic=lambda-on-localstack"; do
  set -- $wf
  start=$(date +%s.%N)
  out=$(timeout 120 "$bin/llmo" submit "workflows/$1" -i "$2" --api "http://$addr" --wait 2> "$run/submit.log") \
    || { cat "$run/submit.log" >&2; tail -30 "$run/localstack.log" >&2; echo "FAIL: $1" >&2; exit 1; }
  printf '   %s: succeeded in %.1f s\n' "$1" "$(echo "$(date +%s.%N) - $start" | bc)"
done
echo "== a poison message, a duplicate delivery, the figures, a function killed mid-batch (checks.py)"
.venv/tools/bin/python localstack/lambda/checks.py "http://$addr" "$bin/examples/send_body" "$name-step" "${LAMBDA_RUNS:-20}" \
  || { tail -40 "$run/localstack.log" >&2; exit 1; }
if [ -s "$run.links.before" ]; then
  ip link | diff -q "$run.links.before" - > /dev/null || { echo "FAIL: the network links changed" >&2; exit 1; }
fi
echo "lambda stack: ok ($(($(date +%s) - t0)) s)"
