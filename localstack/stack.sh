#!/usr/bin/env bash
# The local AWS for LLM-Orchestrator, without Docker:
#   LocalStack's host runtime (Python >= 3.13) serves SQS and S3 on 127.0.0.1:4566,
#   moto's server serves DynamoDB on 127.0.0.1:4567 (LocalStack's DynamoDB needs a download
#   that fails offline). Without a Python 3.13, moto serves everything.
#
#   localstack/stack.sh up      install (once, into .venv/), start, wait until ready
#   localstack/stack.sh down    stop what `up` started
#   localstack/stack.sh env     print the environment the SDKs and functions need (with the
#                               development key queue messages are signed with)
#
# With a Docker engine, `docker compose -f localstack/compose.yaml up` is the alternative.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUN=$ROOT/.llmo/stack
LS_PORT=${LLMO_LOCALSTACK_PORT:-4566}
MOTO_PORT=${LLMO_MOTO_PORT:-4567}
mkdir -p "$RUN"

python313() {
  for p in "${LLMO_PYTHON313:-}" "$(command -v python3.13 || true)" \
           "$(pyenv root 2>/dev/null)/versions/3.13.0/bin/python3" \
           $(ls -d "$(pyenv root 2>/dev/null)"/versions/3.13*/bin/python3 2>/dev/null); do
    # pyenv's shims exist for versions that are not active: check the interpreter runs.
    [ -n "$p" ] && [ -x "$p" ] && "$p" -c 'import sys; sys.exit(sys.version_info < (3, 13))' 2>/dev/null \
      && { echo "$p"; return; }
  done
}

install() {
  # No wheel cache: on a fresh machine it is a second copy of every venv (CI's disk is small).
  export PIP_NO_CACHE_DIR=1
  if [ ! -x .venv/tools/bin/moto_server ] || [ ! -x .venv/tools/bin/checkov ] || [ ! -x .venv/tools/bin/playwright ] || ! .venv/tools/bin/python -c "import prometheus_client" 2> /dev/null; then
    python3 -m venv .venv/tools
    .venv/tools/bin/pip install -q -r localstack/requirements-tools.txt
  fi
  if [ ! -x .venv/tools/bin/cargo-lambda ]; then
    # Without its dependency ziglang (410 MB): the tests build with `--compiler cargo` for this
    # machine's own target; cross-compiling for arm64 (`make deploy` from x86_64) needs
    # `.venv/tools/bin/pip install ziglang` (README, "Deploying to AWS").
    .venv/tools/bin/pip install -q --no-deps -r localstack/requirements-lambda.txt
  fi
  if [ ! -x .venv/sam/bin/sam ]; then
    # Its own venv: aws-sam-cli pins versions that moto and checkov do not share.
    python3 -m venv .venv/sam
    .venv/sam/bin/pip install -q -r localstack/requirements-sam.txt
  fi
  if [ ! -x .venv/fuzz/bin/schemathesis ]; then
    python3 -m venv .venv/fuzz
    .venv/fuzz/bin/pip install -q -r localstack/requirements-fuzz.txt
  fi
  local py; py=$(python313)
  if [ -n "$py" ] && [ ! -x .venv/localstack/bin/python ]; then
    "$py" -m venv .venv/localstack
    .venv/localstack/bin/pip install -q -c localstack/constraints.txt -r localstack/requirements-localstack.txt \
      || { echo "stack: LocalStack did not install; moto will serve every service" >&2; rm -rf .venv/localstack; }
  fi
}

wait_for() { # url, seconds
  for _ in $(seq 1 $(( $2 * 5 ))); do curl -sf -o /dev/null "$1" && return 0; sleep 0.2; done
  echo "stack: $1 did not answer in $2 s" >&2; return 1
}

up() {
  install
  down >/dev/null 2>&1 || true
  # moto_serial.py: moto's server one request at a time, so a conditional write is atomic.
  "$ROOT/.venv/tools/bin/python" "$ROOT/localstack/moto_serial.py" -H 127.0.0.1 -p "$MOTO_PORT" > "$RUN/moto.log" 2>&1 &
  echo $! > "$RUN/moto.pid"
  if [ -x .venv/localstack/bin/python ] && [ -z "${LLMO_NO_LOCALSTACK:-}" ]; then
    ( cd "$RUN" && SKIP_SSL_CERT_DOWNLOAD=1 GATEWAY_LISTEN=127.0.0.1:$LS_PORT SERVICES=sqs,s3,events,scheduler \
      LOCALSTACK_VOLUME_DIR="$RUN/ls-volume" DISABLE_EVENTS=1 \
      exec "$ROOT/.venv/localstack/bin/python" -m localstack.runtime.main > "$RUN/localstack.log" 2>&1 ) &
    echo $! > "$RUN/localstack.pid"
    echo "http://127.0.0.1:$LS_PORT" > "$RUN/queues-endpoint"
    wait_for "http://127.0.0.1:$MOTO_PORT/moto-api/" 30
    wait_for "http://127.0.0.1:$LS_PORT/_localstack/health" 90
  else
    echo "http://127.0.0.1:$MOTO_PORT" > "$RUN/queues-endpoint"
    wait_for "http://127.0.0.1:$MOTO_PORT/moto-api/" 30
  fi
  env > "$RUN/env"
  cat "$RUN/env"
}

env() {
  # Queue messages are signed (llmo_aws::mac) with a development key made once per checkout.
  [ -s "$RUN/queue-key" ] || (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$RUN/queue-key")
  cat <<E
LLMO_QUEUE_KEYS=$(cat "$RUN/queue-key")
AWS_ACCESS_KEY_ID=test
AWS_SECRET_ACCESS_KEY=test
AWS_REGION=us-east-1
AWS_ENDPOINT_URL=$(cat "$RUN/queues-endpoint" 2>/dev/null || echo "http://127.0.0.1:$MOTO_PORT")
AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:$MOTO_PORT
AWS_ENDPOINT_URL_SECRETS_MANAGER=http://127.0.0.1:$MOTO_PORT
E
}

down() {
  for s in localstack moto; do
    if [ -f "$RUN/$s.pid" ]; then
      kill "$(cat "$RUN/$s.pid")" 2>/dev/null || true
      rm -f "$RUN/$s.pid"
    fi
  done
  # LocalStack's runtime starts helper processes of its own.
  # Only this stack's LocalStack (`-m localstack.runtime.main`), not the Lambda stack's
  # (localstack/lambda/stack.sh runs its own launcher and stops it by PID).
  pkill -f "$ROOT/.venv/localstack/bin/python -m localstack.runtime.main" 2>/dev/null || true
  pkill -f "$ROOT/localstack/moto_serial.py" 2>/dev/null || true
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) env ;;
  install) install ;;
  *) echo "usage: $0 up|down|env|install" >&2; exit 2 ;;
esac
