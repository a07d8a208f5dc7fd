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
//! | `GET /runs/{id}/events` | viewer | the run's events as server-sent events, live ([`events`]) |
//! | `POST /runs/{id}/cancel` | developer | cancels (stored before the answer; `on.failure` hooks run) |
//! | `GET /waiting` | viewer | tasks waiting for an approval or an event ([`crate::answers`]) |
//! | `POST /runs/{id}/tasks/{task}/complete` | the wait's approvers | approves or rejects, once |
//! | `POST /events` `{"name", "key", "payload"}` | developer | resumes the tasks waiting for it |
//! | `POST /bus/events` `{"source", "detail-type", "detail", "id"?}` | developer | starts the runs whose registered workflows' event triggers match ([`bus`]) |
//! | `POST /answer` `{"token", ..}` | none: the link's token | an approval answered by its link |
//! | `GET /audit?run=&since=&until=&limit=` | admin | the audit trail, oldest first |
//! | `POST /sweep` | admin and operator | runs the sweeper once over every tenant's runs (`llmo sweep`) |
//! | `GET /openapi.json` | viewer | the API's OpenAPI 3.1 description (`docs/openapi.json`) |
//!
//! Another tenant's run is a 404, as if it did not exist. An admin who is also an `operator`
//! may add `?tenant=T` to act on tenant T. Every authenticated request is audited.

use std::collections::HashMap;
use std::sync::Arc;

use http::{Method, StatusCode};
use llmo_core::engine::{Event, Plan, RunState, RunStatus};
use llmo_runtime::queue::{Delivery, Message};
use llmo_runtime::reads::ReadError;
use llmo_runtime::start::{IdempotencyKey, KeySpace, StartError, StartRequest, Starter};
use llmo_runtime::store::{RunStore, StoredRun};
use llmo_runtime::worker::Worker;
use serde_json::{Value, json};

use llmo_runtime::audit::{self, AuditLog, Record};
use llmo_runtime::store::ListFilter;

use crate::auth::{Auth, AuthError, Principal, Role};
use crate::{Body, Request};
use http::Response;

mod admin;
pub mod bus;
pub mod events;
mod routes;
mod runs;

pub use routes::Route;
pub use runs::{StartRefused, Wanted};

/// The API over its ports. The serverless deployment builds it on DynamoDB, SQS and S3
/// (`llmo_aws::api::build`), `llmo serve` on SQLite ([`crate::local`]).
pub struct Api {
    /// The run store; the API uses it only as the port.
    pub store: Arc<dyn RunStore>,
    /// Listings, tenants of runs, runs since a time.
    pub index: Arc<dyn llmo_runtime::store::RunIndex>,
    /// Registered definitions (`POST /workflows`), by tenant and name.
    pub workflows: Arc<dyn llmo_runtime::workflows::Workflows>,
    /// Where starts, answers and cancels send their messages (the step queue deployed).
    pub queue: Arc<dyn llmo_runtime::queue::Queue>,
    /// Applies cancels and answers to runs (compare-and-set on their logs).
    pub worker: Worker,
    pub starter: Starter,
    /// The audit trail (`GET /audit`; every authenticated request is a record).
    pub audit: Arc<dyn AuditLog>,
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
    /// Registered workflows' event triggers, as last validated (`POST /bus/events`).
    pub triggers: bus::Triggers,
    /// The event streams open (`GET /runs/{id}/events`) and their limits.
    pub streams: Arc<events::Streams>,
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
/// Most bytes of a `POST /callbacks/{token}` body (an answer's output is at most 256 KiB).
pub const CALLBACK_BODY_BYTES: usize = 320 * 1024;
/// Most bytes of transitions in one page of `GET /runs/{id}/history`.
pub const PAGE_BYTES: usize = 4 << 20;

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

/// At most this many runs are summed by one `GET /costs`.
pub const COST_RUNS: usize = 50_000;

/// The API's OpenAPI 3.1 description (`docs/openapi.json`; a test checks it names exactly the
/// routes [`Route::parse`] knows, and the schemathesis run in `make test` checks every answer
/// against it).
pub const OPENAPI: &str = include_str!("../../../../docs/openapi.json");

impl Api {
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

    /// The same API, authenticating with `auth`.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Answers one request, in an `api` span that continues the caller's trace (a
    /// `traceparent` header) when it sends one.
    /// What the local server lets a request send before the API sees it
    /// ([`crate::server::serve`]): run-page files and unknown routes no body, the answer link
    /// route (unauthenticated: its token is in the body) [`LINK_BODY_BYTES`], every other
    /// route [`BODY_BYTES`] once its token verifies; a request whose token does not verify is
    /// answered 401 before its body is read.
    pub async fn admit(&self, parts: http::request::Parts) -> Result<(http::request::Parts, usize), Reply> {
        let path = parts.uri.path().trim_end_matches('/').to_string();
        let segments: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        match Route::parse(&parts.method, &segments) {
            None => Ok((parts, 0)),
            Some(Route::Answer) => Ok((parts, LINK_BODY_BYTES)),
            // The task token is the credential (a bearer, if sent, is checked by the route).
            Some(Route::Callback(_) | Route::Heartbeat(_)) => Ok((parts, CALLBACK_BODY_BYTES)),
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
        let started = std::time::Instant::now();
        let reply = self.handle_in(req).instrument(span.clone()).await;
        span.record("http.response.status_code", reply.status().as_u16());
        if name != "GET /ui" && name != "unknown route" {
            llmo_runtime::meter::api_request(name, reply.status().as_u16(), started.elapsed().as_secs_f64());
        }
        reply
    }

    async fn handle_in(&self, req: Request) -> Reply {
        // A request's audit record carries the time it arrived: before anything it caused
        // (a run's status changes are recorded as they happen).
        let arrived = llmo_runtime::ports::now_ms();
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
            return self.answer_by_link(&req, arrived).await;
        }
        if let Route::Callback(token) | Route::Heartbeat(token) = route {
            return self.callback(&req, token, matches!(route, Route::Heartbeat(_)), arrived).await;
        }
        let principal = match self.principal(&req, route).await {
            Ok(p) => p,
            Err(r) => return *r,
        };
        let query = query_of(&req);
        let (reply, tenant, target) = self.authorized(&req, route, &principal, &query).await;
        if let Some(t) = &tenant {
            span.record("tenant", t.as_str());
        }
        self.audited(arrived, route, &principal, tenant, target, reply.status()).await;
        reply
    }

    /// Who made `req` (for `route`): its bearer token verified, or the refusal (401, 403, 400).
    pub(crate) async fn principal(&self, req: &Request, route: Route<'_>) -> Result<Principal, Refusal> {
        let principal = match &self.auth {
            None => Err(AuthError::Unauthenticated("this API has no authentication configured".into())),
            Some(a) => a.authenticate(req).await,
        };
        match principal {
            Ok(p) => Ok(p),
            Err(AuthError::Unauthenticated(why)) => {
                tracing::info!(route = route.action(), %why, "unauthenticated request");
                let mut r = problem(StatusCode::UNAUTHORIZED, why);
                r.headers_mut().insert("www-authenticate", "Bearer".parse().expect("header value"));
                Err(Box::new(r))
            }
            Err(AuthError::Forbidden(why)) => {
                tracing::info!(route = route.action(), %why, "request refused");
                Err(Box::new(problem(StatusCode::FORBIDDEN, why)))
            }
            Err(AuthError::BadTenant(why)) => Err(Box::new(problem(StatusCode::BAD_REQUEST, why))),
        }
    }

    /// Writes the audit record of an authenticated request.
    pub(crate) async fn audited(
        &self,
        arrived: u64,
        route: Route<'_>,
        principal: &Principal,
        tenant: Option<String>,
        target: Option<String>,
        status: StatusCode,
    ) {
        let record = Record {
            at: arrived,
            tenant: tenant.unwrap_or_else(|| principal.tenant.clone()),
            actor: principal.subject.clone(),
            role: principal.role.as_str().into(),
            action: route.action().into(),
            run_id: route.run().map(str::to_string).or_else(|| target.clone().filter(|t| t.starts_with("run-"))),
            target: route.run().map(str::to_string).or(target),
            result: status.as_u16().to_string(),
        };
        if let Err(e) = self.audit.write(&record).await {
            tracing::error!(error = %e, action = record.action, actor = record.actor, "audit record not written");
        }
    }

    /// `POST /answer` (no bearer: the route has no authorizer): the holder of an approval's
    /// single-use link answers it with the link's `token`; audited with the actor `link`.
    async fn answer_by_link(&self, req: &Request, arrived: u64) -> Reply {
        let body: Value = match req.body() {
            Body::Empty => Value::Null,
            b => serde_json::from_slice(b.as_ref()).unwrap_or(Value::Null),
        };
        let (reply, done) = self.complete_by_link(&body).await;
        if let Some((tenant, run, task)) = done {
            let record = Record {
                at: arrived,
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
        let tenant = match self.gate(route, p, query).await {
            Ok(t) => t,
            Err((r, tenant)) => return (*r, tenant, None),
        };
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
        let (reply, target) = match route {
            Route::RegisterWorkflow => self.register(&tenant, &body).await,
            Route::ListWorkflows => (self.workflows(&tenant).await, None),
            Route::StartRun => self.start(&tenant, &body, header_key).await,
            Route::ListRuns => (self.list(&tenant, query).await, None),
            Route::GetRun(id) => (self.get(&tenant, id).await, None),
            Route::History(id) => (self.history(id, query).await, None),
            Route::RunEvents(id) => (self.events_now(&tenant, id, req).await, None),
            Route::Cancel(id) => (self.cancel(&tenant, id).await, None),
            Route::Redrive(id) => (self.redrive(&tenant, id, &body).await, None),
            Route::Rerun(id) => self.rerun(&tenant, id, &body).await,
            Route::Complete(id, task) => (self.complete(p, &tenant, id, task, &body).await, None),
            Route::Events => (self.events(p, &tenant, &body).await, None),
            Route::BusEvent => self.bus_event(&tenant, &body).await,
            Route::Waiting => (self.waiting(p, &tenant).await, None),
            Route::Answer => (self.complete_by_link(&body).await.0, None),
            // Answered before authentication (`handle_in`): never here.
            Route::Callback(_) | Route::Heartbeat(_) => {
                (problem(StatusCode::NOT_FOUND, "callbacks are answered with their token"), None)
            }
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

    /// The tenant `p` acts on for `route`, if it may: it has the route's role, and the run
    /// the route names is of that tenant (another tenant's run is no run: 404).
    pub(crate) async fn gate(
        &self,
        route: Route<'_>,
        p: &Principal,
        query: &HashMap<String, String>,
    ) -> Result<String, (Refusal, Option<String>)> {
        let tenant = match p.acting_tenant(query.get("tenant").map(String::as_str)) {
            Ok(t) => t.to_string(),
            Err(e @ AuthError::BadTenant(_)) => {
                return Err((Box::new(problem(StatusCode::BAD_REQUEST, e.to_string())), None));
            }
            Err(e) => return Err((Box::new(problem(StatusCode::FORBIDDEN, e.to_string())), None)),
        };
        if !p.may(route.needs()) {
            let why = format!(
                "{} needs the {} role (the token grants {})",
                route.action(),
                route.needs().as_str(),
                p.role.as_str()
            );
            return Err((Box::new(problem(StatusCode::FORBIDDEN, why)), Some(tenant)));
        }
        if let Some(id) = route.run() {
            if !valid_run_id(id) {
                return Err((Box::new(no_run(id)), Some(tenant)));
            }
            // `GET /runs/{id}` checks the tenant of the state it loads anyway; the others ask
            // first (one small read).
            if !matches!(route, Route::GetRun(_)) {
                match self.index.tenant_of(id).await {
                    Ok(Some(t)) if t == tenant => {}
                    Ok(_) => return Err((Box::new(no_run(id)), Some(tenant))),
                    Err(e) => return Err((Box::new(internal(e)), Some(tenant))),
                }
            }
        }
        Ok(tenant)
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
/// A request's query parameters, decoded.
pub(crate) fn query_of(req: &Request) -> HashMap<String, String> {
    req.uri()
        .query()
        .map(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), urlencoding_decode(v)))
                .collect()
        })
        .unwrap_or_default()
}

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
mod tests;
