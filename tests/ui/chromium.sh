#!/usr/bin/env bash
# Installs Debian's chromium for the browser test when it is missing (a fresh CI machine).
# The test drives it with Playwright for Python (in .venv/tools), never a downloaded browser.
set -euo pipefail
command -v chromium > /dev/null && exit 0
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq > /dev/null
$sudo apt-get install -y -qq --no-install-recommends chromium > /dev/null
command -v chromium
