#!/usr/bin/env python3
"""What the real Lambda mappings must do beyond running the examples (localstack/lambda/smoke.sh):

- a poison message (a schema version from the future, signed) for a run that waits for an
  approval is delivered to `step` until the queue's maxReceiveCount (the template's), moves to
  the dead-letter queue, and the `dlq` function on that queue's mapping fails the run;
- a run that waits for an approval and then an event goes on through the mapping at each
  answer (`POST /runs/{id}/tasks/review/complete`, `POST /events`);
- a duplicate delivery of a run's `Start` after it ended changes nothing (its log stays as it is);
- a parent fans out to child runs (`type: workflow`, the example in workflows/fan-out): its
  attempts detach and each child's end, in another invocation, completes its parent's attempt;
- runs per second and the time from `POST /runs` to the first step (the first task's start),
  with N runs started at once;
- the `schedule` function, invoked twice with one scheduler tick (as EventBridge Scheduler
  retries it), starts one run of a registered workflow;
- a function killed mid-batch (its process, `kill -9`, while a model call of 3 s runs) loses
  nothing: the batch comes back after the visibility timeout to a new environment and the run
  succeeds, each task ending once.

  checks.py API_URL SEND_BODY_BINARY STEP_FUNCTION [N]   (LLMO_TOKEN: an admin of tenant `local`)
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

url, send_body, step_function = sys.argv[1], sys.argv[2], sys.argv[3]
n = int(sys.argv[4]) if len(sys.argv) > 4 else 20
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

# Waits answered over the API: each answer is a message the step function takes on.
run = start(review, {"order_id": "W-1"})
until(run, lambda st: any(t["id"] == "review" and t["status"] == "waiting" for t in st["tasks"]), 60, "the approval waits")
api.post(f"{url}/runs/{run}/tasks/review/complete", json={"approved": True, "fields": {"tone": "friendly"}}).raise_for_status()
until(run, lambda st: any(t["id"] == "paid" and t["status"] == "waiting" for t in st["tasks"]), 60, "the event waits")
r = api.post(f"{url}/events", json={"name": "payment.settled", "key": "W-1", "payload": {"amount": 12}})
r.raise_for_status()
st = until(run, ended, 60, "the run ends after its answers")
if st["status"] != "succeeded":
    sys.exit(f"FAIL: the waiting run: {st['status']} {st.get('error')}")
print(f"   an approval and an event answered over the API: the run went on through the mapping ({len(r.json()['delivered'])} delivered)")

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

# Child workflows through the mapping: the parent's attempts detach, each child's end (another
# invocation) completes its parent's attempt.
child = open("workflows/fan-out/answer-question.yaml").read()
api.post(f"{url}/workflows", json={"source": child}).raise_for_status()
parent = open("workflows/fan-out/research-brief.yaml").read()
run = start(parent, {"topic": "Lambda", "questions": ["What is it?", "What does it cost?"]})
st = until(run, ended, 120, "the parent of two children ends")
kids = (st["tasks"][0].get("children") or {}).get("runs", [])
if st["status"] != "succeeded" or len(kids) != 2:
    sys.exit(f"FAIL: child workflows: {st['status']} {st.get('error')} {kids}")
for k in kids:
    c = state(k["run_id"])
    if c["status"] != "succeeded" or (c.get("parent") or {}).get("run_id") != run:
        sys.exit(f"FAIL: child {k['run_id']}: {c['status']} {c.get('parent')}")
print(f"   a parent fanned out to {len(kids)} child runs through the mapping; each linked to it, all succeeded")

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

import boto3

lam = boto3.client("lambda")

# A scheduler tick, delivered twice to the schedule function: one run.
api.post(f"{url}/workflows", json={"source": simple}).raise_for_status()
tick = {"tenant": "local", "workflow": "simple-inference", "inputs": {"question": "tick"}, "idempotency_key": "arn:tick@2026-12-07T06:00:00Z"}
got = []
for _ in range(2):
    r = lam.invoke(FunctionName=step_function.replace("-step", "-schedule"), Payload=json.dumps(tick).encode())
    out = json.loads(r["Payload"].read())
    if r.get("FunctionError"):
        sys.exit(f"FAIL: the schedule function: {out}")
    got.append(out)
if got[0]["run_id"] != got[1]["run_id"] or [g["created"] for g in got] != [True, False]:
    sys.exit(f"FAIL: one tick, one run: {got}")
until(got[0]["run_id"], ended, 60, "the scheduled run ends")
print(f"   one scheduler tick delivered twice to the schedule function started one run ({got[0]['run_id']})")

# A function killed mid-batch: the model call takes 3 s, the process is killed during it.
cfg = lam.get_function_configuration(FunctionName=step_function)
env = dict(cfg["Environment"]["Variables"], LLMO_MOCK_DELAY_MS="3000")
lam.update_function_configuration(FunctionName=step_function, Environment={"Variables": env})
lam.get_waiter("function_updated_v2").wait(FunctionName=step_function)
run = start(simple, {"question": "a crash?"})
until(run, lambda st: st["tasks"][0]["status"] == "running", 60, "the model call runs")
time.sleep(1)
# The step function's processes only (its containers share this machine's process table).
killed = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0]
        environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        continue
    if cmd == b"/var/task/bootstrap" and f"AWS_LAMBDA_FUNCTION_NAME={step_function}".encode() in environ:
        os.kill(int(pid), 9)
        killed.append(pid)
if not killed:
    sys.exit("FAIL: no process of the step function to kill")
t = time.time()
st = until(run, ended, 120, "the run ends after its function was killed")
if st["status"] != "succeeded":
    sys.exit(f"FAIL: after the kill: {st['status']} {st.get('error')}")
attempts = st["tasks"][0]["attempts"]
print(f"   a function killed mid-call: the run succeeded {time.time() - t:.1f} s later (the task's attempts: {attempts})")
figures["killed_to_succeeded_s"] = round(time.time() - t, 1)
print("   " + json.dumps(figures))
