//! `type: function` through the API: runs started with `POST /runs` whose tasks invoke Lambda
//! functions (the test function under `cargo lambda watch`, a real Runtime API emulation),
//! on the local stack's step workers and on `llmo serve`'s composition: the answer reaches the
//! next task, a function error follows the task's `retry` (one call per attempt) and fails the
//! run with the function's error, a function not on the operator's list is refused without a
//! call. Every run's stored log is audited.

use crate::support;

use std::path::PathBuf;
use std::sync::Arc;

use llmo_core::function::AllowedFunctions;
use llmo_lambda::local::LocalFunctions;
use serde_json::json;
use support::*;

const CALLS: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: calls }
spec:
  inputs:
    n: { type: integer }
    dir: { type: string }
  tasks:
    - id: call
      type: function
      with: { function: echo, payload: { n: "{{ inputs.n }}", count_in: "{{ inputs.dir }}" } }
    - id: double
      type: transform
      depends_on: [call]
      with: { expression: "tasks.call.output.echo.n * 2" }
  outputs:
    doubled: "{{ tasks.double.output }}"
    key: "{{ tasks.call.output.echo.llmo.idempotency_key }}"
"#;

const FAILS: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: fails }
spec:
  inputs:
    dir: { type: string }
    function: { type: string, default: echo }
  tasks:
    - id: refuse
      type: function
      retry: { max_attempts: 2, backoff: { initial: 10ms } }
      with: { function: "{{ inputs.function }}", payload: { fail: "not today", count_in: "{{ inputs.dir }}" } }
"#;

/// The test function as `echo` and a setup whose executors invoke it; `None` without
/// cargo-lambda (skipped unless `LLMO_REQUIRE_AWS=1`).
async fn functions() -> Option<(LocalFunctions, Setup)> {
    let Some(cl) = llmo_lambda::local::cargo_lambda(&root()) else {
        assert!(std::env::var("LLMO_REQUIRE_AWS").is_err(), "LLMO_REQUIRE_AWS=1 but cargo-lambda is not installed");
        return None;
    };
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let bin = target.join("debug/examples/test_function");
    assert!(
        bin.exists(),
        "{}: cargo build -p llmo-lambda --examples (cargo test --workspace builds it)",
        bin.display()
    );
    let local = LocalFunctions::start(&cl, &bin, &["echo"]).await.expect("the local functions start");
    let endpoint = local.endpoint();
    let setup = Setup {
        workers: 2,
        executors: Arc::new(move || {
            let mut r = executors();
            let settings = llmo_lambda::Settings {
                allowed: AllowedFunctions::parse("echo").unwrap(),
                endpoint: Some(endpoint.clone()),
            };
            r.register("function", Arc::new(llmo_lambda::FunctionExecutor::new(settings)));
            r
        }),
        ..Setup::default()
    };
    Some((local, setup))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn function_tasks_run_on_the_step_workers() {
    let Some((_local, setup)) = functions().await else { return };
    let Some(t) = Target::stack(setup).await else { return };
    calls(&t).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn function_tasks_run_on_serve() {
    let Some((_local, setup)) = functions().await else { return };
    let t = Target::serve(setup).await;
    calls(&t).await;
    t.stop().await;
}

fn calls_in(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

async fn calls(t: &Target) {
    let api = t.api.clone();
    let dir = std::env::temp_dir().join(unique("llmo-fn-calls"));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.to_str().unwrap();

    let (code, v) = call(&api, "POST", "/runs", Some(json!({"source": CALLS, "inputs": {"n": 21, "dir": d}}))).await;
    assert_eq!(code, 201, "{v}");
    let run = v["run_id"].as_str().unwrap().to_string();
    let end = wait_end(&api, &run, 60).await;
    assert_eq!(end["status"], "succeeded", "{end}");
    assert_eq!(end["outputs"]["doubled"], 42, "{end}");
    let key = end["outputs"]["key"].as_str().unwrap().to_string();
    assert_eq!(calls_in(&dir).len(), 1, "one call");
    assert!(calls_in(&dir)[0].starts_with(&key), "the call carried the attempt's key");
    let (initial, log) = t.initial_and_log(&run).await;
    check_log(&plan(CALLS), &log, initial);

    // A function error: retried once (max_attempts 2), then the run fails with it.
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let (code, v) = call(&api, "POST", "/runs", Some(json!({"source": FAILS, "inputs": {"dir": d}}))).await;
    assert_eq!(code, 201, "{v}");
    let run = v["run_id"].as_str().unwrap().to_string();
    let end = wait_end(&api, &run, 60).await;
    assert_eq!(end["status"], "failed", "{end}");
    assert!(end["error"].as_str().unwrap_or_default().contains("function `echo` failed: Refused: not today"), "{end}");
    assert_eq!(end["tasks"][0]["attempts"], 2, "{end}");
    assert_eq!(calls_in(&dir).len(), 2, "one call per attempt");
    let (initial, log) = t.initial_and_log(&run).await;
    check_log(&plan(FAILS), &log, initial);

    // Not on the operator's list: refused at once, nothing invoked.
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let body = json!({"source": FAILS, "inputs": {"dir": d, "function": "other"}});
    let (code, v) = call(&api, "POST", "/runs", Some(body)).await;
    assert_eq!(code, 201, "{v}");
    let run = v["run_id"].as_str().unwrap().to_string();
    let end = wait_end(&api, &run, 60).await;
    assert_eq!(end["status"], "failed", "{end}");
    assert!(end["error"].as_str().unwrap_or_default().contains("not in LLMO_ALLOWED_FUNCTIONS"), "{end}");
    assert_eq!(end["tasks"][0]["attempts"], 1, "not retried: {end}");
    assert!(calls_in(&dir).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// An event over Lambda's 6 MB goes to the run's prefix of the bucket: the function gets only
/// `llmo` with `payload_ref`, and the object holds the whole event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_6_mb_goes_by_claim_check_in_s3() {
    use llmo_runtime::executor::{Attempt, Executor};
    let Some((local, _)) = functions().await else { return };
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 30, 5).await;
    let settings =
        llmo_lambda::Settings { allowed: AllowedFunctions::parse("echo").unwrap(), endpoint: Some(local.endpoint()) };
    let exec = llmo_lambda::FunctionExecutor::new(settings)
        .with_claim_check(Arc::new(llmo_aws::blobs::S3Blobs { aws: aws.clone() }));
    let big = "x".repeat(7 * 1024 * 1024);
    let a = Attempt {
        plan: plan(CALLS),
        run_id: "run-big".into(),
        tenant: None,
        task: Some(0),
        task_id: "call".into(),
        ty: "function".into(),
        item: None,
        attempt: 3,
        with: json!({ "function": "echo", "payload": { "big": big } }),
        context: Default::default(),
        budget_left_usd: None,
        allowance: None,
        prices: None,
        timeout: None,
        admitted: false,
        depth: 0,
        callback: None,
        step: None,
    };
    let r = exec.execute(&a).await;
    let llmo_core::engine::AttemptResult::Succeeded { output, .. } = r else { panic!("{r:?}") };
    let sent = &output["echo"];
    assert!(sent.get("big").is_none(), "the payload's fields stay in S3: {}", sent.to_string().len());
    let reference = &sent["llmo"]["payload_ref"];
    assert_eq!(reference["bucket"], aws.bucket.as_str());
    let key = reference["key"].as_str().unwrap();
    assert_eq!(key, format!("runs/run-big/function-payloads/{}-3.json", a.idempotency_key()));
    let object = aws.s3.get_object().bucket(&aws.bucket).key(key).send().await.unwrap();
    let bytes = object.body.collect().await.unwrap().into_bytes();
    let event: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(event["big"].as_str().map(str::len), Some(7 * 1024 * 1024));
    assert_eq!(event["llmo"]["idempotency_key"], a.idempotency_key());
}
