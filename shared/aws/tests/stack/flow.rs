//! Fleet-wide flow control on the local stack: eight step workers (each its own `Step`, as
//! separate Lambda containers are) share a provider's rate limit and its circuit through
//! DynamoDB (`llmo_aws::flow::DynamoFlow`).

use crate::support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llmo_runtime::providers::Config;
use serde_json::json;
use support::*;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// Answers chat completions (or fails with `status`) and records when each call arrived.
struct Recorder {
    at: Arc<Mutex<Vec<Instant>>>,
    status: u16,
}

impl Respond for Recorder {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        self.at.lock().unwrap().push(Instant::now());
        if self.status != 200 {
            return ResponseTemplate::new(self.status).set_body_json(json!({"error": {"message": "down"}}));
        }
        completion()
    }
}

/// A chat completion answering "ok".
fn completion() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "c", "object": "chat.completion", "model": "gpt-4o-mini",
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": "ok" }, "finish_reason": "stop" }],
        "usage": { "prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6 }
    }))
}

async fn provider(status: u16) -> (MockServer, Arc<Mutex<Vec<Instant>>>) {
    let server = MockServer::start().await;
    let at = Arc::new(Mutex::new(Vec::new()));
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(Recorder { at: at.clone(), status })
        .mount(&server)
        .await;
    (server, at)
}

/// Step workers whose `llm` tasks use `config` and share their limits through `aws`.
fn workers(aws: &llmo_aws::Aws, n: usize, config: &Config) -> Workers {
    let (aws2, config) = (aws.clone(), config.clone());
    Workers::start(aws, n, 10, move |mut s| {
        let setup = llmo_runtime::Setup {
            flow: Arc::new(llmo_aws::flow::DynamoFlow::new(aws2.clone())),
            // The fake providers the config file names listen on loopback.
            egress: llmo_runtime::egress::Egress::loopback(),
            ..llmo_runtime::Setup::new(config.clone(), false)
        };
        s.worker.executors = Arc::new(setup.registry());
        s
    })
}

const ONE_CALL: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: one-call }
spec:
  tasks:
    - { id: ask, type: llm, with: { provider: limited, model: gpt-4o-mini, prompt: "Say ok.", max_tokens: 5 } }
"#;

/// 75 runs of one model call each, on eight workers, under `rpm: 60`: an unlimited fleet
/// makes them all within a few seconds; here no 60-second window holds more than 60 calls,
/// and every run still succeeds (calls without room are sent back to the queue, delayed
/// until the capacity they reserved is due, not failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_workers_keep_a_shared_limit_of_60_requests_a_minute() {
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 30, 5).await;
    let (server, at) = provider(200).await;
    let config = Config::from_yaml(
        "limits.yaml",
        &format!(
            "providers:\n  limited: {{ kind: openai, base_url: '{}/v1', free: true }}\nlimits:\n  limited/gpt-4o-mini: {{ rpm: 60 }}\n",
            server.uri()
        ),
    )
    .unwrap();
    let api = api(&aws);
    let workers = workers(&aws, 8, &config);
    let mut runs = Vec::new();
    for _ in 0..75 {
        let (code, v) = call(&api, "POST", "/runs", Some(json!({"source": ONE_CALL}))).await;
        assert_eq!(code, 201, "{v}");
        runs.push(v["run_id"].as_str().unwrap().to_string());
    }
    for run in &runs {
        let got = wait_end(&api, run, 240).await;
        assert_eq!(got["status"], "succeeded", "{got}");
    }
    workers.stop().await;
    let mut at = at.lock().unwrap().clone();
    at.sort();
    assert_eq!(at.len(), 75, "one call per run");
    let most = (0..at.len()).map(|i| at[i..].iter().take_while(|t| **t < at[i] + Duration::from_secs(60)).count());
    let most = most.max().unwrap();
    assert!(most <= 60, "{most} calls in one 60-second window");
    let span = at[74] - at[0];
    assert!(span >= Duration::from_secs(15), "the calls were spread out: {span:?}");
}

const THREE_CALLS: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: three-calls }
spec:
  tasks:
    - { id: a, type: llm, on_failure: continue, with: { provider: limited, model: m, prompt: "1" } }
    - { id: b, type: llm, depends_on: [a], trigger: all_done, on_failure: continue, with: { provider: limited, model: m, prompt: "2" } }
    - { id: c, type: llm, depends_on: [b], trigger: all_done, on_failure: continue, with: { provider: limited, model: m, prompt: "3" } }
"#;

/// A provider that fails: the circuit one worker opens (after two failed calls) stops the
/// calls of seven other workers started afterwards, each its own process state: they read it
/// from the shared item, and their runs fail with the circuit's message without calling.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_circuit_opened_by_one_worker_stops_the_others() {
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 30, 5).await;
    let (server, at) = provider(500).await;
    let config = Config::from_yaml(
        "breaker.yaml",
        &format!(
            "providers:\n  limited: {{ kind: openai, base_url: '{}/v1', free: true }}\nbreaker_failures: 2\nbreaker_cooldown: 5m\ncall_retries: 0\n",
            server.uri()
        ),
    )
    .unwrap();
    let api = api(&aws);
    let one = workers(&aws, 1, &config);
    let (code, v) = call(&api, "POST", "/runs", Some(json!({"source": THREE_CALLS}))).await;
    assert_eq!(code, 201, "{v}");
    let got = wait_end(&api, v["run_id"].as_str().unwrap(), 60).await;
    one.stop().await;
    assert_eq!(at.lock().unwrap().len(), 2, "two failed calls opened the circuit; the third was not made");
    assert!(got["tasks"][2]["error"].as_str().unwrap().contains("circuit open"), "{got}");
    let others = workers(&aws, 7, &config);
    let mut runs = Vec::new();
    for _ in 0..10 {
        let (code, v) = call(&api, "POST", "/runs", Some(json!({"source": THREE_CALLS}))).await;
        assert_eq!(code, 201, "{v}");
        runs.push(v["run_id"].as_str().unwrap().to_string());
    }
    for run in &runs {
        let got = wait_end(&api, run, 60).await;
        let error = got["tasks"][0]["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains("opened by another worker"), "{got}");
    }
    others.stop().await;
    assert_eq!(at.lock().unwrap().len(), 2, "no other worker called the provider");
}

const KEYED_RUNS: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: keyed-runs }
spec:
  inputs: { customer: { type: string } }
  concurrency: { key: "{{ inputs.customer }}", limit: 1 }
  tasks:
    - { id: nap, type: wait, with: { sleep: { for: 2s } } }
"#;

/// `spec.concurrency: { key, limit: 1 }`: of three runs started at once on four workers, the
/// two of customer `acme` never overlap (the second stays pending until the first has ended),
/// while the run of another customer goes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_with_the_same_concurrency_key_never_overlap() {
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 30, 5).await;
    let api = api(&aws);
    let workers = Workers::start(&aws, 4, 10, |s| s);
    let mut runs = Vec::new();
    for customer in ["acme", "acme", "other"] {
        let body = json!({"source": KEYED_RUNS, "inputs": {"customer": customer}});
        let (code, v) = call(&api, "POST", "/runs", Some(body)).await;
        assert_eq!(code, 201, "{v}");
        runs.push(v["run_id"].as_str().unwrap().to_string());
    }
    let mut spans = Vec::new();
    for run in &runs {
        let got = wait_end(&api, run, 60).await;
        assert_eq!(got["status"], "succeeded", "{got}");
        spans.push((got["started_at"].as_u64().unwrap(), got["ended_at"].as_u64().unwrap()));
    }
    workers.stop().await;
    let (a, b, other) = (spans[0], spans[1], spans[2]);
    assert!(a.1 <= b.0 || b.1 <= a.0, "the two acme runs overlapped: {a:?} {b:?}");
    let first_end = a.1.min(b.1);
    assert!(other.0 < first_end, "another key is not held back: {other:?} vs {a:?} {b:?}");
}

const KEYED_TASKS: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: keyed-tasks }
spec:
  inputs: { customer: { type: string } }
  tasks:
    - id: ask
      type: llm
      concurrency: { key: "{{ inputs.customer }}", limit: 1 }
      with: { provider: limited, model: m, prompt: "for {{ inputs.customer }}" }
"#;

/// A task's `concurrency: { key, limit: 1 }` across runs and workers: the model calls of two
/// runs for `acme` never overlap (each takes a second), the call of another customer's run
/// does not wait for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attempts_with_the_same_concurrency_key_never_overlap() {
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 30, 5).await;
    let server = MockServer::start().await;
    let calls = Arc::new(Mutex::new(Vec::new()));
    struct Slow(Arc<Mutex<Vec<(Instant, String)>>>);
    impl Respond for Slow {
        fn respond(&self, req: &Request) -> ResponseTemplate {
            let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let prompt = body["messages"][0]["content"].as_str().unwrap_or_default().to_string();
            self.0.lock().unwrap().push((Instant::now(), prompt));
            completion().set_delay(Duration::from_millis(1000))
        }
    }
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(Slow(calls.clone()))
        .mount(&server)
        .await;
    let config = Config::from_yaml(
        "keys.yaml",
        &format!("providers:\n  limited: {{ kind: openai, base_url: '{}/v1', free: true }}\n", server.uri()),
    )
    .unwrap();
    let api = api(&aws);
    let workers = workers(&aws, 4, &config);
    let mut runs = Vec::new();
    for customer in ["acme", "acme", "other"] {
        let body = json!({"source": KEYED_TASKS, "inputs": {"customer": customer}});
        let (code, v) = call(&api, "POST", "/runs", Some(body)).await;
        assert_eq!(code, 201, "{v}");
        runs.push(v["run_id"].as_str().unwrap().to_string());
    }
    for run in &runs {
        let got = wait_end(&api, run, 60).await;
        assert_eq!(got["status"], "succeeded", "{got}");
    }
    workers.stop().await;
    let calls = calls.lock().unwrap().clone();
    let acme: Vec<Instant> = calls.iter().filter(|(_, p)| p.contains("acme")).map(|(t, _)| *t).collect();
    let other: Vec<Instant> = calls.iter().filter(|(_, p)| p.contains("other")).map(|(t, _)| *t).collect();
    assert_eq!((acme.len(), other.len()), (2, 1), "{calls:?}");
    let gap = if acme[1] > acme[0] { acme[1] - acme[0] } else { acme[0] - acme[1] };
    assert!(gap >= Duration::from_millis(950), "the acme calls overlapped: {gap:?} apart");
    let first = acme[0].min(acme[1]);
    assert!(other[0] < first + Duration::from_millis(900), "another key is not held back");
}

/// Priority on a concurrency key, on DynamoDB: a high run refused claims the next free place
/// (a normal run is refused it while the claim lasts, the high one takes it), a claim does not
/// hold back its own rank, and a lower claim does not replace a higher one.
#[tokio::test]
async fn a_refused_urgent_run_takes_the_next_free_place_of_its_key() {
    use llmo_runtime::flow::Flow;
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 30, 5).await;
    let f = llmo_aws::flow::DynamoFlow::new(aws.clone());
    let key = format!("prio-{}", std::process::id());
    assert_eq!(f.enter(&key, "r1", 2, 1).await, Ok(true));
    assert_eq!(f.enter(&key, "r2", 2, 0).await, Ok(true));
    assert_eq!(f.enter(&key, "urgent", 2, 2).await, Ok(false), "full");
    assert_eq!(f.enter(&key, "normal", 2, 1).await, Ok(false), "full; its claim does not replace the high one");
    f.leave(&key, "r2").await;
    assert_eq!(f.enter(&key, "normal", 2, 1).await, Ok(false), "yields to the waiting high run");
    assert_eq!(f.enter(&key, "low", 2, 0).await, Ok(false), "so does a low one");
    assert_eq!(f.enter(&key, "urgent", 2, 2).await, Ok(true));
    assert_eq!(f.enter(&key, "urgent", 2, 2).await, Ok(true), "re-entering is idempotent");
    f.leave(&key, "r1").await;
    assert_eq!(f.enter(&key, "urgent-2", 2, 2).await, Ok(true), "same rank: not held back");
    f.leave(&key, "urgent-2").await;
    assert_eq!(f.enter(&key, "normal", 2, 1).await, Ok(false), "still within the claim");
    tokio::time::sleep(llmo_runtime::flow::PRECEDENCE + Duration::from_millis(200)).await;
    assert_eq!(f.enter(&key, "normal", 2, 1).await, Ok(true), "the claim has expired");
    let mut holders = f.holders(&key).await;
    holders.sort();
    assert_eq!(holders, vec!["normal".to_string(), "urgent".to_string()]);
}
