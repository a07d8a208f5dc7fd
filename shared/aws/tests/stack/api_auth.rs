//! The API's authentication, roles, tenancy, idempotency and audit trail against the local
//! stack: every route refuses a missing or bad token with a 401 and stores nothing; each role x
//! route pair is allowed or refused as the table says; tenant B never sees tenant A's runs
//! (404, not 403); idempotency keys are scoped by tenant and request; listing cursors are
//! checked; every request and every run status change is audited.

use crate::support;

use std::collections::HashMap;

use serde_json::{Value, json};
use support::*;

const WF: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: echo }
spec:
  inputs:
    n: { type: integer, default: 1 }
  tasks:
    - id: a
      type: transform
      with: { output: "{{ inputs.n }}" }
  outputs:
    n: "{{ tasks.a.output }}"
"#;

fn claims(sub: &str, tenant: &str, roles: &[&str], aud: &str, exp_from_now: i64) -> HashMap<&'static str, Value> {
    let now = (llmo_runtime::ports::now_ms() / 1000) as i64;
    [
        ("sub", json!(sub)),
        ("tenant", json!(tenant)),
        ("roles", json!(roles)),
        ("aud", json!(aud)),
        ("exp", json!(now + exp_from_now)),
    ]
    .into()
}

/// Every route, with a body where it takes one. `{run}` is replaced by a run id.
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/workflows"),
    ("GET", "/workflows"),
    ("POST", "/runs"),
    ("GET", "/runs"),
    ("GET", "/runs/{run}"),
    ("GET", "/runs/{run}/history"),
    ("POST", "/runs/{run}/cancel"),
    ("GET", "/audit"),
    ("GET", "/openapi.json"),
    ("POST", "/sweep"),
];

fn body_for(method: &str, path: &str) -> Option<Value> {
    match (method, path) {
        ("POST", "/workflows") => Some(json!({"source": WF})),
        ("POST", "/runs") => Some(json!({"source": WF, "inputs": {"n": 2}})),
        _ => None,
    }
}

async fn audit_of(api: &llmo_api::Api, tenant: &str, query: &str) -> Vec<Value> {
    let admin = token("root", tenant, &["admin"]);
    let (code, v) = call_as(api, Some(&admin), "GET", &format!("/audit?{query}"), None).await;
    assert_eq!(code, 200, "{v}");
    v["records"].as_array().unwrap().clone()
}

on_both!(
    every_route_refuses_missing_and_bad_tokens_and_stores_nothing,
    every_route_refuses_missing_and_bad_tokens_and_stores_nothing_on_serve,
    refuses_bad_tokens,
    Setup { workers: 0, ..Setup::default() }
);

async fn refuses_bad_tokens(t: &Target) {
    let api = t.api.clone();
    let aud = llmo_api::auth::DEFAULT_AUDIENCE;
    let dev = ["developer", "admin"];
    let forged =
        llmo_api::auth::mint_hs256(b"some-other-secret-that-is-long-enough!", &claims("x", "t1", &dev, aud, 600));
    let bad: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("not a JWT", Some("not-a-jwt".into())),
        ("bad signature", Some(forged)),
        ("wrong audience", Some(llmo_api::auth::mint_hs256(SECRET, &claims("x", "t1", &dev, "someone-else", 600)))),
        ("expired", Some(llmo_api::auth::mint_hs256(SECRET, &claims("x", "t1", &dev, aud, -3600)))),
    ];
    for (method, path) in ROUTES {
        let path = path.replace("{run}", "run-0000000000000-000000000000000000000000");
        for (why, tok) in &bad {
            let (code, v) = call_as(&api, tok.as_deref(), method, &path, body_for(method, &path)).await;
            assert_eq!(code, 401, "{why}: {method} {path}: {v}");
            assert!(v["error"].is_string(), "{why}: a JSON error: {v}");
        }
    }
    // Nothing was stored: no workflow, no run, no audit record.
    let viewer = token("v", "t1", &["viewer"]);
    let (_, w) = call_as(&api, Some(&viewer), "GET", "/workflows", None).await;
    assert_eq!(w["workflows"], json!([]), "{w}");
    let (_, r) = call_as(&api, Some(&viewer), "GET", "/runs", None).await;
    assert_eq!(r["runs"], json!([]), "{r}");
    let records = audit_of(&api, "t1", "").await;
    // Only the two reads just made (and this audit read itself, recorded after it answers).
    let actions: Vec<&str> = records.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["GET /workflows", "GET /runs"], "{records:?}");
}

on_both!(
    each_role_may_use_exactly_its_routes,
    each_role_may_use_exactly_its_routes_on_serve,
    roles,
    Setup { workers: 0, ..Setup::default() }
);

async fn roles(t: &Target) {
    let api = t.api.clone();
    // A run to act on, in tenant t1.
    let (code, v) = call(&api, "POST", "/runs", Some(json!({"source": WF}))).await;
    assert_eq!(code, 201, "{v}");
    let run = v["run_id"].as_str().unwrap().to_string();
    // (role, allowed routes by index into ROUTES)
    let table: &[(&str, &[usize])] = &[
        ("viewer", &[1, 3, 4, 5, 8]),
        ("developer", &[0, 1, 2, 3, 4, 5, 6, 8]),
        ("admin", &[0, 1, 2, 3, 4, 5, 6, 7, 8]),
        ("nothing", &[]),
    ];
    for (role, allowed) in table {
        let tok = token(&format!("u-{role}"), "t1", &[role]);
        for (i, (method, path)) in ROUTES.iter().enumerate() {
            let path = path.replace("{run}", &run);
            let (code, v) = call_as(&api, Some(&tok), method, &path, body_for(method, &path)).await;
            if allowed.contains(&i) {
                assert!((200..300).contains(&code), "{role} may {method} {path}: {code} {v}");
            } else {
                assert_eq!(code, 403, "{role} may not {method} {path}: {v}");
                assert!(v["error"].is_string(), "{v}");
            }
        }
    }
    // The sweeper acts on every tenant: an admin who is also an operator, only.
    let op = token("u-op", "t1", &["admin", "operator"]);
    let (code, v) = call_as(&api, Some(&op), "POST", "/sweep", None).await;
    assert_eq!(code, 200, "{v}");
    assert!(v["looked_at"].is_u64() && v["restarted"].is_array() && v["timed_out"].is_array(), "{v}");
    // Refusals are audited as such, with who asked.
    let records = audit_of(&api, "t1", "limit=1000").await;
    assert!(
        records.iter().any(|r| r["actor"] == "u-viewer" && r["action"] == "POST /runs" && r["result"] == "403"),
        "{records:?}"
    );
}

on_both!(tenants_never_see_each_other, tenants_never_see_each_other_on_serve, tenancy, Setup::default());

async fn tenancy(t: &Target) {
    let api = t.api.clone();
    let a = token("alice", "acme", &["developer"]);
    let b = token("bob", "globex", &["admin"]);
    // A registers a workflow and starts a run of it, with a key.
    let (code, _) = call_as(&api, Some(&a), "POST", "/workflows", Some(json!({"source": WF}))).await;
    assert_eq!(code, 201);
    let start = json!({"workflow": "echo", "inputs": {"n": 7}, "idempotency_key": "order-42"});
    let (code, v) = call_as(&api, Some(&a), "POST", "/runs", Some(start.clone())).await;
    assert_eq!(code, 201, "{v}");
    let run = v["run_id"].as_str().unwrap().to_string();
    let random = run.rsplit('-').next().unwrap();
    assert_eq!(random.len(), 24, "96 random bits: {run}");
    // B: the workflow is not registered for it, the run does not exist.
    let (code, _) = call_as(&api, Some(&b), "POST", "/runs", Some(json!({"workflow": "echo"}))).await;
    assert_eq!(code, 404);
    for (method, path) in [
        ("GET", format!("/runs/{run}")),
        ("GET", format!("/runs/{run}/history")),
        ("POST", format!("/runs/{run}/cancel")),
    ] {
        let (code, v) = call_as(&api, Some(&b), method, &path, None).await;
        assert_eq!(code, 404, "{method} {path}: {v}");
        assert_eq!(v["error"], format!("no run `{run}`"));
    }
    let (_, list) = call_as(&api, Some(&b), "GET", "/runs", None).await;
    assert_eq!(list["runs"], json!([]), "{list}");
    let (_, wfs) = call_as(&api, Some(&b), "GET", "/workflows", None).await;
    assert_eq!(wfs["workflows"], json!([]), "{wfs}");
    // ...even naming A's tenant, unless an operator.
    let (code, _) = call_as(&api, Some(&b), "GET", &format!("/runs/{run}?tenant=acme"), None).await;
    assert_eq!(code, 403);
    let op = token("ops", "globex", &["admin", "operator"]);
    let (code, v) = call_as(&api, Some(&op), "GET", &format!("/runs/{run}?tenant=acme"), None).await;
    assert_eq!(code, 200, "{v}");
    // Keys: the same key and request is the same run; another request with it is a 409; B's
    // identical key is B's own.
    let (code, v) = call_as(&api, Some(&a), "POST", "/runs", Some(start.clone())).await;
    assert_eq!((code, v["run_id"].as_str(), v["created"].as_bool()), (200, Some(run.as_str()), Some(false)), "{v}");
    let other = json!({"workflow": "echo", "inputs": {"n": 8}, "idempotency_key": "order-42"});
    let (code, v) = call_as(&api, Some(&a), "POST", "/runs", Some(other)).await;
    assert_eq!(code, 409, "{v}");
    let (code, v) = call_as(
        &api,
        Some(&b),
        "POST",
        "/runs",
        Some(json!({"source": WF, "inputs": {"n": 7}, "idempotency_key": "order-42"})),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    assert_ne!(v["run_id"].as_str(), Some(run.as_str()));
    let long = "k".repeat(llmo_runtime::start::MAX_IDEMPOTENCY_KEY + 1);
    let (code, v) =
        call_as(&api, Some(&a), "POST", "/runs", Some(json!({"source": WF, "idempotency_key": long}))).await;
    assert_eq!(code, 400, "{v}");
    // Cursors: tampered, or from another listing, are a 400.
    for _ in 0..2 {
        let (code, _) = call_as(&api, Some(&a), "POST", "/runs", Some(json!({"source": WF}))).await;
        assert_eq!(code, 201);
    }
    let (code, page) = call_as(&api, Some(&a), "GET", "/runs?limit=1", None).await;
    assert_eq!(code, 200);
    let cursor = page["next"].as_str().expect("a next page").to_string();
    let (code, _) = call_as(&api, Some(&a), "GET", &format!("/runs?limit=1&cursor={cursor}"), None).await;
    assert_eq!(code, 200);
    // Tampered: the listing it names changed (a byte flipped at random could land in the
    // page bound instead, which only moves where the same listing starts).
    let tampered = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut v: Value = serde_json::from_slice(&b64.decode(&cursor).unwrap()).unwrap();
        let l = v["l"].as_str().unwrap().to_string();
        let flipped: String = l.chars().rev().collect();
        v["l"] = json!(if flipped == l { format!("{l}0") } else { flipped });
        b64.encode(v.to_string())
    };
    for (who, c) in [(&a, tampered.as_str()), (&a, "e30"), (&a, "%%%"), (&b, cursor.as_str())] {
        let (code, v) = call_as(&api, Some(who), "GET", &format!("/runs?limit=1&cursor={c}"), None).await;
        assert_eq!(code, 400, "cursor {c}: {v}");
    }
    let (code, _) = call_as(&api, Some(&a), "GET", &format!("/runs?status=running&cursor={cursor}"), None).await;
    assert_eq!(code, 400, "a cursor of another listing");
    // The run ends; its audit trail has the start, its status changes, and A's reads, and
    // none of B's attempts (they were B's, in B's tenant).
    let got = wait_end_as(&api, &a, &run, 60).await;
    assert_eq!(got["status"], "succeeded", "{got}");
    let records = audit_of(&api, "acme", &format!("run={run}")).await;
    let seen: Vec<(String, String, String)> = records
        .iter()
        .map(|r| {
            (
                r["actor"].as_str().unwrap().into(),
                r["action"].as_str().unwrap().into(),
                r["result"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(seen.first(), Some(&("alice".into(), "POST /runs".into(), "201".into())), "{seen:?}");
    for status in ["running", "succeeded"] {
        let n = seen.iter().filter(|s| s.0 == "system" && s.1 == "run.status" && s.2 == status).count();
        assert_eq!(n, 1, "one `{status}` record: {seen:?}");
    }
    assert!(seen.iter().all(|s| s.0 != "bob"), "{seen:?}");
    let b_records = audit_of(&api, "globex", "").await;
    assert!(
        b_records.iter().any(|r| r["actor"] == "bob" && r["target"] == run.as_str() && r["result"] == "404"),
        "{b_records:?}"
    );
    // The audit trail is the admin's: a developer is refused.
    let (code, _) = call_as(&api, Some(&a), "GET", "/audit", None).await;
    assert_eq!(code, 403);
}

async fn wait_end_as(api: &llmo_api::Api, tok: &str, run: &str, secs: u64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let (code, v) = call_as(api, Some(tok), "GET", &format!("/runs/{run}"), None).await;
        assert_eq!(code, 200, "{v}");
        if ["succeeded", "failed", "cancelled", "timed_out"].contains(&v["status"].as_str().unwrap_or("")) {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "run {run} did not end: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_must_be_json_and_errors_name_no_aws_resource() {
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 30, 5).await;
    let api = api(&aws);
    let tok = token("dev", "t1", &["developer"]);
    let req = http::Request::builder()
        .method("POST")
        .uri("/runs")
        .header("content-type", "text/plain")
        .header("authorization", format!("Bearer {tok}"))
        .body(llmo_api::Body::Text(json!({"source": WF}).to_string()))
        .unwrap();
    assert_eq!(api.handle(req).await.status().as_u16(), 415);
    // A store that fails (its table is gone) answers a 500 that names nothing of it.
    let broken = llmo_aws::api::build(
        &aws.named("no-such-table", &aws.queue_url, &aws.dlq_url, "no-such-bucket"),
        executors(),
        llmo_runtime::providers::Config::builtin(),
        true,
    )
    .with_auth(llmo_api::auth::Auth::hs256(SECRET, llmo_api::auth::DEFAULT_AUDIENCE));
    let (code, v) = call_as(&broken, Some(&tok), "POST", "/runs", Some(json!({"source": WF}))).await;
    assert_eq!(code, 500, "{v}");
    let text = v.to_string();
    assert!(!text.contains("no-such-table") && !text.to_lowercase().contains("dynamodb"), "{text}");
    assert!(v["error_id"].is_string(), "{v}");
}

/// Forty approvals whose prompts each take most of a template's fuel: the run's `start` is
/// one small line in the log and dear to replay.
const HEAVY: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: heavy }
spec:
  tasks:
    - id: hold
      type: wait
      for_each: "range(40)"
      with:
        approval:
          prompt: "{% for i in range(40000) %}{% endfor %}{{ item }}"
"#;

/// A run of `tenant` whose dear `start` is in the log with no snapshot after it (its writer
/// died before writing one).
async fn unsnapshotted(aws: &llmo_aws::Aws, id: &str, tenant: &str) -> llmo_aws::dynamo::DynamoStore {
    use llmo_runtime::store::{RunStore, Transition};
    let store = llmo_aws::dynamo::DynamoStore::new(aws.clone());
    let p = plan(HEAVY);
    let mut st = p.new_run(id, Default::default());
    st.tenant = Some(tenant.to_string());
    store.create("heavy", "heavy.yaml", HEAVY, &st).await.unwrap();
    let mut head = st.clone();
    let now = llmo_runtime::ports::now_ms();
    let started = std::time::Instant::now();
    p.apply(&mut head, &llmo_core::engine::Event::Start, now).unwrap();
    let t = Transition::new(1, now, llmo_core::engine::Event::Start).took(started.elapsed());
    assert!(store.append(0, &[t], &head).await.unwrap());
    // Its first approval is listed as waiting (as the worker's `Await` would have it).
    let first = llmo_core::engine::AttemptId { task: 0, item: Some(0), attempt: 1 };
    store.put_waiter(&llmo_runtime::store::Waiter::of(&head, first).unwrap()).await.unwrap();
    store
}

/// Reading a run whose log is dear to replay: past its slice a read needs one of its
/// tenant's places (fleet-wide, in DynamoDB); with them taken it is refused with a 429 while
/// another tenant's reads go on; the read that does replay leaves a snapshot, so the next
/// read replays nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expensive_reads_are_capped_per_tenant_and_keep_their_work() {
    use llmo_runtime::flow::Flow;
    use llmo_runtime::store::RunStore;
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 30, 5).await;
    let mut api = api(&aws);
    api.reads.slice = std::time::Duration::ZERO;
    api.reads.per_tenant = 1;
    let suffix = llmo_runtime::start::new_run_id();
    let (mine, theirs) = (format!("heavy-a-{suffix}"), format!("heavy-b-{suffix}"));
    let store = unsnapshotted(&aws, &mine, "acme").await;
    unsnapshotted(&aws, &theirs, "globex").await;
    let a = token("alice", "acme", &["viewer"]);
    let b = token("bob", "globex", &["viewer"]);
    // acme's one place is taken by a read in progress.
    let flow = llmo_aws::flow::DynamoFlow::new(aws.clone());
    let holder = format!("elsewhere@{}", llmo_runtime::ports::now_ms() + 60_000);
    assert!(flow.enter("reads#acme", &holder, 1, 0).await.unwrap());
    let (code, v) = call_as(&api, Some(&a), "GET", &format!("/runs/{mine}"), None).await;
    assert_eq!(code, 429, "{v}");
    assert!(v["error"].as_str().unwrap().contains("too many expensive reads"), "{v}");
    // Every route that replays a run is under the same cap: the waiting list, a cancel.
    let (code, v) = call_as(&api, Some(&a), "GET", "/waiting", None).await;
    assert_eq!(code, 429, "{v}");
    let dev = token("dan", "acme", &["developer"]);
    let (code, v) = call_as(&api, Some(&dev), "POST", &format!("/runs/{mine}/cancel"), None).await;
    assert_eq!(code, 429, "{v}");
    // globex's reads are not held back by acme's.
    let (code, v) = call_as(&api, Some(&b), "GET", &format!("/runs/{theirs}"), None).await;
    assert_eq!((code, v["status"].as_str()), (200, Some("running")), "{v}");
    // Its place free again, acme's read replays, and keeps what it replayed.
    flow.leave("reads#acme", &holder).await;
    let (code, v) = call_as(&api, Some(&a), "GET", &format!("/runs/{mine}"), None).await;
    assert_eq!((code, v["status"].as_str()), (200, Some("running")), "{v}");
    let stored = store.load(&mine).await.unwrap().unwrap();
    assert_eq!((stored.snapshot.version, stored.tail.len()), (1, 0), "the replayed state was kept as a snapshot");
    assert!(flow.holders("reads#acme").await.is_empty(), "the read left its place");
}

/// The local server's gate: a request without a valid token is answered 401 before its body
/// is read; a verified one may send the API's body limit; the answer-link route (its token
/// is in the body) a small one; run-page files none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_gate_authenticates_before_any_body_is_read() {
    let Some(aws) = aws().await else { return };
    let api = api(&aws);
    let head = |method: &str, uri: &str, token: Option<&str>| {
        let mut b = http::Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(()).unwrap().into_parts().0
    };
    let r = api.admit(head("POST", "/runs", None)).await.unwrap_err();
    assert_eq!(r.status(), 401);
    let r = api.admit(head("POST", "/runs", Some("not-a-token"))).await.unwrap_err();
    assert_eq!(r.status(), 401);
    let dev = token("dev", "t1", &["developer"]);
    assert_eq!(api.admit(head("POST", "/runs", Some(&dev))).await.unwrap().1, llmo_api::api::BODY_BYTES);
    assert_eq!(api.admit(head("POST", "/answer", None)).await.unwrap().1, llmo_api::api::LINK_BODY_BYTES);
    assert_eq!(api.admit(head("GET", "/ui", None)).await.unwrap().1, 0);
}

on_both!(
    a_bus_event_starts_the_runs_its_triggers_match_once,
    a_bus_event_starts_the_runs_its_triggers_match_once_on_serve,
    bus_events,
    Setup::default()
);

/// `POST /bus/events` against the registered document-intake example: a matching event starts
/// one run (its inputs from the event), the same event again starts none, an event the
/// pattern refuses or another tenant's starts nothing, and a bad body is a 400.
async fn bus_events(t: &Target) {
    let api = t.api.clone();
    let a = token("alice", "acme", &["developer"]);
    let source = std::fs::read_to_string(root().join("workflows/document-intake.yaml")).unwrap();
    let (code, v) = call_as(&api, Some(&a), "POST", "/workflows", Some(json!({"source": source}))).await;
    assert_eq!(code, 201, "{v}");
    let event = |key: &str| {
        json!({"source": "aws.s3", "detail-type": "Object Created", "id": format!("ev-{key}"),
               "detail": {"bucket": {"name": "acme-intake"}, "object": {"key": key, "size": 2048}}})
    };
    let (code, v) = call_as(&api, Some(&a), "POST", "/bus/events", Some(event("contracts/msa.pdf"))).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["started"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["started"][0]["trigger"], "pdf_uploaded");
    assert_eq!(v["started"][0]["created"], true);
    let run = v["started"][0]["run_id"].as_str().unwrap().to_string();
    let (code, again) = call_as(&api, Some(&a), "POST", "/bus/events", Some(event("contracts/msa.pdf"))).await;
    assert_eq!(code, 200);
    assert_eq!(
        (again["started"][0]["run_id"].as_str(), again["started"][0]["created"].as_bool()),
        (Some(run.as_str()), Some(false))
    );
    let (_, none) = call_as(&api, Some(&a), "POST", "/bus/events", Some(event("contracts/msa.docx"))).await;
    assert_eq!(none["started"], json!([]), "the pattern wants .pdf: {none}");
    let b = token("bob", "globex", &["developer"]);
    let (_, theirs) = call_as(&api, Some(&b), "POST", "/bus/events", Some(event("contracts/other.pdf"))).await;
    assert_eq!(theirs["started"], json!([]), "another tenant's workflows: {theirs}");
    let (code, _) = call_as(&api, Some(&a), "POST", "/bus/events", Some(json!({"detail": {}}))).await;
    assert_eq!(code, 400);
    let viewer = token("vera", "acme", &["viewer"]);
    let (code, _) = call_as(&api, Some(&viewer), "POST", "/bus/events", Some(event("x.pdf"))).await;
    assert_eq!(code, 403);
    let (code, got) = call_as(&api, Some(&a), "GET", &format!("/runs/{run}"), None).await;
    assert_eq!(code, 200, "{got}");
    assert_eq!(got["inputs"]["key"], "contracts/msa.pdf", "{got}");
}
