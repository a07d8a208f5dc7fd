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
}
