#!/usr/bin/env bash
# The local stack with LocalStack's Lambda service running the functions for real: the Docker
# engine (engine.sh), LocalStack (SQS, S3, Lambda, EventBridge Scheduler) with the changes of
# localstack_lambda.py, and moto for DynamoDB and Secrets Manager. Every address is 127.0.0.1.
#
#   localstack/lambda/stack.sh up     start all (installs what is missing), print the env
#   localstack/lambda/stack.sh env    the env to export (AWS_*, LLMO_QUEUE_KEYS)
#   localstack/lambda/stack.sh down   stop what `up` started, by PID: LocalStack (it removes its
#                                     function containers), moto, then the engine
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
RUN=$ROOT/.llmo/lambda
LS_PORT=${LLMO_LAMBDA_LOCALSTACK_PORT:-4620}
MOTO_PORT=${LLMO_LAMBDA_MOTO_PORT:-4621}
mkdir -p "$RUN"

wait_for() { # url, seconds
  for _ in $(seq 1 $(($2 * 5))); do curl -sf -o /dev/null "$1" && return 0; sleep 0.2; done
  echo "lambda stack: $1 did not answer in $2 s" >&2
  return 1
}

stop_pid() { # file, seconds
  [ -f "$1" ] || return 0
  local pid; pid=$(cat "$1")
  kill "$pid" 2> /dev/null || true
  for _ in $(seq 1 $(($2 * 10))); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2> /dev/null || true
  rm -f "$1"
}

up() {
  localstack/stack.sh install
  [ -x .venv/localstack/bin/python ] || { echo "lambda stack: LocalStack is not installed (needs Python 3.13)" >&2; exit 1; }
  localstack/lambda/engine.sh up
  down_services
  "$ROOT/.venv/tools/bin/python" "$ROOT/localstack/moto_serial.py" -H 127.0.0.1 -p "$MOTO_PORT" > "$RUN/moto.log" 2>&1 &
  echo $! > "$RUN/moto.pid"
  local image; image=$(localstack/lambda/engine.sh image)
  (cd "$RUN" && exec env DOCKER_HOST="unix://$RUN/docker.sock" SKIP_SSL_CERT_DOWNLOAD=1 \
    GATEWAY_LISTEN=127.0.0.1:$LS_PORT LOCALSTACK_HOST=127.0.0.1:$LS_PORT SQS_ENDPOINT_STRATEGY=off \
    DNS_ADDRESS=0 DISABLE_EVENTS=1 SERVICES=sqs,s3,lambda,sts,iam,logs,scheduler \
    LOCALSTACK_VOLUME_DIR="$RUN/ls-volume" LAMBDA_DOCKER_NETWORK=host HOSTNAME_FROM_LAMBDA=127.0.0.1 \
    LAMBDA_RUNTIME_IMAGE_MAPPING="{\"provided.al2023\": \"$image\", \"provided.al2\": \"$image\"}" \
    "$ROOT/.venv/localstack/bin/python" "$ROOT/localstack/lambda/localstack_lambda.py" > "$RUN/localstack.log" 2>&1) &
  echo $! > "$RUN/localstack.pid"
  wait_for "http://127.0.0.1:$MOTO_PORT/moto-api/" 30
  wait_for "http://127.0.0.1:$LS_PORT/_localstack/health" 90
  env
}

env() {
  [ -s "$RUN/queue-key" ] || (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$RUN/queue-key")
  cat << E
LLMO_QUEUE_KEYS=$(cat "$RUN/queue-key")
AWS_ACCESS_KEY_ID=test
AWS_SECRET_ACCESS_KEY=test
AWS_REGION=us-east-1
AWS_DEFAULT_REGION=us-east-1
AWS_EC2_METADATA_DISABLED=true
AWS_ENDPOINT_URL=http://127.0.0.1:$LS_PORT
AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:$MOTO_PORT
AWS_ENDPOINT_URL_SECRETS_MANAGER=http://127.0.0.1:$MOTO_PORT
E
}

down_services() {
  stop_pid "$RUN/localstack.pid" 60
  stop_pid "$RUN/moto.pid" 10
}

down() {
  down_services
  localstack/lambda/engine.sh down
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) env ;;
  *) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
