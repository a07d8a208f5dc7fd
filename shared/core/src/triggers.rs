//! Triggers: what a workflow's `spec.schedule` and `spec.events` deploy as, and how an event
//! becomes a run's inputs. Pure: values in, values out.
//!
//! - [`cloudformation`]: a CloudFormation template (JSON, which is also YAML) with one EventBridge
//!   Scheduler schedule per scheduled workflow and one EventBridge rule per event trigger, all
//!   targeting the stack's `schedule` function (its ARN is the template's parameter), with a
//!   role for the scheduler, permissions for the rules, and a dead-letter queue for deliveries
//!   that keep failing. `llmo infra` writes it.
//! - A schedule's target input is `{"tenant", "workflow", "inputs", "idempotency_key"}`, the key
//!   being `<aws.scheduler.schedule-arn>@<aws.scheduler.scheduled-time>`: the same on every
//!   retry of one tick, so a tick starts one run.
//! - A rule's target input is `{"tenant", "workflow", "trigger", "event"}` (an input transformer
//!   copies the event's id, source, detail-type, time, account, region and whole `detail`); the
//!   function finds the trigger in the registered workflow and
//!   computes the inputs with [`event_inputs`]. The event's id is the start's idempotency key.

use indexmap::IndexMap;
use serde_json::{Map, Value, json};

use crate::model::{EventTrigger, Workflow};

/// The inputs an event gives a run: each trigger input is a template over `event`. A template
/// that is exactly one expression (`{{ event.detail.object.size }}`) keeps the value's JSON
/// type; any other renders to a string. The validator has checked that the templates parse,
/// read only `event`, and set declared inputs (and every required one).
pub fn event_inputs(trigger: &EventTrigger, event: &Value) -> Result<Map<String, Value>, String> {
    let mut env = minijinja::Environment::new();
    env.set_fuel(Some(crate::engine::limits::TEMPLATE_FUEL));
    let ctx = minijinja::context! { event => crate::engine::machine::json_ctx(event) };
    let mut out = Map::new();
    for (name, template) in &trigger.inputs {
        let fail = |e: minijinja::Error| {
            format!("event trigger `{}`, input `{name}`: {}", trigger.name, crate::engine::limits::explain(e))
        };
        let v = match crate::engine::machine::single_expression(template).map(str::trim) {
            Some(expr) => {
                let v = env.compile_expression(expr).map_err(fail)?.eval(&ctx).map_err(fail)?;
                if v.is_undefined() {
                    return Err(format!(
                        "event trigger `{}`, input `{name}`: `{expr}` is not in the event",
                        trigger.name
                    ));
                }
                serde_json::to_value(&v)
                    .map_err(|e| format!("event trigger `{}`, input `{name}`: {e}", trigger.name))?
            }
            None => Value::String(env.render_str(template, &ctx).map_err(fail)?),
        };
        out.insert(name.clone(), v);
    }
    Ok(out)
}

/// Whether `event` matches an EventBridge event pattern (what a rule deployed from the
/// trigger would match; `llmo serve` and `POST /bus/events` match with it). Each pattern key
/// is a nested pattern or a list of conditions, any of which matches the event's value (or any
/// element of it, when it is a list): a literal (string, number, bool, null), or
/// `{"prefix"}`, `{"suffix"}`, `{"equals-ignore-case"}`, `{"wildcard"}` (`*` for any run of
/// characters), `{"anything-but": literal | [literals] | {"prefix"}}`,
/// `{"numeric": [op, n (, op, n)]}` (`<`, `<=`, `=`, `>=`, `>`), `{"exists": bool}`. A field
/// the event lacks matches only `{"exists": false}`. A condition of another shape matches
/// nothing.
pub fn pattern_matches(pattern: &Map<String, Value>, event: &Value) -> bool {
    pattern.iter().all(|(key, want)| {
        let got = event.get(key);
        match want {
            Value::Object(nested) => got.is_some_and(|g| g.is_object() && pattern_matches(nested, g)),
            Value::Array(conditions) => conditions.iter().any(|c| condition_matches(c, got)),
            _ => false,
        }
    })
}

fn condition_matches(c: &Value, got: Option<&Value>) -> bool {
    if let Some(exists) = c.get("exists").and_then(Value::as_bool) {
        return got.is_some() == exists;
    }
    let Some(got) = got else { return false };
    let values: Vec<&Value> = match got {
        Value::Array(items) => items.iter().collect(),
        v => vec![v],
    };
    values.into_iter().any(|v| one_matches(c, v))
}

fn one_matches(c: &Value, v: &Value) -> bool {
    let Value::Object(op) = c else { return c == v || numbers_equal(c, v) };
    let Some((name, arg)) = op.iter().next().filter(|_| op.len() == 1) else { return false };
    let text = v.as_str();
    match (name.as_str(), arg) {
        ("prefix", Value::String(p)) => text.is_some_and(|t| t.starts_with(p.as_str())),
        ("suffix", Value::String(p)) => text.is_some_and(|t| t.ends_with(p.as_str())),
        ("equals-ignore-case", Value::String(p)) => text.is_some_and(|t| t.eq_ignore_ascii_case(p)),
        ("wildcard", Value::String(p)) => text.is_some_and(|t| wildcard(p, t)),
        ("anything-but", Value::Array(no)) => !no.iter().any(|n| n == v || numbers_equal(n, v)),
        ("anything-but", Value::Object(_)) => text.is_some() && !one_matches(arg, v),
        ("anything-but", n) => n != v && !numbers_equal(n, v),
        ("numeric", Value::Array(ops)) => {
            let Some(x) = v.as_f64() else { return false };
            ops.chunks(2).all(|pair| match pair {
                [Value::String(o), n] => n.as_f64().is_some_and(|n| match o.as_str() {
                    "<" => x < n,
                    "<=" => x <= n,
                    "=" => x == n,
                    ">=" => x >= n,
                    ">" => x > n,
                    _ => false,
                }),
                _ => false,
            }) && !ops.is_empty()
        }
        _ => false,
    }
}

fn numbers_equal(a: &Value, b: &Value) -> bool {
    matches!((a.as_f64(), b.as_f64()), (Some(x), Some(y)) if a.is_number() && b.is_number() && x == y)
}

/// `*` matches any run of characters (none included); everything else itself.
fn wildcard(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// How the generated schedules and rules are set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// The tenant the runs belong to (the one that registered the workflows).
    pub tenant: String,
    /// EventBridge Scheduler's flexible time window, in minutes (0: off, the tick at its time).
    pub flexible_window_minutes: u32,
}

/// A CloudFormation logical id from a name: alphanumerics only, capitalised at `-`/`_`.
fn logical(parts: &[&str]) -> String {
    let mut out = String::new();
    for p in parts {
        for w in p.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()) {
            let mut cs = w.chars();
            if let Some(f) = cs.next() {
                out.push(f.to_ascii_uppercase());
                out.extend(cs);
            }
        }
    }
    out
}

/// The template for `workflows` (each with its registered name). Errors name the workflow.
pub fn cloudformation(workflows: &[&Workflow], opts: &Options) -> Result<Value, String> {
    let mut resources: IndexMap<String, Value> = IndexMap::new();
    let mut outputs: IndexMap<String, Value> = IndexMap::new();
    let target_arn = json!({"Ref": "ScheduleFunctionArn"});
    let dlq = json!({"Fn::GetAtt": ["TriggerDeadLetters", "Arn"]});
    let mut any_schedule = false;
    let mut any = false;
    for wf in workflows {
        let name = &wf.metadata.name;
        if let Some(s) = &wf.spec.schedule {
            any_schedule = true;
            any = true;
            let expr = match (&s.cron, &s.rate) {
                (Some(c), _) => {
                    crate::schedule::check_cron(c).map_err(|e| format!("{name}: spec.schedule.cron: {e}"))?
                }
                (None, Some(r)) => {
                    crate::schedule::check_rate(r.0).map_err(|e| format!("{name}: spec.schedule.rate: {e}"))?
                }
                (None, None) => return Err(format!("{name}: spec.schedule has neither cron nor rate")),
            };
            let input = json!({
                "tenant": opts.tenant,
                "workflow": name,
                "inputs": s.inputs,
                "idempotency_key": "<aws.scheduler.schedule-arn>@<aws.scheduler.scheduled-time>",
            });
            let window = if opts.flexible_window_minutes == 0 {
                json!({"Mode": "OFF"})
            } else {
                json!({"Mode": "FLEXIBLE", "MaximumWindowInMinutes": opts.flexible_window_minutes})
            };
            let mut props = json!({
                "Name": {"Fn::Sub": format!("${{AWS::StackName}}-{name}")},
                "Description": format!("Starts workflow {name} (tenant {}); generated by llmo infra.", opts.tenant),
                "ScheduleExpression": expr,
                "FlexibleTimeWindow": window,
                "State": if s.enabled { "ENABLED" } else { "DISABLED" },
                "Target": {
                    "Arn": target_arn,
                    "RoleArn": {"Fn::GetAtt": ["SchedulerRole", "Arn"]},
                    "Input": input.to_string(),
                    "RetryPolicy": {"MaximumRetryAttempts": 10, "MaximumEventAgeInSeconds": 3600},
                    "DeadLetterConfig": {"Arn": dlq},
                },
            });
            if let Some(tz) = &s.timezone {
                props["ScheduleExpressionTimezone"] = json!(tz);
            }
            let id = logical(&[name, "schedule"]);
            outputs.insert(id.clone(), json!({"Value": {"Ref": id}}));
            resources.insert(id, json!({"Type": "AWS::Scheduler::Schedule", "Properties": props}));
        }
        for ev in &wf.spec.events {
            any = true;
            let id = logical(&[name, &ev.name, "rule"]);
            // The event's envelope fields and its whole `detail`, picked by path (portable:
            // LocalStack's `<aws.events.event>` drops `detail`).
            let template = format!(
                "{{\"tenant\": {}, \"workflow\": {}, \"trigger\": {}, \"event\": {{\"id\": \"<id>\", \"source\": \"<source>\", \"detail-type\": \"<detail_type>\", \"time\": \"<time>\", \"account\": \"<account>\", \"region\": \"<region>\", \"detail\": <detail>}}}}",
                Value::String(opts.tenant.clone()),
                Value::String(name.clone()),
                Value::String(ev.name.clone())
            );
            let paths = json!({
                "id": "$.id", "source": "$.source", "detail_type": "$.detail-type", "time": "$.time",
                "account": "$.account", "region": "$.region", "detail": "$.detail",
            });
            resources.insert(
                id.clone(),
                json!({
                    "Type": "AWS::Events::Rule",
                    "Properties": {
                        "Description": format!("Starts workflow {name} (tenant {}) on {}; generated by llmo infra.", opts.tenant, ev.name),
                        "EventPattern": ev.pattern,
                        "State": "ENABLED",
                        "Targets": [{
                            "Id": "start-run",
                            "Arn": target_arn,
                            "InputTransformer": {"InputPathsMap": paths, "InputTemplate": template},
                            "RetryPolicy": {"MaximumRetryAttempts": 10, "MaximumEventAgeInSeconds": 3600},
                            "DeadLetterConfig": {"Arn": dlq},
                        }],
                    },
                }),
            );
            resources.insert(
                format!("{id}Permission"),
                json!({
                    "Type": "AWS::Lambda::Permission",
                    "Properties": {
                        "Action": "lambda:InvokeFunction",
                        "FunctionName": target_arn,
                        "Principal": "events.amazonaws.com",
                        "SourceArn": {"Fn::GetAtt": [id, "Arn"]},
                    },
                }),
            );
            outputs.insert(id.clone(), json!({"Value": {"Ref": id}}));
        }
    }
    let mut head: IndexMap<String, Value> = IndexMap::new();
    if any {
        head.insert(
            "TriggerDeadLetters".into(),
            json!({
                "Type": "AWS::SQS::Queue",
                "Properties": {"MessageRetentionPeriod": 1_209_600, "SqsManagedSseEnabled": true},
            }),
        );
        // Only EventBridge (the rules and the scheduler) may send the deliveries that failed.
        head.insert(
            "TriggerDeadLettersPolicy".into(),
            json!({
                "Type": "AWS::SQS::QueuePolicy",
                "Properties": {
                    "Queues": [{"Ref": "TriggerDeadLetters"}],
                    "PolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [{
                            "Effect": "Allow",
                            "Principal": {"Service": ["events.amazonaws.com", "scheduler.amazonaws.com"]},
                            "Action": "sqs:SendMessage",
                            "Resource": dlq,
                        }],
                    },
                },
            }),
        );
    }
    if any_schedule {
        head.insert(
            "SchedulerRole".into(),
            json!({
                "Type": "AWS::IAM::Role",
                "Properties": {
                    "AssumeRolePolicyDocument": {
                        "Version": "2012-10-17",
                        "Statement": [{
                            "Effect": "Allow",
                            "Principal": {"Service": "scheduler.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                            "Condition": {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}},
                        }],
                    },
                    "Policies": [{
                        "PolicyName": "start-runs",
                        "PolicyDocument": {
                            "Version": "2012-10-17",
                            "Statement": [
                                {"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": target_arn},
                                {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": dlq},
                            ],
                        },
                    }],
                },
            }),
        );
    }
    head.extend(resources);
    Ok(json!({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": format!(
            "LLM-Orchestrator triggers for tenant {}: generated by `llmo infra` from the workflows' spec.schedule and spec.events. Deploy after the main stack, with its ScheduleFunctionArn output.",
            opts.tenant
        ),
        "Parameters": {
            "ScheduleFunctionArn": {"Type": "String", "Description": "The main stack's ScheduleFunctionArn output."},
        },
        "Resources": head,
        "Outputs": outputs,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trigger(inputs: &[(&str, &str)]) -> EventTrigger {
        EventTrigger {
            name: "t".into(),
            pattern: Map::new(),
            inputs: inputs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn single_expressions_keep_their_type_others_render_to_text() {
        let ev = json!({"id": "e1", "detail": {"object": {"key": "a/b.pdf", "size": 1234}, "bucket": {"name": "in"}}});
        let t = trigger(&[
            ("size", "{{ event.detail.object.size }}"),
            ("key", "{{event.detail.object.key}}"),
            ("uri", "s3://{{ event.detail.bucket.name }}/{{ event.detail.object.key }}"),
            ("upper", "{{ event.detail.bucket.name | upper }}"),
        ]);
        let got = event_inputs(&t, &ev).unwrap();
        assert_eq!(got["size"], json!(1234));
        assert_eq!(got["key"], json!("a/b.pdf"));
        assert_eq!(got["uri"], json!("s3://in/a/b.pdf"));
        assert_eq!(got["upper"], json!("IN"));
    }

    #[test]
    fn a_missing_field_is_an_error_naming_the_input() {
        let t = trigger(&[("key", "{{ event.detail.object.key }}")]);
        let e = event_inputs(&t, &json!({"detail": {"object": {}}})).unwrap_err();
        assert!(e.contains("input `key`") && e.contains("not in the event"), "{e}");
    }

    #[test]
    fn logical_ids_are_alphanumeric() {
        assert_eq!(logical(&["nightly-digest", "schedule"]), "NightlyDigestSchedule");
        assert_eq!(logical(&["document-intake", "pdf_uploaded", "rule"]), "DocumentIntakePdfUploadedRule");
    }

    #[test]
    fn event_patterns_match_as_eventbridge_matches() {
        let event = json!({
            "source": "aws.s3", "detail-type": "Object Created",
            "detail": {"bucket": {"name": "acme-intake"}, "object": {"key": "contracts/msa.pdf", "size": 2048},
                       "tags": ["legal", "q4"], "reason": null}
        });
        let m = |p: Value| pattern_matches(p.as_object().unwrap(), &event);
        assert!(m(json!({"source": ["aws.s3"], "detail-type": ["Object Created"]})));
        assert!(!m(json!({"source": ["aws.ec2"]})));
        assert!(m(json!({"detail": {"bucket": {"name": ["other", "acme-intake"]}}})));
        assert!(m(json!({"detail": {"object": {"key": [{"prefix": "contracts/"}]}}})));
        assert!(m(json!({"detail": {"object": {"key": [{"suffix": ".pdf"}]}}})));
        assert!(m(json!({"detail": {"object": {"key": [{"wildcard": "contracts/*.pdf"}]}}})));
        assert!(!m(json!({"detail": {"object": {"key": [{"wildcard": "invoices/*"}]}}})));
        assert!(m(json!({"detail-type": [{"equals-ignore-case": "object created"}]})));
        assert!(m(json!({"detail": {"object": {"size": [{"numeric": [">", 1024, "<=", 4096]}]}}})));
        assert!(!m(json!({"detail": {"object": {"size": [{"numeric": [">", 4096]}]}}})));
        assert!(m(json!({"detail": {"object": {"size": [2048]}}})));
        assert!(m(json!({"detail": {"tags": ["q4"]}})), "a list matches by any element");
        assert!(m(json!({"detail": {"bucket": {"name": [{"anything-but": ["a", "b"]}]}}})));
        assert!(!m(json!({"detail": {"bucket": {"name": [{"anything-but": "acme-intake"}]}}})));
        assert!(!m(json!({"detail": {"bucket": {"name": [{"anything-but": {"prefix": "acme"}}]}}})));
        assert!(m(json!({"detail": {"missing": [{"exists": false}]}})));
        assert!(!m(json!({"detail": {"missing": [{"exists": true}]}})));
        assert!(m(json!({"detail": {"object": {"key": [{"exists": true}]}}})));
        assert!(!m(json!({"detail": {"object": {"key": [{"exists": false}]}}})));
        assert!(m(json!({"detail": {"reason": [null]}})));
        assert!(!m(json!({"detail": {"missing": ["x"]}})), "a missing field matches no value");
        assert!(!m(json!({"source": "aws.s3"})), "a bare value is not a pattern");
        assert!(!m(json!({"source": [{"regex": ".*"}]})), "an unknown condition matches nothing");
    }
}
