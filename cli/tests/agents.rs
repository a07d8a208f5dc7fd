//! Durable agents end to end: `llmo run` against a scripted OpenAI-compatible server, a
//! scripted Anthropic server and a scripted Bedrock Converse server reached by the AWS SDK
//! (their real wire formats: `tool_calls`/`role: tool`, `tool_use`/`tool_result`,
//! `toolUse`/`toolResult`), with HTTP tools on a local server. The process is killed (`kill
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
/// `second` is the tool asked for at turn 2 (`slow_check`, or `refund` when the workflow has it).
fn script(turn: usize, results: &[String], second: &'static str) -> Result<(&'static str, Value), String> {
    match turn {
        1 => Ok(("lookup_order", json!({"order_id": "A-17"}))),
        2 if second == "refund" => Ok(("refund", json!({"order_id": "A-17", "amount_usd": 80}))),
        2 => Ok((second, json!({"order_id": "A-17"}))),
        _ => Err(format!("Answer: {}", results.join(" | "))),
    }
}

/// The second tool of the request's `tools` (each format names it in its own place).
fn second_tool(body: &Value) -> &'static str {
    let refund = body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| t["function"]["name"] == "refund" || t["name"] == "refund");
    let has = |name: &str| {
        body["tools"].as_array().into_iter().flatten().any(|t| t["function"]["name"] == name || t["name"] == name)
    };
    if refund {
        "refund"
    } else if has("transcribe") {
        "transcribe"
    } else {
        "slow_check"
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
    let message = match script(turn, &results, second_tool(&body)) {
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
    let content = match script(turn, &results, second_tool(&body)) {
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

/// Amazon Bedrock's Converse API, as the AWS SDK calls it (`base_url` overrides its endpoint).
async fn converse(State(seen): State<Shared>, Path(model): Path<String>, body: String) -> Json {
    assert!(model.starts_with("anthropic.claude"), "{model}");
    let body: Value = serde_json::from_str(&body).unwrap();
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let turn = 1 + messages.iter().filter(|m| m["role"] == "assistant").count();
    let results: Vec<String> = messages
        .iter()
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .filter_map(|b| b["toolResult"]["content"][0]["text"].as_str().map(str::to_string))
        .collect();
    *seen.lock().unwrap().turns.entry(turn).or_default() += 1;
    let tools = body["toolConfig"]["tools"].as_array().cloned().unwrap_or_default();
    assert_eq!(tools.len(), 2, "the tools are sent: {body}");
    let second = if tools.iter().any(|t| t["toolSpec"]["name"] == "refund") { "refund" } else { "slow_check" };
    let content = match script(turn, &results, second) {
        Ok((name, args)) => json!([{"toolUse": {"toolUseId": format!("tooluse_{turn}"), "name": name, "input": args}}]),
        Err(text) => json!([{"text": text}]),
    };
    json_of(json!({
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": if turn < 3 { "tool_use" } else { "end_turn" },
        "usage": {"inputTokens": 100, "outputTokens": 10, "totalTokens": 110},
        "metrics": {"latencyMs": 5}
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

/// The refund: the approver's name and note reach it (its `with` reads `approval`).
async fn refund(State(seen): State<Shared>, h: HeaderMap, body: String) -> Json {
    seen.lock().unwrap().tools.push((format!("refund {body}"), key_of(&h)));
    json_of(json!({"refund": "R-1"}))
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

/// A long job: it takes the task token and answers at once (202); the job's result comes later
/// through the token.
async fn job(State(seen): State<Shared>, h: HeaderMap, body: String) -> Json {
    let token = h.get("llmo-callback-token").and_then(|v| v.to_str().ok()).unwrap_or_default();
    seen.lock().unwrap().tools.push((format!("job {body} {token}"), key_of(&h)));
    json_of(json!({"job": "J-1", "status": "queued"}))
}

/// The scripted servers, on a loopback port: their address.
fn serve(rt: &tokio::runtime::Runtime, seen: &Shared) -> std::net::SocketAddr {
    let seen = seen.clone();
    rt.block_on(async {
        let app = Router::new()
            .route("/v1/chat/completions", post(openai))
            .route("/v1/messages", post(anthropic))
            .route("/model/{model}/converse", post(converse))
            .route("/orders/{id}", get(order))
            .route("/slow/{id}", get(slow))
            .route("/refunds", post(refund))
            .route("/jobs", post(job))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    })
}

/// The environment that points `llmo` at the scripted servers.
fn env_for(base: &str) -> impl Fn(&mut std::process::Command) + '_ {
    move |c: &mut std::process::Command| {
        c.env("OPENAI_BASE_URL", format!("{base}/v1"))
            .env("OPENAI_API_KEY", "sk-test")
            .env("ANTHROPIC_BASE_URL", base)
            .env("ANTHROPIC_API_KEY", "sk-ant-test")
            .env("LLMO_BEDROCK_ENDPOINT", base)
            .env("LLMO_BEDROCK_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
            .env("AWS_SECRET_ACCESS_KEY", "test-secret")
            .env("LLMO_EGRESS_ALLOW", "loopback")
            .env("LLMO_EGRESS_ALLOW_HTTP", "1");
    }
}

/// `llmo run --state DB WF` in the background: the process and its run's id.
fn start(
    db: &std::path::Path,
    wf: &std::path::Path,
    env: &dyn Fn(&mut std::process::Command),
) -> (std::process::Child, String) {
    let mut c = command();
    c.args(["run", "--state", db.to_str().unwrap(), wf.to_str().unwrap(), "-i", "question=Where is A-17?"]);
    env(&mut c);
    let mut child = c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut err, &mut first).unwrap();
    let run_id = first.split(':').next().unwrap().trim().to_string();
    assert!(run_id.starts_with("run-"), "{first}");
    // Its progress goes on (a closed stderr would fail its writes).
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    (child, run_id)
}

fn killed_mid_loop_resumes_without_repeating_steps(provider: &str, model: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen: Shared = Arc::default();
    let addr = serve(&rt, &seen);
    let base = format!("http://{addr}");
    let dir = std::env::temp_dir().join(format!("llmo-agent-{provider}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let wf = dir.join("agent.yaml");
    std::fs::write(&wf, WORKFLOW.replace("PROVIDER", provider).replace("MODEL", model).replace("BASE", &base)).unwrap();
    let db = dir.join("runs.db");
    let env = env_for(&base);
    let (mut child, run_id) = start(&db, &wf, &env);
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

/// The workflow with `tool` (YAML) in place of `slow_check`, written to a new directory
/// `name`: the directory and the workflow's path.
fn with_tool(name: &str, tool: &str, base: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let wf = dir.join("agent.yaml");
    let workflow = WORKFLOW.split("          - name: slow_check").next().unwrap().to_string()
        + tool
        + "  outputs:\n    answer: \"{{ tasks.agent.output.text }}\"\n";
    std::fs::write(&wf, workflow.replace("PROVIDER", "openai").replace("MODEL", "gpt-4o-mini").replace("BASE", base))
        .unwrap();
    (dir, wf)
}

/// `llmo status RUN --state STATE` as JSON.
fn status_of(run_id: &str, state: &str) -> Value {
    serde_json::from_slice(&command().args(["status", run_id, "--state", state]).output().unwrap().stdout).unwrap()
}

/// The first task `llmo waiting` lists, once one waits (within 60 s; else the run's status).
fn first_waiting(run_id: &str, state: &str) -> Value {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let out = command().args(["waiting", "--state", state, "--json"]).output().unwrap();
        let rows: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if let Some(r) = rows.as_array().and_then(|r| r.first()) {
            return r.clone();
        }
        assert!(Instant::now() < until, "nothing waited: {}", status_of(run_id, state));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A refund tool that a person approves: the agent's run waits for the answer holding nothing
/// (the process running it is killed meanwhile); another process approves; `llmo resume`
/// runs the approved call, once, with the approver's note, and the model's next turn.
#[test]
fn an_approval_given_by_another_process_runs_the_call_once() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen: Shared = Arc::default();
    let base = format!("http://{}", serve(&rt, &seen));
    let gated = r#"          - name: refund
            description: Refund an order
            parameters: { type: object, properties: { order_id: { type: string }, amount_usd: { type: number } }, required: [order_id, amount_usd] }
            approval:
              prompt: "Refund {{ args.amount_usd }} USD on {{ args.order_id }}?"
              fields: { note: { type: string } }
            run:
              type: http
              with:
                method: POST
                url: "BASE/refunds"
                body: { order: "{{ args.order_id }}", by: "{{ approval.by }}", note: "{{ approval.fields.note }}" }
"#;
    let (dir, wf) = with_tool("llmo-agent-approval", gated, &base);
    let db = dir.join("runs.db");
    let state = db.to_str().unwrap();
    let env = env_for(&base);
    let (mut child, run_id) = start(&db, &wf, &env);
    // The refund waits for its approval: listed with its prompt and the call.
    let listed = first_waiting(&run_id, state);
    assert_eq!(listed["task"], "agent", "{listed}");
    assert_eq!(listed["prompt"], "Refund 80 USD on A-17?", "{listed}");
    assert_eq!(listed["call"]["name"], "refund", "{listed}");
    let status = status_of(&run_id, state);
    assert_eq!(status["tasks"]["agent"]["turns"][1]["calls"][0]["status"], "awaiting_approval", "{status}");
    // The process running it goes; nothing is lost, as nothing was held.
    child.kill().unwrap();
    child.wait().unwrap();
    // A field the form lacks is refused (exit 2); the approval is taken (by another process).
    let bad = command().args(["approve", &run_id, "agent", "--state", state, "-f", "amount=5"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
    let call = listed["call"]["id"].as_str().unwrap();
    let ok = command()
        .args(["approve", &run_id, "agent", "--state", state, "--call", call, "-f", "note=within policy"])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let again = command().args(["reject", &run_id, "agent", "--state", state]).output().unwrap();
    assert_eq!(again.status.code(), Some(3), "answered once: {}", text(&again.stderr));
    let mut c = command();
    c.args(["resume", &run_id, "--state", state]);
    env(&mut c);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status = status_of(&run_id, state);
    assert_eq!(status["status"], "succeeded", "{status}");
    let output = &status["tasks"]["agent"]["output"];
    assert!(output["text"].as_str().unwrap().contains(r#"{"refund":"R-1"}"#), "{output}");
    assert_eq!(output["tool_calls"][1]["approval"]["fields"]["note"], "within policy", "{output}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.turns, HashMap::from([(1, 1), (2, 1), (3, 1)]));
    let refunds: Vec<&String> = seen.tools.iter().map(|(p, _)| p).filter(|p| p.starts_with("refund")).collect();
    assert_eq!(refunds.len(), 1, "the approved call ran once: {refunds:?}");
    assert!(refunds[0].contains(r#""note":"within policy""#) && refunds[0].contains(r#""by":"local:"#), "{refunds:?}");
    std::fs::remove_dir_all(&dir).ok();
    drop(rt);
}

/// Amazon Bedrock through the AWS SDK, its endpoint overridden to the scripted Converse server.
#[test]
fn a_bedrock_agent_killed_mid_loop_resumes_without_repeating_a_step() {
    killed_mid_loop_resumes_without_repeating_steps("bedrock", "anthropic.claude-3-5-haiku-20241022-v1:0");
}

/// A tool whose call waits for a callback: the job server gets the task token and answers at
/// once; the agent waits for the token's answer holding nothing (the process running it is
/// killed meanwhile); another process sends a heartbeat, then the job's result; `llmo resume`
/// hands the result to the model's next turn. The job was started once, and the token answers
/// once.
#[test]
fn a_tool_waiting_for_a_callback_is_answered_by_another_process() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen: Shared = Arc::default();
    let base = format!("http://{}", serve(&rt, &seen));
    let waiting = r#"          - name: transcribe
            description: Transcribe the order's call recording (a long job)
            parameters: { type: object, properties: { order_id: { type: string } }, required: [order_id] }
            run:
              type: http
              with:
                method: POST
                url: "BASE/jobs"
                body: { order: "{{ args.order_id }}" }
                callback: { timeout: 1h, heartbeat: 10m }
"#;
    let (dir, wf) = with_tool("llmo-agent-callback", waiting, &base);
    let db = dir.join("runs.db");
    let state = db.to_str().unwrap();
    let env = env_for(&base);
    let (mut child, run_id) = start(&db, &wf, &env);
    // The job was started with a token, and the call waits for it: listed as a callback.
    let listed = first_waiting(&run_id, state);
    assert_eq!((&listed["task"], &listed["kind"]), (&json!("agent"), &json!("callback")), "{listed}");
    assert_eq!(listed["call"]["name"], "transcribe", "{listed}");
    assert!(listed.get("token").is_none(), "a token is never listed");
    let status = status_of(&run_id, state);
    assert_eq!(status["tasks"]["agent"]["turns"][1]["calls"][0]["status"], "awaiting_callback", "{status}");
    child.kill().unwrap();
    child.wait().unwrap();
    let token = {
        let s = seen.lock().unwrap();
        let jobs: Vec<&String> = s.tools.iter().map(|(p, _)| p).filter(|p| p.starts_with("job ")).collect();
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        assert!(jobs[0].contains(r#"{"order":"A-17"}"#), "{jobs:?}");
        jobs[0].rsplit(' ').next().unwrap().to_string()
    };
    assert!(token.len() > 100, "the job got the token: {token}");
    let callback = |args: &[&str]| {
        let mut all = vec!["callback"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--state", state]);
        command().args(&all).env_remove("LLMO_LINK_SECRET").output().unwrap()
    };
    let out = callback(&[&token, "--heartbeat"]);
    assert!(out.status.success(), "heartbeat: {}", text(&out.stderr));
    let out = callback(&[&token, "--output", r#"{"transcript": "it never arrived"}"#]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let again = callback(&[&token, "--output", r#"{"transcript": "other"}"#]);
    assert_eq!(again.status.code(), Some(3), "answered once: {}", text(&again.stderr));
    let mut c = command();
    c.args(["resume", &run_id, "--state", state]);
    env(&mut c);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status = status_of(&run_id, state);
    assert_eq!(status["status"], "succeeded", "{status}");
    let output = &status["tasks"]["agent"]["output"];
    assert!(output["text"].as_str().unwrap().contains(r#"{"transcript":"it never arrived"}"#), "{output}");
    assert_eq!(output["tool_calls"][1]["status"], "succeeded", "{output}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.turns, HashMap::from([(1, 1), (2, 1), (3, 1)]));
    assert_eq!(seen.tools.iter().filter(|(p, _)| p.starts_with("job ")).count(), 1, "the job started once");
    std::fs::remove_dir_all(&dir).ok();
    drop(rt);
}
