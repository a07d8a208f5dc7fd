//! `llmo run --ui` and `--metrics-addr`: the run page and Prometheus metrics served from the
//! process that runs the workflow.
//!
//! The page is the API's (`llmo_runtime::ui`), fed by `GET /runs` and `GET /runs/{id}` read
//! from this process's run store. Those routes need the bearer token this process made at start
//! (128 random bits), which the printed link carries in its fragment (`#token=`, never sent
//! over the network); the listener is on loopback unless told otherwise. `/metrics` has no
//! token: bind it to loopback.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use llmo_core::engine::Plan;
use llmo_core::source::SourceFile;
use llmo_core::validate::Validator;
use llmo_runtime::store::{RunStore, rebuild};
use serde_json::json;

#[derive(Clone)]
struct Ui {
    store: Arc<dyn RunStore>,
    token: Arc<str>,
    /// Event streams open now (at most [`MAX_STREAMS`]).
    streams: Arc<std::sync::atomic::AtomicUsize>,
}

/// Most event streams this page server keeps open at once.
const MAX_STREAMS: usize = 16;

/// A random token for one process's page.
pub fn token() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("random token: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Binds `addr` and serves the run pages of `store`'s runs on it, in the background. Returns
/// the address bound.
pub async fn ui(addr: &str, store: Arc<dyn RunStore>, token: &str) -> Result<SocketAddr> {
    let addr: SocketAddr = addr.parse().with_context(|| format!("--ui {addr}: an address like 127.0.0.1:8090"))?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("--ui: binding {addr}"))?;
    let bound = listener.local_addr()?;
    let state = Ui { store, token: Arc::from(token), streams: Default::default() };
    let app = axum::Router::new()
        .route("/runs", axum::routing::get(list))
        .route("/runs/{id}", axum::routing::get(get))
        .route("/runs/{id}/events", axum::routing::get(events))
        .fallback(asset)
        .with_state(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the run page server stopped");
        }
    });
    Ok(bound)
}

/// Binds `addr` and serves `GET /metrics` (this process's Prometheus registry) on it.
pub async fn metrics(addr: &str, handle: metrics_exporter_prometheus::PrometheusHandle) -> Result<SocketAddr> {
    let addr: SocketAddr =
        addr.parse().with_context(|| format!("--metrics-addr {addr}: an address like 127.0.0.1:9464"))?;
    if !addr.ip().is_loopback() {
        anyhow::bail!("--metrics-addr {addr}: the metrics have no authentication; serve them on loopback (127.0.0.1)");
    }
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("--metrics-addr: binding {addr}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let h = handle.clone();
            async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.render()) }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(bound)
}

fn json_reply(status: StatusCode, v: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

fn problem(status: StatusCode, msg: impl Into<String>) -> Response {
    json_reply(status, json!({"error": msg.into()}))
}

fn authorized(ui: &Ui, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    // Compared in constant time: the token is the only thing guarding the page.
    let ok = given.is_some_and(|g| {
        g.len() == ui.token.len() && g.bytes().zip(ui.token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    });
    if ok {
        Ok(())
    } else {
        let mut r = problem(StatusCode::UNAUTHORIZED, "this page needs the token its link carries");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("header value"));
        Err(Box::new(r))
    }
}

async fn list(State(ui): State<Ui>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&ui, &headers) {
        return *r;
    }
    match ui.store.list().await {
        Ok(runs) => {
            let runs: Vec<_> = runs
                .iter()
                .take(1000)
                .map(|r| json!({"run_id": r.run_id, "workflow": r.workflow, "status": r.status, "started_at": r.started_at, "cost_usd": r.cost_usd, "tokens": r.tokens}))
                .collect();
            json_reply(StatusCode::OK, json!({"runs": runs, "next": null}))
        }
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A stored run and its plan.
async fn load(ui: &Ui, id: &str) -> Result<(Plan, llmo_runtime::store::StoredRun), Response> {
    let stored = match ui.store.load(id).await {
        Ok(Some(s)) => s,
        Ok(None) => return Err(problem(StatusCode::NOT_FOUND, format!("no run `{id}`"))),
        Err(e) => return Err(problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    };
    let source = SourceFile::new(stored.source_name.clone(), stored.source.clone());
    let Some(checked) = Validator::shared().validate(&source).checked else {
        return Err(problem(StatusCode::CONFLICT, format!("the stored workflow of `{id}` no longer validates")));
    };
    Ok((Plan::new(checked), stored))
}

/// `GET /runs/{id}/events`: the run's events as server-sent events, as the API serves them
/// (`llmo_api::api::events`), to the holder of this page's token.
async fn events(State(ui): State<Ui>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    use std::sync::atomic::Ordering;
    if let Err(r) = authorized(&ui, &headers) {
        return *r;
    }
    let (plan, _) = match load(&ui, &id).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let after = match headers.get("last-event-id").and_then(|v| v.to_str().ok()).filter(|v| !v.trim().is_empty()) {
        None => llmo_runtime::stream::EventId::default(),
        Some(s) => match llmo_runtime::stream::EventId::parse(&id, s) {
            Ok(a) => a,
            Err(e) => return problem(StatusCode::BAD_REQUEST, e),
        },
    };
    if ui.streams.fetch_add(1, Ordering::SeqCst) >= MAX_STREAMS {
        ui.streams.fetch_sub(1, Ordering::SeqCst);
        return problem(StatusCode::TOO_MANY_REQUESTS, format!("{MAX_STREAMS} event streams are open; retry later"));
    }
    /// Gives the stream's place back when the stream goes.
    struct Held(Arc<std::sync::atomic::AtomicUsize>);
    impl Drop for Held {
        fn drop(&mut self) {
            self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let held = Held(ui.streams.clone());
    let follower = match llmo_runtime::stream::Follower::start(ui.store.clone(), Arc::new(plan), &id, after).await {
        Ok(f) if f.seen_all() => return StatusCode::NO_CONTENT.into_response(),
        Ok(f) => f,
        Err(e) => return problem(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let chunks = follower.into_sse(llmo_runtime::stream::Follow::default());
    let body = futures::StreamExt::map(chunks, move |c| {
        let _held = &held;
        Ok::<_, std::convert::Infallible>(c)
    });
    let mut r = axum::body::Body::from_stream(body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, "text/event-stream".parse().expect("header value"));
    r.headers_mut().insert(header::CACHE_CONTROL, "no-store".parse().expect("header value"));
    r
}

async fn get(State(ui): State<Ui>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = authorized(&ui, &headers) {
        return *r;
    }
    let (plan, stored) = match load(&ui, &id).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let workflow = stored.workflow.clone();
    match rebuild(&plan, stored) {
        Ok(st) => json_reply(StatusCode::OK, llmo_runtime::view::run(&plan, &workflow, &st)),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn asset(uri: axum::http::Uri) -> Response {
    match llmo_runtime::ui::asset(uri.path()) {
        Some((content_type, body)) => {
            let mut r = body.into_response();
            for (k, v) in llmo_runtime::ui::headers(content_type) {
                r.headers_mut().insert(k, v.parse().expect("header value"));
            }
            r
        }
        None => problem(StatusCode::NOT_FOUND, format!("no page {}", uri.path())),
    }
}
