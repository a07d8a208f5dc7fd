#!/usr/bin/env python3
"""What the real Lambda mappings must do beyond running the examples (localstack/lambda/smoke.sh):

- a poison message (a schema version from the future, signed) for a run that waits for an
  approval is delivered to `step` until the queue's maxReceiveCount (the template's), moves to
  the dead-letter queue, and the `dlq` function on that queue's mapping fails the run;
- a duplicate delivery of a run's `Start` after it ended changes nothing (its log stays as it is);
- runs per second and the time from `POST /runs` to the first step (the first task's start),
  with N runs started at once.

  checks.py API_URL SEND_BODY_BINARY [N]   (LLMO_TOKEN: an admin of tenant `local`)
Prints one JSON line of figures.
"""
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import time

import requests

url, send_body = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 20
api = requests.Session()
api.headers["Authorization"] = "Bearer " + os.environ["LLMO_TOKEN"]


def start(source, inputs):
    r = api.post(f"{url}/runs", json={"source": source, "inputs": inputs})
    r.raise_for_status()
    return r.json()["run_id"]


def state(run):
    r = api.get(f"{url}/runs/{run}")
    r.raise_for_status()
    return r.json()


def until(run, done, seconds, what):
    deadline = time.time() + seconds
    while time.time() < deadline:
        st = state(run)
        if done(st):
            return st
        time.sleep(0.2)
    sys.exit(f"FAIL: {what} within {seconds} s: {json.dumps(state(run))[:600]}")


ended = lambda st: st["status"] in ("succeeded", "failed", "cancelled", "timed_out")

# A poison message for a waiting run: dead-lettered after maxReceiveCount, the run fails.
review = open("workflows/waits/approval-review.yaml").read()
run = start(review, {"order_id": "P-1"})
until(run, lambda st: any(t["status"] == "waiting" for t in st["tasks"]), 60, "the run waits for its approval")
poison = json.dumps({"v": 99, "kind": "event", "run_id": run, "event": {"type": "start"}})
t = time.time()
subprocess.run([send_body, poison], check=True)
st = until(run, ended, 120, "the poison message failed its run")
dead_s = time.time() - t
if st["status"] != "failed" or "dead-letter" not in (st.get("error") or ""):
    sys.exit(f"FAIL: the run should fail by the dead-letter queue: {st['status']} {st.get('error')}")
print(f"   a poison message was dead-lettered and failed its run in {dead_s:.1f} s: {st['error'][:120]}")

# A duplicate Start for an ended run changes nothing.
simple = open("workflows/simple-inference.yaml").read()
done = until(start(simple, {"question": "duplicates?"}), ended, 60, "a run ends")
version = done["version"]
subprocess.run([send_body, json.dumps({"v": 1, "kind": "event", "run_id": done["run_id"], "event": {"type": "start"}})], check=True)
time.sleep(5)
after = state(done["run_id"])
if after["version"] != version or after["status"] != "succeeded":
    sys.exit(f"FAIL: a duplicate Start changed the run: version {version} -> {after['version']}, {after['status']}")
print(f"   a duplicate Start delivered after the run ended changed nothing (version {version})")

# Throughput and the latency to the first step.
t = time.time()
with concurrent.futures.ThreadPoolExecutor(max_workers=min(n, 16)) as pool:
    runs = list(pool.map(lambda i: start(simple, {"question": f"q{i}"}), range(n)))
finals = [until(r, ended, 120, "the measured runs end") for r in runs]
wall = time.time() - t
bad = [f["run_id"] for f in finals if f["status"] != "succeeded"]
if bad:
    sys.exit(f"FAIL: runs did not succeed: {bad}")
# The run id carries its creation time (ms); the first task's start is the first step's.
first = sorted(min(x["started_at"] for x in f["tasks"] if x["started_at"]) - int(f["run_id"].split("-")[1]) for f in finals)
figures = {
    "runs": n,
    "wall_s": round(wall, 2),
    "runs_per_s": round(n / wall, 2),
    "first_step_ms": {"p50": statistics.median(first), "max": first[-1]},
    "poison_to_failed_s": round(dead_s, 1),
}
print("   " + json.dumps(figures))
