#!/usr/bin/env python3
"""Deploys the `step`, `dlq` and `schedule` functions on LocalStack's Lambda as
infra/template.yaml declares them, and their SQS event source mappings, on the queues it
declares (EventBridge rules are not deployed: the tests invoke `schedule` as a rule would).

  deploy.py --bin DIR [--template infra/template.yaml] [--prefix NAME] [--env K=V ...]
            [--visibility SECS]

Read from the template (never restated here): the queues' properties (visibility timeout,
long polling, FIFO and deduplication settings, redrive policies and their maxReceiveCount);
the functions' runtime, handler, memory, timeout and environment (Globals and their own, with
parameters at their defaults and references to the queues resolved to the ones created here);
each SQS event's batch size, batching window, `ReportBatchItemFailures` and maximum
concurrency. `DIR` holds the bootstraps (`DIR/step`, ..., or cargo lambda's `DIR/step/bootstrap`, ...); each function's code is that
binary as `bootstrap` (LocalStack mounts the directory: no zip of a 100 MB debug binary).
`--env` adds settings for this machine (endpoints, mock models, the table and bucket that
`provision` made). `--visibility` shortens the step and fold queues' visibility timeout (the
one setting a test changes: five deliveries of a poison message take seconds, not hours).

Prints the queue URLs as `LLMO_QUEUE_URL=...` lines (for `eval`), the rest on stderr.
"""
import argparse
import json
import os
import shutil
import sys
import time

import boto3
from cfnlint.decode import decode

FUNCTIONS = {"Step": "step", "Dlq": "dlq", "Schedule": "schedule"}
QUEUES = {"Steps": "LLMO_QUEUE_URL", "DeadLetters": "LLMO_DLQ_URL", "Folds": "LLMO_FOLD_QUEUE_URL", "FoldDeadLetters": "LLMO_FOLD_DLQ_URL"}


def say(msg):
    print(msg, file=sys.stderr, flush=True)


class Resolver:
    """Template values with parameters at their defaults and the queues' Ref/GetAtt resolved."""

    def __init__(self, tpl, prefix):
        self.params = {k: v.get("Default") for k, v in tpl.get("Parameters", {}).items()}
        for k, v in tpl.get("Parameters", {}).items():  # a list parameter's Ref is a list
            if v.get("Type") == "CommaDelimitedList":
                self.params[k] = [x.strip() for x in str(v.get("Default") or "").split(",") if x.strip()]
        self.params["AWS::StackName"] = prefix
        self.params["AWS::Region"] = "us-east-1"
        self.params["AWS::AccountId"] = "000000000000"
        self.params["AWS::Partition"] = "aws"
        self.refs = {}  # logical id -> Ref value
        self.arns = {}  # logical id -> Arn

    def __call__(self, v):
        if isinstance(v, dict) and len(v) == 1:
            (k, x), = v.items()
            if k == "Ref":
                if x in self.params:
                    return self.params[x]
                if x in self.refs:
                    return self.refs[x]
                raise KeyError(f"Ref {x}")
            if k == "Fn::GetAtt":
                name, att = x if isinstance(x, list) else str(x).split(".", 1)
                if att == "Arn" and name in self.arns:
                    return self.arns[name]
                raise KeyError(f"GetAtt {name}.{att}")
            if k == "Fn::Join":
                sep, items = x
                items = self(items)
                return sep.join(str(self(i)) for i in (items if isinstance(items, list) else [items]))
            if k == "Fn::Sub":
                s = x if isinstance(x, str) else x[0]
                for name, val in self.params.items():
                    s = s.replace("${" + name + "}", str(val))
                return s
        if isinstance(v, dict):
            return {k: self(x) for k, x in v.items()}
        if isinstance(v, list):
            return [self(x) for x in v]
        return v


def queues(tpl, r, sqs, visibility=None):
    """Creates the template's queues, dead-letter queues first; returns logical id -> URL."""
    urls = {}
    order = sorted(QUEUES, key=lambda q: "RedrivePolicy" in tpl["Resources"][q]["Properties"])
    for logical in order:
        props = dict(tpl["Resources"][logical]["Properties"])
        props.pop("SqsManagedSseEnabled", None)  # LocalStack keeps no keys either way
        name = r(props.pop("QueueName", None) or f"{r.params['AWS::StackName']}-{logical.lower()}")
        attrs = {}
        if visibility is not None and "RedrivePolicy" in props:
            props["VisibilityTimeout"] = visibility
        for k, v in props.items():
            v = r(v)
            attrs[k] = json.dumps(v) if isinstance(v, dict) else str(v).lower() if isinstance(v, bool) else str(v)
        url = sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        r.refs[logical], r.arns[logical] = url, arn
        urls[logical] = url
        say(f"queue {logical}: {name} {attrs}")
    return urls


def functions(tpl, r, lam, bin_dir, work, extra_env):
    glob = tpl.get("Globals", {}).get("Function", {})
    for logical, binary in FUNCTIONS.items():
        props = {**glob, **tpl["Resources"][logical]["Properties"]}
        env = {}
        for k, v in {**glob.get("Environment", {}).get("Variables", {}),
                     **tpl["Resources"][logical]["Properties"].get("Environment", {}).get("Variables", {})}.items():
            try:
                env[k] = str(r(v))
            except KeyError as e:  # resources not made here (the scheduler role, the secrets)
                say(f"{logical}: {k} left out ({e} is not deployed locally)")
        # This machine's settings: the API's JWT authorizer is not in front of these functions,
        # the secrets are not in Secrets Manager here, endpoints are local.
        env.pop("LLMO_AUTH", None)
        env.update(extra_env)
        code_dir = os.path.join(work, binary)
        os.makedirs(code_dir, exist_ok=True)
        # A build directory (`target/debug/step`) or cargo lambda's (`target/lambda/step/bootstrap`).
        packaged = os.path.join(bin_dir, binary, "bootstrap")
        shutil.copy(packaged if os.path.isfile(packaged) else os.path.join(bin_dir, binary), os.path.join(code_dir, "bootstrap"))
        name = f"{r.params['AWS::StackName']}-{binary}"
        lam.create_function(
            FunctionName=name, Runtime=r(props["Runtime"]), Handler=r(props["Handler"]),
            MemorySize=int(r(props["MemorySize"])), Timeout=int(r(props["Timeout"])),
            Role="arn:aws:iam::000000000000:role/lambda", Environment={"Variables": env},
            Code={"S3Bucket": "hot-reload", "S3Key": code_dir},
        )
        lam.get_waiter("function_active_v2").wait(FunctionName=name)
        say(f"function {name}: memory {props['MemorySize']} MB, timeout {r(props['Timeout'])} s")
        for event_name, ev in props.get("Events", {}).items():
            if ev["Type"] != "SQS":
                continue
            p = r(ev["Properties"])
            args = dict(EventSourceArn=p["Queue"], FunctionName=name, BatchSize=int(p.get("BatchSize", 10)))
            if p.get("MaximumBatchingWindowInSeconds") is not None:
                args["MaximumBatchingWindowInSeconds"] = int(p["MaximumBatchingWindowInSeconds"])
            if p.get("FunctionResponseTypes"):
                args["FunctionResponseTypes"] = p["FunctionResponseTypes"]
            if p.get("ScalingConfig"):
                args["ScalingConfig"] = {k: int(v) for k, v in p["ScalingConfig"].items()}
            m = lam.create_event_source_mapping(**args)
            for _ in range(300):
                if lam.get_event_source_mapping(UUID=m["UUID"])["State"] == "Enabled":
                    break
                time.sleep(0.1)
            say(f"mapping {name} <- {event_name}: {args}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--template", default="infra/template.yaml")
    ap.add_argument("--prefix", default="llmo-lambda")
    ap.add_argument("--work", default=".llmo/lambda/functions")
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--visibility", type=int)
    a = ap.parse_args()
    tpl, problems = decode(a.template)
    if problems:
        sys.exit(f"{a.template}: {problems[0]}")
    r = Resolver(tpl, a.prefix)
    sqs, lam = boto3.client("sqs"), boto3.client("lambda")
    urls = queues(tpl, r, sqs, a.visibility)
    extra = dict(kv.split("=", 1) for kv in a.env)
    extra.update({QUEUES[k]: u for k, u in urls.items()})
    functions(tpl, r, lam, a.bin, os.path.abspath(a.work), extra)
    for k, u in urls.items():
        print(f"{QUEUES[k]}={u}")


if __name__ == "__main__":
    main()
