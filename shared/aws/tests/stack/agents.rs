//! Agents through the API, on the local stack's step workers and on `llmo serve`'s
//! composition, against a scripted OpenAI-compatible server: each model turn and each tool
//! call is an attempt stepped from the queue (the turn's two calls at once), a tool that
//! answers 503 is retried as its own attempt, every turn is asked once, the log replays with
//! every event applied once, and the model sees every result. A tool that needs approval
//! waits holding nothing, is listed in `GET /waiting` with its call, and is answered once per
//! call through the API (racing answers: one wins) or its single-use link. A tool whose call
//! waits for a callback sends its task token, waits holding nothing, and is answered once per
//! token through `POST /callbacks/{token}` (a failure retries the call with a new token).

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

/// The model of the approval and callback tests: turn 1 calls its tool twice at once (ids
/// `{prefix}1` and `{prefix}2`, orders A-1 and A-2), turn 2 repeats what each call's result or
/// error said.
struct TwoCalls {
    tool: &'static str,
    prefix: &'static str,
}

impl Respond for TwoCalls {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        let turn = 1 + messages.iter().filter(|m| m["role"] == "assistant").count();
        let call = |n: u32| json!({"id": format!("{}{n}", self.prefix), "type": "function", "function": {"name": self.tool, "arguments": json!({"order_id": format!("A-{n}")}).to_string()}});
        let message = if turn == 1 {
            json!({"role": "assistant", "content": null, "tool_calls": [call(1), call(2)]})
        } else {
            let told: Vec<&str> =
                messages.iter().filter(|m| m["role"] == "tool").map(|m| m["content"].as_str().unwrap()).collect();
            json!({"role": "assistant", "content": told.join(" / ")})
        };
        ResponseTemplate::new(200).set_body_json(json!({
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 10}
        }))
    }
}

const LINKS: &[u8] = b"the-local-tests-answer-link-secret-0123456789";

fn with_links(base: String) -> Setup {
    Setup { links: Some(LINKS.to_vec()), ..setup(base) }
}

fn gated(base: &str) -> String {
    format!(
        r#"apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: {{ name: refunds-agent }}
spec:
  tasks:
    - id: agent
      type: agent
      with:
        model: gpt-4o-mini
        prompt: "Refund orders A-1 and A-2."
        tools:
          - name: refund
            parameters: {{ type: object, properties: {{ order_id: {{ type: string }} }}, required: [order_id] }}
            approval:
              prompt: "Refund {{{{ args.order_id }}}}?"
              approvers: {{ roles: [developer] }}
              link: true
              timeout: 1h
            run: {{ type: http, with: {{ method: POST, url: "{base}/refunds/{{{{ args.order_id }}}}", body: {{ by: "{{{{ approval.by }}}}" }} }} }}
  outputs:
    answer: "{{{{ tasks.agent.output.text }}}}"
"#
    )
}

async fn refunds_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(TwoCalls { tool: "refund", prefix: "r" })
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path_regex("^/refunds/A-[0-9]+$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"refund": "issued"})))
        .mount(&server)
        .await;
    server
}

/// Polls `GET /waiting` until `n` calls of `run` wait.
async fn waiting_calls(api: &llmo_api::Api, run: &str, n: usize) -> Vec<Value> {
    for _ in 0..300 {
        let (code, v) = call(api, "GET", "/waiting", None).await;
        assert_eq!(code, 200, "{v}");
        let rows: Vec<Value> =
            v["waiting"].as_array().unwrap().iter().filter(|r| r["run_id"] == run).cloned().collect();
        if rows.len() >= n {
            return rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{n} calls of {run} never waited");
}

async fn approvals(t: &Target, server: &MockServer) {
    let api = t.api.clone();
    let source = gated(&server.uri());
    let (code, v) = call(&api, "POST", "/runs", Some(json!({"source": source}))).await;
    assert_eq!(code, 201, "{v}");
    let run = v["run_id"].as_str().unwrap().to_string();
    let mut rows = waiting_calls(&api, &run, 2).await;
    rows.sort_by_key(|r| r["call"]["id"].as_str().unwrap().to_string());
    assert_eq!((rows[0]["prompt"].as_str(), rows[1]["prompt"].as_str()), (Some("Refund A-1?"), Some("Refund A-2?")));
    assert_eq!(rows[0]["call"]["arguments"], json!({"order_id": "A-1"}));
    let (_, now) = call(&api, "GET", &format!("/runs/{run}"), None).await;
    assert_eq!(now["tasks"][0]["turns"][0]["calls"][0]["status"], "awaiting_approval", "{now}");

    let uri = format!("/runs/{run}/tasks/agent/complete");
    // Two calls wait: an answer must say which. A viewer is not an approver.
    let (code, v) = call(&api, "POST", &uri, Some(json!({"approved": true}))).await;
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("say which `call`"), "{v}");
    let viewer = token("vera", "t1", &["viewer"]);
    let (code, v) = call_as(&api, Some(&viewer), "POST", &uri, Some(json!({"approved": true, "call": "r1"}))).await;
    assert_eq!(code, 403, "{v}");
    // Five developers approve r1 at once: one answer is recorded.
    let tokens: Vec<String> = (0..5).map(|i| token(&format!("dev{i}"), "t1", &["developer"])).collect();
    let answers =
        tokens.iter().map(|t| call_as(&api, Some(t), "POST", &uri, Some(json!({"approved": true, "call": "r1"}))));
    let got = futures::future::join_all(answers).await;
    let codes: Vec<u16> = got.iter().map(|(c, _)| *c).collect();
    assert_eq!(codes.iter().filter(|&&c| c == 200).count(), 1, "{got:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 409).count(), 4, "{got:?}");
    let winner = got.iter().find(|(c, _)| *c == 200).unwrap().1["output"]["by"].as_str().unwrap().to_string();
    // r2 is rejected through its link, without an account; the link works once.
    let link = rows[1]["token"].as_str().expect("an approver sees the link").to_string();
    let (code, q) = call_as(&api, None, "POST", "/answer", Some(json!({"token": link}))).await;
    assert_eq!((code, q["call"]["id"].as_str()), (200, Some("r2")), "{q}");
    let no = json!({"token": link, "approved": false, "comment": "not eligible"});
    let (code, v) = call_as(&api, None, "POST", "/answer", Some(no.clone())).await;
    assert_eq!(code, 200, "{v}");
    let (code, v) = call_as(&api, None, "POST", "/answer", Some(no)).await;
    assert_eq!(code, 409, "{v}");

    let end = wait_end(&api, &run, 120).await;
    assert_eq!(end["status"], "succeeded", "{end}");
    let answer = end["outputs"]["answer"].as_str().unwrap();
    assert!(
        answer.contains(r#""refund":"issued""#)
            && answer.contains("error: the call was rejected by link: not eligible"),
        "{answer}"
    );
    let got = server.received_requests().await.unwrap();
    let refunds: Vec<String> = got
        .iter()
        .filter(|r| r.url.path().starts_with("/refunds/"))
        .map(|r| format!("{} {}", r.url.path(), String::from_utf8_lossy(&r.body)))
        .collect();
    assert_eq!(refunds, [format!("/refunds/A-1 {{\"by\":\"{winner}\"}}")], "the approved call ran once");
    assert_eq!(got.iter().filter(|r| r.url.path() == "/v1/chat/completions").count(), 2);
    let (initial, log) = t.initial_and_log(&run).await;
    check_log(&plan(&source), &log, initial);
    let answers = log.iter().filter(|t| matches!(t.event, llmo_core::engine::Event::Complete { .. })).count();
    assert_eq!(answers, 2, "one answer per call in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_tool_approvals_on_the_step_workers() {
    let server = refunds_server().await;
    let Some(t) = Target::stack(with_links(server.uri())).await else { return };
    approvals(&t, &server).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_tool_approvals_on_serve() {
    let server = refunds_server().await;
    let t = Target::serve(with_links(server.uri())).await;
    approvals(&t, &server).await;
    t.stop().await;
}

fn with_callbacks(base: String) -> Setup {
    let inner = setup(base);
    let make = inner.executors.clone();
    Setup {
        links: Some(LINKS.to_vec()),
        executors: Arc::new(move || {
            let mut r = make();
            llmo_runtime::callbacks::Callbacks::new(LINKS, Some("https://api.example.com".into())).install(&mut r);
            r
        }),
        ..inner
    }
}

fn waits_for_jobs(base: &str) -> String {
    format!(
        r#"apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: {{ name: jobs-agent }}
spec:
  tasks:
    - id: agent
      type: agent
      retry: {{ max_attempts: 2, backoff: {{ initial: 10ms }} }}
      with:
        model: gpt-4o-mini
        prompt: "Transcribe the calls about orders A-1 and A-2."
        tools:
          - name: transcribe
            parameters: {{ type: object, properties: {{ order_id: {{ type: string }} }}, required: [order_id] }}
            run:
              type: http
              with:
                method: POST
                url: "{base}/jobs/{{{{ args.order_id }}}}"
                callback: {{ timeout: 10m, heartbeat: 5m }}
  outputs:
    answer: "{{{{ tasks.agent.output.text }}}}"
"#
    )
}

/// The task token of the `n`th request the job server got for `order`.
async fn job_token(server: &MockServer, order: &str, n: usize) -> String {
    for _ in 0..600 {
        let got = server.received_requests().await.unwrap_or_default();
        let jobs: Vec<&Request> = got.iter().filter(|r| r.url.path() == format!("/jobs/{order}")).collect();
        if let Some(r) = jobs.get(n - 1) {
            return r.headers.get("llmo-callback-token").expect("a token").to_str().unwrap().to_string();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("job {order} #{n} never came");
}

async fn tool_callbacks(t: &Target, server: &MockServer) {
    let api = t.api.clone();
    let source = waits_for_jobs(&server.uri());
    let (code, v) = call(&api, "POST", "/runs", Some(json!({"source": source}))).await;
    assert_eq!(code, 201, "{v}");
    let run = v["run_id"].as_str().unwrap().to_string();
    let mut rows = waiting_calls(&api, &run, 2).await;
    rows.sort_by_key(|r| r["call"]["id"].as_str().unwrap().to_string());
    assert_eq!((rows[0]["kind"].as_str(), rows[0]["call"]["id"].as_str()), (Some("callback"), Some("j1")), "{rows:?}");
    assert!(rows.iter().all(|r| r.get("token").is_none()), "a task token is never listed: {rows:?}");
    let (_, now) = call(&api, "GET", &format!("/runs/{run}"), None).await;
    assert_eq!(now["tasks"][0]["turns"][0]["calls"][0]["status"], "awaiting_callback", "{now}");
    let (j1, j2) = (job_token(server, "A-1", 1).await, job_token(server, "A-2", 1).await);
    let answer = |token: String, body: Value| {
        let api = api.clone();
        async move { call_as(&api, None, "POST", &format!("/callbacks/{token}"), Some(body)).await }
    };

    // Refused: a forged token, another tenant's caller.
    let (code, v) = answer(forge(&j1), json!({"output": 1})).await;
    assert_eq!(code, 401, "{v}");
    let other = token("eve", "t2", &["admin"]);
    let (code, v) = call_as(&api, Some(&other), "POST", &format!("/callbacks/{j1}"), Some(json!({"output": 1}))).await;
    assert_eq!(code, 404, "another tenant's: {v}");
    // A heartbeat for j1; j2's job fails: its call is sent again, with a new token.
    let (code, v) = call_as(&api, None, "POST", &format!("/callbacks/{j1}/heartbeat"), None).await;
    assert_eq!((code, &v["recorded"]), (200, &json!(true)), "{v}");
    let (code, v) = answer(j2.clone(), json!({"error": "the transcriber crashed"})).await;
    assert_eq!(code, 200, "{v}");
    let j2b = job_token(server, "A-2", 2).await;
    assert_ne!(j2, j2b);
    // Five answers for j1 race: one is applied.
    let racing = (0..5).map(|i| answer(j1.clone(), json!({"output": {"text": format!("hello {i}")}})));
    let got = futures::future::join_all(racing).await;
    let codes: Vec<u16> = got.iter().map(|(c, _)| *c).collect();
    assert_eq!(codes.iter().filter(|&&c| c == 200).count(), 1, "{got:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 409).count(), 4, "{got:?}");
    // The new call of j2 must be waiting before its token is answered.
    for _ in 0..300 {
        let (_, now) = call(&api, "GET", &format!("/runs/{run}"), None).await;
        if now["tasks"][0]["turns"][0]["calls"][1]["status"] == "awaiting_callback" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (code, v) = answer(j2.clone(), json!({"output": {"text": "stale"}})).await;
    assert_eq!(code, 409, "the failed attempt's token answers nothing: {v}");
    let (code, v) = answer(j2b, json!({"output": {"text": "goodbye"}})).await;
    assert_eq!(code, 200, "{v}");

    let end = wait_end(&api, &run, 120).await;
    assert_eq!(end["status"], "succeeded", "{end}");
    let said = end["outputs"]["answer"].as_str().unwrap();
    assert!(said.contains(r#"{"text":"hello "#) && said.ends_with(r#"{"text":"goodbye"}"#), "{said}");
    let got = server.received_requests().await.unwrap();
    assert_eq!(got.iter().filter(|r| r.url.path().starts_with("/jobs/")).count(), 3, "a job per attempt");
    assert_eq!(got.iter().filter(|r| r.url.path() == "/v1/chat/completions").count(), 2);
    let (initial, log) = t.initial_and_log(&run).await;
    check_log(&plan(&source), &log, initial);
    let answers = log.iter().filter(|t| matches!(t.event, llmo_core::engine::Event::Complete { .. })).count();
    assert_eq!(answers, 2, "one answer per token in the log");
}

async fn jobs_server() -> MockServer {
    let server = MockServer::start().await;
    let model = TwoCalls { tool: "transcribe", prefix: "j" };
    Mock::given(method("POST")).and(path("/v1/chat/completions")).respond_with(model).mount(&server).await;
    Mock::given(method("POST"))
        .and(path_regex("^/jobs/A-[0-9]+$"))
        .respond_with(ResponseTemplate::new(202).set_body_json(json!({"queued": true})))
        .mount(&server)
        .await;
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_tool_callbacks_on_the_step_workers() {
    let server = jobs_server().await;
    let Some(t) = Target::stack(with_callbacks(server.uri())).await else { return };
    tool_callbacks(&t, &server).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_tool_callbacks_on_serve() {
    let server = jobs_server().await;
    let t = Target::serve(with_callbacks(server.uri())).await;
    tool_callbacks(&t, &server).await;
    t.stop().await;
}
