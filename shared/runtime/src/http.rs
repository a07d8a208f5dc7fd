//! The `http` executor: calls a tool or webhook.
//!
//! Headers are rendered here, not by the driver, because they may read `secrets.<NAME>`:
//! secrets never enter the run's state. A workflow reads only the secrets its `spec.secrets`
//! declares, each from the secret source as `LLMO_SECRET_<NAME>` (never from arbitrary
//! environment variables), and sends one only to the hosts declared for it: a request to
//! another host fails before anything is sent, and a redirect to another host drops the
//! headers that carry it. Secret values echoed back in a response are masked before the
//! output or error is stored.
//!
//! Connections follow the [`Egress`] policy (no loopback, link-local or private addresses
//! unless allowed, checked on the resolved address); redirects are followed here, at most
//! [`HttpLimits::max_redirects`], each hop checked. The response body is read as a stream and
//! refused past [`HttpLimits::max_response_bytes`].
//!
//! Every request carries an `Idempotency-Key` that is the same on every attempt and
//! redelivery of one task (one item) of one run. 408, 425, 429, 5xx, timeouts and network
//! errors are retryable; other statuses outside `expect_status` (default: any 2xx) are not;
//! refusals (egress, secrets, size) are not.
//!
//! [`crate::fixtures::MockHttp`] answers offline from fixtures (`llmo run --mock`).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use llmo_core::engine::builtin::TaskError;
use llmo_core::engine::{AttemptResult, Usage};
use llmo_core::tasks::{HttpMethod, HttpWith};
use reqwest::Url;
use serde_json::{Map, Value, json};

use crate::egress::{Egress, refusal};
use crate::executor::{Attempt, Executor, failed};
use crate::secrets::{Grant, Secrets, WORKFLOW_PREFIX};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Bounds on what one `http` attempt may read and follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest response body read (`LLMO_HTTP_MAX_RESPONSE_BYTES`, default 5 MiB).
    pub max_response_bytes: usize,
    /// Most redirects followed (`LLMO_HTTP_MAX_REDIRECTS`, default 5).
    pub max_redirects: u8,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits { max_response_bytes: 5 << 20, max_redirects: 5 }
    }
}

impl HttpLimits {
    /// Read once by a `main`.
    pub fn from_env() -> Result<Self, String> {
        let mut l = HttpLimits::default();
        if let Ok(v) = std::env::var("LLMO_HTTP_MAX_RESPONSE_BYTES") {
            l.max_response_bytes =
                v.parse().map_err(|_| format!("LLMO_HTTP_MAX_RESPONSE_BYTES: `{v}` is not a number of bytes"))?;
        }
        if let Ok(v) = std::env::var("LLMO_HTTP_MAX_REDIRECTS") {
            l.max_redirects = v.parse().map_err(|_| format!("LLMO_HTTP_MAX_REDIRECTS: `{v}` is not a number"))?;
        }
        Ok(l)
    }
}

/// The `with` block; query values rendered from expressions (numbers, booleans) are sent as text.
pub(crate) fn parse_with(a: &Attempt) -> Result<HttpWith, TaskError> {
    let mut with = a.with.clone();
    if let Some(Value::Object(q)) = with.get_mut("query") {
        for v in q.values_mut() {
            if !v.is_string() {
                *v = Value::String(v.to_string());
            }
        }
    }
    serde_json::from_value(with).map_err(|e| TaskError::fatal(format!("http: {e}")))
}

/// The request URL: `url` with `query` appended.
pub(crate) fn request_url(w: &HttpWith) -> Result<Url, TaskError> {
    let mut url = Url::parse(&w.url).map_err(|e| TaskError::fatal(format!("url `{}`: {e}", w.url)))?;
    if !w.query.is_empty() {
        url.query_pairs_mut().extend_pairs(w.query.iter());
    }
    Ok(url)
}

/// A rendered header, with the secrets its value carries.
pub(crate) struct Header {
    name: String,
    value: String,
    secrets: Vec<String>,
}

/// The secrets one request carries: for masking what comes back, and for redirects.
#[derive(Default)]
pub(crate) struct Revealed(Vec<Shown>);

/// A secret in a request: its name, its value, and the hosts the operator allows it towards
/// (if it said).
struct Shown {
    name: String,
    value: String,
    hosts: Option<Vec<String>>,
}

impl Revealed {
    /// Shortest value masked: shorter ones would mask ordinary text.
    const MIN_LEN: usize = 4;

    /// Whether the operator's hosts for secret `name` (if it gave some) cover `host`.
    fn allows(&self, name: &str, host: &str) -> bool {
        self.0
            .iter()
            .filter(|s| s.name == name)
            .all(|s| s.hosts.as_ref().is_none_or(|hs| hs.iter().any(|p| llmo_core::model::host_matches(p, host))))
    }

    fn mask_str(&self, s: &str) -> Option<String> {
        let mut out: Option<String> = None;
        for Shown { name, value, .. } in &self.0 {
            if value.len() >= Self::MIN_LEN && out.as_deref().unwrap_or(s).contains(value.as_str()) {
                out = Some(out.as_deref().unwrap_or(s).replace(value.as_str(), &format!("[redacted secret {name}]")));
            }
        }
        out
    }

    fn mask(&self, v: &mut Value) {
        if self.0.is_empty() {
            return;
        }
        match v {
            Value::String(s) => {
                if let Some(m) = self.mask_str(s) {
                    *s = m;
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| self.mask(x)),
            Value::Object(o) => o.values_mut().for_each(|x| self.mask(x)),
            _ => {}
        }
    }
}

/// Renders the headers with `secrets` added to the context. Each secret must be declared in
/// `spec.secrets` with a host that covers `host`; its value is read from `source` as
/// `LLMO_SECRET_<NAME>`.
pub(crate) async fn headers(
    a: &Attempt,
    w: &HttpWith,
    host: &str,
    source: &dyn Secrets,
) -> Result<(Vec<Header>, Revealed), TaskError> {
    static SECRET: OnceLock<regex::Regex> = OnceLock::new();
    let re = SECRET.get_or_init(|| regex::Regex::new(r"secrets\.([A-Za-z_][A-Za-z0-9_]*)").expect("regex"));
    let declared = &a.plan.checked.workflow.spec.secrets;
    let mut secrets = Map::new();
    let mut revealed = Revealed::default();
    let names: Vec<String> = w.headers.values().flat_map(|v| re.captures_iter(v).map(|c| c[1].to_string())).collect();
    for name in names {
        if secrets.contains_key(&name) {
            continue;
        }
        let Some(decl) = declared.get(&name) else {
            return Err(TaskError::fatal(format!("secret `{name}` is not declared in `spec.secrets`")));
        };
        if !decl.allows(host) {
            return Err(TaskError::fatal(format!(
                "secret `{name}` may not be sent to `{host}` (spec.secrets.{name}.hosts: {})",
                decl.hosts.join(", ")
            )));
        }
        let key = format!("{WORKFLOW_PREFIX}{name}");
        let read = |e: crate::secrets::SecretsError| TaskError::fatal(format!("secret `{name}`: {e}"));
        let raw =
            source.get(&key).await.map_err(read)?.ok_or_else(|| {
                TaskError::fatal(format!("secret `{name}` is not set (the secret source has no {key})"))
            })?;
        // What the operator granted (kept beside the value) binds before what the workflow says.
        let grant = Grant::parse(raw).map_err(|e| TaskError::fatal(format!("secret `{name}`: {key} {e}")))?;
        grant
            .allows(a.tenant.as_deref(), host)
            .map_err(|e| TaskError::fatal(format!("secret `{name}` may not be sent to `{host}`: {e}")))?;
        revealed.0.push(Shown { name: name.clone(), value: grant.value.clone(), hosts: grant.hosts });
        secrets.insert(name, Value::String(grant.value));
    }
    let ctx = minijinja::value::merge_maps([
        minijinja::Value::from_pairs([("secrets", minijinja::Value::from(minijinja::value::Serde(&secrets)))]),
        a.context.clone(),
    ]);
    let hs = w
        .headers
        .iter()
        .map(|(k, v)| {
            let r = a
                .plan
                .render_in(&Value::String(v.clone()), &ctx)
                .map_err(|e| TaskError::fatal(format!("headers.{k}: {e}")))?;
            Ok(Header {
                name: k.clone(),
                value: r.as_str().map_or_else(|| r.to_string(), str::to_string),
                secrets: re.captures_iter(v).map(|c| c[1].to_string()).collect(),
            })
        })
        .collect::<Result<Vec<_>, TaskError>>()?;
    Ok((hs, revealed))
}

fn method(m: HttpMethod) -> reqwest::Method {
    match m {
        HttpMethod::Get => reqwest::Method::GET,
        HttpMethod::Post => reqwest::Method::POST,
        HttpMethod::Put => reqwest::Method::PUT,
        HttpMethod::Patch => reqwest::Method::PATCH,
        HttpMethod::Delete => reqwest::Method::DELETE,
        HttpMethod::Head => reqwest::Method::HEAD,
    }
}

pub(crate) fn method_name(m: HttpMethod) -> &'static str {
    match m {
        HttpMethod::Get => "GET",
        HttpMethod::Post => "POST",
        HttpMethod::Put => "PUT",
        HttpMethod::Patch => "PATCH",
        HttpMethod::Delete => "DELETE",
        HttpMethod::Head => "HEAD",
    }
}

/// The output of a response, or the failure it means; secret values are masked first.
pub(crate) fn outcome(
    w: &HttpWith,
    status: u16,
    mut headers: Map<String, Value>,
    body: &str,
    revealed: &Revealed,
) -> AttemptResult {
    let mut body = serde_json::from_str::<Value>(body).unwrap_or_else(|_| Value::String(body.to_string()));
    revealed.mask(&mut body);
    headers.values_mut().for_each(|v| revealed.mask(v));
    let ok = if w.expect_status.is_empty() { (200..300).contains(&status) } else { w.expect_status.contains(&status) };
    if ok {
        return AttemptResult::Succeeded {
            output: json!({ "status": status, "headers": headers, "body": body }).into(),
            usage: Usage::default(),
        };
    }
    let detail: String = match &body {
        Value::String(s) => s.chars().take(300).collect(),
        v => v.to_string().chars().take(300).collect(),
    };
    AttemptResult::Failed {
        error: format!("HTTP {status}: {detail}"),
        retryable: matches!(status, 408 | 425 | 429 | 500..=599),
        usage: Usage::default(),
    }
}

/// Headers a redirect to another host drops even without a secret in them (as browsers do).
const CREDENTIAL_HEADERS: &[&str] = &["authorization", "cookie", "proxy-authorization"];

pub struct HttpExecutor {
    client: reqwest::Client,
    egress: Egress,
    secrets: Arc<dyn Secrets>,
    limits: HttpLimits,
    /// Per host: opens after [`HOST_FAILURES`] failed calls in a row (5xx, 429, timeouts,
    /// network errors), for [`HOST_COOLDOWN`]; shared with other workers through `flow`.
    breakers: std::sync::Mutex<std::collections::HashMap<String, Arc<crate::providers::Breaker>>>,
    flow: Arc<dyn crate::flow::Flow>,
}

/// Failed calls in a row to one host that open its circuit.
pub const HOST_FAILURES: u32 = 5;
/// How long a host's circuit stays open before one probe.
pub const HOST_COOLDOWN: Duration = Duration::from_secs(30);

impl HttpExecutor {
    /// Connections under `egress`, header secrets read from `secrets`.
    pub fn new(egress: Egress, secrets: Arc<dyn Secrets>, limits: HttpLimits) -> Self {
        HttpExecutor {
            client: egress.client(),
            egress,
            secrets,
            limits,
            breakers: Default::default(),
            flow: Arc::new(crate::flow::Local::default()),
        }
    }

    /// Shares the hosts' circuits through `flow` (the serverless fleet's DynamoDB one).
    pub fn with_flow(mut self, flow: Arc<dyn crate::flow::Flow>) -> Self {
        self.flow = flow;
        self
    }

    fn breaker(&self, host: &str) -> Arc<crate::providers::Breaker> {
        let mut b = self.breakers.lock().expect("breakers");
        if b.len() > 1024 && !b.contains_key(host) {
            b.clear();
        }
        b.entry(host.to_string())
            .or_insert_with(|| Arc::new(crate::providers::Breaker::new(HOST_FAILURES, HOST_COOLDOWN)))
            .clone()
    }

    /// A failure without a call when the host's circuit (`scope`: the host as the attempt's
    /// tenant sees it) is open here or in another worker.
    async fn refused(&self, scope: &str, host: &str) -> Option<AttemptResult> {
        let breaker = self.breaker(scope);
        let left = match breaker.allow() {
            Err(left) => Some(left),
            Ok(()) => self
                .flow
                .open_until(&format!("http:{scope}"))
                .await
                .map(|u| Duration::from_millis(u.saturating_sub(crate::ports::now_ms()))),
        }?;
        Some(AttemptResult::Failed {
            error: format!(
                "{}circuit open for host {host} after repeated failures ({:.0}s left); not called",
                breaker.cause().map(|c| format!("{c}; ")).unwrap_or_default(),
                left.as_secs_f64()
            ),
            retryable: true,
            usage: Usage::default(),
        })
    }

    /// Reads the body, stopping past the limit.
    async fn body(&self, mut resp: reqwest::Response) -> Result<String, AttemptResult> {
        let cap = self.limits.max_response_bytes;
        if resp.content_length().is_some_and(|n| n > cap as u64) {
            return Err(too_large(cap));
        }
        let mut buf = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    if buf.len() + c.len() > cap {
                        return Err(too_large(cap));
                    }
                    buf.extend_from_slice(&c);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(AttemptResult::Failed {
                        error: format!("reading the response: {e}"),
                        retryable: true,
                        usage: Usage::default(),
                    });
                }
            }
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

fn too_large(cap: usize) -> AttemptResult {
    failed(TaskError::fatal(format!(
        "the response body is larger than the limit of {cap} bytes (LLMO_HTTP_MAX_RESPONSE_BYTES)"
    )))
}

pub(crate) fn host_of(url: &Url) -> String {
    url.host_str().unwrap_or_default().to_string()
}

#[async_trait]
impl Executor for HttpExecutor {
    /// In an `http {method}` span; the request carries its trace context (`traceparent`).
    async fn execute(&self, a: &Attempt) -> AttemptResult {
        use tracing::Instrument;
        let method = a.with.get("method").and_then(serde_json::Value::as_str).unwrap_or("GET").to_ascii_uppercase();
        let span = tracing::info_span!(
            "http",
            otel.name = format!("http {method}"),
            otel.kind = "client",
            http.request.method = tracing::field::Empty,
            server.address = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
        );
        // The circuit is per host and port (`api.example.com:443`).
        let host = parse_with(a)
            .ok()
            .and_then(|w| request_url(&w).ok())
            .map(|u| format!("{}:{}", host_of(&u), u.port_or_known_default().unwrap_or(0)));
        // Circuits are per tenant: one tenant's failures do not close a host for the others.
        let host = host.map(|h| (crate::providers::circuit_scope(a.tenant.as_deref(), &h), h));
        if let Some((scope, h)) = &host
            && let Some(refusal) = self.refused(scope, h).await
        {
            return refusal;
        }
        let r = self.execute_in(a).instrument(span).await;
        if let Some((scope, h)) = &host {
            // Server-side trouble (5xx, 429, timeouts, network) counts against the host; a
            // refusal of ours (egress, secrets, size) or a 4xx does not.
            let unhealthy = matches!(&r, AttemptResult::Failed { retryable: true, .. });
            let error = match &r {
                AttemptResult::Failed { error, .. } => error.as_str(),
                _ => "",
            };
            if let Some(until) = self.breaker(scope).record_failure(unhealthy, error) {
                tracing::warn!(host = %h, tenant = a.tenant.as_deref().unwrap_or(""), "circuit opened for the host after repeated failures");
                self.flow.open(&format!("http:{scope}"), until).await;
            }
        }
        r
    }

    fn raw_fields(&self) -> &'static [&'static str] {
        &["headers"]
    }
}

impl HttpExecutor {
    async fn execute_in(&self, a: &Attempt) -> AttemptResult {
        let w = match parse_with(a) {
            Ok(w) => w,
            Err(e) => return failed(e),
        };
        let mut url = match request_url(&w) {
            Ok(u) => u,
            Err(e) => return failed(e),
        };
        if let Err(e) = self.egress.check_url(&url) {
            return failed(TaskError::fatal(e.to_string()));
        }
        if crate::callbacks::missing(a) {
            return crate::callbacks::unconfigured();
        }
        // A task token goes only to the origin it was meant for, never through a redirect
        // to another (it answers the attempt).
        let token_origin = url.origin();
        let (mut hs, revealed) = match headers(a, &w, &host_of(&url), self.secrets.as_ref()).await {
            Ok(h) => h,
            Err(e) => return failed(e),
        };
        let timeout = a.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let deadline = Instant::now() + timeout;
        let mut method = method(w.method);
        let span = tracing::Span::current();
        span.record("http.request.method", method.as_str());
        span.record("server.address", host_of(&url).as_str());
        let trace = crate::telemetry::traceparent();
        let mut body = w.body.clone();
        let mut hops = 0u8;
        // The URL that redirected to this one.
        let mut from: Option<Url> = None;
        let resp = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut rb = self.client.request(method.clone(), url.clone()).timeout(left);
            for h in &hs {
                rb = rb.header(&h.name, &h.value);
            }
            rb = rb.header("Idempotency-Key", a.idempotency_key());
            if let Some(cb) = &a.callback
                && url.origin() == token_origin
            {
                rb = rb.header(crate::callbacks::TOKEN_HEADER, &cb.token);
                if let Some(u) = &cb.url {
                    rb = rb.header(crate::callbacks::URL_HEADER, u);
                }
            }
            if let Some(t) = &trace {
                rb = rb.header("traceparent", t);
            }
            if let Some(b) = &body {
                rb = rb.json(b);
            }
            let resp = match rb.send().await {
                Ok(r) => r,
                Err(e) => {
                    if let Some(r) = refusal(&e) {
                        return failed(TaskError::fatal(match &from {
                            Some(prev) => format!("redirect from {prev}: {r}"),
                            None => r.to_string(),
                        }));
                    }
                    crate::meter::http_call(method.as_str(), 0);
                    let error = if e.is_timeout() {
                        format!("timed out after {}", llmo_core::model::Duration(timeout))
                    } else {
                        format!("request to {url} failed: {e}")
                    };
                    return AttemptResult::Failed { error, retryable: true, usage: Usage::default() };
                }
            };
            let status = resp.status();
            crate::meter::http_call(method.as_str(), status.as_u16());
            let location = resp.headers().get(reqwest::header::LOCATION).and_then(|l| l.to_str().ok());
            let (true, Some(location)) = (status.is_redirection(), location) else { break resp };
            if hops >= self.limits.max_redirects {
                return failed(TaskError::fatal(format!(
                    "more than {} redirects (LLMO_HTTP_MAX_REDIRECTS)",
                    self.limits.max_redirects
                )));
            }
            hops += 1;
            let next = match url.join(location) {
                Ok(u) => u,
                Err(e) => return failed(TaskError::fatal(format!("redirect to `{location}`: {e}"))),
            };
            if let Err(e) = self.egress.check_url(&next) {
                return failed(TaskError::fatal(format!("redirect from {url}: {e}")));
            }
            let (was, to) = (host_of(&url), host_of(&next));
            if was != to {
                let declared = &a.plan.checked.workflow.spec.secrets;
                hs.retain(|h| {
                    let keep = !CREDENTIAL_HEADERS.contains(&h.name.to_ascii_lowercase().as_str())
                        && h.secrets
                            .iter()
                            .all(|s| declared.get(s).is_some_and(|d| d.allows(&to)) && revealed.allows(s, &to));
                    if !keep {
                        tracing::debug!(header = %h.name, from = %was, %to, "redirect to another host: header dropped");
                    }
                    keep
                });
            }
            let code = status.as_u16();
            if code == 303 && method != reqwest::Method::HEAD
                || matches!(code, 301 | 302) && method == reqwest::Method::POST
            {
                method = reqwest::Method::GET;
                body = None;
            }
            from = Some(std::mem::replace(&mut url, next));
        };
        let status = resp.status().as_u16();
        span.record("http.response.status_code", status);
        let headers: Map<String, Value> = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.to_string(), Value::String(v.to_str().ok()?.to_string()))))
            .collect();
        match self.body(resp).await {
            Ok(body) => outcome(&w, status, headers, &body, &revealed),
            Err(r) => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{Driver, Options};
    use crate::executor::{Registry, test_attempt};
    use crate::ports::SystemClock;
    use crate::store::MemoryStore;
    use llmo_core::engine::{Plan, RunStatus};
    use llmo_core::source::SourceFile;
    use llmo_core::validate::Validator;
    use std::sync::Arc;
    use wiremock::matchers::{body_json, header, method, path, query_param};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn secrets(pairs: &[(&str, &str)]) -> Arc<dyn Secrets> {
        Arc::new(crate::secrets::WorkflowSecrets(Arc::new(crate::secrets::MapSecrets(
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ))))
    }

    /// Loopback allowed (the fakes listen there), secrets from `pairs`.
    fn local(pairs: &[(&str, &str)]) -> HttpExecutor {
        HttpExecutor::new(Egress::loopback(), secrets(pairs), HttpLimits::default())
    }

    impl Default for HttpExecutor {
        fn default() -> Self {
            local(&[])
        }
    }

    #[tokio::test]
    async fn sends_method_query_headers_with_secrets_and_body_and_masks_echoed_secrets() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/hook"))
            .and(query_param("limit", "5"))
            .and(header("authorization", "Bearer tok-123456"))
            .and(header("x-run", "run-1"))
            .and(body_json(json!({ "text": "hi" })))
            .respond_with(
                ResponseTemplate::new(201)
                    .set_body_json(json!({ "id": 7, "echo": "you sent Bearer tok-123456" }))
                    .insert_header("x-id", "7")
                    .insert_header("x-seen", "tok-123456"),
            )
            .expect(1)
            .mount(&server)
            .await;
        let with = json!({
            "method": "POST", "url": format!("{}/hook", server.uri()), "query": { "limit": "5" },
            "headers": { "Authorization": "Bearer {{ secrets.TOKEN }}", "X-Run": "{{ run.id }}" },
            "body": { "text": "hi" }
        });
        let exec = local(&[("LLMO_SECRET_TOKEN", "tok-123456")]);
        let r = exec.execute(&test_attempt("http", with, None, 1)).await;
        let AttemptResult::Succeeded { output, .. } = r else { panic!("{r:?}") };
        assert_eq!(output["status"], 201);
        assert_eq!(output["body"], json!({ "id": 7, "echo": "you sent Bearer [redacted secret TOKEN]" }));
        assert_eq!(output["headers"]["x-id"], "7");
        assert_eq!(output["headers"]["x-seen"], "[redacted secret TOKEN]");
    }

    /// A tenant's run uses a secret only as the operator granted it beside the value: to its
    /// tenants, towards its hosts; a workflow's own `hosts` only narrows that. Tenant t2's
    /// workflow declaring t1's secret for its own host receives nothing, and nothing is sent.
    #[tokio::test]
    async fn in_a_tenants_run_secrets_go_only_where_the_operator_granted_them() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(header("a", "granted-t1"))
            .respond_with(ResponseTemplate::new(200))
            .expect(1)
            .mount(&server)
            .await;
        let grant = r#"{"value": "granted-t1", "tenants": ["t1"], "hosts": ["127.0.0.1"]}"#;
        let narrow = r#"{"value": "granted-t1", "tenants": ["t1"], "hosts": ["tickets.example"]}"#;
        let with = json!({ "url": format!("{}/x", server.uri()), "headers": { "a": "{{ secrets.TOKEN }}" } });
        let run = |tenant: Option<&str>, held: &'static str| {
            let mut a = test_attempt("http", with.clone(), None, 1);
            a.tenant = tenant.map(Arc::from);
            let exec = local(&[("LLMO_SECRET_TOKEN", held)]);
            async move { exec.execute(&a).await }
        };
        let refused = |r: AttemptResult| match r {
            AttemptResult::Failed { error, retryable: false, .. } => {
                assert!(!error.contains("granted-t1"), "{error}");
                error
            }
            other => panic!("expected a refusal, got {other:?}"),
        };
        let e = refused(run(Some("t2"), grant).await);
        assert!(e.contains("may not be sent to `127.0.0.1`: it is not granted to tenant `t2`"), "{e}");
        let e = refused(run(Some("t1"), narrow).await);
        assert!(e.contains("the operator allows it only towards tickets.example, not `127.0.0.1`"), "{e}");
        let e = refused(run(Some("t1"), "plain-value").await);
        assert!(e.contains("the operator has not said which tenants and hosts may use it"), "{e}");
        // Granted: the one request the fake expects.
        assert!(matches!(run(Some("t1"), grant).await, AttemptResult::Succeeded { .. }));
    }

    /// Each case: a header template, what the secret source holds, and the exact error; the
    /// fake target must receive nothing.
    #[tokio::test]
    async fn secrets_that_are_undeclared_unset_or_bound_to_other_hosts_are_refused_before_sending() {
        let server = MockServer::start().await;
        Mock::given(method("GET")).respond_with(ResponseTemplate::new(200)).expect(0).mount(&server).await;
        let held = [
            ("AWS_SECRET_ACCESS_KEY", "aws-secret"),
            ("OPENAI_API_KEY", "sk-live"),
            ("LLMO_SECRET_ELSEWHERE", "e-123456"),
        ];
        let cases = [
            ("{{ secrets.AWS_SECRET_ACCESS_KEY }}", "secret `AWS_SECRET_ACCESS_KEY` is not declared in `spec.secrets`"),
            ("{{ secrets.OPENAI_API_KEY }}", "secret `OPENAI_API_KEY` is not declared in `spec.secrets`"),
            ("{{ secrets.HOME }}", "secret `HOME` is not declared in `spec.secrets`"),
            (
                "{{ secrets.ELSEWHERE }}",
                "secret `ELSEWHERE` may not be sent to `127.0.0.1` (spec.secrets.ELSEWHERE.hosts: *.example.com)",
            ),
            ("{{ secrets.TOKEN }}", "secret `TOKEN` is not set (the secret source has no LLMO_SECRET_TOKEN)"),
        ];
        for (template, want) in cases {
            let with = json!({ "url": format!("{}/x", server.uri()), "headers": { "A": template } });
            let r = local(&held).execute(&test_attempt("http", with, None, 1)).await;
            let AttemptResult::Failed { error, retryable, .. } = r else { panic!("{template}: {r:?}") };
            assert_eq!(error, want, "{template}");
            assert!(!retryable);
            for (_, v) in held {
                assert!(!error.contains(v));
            }
        }
        assert!(server.received_requests().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_redirect_to_another_host_drops_the_secrets_not_declared_for_it() {
        let target = MockServer::start().await;
        Mock::given(path("/landed"))
            .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
            .expect(1)
            .mount(&target)
            .await;
        let origin = MockServer::start().await;
        let port = target.address().port();
        Mock::given(path("/start"))
            .respond_with(
                ResponseTemplate::new(302)
                    .insert_header("location", format!("http://localhost:{port}/landed").as_str()),
            )
            .expect(1)
            .mount(&origin)
            .await;
        let with = json!({
            "url": format!("{}/start", origin.uri()),
            "headers": { "X-Ip-Only": "{{ secrets.ONLY_IP }}", "X-Both": "{{ secrets.TOKEN }}", "X-Plain": "p", "Authorization": "Basic abc" }
        });
        let exec = local(&[("LLMO_SECRET_ONLY_IP", "ip-secret"), ("LLMO_SECRET_TOKEN", "both-secret")]);
        let r = exec.execute(&test_attempt("http", with, None, 1)).await;
        assert!(matches!(r, AttemptResult::Succeeded { .. }), "{r:?}");
        let first = &origin.received_requests().await.unwrap()[0];
        assert_eq!(first.headers.get("x-ip-only").unwrap(), "ip-secret");
        let landed = &target.received_requests().await.unwrap()[0];
        assert!(landed.headers.get("x-ip-only").is_none(), "not declared for localhost: dropped");
        assert!(landed.headers.get("authorization").is_none(), "credentials never cross hosts");
        assert_eq!(landed.headers.get("x-both").unwrap(), "both-secret", "declared for both hosts");
        assert_eq!(landed.headers.get("x-plain").unwrap(), "p");
        assert!(landed.headers.get("idempotency-key").is_some());
    }

    /// Serves on 127.0.0.2, the one address the policy allows; everything else loopback,
    /// link-local or private is refused, directly or through a redirect.
    #[tokio::test]
    async fn non_public_destinations_are_refused_directly_and_after_a_redirect() {
        let listener = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let server = MockServer::builder().listener(listener).start().await;
        let port = server.address().port();
        let others = MockServer::start().await; // on 127.0.0.1: must never be reached
        Mock::given(method("GET")).respond_with(ResponseTemplate::new(200)).expect(0).mount(&others).await;
        let other = others.address().port();
        let egress = Egress::parse("127.0.0.2/32", true).unwrap();
        let exec = HttpExecutor::new(egress, secrets(&[]), HttpLimits::default());
        let refused = |url: String| {
            let exec = &exec;
            async move {
                let r = exec.execute(&test_attempt("http", json!({ "url": url }), None, 1)).await;
                match r {
                    AttemptResult::Failed { error, retryable: false, .. } => error,
                    r => panic!("{r:?}"),
                }
            }
        };
        let targets = [
            (format!("http://127.0.0.1:{other}/"), "127.0.0.1 is a loopback address"),
            ("http://169.254.169.254/latest/meta-data/".to_string(), "169.254.169.254 is a link-local address"),
            (format!("http://[::1]:{other}/"), "::1 is a loopback address"),
            ("http://10.0.0.1/".to_string(), "10.0.0.1 is a private address"),
            (format!("http://localhost:{other}/"), "localhost resolves to "),
            ("file:///etc/passwd".to_string(), "the `file` scheme is not allowed"),
        ];
        for (i, (url, want)) in targets.iter().enumerate() {
            let direct = refused(url.clone()).await;
            assert!(direct.starts_with("egress refused: ") && direct.contains(want), "{url}: {direct}");
            Mock::given(path(format!("/r{i}")))
                .respond_with(ResponseTemplate::new(302).insert_header("location", url.as_str()))
                .expect(1)
                .mount(&server)
                .await;
            let via = refused(format!("http://127.0.0.2:{port}/r{i}")).await;
            assert!(via.starts_with(&format!("redirect from http://127.0.0.2:{port}/r{i}: egress refused: ")), "{via}");
            assert!(via.contains(want), "{url}: {via}");
        }
        let https_only = HttpExecutor::new(Egress::strict(), secrets(&[]), HttpLimits::default());
        let r = https_only.execute(&test_attempt("http", json!({ "url": "http://example.com/" }), None, 1)).await;
        assert!(
            matches!(&r, AttemptResult::Failed { error, .. } if error.contains("plain http is not allowed")),
            "{r:?}"
        );
    }

    /// A server that streams a chunked body of `total` bytes, no length announced; returns
    /// how many it managed to write before the client hung up.
    async fn endless(total: usize) -> (String, tokio::task::JoinHandle<usize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/big", l.local_addr().unwrap());
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = [0u8; 4096];
            let _ = s.read(&mut req).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
            if s.write_all(head.as_bytes()).await.is_err() {
                return 0;
            }
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < total {
                let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
                if s.write_all(&frame).await.is_err() {
                    break;
                }
                sent += chunk.len();
            }
            let _ = s.write_all(b"0\r\n\r\n").await;
            sent
        });
        (url, h)
    }

    #[tokio::test]
    async fn a_64_mb_response_stops_at_the_cap() {
        let (url, server) = endless(64 << 20).await;
        let limits = HttpLimits { max_response_bytes: 1 << 20, ..HttpLimits::default() };
        let exec = HttpExecutor::new(Egress::loopback(), secrets(&[]), limits);
        let mut a = test_attempt("http", json!({ "url": url }), None, 1);
        a.timeout = Some(Duration::from_secs(20));
        let r = exec.execute(&a).await;
        let AttemptResult::Failed { error, retryable, .. } = r else { panic!("{r:?}") };
        assert_eq!(error, "the response body is larger than the limit of 1048576 bytes (LLMO_HTTP_MAX_RESPONSE_BYTES)");
        assert!(!retryable);
        let sent = server.await.unwrap();
        assert!(sent < 16 << 20, "the client stopped reading early: the server wrote {sent} bytes");
    }

    #[tokio::test]
    async fn statuses_map_to_retryable_and_fatal_failures() {
        let server = MockServer::start().await;
        Mock::given(path("/busy")).respond_with(ResponseTemplate::new(503)).mount(&server).await;
        Mock::given(path("/gone"))
            .respond_with(ResponseTemplate::new(404).set_body_string("no such thing"))
            .mount(&server)
            .await;
        Mock::given(path("/slow"))
            .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
            .mount(&server)
            .await;
        let call = |p: &str, extra: Value| {
            let mut with = json!({ "url": format!("{}{p}", server.uri()) });
            with.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
            async move { HttpExecutor::default().execute(&test_attempt("http", with, None, 1)).await }
        };
        assert!(matches!(call("/busy", json!({})).await, AttemptResult::Failed { retryable: true, .. }));
        let r = call("/gone", json!({})).await;
        assert!(
            matches!(&r, AttemptResult::Failed { retryable: false, error, .. } if error == "HTTP 404: no such thing"),
            "{r:?}"
        );
        assert!(matches!(call("/gone", json!({ "expect_status": [404] })).await, AttemptResult::Succeeded { .. }));
        let r = call("/slow", json!({})).await;
        assert!(
            matches!(&r, AttemptResult::Failed { retryable: true, error, .. } if error == "timed out after 500ms"),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn the_idempotency_key_is_the_same_on_every_retry_of_a_task() {
        let server = MockServer::start().await;
        Mock::given(path("/pay")).respond_with(ResponseTemplate::new(503)).up_to_n_times(2).mount(&server).await;
        Mock::given(path("/pay")).respond_with(ResponseTemplate::new(200)).mount(&server).await;
        Mock::given(path("/item")).respond_with(ResponseTemplate::new(200)).mount(&server).await;
        let wf = format!(
            "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: {{ name: pay }}\nspec:\n  tasks:\n    - {{ id: pay, type: http, retry: {{ max_attempts: 3, backoff: {{ initial: 10ms }} }}, with: {{ method: POST, url: '{}/pay' }} }}\n    - {{ id: each, type: http, for_each: '[1, 2]', with: {{ method: POST, url: '{}/item?i={{{{ item }}}}' }} }}\n",
            server.uri(),
            server.uri()
        );
        let plan = Arc::new(Plan::new(Validator::default().validate(&SourceFile::new("p.yaml", &wf)).checked.unwrap()));
        let mut reg = Registry::new();
        reg.register("http", Arc::new(HttpExecutor::default()));
        let d = Driver {
            plan,
            store: Arc::new(MemoryStore::default()),
            executors: Arc::new(reg),
            clock: Arc::new(SystemClock::default()),
            blobs: None,
            options: Options::default(),
        };
        let end = d.start("r1", Map::new(), "p.yaml", &wf, &mut ()).await.unwrap();
        assert_eq!(end.state.status, RunStatus::Succeeded, "{:?}", end.state.error);
        let reqs = server.received_requests().await.unwrap();
        let key = |r: &wiremock::Request| r.headers.get("idempotency-key").unwrap().to_str().unwrap().to_string();
        let (retried, items): (Vec<_>, Vec<_>) = reqs.iter().partition(|r| r.url.query().is_none());
        assert_eq!(retried.len(), 3);
        assert!(retried.iter().all(|r| key(r) == key(retried[0])), "one key over the three attempts");
        assert_eq!(items.len(), 2);
        assert_ne!(key(items[0]), key(items[1]), "each item has its own key");
        assert_ne!(key(items[0]), key(retried[0]));
    }

    /// A host that keeps failing: after five failed calls in a row its circuit opens, the
    /// next attempt is refused without a request, and another executor (another worker)
    /// sharing the flow refuses too, while other hosts are still called.
    #[tokio::test]
    async fn a_failing_host_opens_its_circuit_for_every_worker_sharing_the_flow() {
        let server = MockServer::start().await;
        Mock::given(path("/down")).respond_with(ResponseTemplate::new(503)).mount(&server).await;
        let flow: Arc<dyn crate::flow::Flow> = Arc::new(crate::flow::Local::default());
        let one = local(&[]).with_flow(flow.clone());
        let two = local(&[]).with_flow(flow);
        async fn call(e: &HttpExecutor, url: String) -> AttemptResult {
            e.execute(&test_attempt("http", json!({ "url": url }), None, 1)).await
        }
        let down = format!("{}/down", server.uri());
        for _ in 0..HOST_FAILURES {
            let r = call(&one, down.clone()).await;
            assert!(matches!(&r, AttemptResult::Failed { error, .. } if error.starts_with("HTTP 503")), "{r:?}");
        }
        let calls = || async { server.received_requests().await.unwrap().len() };
        assert_eq!(calls().await, HOST_FAILURES as usize);
        for e in [&one, &two] {
            let r = call(e, down.clone()).await;
            assert!(
                matches!(&r, AttemptResult::Failed { error, retryable: true, .. } if error.contains("circuit open for host 127.0.0.1:")),
                "{r:?}"
            );
        }
        assert_eq!(calls().await, HOST_FAILURES as usize, "no request while the circuit is open");
        // Another host (here: the same address under another name and port) is not affected.
        let other = MockServer::start().await;
        Mock::given(path("/up"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": 1})))
            .mount(&other)
            .await;
        let r = call(&two, format!("{}/up", other.uri())).await;
        assert!(matches!(r, AttemptResult::Succeeded { .. }), "{r:?}");
    }

    /// Circuits are per tenant: tenant t1's failures open the host's circuit for t1's runs
    /// (in every worker), while t2's run to the same host is still called.
    #[tokio::test]
    async fn one_tenants_failures_do_not_close_a_host_for_another_tenant() {
        let server = MockServer::start().await;
        Mock::given(path("/flaky")).respond_with(ResponseTemplate::new(503)).mount(&server).await;
        let flow: Arc<dyn crate::flow::Flow> = Arc::new(crate::flow::Local::default());
        let (one, two) = (local(&[]).with_flow(flow.clone()), local(&[]).with_flow(flow));
        let url = format!("{}/flaky", server.uri());
        async fn call(e: &HttpExecutor, url: &str, tenant: &str) -> AttemptResult {
            let mut a = test_attempt("http", json!({ "url": url }), None, 1);
            a.tenant = Some(tenant.into());
            e.execute(&a).await
        }
        for _ in 0..HOST_FAILURES {
            call(&one, &url, "t1").await;
        }
        let r = call(&two, &url, "t1").await;
        assert!(matches!(&r, AttemptResult::Failed { error, .. } if error.contains("circuit open")), "{r:?}");
        let r = call(&two, &url, "t2").await;
        assert!(
            matches!(&r, AttemptResult::Failed { error, .. } if error.starts_with("HTTP 503")),
            "t2 is called: {r:?}"
        );
        assert_eq!(server.received_requests().await.unwrap().len(), HOST_FAILURES as usize + 1);
    }
}
