#!/usr/bin/env bash
# Runs a command with the local AWS up (and its environment exported), then stops the stack,
# whatever the command's outcome:  localstack/with-stack.sh cargo test --workspace
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/stack.sh" up > /dev/null
trap '"$here/stack.sh" down' EXIT
set -a
eval "$("$here/stack.sh" env)"
set +a
export LLMO_REQUIRE_AWS=1
"$@"
