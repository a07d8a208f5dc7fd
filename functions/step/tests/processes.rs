//! `step` worker processes against the local stack: every example workflow run on three of
//! them; one killed (SIGKILL) in the middle of a model call, whose message comes back after the
//! visibility timeout and is finished by a second process with every task still reaching its
//! terminal state exactly once; and a call longer than the visibility timeout, kept from a
//! second process by the heartbeat.

#[path = "../../../shared/aws/tests/support/mod.rs"]
mod support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use support::*;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SLOW: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: slow }
spec:
  tasks:
    - id: think
      type: llm
      with: { provider: openai, model: gpt-4o-mini, prompt: "Think slowly." }
    - id: after
      type: transform
      depends_on: [think]
      with: { output: "{{ tasks.think.output.text }}!" }
  outputs:
    answer: "{{ tasks.after.output }}"
"#;

/// A `step --local` process on this test's table, queues and bucket.
fn command(aws: &llmo_aws::Aws) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_step"));
    c.arg("--local")
        .envs(aws.resource_env())
        .env_remove("LLMO_MOCK")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    c
}

/// A worker whose `openai` provider is the fake model server; visibility timeout 3 s.
fn worker(aws: &llmo_aws::Aws, model_url: &str) -> tokio::process::Child {
    command(aws)
        .env("LLMO_VISIBILITY_SECS", "3")
        .env("OPENAI_BASE_URL", model_url)
        .env("OPENAI_API_KEY", "test-key")
        .spawn()
        .expect("the step binary starts")
}

/// A fake OpenAI-compatible server whose every answer ("done") takes `delay`.
async fn slow_model(delay: Duration) -> MockServer {
    let model = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/chat/completions"))
        .respond_with(ResponseTemplate::new(200).set_delay(delay).set_body_json(json!({
            "id": "x", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "done"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
        })))
        .mount(&model)
        .await;
    model
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_task_loses_nothing_and_repeats_nothing() {
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 3, 5).await;
    let model = slow_model(Duration::from_secs(2)).await;
    let api = api(&aws);
    let mut first = worker(&aws, &model.uri());
    let (code, v) = call(&api, "POST", "/runs", Some(json!({"source": SLOW}))).await;
    assert_eq!(code, 201, "{v}");
    let run_id = v["run_id"].as_str().unwrap().to_string();
    // Wait until the first worker is inside the model call, then kill it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while model.received_requests().await.unwrap_or_default().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the first worker never called the model");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let mut second = worker(&aws, &model.uri());
    let got = wait_end(&api, &run_id, 60).await;
    second.start_kill().unwrap();
    assert_eq!(got["status"], "succeeded", "{got}");
    assert_eq!(got["outputs"]["answer"], "done!");
    assert_eq!(model.received_requests().await.unwrap().len(), 2, "the killed call was made again, once");
    let (initial, log) = initial_and_log(&aws, &run_id).await;
    check_log(&plan(SLOW), &log, initial);
    let results =
        log.iter().filter(|t| matches!(t.event, llmo_core::engine::Event::AttemptFinished { task: 0, .. })).count();
    assert_eq!(results, 1, "one result stored for the model task");
}

/// A model call longer than the visibility timeout (7 s against 3 s) keeps its message: the
/// step's heartbeat extends the visibility, so the second worker process never receives it
/// and the model is called once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_task_keeps_its_message_while_it_runs() {
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 3, 5).await;
    let model = slow_model(Duration::from_secs(7)).await;
    let api = api(&aws);
    let mut a = worker(&aws, &model.uri());
    let mut b = worker(&aws, &model.uri());
    let (code, v) = call(&api, "POST", "/runs", Some(json!({"source": SLOW}))).await;
    assert_eq!(code, 201, "{v}");
    let run_id = v["run_id"].as_str().unwrap().to_string();
    let got = wait_end(&api, &run_id, 60).await;
    a.start_kill().unwrap();
    b.start_kill().unwrap();
    assert_eq!(got["status"], "succeeded", "{got}");
    assert_eq!(got["outputs"]["answer"], "done!");
    assert_eq!(model.received_requests().await.unwrap().len(), 1, "the slow call was made once");
    let (initial, log) = initial_and_log(&aws, &run_id).await;
    check_log(&plan(SLOW), &log, initial);
}

/// Every example workflow, submitted through the API, runs to the outcome of an embedded run on
/// three `step --local` worker processes (mock models, the examples' HTTP fixtures).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_example_runs_on_three_worker_processes() {
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 30, 5).await;
    let api = api(&aws);
    let fixtures: Vec<String> = std::fs::read_dir(root().join("workflows/fixtures"))
        .unwrap()
        .map(|e| e.unwrap().path().to_string_lossy().into_owned())
        .collect();
    let mut workers: Vec<_> = (0..3)
        .map(|_| {
            let mut w = command(&aws);
            w.env("LLMO_MOCK", "1")
                .env("LLMO_FIXTURES", fixtures.join(":"))
                // Granted by the operator to the tests' tenant, towards the example's host.
                .env(
                    "LLMO_SECRET_TICKETS_TOKEN",
                    r#"{"value": "offline", "tenants": ["t1"], "hosts": ["tickets.example.invalid"]}"#,
                );
            w.spawn().expect("the step binary starts")
        })
        .collect();
    let mut dir: Vec<_> = std::fs::read_dir(root().join("workflows")).unwrap().map(|e| e.unwrap().path()).collect();
    dir.sort();
    let mut started = Vec::new();
    for path in dir
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.to_string_lossy().ends_with(".test.yaml"))
    {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let source = std::fs::read_to_string(path).unwrap();
        let (code, v) = call(&api, "POST", "/workflows", Some(json!({"source": source}))).await;
        assert_eq!(code, 201, "{name}: {v}");
        let wf = v["workflow"].as_str().unwrap().to_string();
        let inputs = example_inputs(&name);
        let (code, v) = call(&api, "POST", "/runs", Some(json!({"workflow": wf, "inputs": inputs}))).await;
        assert_eq!(code, 201, "{name}: {v}");
        started.push((name, source, inputs, v["run_id"].as_str().unwrap().to_string()));
    }
    assert_eq!(started.len(), 5, "the five examples");
    for (name, source, inputs, run_id) in &started {
        let got = wait_end(&api, run_id, 120).await;
        // Under the same run id (`run.id`, idempotency keys), everything must be equal.
        let want = embedded_as(run_id, source, inputs.clone()).await;
        assert_eq!(got["status"], want.status.as_str(), "{name}: {got}");
        let want_out = serde_json::to_value(&want.outputs).unwrap().to_string();
        assert_eq!(got["outputs"].to_string(), want_out, "{name}");
        let (initial, log) = initial_and_log(&aws, run_id).await;
        let st = check_log(&plan(source), &log, initial);
        assert_eq!(st.status.as_str(), got["status"], "{name}: the log replays to the stored outcome");
    }
    // Listings (spread over the GSIs' shards) page through every run once, newest first.
    let (code, v) = call(&api, "GET", "/runs?limit=2", None).await;
    assert_eq!(code, 200);
    assert_eq!(v["runs"].as_array().unwrap().len(), 2, "{v}");
    let cursor = v["next"].as_str().expect("a second page").to_string();
    let (_, v2) = call(&api, "GET", &format!("/runs?limit=10&cursor={}", urlenc(&cursor)), None).await;
    assert_eq!(v2["runs"].as_array().unwrap().len(), 3, "{v2}");
    let newest_first: Vec<String> = started.iter().rev().map(|s| s.3.clone()).collect();
    assert_eq!(list_all(&api, "limit=1").await, newest_first);
    assert_eq!(list_all(&api, "limit=3").await, newest_first);
    let (_, by_wf) = call(&api, "GET", "/runs?workflow=simple-inference", None).await;
    assert_eq!(by_wf["runs"].as_array().unwrap().len(), 1, "{by_wf}");
    let mut by_status = Vec::new();
    for st in ["pending", "running", "succeeded", "failed", "cancelled", "timed_out"] {
        by_status.extend(list_all(&api, &format!("status={st}&limit=1")).await);
    }
    by_status.sort();
    let mut all: Vec<String> = newest_first.clone();
    all.sort();
    assert_eq!(by_status, all, "every run is listed under its final status, once");
    for w in &mut workers {
        w.start_kill().unwrap();
    }
}

/// The run ids of a listing (`GET /runs?<query>`), following its cursor to the end.
async fn list_all(api: &llmo_api::Api, query: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let uri = match &cursor {
            None => format!("/runs?{query}"),
            Some(c) => format!("/runs?{query}&cursor={}", urlenc(c)),
        };
        let (code, v) = call(api, "GET", &uri, None).await;
        assert_eq!(code, 200, "{uri}: {v}");
        ids.extend(v["runs"].as_array().unwrap().iter().map(|r| r["run_id"].as_str().unwrap().to_string()));
        match v["next"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return ids,
        }
    }
    panic!("the listing {query} did not end");
}

fn urlenc(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}
