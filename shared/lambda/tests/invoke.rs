//! `type: function` against a real Lambda runtime emulation, not a mock: `cargo lambda watch`
//! serves the Invoke API and the Runtime API, and the test function
//! (`examples/test_function.rs`, a `lambda_runtime` function) polls it as it would Lambda's.
//! The executor answers, fails with the function's error, times out, refuses what the operator
//! did not allow and payloads over 6 MB, and a workflow run with a retried function task makes
//! exactly the calls its `retry` allows, each carrying the attempt's idempotency key.
//!
//! Needs cargo-lambda (`localstack/stack.sh install` puts it in `.venv/tools/bin`); skipped
//! without it unless `LLMO_REQUIRE_AWS=1` (`make test`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use llmo_core::engine::{AttemptResult, Plan, RunStatus};
use llmo_core::function::AllowedFunctions;
use llmo_core::source::SourceFile;
use llmo_core::validate::Validator;
use llmo_lambda::local::LocalFunctions;
use llmo_lambda::{FunctionExecutor, Settings};
use llmo_runtime::driver::{Driver, Options};
use llmo_runtime::executor::{Attempt, Executor, Registry};
use llmo_runtime::ports::SystemClock;
use llmo_runtime::store::MemoryStore;
use serde_json::{Value, json};

/// The test function behind `names`, or `None` (skipped) without cargo-lambda.
struct Emulator(LocalFunctions);

impl Emulator {
    async fn start(names: &[&str]) -> Option<Emulator> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let Some(cl) = llmo_lambda::local::cargo_lambda(&root) else {
            assert!(std::env::var("LLMO_REQUIRE_AWS").is_err(), "LLMO_REQUIRE_AWS=1 but cargo-lambda is not installed");
            eprintln!("skipped: no cargo-lambda (localstack/stack.sh install)");
            return None;
        };
        // The test function: an example of this crate, built by `cargo test` beside this binary.
        let exe = std::env::current_exe().unwrap();
        let bin = exe.parent().unwrap().parent().unwrap().join("examples/test_function");
        Some(Emulator(LocalFunctions::start(&cl, &bin, names).await.expect("the local functions start")))
    }

    fn executor(&self, allowed: &str) -> FunctionExecutor {
        FunctionExecutor::new(Settings {
            allowed: AllowedFunctions::parse(allowed).unwrap(),
            endpoint: Some(self.0.endpoint()),
        })
    }
}

const WORKFLOW: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: functions }
spec:
  inputs:
    dir: { type: string }
  tasks:
    - id: score
      type: function
      with:
        function: echo
        payload: { n: 21, count_in: "{{ inputs.dir }}" }
    - id: double
      type: transform
      depends_on: [score]
      with: { expression: "tasks.score.output.echo.n * 2" }
    - id: refuse
      type: function
      depends_on: [double]
      retry: { max_attempts: 2, backoff: { initial: 10ms } }
      with:
        function: echo
        payload: { fail: "not today", count_in: "{{ inputs.dir }}" }
  outputs:
    doubled: "{{ tasks.double.output }}"
"#;

fn attempt(with: Value, timeout: Option<Duration>) -> Attempt {
    attempt_of(WORKFLOW, with, timeout)
}

fn attempt_of(workflow: &str, with: Value, timeout: Option<Duration>) -> Attempt {
    let checked = Validator::default().validate(&SourceFile::new("f.yaml", workflow)).checked.expect("valid");
    let plan = Arc::new(Plan::new(checked));
    Attempt {
        plan,
        run_id: "run-1".into(),
        tenant: None,
        task: Some(0),
        task_id: "score".into(),
        ty: "function".into(),
        item: None,
        attempt: 1,
        with,
        context: Default::default(),
        budget_left_usd: None,
        allowance: None,
        prices: None,
        timeout,
        admitted: false,
        depth: 0,
        callback: None,
        step: None,
    }
}

fn error_of(r: &AttemptResult) -> (&str, bool) {
    match r {
        AttemptResult::Failed { error, retryable, .. } => (error, *retryable),
        AttemptResult::Succeeded { output, .. } => panic!("succeeded: {output:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_answer_fail_time_out_and_are_refused_unless_allowed() {
    let Some(emu) = Emulator::start(&["echo", "slow"]).await else { return };
    let exec = emu.executor("echo, slow");

    // Answered: the payload's fields and the engine's `llmo` block arrive.
    let a = attempt(json!({ "function": "echo", "payload": { "x": 1 } }), Some(Duration::from_secs(60)));
    let r = exec.execute(&a).await;
    let AttemptResult::Succeeded { output, .. } = &r else { panic!("{r:?}") };
    let answer: &Value = output;
    assert_eq!(answer["echo"]["x"], 1, "{answer}");
    assert_eq!(answer["echo"]["llmo"]["idempotency_key"], a.idempotency_key());
    assert_eq!(answer["echo"]["llmo"]["run_id"], "run-1");
    assert_eq!(answer["echo"]["llmo"]["attempt"], 1);

    // A function error: the function's type and message, retryable (the task's `retry` decides).
    let r = exec.execute(&attempt(json!({ "function": "echo", "payload": { "fail": "nope" } }), None)).await;
    let (error, retryable) = error_of(&r);
    assert_eq!(error, "function `echo` failed: Refused: nope");
    assert!(retryable);

    // Past the task's timeout: the attempt fails as timed out, retryable.
    let slow = attempt(json!({ "function": "slow", "payload": { "sleep_ms": 4000 } }), Some(Duration::from_secs(1)));
    let started = std::time::Instant::now();
    let r = llmo_runtime::step::attempt::run_with_timeout(&exec, &slow).await;
    let (error, retryable) = error_of(&r);
    assert!(error.contains("timed out after 1s"), "{error}");
    assert!(retryable);
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

    // Not on the operator's list, a malformed name, `payload.llmo`, over 6 MB: refused, not retried.
    for (with, says) in [
        (json!({ "function": "other" }), "not in LLMO_ALLOWED_FUNCTIONS"),
        (json!({ "function": "no such/name" }), "is not a Lambda function name"),
        (json!({ "function": "echo", "payload": { "llmo": 1 } }), "`payload.llmo` is the engine's"),
        (json!({ "function": "echo", "payload": { "big": "x".repeat(6 * 1024 * 1024 + 1) } }), "over Lambda's 6 MB"),
    ] {
        let r = exec.execute(&attempt(with, None)).await;
        let (error, retryable) = error_of(&r);
        assert!(error.contains(says), "{error}");
        assert!(!retryable, "{error}");
    }
    // An entry for one tenant admits that tenant's runs only, the others without a call.
    let scoped = emu.executor("echo@acme");
    let mut a = attempt(json!({ "function": "echo", "payload": { "n": 1 } }), None);
    a.tenant = Some("acme".into());
    assert!(matches!(scoped.execute(&a).await, AttemptResult::Succeeded { .. }));
    a.tenant = Some("initech".into());
    let r = scoped.execute(&a).await;
    assert!(error_of(&r).0.contains("not allowed for tenant `initech`"), "{r:?}");
    assert!(!error_of(&r).1, "not retried");
    let none = emu.executor("");
    let r = none.execute(&attempt(json!({ "function": "echo" }), None)).await;
    assert!(error_of(&r).0.contains("allows no Lambda functions"));

    // A task with a `callback`: the event carries its task token and the URL to answer at,
    // a token that verifies for this run, task and attempt. Without tokens, nothing is called.
    let waits = WORKFLOW.replace(
        "        payload: { n: 21, count_in: \"{{ inputs.dir }}\" }",
        "        payload: { n: 21, count_in: \"{{ inputs.dir }}\" }\n        callback: { timeout: 1h }",
    );
    let a = attempt_of(&waits, json!({ "function": "echo", "payload": { "x": 1 } }), None);
    let r = emu.executor("echo").execute(&a).await;
    let (error, retryable) = error_of(&r);
    assert!(error.contains("issues no task tokens"), "{error}");
    assert!(!retryable);
    let mut reg = Registry::new();
    reg.register("function", Arc::new(emu.executor("echo")));
    let callbacks = llmo_runtime::callbacks::Callbacks::new(&[9; 32], Some("https://api.example.com".into()));
    callbacks.install(&mut reg);
    let r = reg.get("function").unwrap().execute(&a).await;
    let AttemptResult::Succeeded { output, .. } = &r else { panic!("{r:?}") };
    let cb = &output["echo"]["llmo"]["callback"];
    let claims = callbacks.verify(cb["token"].as_str().unwrap()).unwrap();
    assert_eq!((claims.run.as_str(), claims.task.as_str(), claims.attempt), ("run-1", "score", 1));
    assert_eq!(cb["url"], format!("https://api.example.com/callbacks/{}", cb["token"].as_str().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_reads_a_function_answer_and_retries_a_function_error_as_its_retry_says() {
    let Some(emu) = Emulator::start(&["echo"]).await else { return };
    let mut reg = Registry::with_builtins(None);
    reg.register("function", Arc::new(emu.executor("echo")));
    let checked = Validator::default().validate(&SourceFile::new("f.yaml", WORKFLOW)).checked.expect("valid");
    let d = Driver {
        plan: Arc::new(Plan::new(checked)),
        store: Arc::new(MemoryStore::default()),
        executors: Arc::new(reg),
        clock: Arc::new(SystemClock::default()),
        blobs: None,
        options: Options::default(),
    };
    let dir = std::env::temp_dir().join(format!("llmo-fn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let inputs = [("dir".to_string(), json!(dir.to_str().unwrap()))].into_iter().collect();
    let end = d.start("fn-run", inputs, "f.yaml", WORKFLOW, &mut ()).await.unwrap();
    assert_eq!(end.state.status, RunStatus::Failed);
    let error = end.state.error.clone().unwrap_or_default();
    assert!(error.contains("Refused: not today"), "{error}");
    // `double` read the function's answer.
    assert_eq!(end.state.tasks[1].output.as_deref(), Some(&json!(42)));
    // One call for `score`, two for `refuse` (its retry), each named by its task's key.
    let mut calls: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    calls.sort();
    assert_eq!(calls.len(), 3, "{calls:?}");
    let keys: std::collections::BTreeSet<&str> = calls.iter().map(|c| c.split('-').next().unwrap()).collect();
    assert_eq!(keys.len(), 2, "one key per task, the same on both attempts of `refuse`: {calls:?}");
    let attempts: Vec<&str> = calls.iter().map(|c| c.split('-').nth(1).unwrap()).collect();
    assert!(attempts.contains(&"2"), "{calls:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
