#!/usr/bin/env bash
# The Docker engine LocalStack's Lambda runs the functions in, and the functions' runtime
# image, on this machine only: no bridge, no firewall rules, every container on the host
# network (this machine's network is watched; see ../../shared/notes/local-lambda.md).
#
#   localstack/lambda/engine.sh up      install docker.io and debootstrap if missing (refused
#                                        unless /usr/sbin/policy-rc.d keeps the package from
#                                        starting a default engine), start the engine, build
#                                        the image; prints nothing else on success
#   localstack/lambda/engine.sh down    stop the engine this script started (by its PID)
#   localstack/lambda/engine.sh image   the runtime image's name
#
# The engine's state is in .llmo/lambda/ (its PID, socket and logs). An engine that was
# already running (not started here) is used and never stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=.llmo/lambda
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
image=llmo/lambda-provided:bookworm
sock=$dir/docker.sock
export DOCKER_HOST=unix://$sock
docker=/usr/bin/docker

running() { [ -S "$sock" ] && "$docker" version > /dev/null 2>&1; }

up() {
  if ! command -v dockerd > /dev/null || ! command -v debootstrap > /dev/null; then
    # docker.io's package script starts a default engine (a docker0 bridge, iptables rules)
    # unless a policy forbids starting services: refuse without one.
    if [ ! -x /usr/sbin/policy-rc.d ] || /usr/sbin/policy-rc.d docker start > /dev/null 2>&1 \
      || [ $? -ne 101 ]; then
      echo "refusing to install docker.io: no /usr/sbin/policy-rc.d that forbids starting services (exit 101)" >&2
      exit 1
    fi
    [ -n "$(find /var/lib/apt/lists -name '*_Packages*' -print -quit 2> /dev/null)" ] || apt-get update -q > "$dir/apt.log"
    apt-get install -y -q --no-install-recommends docker.io debootstrap >> "$dir/apt.log" 2>&1
  fi
  if ! running; then
    # The engine's own PID (not a subshell's), its own socket, data and exec roots.
    dockerd --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
      --host "unix://$sock" --pidfile "$dir/dockerd.pid" --data-root /var/lib/llmo-docker \
      --exec-root "$dir/exec" > "$dir/dockerd.log" 2>&1 &
    for _ in $(seq 1 100); do running && break; sleep 0.1; done
    running || { tail -20 "$dir/dockerd.log" >&2; echo "the engine did not start" >&2; exit 1; }
    echo started > "$dir/engine.owned"
  fi
  if ! "$docker" image inspect "$image" > /dev/null 2>&1; then
    # No registry is reachable: the image is built here. Debian bookworm (glibc 2.36) stands
    # in for Amazon Linux 2023 (glibc 2.34): a binary that needs a newer glibc than 2.34
    # would pass here and fail on AWS (checked apart, see lambda/README).
    rm -rf "$dir/rootfs"
    debootstrap --variant=minbase --include=python3,ca-certificates bookworm "$dir/rootfs" > "$dir/debootstrap.log" 2>&1
    rm -rf "$dir"/rootfs/var/cache/apt/archives/*.deb "$dir"/rootfs/var/lib/apt/lists/* \
      "$dir"/rootfs/usr/share/doc/* "$dir"/rootfs/usr/share/man/* "$dir"/rootfs/usr/share/locale/*
    tar -C "$dir/rootfs" -c . | "$docker" import -c 'WORKDIR /var/task' - "$image" > /dev/null
    rm -rf "$dir/rootfs"
  fi
}

down() {
  [ -f "$dir/engine.owned" ] || return 0
  if running; then
    left=$("$docker" ps -aq 2> /dev/null)
    [ -z "$left" ] || "$docker" rm -f $left > /dev/null 2>&1 || true
  fi
  if [ -f "$dir/dockerd.pid" ]; then
    pid=$(cat "$dir/dockerd.pid")
    kill "$pid" 2> /dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
  fi
  rm -f "$dir/engine.owned"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  image) echo "$image" ;;
  *) echo "usage: $0 up|down|image" >&2; exit 2 ;;
esac
