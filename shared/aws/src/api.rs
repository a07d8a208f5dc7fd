//! The `api` function: the HTTP API (API Gateway HTTP API, payload v2) over the run store.
//!
//! Every route authenticates ([`crate::auth`]) and acts within the caller's tenant:
//!
//! | route | role | does |
//! | --- | --- | --- |
//! | `POST /workflows` `{"source": "<yaml>"}` | developer | validates and registers a definition (by its `metadata.name`) |
//! | `GET /workflows` | viewer | the tenant's registered definitions |
//! | `POST /runs` `{"workflow": name \| "source": yaml, "inputs": {..}, "idempotency_key"?}` | developer | starts a run (`Idempotency-Key` header works too: one key and request, one run) |
//! | `GET /runs?workflow=&status=&limit=&cursor=` | viewer | the tenant's runs, newest first, a page at a time |
//! | `GET /runs/{id}` | viewer | status, task states, outputs, cost |
//! | `GET /runs/{id}/history` | viewer | the transition log |
//! | `POST /runs/{id}/cancel` | developer | cancels (stored before the answer; `on.failure` hooks run) |
//! | `GET /waiting` | viewer | tasks waiting for an approval or an event ([`crate::answers`]) |
//! | `POST /runs/{id}/tasks/{task}/complete` | the wait's approvers | approves or rejects, once |
//! | `POST /events` `{"name", "key", "payload"}` | developer | resumes the tasks waiting for it |
//! | `POST /answer` `{"token", ..}` | none: the link's token | an approval answered by its link |
//! | `GET /audit?run=&since=&until=&limit=` | admin | the audit trail, oldest first |
//! | `POST /sweep` | admin and operator | runs the sweeper once over every tenant's runs (`llmo sweep`) |
//! | `GET /openapi.json` | viewer | the API's OpenAPI 3.1 description (`docs/openapi.json`) |
//!
//! Another tenant's run is a 404, as if it did not exist. An admin who is also an `operator`
//! may add `?tenant=T` to act on tenant T. Every authenticated request is audited.

use std::collections::HashMap;
use std::sync::Arc;

use lambda_http::http::{Method, StatusCode};
use lambda_http::{Body, Request, Response};
use llmo_core::engine::{Event, Plan, RunState, RunStatus};
use llmo_runtime::executor::Registry;
use llmo_runtime::ports::SystemClock;
use llmo_runtime::providers::Config;
use llmo_runtime::queue::{Delivery, Message};
use llmo_runtime::reads::ReadError;
use llmo_runtime::start::{IdempotencyKey, KeySpace, StartError, StartRequest, Starter};
use llmo_runtime::store::{RunStore, StoredRun};
use llmo_runtime::worker::Worker;
use serde_json::{Value, json};

use crate::audit::{self, Audit, Record};
use crate::auth::{Auth, AuthError, Principal, Role};
use crate::config::Aws;
use crate::dynamo::{DynamoStore, ListFilter};
use crate::sqs::SqsQueue;

pub struct Api {
    pub aws: Aws,
    pub store: Arc<DynamoStore>,
    /// Registered definitions (`POST /workflows`), by tenant and name.
    pub workflows: Arc<dyn llmo_runtime::workflows::Workflows>,
    pub queue: Arc<SqsQueue>,
    pub worker: Worker,
    pub starter: Starter,
    pub audit: Audit,
    /// `POST /sweep` (operators): see [`crate::sweep`].
    pub sweeper: crate::sweep::Sweeper,
    /// How requests authenticate; `None` refuses every request.
    pub auth: Option<Auth>,
    /// `GET /metrics`: the local API's Prometheus registry.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The secret answer links are signed with (`LLMO_LINK_SECRET`); none: no links.
    pub links: Option<Vec<u8>>,
    /// How runs are read: replayed off the async threads, expensive replays capped per tenant
    /// across the fleet ([`llmo_runtime::reads`]).
    pub reads: llmo_runtime::reads::Reads,
}

pub(crate) type Reply = Response<Body>;

/// A refusal, boxed (a response is large).
pub(crate) type Refusal = Box<Reply>;

pub(crate) fn reply(status: StatusCode, body: Value) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::Text(body.to_string()))
        .expect("valid response")
}

pub(crate) fn problem(status: StatusCode, message: impl Into<String>) -> Reply {
    reply(status, json!({"error": message.into()}))
}

/// A 500 that says nothing of the cause (AWS error text names tables, buckets and keys): the
/// cause is logged with an id the answer gives.
pub(crate) fn internal(e: impl std::fmt::Display) -> Reply {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).expect("the operating system's random source");
    let id: String = b.iter().map(|x| format!("{x:02x}")).collect();
    tracing::error!(error = %e, error_id = %id, "api request failed");
    reply(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": "internal error", "error_id": id}))
}

/// Most bytes of one value (a task's output, the run's outputs, one transition) in an API
/// response; larger ones come back as `{"truncated": true, "bytes": N}`. Lambda answers at
/// most 6 MB.
pub use llmo_runtime::view::VALUE_BYTES;
/// Most bytes of a request body (API Gateway's own limit is 10 MB).
pub const BODY_BYTES: usize = 16 * 1024 * 1024;
/// Most bytes of a `POST /answer` body (a link's token and an approval's answer).
pub const LINK_BODY_BYTES: usize = 128 * 1024;
/// Most bytes of transitions in one page of `GET /runs/{id}/history`.
pub const PAGE_BYTES: usize = 4 << 20;

/// Up to `limit` transitions within [`PAGE_BYTES`] (at least one), and the version after
/// which the next page starts if any are left.
fn history_page(tail: Vec<llmo_runtime::store::Transition>, limit: usize) -> (Vec<Value>, Option<u64>) {
    let mut out = Vec::new();
    let mut bytes = 0;
    let total = tail.len();
    for t in tail {
        let v = serde_json::to_value(&t).unwrap_or(Value::Null);
        let size = llmo_core::engine::limits::json_size(&v, VALUE_BYTES);
        let (v, size) = if size > VALUE_BYTES {
            let marker = json!({"version": t.version, "at": t.at, "event": {"event": event_kind(&v), "truncated": true, "bytes": serde_json::to_string(&v).map_or(size, |s| s.len())}});
            (marker, 256)
        } else {
            (v, size)
        };
        if out.len() == limit || (!out.is_empty() && bytes + size > PAGE_BYTES) {
            break;
        }
        bytes += size;
        out.push(v);
    }
    let next = (out.len() < total).then(|| out.last().and_then(|v| v["version"].as_u64())).flatten();
    (out, next)
}

fn event_kind(transition: &Value) -> Value {
    transition.pointer("/event/event").cloned().unwrap_or(Value::Null)
}

/// A run whose state cannot be rebuilt (its stored workflow no longer validates, its log no
/// longer replays): what is known without the engine, with `unreadable` saying why. Once the
/// dead-letter handler has aborted it (see `Worker::abort`) that is `failed` and the reason;
/// before, the last snapshot's status (its messages are on their way to the dead-letter queue).
fn unreadable(stored: llmo_runtime::store::StoredRun, why: String) -> Reply {
    let snap = &stored.snapshot;
    let (status, version, error, ended_at) = match stored.tail.last() {
        Some(t) => match &t.event {
            llmo_core::engine::Event::Abort { reason } => ("failed", t.version, Some(reason.clone()), Some(t.at)),
            _ => (snap.status.as_str(), t.version, snap.error.clone(), snap.ended_at),
        },
        None => (snap.status.as_str(), snap.version, snap.error.clone(), snap.ended_at),
    };
    tracing::warn!(run = %snap.run_id, %why, "run state cannot be rebuilt");
    reply(
        StatusCode::OK,
        json!({
            "run_id": snap.run_id, "workflow": stored.workflow, "status": status, "version": version,
            "inputs": snap.inputs, "started_at": snap.started_at, "ended_at": ended_at,
            "cost_usd": snap.cost_usd, "tokens": snap.tokens, "outputs": null, "error": error, "tasks": [],
            "unreadable": why,
        }),
    )
}

/// A read refused for its cost: 429 (the tenant's places for expensive reads are taken) or
/// 503 (the replay ran out of time; its progress was kept), with `Retry-After`.
pub(crate) fn read_refused(e: ReadError) -> Reply {
    let (status, after) = match &e {
        ReadError::Busy { retry_after, .. } => (StatusCode::TOO_MANY_REQUESTS, retry_after.as_secs().max(1)),
        _ => (StatusCode::SERVICE_UNAVAILABLE, 1),
    };
    let mut r = problem(status, e.to_string());
    r.headers_mut().insert("retry-after", after.into());
    r
}

pub(crate) fn no_run(id: &str) -> Reply {
    problem(StatusCode::NOT_FOUND, format!("no run `{id}`"))
}

/// A route, with the role it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    RegisterWorkflow,
    ListWorkflows,
    StartRun,
    ListRuns,
    GetRun(&'a str),
    History(&'a str),
    Cancel(&'a str),
    Redrive(&'a str),
    Rerun(&'a str),
    /// `POST /runs/{id}/tasks/{task}/complete`.
    Complete(&'a str, &'a str),
    Events,
    Waiting,
    /// `POST /answer`: an approval answered through its single-use link (no bearer).
    Answer,
    Audit,
    Sweep,
    OpenApi,
    Metrics,
    Costs,
}

/// At most this many runs are summed by one `GET /costs`.
pub const COST_RUNS: usize = 50_000;

/// The API's OpenAPI 3.1 description (`docs/openapi.json`; a test checks it names exactly the
/// routes [`Route::parse`] knows, and the schemathesis run in `make test` checks every answer
/// against it).
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

impl<'a> Route<'a> {
    pub fn parse(method: &Method, parts: &[&'a str]) -> Option<Self> {
        Some(match (method, parts) {
            (&Method::POST, ["workflows"]) => Route::RegisterWorkflow,
            (&Method::GET, ["workflows"]) => Route::ListWorkflows,
            (&Method::POST, ["runs"]) => Route::StartRun,
            (&Method::GET, ["runs"]) => Route::ListRuns,
            (&Method::GET, ["runs", id]) => Route::GetRun(id),
            (&Method::GET, ["runs", id, "history"]) => Route::History(id),
            (&Method::POST, ["runs", id, "cancel"]) => Route::Cancel(id),
            (&Method::POST, ["runs", id, "redrive"]) => Route::Redrive(id),
            (&Method::POST, ["runs", id, "rerun"]) => Route::Rerun(id),
            (&Method::POST, ["runs", id, "tasks", task, "complete"]) => Route::Complete(id, task),
            (&Method::POST, ["events"]) => Route::Events,
            (&Method::GET, ["waiting"]) => Route::Waiting,
            (&Method::POST, ["answer"]) => Route::Answer,
            (&Method::GET, ["audit"]) => Route::Audit,
            (&Method::POST, ["sweep"]) => Route::Sweep,
            (&Method::GET, ["openapi.json"]) => Route::OpenApi,
            (&Method::GET, ["metrics"]) => Route::Metrics,
            (&Method::GET, ["costs"]) => Route::Costs,
            _ => return None,
        })
    }

    pub fn needs(&self) -> Role {
        match self {
            Route::ListWorkflows
            | Route::ListRuns
            | Route::GetRun(_)
            | Route::History(_)
            | Route::OpenApi
            | Route::Costs
            | Route::Waiting => Role::Viewer,
            // Who may answer is the wait's to say (`approvers`; developers when it names none);
            // `POST /answer` is not authenticated by role at all (the link's token is the
            // credential).
            Route::Complete(..) | Route::Answer => Role::Viewer,
            Route::RegisterWorkflow
            | Route::StartRun
            | Route::Cancel(_)
            | Route::Redrive(_)
            | Route::Rerun(_)
            | Route::Events => Role::Developer,
            Route::Audit | Route::Sweep | Route::Metrics => Role::Admin,
        }
    }

    /// The route as the audit trail names it.
    pub fn action(&self) -> &'static str {
        match self {
            Route::RegisterWorkflow => "POST /workflows",
            Route::ListWorkflows => "GET /workflows",
            Route::StartRun => "POST /runs",
            Route::ListRuns => "GET /runs",
            Route::GetRun(_) => "GET /runs/{id}",
            Route::History(_) => "GET /runs/{id}/history",
            Route::Cancel(_) => "POST /runs/{id}/cancel",
            Route::Redrive(_) => "POST /runs/{id}/redrive",
            Route::Rerun(_) => "POST /runs/{id}/rerun",
            Route::Complete(..) => "POST /runs/{id}/tasks/{task}/complete",
            Route::Events => "POST /events",
            Route::Waiting => "GET /waiting",
            Route::Answer => "POST /answer",
            Route::Audit => "GET /audit",
            Route::Sweep => "POST /sweep",
            Route::OpenApi => "GET /openapi.json",
            Route::Metrics => "GET /metrics",
            Route::Costs => "GET /costs",
        }
    }

    fn run(&self) -> Option<&'a str> {
        match self {
            Route::GetRun(id)
            | Route::History(id)
            | Route::Cancel(id)
            | Route::Redrive(id)
            | Route::Rerun(id)
            | Route::Complete(id, _) => Some(id),
            _ => None,
        }
    }
}

impl Api {
    pub fn new(aws: &Aws, executors: Registry, config: Config, mock: bool) -> Self {
        let store = Arc::new(DynamoStore::new(aws.clone()));
        let queue = Arc::new(SqsQueue::new(aws.clone()));
        let mut worker =
            Worker::from_stored(store.clone(), queue.clone(), Arc::new(executors), Arc::new(SystemClock::default()));
        // A cancel or an answer that loses the run's log to a busy worker goes to the fold
        // queue, as a step's events do, instead of racing it (up to `CasRetry::max_lost` lost
        // writes, then a 500).
        worker.fold = SqsQueue::folds(aws.clone()).map(|f| Arc::new(f) as Arc<dyn llmo_runtime::queue::Queue>);
        // Concurrency keys a cancel releases, and the tenants' places for expensive reads, are
        // the fleet's (the step function's), not this process's.
        let flow: Arc<dyn llmo_runtime::flow::Flow> = Arc::new(crate::flow::DynamoFlow::new(aws.clone()));
        worker.flow = flow.clone();
        Api {
            reads: llmo_runtime::reads::Reads::new(flow),
            aws: aws.clone(),
            workflows: store.clone(),
            store,
            queue,
            worker,
            starter: Starter::new(config, mock).with_max_age(aws.lifetime.max_run_ms()),
            audit: Audit::new(aws),
            sweeper: crate::sweep::Sweeper::new(aws, 300_000),
            auth: None,
            metrics: None,
            links: None,
        }
    }

    /// The same API, offering single-use answer links for approvals (`link: true`) signed
    /// with `secret` (at least 32 bytes; `LLMO_LINK_SECRET`, read by the function's main).
    pub fn with_links(mut self, secret: Option<Vec<u8>>) -> Self {
        self.links = secret.filter(|s| s.len() >= 32);
        self
    }

    /// The same API, serving `GET /metrics` (operators) from `handle`'s recorder: the local
    /// API; deployed, metrics go to CloudWatch instead and the route answers 404.
    pub fn with_metrics(mut self, handle: Option<metrics_exporter_prometheus::PrometheusHandle>) -> Self {
        self.metrics = handle;
        self
    }

    /// `GET /costs?by=workflow|tenant&since=7d`: cost, tokens and runs per UTC day and
    /// workflow (or for the tenant), from what the runs recorded, over at most
    /// [`COST_RUNS`] runs (`truncated` when there were more).
    async fn costs(&self, tenant: &str, q: &HashMap<String, String>) -> Reply {
        use llmo_runtime::costs::{By, parse_since, roll_up};
        let by: By = match q.get("by").map_or(Ok(By::Workflow), |v| v.parse()) {
            Ok(b) => b,
            Err(e) => return problem(StatusCode::BAD_REQUEST, e),
        };
        let span = match parse_since(q.get("since").map_or("7d", String::as_str)) {
            Ok(ms) => ms,
            Err(e) => return problem(StatusCode::BAD_REQUEST, format!("`since`: {e}")),
        };
        let since = llmo_runtime::ports::now_ms().saturating_sub(span);
        let (runs, truncated) = match self.store.runs_since(tenant, since, COST_RUNS).await {
            Ok(r) => r,
            Err(e) => return internal(e),
        };
        let rows = roll_up(&runs, by, tenant, since);
        let total = json!({
            "runs": rows.iter().map(|r| r.runs).sum::<u64>(),
            "cost_usd": rows.iter().map(|r| r.cost_usd).sum::<f64>(),
            "tokens": rows.iter().map(|r| r.tokens).sum::<u64>(),
        });
        let by = if by == By::Workflow { "workflow" } else { "tenant" };
        reply(StatusCode::OK, json!({"by": by, "since": since, "rows": rows, "total": total, "truncated": truncated}))
    }

    fn metrics(&self, p: &Principal) -> Reply {
        if !p.operator {
            return problem(StatusCode::FORBIDDEN, "GET /metrics counts every tenant's runs: operators only");
        }
        let Some(h) = &self.metrics else {
            return problem(StatusCode::NOT_FOUND, "this API keeps no metrics (deployed, they go to CloudWatch)");
        };
        let mut r = Response::new(Body::Text(h.render()));
        *r.status_mut() = StatusCode::OK;
        r.headers_mut().insert("content-type", "text/plain; version=0.0.4".parse().expect("header value"));
        r
    }

    /// The same API, authenticating with `auth`.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Answers one request, in an `api` span that continues the caller's trace (a
    /// `traceparent` header) when it sends one.
    /// What the local server lets a request send before the API sees it
    /// ([`crate::local::serve`]): run-page files and unknown routes no body, the answer link
    /// route (unauthenticated: its token is in the body) [`LINK_BODY_BYTES`], every other
    /// route [`BODY_BYTES`] once its token verifies; a request whose token does not verify is
    /// answered 401 before its body is read.
    pub async fn admit(
        &self,
        parts: lambda_http::http::request::Parts,
    ) -> Result<(lambda_http::http::request::Parts, usize), Reply> {
        let path = parts.uri.path().trim_end_matches('/').to_string();
        let segments: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        match Route::parse(&parts.method, &segments) {
            None => Ok((parts, 0)),
            Some(Route::Answer) => Ok((parts, LINK_BODY_BYTES)),
            Some(_) => {
                let Some(auth) = &self.auth else { return Ok((parts, 0)) };
                let req = Request::from_parts(parts, Body::Empty);
                match auth.authenticate(&req).await {
                    Err(AuthError::Unauthenticated(why)) => {
                        let mut r = problem(StatusCode::UNAUTHORIZED, why);
                        r.headers_mut().insert("www-authenticate", "Bearer".parse().expect("header value"));
                        Err(r)
                    }
                    // Verified (the API itself answers what the caller may do).
                    _ => Ok((req.into_parts().0, BODY_BYTES)),
                }
            }
        }
    }

    pub async fn handle(&self, req: Request) -> Reply {
        use tracing::Instrument;
        let name = {
            let parts: Vec<&str> = req.uri().path().split('/').filter(|p| !p.is_empty()).collect();
            match Route::parse(req.method(), &parts) {
                Some(r) => r.action(),
                None if llmo_runtime::ui::asset(req.uri().path()).is_some() => "GET /ui",
                None => "unknown route",
            }
        };
        let span = tracing::info_span!(
            "api",
            otel.name = name,
            otel.kind = "server",
            http.request.method = %req.method(),
            http.route = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            tenant = tracing::field::Empty,
        );
        let parent = req.headers().get("traceparent").and_then(|v| v.to_str().ok());
        llmo_runtime::telemetry::adopt(&span, parent);
        let reply = self.handle_in(req).instrument(span.clone()).await;
        span.record("http.response.status_code", reply.status().as_u16());
        reply
    }

    async fn handle_in(&self, req: Request) -> Reply {
        // The run pages: static files without data (their data comes through the routes
        // below, authenticated), so they are served to anyone.
        if req.method() == Method::GET
            && let Some((content_type, body)) = llmo_runtime::ui::asset(req.uri().path())
        {
            let mut r = Response::new(Body::Text(body.to_string()));
            for (k, v) in llmo_runtime::ui::headers(content_type) {
                r.headers_mut().insert(k, v.parse().expect("header value"));
            }
            return r;
        }
        let path = req.uri().path().trim_end_matches('/').to_string();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let Some(route) = Route::parse(req.method(), &parts) else {
            return problem(StatusCode::NOT_FOUND, format!("no route {} {path}", req.method()));
        };
        let span = tracing::Span::current();
        span.record("http.route", route.action());
        if route == Route::Answer {
            return self.answer_by_link(&req).await;
        }
        let principal = match &self.auth {
            None => Err(AuthError::Unauthenticated("this API has no authentication configured".into())),
            Some(a) => a.authenticate(&req).await,
        };
        let principal = match principal {
            Ok(p) => p,
            Err(AuthError::Unauthenticated(why)) => {
                tracing::info!(route = route.action(), %why, "unauthenticated request");
                let mut r = problem(StatusCode::UNAUTHORIZED, why);
                r.headers_mut().insert("www-authenticate", "Bearer".parse().expect("header value"));
                return r;
            }
            Err(AuthError::Forbidden(why)) => {
                tracing::info!(route = route.action(), %why, "request refused");
                return problem(StatusCode::FORBIDDEN, why);
            }
            Err(AuthError::BadTenant(why)) => return problem(StatusCode::BAD_REQUEST, why),
        };
        let query: HashMap<String, String> = req
            .uri()
            .query()
            .map(|q| {
                q.split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), urlencoding_decode(v)))
                    .collect()
            })
            .unwrap_or_default();
        let (reply, tenant, target) = self.authorized(&req, route, &principal, &query).await;
        llmo_runtime::meter::api_request(route.action(), reply.status().as_u16());
        if let Some(t) = &tenant {
            span.record("tenant", t.as_str());
        }
        let record = Record {
            at: llmo_runtime::ports::now_ms(),
            tenant: tenant.unwrap_or_else(|| principal.tenant.clone()),
            actor: principal.subject.clone(),
            role: principal.role.as_str().into(),
            action: route.action().into(),
            run_id: route.run().map(str::to_string).or_else(|| target.clone().filter(|t| t.starts_with("run-"))),
            target: route.run().map(str::to_string).or(target),
            result: reply.status().as_u16().to_string(),
        };
        if let Err(e) = self.audit.write(&record).await {
            tracing::error!(error = %e, action = record.action, actor = record.actor, "audit record not written");
        }
        reply
    }

    /// `POST /answer` (no bearer: the route has no authorizer): the holder of an approval's
    /// single-use link answers it with the link's `token`; audited with the actor `link`.
    async fn answer_by_link(&self, req: &Request) -> Reply {
        let body: Value = match req.body() {
            Body::Empty => Value::Null,
            b => serde_json::from_slice(b.as_ref()).unwrap_or(Value::Null),
        };
        let (reply, done) = self.complete_by_link(&body).await;
        llmo_runtime::meter::api_request(Route::Answer.action(), reply.status().as_u16());
        if let Some((tenant, run, task)) = done {
            let record = Record {
                at: llmo_runtime::ports::now_ms(),
                tenant,
                actor: "link".into(),
                role: "link".into(),
                action: Route::Answer.action().into(),
                target: Some(format!("{run}/{task}")),
                run_id: Some(run),
                result: reply.status().as_u16().to_string(),
            };
            if let Err(e) = self.audit.write(&record).await {
                tracing::error!(error = %e, action = record.action, "audit record not written");
            }
        }
        reply
    }

    /// Handles a request from an authenticated caller: the reply, the tenant it acted on and
    /// its target (for the audit record).
    async fn authorized(
        &self,
        req: &Request,
        route: Route<'_>,
        p: &Principal,
        query: &HashMap<String, String>,
    ) -> (Reply, Option<String>, Option<String>) {
        let tenant = match p.acting_tenant(query.get("tenant").map(String::as_str)) {
            Ok(t) => t.to_string(),
            Err(e @ crate::auth::AuthError::BadTenant(_)) => {
                return (problem(StatusCode::BAD_REQUEST, e.to_string()), None, None);
            }
            Err(e) => return (problem(StatusCode::FORBIDDEN, e.to_string()), None, None),
        };
        if !p.may(route.needs()) {
            let why = format!(
                "{} needs the {} role (the token grants {})",
                route.action(),
                route.needs().as_str(),
                p.role.as_str()
            );
            return (problem(StatusCode::FORBIDDEN, why), Some(tenant), None);
        }
        let body: Value = match req.body() {
            Body::Empty => Value::Null,
            b => {
                let json = req.headers().get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|v| {
                    v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
                });
                if !json {
                    let r = problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, "a request body must be `application/json`");
                    return (r, Some(tenant), None);
                }
                match serde_json::from_slice(b.as_ref()) {
                    Ok(v) => v,
                    Err(e) => {
                        let r = problem(StatusCode::BAD_REQUEST, format!("request body is not JSON: {e}"));
                        return (r, Some(tenant), None);
                    }
                }
            }
        };
        let header_key = req.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
        if let Some(id) = route.run() {
            if !valid_run_id(id) {
                return (no_run(id), Some(tenant), None);
            }
            // `GET /runs/{id}` checks the tenant of the state it loads anyway; the others ask
            // first (one small read).
            if !matches!(route, Route::GetRun(_)) {
                match self.store.tenant_of(id).await {
                    Ok(Some(t)) if t == tenant => {}
                    Ok(_) => return (no_run(id), Some(tenant), None),
                    Err(e) => return (internal(e), Some(tenant), None),
                }
            }
        }
        let (reply, target) = match route {
            Route::RegisterWorkflow => self.register(&tenant, &body).await,
            Route::ListWorkflows => (self.workflows(&tenant).await, None),
            Route::StartRun => self.start(&tenant, &body, header_key).await,
            Route::ListRuns => (self.list(&tenant, query).await, None),
            Route::GetRun(id) => (self.get(&tenant, id).await, None),
            Route::History(id) => (self.history(id, query).await, None),
            Route::Cancel(id) => (self.cancel(&tenant, id).await, None),
            Route::Redrive(id) => (self.redrive(&tenant, id, &body).await, None),
            Route::Rerun(id) => self.rerun(&tenant, id, &body).await,
            Route::Complete(id, task) => (self.complete(p, &tenant, id, task, &body).await, None),
            Route::Events => (self.events(p, &tenant, &body).await, None),
            Route::Waiting => (self.waiting(p, &tenant).await, None),
            Route::Answer => (self.complete_by_link(&body).await.0, None),
            Route::Audit => (self.read_audit(&tenant, query).await, None),
            Route::Sweep => (self.sweep(p).await, None),
            Route::OpenApi => {
                (reply(StatusCode::OK, serde_json::from_str(OPENAPI).expect("docs/openapi.json is JSON")), None)
            }
            Route::Metrics => (self.metrics(p), None),
            Route::Costs => (self.costs(&tenant, query).await, None),
        };
        (reply, Some(tenant), target)
    }

    async fn register(&self, tenant: &str, body: &Value) -> (Reply, Option<String>) {
        let Some(source) = body.get("source").and_then(Value::as_str) else {
            return (problem(StatusCode::BAD_REQUEST, "`source` (the workflow YAML) is required"), None);
        };
        let checked = match self.starter.check("workflow.yaml", source) {
            Ok(c) => c,
            Err(e) => return (start_error(e), None),
        };
        let name = checked.workflow.metadata.name.clone();
        let reply = match self.workflows.put(tenant, &name, source, llmo_runtime::ports::now_ms()).await {
            Ok(()) => reply(StatusCode::CREATED, json!({"workflow": name, "tasks": checked.workflow.spec.tasks.len()})),
            Err(e) => internal(e),
        };
        (reply, Some(name))
    }

    async fn definition(&self, tenant: &str, name: &str) -> Result<Option<String>, Refusal> {
        self.workflows.get(tenant, name).await.map_err(|e| Box::new(internal(e)))
    }

    async fn workflows(&self, tenant: &str) -> Reply {
        match self.workflows.list(tenant).await {
            Ok(list) => {
                let names: Vec<Value> =
                    list.iter().map(|r| json!({"workflow": r.name, "registered_at": r.registered_at})).collect();
                reply(StatusCode::OK, json!({"workflows": names}))
            }
            Err(e) => internal(e),
        }
    }

    /// Starts a run through the start-a-run use case: from a registered workflow of the tenant
    /// or from `source`.
    async fn start_in(&self, tenant: &str, body: &Value, key: Option<IdempotencyKey>) -> (Reply, Option<String>) {
        let (name, source) =
            match (body.get("source").and_then(Value::as_str), body.get("workflow").and_then(Value::as_str)) {
                (Some(s), _) => (
                    body.get("source_name").and_then(Value::as_str).unwrap_or("workflow.yaml").to_string(),
                    s.to_string(),
                ),
                (None, Some(w)) => match self.definition(tenant, w).await {
                    Ok(Some(s)) => (format!("{w}.yaml"), s),
                    Ok(None) => {
                        return (problem(StatusCode::NOT_FOUND, format!("no workflow `{w}` is registered")), None);
                    }
                    Err(r) => return (*r, None),
                },
                (None, None) => {
                    return (problem(StatusCode::BAD_REQUEST, "give `workflow` (a registered name) or `source`"), None);
                }
            };
        let inputs = match body.get("inputs") {
            None | Some(Value::Null) => Default::default(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return (problem(StatusCode::BAD_REQUEST, "`inputs` must be an object"), None),
        };
        let req = StartRequest { tenant: Some(tenant.to_string()), inputs, key };
        match self.starter.start(&*self.store, &*self.queue, &name, &source, &req).await {
            Ok(s) => {
                let status = if s.created { StatusCode::CREATED } else { StatusCode::OK };
                let target = Some(s.run_id.clone());
                (reply(status, json!({"run_id": s.run_id, "workflow": s.workflow, "created": s.created})), target)
            }
            Err(e) => (start_error(e), None),
        }
    }

    async fn start(&self, tenant: &str, body: &Value, header_key: Option<String>) -> (Reply, Option<String>) {
        let key = header_key.or_else(|| body.get("idempotency_key").and_then(Value::as_str).map(str::to_string));
        let key = match key.as_deref().map(IdempotencyKey::client).transpose() {
            Ok(k) => k,
            Err(e) => return (start_error(e), None),
        };
        self.start_in(tenant, body, key).await
    }

    /// Starts the run a trigger asks for (what `llmo infra` generates; see
    /// `llmo_core::triggers`):
    /// - an EventBridge Scheduler tick: `{"tenant", "workflow", "inputs", "idempotency_key"}`
    ///   (or a scheduled rule's event with that as its `detail`); the key (schedule and
    ///   scheduled time) is the start's idempotency key;
    /// - an EventBridge rule's delivery: `{"tenant", "workflow", "trigger", "event"}`: the
    ///   inputs are the registered workflow's trigger's templates over the event, and the event's
    ///   id is the idempotency key.
    ///
    /// Keys are in their own key spaces (schedule, event): no client can take them.
    /// In a `schedule` span: the root of the run's trace (EventBridge carries no context).
    pub async fn start_scheduled(&self, event: &Value) -> Result<Value, String> {
        use tracing::Instrument;
        let span = tracing::info_span!("schedule", otel.kind = "consumer", run_id = tracing::field::Empty);
        let r = self.start_scheduled_in(event).instrument(span.clone()).await;
        if let Ok(v) = &r
            && let Some(id) = v.get("run_id").and_then(Value::as_str)
        {
            span.record("run_id", id);
        }
        r
    }

    async fn start_scheduled_in(&self, event: &Value) -> Result<Value, String> {
        let body = match event.get("detail") {
            Some(d) if d.get("workflow").is_some() => d.clone(),
            _ => event.clone(),
        };
        let tenant = body.get("tenant").and_then(Value::as_str).unwrap_or_default().to_string();
        let tenant = tenant.as_str();
        if !crate::auth::valid_tenant(tenant) {
            return Err(format!("the trigger names no valid `tenant` (got `{tenant}`)"));
        }
        let workflow = body.get("workflow").and_then(Value::as_str).unwrap_or_default().to_string();
        let (body, key) = if let (Some(trigger), Some(ev)) =
            (body.get("trigger").and_then(Value::as_str), body.get("event"))
        {
            let source = match self.definition(tenant, &workflow).await {
                Ok(Some(s)) => s,
                Ok(None) => return Err(format!("no workflow `{workflow}` is registered for tenant `{tenant}`")),
                Err(r) => return Err(String::from_utf8_lossy(r.body().as_ref()).into_owned()),
            };
            let checked = self.starter.check(&format!("{workflow}.yaml"), &source).map_err(|e| e.to_string())?;
            let t = checked
                .workflow
                .spec
                .events
                .iter()
                .find(|t| t.name == trigger)
                .ok_or_else(|| format!("workflow `{workflow}` has no event trigger `{trigger}`"))?;
            let inputs = llmo_core::triggers::event_inputs(t, ev)?;
            let id = ev.get("id").and_then(Value::as_str).ok_or("the event has no `id`")?;
            let key = IdempotencyKey::system(KeySpace::Event, &format!("{workflow}:{trigger}:{id}"));
            (json!({"source": source, "source_name": format!("{workflow}.yaml"), "inputs": inputs}), Some(key))
        } else {
            // Scoped by workflow, so two schedules' ticks at the same time never share a key.
            let key = match (event.get("idempotency_key").or_else(|| body.get("idempotency_key")), event.get("id")) {
                (Some(k), _) => {
                    k.as_str().map(|k| IdempotencyKey::system(KeySpace::Schedule, &format!("{workflow}:{k}")))
                }
                (None, Some(id)) => {
                    id.as_str().map(|k| IdempotencyKey::system(KeySpace::Schedule, &format!("{workflow}:{k}")))
                }
                _ => None,
            };
            (body, key)
        };
        let (r, _) = self.start_in(tenant, &body, key).await;
        let ok = r.status().is_success();
        let text = String::from_utf8_lossy(r.body().as_ref()).into_owned();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if ok {
            tracing::info!(result = %v, tenant, workflow, "triggered run started");
            Ok(v)
        } else {
            Err(v.to_string())
        }
    }

    async fn list(&self, tenant: &str, q: &HashMap<String, String>) -> Reply {
        let limit = match q.get("limit").map(|l| l.parse::<i32>()) {
            None => None,
            Some(Ok(l)) if (1..=1000).contains(&l) => Some(l),
            Some(_) => return problem(StatusCode::BAD_REQUEST, "`limit` is a number from 1 to 1000"),
        };
        let f = ListFilter {
            tenant: tenant.to_string(),
            workflow: q.get("workflow").cloned(),
            status: q.get("status").cloned(),
            limit,
            cursor: q.get("cursor").cloned(),
        };
        match self.store.list_page(&f).await {
            Ok(page) => {
                let runs: Vec<Value> = page
                    .runs
                    .iter()
                    .map(|r| json!({"run_id": r.run_id, "workflow": r.workflow, "status": r.status, "started_at": r.started_at, "cost_usd": r.cost_usd, "tokens": r.tokens}))
                    .collect();
                reply(StatusCode::OK, json!({"runs": runs, "next": page.next}))
            }
            Err(llmo_runtime::store::Error::Invalid(why)) => problem(StatusCode::BAD_REQUEST, why),
            Err(e) => internal(e),
        }
    }

    /// The run `id` of `tenant` (another tenant's run is no run).
    async fn get(&self, tenant: &str, id: &str) -> Reply {
        let stored = match self.store.load(id).await {
            Ok(Some(s)) if s.snapshot.tenant.as_deref().unwrap_or("-") == tenant => s,
            Ok(_) => return no_run(id),
            Err(e) => return internal(e),
        };
        let checked = match self.starter.check(&stored.source_name, &stored.source) {
            Ok(c) => c,
            Err(e) => return unreadable(stored, format!("the stored workflow of {id} no longer validates: {e}")),
        };
        let plan = Arc::new(Plan::new(checked));
        let workflow = stored.workflow.clone();
        let st = match self.reads.state(self.store.as_ref(), tenant, plan.clone(), stored.clone()).await {
            Ok(s) => s,
            Err(ReadError::Store(e)) => return unreadable(stored, e.to_string()),
            Err(e) => return read_refused(e),
        };
        reply(StatusCode::OK, llmo_runtime::view::run(&plan, &workflow, &st))
    }

    /// The current state of `stored`, a run of `tenant` (see [`llmo_runtime::reads`]); a
    /// log that does not replay is a 409.
    pub(crate) async fn state_of(&self, tenant: &str, plan: Arc<Plan>, stored: StoredRun) -> Result<RunState, Refusal> {
        let id = stored.snapshot.run_id.clone();
        match self.reads.state(self.store.as_ref(), tenant, plan, stored).await {
            Ok(st) => Ok(st),
            Err(ReadError::Store(e)) => {
                Err(Box::new(problem(StatusCode::CONFLICT, format!("the log of {id} does not replay: {e}"))))
            }
            Err(e) => Err(Box::new(read_refused(e))),
        }
    }

    /// A page of the run's log: `after` (a version, default 0) and `limit` (1 to 1,000,
    /// default 500) transitions, at most [`PAGE_BYTES`] of them; `next` is where the next page
    /// starts (`after=next`), absent on the last. A transition larger than [`VALUE_BYTES`]
    /// comes back with its event replaced by a `truncated` marker.
    async fn history(&self, id: &str, q: &HashMap<String, String>) -> Reply {
        let after = match q.get("after").map(|v| v.parse::<u64>()) {
            None => 0,
            Some(Ok(v)) => v,
            Some(Err(_)) => return problem(StatusCode::BAD_REQUEST, "`after` is a version (a whole number)"),
        };
        let limit = match q.get("limit").map(|v| v.parse::<usize>()) {
            None => 500,
            Some(Ok(v)) if (1..=1000).contains(&v) => v,
            Some(_) => return problem(StatusCode::BAD_REQUEST, "`limit` is a whole number from 1 to 1000"),
        };
        let tail = match self.store.load_since(id, after).await {
            Ok(Some(t)) => t,
            Ok(None) => return no_run(id),
            Err(e) => return internal(e),
        };
        let (transitions, next) = history_page(tail, limit);
        let mut body = json!({"run_id": id, "transitions": transitions});
        if let Some(n) = next {
            body["next"] = json!(n);
        }
        reply(StatusCode::OK, body)
    }

    /// Runs the sweeper once; it acts on every tenant's runs, so only operators may.
    async fn sweep(&self, p: &Principal) -> Reply {
        if !p.operator {
            return problem(StatusCode::FORBIDDEN, "POST /sweep acts on every tenant's runs: operators only");
        }
        match self.sweeper.sweep_now().await {
            Ok(out) => reply(StatusCode::OK, serde_json::to_value(out).unwrap_or(Value::Null)),
            Err(e) => internal(e),
        }
    }

    async fn cancel(&self, tenant: &str, id: &str) -> Reply {
        // Read first at a bounded cost (the worker below replays on this thread): a dear log
        // is replayed under the tenant's cap and left as a snapshot for the worker.
        if let Ok(Some(stored)) = self.store.load(id).await
            && let Ok(checked) = self.starter.check(&stored.source_name, &stored.source)
            && let Err(e @ (ReadError::Busy { .. } | ReadError::Slow { .. })) =
                self.reads.state(self.store.as_ref(), tenant, Arc::new(Plan::new(checked)), stored).await
        {
            return read_refused(e);
        }
        let d = Delivery {
            receipt: String::new(),
            message: Message::Event { run_id: id.to_string(), event: Event::Cancel },
            receive_count: 1,
            trace: llmo_runtime::telemetry::traceparent(),
        };
        match self.worker.handle(&d).await {
            Ok(_) => self.get(tenant, id).await,
            Err(llmo_runtime::worker::Error::NoSuchRun(_)) => no_run(id),
            Err(e) => internal(e),
        }
    }

    /// `POST /runs/{id}/redrive`: a failed or timed-out run continues from its failed tasks
    /// (those that succeeded keep their outputs); 409 for a run in any other state.
    /// With `{"inputs": {..}}`, the run's inputs are edited for the tasks that run again
    /// (checked against the workflow's declarations; recorded with the redrive).
    async fn redrive(&self, tenant: &str, id: &str, body: &Value) -> Reply {
        let edits = match body.get("inputs") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m.clone()),
            Some(_) => return problem(StatusCode::BAD_REQUEST, "`inputs` is an object of input names to values"),
        };
        let stored = match self.store.load(id).await {
            Ok(Some(s)) => s,
            Ok(None) => return no_run(id),
            Err(e) => return internal(e),
        };
        let plan = match self.starter.check(&stored.source_name, &stored.source) {
            Ok(c) => Arc::new(Plan::new(c)),
            Err(e) => {
                return problem(StatusCode::CONFLICT, format!("the stored workflow of {id} no longer validates: {e}"));
            }
        };
        let st = match self.state_of(tenant, plan.clone(), stored).await {
            Ok(s) => s,
            Err(refusal) => return *refusal,
        };
        if !matches!(st.status, RunStatus::Failed | RunStatus::TimedOut) {
            return problem(
                StatusCode::CONFLICT,
                format!("{id} is {}: only a failed or timed-out run is redriven", st.status.as_str()),
            );
        }
        if let Some(e) = &edits
            && let Err(errors) = llmo_core::inputs::check_edits(&plan.checked.workflow.spec.inputs, &st.inputs, e)
        {
            return start_error(StartError::Inputs(errors));
        }
        let d = Delivery {
            receipt: String::new(),
            message: Message::Event {
                run_id: id.to_string(),
                event: Event::Redrive { after: st.version, inputs: edits },
            },
            receive_count: 1,
            trace: llmo_runtime::telemetry::traceparent(),
        };
        match self.worker.handle(&d).await {
            Ok(_) => self.get(tenant, id).await,
            Err(e) => internal(e),
        }
    }

    /// `POST /runs/{id}/rerun` with `{"from": TASK}`: a new run of the same workflow and inputs
    /// that reuses this run's recorded outputs and runs TASK and everything downstream of it
    /// again (201, the new run's id; its `rerun_of` names this run).
    async fn rerun(&self, tenant: &str, id: &str, body: &Value) -> (Reply, Option<String>) {
        let Some(from) = body.get("from").and_then(Value::as_str) else {
            return (problem(StatusCode::BAD_REQUEST, "`from` (the task to run again from) is required"), None);
        };
        let stored = match self.store.load(id).await {
            Ok(Some(s)) => s,
            Ok(None) => return (no_run(id), None),
            Err(e) => return (internal(e), None),
        };
        let plan = match self.starter.check(&stored.source_name, &stored.source) {
            Ok(c) => Arc::new(Plan::new(c)),
            Err(e) => return (start_error(e), None),
        };
        let (source_name, source) = (stored.source_name.clone(), stored.source.clone());
        let st = match self.state_of(tenant, plan, stored).await {
            Ok(s) => s,
            Err(refusal) => return (*refusal, None),
        };
        let prepared = match self.starter.prepare_rerun(&source_name, &source, &st, from) {
            Ok(p) => p,
            Err(e) => return (start_error(e), None),
        };
        let started = match self.starter.create(self.store.as_ref(), &prepared).await {
            Ok(s) => s,
            Err(e) => return (start_error(e), None),
        };
        let start = Message::Event { run_id: started.run_id.clone(), event: Event::Start };
        if let Err(e) = llmo_runtime::queue::Queue::send(self.queue.as_ref(), &start, 0).await {
            return (internal(e), Some(started.run_id));
        }
        let reused = prepared.state.ended_tasks;
        let r = reply(
            StatusCode::CREATED,
            json!({"run_id": started.run_id, "workflow": started.workflow, "rerun_of": {"run_id": id, "from": from}, "reused_tasks": reused}),
        );
        (r, Some(started.run_id))
    }

    async fn read_audit(&self, tenant: &str, q: &HashMap<String, String>) -> Reply {
        let num =
            |k: &str| q.get(k).map(|v| v.parse::<u64>().map_err(|_| format!("`{k}` is milliseconds since the epoch")));
        let now = llmo_runtime::ports::now_ms();
        let (until, since) = match (num("until").transpose(), num("since").transpose()) {
            (Ok(u), Ok(s)) => {
                let until = u.unwrap_or(now);
                (until, s.unwrap_or(until.saturating_sub(86_400_000)))
            }
            (Err(e), _) | (_, Err(e)) => return problem(StatusCode::BAD_REQUEST, e),
        };
        if let Err(e) = audit::check_range(since, until) {
            return problem(StatusCode::BAD_REQUEST, e);
        }
        let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
            None => 100,
            Some(Ok(l)) if (1..=1000).contains(&l) => l,
            Some(_) => return problem(StatusCode::BAD_REQUEST, "`limit` is a number from 1 to 1000"),
        };
        let run_id = q.get("run").cloned();
        if run_id.as_deref().is_some_and(|r| !valid_run_id(r)) {
            return problem(StatusCode::BAD_REQUEST, "`run` is not a run id");
        }
        let query = audit::Query { tenant: tenant.to_string(), run_id, since, until, limit };
        match self.audit.read(&query).await {
            Ok(records) => {
                reply(StatusCode::OK, json!({"tenant": tenant, "since": since, "until": until, "records": records}))
            }
            Err(e) => internal(e),
        }
    }
}

/// Whether `id` can be a run id (1-128 of `A-Za-z0-9_.-`): anything else is no run, without
/// asking the store (whose keys have their own limits).
fn valid_run_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// The answer to a start (or a validation) the use case refused.
fn start_error(e: StartError) -> Reply {
    match e {
        StartError::Invalid(outcome) => {
            let errors: Vec<Value> = outcome
                .report
                .records()
                .into_iter()
                .map(|r| json!({"file": r.file, "line": r.line, "column": r.column, "field": r.path, "code": r.code, "message": r.message}))
                .collect();
            reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": "the workflow does not validate", "diagnostics": errors}),
            )
        }
        StartError::Inputs(errors) => {
            let list: Vec<Value> =
                errors.iter().map(|e| json!({"input": e.input, "path": e.path, "message": e.message})).collect();
            reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": "inputs do not match the workflow", "inputs": list}),
            )
        }
        StartError::BadKey(why) => problem(StatusCode::BAD_REQUEST, why),
        StartError::Rerun(why) => problem(StatusCode::CONFLICT, why),
        e @ StartError::KeyReused => problem(StatusCode::CONFLICT, e.to_string()),
        e @ (StartError::Store(_) | StartError::Queue(_)) => internal(e),
    }
}

/// Decodes `%xx` and `+` in a query value.
fn urlencoding_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() + 1
                && s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()).is_some() =>
            {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).expect("checked"));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route, once.
    const ALL: [Route<'static>; 18] = [
        Route::RegisterWorkflow,
        Route::ListWorkflows,
        Route::StartRun,
        Route::ListRuns,
        Route::GetRun("x"),
        Route::History("x"),
        Route::Cancel("x"),
        Route::Redrive("x"),
        Route::Rerun("x"),
        Route::Audit,
        Route::Sweep,
        Route::OpenApi,
        Route::Metrics,
        Route::Costs,
        Route::Complete("x", "t"),
        Route::Events,
        Route::Waiting,
        Route::Answer,
    ];

    #[test]
    fn the_openapi_description_names_exactly_the_routes() {
        let doc: Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented: Vec<String> = Vec::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                let m: Method = method.to_uppercase().parse().unwrap();
                let concrete = path.replace("{id}", "x").replace("{task}", "t");
                let parts: Vec<&str> = concrete.split('/').filter(|p| !p.is_empty()).collect();
                let route = Route::parse(&m, &parts).unwrap_or_else(|| panic!("{method} {path} is no route"));
                assert_eq!(route.action(), format!("{} {path}", m.as_str()), "{method} {path}");
                if route == Route::Answer {
                    // The link's token is the credential: no role, no 403.
                    assert_eq!(op["security"], json!([]), "{method} {path}");
                    assert!(op["responses"].get("401").is_some());
                    documented.push(route.action().to_string());
                    continue;
                }
                let role = route.needs().as_str();
                assert!(
                    op["description"].as_str().unwrap().contains(&format!("`{role}`")),
                    "{method} {path} documents its role ({role})"
                );
                for code in ["401", "403"] {
                    assert!(op["responses"].get(code).is_some(), "{method} {path} documents {code}");
                }
                documented.push(route.action().to_string());
            }
        }
        documented.sort();
        let mut routes: Vec<String> = ALL.iter().map(|r| r.action().to_string()).collect();
        routes.sort();
        assert_eq!(documented, routes);
    }
}

#[cfg(test)]
mod paging_tests {
    use super::*;
    use llmo_core::engine::Event;
    use llmo_runtime::store::Transition;
    use llmo_runtime::view::bounded;

    fn t(version: u64, reason_bytes: usize) -> Transition {
        Transition::new(version, version * 10, Event::Abort { reason: "r".repeat(reason_bytes) })
    }

    #[test]
    fn history_pages_by_count_and_bytes_and_truncates_huge_transitions() {
        let tail: Vec<Transition> = (1..=7).map(|v| t(v, 10)).collect();
        let (page, next) = history_page(tail.clone(), 3);
        assert_eq!(page.len(), 3);
        assert_eq!(next, Some(3));
        let (page, next) = history_page(tail, 10);
        assert_eq!((page.len(), next), (7, None));
        // 200 KB each: a 4 MB page holds 20 of 30.
        let big: Vec<Transition> = (1..=30).map(|v| t(v, 200 * 1024)).collect();
        let (page, next) = history_page(big, 1000);
        assert_eq!((page.len(), next), (20, Some(20)));
        // One transition over the value limit: a marker in its place.
        let (page, next) = history_page(vec![t(1, 300 * 1024), t(2, 5)], 10);
        assert_eq!(next, None);
        assert_eq!(page[0]["event"]["truncated"], true);
        assert_eq!(page[0]["event"]["event"], "abort");
        assert!(page[0]["event"]["bytes"].as_u64().unwrap() > 300 * 1024);
        assert_eq!(page[1]["event"]["reason"], "rrrrr");
    }

    #[test]
    fn values_over_the_limit_come_back_as_markers() {
        assert_eq!(bounded(Some(&json!({"a": 1}))), json!({"a": 1}));
        assert_eq!(bounded(None), Value::Null);
        let big = json!({"text": "x".repeat(VALUE_BYTES)});
        let m = bounded(Some(&big));
        assert_eq!(m["truncated"], true);
        assert_eq!(m["bytes"], json!(VALUE_BYTES + 11));
    }
}
