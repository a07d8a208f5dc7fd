//! The API over plain HTTP (what API Gateway does deployed): `llmo serve` and the `api`
//! function's `--local` mode. Cross-site requests are refused, bodies are read only once a
//! request is admitted, and headers, bodies and connections are bounded ([`ServeLimits`]).

use std::future::Future;
use std::net::SocketAddr;

use crate::{Body, Request, Response};

/// Whether a request may reach the local API: a web page a developer visits must not be able
/// to drive the API on their machine. Refused: a `Host` other than the address served (or
/// `localhost` on its port, or one in `LLMO_ALLOWED_HOSTS`), which stops DNS rebinding; an
/// `Origin` other than the API's own; a browser's `Sec-Fetch-Site` of `cross-site` or
/// `same-site`. (The API itself requires `application/json` bodies, which a page cannot send
/// to another origin without a CORS preflight this server never grants.)
pub fn same_site(addr: SocketAddr, headers: &http::HeaderMap, extra_hosts: &[String]) -> Result<(), String> {
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
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// A request's headers must arrive within this (a client that sends half a request
    /// and waits is dropped).
    pub header_timeout: std::time::Duration,
    /// Its body, once admitted, within this.
    pub body_timeout: std::time::Duration,
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// `Host`s served besides the bound address and `localhost` on its port
    /// (`LLMO_ALLOWED_HOSTS`, read by the main).
    pub allowed_hosts: Vec<String>,
}

impl ServeLimits {
    /// The default limits, serving also the `Host`s of a comma-separated list (the value of
    /// `LLMO_ALLOWED_HOSTS`, which each main reads).
    pub fn allowing(hosts: &str) -> Self {
        let allowed_hosts = hosts.split(',').map(str::trim).filter(|h| !h.is_empty()).map(str::to_string).collect();
        ServeLimits { allowed_hosts, ..Default::default() }
    }
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_timeout: std::time::Duration::from_secs(10),
            body_timeout: std::time::Duration::from_secs(30),
            max_connections: 256,
            allowed_hosts: Vec::new(),
        }
    }
}

/// Serves `handler` over HTTP on `addr` (API Gateway's part, locally), refusing cross-site
/// requests ([`same_site`]). Before a body is read, `admit` sees the request's head and says
/// how many bytes of body it may have (an authenticated request: the API's 16 MiB; the
/// unauthenticated routes: what they need) or answers it at once (a request without a valid
/// token gets its 401 without its body being read). Headers and bodies must arrive within
/// [`ServeLimits`], and at most `max_connections` are open at once.
///
/// A `GET` request is first offered to `stream`: when it answers `Some`, the response streams
/// (`text/event-stream`: `GET /runs/{id}/events`, see [`crate::api::events`]) or is the
/// refusal it gives; `None` sends the request on to `handler`.
pub async fn serve<A, AFut, F, Fut, S, SFut>(
    addr: SocketAddr,
    limits: ServeLimits,
    admit: A,
    handler: F,
    stream: S,
) -> std::io::Result<()>
where
    A: Fn(http::request::Parts) -> AFut + Clone + Send + Sync + 'static,
    AFut: Future<Output = Result<(http::request::Parts, usize), Response>> + Send,
    F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send,
    S: Fn(Request) -> SFut + Clone + Send + Sync + 'static,
    SFut: Future<Output = Option<Result<crate::api::events::EventStream, Response>>> + Send,
{
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve_on(listener, limits, admit, handler, stream, std::future::pending()).await
}

/// [`serve`] on a bound listener until `shutdown` resolves; then no connection is accepted,
/// and the ones open are given up to 10 s to finish the requests they are in (streams end
/// with the server).
pub async fn serve_on<A, AFut, F, Fut, S, SFut>(
    listener: tokio::net::TcpListener,
    limits: ServeLimits,
    admit: A,
    handler: F,
    stream: S,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    A: Fn(http::request::Parts) -> AFut + Clone + Send + Sync + 'static,
    AFut: Future<Output = Result<(http::request::Parts, usize), Response>> + Send,
    F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send,
    S: Fn(Request) -> SFut + Clone + Send + Sync + 'static,
    SFut: Future<Output = Option<Result<crate::api::events::EventStream, Response>>> + Send,
{
    let extra = limits.allowed_hosts.clone();
    let body_timeout = limits.body_timeout;

    let addr = listener.local_addr()?;
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (handler, admit, extra, stream) = (handler.clone(), admit.clone(), extra.clone(), stream.clone());
        async move {
            let refuse = |status: u16, msg: String| {
                axum::response::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(serde_json::json!({"error": msg}).to_string()))
                    .expect("valid response")
            };
            let reply = |resp: Response| {
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
            if parts.method == http::Method::GET {
                match stream(Request::from_parts(parts.clone(), Body::Empty)).await {
                    None => {}
                    Some(Err(resp)) => return reply(resp),
                    Some(Ok(chunks)) => {
                        let body = futures::StreamExt::map(chunks, Ok::<_, std::convert::Infallible>);
                        return axum::response::Response::builder()
                            .status(200)
                            .header("content-type", "text/event-stream")
                            .header("cache-control", "no-store")
                            .header("x-accel-buffering", "no")
                            .body(axum::body::Body::from_stream(body))
                            .expect("valid response");
                    }
                }
            }
            let bytes = match tokio::time::timeout(body_timeout, axum::body::to_bytes(body, limit)).await {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => return refuse(413, format!("request body: {e} (at most {limit} bytes here)")),
                Err(_) => {
                    return refuse(408, format!("the request body did not arrive within {body_timeout:?}"));
                }
            };
            // Handed over without a copy.
            let body = if bytes.is_empty() { Body::Empty } else { Body::Binary(Vec::from(bytes)) };
            reply(handler(Request::from_parts(parts, body)).await)
        }
    });
    tracing::info!(%addr, "api listening");
    let open = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => break,
        };
        let (stream, _) = match accepted {
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
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    // Every permit back: the open connections have ended (idle ones end at the header
    // timeout), or 10 s passed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), open.acquire_many(all)).await;
    tracing::info!(%addr, "api stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server whose gate admits 1 KiB of body with `authorization: ok` and answers 401
    /// to anything else, on a free port.
    async fn server(limits: ServeLimits) -> SocketAddr {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let admit = |parts: http::request::Parts| async move {
            if parts.headers.get("authorization").is_some_and(|v| v == "ok") {
                Ok((parts, 1024))
            } else {
                Err(http::Response::builder().status(401).body(Body::Empty).unwrap())
            }
        };
        let handler = |req: Request| async move {
            let n = match req.body() {
                Body::Binary(b) => b.len(),
                _ => 0,
            };
            http::Response::builder().status(200).body(Body::Text(n.to_string())).unwrap()
        };
        tokio::spawn(serve(addr, limits, admit, handler, |_| async { None }));
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
            allowed_hosts: Vec::new(),
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
        let extra = ServeLimits::allowing(" api.internal:8080, ,llmo.lan:8080 ").allowed_hosts;
        assert_eq!(extra, ["api.internal:8080", "llmo.lan:8080"]);
        assert!(same_site(addr, &headers(&[("host", "llmo.lan:8080")]), &extra).is_ok());
    }
}
