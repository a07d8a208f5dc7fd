//! Callbacks through the API, on the local stack's step workers and on `llmo serve`'s
//! composition: an `http` task with `callback` sends its task token (and the URL to answer
//! at) and waits; `POST /callbacks/{token}` with a forged token is a 401, with another
//! tenant's bearer a 404, a heartbeat keeps the attempt alive, an `error` fails it (its retry
//! sends again with a new token, the old one then answers nothing: 409), an `output` ends the
//! task once (a second answer: 409), and refused answers store nothing. A missed heartbeat
//! fails the task.

use crate::support;

use serde_json::json;
use std::sync::Arc;
use support::*;

const SECRET: &[u8] = b"callbacks-test-link-secret-of-at-least-32-bytes";

fn setup() -> Setup {
    Setup {
        links: Some(SECRET.to_vec()),
        executors: Arc::new(|| {
            let mut r = executors();
            let http = llmo_runtime::http::HttpExecutor::new(
                llmo_runtime::egress::Egress::loopback(),
                Arc::new(llmo_runtime::secrets::MapSecrets::default()),
                Default::default(),
            );
            r.register("http", Arc::new(http));
            llmo_runtime::callbacks::Callbacks::new(SECRET, Some("https://api.example.com".into())).install(&mut r);
            r
        }),
        ..Setup::default()
    }
}

fn workflow(url: &str, heartbeat: &str, attempts: u32) -> String {
    format!(
        r#"apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: {{ name: label }}
spec:
  tasks:
    - id: label
      type: http
      retry: {{ max_attempts: {attempts}, backoff: {{ initial: 10ms }} }}
      with:
        method: POST
        url: "{url}/jobs"
        body: {{ text: "a dog on a skateboard" }}
        callback: {{ timeout: 2m, heartbeat: {heartbeat} }}
    - {{ id: after, type: transform, depends_on: [label], with: {{ output: "label: {{{{ tasks.label.output.label }}}}" }} }}
  outputs:
    said: "{{{{ tasks.after.output }}}}"
"#
    )
}

/// The `n`th request the server received: its task token and callback URL.
async fn nth_call(server: &wiremock::MockServer, n: usize) -> (String, String) {
    for _ in 0..600 {
        let got = server.received_requests().await.unwrap_or_default();
        if got.len() >= n {
            let h = |k: &str| got[n - 1].headers.get(k).map(|v| v.to_str().unwrap().to_string());
            return (h("llmo-callback-token").expect("a token"), h("llmo-callback-url").expect("a URL"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("call {n} never came");
}

async fn waiting(t: &Target, run: &str, attempt: u64) {
    for _ in 0..600 {
        let (_, v) = call(&t.api, "GET", &format!("/runs/{run}"), None).await;
        if v["tasks"][0]["status"] == "waiting" && v["tasks"][0]["attempts"] == attempt {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{run} never waited for its callback (attempt {attempt})");
}

async fn answer(t: &Target, token: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    call_as(&t.api, None, "POST", &format!("/callbacks/{token}"), Some(body)).await
}

async fn callbacks(t: &Target) {
    let server = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(202).set_body_json(json!({"queued": true})))
        .mount(&server)
        .await;
    let source = workflow(&server.uri(), "30s", 2);
    let (code, v) = call(&t.api, "POST", "/runs", Some(json!({"source": source}))).await;
    assert_eq!(code, 201, "{v}");
    let run = v["run_id"].as_str().unwrap().to_string();
    let (first, url) = nth_call(&server, 1).await;
    assert_eq!(url, format!("https://api.example.com/callbacks/{first}"));
    waiting(t, &run, 1).await;
    let stored = t.initial_and_log(&run).await.1.len();

    // Refused: forged, another tenant's caller, not an answer. Nothing is stored.
    let forged = forge(&first);
    let (code, v) = answer(t, &forged, json!({"output": 1})).await;
    assert_eq!(code, 401, "{v}");
    let other = token("eve", "t2", &["admin"]);
    let (code, v) =
        call_as(&t.api, Some(&other), "POST", &format!("/callbacks/{first}"), Some(json!({"output": 1}))).await;
    assert_eq!(code, 404, "another tenant's: {v}");
    let (code, v) = answer(t, &first, json!({"output": 1, "error": "x"})).await;
    assert_eq!(code, 400, "{v}");
    let (code, v) = answer(t, &first, json!({"output": "x".repeat(300 * 1024)})).await;
    assert_eq!(code, 400, "too large: {v}");
    assert_eq!(t.initial_and_log(&run).await.1.len(), stored, "refused answers store nothing");

    // A heartbeat (by the tenant's own caller too), then an error: the attempt retries.
    let (code, v) = call_as(&t.api, None, "POST", &format!("/callbacks/{first}/heartbeat"), None).await;
    assert_eq!((code, &v["recorded"]), (200, &json!(true)), "{v}");
    let (code, v) = answer(t, &first, json!({"error": "the labeller crashed"})).await;
    assert_eq!(code, 200, "{v}");
    let (second, _) = nth_call(&server, 2).await;
    assert_ne!(first, second, "a new attempt, a new token");
    waiting(t, &run, 2).await;
    let (code, v) = answer(t, &first, json!({"output": {"label": "cat"}})).await;
    assert_eq!(code, 409, "the first attempt ended: {v}");
    assert!(v["error"].as_str().unwrap().contains("the token is for attempt 1"), "{v}");

    // The answer, once; the tenant's own bearer may come with it (the runs are `t1`'s).
    let mine = token("dev", "t1", &["developer"]);
    let (code, v) = call_as(
        &t.api,
        Some(&mine),
        "POST",
        &format!("/callbacks/{second}"),
        Some(json!({"output": {"label": "dog"}})),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let (code, v) = answer(t, &second, json!({"output": {"label": "cat"}})).await;
    assert_eq!(code, 409, "answered once: {v}");
    let end = wait_end(&t.api, &run, 60).await;
    assert_eq!(end["status"], "succeeded", "{end}");
    assert_eq!(end["outputs"]["said"], "label: dog", "{end}");
    assert_eq!(end["tasks"][0]["attempts"], 2, "{end}");
    let (code, v) = call_as(&t.api, None, "POST", &format!("/callbacks/{second}/heartbeat"), None).await;
    assert_eq!(code, 409, "a heartbeat after the end: {v}");
    let (initial, log) = t.initial_and_log(&run).await;
    check_log(&plan(&source), &log, initial);
    assert_eq!(server.received_requests().await.unwrap().len(), 2, "one call per attempt");

    // No heartbeat within 2 s: the attempt fails (one attempt: the task and the run fail).
    let source = workflow(&server.uri(), "2s", 1);
    let (code, v) = call(&t.api, "POST", "/runs", Some(json!({"source": source}))).await;
    assert_eq!(code, 201, "{v}");
    let run = v["run_id"].as_str().unwrap().to_string();
    let end = wait_end(&t.api, &run, 90).await;
    assert_eq!(end["status"], "failed", "{end}");
    assert!(end["error"].as_str().unwrap_or_default().contains("no heartbeat came for 2s"), "{end}");
}

on_both!(callbacks_answer_their_tokens_on_the_step_workers, callbacks_answer_their_tokens_on_serve, callbacks, setup());
