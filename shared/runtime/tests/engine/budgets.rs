//! Budgets against a fake provider speaking OpenAI's wire format: the embedded runtime never
//! sends more calls than the budget covers, and what the run reports is what the provider
//! answered (every answered call counted: those that finish after their run failed, and paid
//! judge answers that are no grade).

use std::sync::Arc;
use std::time::Duration;

use llmo_core::engine::{Plan, RunState, RunStatus};
use llmo_core::source::SourceFile;
use llmo_core::validate::Validator;
use llmo_runtime::driver::{Driver, Options};
use llmo_runtime::providers::{Config, Kind, ProviderConfig};
use llmo_runtime::store::MemoryStore;
use serde_json::json;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// gpt-4o-mini's listed price: $0.15 in, $0.60 out per million tokens.
const PER_CALL: f64 = (20.0 * 0.15 + 100.0 * 0.60) / 1e6;

fn answer(text: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "c", "object": "chat.completion", "model": "gpt-4o-mini",
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": text }, "finish_reason": "stop" }],
        "usage": { "prompt_tokens": 20, "completion_tokens": 100, "total_tokens": 120 }
    }))
}

/// The built-in providers, OpenAI's at the fake `server`.
fn config(server: &MockServer) -> Config {
    let mut config = Config::builtin();
    config.providers.insert(
        "openai".into(),
        ProviderConfig {
            kind: Kind::Openai,
            base_url: format!("{}/v1", server.uri()),
            api_key: Some("k".into()),
            api_key_env: None,
            timeout: Duration::from_secs(10),
            free: false,
            set_by: None,
            region: None,
            models: Vec::new(),
        },
    );
    config.default_provider = "openai".into();
    config
}

fn driver(server: &MockServer, workflow: &str) -> Driver {
    let config = config(server);
    let text = format!("apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: {{ name: b }}\n{workflow}");
    let outcome = Validator::default().validate(&SourceFile::new("b.yaml", text));
    let mut plan = Plan::new(outcome.checked.unwrap_or_else(|| panic!("{:?}", outcome.report)));
    plan.set_prices(config.price_book(false));
    Driver {
        plan: Arc::new(plan),
        store: Arc::new(MemoryStore::default()),
        executors: Arc::new(llmo_runtime::standard_registry(config, false, Default::default())),
        clock: Arc::new(llmo_runtime::ports::SystemClock::default()),
        blobs: None,
        options: Options { poll: Duration::from_millis(20), ..Options::default() },
    }
}

/// `n` items, each a call of gpt-4o-mini with a prompt of 6-8 bytes and 200 tokens of answer,
/// under a budget of `usd`.
fn items(n: u32, usd: f64) -> String {
    format!(
        "spec:\n  budget: {{ max_cost_usd: {usd} }}\n  tasks:\n    - id: each\n      type: llm\n      for_each: \"range({n})\"\n      with: {{ model: gpt-4o-mini, prompt: \"item {{{{ item }}}}\", max_tokens: 200 }}\n"
    )
}

async fn run(d: &Driver) -> RunState {
    d.start("run-1", Default::default(), "b.yaml", "", &mut ()).await.expect("the run ends").state
}

async fn answered(server: &MockServer) -> u32 {
    server.received_requests().await.unwrap().len() as u32
}

fn reconciles(st: &RunState, calls: u32) {
    assert_eq!(st.tokens, 120 * u64::from(calls), "tokens counted for every answered call");
    assert!((st.cost_usd - PER_CALL * f64::from(calls)).abs() < 1e-12, "cost {} for {calls} calls", st.cost_usd);
    let tasks: f64 = st.tasks.iter().map(|t| t.cost_usd).sum();
    assert!((tasks - st.cost_usd).abs() < 1e-12);
}

/// 200 items, $0.001: each call's worst case (~32 tokens of prompt, 200 of answer) holds
/// $0.000125 while it runs, so 8 start at once; as each settles for $0.000063 more start, and
/// the run stops when the next worst case no longer fits. The provider never gets more calls
/// than that (before, all 200 were sent at once and 104 reached it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wide_for_each_never_sends_more_calls_than_the_budget_covers() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(answer("ok").set_delay(Duration::from_millis(50)))
        .mount(&server)
        .await;
    let d = driver(&server, &items(200, 0.001));
    let st = run(&d).await;
    let calls = answered(&server).await;
    assert_eq!(st.status, RunStatus::Failed);
    assert!(st.error.as_deref().unwrap().starts_with("budget exceeded"), "{:?}", st.error);
    reconciles(&st, calls);
    assert!(PER_CALL * f64::from(calls) <= 0.001, "{calls} calls spent more than the budget");
    // Worst case of one call: (10 bytes + 24) × $0.15/M + 200 × $0.60/M = $0.0001251.
    let worst = (34.0 * 0.15 + 200.0 * 0.60) / 1e6;
    assert!(f64::from(calls) * PER_CALL + worst > 0.001, "the budget was used up: {calls} calls, ${}", st.cost_usd);
    assert!(st.reserved.is_zero() && st.unsettled.is_zero(), "{:?} {:?}", st.reserved, st.unsettled);
}

/// A child run (`type: workflow`, run inline as `llmo run` does) spends only what its parent's
/// attempt holds for it: its own workflow has no budget, its calls stop at the `max_cost_usd`
/// passed down, it fails by the budget (not retried: another child would fail alike), and what
/// it spent is the parent's, reconciled with the provider's answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_spends_only_what_its_parent_passed_down() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).and(path("/v1/chat/completions")).respond_with(answer("ok")).mount(&server).await;
    let dir = std::env::temp_dir().join(format!("llmo-child-budget-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let child = "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: c }\nspec:\n  tasks:\n    - id: each\n      type: llm\n      for_each: \"range(50)\"\n      with: { model: gpt-4o-mini, prompt: \"item {{ item }}\", max_tokens: 200 }\n";
    std::fs::write(dir.join("child.yaml"), child).unwrap();
    let mut d = driver(
        &server,
        "spec:\n  budget: { max_cost_usd: 1.0 }\n  tasks:\n    - id: kid\n      type: workflow\n      retry: { max_attempts: 3 }\n      with: { workflow: child.yaml, max_cost_usd: 0.0005 }\n",
    );
    let registry = Arc::try_unwrap(std::mem::replace(&mut d.executors, Arc::new(Default::default()))).ok().unwrap();
    let config = config(&server);
    d.executors = llmo_runtime::children::embedded(
        registry,
        dir.clone(),
        d.store.clone(),
        d.clock.clone(),
        d.options.clone(),
        Arc::new(llmo_runtime::start::Starter::new(config, false)),
    );
    let st = run(&d).await;
    let calls = answered(&server).await;
    assert_eq!(st.status, RunStatus::Failed, "{:?}", st.error);
    assert!(st.error.as_deref().unwrap().contains("budget exceeded"), "{:?}", st.error);
    assert_eq!(st.tasks[0].attempts, 1, "a budget stop is not retried");
    assert!(calls > 0, "the child called the model");
    assert!(PER_CALL * f64::from(calls) <= 0.0005, "{calls} calls spent more than was passed down");
    let worst = (34.0 * 0.15 + 200.0 * 0.60) / 1e6;
    assert!(f64::from(calls) * PER_CALL + worst > 0.0005, "the child used what it was given: {calls} calls");
    reconciles(&st, calls);
    assert!(st.reserved.is_zero() && st.unsettled.is_zero(), "{:?} {:?}", st.reserved, st.unsettled);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One item fails the run at once while nine slow calls are in flight: the run fails, and the
/// nine answers that come after are still counted (the provider billed them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_when_the_run_fails_are_counted() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_string_contains("item 0\""))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {"message": "bad request"}})))
        .mount(&server)
        .await;
    Mock::given(method("POST")).respond_with(answer("ok").set_delay(Duration::from_millis(300))).mount(&server).await;
    let d = driver(&server, &items(10, 1.0));
    let st = run(&d).await;
    assert_eq!(st.status, RunStatus::Failed);
    assert_eq!(answered(&server).await, 10);
    reconciles(&st, 9);
    assert!(st.unsettled.is_zero(), "every call cut off answered and was settled");
}

/// A judge that does not answer with a grade is paid, retried and paid again: every answer
/// counts (20 paid judge calls were recorded as $0 before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_judge_answers_are_counted_through_retries() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).respond_with(answer("looks fine to me")).mount(&server).await;
    let d = driver(
        &server,
        r#"
spec:
  budget: { max_cost_usd: 1.0 }
  tasks:
    - id: grade
      type: evaluate
      retry: { max_attempts: 3, backoff: { initial: 10ms, max: 10ms } }
      with:
        input: "some text"
        checks: [{ kind: llm_judge, model: gpt-4o-mini, criteria: "is it fine?", threshold: 0.5 }]
"#,
    );
    let st = run(&d).await;
    assert_eq!(st.status, RunStatus::Failed);
    assert_eq!(answered(&server).await, 3, "{:?}", st.error);
    reconciles(&st, 3);
}
