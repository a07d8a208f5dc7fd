//! Chaos soak: the example workflows on four `step` worker processes against the local stack,
//! while a driver SIGKILLs a random worker every `SOAK_KILL_MS` and starts a new one.
//!
//! Model and HTTP calls go to one local fake server that counts them (the examples' URLs are
//! rewritten to it; the workers' egress policy allows loopback for it). First each example runs
//! once without faults: its outcome and the calls it makes are the reference. Lambda functions
//! (ticket-triage's `ticket-router`) are the test function under `cargo lambda watch`. Then
//! `SOAK_RUNS` runs (round-robin over the examples, every fifth one started twice with its
//! idempotency key, so its `Start` is delivered twice) run under the kills, whose unacknowledged
//! messages come back after the 3 s visibility timeout, delayed and often duplicated. Checks:
//! - every run ends in its example's fault-free status and outputs;
//! - its log replays, each task reaching a terminal state once and each attempt's result
//!   applied once;
//! - the fake counted at least the reference's calls, and at most one more per attempt a
//!   killed worker may have had in flight (its batch);
//! - nothing is left in the dead-letter queue.
//!
//! `make test` runs a short soak (`SOAK_RUNS` 16); `make soak` a long one (300). The figures are
//! printed as one JSON line (`soak: {...}`) for BENCHMARKS.md.

#[path = "../../../shared/aws/tests/support/mod.rs"]
mod support;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use llmo_core::engine::builtin::example_for_schema;
use serde_json::{Value, json};
use support::*;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// Answers chat completions like a model: the smallest JSON a requested schema accepts (a
/// grading schema gets 0.8), `{}` for JSON mode, text otherwise.
struct FakeModel;

impl Respond for FakeModel {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let text = match (body.pointer("/response_format/json_schema/schema"), body.pointer("/response_format/type")) {
            (Some(s), _) if s.pointer("/properties/score").is_some() => {
                json!({"score": 0.8, "reason": "fake"}).to_string()
            }
            (Some(s), _) => example_for_schema(s).to_string(),
            (None, Some(t)) if t == "json_object" => "{}".to_string(),
            _ => "A fine answer from the fake model.".to_string(),
        };
        ResponseTemplate::new(200).set_body_json(json!({
            "id": "x", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}
        }))
    }
}

/// The fake: models at `/chat/completions`, and each example's HTTP fixture at
/// `/<its host>/<its path>`.
async fn fake() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST")).and(path("/chat/completions")).respond_with(FakeModel).mount(&server).await;
    for f in std::fs::read_dir(root().join("workflows/fixtures")).unwrap() {
        let fixtures = llmo_runtime::fixtures::Fixtures::load(&f.unwrap().path()).unwrap();
        for r in fixtures.http {
            let url = r
                .url
                .as_deref()
                .expect("example fixtures name their URL")
                .strip_prefix("https://")
                .expect("fixtures are https");
            let re = format!("^/{}$", regex_escape(url).replace("\\*", "[^?]*"));
            let mut m = Mock::given(path_regex(re));
            if let Some(mth) = &r.method {
                m = m.and(method(mth.as_str()));
            }
            let answer = &r.answers[0];
            m.respond_with(ResponseTemplate::new(answer.status.unwrap_or(200)).set_body_json(answer.body.clone()))
                .mount(&server)
                .await;
        }
    }
    server
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '/' || c == '-' { c.to_string() } else { format!("\\{c}") })
        .collect()
}

/// An example with its URLs pointing at the fake (`https://host/p` → `http://127.0.0.1:P/host/p`)
/// and its secrets bound to the fake's host.
fn rewritten(source: &str, fake: &str) -> String {
    let secrets = regex::Regex::new(r"hosts: \[[^\]]*\]").unwrap();
    let s = source.replace("https://", &format!("{fake}/"));
    secrets.replace_all(&s, "hosts: [127.0.0.1]").into_owned()
}

const SOAK_GRANT: &str = r#"{"value": "soak-token", "tenants": ["*"], "hosts": ["127.0.0.1"]}"#;

fn worker(aws: &llmo_aws::Aws, fake: &str, functions: &str) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_step"))
        .arg("--local")
        .envs(aws.resource_env())
        .env_remove("LLMO_MOCK")
        // ticket-triage's `ticket-router`: the test function under `cargo lambda watch`.
        .env("LLMO_LAMBDA_ENDPOINT", functions)
        .env("LLMO_ALLOWED_FUNCTIONS", "ticket-router")
        .env("LLMO_VISIBILITY_SECS", "3")
        .env("OPENAI_BASE_URL", fake)
        .env("OLLAMA_BASE_URL", fake)
        .env("OPENAI_API_KEY", "test-key")
        .env("LLMO_EGRESS_ALLOW", "loopback")
        .env("LLMO_EGRESS_ALLOW_HTTP", "1")
        // Granted by the operator to every tenant, towards the fake (the examples' hosts point there).
        .env("LLMO_SECRET_TICKETS_TOKEN", SOAK_GRANT)
        .env("LLMO_SECRET_PUBLISH_TOKEN", SOAK_GRANT)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the step binary starts")
}

fn env_num(k: &str, default: u64) -> u64 {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Status and outputs, with the run's id (which `run.id` templates show) made neutral.
/// A run's status and outputs, without what differs between runs of the same inputs: the run's
/// id, and what the test function echoes of the call (`llmo`: the attempt, its idempotency key)
/// and its request id.
fn outcome(v: &Value, run_id: &str) -> (String, String) {
    let mut outputs = v["outputs"].clone();
    if let Some(routed) = outputs.get_mut("routed").and_then(Value::as_object_mut) {
        routed.remove("request_id");
        if let Some(echo) = routed.get_mut("echo").and_then(Value::as_object_mut) {
            echo.remove("llmo");
        }
    }
    (v["status"].as_str().unwrap_or_default().to_string(), outputs.to_string().replace(run_id, "RUN"))
}

async fn calls(server: &MockServer) -> usize {
    server.received_requests().await.map_or(0, |r| r.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_examples_survive_workers_killed_at_random() {
    let Some(aws) = aws().await else { return };
    let Some(cl) = llmo_lambda::local::cargo_lambda(&root()) else {
        assert!(std::env::var("LLMO_REQUIRE_AWS").is_err(), "LLMO_REQUIRE_AWS=1 but cargo-lambda is not installed");
        return;
    };
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), std::path::PathBuf::from);
    let bin = target.join("debug/examples/test_function");
    let local = llmo_lambda::local::LocalFunctions::start(&cl, &bin, &["ticket-router"])
        .await
        .expect("the test function starts (cargo build -p llmo-lambda --examples)");
    let functions = local.endpoint();
    let aws = stack(&aws, 3, 10).await;
    let api = api(&aws);
    let server = fake().await;
    let fake_url = server.uri();
    let runs = env_num("SOAK_RUNS", 16) as usize;
    let kill_every = Duration::from_millis(env_num("SOAK_KILL_MS", 1500));

    // The examples, registered; each run once without faults: the reference.
    let mut examples = Vec::new();
    let mut dir: Vec<_> = std::fs::read_dir(root().join("workflows")).unwrap().map(|e| e.unwrap().path()).collect();
    dir.sort();
    let mut workers: Vec<_> = (0..4).map(|_| worker(&aws, &fake_url, &functions)).collect();
    for p in dir
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.to_string_lossy().ends_with(".test.yaml"))
    {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let source = rewritten(&std::fs::read_to_string(p).unwrap(), &fake_url);
        let (code, v) = call(&api, "POST", "/workflows", Some(json!({"source": source}))).await;
        assert_eq!(code, 201, "{name}: {v}");
        let wf = v["workflow"].as_str().unwrap().to_string();
        let inputs = example_inputs(&name);
        let before = calls(&server).await;
        let (code, v) = call(&api, "POST", "/runs", Some(json!({"workflow": wf, "inputs": inputs}))).await;
        assert_eq!(code, 201, "{name}: {v}");
        let run_id = v["run_id"].as_str().unwrap().to_string();
        let got = wait_end(&api, &run_id, 120).await;
        let want = outcome(&got, &run_id);
        assert_eq!(want.0, "succeeded", "{name}: the reference run succeeds: {got}");
        let n = calls(&server).await - before;
        assert!(n > 0, "{name} calls the fake");
        examples.push((name, wf, source, inputs, want, n));
    }

    // The chaos: a killer, and the runs.
    let kills = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let (kills, stop, aws, fake_url, functions) =
            (kills.clone(), stop.clone(), aws.clone(), fake_url.clone(), functions.clone());
        tokio::spawn(async move {
            let mut seed = 0x9E37_79B9_7F4A_7C15u64;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(kill_every).await;
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed % workers.len() as u64) as usize;
                let _ = workers[i].start_kill();
                let _ = workers[i].wait().await;
                workers[i] = worker(&aws, &fake_url, &functions);
                kills.fetch_add(1, Ordering::Relaxed);
            }
            workers
        })
    };
    let started_at = Instant::now();
    let before = calls(&server).await;
    let mut started = Vec::new();
    let mut duplicate_starts = 0;
    for i in 0..runs {
        let (name, wf, _, inputs, _, _) = &examples[i % examples.len()];
        let body = json!({"workflow": wf, "inputs": inputs, "idempotency_key": format!("soak-{i}")});
        let (code, v) = call(&api, "POST", "/runs", Some(body.clone())).await;
        assert_eq!(code, 201, "{name}: {v}");
        if i % 5 == 0 {
            let (code, _) = call(&api, "POST", "/runs", Some(body)).await;
            assert_eq!(code, 200, "the same key: the same run, its Start sent again");
            duplicate_starts += 1;
        }
        started.push((i % examples.len(), v["run_id"].as_str().unwrap().to_string()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ended = 0;
    let mut expected_calls = 0;
    for (k, run_id) in &started {
        let (name, _, source, _, want, n) = &examples[*k];
        let got = wait_end(&api, run_id, 300).await;
        assert_eq!(&outcome(&got, run_id), want, "{name} {run_id}: the fault-free outcome");
        let (initial, log) = initial_and_log(&aws, run_id).await;
        check_log(&plan(source), &log, initial);
        expected_calls += n;
        ended += 1;
    }
    let elapsed = started_at.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut workers = killer.await.unwrap();
    for w in &mut workers {
        let _ = w.start_kill();
    }
    let made = calls(&server).await - before;
    let kills = kills.load(Ordering::Relaxed);
    // A killed worker may have had a batch (10 messages) of attempts in flight, each of which
    // may have made its call again; never fewer calls than a fault-free run makes.
    assert!(made >= expected_calls, "{made} calls, fewer than the {expected_calls} the runs need");
    assert!(made <= expected_calls + kills * 10, "{made} calls for {expected_calls} needed and {kills} kills");
    let dead = llmo_aws::sqs::SqsQueue::dead_letters(aws.clone());
    let left = llmo_runtime::queue::Queue::receive(&dead, 10).await.unwrap();
    assert!(
        left.is_empty(),
        "nothing is dead-lettered: {:?}",
        left.iter().map(|d| d.message.run_id()).collect::<Vec<_>>()
    );
    let figures = json!({
        "runs": ended, "workers": 4, "kills": kills, "duplicate_starts": duplicate_starts,
        "stuck_runs": runs - ended, "model_and_http_calls": made, "calls_needed": expected_calls,
        "extra_calls": made - expected_calls, "dead_letters": 0, "seconds": elapsed.as_secs_f64(),
    });
    println!("soak: {figures}");
}
