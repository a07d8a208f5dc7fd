//! Agents through the API, on the local stack's step workers and on `llmo serve`'s
//! composition, against a scripted OpenAI-compatible server: each model turn and each tool
//! call is an attempt stepped from the queue (the turn's two calls at once), a tool that
//! answers 503 is retried as its own attempt, every turn is asked once, the log replays with
//! every event applied once, and the model sees every result.

use crate::support;

use serde_json::{Value, json};
use std::sync::Arc;
use support::*;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// The model: turn 1 looks two orders up at once, turn 2 answers with what it was told.
struct Model;

impl Respond for Model {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        let turn = 1 + messages.iter().filter(|m| m["role"] == "assistant").count();
        let call = |id: &str, order: &str| json!({"id": id, "type": "function", "function": {"name": "lookup_order", "arguments": json!({"order_id": order}).to_string()}});
        let message = if turn == 1 {
            json!({"role": "assistant", "content": null, "tool_calls": [call("c1", "A-1"), call("c2", "A-2")]})
        } else {
            let told: Vec<String> = messages
                .iter()
                .filter(|m| m["role"] == "tool")
                .map(|m| {
                    let r: Value = serde_json::from_str(m["content"].as_str().unwrap()).unwrap();
                    r["body"]["status"].as_str().unwrap_or("?").to_string()
                })
                .collect();
            json!({"role": "assistant", "content": format!("A-1 is {}, A-2 is {}.", told[0], told[1])})
        };
        ResponseTemplate::new(200).set_body_json(json!({
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 10}
        }))
    }
}

fn setup(base: String) -> Setup {
    Setup {
        executors: Arc::new(move || {
            let mut config = llmo_runtime::providers::Config::builtin();
            let openai = config.providers.get_mut("openai").unwrap();
            openai.base_url = format!("{base}/v1");
            openai.api_key = Some("sk-test".into());
            let setup = llmo_runtime::Setup {
                egress: llmo_runtime::egress::Egress::loopback(),
                ..llmo_runtime::Setup::new(config, false)
            };
            setup.registry()
        }),
        ..Setup::default()
    }
}

fn workflow(base: &str) -> String {
    format!(
        r#"apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: {{ name: orders-agent }}
spec:
  tasks:
    - id: agent
      type: agent
      retry: {{ max_attempts: 3, backoff: {{ initial: 10ms }} }}
      with:
        model: gpt-4o-mini
        prompt: "Where are orders A-1 and A-2?"
        tools:
          - name: lookup_order
            description: An order by id
            parameters: {{ type: object, properties: {{ order_id: {{ type: string }} }}, required: [order_id] }}
            run: {{ type: http, with: {{ url: "{base}/orders/{{{{ args.order_id }}}}" }} }}
  outputs:
    answer: "{{{{ tasks.agent.output.text }}}}"
"#
    )
}

async fn server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST")).and(path("/v1/chat/completions")).respond_with(Model).mount(&server).await;
    // A-2's first lookup fails (503): its call retries as its own attempt.
    Mock::given(method("GET"))
        .and(path("/orders/A-2"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path_regex("^/orders/A-[0-9]+$"))
        .respond_with(move |r: &Request| {
            let id = r.url.path().rsplit('/').next().unwrap().to_string();
            let status = if id == "A-1" { "shipped" } else { "delivered" };
            ResponseTemplate::new(200).set_body_json(json!({"id": id, "status": status}))
        })
        .mount(&server)
        .await;
    server
}

async fn agents(t: &Target, server: &MockServer) {
    let source = workflow(&server.uri());
    let (code, v) = call(&t.api, "POST", "/runs", Some(json!({"source": source}))).await;
    assert_eq!(code, 201, "{v}");
    let run = v["run_id"].as_str().unwrap().to_string();
    let end = wait_end(&t.api, &run, 120).await;
    assert_eq!(end["status"], "succeeded", "{end}");
    assert_eq!(end["outputs"]["answer"], "A-1 is shipped, A-2 is delivered.", "{end}");
    // Two turns and three call attempts (A-2's twice).
    assert_eq!(end["tasks"][0]["attempts"], 5, "{end}");
    // What the run page draws: each turn with its calls.
    let turns = end["tasks"][0]["turns"].as_array().expect("an agent's turns");
    assert_eq!(turns.len(), 2, "{end}");
    assert_eq!(turns[0]["calls"][1]["name"], "lookup_order");
    assert_eq!(turns[0]["calls"][1]["attempts"], 2);
    assert!(turns[0]["calls"][0]["result"].as_str().unwrap().contains("shipped"), "{end}");
    assert_eq!(turns[1]["text"], "A-1 is shipped, A-2 is delivered.");
    let got = server.received_requests().await.unwrap();
    let count = |p: &str| got.iter().filter(|r| r.url.path() == p).count();
    assert_eq!(count("/v1/chat/completions"), 2, "each turn asked once");
    assert_eq!((count("/orders/A-1"), count("/orders/A-2")), (1, 2));
    let keys: Vec<&str> = got
        .iter()
        .filter(|r| r.url.path().starts_with("/orders/A-2"))
        .map(|r| r.headers.get("idempotency-key").unwrap().to_str().unwrap())
        .collect();
    assert_eq!(keys[0], keys[1], "a call's retry keeps its idempotency key");
    let (initial, log) = t.initial_and_log(&run).await;
    let st = check_log(&plan(&source), &log, initial);
    let out = st.tasks[0].output.as_deref().unwrap();
    assert_eq!(out["tool_calls"][1]["attempts"], 2, "{out}");
    assert_eq!(out["usage"]["tokens"], 220, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_step_turns_and_calls_on_the_step_workers() {
    let server = server().await;
    let Some(t) = Target::stack(setup(server.uri())).await else { return };
    agents(&t, &server).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_step_turns_and_calls_on_serve() {
    let server = server().await;
    let t = Target::serve(setup(server.uri())).await;
    agents(&t, &server).await;
    t.stop().await;
}
