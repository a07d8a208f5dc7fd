//! `GET /runs/{id}/events`: the run's events as server-sent events
//! ([`llmo_runtime::stream`]): every transition with the run's status and the tasks it
//! changed, then the run's end with its outputs. A viewer of the run's tenant may follow it;
//! another tenant's run is a 404. `Last-Event-ID` (or `?last_event_id=`, for clients that
//! cannot set headers) resumes after the event it names: malformed, another run's, or past
//! the run's last, it is a 400.
//!
//! Served live where responses stream (`llmo serve`, the `api` function's `--local` mode:
//! [`crate::server`]): at most [`Streams::per_process`] streams at once, and
//! [`Streams::per_tenant`] per tenant (429 beyond, with `Retry-After`). Through a server that
//! does not stream ([`Api::handle`]), the route answers the events there are now and ends; the
//! client's `EventSource` reconnects after `retry` with its `Last-Event-ID` and misses
//! nothing. A client whose `Last-Event-ID` is the run's end gets a 204: nothing more will come
//! (an `EventSource` then stops reconnecting).

use std::pin::Pin;
use std::sync::Mutex;

use futures::StreamExt;

use llmo_runtime::stream::{EventId, Follow, FollowError, Follower};

use super::*;

/// A stream's chunks of `text/event-stream`.
pub type EventStream = Pin<Box<dyn futures::Stream<Item = String> + Send>>;

/// The streams open at once, and their limits.
#[derive(Debug)]
pub struct Streams {
    /// Most streams open in this process.
    pub per_process: usize,
    /// Most streams open of one tenant in this process.
    pub per_tenant: usize,
    /// How followers read and when they stop.
    pub follow: Follow,
    open: Mutex<HashMap<String, usize>>,
}

impl Default for Streams {
    fn default() -> Self {
        Streams::new(64, 16, Follow::default())
    }
}

impl Streams {
    pub fn new(per_process: usize, per_tenant: usize, follow: Follow) -> Self {
        Streams { per_process, per_tenant, follow, open: Mutex::default() }
    }

    /// A place for one more stream of `tenant`, or why not.
    fn take(self: &Arc<Self>, tenant: &str) -> Result<Slot, String> {
        let mut open = self.open.lock().expect("streams");
        let all: usize = open.values().sum();
        if all >= self.per_process {
            return Err(format!("{all} event streams are open here, the most this server keeps; retry later"));
        }
        let mine = open.entry(tenant.to_string()).or_default();
        if *mine >= self.per_tenant {
            return Err(format!("the tenant has {mine} event streams open, the most it may; retry later"));
        }
        *mine += 1;
        Ok(Slot { streams: self.clone(), tenant: tenant.to_string() })
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.open.lock().expect("streams").values().sum()
    }
}

/// One stream's place: given back when the stream is dropped (the client went, or it ended).
struct Slot {
    streams: Arc<Streams>,
    tenant: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().expect("streams");
        if let Some(n) = open.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

/// The answer to a client that has seen the run's end: 204, after which an `EventSource`
/// stops reconnecting.
fn all_seen() -> Reply {
    Response::builder().status(StatusCode::NO_CONTENT).body(Body::Empty).expect("valid response")
}

/// What a client waits before reconnecting to a stream that ended (`retry:`), in ms.
const RETRY_MS: u64 = 1000;

impl Api {
    /// The event stream `req` asks for when it is `GET /runs/{id}/events` (`None` for any
    /// other request): authenticated, authorized and audited as every route, within the
    /// stream limits.
    pub async fn open_events(&self, req: &Request) -> Option<Result<EventStream, Reply>> {
        let path = req.uri().path().trim_end_matches('/').to_string();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let route @ Route::RunEvents(id) = Route::parse(req.method(), &parts)? else { return None };
        let arrived = llmo_runtime::ports::now_ms();
        let principal = match self.principal(req, route).await {
            Ok(p) => p,
            Err(r) => return Some(Err(*r)),
        };
        let query = query_of(req);
        let opened = async {
            let tenant = self.gate(route, &principal, &query).await.map_err(|(r, t)| (*r, t))?;
            let slot = self.streams.take(&tenant).map_err(|why| {
                let mut r = problem(StatusCode::TOO_MANY_REQUESTS, why);
                r.headers_mut().insert("retry-after", 5.into());
                (r, Some(tenant.clone()))
            })?;
            let follower = self.follower(&tenant, id, req).await.map_err(|r| (r, Some(tenant.clone())))?;
            if follower.seen_all() {
                return Err((all_seen(), Some(tenant)));
            }
            Ok::<_, (Reply, Option<String>)>((tenant, slot, follower))
        };
        let (status, tenant, out) = match opened.await {
            Ok((tenant, slot, follower)) => {
                let chunks = follower.into_sse(self.streams.follow.clone());
                let first = futures::stream::once(async move { format!("retry: {RETRY_MS}\n\n") });
                // The slot goes with the stream: given back when the client goes.
                let stream = first.chain(chunks).map(move |c| {
                    let _held = &slot;
                    c
                });
                (StatusCode::OK, Some(tenant), Ok(Box::pin(stream) as EventStream))
            }
            Err((r, tenant)) => (r.status(), tenant, Err(r)),
        };
        self.audited(arrived, route, &principal, tenant, None, status).await;
        Some(out)
    }

    /// The follower of run `id` of `tenant` after the `Last-Event-ID` of `req`.
    async fn follower(&self, tenant: &str, id: &str, req: &Request) -> Result<Follower, Reply> {
        let last = req
            .headers()
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| query_of(req).get("last_event_id").cloned())
            .filter(|s| !s.trim().is_empty());
        let after = match last {
            None => EventId::default(),
            Some(s) => EventId::parse(id, &s).map_err(|e| problem(StatusCode::BAD_REQUEST, e))?,
        };
        let stored = match self.store.load(id).await {
            Ok(Some(s)) if s.snapshot.tenant.as_deref().unwrap_or("-") == tenant => s,
            Ok(_) => return Err(no_run(id)),
            Err(e) => return Err(internal(e)),
        };
        let checked = self.starter.check(&stored.source_name, &stored.source).map_err(|e| {
            problem(StatusCode::CONFLICT, format!("the stored workflow of {id} no longer validates: {e}"))
        })?;
        let plan = Arc::new(Plan::new(checked));
        match Follower::start(self.store.clone(), plan, id, after).await {
            Ok(f) => Ok(f),
            Err(FollowError::NoSuchRun(_)) => Err(no_run(id)),
            Err(e @ FollowError::Ahead(..)) => Err(problem(StatusCode::BAD_REQUEST, e.to_string())),
            Err(FollowError::Store(e)) => {
                Err(problem(StatusCode::CONFLICT, format!("the log of {id} does not replay: {e}")))
            }
        }
    }

    /// The route where responses do not stream: the events there are now, then the end of
    /// the response (the client reconnects after `retry`).
    pub(super) async fn events_now(&self, tenant: &str, id: &str, req: &Request) -> Reply {
        let mut f = match self.follower(tenant, id, req).await {
            Ok(f) if f.seen_all() => return all_seen(),
            Ok(f) => f,
            Err(r) => return r,
        };
        let frames = match f.poll().await {
            Ok(frames) => frames,
            Err(e) => return internal(e),
        };
        let mut body = format!("retry: {RETRY_MS}\n\n");
        for fr in frames {
            body.push_str(&fr.sse());
        }
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-store")
            .body(Body::Text(body))
            .expect("valid response")
    }
}
