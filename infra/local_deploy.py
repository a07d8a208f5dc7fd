#!/usr/bin/env python3
"""Deploys infra/template.yaml on a local CloudFormation (moto's) and prints the environment the
functions need to run against exactly the resources the stack created.

  python infra/local_deploy.py --endpoint http://127.0.0.1:4567 [--stack NAME] [TEMPLATE]

Prints `LLMO_TABLE=...`, `LLMO_QUEUE_URL=...`, `LLMO_DLQ_URL=...`, `LLMO_FOLD_QUEUE_URL=...`,
`LLMO_FOLD_DLQ_URL=...`, `LLMO_BUCKET=...`,
`LLMO_SECRETS_ARN=...`, `LLMO_QUEUE_KEY_ARN=...` (read back
from the stack with ListStackResources, as moto's DescribeStacks cannot answer for this
template) and `AWS_ENDPOINT_URL=...`, one per line, for `eval`.

moto's CloudFormation creates the data plane (the table with its indexes and TTL, both queues with
the redrive policy and visibility timeouts, the bucket and its policy, the log groups). The
provider secret and the queue key, which moto's CloudFormation does not create, are created with
Secrets Manager's API as the template describes them. What it
cannot create locally (the functions, which run here in their local modes instead, the HTTP API,
whose part the local API server plays, and the alarms on them) is left out, and said on stderr.
"""
import sys
import time

import boto3
from cfnlint.decode import decode

LOCAL = {
    "AWS::DynamoDB::Table",
    "AWS::SQS::Queue",
    "AWS::S3::Bucket",
    "AWS::S3::BucketPolicy",
    "AWS::Logs::LogGroup",
}


def refs(v):
    """Logical ids a value refers to (Ref, GetAtt, Sub)."""
    if isinstance(v, dict):
        for k, x in v.items():
            if k == "Ref" and isinstance(x, str):
                yield x
            elif k == "Fn::GetAtt":
                yield x[0] if isinstance(x, list) else str(x).split(".")[0]
            elif k == "Fn::Sub":
                s = x[0] if isinstance(x, list) else x
                import re
                for m in re.findall(r"\$\{([A-Za-z0-9]+)", s):
                    yield m
                yield from refs(x)
            else:
                yield from refs(x)
    elif isinstance(v, list):
        for x in v:
            yield from refs(x)


def local_template(tpl):
    kept = {k: r for k, r in tpl["Resources"].items() if r["Type"] in LOCAL}
    dropped = sorted(f"{k} ({r['Type']})" for k, r in tpl["Resources"].items() if r["Type"] not in LOCAL)
    for k, r in kept.items():
        missing = [x for x in refs(r) if x in tpl["Resources"] and x not in kept]
        if missing:
            sys.exit(f"local_deploy: {k} refers to {missing}, which cannot be created locally")
    params = tpl.get("Parameters", {})
    used = {x for r in kept.values() for x in refs(r)}
    out = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Parameters": {k: v for k, v in params.items() if k in used},
        "Resources": kept,
    }
    return out, dropped


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    opts = dict(a.split("=", 1) if "=" in a else (a, "") for a in argv if a.startswith("--"))
    endpoint = opts.get("--endpoint") or sys.exit("--endpoint=URL is required")
    stack = opts.get("--stack") or f"llmo-local-{int(time.time())}"
    path = args[0] if args else "infra/template.yaml"
    tpl, matches = decode(path)
    if tpl is None:
        sys.exit(f"{path}: {matches}")
    local, dropped = local_template(tpl)
    print(f"local_deploy: stack {stack}: {len(local['Resources'])} resources; not created locally: {', '.join(dropped)}",
          file=sys.stderr)
    kw = dict(region_name="us-east-1", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test")
    cf = boto3.client("cloudformation", **kw)
    import json
    cf.create_stack(StackName=stack, TemplateBody=json.dumps(local), Capabilities=["CAPABILITY_IAM"])
    by_type = {}
    for _ in range(100):
        res = cf.list_stack_resources(StackName=stack)["StackResourceSummaries"]
        if res and all(r["ResourceStatus"].endswith("COMPLETE") for r in res) and len(res) == len(local["Resources"]):
            break
        time.sleep(0.2)
    else:
        sys.exit(f"local_deploy: stack {stack} did not complete: {res}")
    by_id = {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in res}
    # moto's CloudFormation does not create Secrets Manager secrets: the provider secret is made
    # here as the template describes it (name, empty JSON object), through Secrets Manager's API.
    secret = tpl["Resources"]["ProviderSecrets"]["Properties"]
    sm = boto3.client("secretsmanager", **kw)
    by_id["ProviderSecrets"] = sm.create_secret(
        Name=f"{stack}/providers", Description=secret["Description"], SecretString=secret["SecretString"]
    )["ARN"]
    # The queue key: generated as the template's GenerateSecretString asks (length, no
    # punctuation), through Secrets Manager's own generator.
    key = tpl["Resources"]["QueueKey"]["Properties"]
    gen = key["GenerateSecretString"]
    value = sm.get_random_password(
        PasswordLength=gen["PasswordLength"], ExcludePunctuation=gen.get("ExcludePunctuation", False)
    )["RandomPassword"]
    by_id["QueueKey"] = sm.create_secret(Name=f"{stack}/queue-key", Description=key["Description"], SecretString=value)[
        "ARN"
    ]
    for r in res:
        by_type.setdefault(r["ResourceType"], []).append(r["LogicalResourceId"])
    # Checks that the resources are what the template says, as deployed.
    ddb = boto3.client("dynamodb", **kw)
    table = ddb.describe_table(TableName=by_id["Runs"])["Table"]
    indexes = sorted(i["IndexName"] for i in table.get("GlobalSecondaryIndexes", []))
    if indexes != ["audit_by_run", "by_live", "by_status", "by_time", "by_workflow"]:
        sys.exit(f"local_deploy: the table's indexes are {indexes}")
    sqs = boto3.client("sqs", **kw)
    attrs = sqs.get_queue_attributes(QueueUrl=by_id["Steps"], AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attrs.get("RedrivePolicy", "{}"))
    if int(attrs["VisibilityTimeout"]) < 5420 or int(redrive.get("maxReceiveCount", 0)) < 5:
        sys.exit(f"local_deploy: the step queue is not as the template says: {attrs}")
    folds = sqs.get_queue_attributes(QueueUrl=by_id["Folds"], AttributeNames=["All"])["Attributes"]
    if folds.get("FifoQueue") != "true" or not by_id["Folds"].endswith(".fifo"):
        sys.exit(f"local_deploy: the fold queue is not FIFO: {by_id['Folds']} {folds}")
    print(f"local_deploy: table {by_id['Runs']} ({len(indexes)} indexes), step queue visibility "
          f"{attrs['VisibilityTimeout']} s, maxReceiveCount {redrive['maxReceiveCount']}, bucket {by_id['Checkpoints']}",
          file=sys.stderr)
    print(f"LLMO_TABLE={by_id['Runs']}")
    print(f"LLMO_QUEUE_URL={by_id['Steps']}")
    print(f"LLMO_DLQ_URL={by_id['DeadLetters']}")
    print(f"LLMO_FOLD_QUEUE_URL={by_id['Folds']}")
    print(f"LLMO_FOLD_DLQ_URL={by_id['FoldDeadLetters']}")
    print(f"LLMO_BUCKET={by_id['Checkpoints']}")
    print(f"LLMO_SECRETS_ARN={by_id['ProviderSecrets']}")
    print(f"LLMO_QUEUE_KEY_ARN={by_id['QueueKey']}")
    print(f"AWS_ENDPOINT_URL={endpoint}")
    print(f"AWS_ENDPOINT_URL_SECRETS_MANAGER={endpoint}")
    print(f"LLMO_STACK={stack}")


if __name__ == "__main__":
    main(sys.argv[1:])
