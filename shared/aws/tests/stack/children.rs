//! `type: workflow` through the API, on the local stack's step workers and on `llmo serve`'s
//! composition: a parent fans out to children of a registered workflow, each child's end
//! completes its parent's attempt once (the parent's log is audited), parent and children link
//! both ways in `GET /runs/{id}`, a child that fails for good is not retried, one that times out
//! (the task's `timeout`) is retried as a new child, cancelling the parent cancels a child still running, and a workflow that
//! is not registered fails the task without a child.

use crate::support;

use serde_json::json;
use support::*;

const CHILD: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: summarise, version: "1.0.0" }
spec:
  inputs:
    topic: { type: string, required: true }
    hold: { type: boolean, default: false }
    broken: { type: boolean, default: false }
  tasks:
    - id: write
      type: llm
      with: { model: gpt-4o-mini, prompt: "One line on {{ inputs.topic }}" }
    - id: gate
      type: wait
      depends_on: [write]
      when: "inputs.hold"
      with: { approval: { prompt: "Go on?" } }
    - id: check
      type: policy
      depends_on: [gate]
      trigger: none_failed
      with: { input: "{{ 'BROKEN' if inputs.broken else 'fine' }}", deny_patterns: [BROKEN] }
    - id: shape
      type: transform
      depends_on: [check]
      with: { output: { topic: "{{ inputs.topic }}", text: "{{ tasks.write.output.text }}" } }
  outputs:
    summary: "{{ tasks.shape.output }}"
"#;

const PARENT: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: parent }
spec:
  inputs:
    topics: { type: array }
    workflow: { type: string, default: summarise@1.0.0 }
    hold: { type: boolean, default: false }
    broken: { type: boolean, default: false }
  tasks:
    - id: each
      type: workflow
      for_each: inputs.topics
      retry: { max_attempts: 2, backoff: { initial: 10ms } }
      with:
        workflow: "{{ inputs.workflow }}"
        inputs: { topic: "{{ item }}", hold: "{{ inputs.hold }}", broken: "{{ inputs.broken }}" }
    - id: join
      type: transform
      depends_on: [each]
      with: { expression: "tasks.each.output | map(attribute='outputs') | map(attribute='summary') | map(attribute='topic') | list" }
  outputs:
    topics: "{{ tasks.join.output }}"
    children: "{{ tasks.each.output | map(attribute='run_id') | list }}"
"#;

async fn start(t: &Target, source: &str, inputs: serde_json::Value) -> String {
    let (code, v) = call(&t.api, "POST", "/runs", Some(json!({"source": source, "inputs": inputs}))).await;
    assert_eq!(code, 201, "{v}");
    v["run_id"].as_str().unwrap().to_string()
}

async fn children(t: &Target) {
    let api = t.api.clone();
    let (code, v) = call(&api, "POST", "/workflows", Some(json!({"source": CHILD}))).await;
    assert_eq!(code, 201, "{v}");

    // Three children, their outputs in item order; each links to its parent and back.
    let run = start(t, PARENT, json!({"topics": ["rust", "go", "zig"]})).await;
    let end = wait_end(&api, &run, 90).await;
    assert_eq!(end["status"], "succeeded", "{end}");
    assert_eq!(end["outputs"]["topics"], json!(["rust", "go", "zig"]), "{end}");
    let kids: Vec<String> =
        end["outputs"]["children"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    let listed: Vec<&str> =
        end["tasks"][0]["children"]["runs"].as_array().unwrap().iter().map(|c| c["run_id"].as_str().unwrap()).collect();
    assert_eq!(listed, kids.iter().map(String::as_str).collect::<Vec<_>>(), "the parent lists its children");
    assert!(end["tokens"].as_u64().unwrap() > 0, "the children's usage is the parent's: {end}");
    for (i, kid) in kids.iter().enumerate() {
        let (code, c) = call(&api, "GET", &format!("/runs/{kid}"), None).await;
        assert_eq!(code, 200, "a child lives in its parent's tenant: {c}");
        assert_eq!(c["status"], "succeeded");
        assert_eq!(c["parent"]["run_id"], run.as_str(), "{c}");
        assert_eq!(c["parent"]["item"], i);
        assert_eq!(c["parent"]["depth"], 1);
        let (code, _) =
            call_as(&api, Some(&token("dev", "t2", &["developer"])), "GET", &format!("/runs/{kid}"), None).await;
        assert_eq!(code, 404, "not another tenant's");
    }
    let (initial, log) = t.initial_and_log(&run).await;
    check_log(&plan(PARENT), &log, initial);

    // A child that fails for good (its policy refuses): not retried.
    let run = start(t, PARENT, json!({"topics": ["rust"], "broken": true})).await;
    let end = wait_end(&api, &run, 90).await;
    assert_eq!(end["status"], "failed", "{end}");
    let error = end["error"].as_str().unwrap_or_default();
    assert!(error.contains("child run run-") && error.contains("failed"), "{end}");
    assert_eq!(end["tasks"][0]["attempts"], 1, "a refusal is not retried: {end}");
    let (initial, log) = t.initial_and_log(&run).await;
    check_log(&plan(PARENT), &log, initial);

    // A child that outlives the task's timeout times out, and is retried as a new child.
    let short = PARENT.replace("      retry:", "      timeout: 1s\n      retry:");
    let run = start(t, &short, json!({"topics": ["rust"], "hold": true})).await;
    let end = wait_end(&api, &run, 90).await;
    assert_eq!(end["status"], "failed", "{end}");
    assert!(end["error"].as_str().unwrap_or_default().contains("timed_out"), "{end}");
    assert_eq!(end["tasks"][0]["attempts"], 2, "{end}");
    let runs = end["tasks"][0]["children"]["runs"].as_array().unwrap().clone();
    assert_eq!(runs.len(), 2, "a child per attempt: {end}");
    assert_eq!(runs[0]["status"], "retried");
    for c in &runs {
        let child = wait_end(&api, c["run_id"].as_str().unwrap(), 30).await;
        assert_eq!(child["status"], "timed_out", "{child}");
    }
    let (initial, log) = t.initial_and_log(&run).await;
    check_log(&plan(&short), &log, initial);

    // Cancelling the parent cancels the child waiting for an approval.
    let run = start(t, PARENT, json!({"topics": ["rust"], "hold": true})).await;
    let child = loop {
        let (_, v) = call(&api, "GET", &format!("/runs/{run}"), None).await;
        if let Some(c) = v["tasks"][0]["children"]["runs"][0]["run_id"].as_str() {
            let (_, c_v) = call(&api, "GET", &format!("/runs/{c}"), None).await;
            if c_v["tasks"][1]["status"] == "waiting" {
                break c.to_string();
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let (code, v) = call(&api, "POST", &format!("/runs/{run}/cancel"), None).await;
    assert!(code == 202 || code == 200, "{code} {v}");
    let end = wait_end(&api, &run, 60).await;
    assert_eq!(end["status"], "cancelled", "{end}");
    let end = wait_end(&api, &child, 60).await;
    assert_eq!(end["status"], "cancelled", "the child is cancelled with its parent: {end}");

    // Not registered: the task fails at once, no child.
    let run = start(t, PARENT, json!({"topics": ["rust"], "workflow": "nowhere"})).await;
    let end = wait_end(&api, &run, 60).await;
    assert_eq!(end["status"], "failed", "{end}");
    assert!(end["error"].as_str().unwrap_or_default().contains("no workflow `nowhere` is registered"), "{end}");
    assert_eq!(end["tasks"][0]["attempts"], 1, "not retried: {end}");
}

on_both!(
    child_workflows_run_on_the_step_workers,
    child_workflows_run_on_serve,
    children,
    Setup { workers: 2, ..Setup::default() }
);
