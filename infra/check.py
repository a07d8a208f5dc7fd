#!/usr/bin/env python3
"""Checks infra/template.yaml for what cfn-lint and checkov cannot see (run by `make lint`).

  python infra/check.py [TEMPLATE]     check; exit 1 with one line per finding
  python infra/check.py --self-test    break a copy of the template once per rule and check
                                       that each rule notices (so the checks cannot pass vacuously)

Rules:
  visibility   every SQS queue that triggers a function has a visibility timeout of at least
               6x that function's timeout plus the event source's batching window (Lambda refuses
               to create the event source below 1x, and recommends 6x plus the window). A
               parameter counts at its MinValue if it has one, else its Default: the smallest
               value a deployment can give it (a window at its MaxValue, the largest).
  redrive      every queue's redrive policy has maxReceiveCount >= 5 (same reading).
  logs         every function logs to a log group of this template that has RetentionInDays.
  secrets      no environment variable of the template holds a key or a secret (names ending in
               _API_KEY, _TOKEN, _SECRET or starting LLMO_SECRET_): they come from Secrets Manager.
  privilege    no function uses a *CrudPolicy/FullAccess policy template, a wildcard action or a
               wildcard resource, and dynamodb:Scan, dynamodb:DeleteItem and s3:DeleteObject are
               granted only to the functions allowed them below.
  invoke       lambda:InvokeFunction is granted only to the step function, only on the functions
               the InvokableFunctions parameter lists (and their qualified ARNs), never on a
               resource with a wildcard of its own; and that function refuses any other
               (its LLMO_ALLOWED_FUNCTIONS is the same parameter).
  models       bedrock:InvokeModel is granted only to the step function, only on the models the
               BedrockModels parameter lists (as foundation models and inference profiles), never
               on a resource of its own making; and that function refuses any other model
               (its LLMO_BEDROCK_MODELS is the same parameter).
It reads the template with cfn-lint's own decoder (the SAM/CloudFormation short tags).
"""
import copy
import sys

from cfnlint.decode import decode

ALLOWED_DESTRUCTIVE = {
    # function logical id -> actions it may have beyond the usual read/write set
    # The API deletes waiter items (`WAIT#...` partition keys only, by an IAM condition).
    "Api": {"dynamodb:DeleteItem"},
    # So does the public function when an answer through a link is recorded.
    "Public": {"dynamodb:DeleteItem"},
}
DESTRUCTIVE = {"dynamodb:Scan", "dynamodb:DeleteItem", "s3:DeleteObject", "dynamodb:BatchWriteItem"}


def least_value(tpl, v):
    """The smallest value a deployment can give `v` (a number, or a Ref to a parameter)."""
    if isinstance(v, dict) and "Ref" in v:
        p = tpl.get("Parameters", {}).get(v["Ref"])
        if p is None:
            return None
        if "MinValue" in p:
            return float(p["MinValue"])
        if "Default" in p:
            return float(p["Default"])
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def most_value(tpl, v):
    """The largest value a deployment can give `v` (a number, or a Ref to a parameter)."""
    if isinstance(v, dict) and "Ref" in v:
        p = tpl.get("Parameters", {}).get(v["Ref"])
        if p is None:
            return None
        for k in ("MaxValue", "Default"):
            if k in p:
                return float(p[k])
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def fn_timeout(tpl, props):
    t = props.get("Timeout", tpl.get("Globals", {}).get("Function", {}).get("Timeout", 3))
    return least_value(tpl, t) if not isinstance(t, dict) else None


def ref_target(v):
    if isinstance(v, dict):
        if "Ref" in v:
            return v["Ref"]
        if "Fn::GetAtt" in v:
            g = v["Fn::GetAtt"]
            return g[0] if isinstance(g, list) else str(g).split(".")[0]
    return None


def functions(tpl):
    for name, r in tpl.get("Resources", {}).items():
        if r.get("Type") in ("AWS::Serverless::Function", "AWS::Lambda::Function"):
            yield name, r.get("Properties", {}) or {}


SECRET_NAMES = ("_API_KEY", "_TOKEN", "_SECRET", "_PASSWORD")


def env_vars(tpl):
    g = tpl.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {}) or {}
    yield from (("Globals", k) for k in g)
    for name, props in functions(tpl):
        for k in ((props.get("Environment") or {}).get("Variables") or {}):
            yield (name, k)


def statements(pol):
    """A policy's statements, both branches of an `!If` statement included."""
    for st in pol.get("Statement", []) if "Statement" in pol else []:
        if isinstance(st, dict) and "Fn::If" in st:
            yield from (b for b in st["Fn::If"][1:] if isinstance(b, dict) and "Action" in b)
        else:
            yield st


INVOKERS = {"Step"}


def refs(v):
    """Every parameter or resource a value `Ref`s."""
    if isinstance(v, dict):
        for k, x in v.items():
            if k == "Ref" and isinstance(x, str):
                yield x
            else:
                yield from refs(x)
    elif isinstance(v, list):
        for x in v:
            yield from refs(x)


def literal_strings(v):
    if isinstance(v, str):
        yield v
    elif isinstance(v, dict):
        for k, x in v.items():
            if k not in ("Ref",):
                yield from literal_strings(x)
    elif isinstance(v, list):
        for x in v:
            yield from literal_strings(x)


def check_invoke(name, props, st, out):
    actions = st.get("Action", [])
    actions = [actions] if isinstance(actions, str) else actions
    if "lambda:InvokeFunction" not in actions:
        return
    if name not in INVOKERS:
        out.append(f"invoke: {name} is granted lambda:InvokeFunction; only {sorted(INVOKERS)} run function tasks")
        return
    res = st.get("Resource")
    if "InvokableFunctions" not in set(refs(res)):
        out.append(f"invoke: {name} may invoke {res}, not (only) the functions of the InvokableFunctions parameter")
    # The only wildcard allowed is the `:*` of the qualified ARNs made from the parameter.
    for lit in literal_strings(res):
        if "*" in lit.replace("}:*", "}").replace(":*,", ","):
            out.append(f"invoke: {name} may invoke a wildcard resource ({lit})")
    env = (props.get("Environment") or {}).get("Variables") or {}
    if "InvokableFunctions" not in set(refs(env.get("LLMO_ALLOWED_FUNCTIONS"))):
        out.append(f"invoke: {name} may invoke functions but its LLMO_ALLOWED_FUNCTIONS is not the InvokableFunctions parameter")


MODEL_PREFIXES = {"arn:aws:bedrock:*::foundation-model/", "arn:aws:bedrock:*:*:inference-profile/"}


def check_models(name, props, st, out):
    actions = st.get("Action", [])
    actions = [actions] if isinstance(actions, str) else actions
    if not any(a.startswith("bedrock:") for a in actions):
        return
    env = (props.get("Environment") or {}).get("Variables") or {}
    if "BedrockModels" not in set(refs(env.get("LLMO_BEDROCK_MODELS"))):
        out.append(f"models: {name} may call Bedrock models but its LLMO_BEDROCK_MODELS is not the BedrockModels parameter")
    if name != "Step":
        out.append(f"models: {name} may call Bedrock models; only the step function calls models")
    res = st.get("Resource")
    if "BedrockModels" not in set(refs(res)):
        out.append(f"models: {name} may call Bedrock models other than the BedrockModels parameter lists")
    for lit in literal_strings(res):
        for part in lit.replace("${Models}", "").replace("${Profiles}", "").split(","):
            if part and part not in MODEL_PREFIXES:
                out.append(f"models: {name} may call the Bedrock resource {part}, not one the parameter names")


def check(tpl):
    out = []
    res = tpl.get("Resources", {})
    for where, k in env_vars(tpl):
        if k.endswith(SECRET_NAMES) or k.startswith("LLMO_SECRET_"):
            out.append(f"secrets: {where} sets the environment variable {k}; keys and secrets come from Secrets Manager")
    for name, props in functions(tpl):
        timeout = fn_timeout(tpl, props)
        for ev_name, ev in (props.get("Events") or {}).items():
            if ev.get("Type") != "SQS":
                continue
            q = ref_target(ev.get("Properties", {}).get("Queue"))
            queue = res.get(q, {})
            vis = least_value(tpl, queue.get("Properties", {}).get("VisibilityTimeout", 30))
            window = most_value(tpl, ev.get("Properties", {}).get("MaximumBatchingWindowInSeconds", 0))
            if timeout is None or vis is None or window is None:
                out.append(f"visibility: {name}.{ev_name}: cannot read the timeout of {name}, the visibility of {q} or the batching window")
            elif vis < 6 * timeout + window:
                out.append(
                    f"visibility: {q}'s visibility timeout can be {vis:g} s, less than 6x {name}'s timeout ({timeout:g} s) plus a batching window of {window:g} s = {6 * timeout + window:g} s"
                )
        lg = ref_target((props.get("LoggingConfig") or {}).get("LogGroup"))
        group = res.get(lg) if lg else None
        if not group or group.get("Type") != "AWS::Logs::LogGroup":
            out.append(f"logs: {name} has no LoggingConfig.LogGroup naming a log group of this template")
        elif "RetentionInDays" not in (group.get("Properties") or {}):
            out.append(f"logs: {name}'s log group {lg} has no RetentionInDays")
        for pol in props.get("Policies") or []:
            if isinstance(pol, str):
                out.append(f"privilege: {name} uses the managed policy {pol}")
                continue
            for key in pol:
                if key.endswith("CrudPolicy") or "FullAccess" in key:
                    out.append(f"privilege: {name} uses the policy template {key}; grant the actions it uses")
            for st in statements(pol):
                check_invoke(name, props, st, out)
                check_models(name, props, st, out)
                actions = st.get("Action", [])
                actions = [actions] if isinstance(actions, str) else actions
                resources = st.get("Resource", [])
                resources = [resources] if not isinstance(resources, list) else resources
                for a in actions:
                    if "*" in a:
                        out.append(f"privilege: {name} is granted the wildcard action {a}")
                    if a in DESTRUCTIVE and a not in ALLOWED_DESTRUCTIVE.get(name, set()):
                        out.append(f"privilege: {name} is granted {a}, which it does not use")
                for r in resources:
                    if r == "*":
                        out.append(f"privilege: {name} is granted {actions} on every resource")
    # One retention: the functions' LLMO_RETENTION_DAYS (every item's TTL) and the bucket's
    # lifecycle (every object) are the same parameter.
    g = ((tpl.get("Globals") or {}).get("Function") or {}).get("Environment", {}).get("Variables", {}) or {}
    item_days = ref_target(g.get("LLMO_RETENTION_DAYS"))
    for name, r in res.items():
        if r.get("Type") != "AWS::S3::Bucket":
            continue
        for rule in ((r.get("Properties") or {}).get("LifecycleConfiguration") or {}).get("Rules", []):
            days = rule.get("ExpirationInDays")
            if days is not None and (item_days is None or ref_target(days) != item_days):
                out.append(
                    f"retention: {name}'s lifecycle rule {rule.get('Id')} expires objects after {days}, not the functions' LLMO_RETENTION_DAYS ({item_days})"
                )
    for name, r in res.items():
        if r.get("Type") != "AWS::SQS::Queue":
            continue
        rp = (r.get("Properties") or {}).get("RedrivePolicy")
        if rp is None:
            continue
        mrc = least_value(tpl, rp.get("maxReceiveCount"))
        if mrc is None or mrc < 5:
            out.append(f"redrive: {name}'s maxReceiveCount can be {mrc}, less than 5")
    return out


def conditional_statement(t, sid):
    for st in t["Resources"]["Step"]["Properties"]["Policies"][0]["Statement"]:
        if isinstance(st, dict) and "Fn::If" in st and st["Fn::If"][1].get("Sid") == sid:
            return st["Fn::If"][1]
    raise AssertionError(f"the step function's {sid} statement")


def invoke_statement(t):
    return conditional_statement(t, "InvokeFunctions")


def models_statement(t):
    return conditional_statement(t, "InvokeModels")


def self_test(tpl):
    """Each mutation must raise a finding of its rule; the template itself must raise none."""
    assert check(tpl) == [], check(tpl)

    def mutated(f):
        t = copy.deepcopy(tpl)
        f(t)
        return check(t)

    R = lambda t: t["Resources"]  # noqa: E731
    P = lambda t: t["Parameters"]  # noqa: E731
    cases = {
        "visibility": [
            lambda t: P(t)["VisibilitySeconds"].update(MinValue=60),
            lambda t: R(t)["Step"]["Properties"].update(Timeout=3600),
            lambda t: R(t)["DeadLetters"]["Properties"].update(VisibilityTimeout=30),
            lambda t: P(t)["StepBatchWindow"].update(MaxValue=300),
        ],
        "redrive": [lambda t: P(t)["MaxReceives"].update(MinValue=1)],
        "retention": [
            lambda t: R(t)["Checkpoints"]["Properties"]["LifecycleConfiguration"]["Rules"][0].update(ExpirationInDays=90),
            lambda t: t["Globals"]["Function"]["Environment"]["Variables"].pop("LLMO_RETENTION_DAYS"),
        ],
        "secrets": [
            lambda t: t["Globals"]["Function"]["Environment"]["Variables"].update(OPENAI_API_KEY="sk-..."),
            lambda t: R(t)["Step"]["Properties"].update(Environment={"Variables": {"LLMO_SECRET_TICKETS_TOKEN": "x"}}),
        ],
        "logs": [
            lambda t: R(t)["Api"]["Properties"].pop("LoggingConfig"),
            lambda t: R(t)["StepLogs"]["Properties"].pop("RetentionInDays"),
        ],
        "privilege": [
            lambda t: R(t)["Api"]["Properties"]["Policies"].append({"DynamoDBCrudPolicy": {"TableName": "x"}}),
            lambda t: R(t)["Step"]["Properties"]["Policies"][0]["Statement"][0]["Action"].append("dynamodb:Scan"),
            lambda t: R(t)["Dlq"]["Properties"]["Policies"][0]["Statement"][0].update(Resource="*"),
            lambda t: R(t)["Schedule"]["Properties"]["Policies"][0]["Statement"][0]["Action"].append("s3:*"),
        ],
        "invoke": [
            lambda t: invoke_statement(t).update(Resource="*"),
            lambda t: invoke_statement(t).update(Resource="arn:aws:lambda:eu-west-1:123456789012:function:*"),
            lambda t: invoke_statement(t)["Resource"]["Fn::Split"][1]["Fn::Sub"].__setitem__(0, "${Names},*"),
            lambda t: R(t)["Api"]["Properties"]["Policies"][0]["Statement"].append(copy.deepcopy(invoke_statement(t))),
            lambda t: R(t)["Step"]["Properties"]["Environment"]["Variables"].pop("LLMO_ALLOWED_FUNCTIONS"),
        ],
        "models": [
            lambda t: models_statement(t).update(Resource="arn:aws:bedrock:*::foundation-model/*"),
            lambda t: models_statement(t)["Resource"]["Fn::Split"][1]["Fn::Sub"].__setitem__(
                0, "${Models},arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-pro-v1:0"
            ),
            lambda t: R(t)["Api"]["Properties"]["Policies"][0]["Statement"].append(copy.deepcopy(models_statement(t))),
            lambda t: R(t)["Step"]["Properties"]["Environment"]["Variables"].pop("LLMO_BEDROCK_MODELS"),
        ],
    }
    failed = 0
    for rule, muts in cases.items():
        for i, m in enumerate(muts):
            found = mutated(m)
            if not any(f.startswith(rule + ":") for f in found):
                print(f"self-test: mutation {rule}[{i}] was not caught (found {found})")
                failed += 1
    n = sum(len(m) for m in cases.values())
    print(f"infra/check.py self-test: {n - failed} of {n} mutations caught")
    return failed == 0


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    path = args[0] if args else "infra/template.yaml"
    tpl, matches = decode(path)
    if tpl is None:
        for m in matches:
            print(f"{path}: {m}")
        return 1
    if "--self-test" in argv:
        return 0 if self_test(tpl) else 1
    findings = check(tpl)
    for f in findings:
        print(f"{path}: {f}")
    if not findings:
        print(f"{path}: visibility, redrive, logs, secrets, privilege, invoke, models and retention rules hold")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
