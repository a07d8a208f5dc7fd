//! The `http` executor: calls a tool or webhook.
//!
//! Headers are rendered here, not by the driver, because they may read `secrets.<NAME>`
//! (from `$LLMO_SECRET_<NAME>`, else `$<NAME>`): secrets never enter the run's state. Every
//! request carries an `Idempotency-Key` that is the same on every attempt and redelivery of
//! one task (one item) of one run. 408, 425, 429, 5xx, timeouts and network errors are
//! retryable; other statuses outside `expect_status` (default: any 2xx) are not.
//!
//! [`MockHttp`] answers offline from fixtures (`llmo run --mock`).

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use llmo_core::engine::builtin::TaskError;
use llmo_core::engine::{AttemptResult, Usage};
use llmo_core::tasks::{HttpMethod, HttpWith, glob_match};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::executor::{Attempt, Executor, failed};

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The `with` block; query values rendered from expressions (numbers, booleans) are sent as text.
fn parse_with(a: &Attempt) -> Result<HttpWith, TaskError> {
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

/// Renders the headers with `secrets` added to the context: each `secrets.NAME` read from the
/// source as `LLMO_SECRET_NAME`, else `NAME`.
async fn headers(
    a: &Attempt,
    w: &HttpWith,
    source: &dyn crate::secrets::Secrets,
) -> Result<Vec<(String, String)>, TaskError> {
    static SECRET: OnceLock<regex::Regex> = OnceLock::new();
    let re = SECRET.get_or_init(|| regex::Regex::new(r"secrets\.([A-Za-z_][A-Za-z0-9_]*)").expect("regex"));
    let names: Vec<String> = w.headers.values().flat_map(|v| re.captures_iter(v).map(|c| c[1].to_string())).collect();
    let mut secrets = Map::new();
    {
        for name in &names {
            let read = |e: String| TaskError::fatal(format!("secret `{name}`: {e}"));
            let value = match source.get(&format!("LLMO_SECRET_{name}")).await.map_err(read)? {
                Some(v) => v,
                None => source.get(name).await.map_err(read)?.ok_or_else(|| {
                    TaskError::fatal(format!("secret `{name}` is not set (set LLMO_SECRET_{name} or {name})"))
                })?,
            };
            secrets.insert(name.clone(), Value::String(value));
        }
    }
    let ctx = minijinja::value::merge_maps([
        minijinja::Value::from_pairs([("secrets", minijinja::Value::from(minijinja::value::Serde(&secrets)))]),
        a.context.clone(),
    ]);
    w.headers
        .iter()
        .map(|(k, v)| {
            let r = a
                .plan
                .render_in(&Value::String(v.clone()), &ctx)
                .map_err(|e| TaskError::fatal(format!("headers.{k}: {e}")))?;
            Ok((k.clone(), r.as_str().map_or_else(|| r.to_string(), str::to_string)))
        })
        .collect()
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

fn method_name(m: HttpMethod) -> &'static str {
    match m {
        HttpMethod::Get => "GET",
        HttpMethod::Post => "POST",
        HttpMethod::Put => "PUT",
        HttpMethod::Patch => "PATCH",
        HttpMethod::Delete => "DELETE",
        HttpMethod::Head => "HEAD",
    }
}

/// The output of a response, or the failure it means.
fn outcome(w: &HttpWith, status: u16, headers: Map<String, Value>, body: &str) -> AttemptResult {
    let body = serde_json::from_str::<Value>(body).unwrap_or_else(|_| Value::String(body.to_string()));
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

pub struct HttpExecutor {
    client: reqwest::Client,
    secrets: std::sync::Arc<dyn crate::secrets::Secrets>,
}

impl HttpExecutor {
    /// Header secrets read from `secrets`.
    pub fn with_secrets(secrets: std::sync::Arc<dyn crate::secrets::Secrets>) -> Self {
        HttpExecutor { secrets, ..Self::default() }
    }
}

impl Default for HttpExecutor {
    fn default() -> Self {
        HttpExecutor {
            secrets: std::sync::Arc::new(crate::secrets::EnvSecrets),
            client: reqwest::Client::builder()
                .user_agent(concat!("llmo/", env!("CARGO_PKG_VERSION")))
                .build()
                .expect("http client"),
        }
    }
}

#[async_trait]
impl Executor for HttpExecutor {
    async fn execute(&self, a: &Attempt) -> AttemptResult {
        let w = match parse_with(a) {
            Ok(w) => w,
            Err(e) => return failed(e),
        };
        let hs = match headers(a, &w, self.secrets.as_ref()).await {
            Ok(h) => h,
            Err(e) => return failed(e),
        };
        let timeout = a.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let mut rb = self.client.request(method(w.method), &w.url).timeout(timeout);
        if !w.query.is_empty() {
            rb = rb.query(&w.query.iter().collect::<Vec<_>>());
        }
        for (k, v) in hs {
            rb = rb.header(k, v);
        }
        rb = rb.header("Idempotency-Key", a.idempotency_key());
        if let Some(b) = &w.body {
            rb = rb.json(b);
        }
        let resp = match rb.send().await {
            Ok(r) => r,
            Err(e) => {
                let error = if e.is_timeout() {
                    format!("timed out after {}", llmo_core::model::Duration(timeout))
                } else {
                    format!("request to {} failed: {e}", w.url)
                };
                return AttemptResult::Failed { error, retryable: true, usage: Usage::default() };
            }
        };
        let status = resp.status().as_u16();
        let headers: Map<String, Value> = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.to_string(), Value::String(v.to_str().ok()?.to_string()))))
            .collect();
        match resp.text().await {
            Ok(body) => outcome(&w, status, headers, &body),
            Err(e) => AttemptResult::Failed {
                error: format!("reading the response: {e}"),
                retryable: true,
                usage: Usage::default(),
            },
        }
    }

    fn raw_fields(&self) -> &'static [&'static str] {
        &["headers"]
    }
}

/// One canned response of [`MockHttp`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    /// Method to match (any when absent).
    pub method: Option<String>,
    /// URL glob (`*` and `?`), matched against the rendered URL without its query.
    pub url: String,
    #[serde(default = "ok")]
    pub status: u16,
    #[serde(default)]
    pub headers: Map<String, Value>,
    #[serde(default)]
    pub body: Value,
}

fn ok() -> u16 {
    200
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixtures {
    #[serde(default)]
    pub responses: Vec<Fixture>,
}

impl Fixtures {
    /// Reads a fixtures file (YAML): `responses: [{method, url, status, headers, body}]`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let loaded =
            llmo_core::yaml::load(&text, Default::default()).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_value(loaded.json).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Answers `http` tasks offline: the first fixture whose method and URL match, else `200`
/// with a body echoing the request (`{ mock: true, method, url, body }`). Secrets are still
/// resolved, so a missing one shows up in an offline run too.
pub struct MockHttp {
    pub fixtures: Fixtures,
    /// Where `secrets.NAME` in headers is read from (headers are rendered, so a missing secret
    /// fails offline as it would online).
    pub secrets: std::sync::Arc<dyn crate::secrets::Secrets>,
}

impl Default for MockHttp {
    fn default() -> Self {
        MockHttp { fixtures: Fixtures::default(), secrets: std::sync::Arc::new(crate::secrets::EnvSecrets) }
    }
}

#[async_trait]
impl Executor for MockHttp {
    async fn execute(&self, a: &Attempt) -> AttemptResult {
        let w = match parse_with(a) {
            Ok(w) => w,
            Err(e) => return failed(e),
        };
        if let Err(e) = headers(a, &w, self.secrets.as_ref()).await {
            return failed(e);
        }
        let m = method_name(w.method);
        let url = w.url.split('?').next().unwrap_or(&w.url);
        let hit = self
            .fixtures
            .responses
            .iter()
            .find(|f| f.method.as_deref().is_none_or(|fm| fm.eq_ignore_ascii_case(m)) && glob_match(&f.url, url));
        match hit {
            Some(f) => outcome(&w, f.status, f.headers.clone(), &f.body.to_string()),
            None => {
                let echo = json!({ "mock": true, "method": m, "url": w.url, "body": w.body });
                outcome(&w, 200, Map::new(), &echo.to_string())
            }
        }
    }

    fn raw_fields(&self) -> &'static [&'static str] {
        &["headers"]
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

    #[tokio::test]
    async fn sends_method_query_headers_with_secrets_and_body() {
        let server = MockServer::start().await;
        let home = std::env::var("HOME").unwrap_or_default();
        Mock::given(method("POST"))
            .and(path("/hook"))
            .and(query_param("limit", "5"))
            .and(header("authorization", format!("Bearer {home}").as_str()))
            .and(header("x-run", "run-1"))
            .and(body_json(json!({ "text": "hi" })))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({ "id": 7 })).insert_header("x-id", "7"))
            .expect(1)
            .mount(&server)
            .await;
        let with = json!({
            "method": "POST", "url": format!("{}/hook", server.uri()), "query": { "limit": "5" },
            "headers": { "Authorization": "Bearer {{ secrets.HOME }}", "X-Run": "{{ run.id }}" },
            "body": { "text": "hi" }
        });
        let r = HttpExecutor::default().execute(&test_attempt("http", with, None, 1)).await;
        let AttemptResult::Succeeded { output, .. } = r else { panic!("{r:?}") };
        assert_eq!(output["status"], 201);
        assert_eq!(output["body"], json!({ "id": 7 }));
        assert_eq!(output["headers"]["x-id"], "7");
    }

    #[tokio::test]
    async fn a_workflow_cannot_send_a_provider_key_held_beside_its_secrets() {
        let server = MockServer::start().await;
        Mock::given(method("GET")).respond_with(ResponseTemplate::new(200)).expect(0).mount(&server).await;
        let held = crate::secrets::MapSecrets(
            [("OPENAI_API_KEY", "sk-live"), ("LLMO_SECRET_TOKEN", "tok")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        let exec =
            HttpExecutor::with_secrets(std::sync::Arc::new(crate::secrets::WorkflowSecrets(std::sync::Arc::new(held))));
        let with = json!({ "url": format!("{}/x", server.uri()), "headers": { "A": "{{ secrets.OPENAI_API_KEY }}" } });
        let r = exec.execute(&test_attempt("http", with, None, 1)).await;
        let AttemptResult::Failed { error, retryable, .. } = r else { panic!("{r:?}") };
        assert!(error.contains("secret `OPENAI_API_KEY` is not set") && !error.contains("sk-live"), "{error}");
        assert!(!retryable);
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
        let r = HttpExecutor::default()
            .execute(&test_attempt(
                "http",
                json!({ "url": "http://x", "headers": { "A": "{{ secrets.LLMO_UNSET_FOR_TESTS }}" } }),
                None,
                1,
            ))
            .await;
        assert!(
            matches!(&r, AttemptResult::Failed { retryable: false, error, .. } if error.contains("secret `LLMO_UNSET_FOR_TESTS` is not set")),
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
}
