"""Runs the four functions under `cargo lambda watch` (the Lambda runtime API emulator) and calls
them with `cargo lambda invoke` and real event payloads, against the local stack.

  localstack/with-stack.sh functions/lambda-test.sh             # watch builds and runs each function
  localstack/with-stack.sh functions/lambda-test.sh --packaged  # the `cargo lambda build --profile lambda`
                                                                # bootstraps, run against watch's API

What it checks, each through the emulator:
  api       POST /workflows registers a workflow; POST /runs starts a run of it (201, run_id);
            GET /runs/{id} shows task states and outputs; GET /runs lists the run.
  step      an SQS batch of the run's start and a message for a run that does not exist:
            only the unknown run's message is reported in batchItemFailures. Then every message
            the step function sent to the real queue is received and fed back to it as an SQS event
            (what Lambda's event source mapping does; reported failures are not deleted) until the
            run has finished; its outputs must be the workflow's.
  schedule  an EventBridge Scheduled Event starts a run; the same event again starts no second run.
  dlq       that run's start message, as it would arrive on the dead-letter queue, fails the run
            with the dead-letter reason.
  events    document-intake's rule, as `llmo infra` generates it, on LocalStack's EventBridge: an
            S3 "Object Created" event for a PDF (and one for a text file, which the pattern does
            not match) goes through the rule's pattern and input transformer; the delivery,
            handed to the schedule function twice, starts one run, whose inputs come from the
            event and which the step function then runs to success.
"""

import copy
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import uuid

import boto3

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVENTS = os.path.join(ROOT, "functions", "events")
PORT = int(os.environ["LAMBDA_TEST_PORT"])

WORKFLOW = """apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: lambda-test }
spec:
  inputs:
    topic: { type: string, default: queues }
  tasks:
    - id: outline
      type: transform
      with: { output: { topic: "{{ inputs.topic }}", parts: [intro, body] } }
    - id: draft
      type: llm
      depends_on: [outline]
      with:
        provider: mock
        model: mock-small
        prompt: "Write about {{ tasks.outline.output.topic }}"
    - id: done
      type: transform
      depends_on: [draft]
      with: { output: { parts: "{{ tasks.outline.output.parts | length }}", drafted: true } }
  outputs:
    parts: "{{ tasks.done.output.parts }}"
    topic: "{{ tasks.outline.output.topic }}"
"""


def load(name):
    with open(os.path.join(EVENTS, name)) as f:
        return json.load(f)


def invoke(function, event):
    """`cargo lambda invoke` with the event; returns the function's JSON answer."""
    path = os.path.join(ROOT, ".llmo", "stack", f"event-{function}.json")
    with open(path, "w") as f:
        json.dump(event, f)
    out = subprocess.run(
        ["cargo", "lambda", "invoke", function, "--invoke-port", str(PORT), "--data-file", path,
         "--output-format", "json"],
        capture_output=True, text=True, timeout=600,  # the first call may build the function
    )
    if out.returncode != 0:
        sys.exit(f"FAIL: cargo lambda invoke {function}: {out.stderr.strip()}")
    return json.loads(out.stdout)


def http(method, path, body=None, query=None):
    """An API Gateway HTTP API (payload v2) request to the `api` function."""
    e = load("apigw-v2-list-runs.json")
    e["rawPath"] = path
    e["requestContext"]["http"]["method"] = method
    e["requestContext"]["http"]["path"] = path
    e["requestContext"]["requestId"] = uuid.uuid4().hex
    e["rawQueryString"] = "&".join(f"{k}={v}" for k, v in (query or {}).items())
    e["queryStringParameters"] = query or {}
    if body is not None:
        e["headers"]["content-type"] = "application/json"
        e["body"] = json.dumps(body)
    r = invoke("api", e)
    return r["statusCode"], json.loads(r["body"])


def check(cond, what):
    if not cond:
        sys.exit(f"FAIL: {what}")
    print(f"  ok: {what.splitlines()[0][:160]}")


def signed(body):
    """`body` as the functions sign it (llmo_aws::mac) with the local stack's queue key."""
    key = os.environ["LLMO_QUEUE_KEYS"].split(",")[0].strip().encode()
    kid = hashlib.sha256(key).hexdigest()[:8]
    tag = hmac.new(key, body.encode(), hashlib.sha256).hexdigest()
    return f"s1.{kid}.{tag}.{body}"


def sqs_event(records_template, messages, queue_arn):
    """SQS messages (boto3 shape) as a Lambda SQS event, as the event source mapping builds it."""
    records = []
    for m in messages:
        r = copy.deepcopy(records_template)
        r["messageId"] = m["MessageId"]
        r["receiptHandle"] = m["ReceiptHandle"]
        r["body"] = m["Body"]
        r["md5OfBody"] = m["MD5OfBody"]
        r["attributes"] = {k: str(v) for k, v in m.get("Attributes", {}).items()}
        r["messageAttributes"] = {
            k: {"stringValue": v.get("StringValue"), "binaryValue": None, "stringListValues": [],
                "binaryListValues": [], "dataType": v["DataType"]}
            for k, v in m.get("MessageAttributes", {}).items()
        }
        r["eventSourceARN"] = queue_arn
        records.append(r)
    return {"Records": records}


def drive(sqs, queue, template, arn, run_id):
    """Feeds the queue's messages to the step function until the run has ended; returns how
    many messages it handled."""
    steps = 0
    deadline = time.time() + 120
    while time.time() < deadline:
        msgs = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                   AttributeNames=["All"], MessageAttributeNames=["All"]).get("Messages", [])
        if not msgs:
            status, run = http("GET", f"/runs/{run_id}")
            if run["status"] not in ("pending", "running"):
                break
            continue
        r = invoke("step", sqs_event(template, msgs, arn))
        failed = {f["itemIdentifier"] for f in r["batchItemFailures"]}
        check(not failed, f"step batch of {len(msgs)} handled: {r}")
        for m in msgs:
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
        steps += len(msgs)
    return steps


def event_delivery(rule, detail):
    """What the generated EventBridge rule delivers to the schedule function for an S3 event
    with `detail`: put on LocalStack's bus, matched by the rule's pattern and shaped by its input
    transformer, with the rule targeting an SQS queue (the bus cannot invoke a function locally
    without Docker). Under moto alone (no LocalStack), the same payload is built here."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    target = rule["Targets"][0]
    if not endpoint.endswith(":4566"):
        print("  (no LocalStack EventBridge: the delivery is built as EventBridge builds it)")
        event = {"id": str(uuid.uuid4()), "source": "aws.s3", "detail_type": "Object Created",
                 "time": "2026-11-30T12:00:00Z", "account": "000000000000", "region": "us-east-1"}
        body = target["InputTransformer"]["InputTemplate"].replace("<detail>", json.dumps(detail))
        for k, v in event.items():
            body = body.replace(f"<{k}>", v)
        return json.loads(body)
    kw = dict(region_name=os.environ.get("AWS_REGION", "us-east-1"), endpoint_url=endpoint,
              aws_access_key_id="test", aws_secret_access_key="test")
    events, sqs = boto3.client("events", **kw), boto3.client("sqs", **kw)
    name = f"lambda-test-events-{uuid.uuid4().hex[:8]}"
    q = sqs.create_queue(QueueName=name)["QueueUrl"]
    qarn = sqs.get_queue_attributes(QueueUrl=q, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name=name, EventPattern=json.dumps(rule["EventPattern"]))
    events.put_targets(Rule=name, Targets=[{"Id": "to-queue", "Arn": qarn,
                                            "InputTransformer": target["InputTransformer"]}])
    # One event the pattern matches, one it does not (not a PDF).
    other = dict(detail, object=dict(detail["object"], key="notes.txt"))
    r = events.put_events(Entries=[
        {"Source": "aws.s3", "DetailType": "Object Created", "Detail": json.dumps(other)},
        {"Source": "aws.s3", "DetailType": "Object Created", "Detail": json.dumps(detail)},
    ])
    check(r["FailedEntryCount"] == 0, f"events put on the bus: {r}")
    got = []
    deadline = time.time() + 20
    while time.time() < deadline and not got:
        got = sqs.receive_message(QueueUrl=q, WaitTimeSeconds=1, MaxNumberOfMessages=10).get("Messages", [])
    time.sleep(1)
    got += sqs.receive_message(QueueUrl=q, WaitTimeSeconds=1, MaxNumberOfMessages=10).get("Messages", [])
    check(len(got) == 1, f"the rule matched the PDF's event only: {[m['Body'] for m in got]}")
    events.remove_targets(Rule=name, Ids=["to-queue"])
    events.delete_rule(Name=name)
    return json.loads(got[0]["Body"])


def main():
    sqs = boto3.client(
        "sqs",
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
    )
    queue = os.environ["LLMO_QUEUE_URL"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    template = load("sqs-step.json")["Records"][0]

    print("== api: register a workflow, start a run of it")
    status, body = http("POST", "/workflows", {"source": WORKFLOW})
    check(status == 201 and body["workflow"] == "lambda-test", f"POST /workflows -> 201 {body}")
    status, body = http("POST", "/runs", {"workflow": "lambda-test", "inputs": {"topic": "lambdas"}})
    check(status == 201 and body.get("run_id"), f"POST /runs -> 201 {body}")
    run_id = body["run_id"]

    # The api function queued the run's start; take it off the queue and hand the step function
    # a batch of it plus a message about a run that does not exist.
    print("== step: a batch with the run's start and an unknown run's message")
    got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=2,
                              AttributeNames=["All"], MessageAttributeNames=["All"]).get("Messages", [])
    check(len(got) == 1 and run_id in got[0]["Body"], f"the start message is on the queue: {got}")
    check(got[0]["Body"].startswith("s1."), f"the api function signs its messages: {got[0]['Body'][:40]}")
    ghost_body = json.dumps({"v": 1, "kind": "event", "run_id": "no-such-run", "event": {"event": "start"}})
    ghost = dict(got[0], MessageId=str(uuid.uuid4()), Body=signed(ghost_body))
    # The same message unsigned: not the deployment's, dropped (neither acted on nor failed back).
    forged = dict(got[0], MessageId=str(uuid.uuid4()), Body=ghost_body)
    r = invoke("step", sqs_event(template, [got[0], ghost, forged], arn))
    failed = [f["itemIdentifier"] for f in r["batchItemFailures"]]
    check(failed == [ghost["MessageId"]], f"only the unknown run's message is a batch item failure: {r}")
    sqs.delete_message(QueueUrl=queue, ReceiptHandle=got[0]["ReceiptHandle"])

    print("== step: feed the queue's messages to the function until the run ends")
    steps = drive(sqs, queue, template, arn, run_id)
    status, run = http("GET", f"/runs/{run_id}")
    check(run["status"] == "succeeded", f"run succeeded after {steps} step messages: {run['status']} {run.get('error')}")
    check(run["outputs"] == {"parts": 2, "topic": "lambdas"}, f"outputs are the workflow's: {run['outputs']}")
    tasks = {t["id"]: t for t in run["tasks"]}
    check(all(t["status"] == "succeeded" and t["attempts"] == 1 for t in tasks.values()),
          f"every task succeeded on its first attempt: {[(t['id'], t['status'], t['attempts']) for t in run['tasks']]}")
    status, body = http("GET", "/runs", {"workflow": "lambda-test"})
    check(status == 200 and run_id in [x["run_id"] for x in body["runs"]], "GET /runs?workflow= lists the run")

    print("== schedule: an EventBridge Scheduled Event, delivered twice")
    tick = load("eventbridge-scheduled.json")
    tick["idempotency_key"] = f"lambda-test@{uuid.uuid4()}"
    first = invoke("schedule", tick)
    again = invoke("schedule", tick)
    check(first.get("run_id") and first["run_id"] == again["run_id"],
          f"one run for one tick: {first} / {again}")
    sched_run = first["run_id"]

    print("== dlq: the scheduled run's start message, dead-lettered")
    got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=2,
                              AttributeNames=["All"], MessageAttributeNames=["All"]).get("Messages", [])
    start = [m for m in got if sched_run in m["Body"]]
    # Two: the repeated tick sends the start again (a second start is ignored).
    check(len(start) == 2, f"the scheduled run's start is on the queue, twice ({len(got)} messages)")
    dead = dict(start[0], Attributes=dict(start[0].get("Attributes", {}), ApproximateReceiveCount="3"))
    r = invoke("dlq", sqs_event(template, [dead], arn))
    check(r["batchItemFailures"] == [], f"dlq handled the message: {r}")
    for m in got:
        sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
    status, run = http("GET", f"/runs/{sched_run}")
    check(run["status"] == "failed" and "dead-letter queue" in (run.get("error") or ""),
          f"the dead-lettered run failed with the reason: {run['status']}: {run.get('error')}")
    print("== events: document-intake started by its generated EventBridge rule")
    with open(os.path.join(ROOT, "workflows", "document-intake.yaml")) as f:
        status, body = http("POST", "/workflows", {"source": f.read()})
    check(status == 201, f"POST /workflows document-intake -> 201 {body}")
    generated = os.path.join(ROOT, ".llmo", "stack", "lambda-test-triggers.json")
    subprocess.run([os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "debug", "llmo"), "infra", "workflows/document-intake.yaml",
                    "--tenant", "lambda-test", "-o", generated], check=True, cwd=ROOT)
    with open(generated) as f:
        rule = json.load(f)["Resources"]["DocumentIntakePdfUploadedRule"]["Properties"]
    detail = {"version": "0", "bucket": {"name": "acme-intake"},
              "object": {"key": "contracts/msa.pdf", "size": 52311}}
    delivery = event_delivery(rule, detail)
    first = invoke("schedule", delivery)
    again = invoke("schedule", delivery)
    check(first.get("run_id") and first["run_id"] == again["run_id"] and first.get("created") is True
          and again.get("created") is False, f"one run for one event, delivered twice: {first} / {again}")
    ev_run = first["run_id"]
    drive(sqs, queue, template, arn, ev_run)
    status, run = http("GET", f"/runs/{ev_run}")
    check(run["status"] == "succeeded", f"the event's run succeeded: {run['status']} {run.get('error')}")
    check(run.get("inputs") == {"bucket": "acme-intake", "key": "contracts/msa.pdf", "size": 52311},
          f"the run's inputs came from the event (size a number): {run.get('inputs')}")
    print("lambda test: ok")


if __name__ == "__main__":
    main()
