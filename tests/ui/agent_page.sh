#!/usr/bin/env bash
# An agent's turns on the run page: `llmo run --ui` of workflows/agents/support-agent.yaml with
# its model and orders API scripted (tests/ui/agent.fixtures.yaml), checked in headless
# Chromium by tests/ui/agent_page.py (which approves the refund call with `llmo approve` while the
# page is open); the server is stopped after.
#
#   tests/ui/agent_page.sh      (target/debug/llmo; .venv/tools from localstack/stack.sh install)
set -euo pipefail
cd "$(dirname "$0")/../.."
llmo=${LLMO:-target/debug/llmo}
tests/ui/chromium.sh > /dev/null
log=$(mktemp -d)
trap 'kill "$pid" 2> /dev/null || true; rm -rf "$log"' EXIT
"$llmo" run --mock --fixtures tests/ui/agent.fixtures.yaml --state "$log/state.db" --ui=127.0.0.1:0 \
  workflows/agents/support-agent.yaml -i question="Can I get a refund for A-17?" > "$log/out" 2> "$log/err" &
pid=$!
url=
for _ in $(seq 1 100); do
  url=$(grep -o 'http://[^ ]*/ui/runs/[^ ]*' "$log/err" | head -1 || true)
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "FAIL: llmo run --ui printed no run page" >&2; cat "$log/err" >&2; exit 1; }
.venv/tools/bin/python tests/ui/agent_page.py "$url" "$llmo" "$log/state.db"
