//! Durable agents end to end: `llmo run` against a scripted OpenAI-compatible server and a
//! scripted Anthropic server (their real wire formats: `tool_calls`/`role: tool`,
//! `tool_use`/`tool_result`), with HTTP tools on a local server. The process is killed (`kill
//! -9`) while a tool call is in flight; `llmo resume` finishes the run, and no model turn or
//! tool call that had finished is made again.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::routing::{get, post};
use common::{command, text};
use serde_json::{Value, json};

/// What the scripted servers saw: model turns by number, tool requests with their
/// idempotency keys.
#[derive(Default)]
struct Seen {
    turns: HashMap<usize, usize>,
    tools: Vec<(String, String)>,
}

type Shared = Arc<Mutex<Seen>>;

/// A JSON response (axum is built here without its `json` feature).
type Json = ([(axum::http::HeaderName, &'static str); 1], String);

fn json_of(v: Value) -> Json {
    ([(CONTENT_TYPE, "application/json")], v.to_string())
}

/// The model's script, by turn: look the order up, then run the slow check, then answer with
/// what the tools said (proving their results reached it).
fn script(turn: usize, results: &[String]) -> Result<(&'static str, Value), String> {
    match turn {
        1 => Ok(("lookup_order", json!({"order_id": "A-17"}))),
        2 => Ok(("slow_check", json!({"order_id": "A-17"}))),
        _ => Err(format!("Answer: {}", results.join(" | "))),
    }
}

async fn openai(State(seen): State<Shared>, body: String) -> Json {
    let body: Value = serde_json::from_str(&body).unwrap();
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let turn = 1 + messages.iter().filter(|m| m["role"] == "assistant").count();
    let results: Vec<String> = messages
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap_or("").to_string())
        .collect();
    *seen.lock().unwrap().turns.entry(turn).or_default() += 1;
    assert!(body["tools"].as_array().is_some_and(|t| t.len() == 2), "the tools are sent: {body}");
    let message = match script(turn, &results) {
        Ok((name, args)) => json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": format!("call_{turn}"), "type": "function", "function": {"name": name, "arguments": args.to_string()}}
        ]}),
        Err(text) => json!({"role": "assistant", "content": text}),
    };
    json_of(json!({
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 10}
    }))
}

async fn anthropic(State(seen): State<Shared>, body: String) -> Json {
    let body: Value = serde_json::from_str(&body).unwrap();
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let turn = 1 + messages.iter().filter(|m| m["role"] == "assistant").count();
    let results: Vec<String> = messages
        .iter()
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .filter(|b| b["type"] == "tool_result")
        .map(|b| match &b["content"] {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        })
        .collect();
    *seen.lock().unwrap().turns.entry(turn).or_default() += 1;
    assert!(body["tools"].as_array().is_some_and(|t| t.len() == 2), "the tools are sent: {body}");
    let content = match script(turn, &results) {
        Ok((name, args)) => json!([{"type": "tool_use", "id": format!("toolu_{turn}"), "name": name, "input": args}]),
        Err(text) => json!([{"type": "text", "text": text}]),
    };
    json_of(json!({
        "model": "claude-haiku",
        "content": content,
        "stop_reason": if turn < 3 { "tool_use" } else { "end_turn" },
        "usage": {"input_tokens": 100, "output_tokens": 10}
    }))
}

fn key_of(h: &HeaderMap) -> String {
    h.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

async fn order(State(seen): State<Shared>, h: HeaderMap, Path(id): Path<String>) -> Json {
    seen.lock().unwrap().tools.push((format!("order/{id}"), key_of(&h)));
    json_of(json!({"id": id, "status": "delivered"}))
}

/// The first check hangs (the process is killed meanwhile); later ones answer.
async fn slow(State(seen): State<Shared>, h: HeaderMap, Path(id): Path<String>) -> Json {
    let first = {
        let mut s = seen.lock().unwrap();
        s.tools.push((format!("slow/{id}"), key_of(&h)));
        s.tools.iter().filter(|(p, _)| p.starts_with("slow/")).count() == 1
    };
    if first {
        tokio::time::sleep(Duration::from_secs(120)).await;
    }
    json_of(json!({"check": "ok"}))
}

const WORKFLOW: &str = r#"apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: durable-agent }
spec:
  inputs: { question: { type: string } }
  tasks:
    - id: agent
      type: agent
      with:
        provider: PROVIDER
        model: MODEL
        prompt: "{{ inputs.question }}"
        max_turns: 5
        tools:
          - name: lookup_order
            description: An order by id
            parameters: { type: object, properties: { order_id: { type: string } }, required: [order_id] }
            run: { type: http, with: { url: "BASE/orders/{{ args.order_id }}" } }
          - name: slow_check
            description: A slow check of an order
            parameters: { type: object, properties: { order_id: { type: string } }, required: [order_id] }
            run: { type: http, with: { url: "BASE/slow/{{ args.order_id }}" } }
  outputs:
    answer: "{{ tasks.agent.output.text }}"
"#;

fn killed_mid_loop_resumes_without_repeating_steps(provider: &str, model: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen: Shared = Arc::default();
    let addr = rt.block_on(async {
        let app = Router::new()
            .route("/v1/chat/completions", post(openai))
            .route("/v1/messages", post(anthropic))
            .route("/orders/{id}", get(order))
            .route("/slow/{id}", get(slow))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    });
    let base = format!("http://{addr}");
    let dir = std::env::temp_dir().join(format!("llmo-agent-{provider}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let wf = dir.join("agent.yaml");
    std::fs::write(&wf, WORKFLOW.replace("PROVIDER", provider).replace("MODEL", model).replace("BASE", &base)).unwrap();
    let db = dir.join("runs.db");
    let env = |c: &mut std::process::Command| {
        c.env("OPENAI_BASE_URL", format!("{base}/v1"))
            .env("OPENAI_API_KEY", "sk-test")
            .env("ANTHROPIC_BASE_URL", &base)
            .env("ANTHROPIC_API_KEY", "sk-ant-test")
            .env("LLMO_EGRESS_ALLOW", "loopback")
            .env("LLMO_EGRESS_ALLOW_HTTP", "1");
    };
    let mut c = command();
    c.args(["run", "--state", db.to_str().unwrap(), wf.to_str().unwrap(), "-i", "question=Where is A-17?"]);
    env(&mut c);
    let mut child = c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut err, &mut first).unwrap();
    let run_id = first.split(':').next().unwrap().trim().to_string();
    assert!(run_id.starts_with("run-"), "{first}");
    // Killed while the slow check is in flight: two turns and a call are done by then.
    let until = Instant::now() + Duration::from_secs(60);
    while !seen.lock().unwrap().tools.iter().any(|(p, _)| p.starts_with("slow/")) {
        assert!(Instant::now() < until, "the slow check was never called");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let mut c = command();
    c.args(["resume", &run_id, "--state", db.to_str().unwrap()]);
    env(&mut c);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut c = command();
    c.args(["status", &run_id, "--state", db.to_str().unwrap()]);
    let status: Value = serde_json::from_slice(&c.output().unwrap().stdout).unwrap();
    assert_eq!(status["status"], "succeeded", "{status}");
    let output = &status["tasks"]["agent"]["output"];
    let answer = output["text"].as_str().unwrap();
    assert!(
        answer.starts_with("Answer: ")
            && answer.contains(r#""body":{"id":"A-17","status":"delivered"}"#)
            && answer.contains(r#""body":{"check":"ok"}"#),
        "the model saw both results: {output}"
    );
    assert_eq!(output["turns"], 3);
    // `llmo status` lists the turns with their calls.
    let turns = status["tasks"]["agent"]["turns"].as_array().expect("the agent's turns");
    assert_eq!(turns.len(), 3, "{status}");
    assert_eq!(turns[1]["calls"][0]["name"], "slow_check");
    assert_eq!(turns[1]["calls"][0]["status"], "succeeded");
    let seen = seen.lock().unwrap();
    // Each turn was asked once: none that finished was asked again after the kill.
    assert_eq!(seen.turns, HashMap::from([(1, 1), (2, 1), (3, 1)]), "{provider}");
    // The lookup ran once; the check that was in flight ran again, under the same key.
    let paths: Vec<&str> = seen.tools.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, ["order/A-17", "slow/A-17", "slow/A-17"]);
    let keys: Vec<&str> = seen.tools.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(keys[1], keys[2], "a call keeps its idempotency key across attempts");
    assert_ne!(keys[0], keys[1], "each call has its own");
    assert_eq!(keys[0].len(), 32);
    // The call in flight ran again as the same attempt (delivery is at least once).
    assert_eq!(output["tool_calls"][1]["status"], "succeeded", "{output}");
    std::fs::remove_dir_all(&dir).ok();
    drop(rt);
}

#[test]
fn an_openai_agent_killed_mid_loop_resumes_without_repeating_a_step() {
    killed_mid_loop_resumes_without_repeating_steps("openai", "gpt-4o-mini");
}

#[test]
fn an_anthropic_agent_killed_mid_loop_resumes_without_repeating_a_step() {
    killed_mid_loop_resumes_without_repeating_steps("anthropic", "claude-haiku");
}
