//! Local modes: the same handlers Lambda runs, fed the same event types by a queue poller
//! (what Lambda's SQS event source mapping does) and by a plain HTTP server (what API
//! Gateway does), so the whole system runs on a laptop against LocalStack/moto.

use std::future::Future;
use std::net::SocketAddr;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_http::{Body, Request};

use crate::sqs::SqsQueue;

/// Polls `queue` in batches of up to `batch`, hands each batch to `handler` and deletes the
/// records it did not report as failed, until `stop` resolves.
pub async fn poll<F, Fut>(queue: &SqsQueue, batch: usize, handler: F, stop: impl Future<Output = ()>)
where
    F: Fn(SqsEvent) -> Fut,
    Fut: Future<Output = SqsBatchResponse>,
{
    tokio::pin!(stop);
    loop {
        // Checked between receives, never by dropping one: SQS would still hand the messages
        // of an abandoned long poll to it, and they would wait out their visibility timeout.
        if futures::FutureExt::now_or_never(&mut stop).is_some() {
            return;
        }
        let records = queue.receive_records(batch).await;
        let mut records = match records {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "receive failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
        };
        if records.is_empty() {
            continue;
        }
        // A batching window: fill the batch from further receives (each a billed request) for
        // up to the window from the first message, as the event source mapping does.
        if queue.batch_window_secs > 0 {
            let until = std::time::Instant::now() + std::time::Duration::from_secs(queue.batch_window_secs as u64);
            while records.len() < batch {
                let left = until.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                // SQS waits whole seconds: the last wait may end a little past the window.
                let wait = left.as_secs_f64().ceil() as i32;
                match queue.receive_records_waiting(batch - records.len(), wait).await {
                    Ok(more) => records.extend(more),
                    Err(e) => {
                        tracing::warn!(error = %e, "receive failed; handing over the batch so far");
                        break;
                    }
                }
            }
        }
        let mut event = SqsEvent::default();
        event.records = records;
        let receipts: Vec<(String, String)> = event
            .records
            .iter()
            .map(|r| (r.message_id.clone().unwrap_or_default(), r.receipt_handle.clone().unwrap_or_default()))
            .collect();
        let resp = handler(event).await;
        let done: Vec<String> = receipts
            .into_iter()
            .filter(|(id, _)| !resp.batch_item_failures.iter().any(|f| &f.item_identifier == id))
            .map(|(_, r)| r)
            .collect();
        if let Err(e) = queue.delete_batch(&done).await {
            tracing::warn!(error = %e, "delete failed; the messages come back and are handled again");
        }
    }
}

/// [`poll`] over several queues at once (the step function's step and fold queues, the
/// dead-letter function's two dead-letter queues), with one handler, until `stop` resolves.
pub async fn poll_queues<F, Fut>(queues: &[SqsQueue], batch: usize, handler: F, stop: impl Future<Output = ()>)
where
    F: Fn(SqsEvent) -> Fut,
    Fut: Future<Output = SqsBatchResponse>,
{
    use futures::FutureExt;
    let stop = stop.shared();
    let polls = queues.iter().map(|q| poll(q, batch, &handler, stop.clone()));
    futures::future::join_all(polls).await;
}

/// Whether a request may reach the local API: a web page a developer visits must not be able
/// to drive the API on their machine. Refused: a `Host` other than the address served (or
/// `localhost` on its port, or one in `LLMO_ALLOWED_HOSTS`), which stops DNS rebinding; an
/// `Origin` other than the API's own; a browser's `Sec-Fetch-Site` of `cross-site` or
/// `same-site`. (The API itself requires `application/json` bodies, which a page cannot send
/// to another origin without a CORS preflight this server never grants.)
pub fn same_site(
    addr: SocketAddr,
    headers: &lambda_http::http::HeaderMap,
    extra_hosts: &[String],
) -> Result<(), String> {
    let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    let port = addr.port();
    let mut hosts =
        vec![addr.to_string(), format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("[::1]:{port}")];
    hosts.extend(extra_hosts.iter().cloned());
    let host = get("host").ok_or("the request has no Host header")?;
    if !hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return Err(format!("Host `{host}` is not this API's address"));
    }
    if let Some(origin) = get("origin")
        && !hosts.iter().any(|h| origin.eq_ignore_ascii_case(&format!("http://{h}")))
    {
        return Err(format!("cross-site request from `{origin}` refused"));
    }
    if let Some(site) = get("sec-fetch-site")
        && (site == "cross-site" || site == "same-site")
    {
        return Err("cross-site request refused".into());
    }
    Ok(())
}

/// How much the local API server gives one request and all of them.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// A request's headers must arrive within this (a client that sends half a request
    /// and waits is dropped).
    pub header_timeout: std::time::Duration,
    /// Its body, once admitted, within this.
    pub body_timeout: std::time::Duration,
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_timeout: std::time::Duration::from_secs(10),
            body_timeout: std::time::Duration::from_secs(30),
            max_connections: 256,
        }
    }
}

/// Serves `handler` over HTTP on `addr` (API Gateway's part, locally), refusing cross-site
/// requests ([`same_site`]). Before a body is read, `admit` sees the request's head and says
/// how many bytes of body it may have (an authenticated request: the API's 16 MiB; the
/// unauthenticated routes: what they need) or answers it at once (a request without a valid
/// token gets its 401 without its body being read). Headers and bodies must arrive within
/// [`ServeLimits`], and at most `max_connections` are open at once.
pub async fn serve<A, AFut, F, Fut>(addr: SocketAddr, limits: ServeLimits, admit: A, handler: F) -> std::io::Result<()>
where
    A: Fn(lambda_http::http::request::Parts) -> AFut + Clone + Send + Sync + 'static,
    AFut: Future<Output = Result<(lambda_http::http::request::Parts, usize), lambda_http::Response<Body>>> + Send,
    F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = lambda_http::Response<Body>> + Send,
{
    let extra: Vec<String> = std::env::var("LLMO_ALLOWED_HOSTS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (handler, admit, extra) = (handler.clone(), admit.clone(), extra.clone());
        async move {
            let refuse = |status: u16, msg: String| {
                axum::response::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(serde_json::json!({"error": msg}).to_string()))
                    .expect("valid response")
            };
            let reply = |resp: lambda_http::Response<Body>| {
                let (parts, body) = resp.into_parts();
                axum::response::Response::from_parts(parts, axum::body::Body::from(body.to_vec()))
            };
            if let Err(why) = same_site(addr, req.headers(), &extra) {
                return refuse(403, why);
            }
            let (parts, body) = req.into_parts();
            let (parts, limit) = match admit(parts).await {
                Ok(p) => p,
                Err(resp) => return reply(resp),
            };
            let bytes = match tokio::time::timeout(limits.body_timeout, axum::body::to_bytes(body, limit)).await {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => return refuse(413, format!("request body: {e} (at most {limit} bytes here)")),
                Err(_) => {
                    return refuse(408, format!("the request body did not arrive within {:?}", limits.body_timeout));
                }
            };
            // Handed over without a copy.
            let body = if bytes.is_empty() { Body::Empty } else { Body::Binary(Vec::from(bytes)) };
            reply(handler(Request::from_parts(parts, body)).await)
        }
    });
    tracing::info!(%addr, "api listening");
    let open = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tracing::warn!(max = limits.max_connections, "connection refused: too many open");
            drop(stream);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended");
            }
            drop(permit);
        });
    }
}

/// A handler of SQS batches (`step`, `dlq`).
pub trait SqsHandler: Send + Sync + 'static {
    fn handle(&self, event: SqsEvent) -> impl Future<Output = SqsBatchResponse> + Send;
}

impl SqsHandler for crate::step::Step {
    fn handle(&self, event: SqsEvent) -> impl Future<Output = SqsBatchResponse> + Send {
        crate::step::Step::handle(self, event)
    }
}

impl SqsHandler for crate::step::DeadLetters {
    fn handle(&self, event: SqsEvent) -> impl Future<Output = SqsBatchResponse> + Send {
        crate::step::DeadLetters::handle(self, event)
    }
}

/// The `main` of an SQS-triggered function: under Lambda, `lambda_runtime` over `handler`,
/// flushing metrics and spans after each invocation; with `--local [--batch N]` in the
/// arguments, polls `queue` itself with the same handler until Ctrl-C (and serves its
/// Prometheus metrics on `LLMO_METRICS_ADDR` when set).
pub async fn sqs_function<H: SqsHandler>(
    name: &str,
    handler: H,
    queues: Vec<SqsQueue>,
    obs: crate::env::Observability,
) -> Result<(), lambda_runtime::Error> {
    let handler = std::sync::Arc::new(handler);
    let obs = std::sync::Arc::new(obs);
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--local") {
        let batch = args.iter().position(|a| a == "--batch").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(10);
        if let Some(addr) = std::env::var("LLMO_METRICS_ADDR").ok().filter(|a| !a.is_empty()) {
            let addr: SocketAddr = addr.parse().map_err(|e| format!("LLMO_METRICS_ADDR {addr}: {e}"))?;
            if !addr.ip().is_loopback() {
                return Err(
                    format!("LLMO_METRICS_ADDR {addr}: the metrics have no authentication; use loopback").into()
                );
            }
            let obs = obs.clone();
            let listener = tokio::net::TcpListener::bind(addr).await?;
            tokio::spawn(serve_metrics(listener, move || obs.prometheus().unwrap_or_default()));
        }
        let urls: Vec<&str> = queues.iter().map(|q| q.url.as_str()).collect();
        tracing::info!(queues = ?urls, batch, "{name}: polling locally");
        poll_queues(&queues, batch, |e| handler.handle(e), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
        return Ok(());
    }
    lambda_runtime::run(lambda_runtime::service_fn(move |e: lambda_runtime::LambdaEvent<SqsEvent>| {
        let (handler, obs) = (handler.clone(), obs.clone());
        async move {
            let out = handler.handle(e.payload).await;
            obs.flush().await;
            Ok::<_, lambda_runtime::Error>(out)
        }
    }))
    .await
}

/// Serves `GET /metrics` (Prometheus text exposition of `render()`) on `listener`, for a
/// process that has no API of its own (a local step worker). Callers bind it to loopback
/// only: it has no authentication.
pub async fn serve_metrics<F>(listener: tokio::net::TcpListener, render: F) -> std::io::Result<()>
where
    F: Fn() -> String + Clone + Send + Sync + 'static,
{
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let render = render.clone();
            async move { ([("content-type", "text/plain; version=0.0.4")], render()) }
        }),
    );
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_http::http::HeaderMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server whose gate admits 1 KiB of body with `authorization: ok` and answers 401
    /// to anything else, on a free port.
    async fn server(limits: ServeLimits) -> SocketAddr {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let admit = |parts: lambda_http::http::request::Parts| async move {
            if parts.headers.get("authorization").is_some_and(|v| v == "ok") {
                Ok((parts, 1024))
            } else {
                Err(lambda_http::Response::builder().status(401).body(Body::Empty).unwrap())
            }
        };
        let handler = |req: Request| async move {
            let n = match req.body() {
                Body::Binary(b) => b.len(),
                _ => 0,
            };
            lambda_http::Response::builder().status(200).body(Body::Text(n.to_string())).unwrap()
        };
        tokio::spawn(serve(addr, limits, admit, handler));
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return addr;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("the server did not start");
    }

    /// Sends `head` (and nothing more) and reads what comes back until the server closes
    /// the connection or `within` passes.
    async fn exchange(addr: SocketAddr, head: &str, within: std::time::Duration) -> Option<String> {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(head.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(within, c.read_to_end(&mut out)).await.ok()?.ok()?;
        Some(String::from_utf8_lossy(&out).into_owned())
    }

    /// The local API reads no body for a request it will refuse: a client announcing 15 MiB
    /// without a token gets its 401 at once, without sending them; an admitted body over its
    /// limit is refused; a body that never comes, and headers that never end, are cut off.
    #[tokio::test]
    async fn bodies_are_read_only_when_admitted_and_slow_clients_are_cut_off() {
        let limits = ServeLimits {
            header_timeout: std::time::Duration::from_millis(500),
            body_timeout: std::time::Duration::from_millis(500),
            max_connections: 16,
        };
        let addr = server(limits).await;
        let host = format!("Host: {addr}\r\n");
        let big = format!("POST /runs HTTP/1.1\r\n{host}Content-Length: 15728640\r\nConnection: close\r\n\r\n");
        let got = exchange(addr, &big, std::time::Duration::from_secs(5)).await.expect("answered without the body");
        assert!(got.starts_with("HTTP/1.1 401"), "{got}");
        let over = format!(
            "POST /runs HTTP/1.1\r\n{host}authorization: ok\r\nContent-Length: 2048\r\nConnection: close\r\n\r\n{}",
            "x".repeat(2048)
        );
        let got = exchange(addr, &over, std::time::Duration::from_secs(5)).await.unwrap();
        assert!(got.starts_with("HTTP/1.1 413"), "{got}");
        let ok = format!(
            "POST /runs HTTP/1.1\r\n{host}authorization: ok\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        );
        let got = exchange(addr, &ok, std::time::Duration::from_secs(5)).await.unwrap();
        assert!(got.starts_with("HTTP/1.1 200") && got.ends_with("5"), "{got}");
        // Admitted, then the body stalls: 408 after the body timeout.
        let stalled = format!("POST /runs HTTP/1.1\r\n{host}authorization: ok\r\nContent-Length: 100\r\n\r\nabc");
        let got = exchange(addr, &stalled, std::time::Duration::from_secs(5)).await.expect("cut off");
        assert!(got.starts_with("HTTP/1.1 408"), "{got}");
        // Half a request's headers: the connection is closed after the header timeout.
        let half = format!("GET /runs HTTP/1.1\r\n{host}X-Slow: 1");
        let started = std::time::Instant::now();
        assert!(exchange(addr, &half, std::time::Duration::from_secs(5)).await.is_some(), "closed");
        assert!(started.elapsed() < std::time::Duration::from_secs(4), "{:?}", started.elapsed());
    }

    /// Past `max_connections` open connections, a new one is closed at once; the ones open
    /// are served.
    #[tokio::test]
    async fn connections_past_the_cap_are_closed() {
        let limits = ServeLimits {
            header_timeout: std::time::Duration::from_secs(30),
            max_connections: 2,
            ..ServeLimits::default()
        };
        let addr = server(limits).await;
        let (mut a, _b) =
            (tokio::net::TcpStream::connect(addr).await.unwrap(), tokio::net::TcpStream::connect(addr).await.unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(std::time::Duration::from_secs(3), third.read(&mut buf)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "the third connection is closed: {n:?}");
        a.write_all(
            format!("GET /x HTTP/1.1\r\nHost: {addr}\r\nauthorization: ok\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        a.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cross_site_requests_are_refused() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let ok = |h: &[(&'static str, &str)]| same_site(addr, &headers(h), &[]).is_ok();
        assert!(ok(&[("host", "127.0.0.1:8080")]));
        assert!(ok(&[
            ("host", "localhost:8080"),
            ("origin", "http://localhost:8080"),
            ("sec-fetch-site", "same-origin")
        ]));
        assert!(!ok(&[]), "no Host");
        assert!(!ok(&[("host", "evil.example:8080")]), "DNS rebinding");
        assert!(!ok(&[("host", "127.0.0.1:8080"), ("origin", "https://evil.example")]));
        assert!(!ok(&[("host", "127.0.0.1:8080"), ("origin", "null")]));
        assert!(!ok(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")]));
        assert!(same_site(addr, &headers(&[("host", "api.internal:8080")]), &["api.internal:8080".into()]).is_ok());
    }
}
