//! `GET /runs/{id}/events` where responses do not stream (API Gateway, and `Api::handle`
//! everywhere): the answer is the run's events so far as `text/event-stream`, ending; the client
//! comes back with the last id it saw (`Last-Event-ID`, or `?last_event_id=`) and gets exactly
//! the events after it, then the run's end. On the local stack (DynamoDB's log and initial
//! state) and on `llmo serve`'s composition. Malformed or another run's ids are 400s, another
//! tenant's run a 404, a caller without a token a 401.

use crate::support;

use http::Request as HttpRequest;
use llmo_api::{Body, Request};
use serde_json::{Value, json};
use support::*;

const SOURCE: &str = r#"apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: reviewed }
spec:
  tasks:
    - { id: draft, type: transform, with: { output: "a draft" } }
    - id: review
      type: wait
      depends_on: [draft]
      with: { approval: { prompt: "Publish it?" } }
    - { id: publish, type: transform, depends_on: [review], with: { output: "published: {{ tasks.draft.output }}" } }
  outputs:
    said: "{{ tasks.publish.output }}"
"#;

/// The events the route answers now: `(status, [(id, event, data)])`.
async fn events(t: &Target, token: Option<&str>, uri: &str, last: Option<&str>) -> (u16, Vec<(String, String, Value)>) {
    let mut req = HttpRequest::builder().method("GET").uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(l) = last {
        req = req.header("last-event-id", l);
    }
    let req: Request = req.body(Body::Empty).unwrap();
    let resp = t.api.handle(req).await;
    let status = resp.status().as_u16();
    let text = String::from_utf8_lossy(resp.body().as_ref()).to_string();
    if status == 200 {
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        assert!(text.starts_with("retry: 1000\n\n"), "{text}");
    }
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let (mut id, mut event, mut data) = (String::new(), String::new(), Value::Null);
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id: ") {
                id = v.into();
            } else if let Some(v) = line.strip_prefix("event: ") {
                event = v.into();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = serde_json::from_str(v).unwrap();
            }
        }
        if !event.is_empty() {
            out.push((id, event, data));
        }
    }
    (status, out)
}

async fn run_events(t: &Target) {
    let dev = token("dev", "t1", &["developer"]);
    let (code, v) = call(&t.api, "POST", "/runs", Some(json!({"source": SOURCE}))).await;
    assert_eq!(code, 201, "{v}");
    let run = v["run_id"].as_str().unwrap().to_string();
    let uri = format!("/runs/{run}/events");
    // Until the review waits: each answer has the events so far, in order.
    let mut seen: Vec<(String, String, Value)> = Vec::new();
    for _ in 0..300 {
        let (code, got) = events(t, Some(&dev), &uri, seen.last().map(|e| e.0.as_str())).await;
        assert_eq!(code, 200);
        seen.extend(got);
        if seen.iter().any(|e| e.2["tasks"]["review"] == "waiting") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let versions: Vec<u64> = seen.iter().map(|e| e.2["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, (1..=seen.len() as u64).collect::<Vec<_>>(), "{seen:?}");
    assert_eq!(seen[0].2["event"]["event"], "start");
    let last = seen.last().unwrap().0.clone();
    let (code, got) = events(t, Some(&dev), &uri, Some(&last)).await;
    assert_eq!((code, got.len()), (200, 0), "nothing new while the review waits: {got:?}");

    // Refused: a malformed id, another run's, another tenant's caller, no token.
    assert_eq!(events(t, Some(&dev), &uri, Some("x-1-0")).await.0, 400);
    let (code, _) = events(t, Some(&dev), &format!("{uri}?last_event_id=0000ffff-1-0"), None).await;
    assert_eq!(code, 400);
    assert_eq!(events(t, Some(&token("eve", "t2", &["admin"])), &uri, None).await.0, 404);
    assert_eq!(events(t, None, &uri, None).await.0, 401);

    // Approved: the client comes back after the last id it saw and gets the rest, then the end.
    let (code, v) =
        call(&t.api, "POST", &format!("/runs/{run}/tasks/review/complete"), Some(json!({"approved": true}))).await;
    assert_eq!(code, 200, "{v}");
    let mut rest: Vec<(String, String, Value)> = Vec::new();
    for _ in 0..300 {
        let from = rest.last().map_or(last.clone(), |e| e.0.clone());
        let (_, got) = events(t, Some(&dev), &format!("{uri}?last_event_id={from}"), None).await;
        rest.extend(got);
        if rest.last().is_some_and(|e| e.1 == "end") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let end = rest.pop().expect("the run's end");
    assert_eq!((end.1.as_str(), &end.2["outputs"]["said"]), ("end", &json!("published: a draft")), "{end:?}");
    let n = seen.len() as u64;
    let versions: Vec<u64> = rest.iter().map(|e| e.2["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, (n + 1..=n + rest.len() as u64).collect::<Vec<_>>(), "no gap, no repeat: {rest:?}");
    // After the end: a 204, nothing more will come.
    assert_eq!(events(t, Some(&dev), &uri, Some(&end.0)).await.0, 204);
    // All at once, from the start: the same events.
    let (_, all) = events(t, Some(&dev), &uri, None).await;
    let joined: Vec<_> = seen.iter().chain(&rest).chain([&end]).cloned().collect();
    assert_eq!(all, joined);
}

on_both!(
    events_so_far_resume_after_the_last_id_on_the_step_workers,
    events_so_far_resume_after_the_last_id_on_serve,
    run_events,
    Setup::default()
);
