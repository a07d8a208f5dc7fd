//! Model providers and the `llm` executor.
//!
//! A [`Provider`] speaks one wire format: the OpenAI-compatible Chat Completions API
//! (OpenAI, vLLM, Ollama, llama.cpp, LiteLLM, ...), the Anthropic Messages API, or the
//! offline `mock`. The [`LlmExecutor`] picks the task's provider and model, retries rate
//! limits and server errors within an attempt (honouring `Retry-After`), keeps a circuit
//! breaker per provider, tries `fallback_models` in order, validates JSON output against
//! `output_schema`, and prices token usage from the [`PriceTable`].
//!
//! Keys and base URLs come from the environment or the config file, never from workflows.

mod agent;
mod anthropic;
mod config;
mod mock;
mod openai;
pub mod tools;
pub use agent::AgentExecutor;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use llmo_core::engine::builtin::TaskError;
use llmo_core::engine::{AttemptResult, Estimate, Usage, budget};
use llmo_core::tasks::{Content, LlmWith, ResponseFormat, Role};
use serde_json::{Value, json};
use tracing::Instrument;

pub use anthropic::Anthropic;
pub use config::{Config, ConfigError, Kind, Price, PriceTable, ProviderConfig};
pub use mock::Mock;
pub(crate) use mock::word_usage;
pub use openai::OpenAi;

use crate::executor::{Attempt, Executor, Judge};

/// A chat request in provider-neutral form.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatRequest {
    pub model: String,
    pub system: Option<String>,
    /// `(role, content)`; roles are `user` and `assistant` (system messages are folded into
    /// `system` for providers that want it separate).
    pub messages: Vec<(Role, String)>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    pub seed: Option<i64>,
    /// Ask for a JSON answer (and, with a schema, one matching it).
    pub json: bool,
    pub schema: Option<Value>,
    /// Tools the model may call, whether it must, and whether several at once.
    pub tools: Vec<tools::Tool>,
    pub tool_choice: Option<tools::ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    /// The conversation after `messages`: the model's calls and their results.
    pub turns: Vec<tools::Turn>,
    /// Images of `messages`, by the message's index: sent after its text, in order.
    pub images: Vec<(usize, Image)>,
}

/// An image part of a message: by URL (`https://`, or `s3://` for Bedrock) or inline (base64
/// data with its media type).
#[derive(Debug, Clone, PartialEq)]
pub enum Image {
    Url(String),
    Data { media_type: String, data: String },
}

/// The media types an inline image may have (every provider takes these).
pub const IMAGE_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];
/// The most images one request may carry, and the most bytes of one inline image's base64.
pub const MAX_IMAGES: usize = 20;
pub const MAX_IMAGE_BYTES: usize = 5 << 20;

impl ChatRequest {
    /// The system prompt, asking for a JSON answer (and its schema) when the request wants one,
    /// for providers with no JSON mode (Anthropic, Bedrock): the answer is checked as any other.
    pub fn system_asking_json(&self) -> String {
        let mut system = self.system.clone().unwrap_or_default();
        if self.json {
            if !system.is_empty() {
                system.push_str("\n\n");
            }
            system.push_str("Answer with a single JSON value and nothing else.");
            if let Some(s) = &self.schema {
                system.push_str(&format!(" It must match this JSON Schema: {s}"));
            }
        }
        system
    }

    /// The images of message `i`.
    pub fn images_of(&self, i: usize) -> impl Iterator<Item = &Image> + '_ {
        self.images.iter().filter(move |(k, _)| *k == i).map(|(_, img)| img)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    pub text: String,
    /// The model that answered, as the provider names it.
    pub model: String,
    /// Input tokens, cached ones included.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Of `prompt_tokens`, those read from the provider's prompt cache, and those written to it.
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    /// The tools the model asked to call (none: `text` is its answer).
    pub tool_calls: Vec<tools::ToolCall>,
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    #[error("rate limited (429){}: {message}", retry_after.map(|d| format!(", retry after {}s", d.as_secs_f64())).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration>, message: String },
    #[error("server error {status}: {message}")]
    Server { status: u16, message: String },
    #[error("request error {status}: {message}")]
    Client { status: u16, message: String },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("network error: {0}")]
    Network(String),
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("{0}")]
    Config(String),
    #[error("the response is larger than the limit of {0} bytes a model's answer may have")]
    TooLarge(usize),
    /// Not called: under the fleet-wide limits ([`crate::flow`]) the call may be made only
    /// after `wait`; `reserved`: its capacity is taken for then.
    #[error("held back by the fleet's rate limit for {wait:?}")]
    Throttled { wait: Duration, reserved: bool },
}

impl CallError {
    /// Worth calling again (now or on a later attempt).
    pub fn retryable(&self) -> bool {
        !matches!(self, CallError::Client { .. } | CallError::Config(_) | CallError::TooLarge(_))
    }

    /// Counts against the provider's health (its circuit breaker).
    fn unhealthy(&self) -> bool {
        matches!(
            self,
            CallError::RateLimited { .. } | CallError::Server { .. } | CallError::Timeout(_) | CallError::Network(_)
        )
    }
}

#[async_trait]
pub trait Provider: Send + Sync {
    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, CallError>;
}

/// Builds a provider of a kind the runtime does not carry itself (Bedrock): from its name and
/// configuration.
pub type ProviderFactory = Arc<dyn Fn(&str, &ProviderConfig) -> Arc<dyn Provider> + Send + Sync>;

/// A provider whose base URL the egress policy refuses: every call fails, unsent.
struct Refused(String);

#[async_trait]
impl Provider for Refused {
    async fn chat(&self, _: &ChatRequest) -> Result<ChatResponse, CallError> {
        Err(CallError::Config(self.0.clone()))
    }
}

/// Maps an HTTP error status and body to a [`CallError`].
pub(crate) fn status_error(status: u16, retry_after: Option<Duration>, body: &str) -> CallError {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| v.get("error").and_then(Value::as_str).map(str::to_string))
        })
        .unwrap_or_else(|| body.chars().take(300).collect());
    match status {
        429 => CallError::RateLimited { retry_after, message },
        408 | 409 | 425 | 500..=599 => CallError::Server { status, message },
        _ => CallError::Client { status, message },
    }
}

/// `Retry-After` in seconds (or `retry-after-ms`, as OpenAI sends).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok());
    get("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| get("retry-after").map(Duration::from_secs_f64))
}

/// Sends a request and returns the body of a 2xx answer; any other status becomes the
/// matching [`CallError`] (with `Retry-After` for 429s).
/// Most bytes of a provider's answer read (a chat completion is a few kilobytes): past it the
/// body is not read further and the call fails for good.
pub const MAX_RESPONSE_BYTES: usize = 10 << 20;

pub(crate) async fn send(rb: reqwest::RequestBuilder, timeout: Duration) -> Result<String, CallError> {
    let mut resp = rb.send().await.map_err(|e| send_error(e, timeout))?;
    let status = resp.status().as_u16();
    let after = retry_after(resp.headers());
    if resp.content_length().is_some_and(|n| n > MAX_RESPONSE_BYTES as u64) {
        return Err(CallError::TooLarge(MAX_RESPONSE_BYTES));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| send_error(e, timeout))? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(CallError::TooLarge(MAX_RESPONSE_BYTES));
        }
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    if !(200..300).contains(&status) {
        return Err(status_error(status, after, &text));
    }
    Ok(text)
}

pub(crate) fn send_error(e: reqwest::Error, timeout: Duration) -> CallError {
    if e.is_timeout() { CallError::Timeout(timeout) } else { CallError::Network(e.to_string()) }
}

/// The name of a circuit (a provider's, or an `http` host's) as a tenant sees it: failures
/// in one tenant's runs open it for that tenant only, so one tenant cannot make a provider or
/// a host refuse every other tenant's calls (runs without a tenant share one scope).
pub fn circuit_scope(tenant: Option<&str>, name: &str) -> String {
    match tenant {
        Some(t) => format!("{t}/{name}"),
        None => name.to_string(),
    }
}

/// Opens after `threshold` consecutive unhealthy calls; while open, calls to the provider are
/// refused without trying for `cooldown`, then one call is let through (half-open).
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<(u32, Option<Instant>)>,
    /// The failure that opened the circuit (its root cause, for the calls it refuses).
    cause: Mutex<Option<String>>,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker { threshold, cooldown, state: Mutex::new((0, None)), cause: Mutex::new(None) }
    }

    /// [`Breaker::record`] of a failure, remembering it as the cause if it opens the circuit.
    pub fn record_failure(&self, unhealthy: bool, error: &str) -> Option<llmo_core::engine::Millis> {
        let opened = self.record(!unhealthy);
        if opened.is_some() {
            *self.cause.lock().expect("breaker cause") = Some(error.to_string());
        }
        opened
    }

    /// Why the circuit opened, if it is known here.
    pub fn cause(&self) -> Option<String> {
        self.cause.lock().expect("breaker cause").clone()
    }

    /// `Err(time left)` while open.
    pub fn allow(&self) -> Result<(), Duration> {
        let mut s = self.state.lock().expect("breaker lock");
        match s.1 {
            Some(until) if Instant::now() < until => Err(until - Instant::now()),
            Some(_) => {
                // Half-open: this call probes; another failure re-opens at once.
                s.1 = None;
                s.0 = self.threshold.saturating_sub(1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Records a call's health; returns until when (ms since the epoch) the circuit is open
    /// when this call opened it.
    pub fn record(&self, healthy: bool) -> Option<llmo_core::engine::Millis> {
        let mut s = self.state.lock().expect("breaker lock");
        if healthy {
            *s = (0, None);
            None
        } else {
            s.0 += 1;
            let opens = s.0 >= self.threshold && s.1.is_none();
            if s.0 >= self.threshold {
                s.1 = Some(Instant::now() + self.cooldown);
            }
            opens.then(|| crate::ports::now_ms() + self.cooldown.as_millis() as u64)
        }
    }
}

/// How one attempt retries a call that was rate limited or failed on the server side.
#[derive(Debug, Clone, Copy)]
pub struct CallRetry {
    /// Calls per model per attempt, the first included.
    pub max_calls: u32,
    pub initial: Duration,
    /// Longest wait, also the cap on a `Retry-After` the attempt honours: a longer one ends
    /// the attempt (retryable) so the engine's retry policy takes over.
    pub max_wait: Duration,
}

impl Default for CallRetry {
    fn default() -> Self {
        CallRetry { max_calls: 3, initial: Duration::from_millis(500), max_wait: Duration::from_secs(30) }
    }
}

/// The `llm` executor (and the model judge of `evaluate`).
pub struct LlmExecutor {
    config: Config,
    providers: HashMap<String, Arc<dyn Provider>>,
    /// Per tenant and provider ([`circuit_scope`]), made on first use.
    breakers: Mutex<HashMap<String, Arc<Breaker>>>,
    retry: CallRetry,
    /// Answer every call with the mock provider (`llmo run --mock`).
    force_mock: bool,
    /// Fleet-wide rate limits and circuits (in-process unless [`LlmExecutor::with_flow`]).
    flow: Arc<dyn crate::flow::Flow>,
    /// The config's prices, for budget checks of attempts whose run kept none.
    book: budget::PriceBook,
    /// Scripted answers ([`crate::fixtures`]): calls a rule matches are answered from it.
    script: Option<Arc<crate::fixtures::Script>>,
}

impl LlmExecutor {
    pub fn new(config: Config, force_mock: bool) -> Self {
        Self::with_secrets(config, force_mock, Arc::new(crate::secrets::EnvSecrets))
    }

    /// Providers whose key the config does not hold ask `secrets` for it (by its
    /// `api_key_env` name) at each call.
    pub fn with_secrets(config: Config, force_mock: bool, secrets: Arc<dyn crate::secrets::Secrets>) -> Self {
        Self::build(config, force_mock, secrets, &crate::egress::Egress::strict())
    }

    /// [`LlmExecutor::with_secrets`], with providers whose base URL a config file set
    /// (`ProviderConfig::set_by`) connecting only where `egress` allows (the policy of
    /// `http` tasks). Built-in providers and base URLs from the environment are the
    /// operator's and connect anywhere.
    pub fn build(
        config: Config,
        force_mock: bool,
        secrets: Arc<dyn crate::secrets::Secrets>,
        egress: &crate::egress::Egress,
    ) -> Self {
        // No redirects: a provider answers where it was asked, and a redirect would carry the
        // key (`x-api-key` survives reqwest's default policy across hosts) somewhere else.
        let client = reqwest::Client::builder()
            .user_agent(concat!("llmo/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("http client");
        // Names resolve through the policy; no redirects either.
        let guarded = egress.client();
        let mut providers: HashMap<String, Arc<dyn Provider>> = HashMap::new();
        for (name, p) in &config.providers {
            let client = match &p.set_by {
                None => client.clone(),
                Some(file) => {
                    let checked = url::Url::parse(&p.base_url)
                        .map_err(|e| format!("{}: {e}", p.base_url))
                        .and_then(|u| egress.check_url(&u).map_err(|r| r.to_string()));
                    if let Err(why) = checked {
                        let why = format!("provider `{name}` (base_url from {file}): {why}");
                        providers.insert(name.clone(), Arc::new(Refused(why)));
                        continue;
                    }
                    guarded.clone()
                }
            };
            let provider: Arc<dyn Provider> = match p.kind {
                Kind::Openai => Arc::new(OpenAi::new(client, name, p).with_secrets(secrets.clone())),
                Kind::Anthropic => Arc::new(Anthropic::new(client, name, p).with_secrets(secrets.clone())),
                Kind::Mock => Arc::new(Mock::new(config.mock_delay)),
                // Plugged in by the binary ([`LlmExecutor::with_bedrock`]); without it, refused.
                Kind::Bedrock => Arc::new(Refused(format!(
                    "provider `{name}` is Amazon Bedrock, which this program was built without"
                ))),
            };
            providers.insert(name.clone(), provider);
        }
        let breakers = Mutex::new(HashMap::new());
        let retry = config.retry;
        let flow: Arc<dyn crate::flow::Flow> = Arc::new(crate::flow::Local::default());
        let book = config.price_book(force_mock);
        LlmExecutor { config, providers, breakers, retry, force_mock, flow, book, script: None }
    }

    /// Makes the providers of kind `bedrock` with `make` (`llmo-bedrock` holds the AWS SDK, so
    /// that the runtime does not).
    pub fn with_bedrock(mut self, make: &ProviderFactory) -> Self {
        for (name, p) in &self.config.providers {
            if p.kind == Kind::Bedrock {
                self.providers.insert(name.clone(), make(name, p));
            }
        }
        self
    }

    /// Shares rate limits and open circuits through `flow` (the serverless runtime's
    /// DynamoDB-backed one) instead of this process's memory.
    pub fn with_flow(mut self, flow: Arc<dyn crate::flow::Flow>) -> Self {
        self.flow = flow;
        self
    }

    /// The limited buckets a call of `model` on `provider` draws from: the provider's key
    /// (`limits.<provider>`) and the model on it (`limits.<provider>/<model>`), each named by
    /// the provider, model and the key's variable name.
    fn buckets(&self, provider: &str, model: &str) -> Vec<(String, crate::flow::Limit)> {
        let key = self.config.providers.get(provider).and_then(|p| p.api_key_env.as_deref()).unwrap_or("-");
        let mut out = Vec::new();
        if let Some(l) = self.config.limits.get(provider) {
            out.push((format!("{provider}@{key}"), *l));
        }
        if let Some(l) = self.config.limits.get(&format!("{provider}/{model}")) {
            out.push((format!("{provider}/{model}@{key}"), *l));
        }
        out
    }

    /// Takes a request and `tokens` from every bucket (reserving them when they are due only
    /// later) and waits until they are due when the flow waits in place; otherwise
    /// `Throttled { reserved: true }` tells the caller when to call. The shared state being
    /// unreachable lets the call through (logged); too busy, nothing is taken and
    /// `Throttled { reserved: false }` says when to try again.
    async fn admit(
        &self,
        buckets: &[(String, crate::flow::Limit)],
        tokens: u64,
        horizon: Option<Duration>,
    ) -> Result<(), CallError> {
        use crate::flow::FlowError;
        loop {
            let mut taken: Vec<(String, crate::flow::Rate, u64)> = Vec::new();
            let mut due = Duration::ZERO;
            let mut busy = None;
            'all: for (key, limit) in buckets {
                for (name, rate, cost) in [
                    (format!("{key}#requests"), limit.requests(), 1),
                    (format!("{key}#tokens"), limit.tokens(), tokens),
                ] {
                    let Some(rate) = rate else { continue };
                    match self.flow.take(&name, rate, cost, horizon).await {
                        Ok(d) => {
                            due = due.max(d);
                            taken.push((name, rate, cost));
                        }
                        Err(FlowError::Wait { wait }) => {
                            busy = Some(wait);
                            break 'all;
                        }
                        Err(FlowError::Io(e)) => tracing::warn!(bucket = %name, error = %e, "rate limit not checked"),
                    }
                }
            }
            if let Some(wait) = busy {
                for (name, rate, cost) in taken {
                    self.flow.adjust(&name, rate, -(cost as i64)).await;
                }
                if !self.flow.waits_in_place(wait) {
                    return Err(CallError::Throttled { wait, reserved: false });
                }
                tokio::time::sleep(wait).await;
                continue;
            }
            if due.is_zero() {
                return Ok(());
            }
            if !self.flow.waits_in_place(due) {
                return Err(CallError::Throttled { wait: due, reserved: true });
            }
            tokio::time::sleep(due).await;
            return Ok(());
        }
    }

    /// Answers the calls `script`'s model rules match from it (the rest go to the providers).
    pub fn with_script(mut self, script: Arc<crate::fixtures::Script>) -> Self {
        self.script = (!script.fixtures.models.is_empty()).then_some(script);
        self
    }

    /// Replaces a provider (tests, or users adding their own wire format).
    pub fn with_provider(mut self, name: &str, p: Arc<dyn Provider>) -> Self {
        self.providers.insert(name.to_string(), p);
        self
    }

    pub fn with_retry(mut self, retry: CallRetry) -> Self {
        self.retry = retry;
        self
    }

    /// `(provider, model)` candidates: the task's model, then its fallbacks. A fallback
    /// written `p/m` names provider `p` when `p` is a known provider (model names may hold
    /// slashes themselves, `meta-llama/Llama-3-8B`), else the task's provider.
    fn candidates(&self, w: &LlmWith) -> Vec<(String, String)> {
        let provider = w.provider.clone().unwrap_or_else(|| self.config.default_provider.clone());
        let mut out = vec![(provider.clone(), w.model.clone())];
        for f in &w.fallback_models {
            match f.split_once('/') {
                Some((p, m)) if self.providers.contains_key(p) => out.push((p.to_string(), m.to_string())),
                _ => out.push((provider.clone(), f.clone())),
            }
        }
        out
    }

    /// One model, with in-attempt retries for rate limits and server errors.
    /// `admitted`: the first call's capacity was reserved already (the attempt was deferred
    /// until it was due).
    /// `horizon`: how far ahead the run's priority lets it reserve capacity.
    /// The breaker of circuit `scope` ([`circuit_scope`]).
    fn breaker(&self, scope: &str) -> Arc<Breaker> {
        let mut b = self.breakers.lock().expect("breakers");
        if b.len() > 4096 && !b.contains_key(scope) {
            b.clear();
        }
        let c = self.config.breaker;
        b.entry(scope.to_string()).or_insert_with(|| Arc::new(Breaker::new(c.failures, c.cooldown))).clone()
    }

    async fn call(
        &self,
        provider: &str,
        tenant: Option<&str>,
        req: &ChatRequest,
        admitted: bool,
        horizon: Option<Duration>,
        key: &crate::fixtures::CallKey,
    ) -> Result<ChatResponse, CallError> {
        let name = if self.force_mock { "mock" } else { provider };
        let Some(p) = self.providers.get(name) else {
            let mut known: Vec<&str> = self.providers.keys().map(String::as_str).collect();
            known.sort();
            return Err(CallError::Config(format!("unknown provider `{name}` (known: {})", known.join(", "))));
        };
        let scope = circuit_scope(tenant, name);
        let breaker = self.breaker(&scope);
        let buckets = self.buckets(name, &req.model);
        let estimate = self.token_estimate(req);
        let mut wait = self.retry.initial;
        let mut calls = 0;
        let mut admitted = admitted;
        loop {
            if let Err(left) = breaker.allow() {
                // The root cause first: what the provider did, not what the breaker does.
                let cause = breaker.cause().map(|c| format!("{c}; ")).unwrap_or_default();
                return Err(CallError::Server {
                    status: 503,
                    message: format!(
                        "{cause}circuit open for provider `{name}` after repeated failures ({:.0}s left)",
                        left.as_secs_f64()
                    ),
                });
            }
            // Opened by any worker of the fleet (seen within a second).
            if let Some(until) = self.flow.open_until(&scope).await {
                return Err(CallError::Server {
                    status: 503,
                    message: format!(
                        "circuit open for provider `{name}` after repeated failures, opened by another worker ({:.0}s left)",
                        until.saturating_sub(crate::ports::now_ms()) as f64 / 1000.0
                    ),
                });
            }
            if !std::mem::take(&mut admitted) {
                self.admit(&buckets, estimate, horizon).await?;
            }
            calls += 1;
            let scripted = self.script.as_ref().and_then(|s| s.model_answer(key, req));
            let r = match scripted {
                Some(answer) => answer.respond(req).await,
                None => p.chat(req).await,
            };
            let opened = match &r {
                Ok(resp) => {
                    // The tokens taken were an estimate: settle them to what was used.
                    let used = resp.prompt_tokens + resp.completion_tokens;
                    for (key, limit) in &buckets {
                        if let Some(rate) = limit.tokens() {
                            self.flow.adjust(&format!("{key}#tokens"), rate, used as i64 - estimate as i64).await;
                        }
                    }
                    breaker.record(true)
                }
                Err(e) => breaker.record_failure(e.unhealthy(), &e.to_string()),
            };
            if let Some(until) = opened {
                self.flow.open(&scope, until).await;
            }
            let e = match r {
                Ok(resp) => return Ok(resp),
                Err(e) => e,
            };
            if !e.retryable() || matches!(e, CallError::Malformed(_)) || calls >= self.retry.max_calls {
                return Err(e);
            }
            let delay = match &e {
                CallError::RateLimited { retry_after: Some(d), .. } => *d,
                _ => wait,
            };
            if delay > self.retry.max_wait {
                return Err(e);
            }
            tracing::debug!(provider = name, error = %e, delay_ms = delay.as_millis() as u64, "retrying model call");
            tokio::time::sleep(delay).await;
            wait = (wait * 2).min(self.retry.max_wait);
        }
    }

    fn price(&self, provider: &str, model: &str, resp: &ChatResponse) -> Option<f64> {
        if self.force_mock || self.config.providers.get(provider).is_some_and(|p| p.kind == Kind::Mock) {
            return Some(0.0);
        }
        if self.config.providers.get(provider).is_some_and(|p| p.free) {
            return Some(0.0);
        }
        let (name, p) = match self.config.prices.get(model) {
            Some(p) => (model, p),
            None => (resp.model.as_str(), self.config.prices.get(&resp.model)?),
        };
        Some(p.cost(name, resp.prompt_tokens, resp.cache_read_tokens, resp.cache_write_tokens, resp.completion_tokens))
    }

    /// The tokens a call may use at most: the rendered prompt at ~4 characters a token plus
    /// `max_tokens` (1,024 if unset) of answer (what rate limits take before the call).
    fn token_estimate(&self, req: &ChatRequest) -> u64 {
        let chars: usize = req.system.iter().map(|s| s.chars().count()).sum::<usize>()
            + req.messages.iter().map(|(_, c)| c.chars().count()).sum::<usize>()
            + tools::request_texts(req).iter().map(|s| s.chars().count()).sum::<usize>();
        (chars / 4 + 1) as u64 + u64::from(req.max_tokens.unwrap_or(1024))
    }

    /// What a call of `req` on `model` may spend at most, before it is made: the rendered
    /// prompt (and schema) at a token per byte plus `max_tokens` of answer
    /// ([`llmo_core::engine::budget`], the bound the engine reserved). No money when the
    /// model has no price; zero on free and mock providers.
    fn worst_case(
        &self,
        book: Option<&budget::PriceBook>,
        provider: &str,
        model: &str,
        req: &ChatRequest,
    ) -> budget::CallBound {
        let schema = req.schema.as_ref().map(|s| s.to_string());
        // An agent's turn sends its tools and the turns so far too.
        let agent = tools::request_texts(req);
        let prompt = budget::prompt_tokens_bound(
            req.system
                .iter()
                .map(String::as_str)
                .chain(req.messages.iter().map(|(_, c)| c.as_str()))
                .chain(schema.as_deref())
                .chain(agent.iter().map(String::as_str)),
        );
        let max_tokens = req.max_tokens.unwrap_or(budget::DEFAULT_MAX_TOKENS);
        // The run's own prices (the ones its holds were reserved with), else this executor's.
        book.unwrap_or(&self.book).call(Some(provider), model, prompt, max_tokens)
    }

    /// Runs a chat over the candidates in order. Returns the output, the usage of every call
    /// that reported some, and on failure whether a later attempt could help. Under a budget
    /// (`a.allowance`), a candidate is called only if its worst case (rendered prompt and
    /// `max_tokens`, see [`LlmExecutor::worst_case`]) fits in what is left of the attempt's
    /// allowance after `spent` and the calls before it; one whose model has no known price is
    /// not called under a cost budget: its cost could not be counted, so budgets fail closed.
    pub(crate) async fn complete(
        &self,
        a: &Attempt,
        spent: Usage,
        w: &LlmWith,
        req: &ChatRequest,
    ) -> Result<(Result<Value, (String, bool)>, Usage), crate::executor::Deferred> {
        let allowance = a.allowance;
        let mut req = req.clone();
        if allowance.is_some() {
            // The worst case is a bound only if the answer is.
            req.max_tokens.get_or_insert(budget::DEFAULT_MAX_TOKENS);
        }
        let req = &req;
        let workflow = a.plan.checked.workflow.metadata.name.as_str();
        let mut usage = Usage::default();
        let mut errors = Vec::new();
        let mut retryable = false;
        let schema = match &w.output_schema {
            Some(s) => match jsonschema::validator_for(s) {
                Ok(v) => Some(v),
                Err(e) => return Ok((Err((format!("output_schema is not a valid schema: {e}"), false)), usage)),
            },
            None => None,
        };
        for (i, (provider, model)) in self.candidates(w).into_iter().enumerate() {
            let req = ChatRequest { model: model.clone(), ..req.clone() };
            let label = if self.force_mock { format!("mock/{model}") } else { format!("{provider}/{model}") };
            // The workflow's policies, on the model as rendered (a templated model, a
            // fallback, a judge's): the validator sees only what is written.
            if let Err(why) =
                llmo_core::engine::builtin::model_allowed(&a.plan.checked.workflow.spec, &provider, &model)
            {
                errors.push(format!("{label}: {why}"));
                continue;
            }
            if let Some(allow) = allowance {
                let used = Estimate { cost_usd: spent.cost_usd + usage.cost_usd, tokens: spent.tokens + usage.tokens };
                let bound = self.worst_case(a.prices.as_deref(), &provider, &model, &req);
                // Without a cost budget an unpriced call is bounded by its tokens alone.
                let call = Estimate { cost_usd: bound.cost_usd.unwrap_or(0.0), tokens: bound.tokens };
                match bound.cost_usd {
                    None if allow.cost_usd.is_some() => {
                        errors.push(format!(
                            "{label}: not called: the run has a cost budget and this model has no known price (add it to `prices` in the config)"
                        ));
                        continue;
                    }
                    _ if !allow.fits(used, call) => {
                        errors.push(format!(
                            "{label}: not called: it could cost ${:.6} ({} tokens: the rendered prompt and max_tokens), more than the {} this attempt holds of the run's budget",
                            call.cost_usd,
                            call.tokens,
                            allow.left(used)
                        ));
                        continue;
                    }
                    _ => {}
                }
            }
            let system = if self.force_mock { "mock" } else { provider.as_str() };
            let span = tracing::info_span!(
                "chat",
                otel.name = format!("chat {model}"),
                otel.kind = "client",
                gen_ai.operation.name = "chat",
                gen_ai.provider.name = system,
                gen_ai.request.model = %model,
                gen_ai.request.max_tokens = tracing::field::Empty,
                gen_ai.response.model = tracing::field::Empty,
                gen_ai.usage.input_tokens = tracing::field::Empty,
                gen_ai.usage.output_tokens = tracing::field::Empty,
                llmo.cost_usd = tracing::field::Empty,
                error.type = tracing::field::Empty,
            );
            if let Some(m) = req.max_tokens {
                span.record("gen_ai.request.max_tokens", i64::from(m));
            }
            let started = std::time::Instant::now();
            let horizon = a.plan.checked.workflow.spec.priority.unwrap_or_default().horizon();
            let r = self
                .call(
                    &provider,
                    a.tenant.as_deref(),
                    &req,
                    a.admitted && i == 0,
                    horizon,
                    &crate::fixtures::CallKey::of(a),
                )
                .instrument(span.clone())
                .await;
            let seconds = started.elapsed().as_secs_f64();
            match r {
                // Held back by the fleet's limit before anything was spent: the attempt goes
                // back to the queue. (After billed calls it counts as this candidate failing,
                // so their usage is kept.)
                Err(CallError::Throttled { wait, reserved }) if usage.tokens == 0 && usage.cost_usd == 0.0 => {
                    return Err(crate::executor::Deferred { after: wait, admitted: reserved });
                }
                Err(e) => {
                    span.record("error.type", e.to_string().as_str());
                    let m = crate::meter::model_label(&model, self.config.prices.get(&model).is_some());
                    crate::meter::model_call(workflow, system, &m, false, seconds, 0, 0, 0.0);
                    retryable |= e.retryable();
                    errors.push(format!("{label}: {e}"));
                }
                Ok(resp) => {
                    let cost = self.price(&provider, &model, &resp);
                    span.record("gen_ai.response.model", resp.model.as_str());
                    span.record("gen_ai.usage.input_tokens", resp.prompt_tokens as i64);
                    span.record("gen_ai.usage.output_tokens", resp.completion_tokens as i64);
                    span.record("llmo.cost_usd", cost.unwrap_or(0.0));
                    crate::meter::model_call(
                        workflow,
                        system,
                        &crate::meter::model_label(&model, self.config.prices.get(&model).is_some()),
                        true,
                        seconds,
                        resp.prompt_tokens,
                        resp.completion_tokens,
                        cost.unwrap_or(0.0),
                    );
                    usage.tokens += resp.prompt_tokens + resp.completion_tokens;
                    usage.cost_usd += cost.unwrap_or(0.0);
                    let mut out = json!({
                        "text": resp.text,
                        "model": label,
                        "usage": {
                            "prompt_tokens": resp.prompt_tokens,
                            "completion_tokens": resp.completion_tokens,
                            "cost_usd": cost.unwrap_or(0.0),
                        },
                    });
                    if resp.cache_read_tokens > 0 || resp.cache_write_tokens > 0 {
                        out["usage"]["cache_read_tokens"] = json!(resp.cache_read_tokens);
                        out["usage"]["cache_write_tokens"] = json!(resp.cache_write_tokens);
                    }
                    if cost.is_none() {
                        out["usage"]["price_unknown"] = json!(true);
                        tracing::warn!(model = %model, "no price for this model; its cost counts as 0 (add it to `prices` in the config)");
                    }
                    if i > 0 {
                        out["fallback_from"] = json!(errors);
                    }
                    if !resp.tool_calls.is_empty() {
                        out["tool_calls"] = json!(resp.tool_calls);
                        // Calls are not the answer: its JSON comes with the last turn.
                        return Ok((Ok(out), usage));
                    }
                    if req.json {
                        match parse_json(&resp.text) {
                            Err(e) => {
                                retryable = true;
                                errors.push(format!("{label}: the answer is not JSON: {e}"));
                                continue;
                            }
                            Ok(v) => {
                                if let Some(validator) = &schema
                                    && let Some(err) = validator.iter_errors(&v).next()
                                {
                                    retryable = true;
                                    errors.push(format!(
                                        "{label}: the answer does not match output_schema at `{}`: {err}",
                                        err.instance_path()
                                    ));
                                    continue;
                                }
                                out["json"] = v;
                            }
                        }
                    }
                    return Ok((Ok(out), usage));
                }
            }
        }
        Ok((Err((errors.join("; "), retryable)), usage))
    }

    /// [`LlmExecutor::complete`], waiting out the fleet's limit in place.
    async fn complete_waiting(
        &self,
        a: &Attempt,
        spent: Usage,
        w: &LlmWith,
        req: &ChatRequest,
    ) -> (Result<Value, (String, bool)>, Usage) {
        loop {
            match self.complete(a, spent, w, req).await {
                Ok(r) => return r,
                Err(d) => tokio::time::sleep(d.after).await,
            }
        }
    }
}

/// A model's JSON answer: the text itself, or the inside of a ```json fence.
fn parse_json(text: &str) -> Result<Value, serde_json::Error> {
    let t = text.trim();
    let inner = t
        .strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .and_then(|r| r.trim_end().strip_suffix("```"))
        .unwrap_or(t);
    serde_json::from_str(inner.trim())
}

/// A message's content given as parts: `{type: text, text}` (joined, in order, into its
/// text) and `{type: image, url}` or `{type: image, data, media_type}` (base64), checked here:
/// the provider is sent only images of a known type and size, at most [`MAX_IMAGES`] in all.
pub(crate) fn parts_of(i: usize, parts: &[Value]) -> Result<(String, Vec<Image>), String> {
    let mut text = Vec::new();
    let mut images = Vec::new();
    for (j, p) in parts.iter().enumerate() {
        let at = format!("`messages[{i}].content[{j}]`");
        match p.get("type").and_then(Value::as_str) {
            Some("text") => match p.get("text") {
                Some(Value::String(t)) => text.push(t.clone()),
                _ => return Err(format!("{at}: a text part has `text`, a string")),
            },
            Some("image") => {
                let url = p.get("url").and_then(Value::as_str);
                let data = p.get("data").and_then(Value::as_str);
                images.push(match (url, data) {
                    (Some(u), None) if u.starts_with("https://") || u.starts_with("s3://") => Image::Url(u.to_string()),
                    (Some(u), None) => {
                        return Err(format!("{at}: an image's `url` is https:// or s3:// (got {:?})", trunc(u)));
                    }
                    (None, Some(d)) => {
                        let media_type = p.get("media_type").and_then(Value::as_str).unwrap_or_default();
                        if !IMAGE_TYPES.contains(&media_type) {
                            return Err(format!(
                                "{at}: an inline image's `media_type` is one of {} (got {:?})",
                                IMAGE_TYPES.join(", "),
                                trunc(media_type)
                            ));
                        }
                        if d.len() > MAX_IMAGE_BYTES {
                            return Err(format!(
                                "{at}: an inline image is at most {MAX_IMAGE_BYTES} bytes of base64 (got {})",
                                d.len()
                            ));
                        }
                        use base64::Engine;
                        if base64::engine::general_purpose::STANDARD.decode(d).is_err() {
                            return Err(format!("{at}: an inline image's `data` is not base64"));
                        }
                        Image::Data { media_type: media_type.to_string(), data: d.to_string() }
                    }
                    _ => return Err(format!("{at}: an image has exactly one of `url` and `data`")),
                });
            }
            other => return Err(format!("{at}: a part's `type` is text or image (got {other:?})")),
        }
    }
    Ok((text.join("\n"), images))
}

fn trunc(s: &str) -> String {
    s.chars().take(80).collect()
}

/// The provider-neutral request of an `llm` task's rendered `with` block; `Err` when a
/// message's parts are not ones a provider takes ([`parts_of`]).
pub fn request_of(w: &LlmWith) -> Result<ChatRequest, String> {
    let mut system = w.system.clone();
    let mut messages = Vec::new();
    let mut images = Vec::new();
    if let Some(p) = &w.prompt {
        messages.push((Role::User, p.clone()));
    }
    for (i, m) in w.messages.iter().flatten().enumerate() {
        let (content, imgs) = match &m.content {
            Content::Text(t) => (t.clone(), Vec::new()),
            Content::Parts(parts) => {
                let parts: Vec<Value> = parts.iter().map(|p| serde_json::to_value(p).unwrap_or(Value::Null)).collect();
                parts_of(i, &parts)?
            }
        };
        match m.role {
            Role::System if imgs.is_empty() => {
                system = Some(match system {
                    Some(s) => format!("{s}\n\n{content}"),
                    None => content,
                })
            }
            Role::System => return Err(format!("`messages[{i}]`: a system message has no images")),
            r => {
                let k = messages.len();
                images.extend(imgs.into_iter().map(|img| (k, img)));
                messages.push((r, content));
            }
        }
    }
    if images.len() > MAX_IMAGES {
        return Err(format!("the messages carry {} images; at most {MAX_IMAGES} are sent", images.len()));
    }
    Ok(ChatRequest {
        model: w.model.clone(),
        system,
        messages,
        temperature: w.temperature,
        top_p: w.top_p,
        max_tokens: w.max_tokens,
        stop: w.stop.clone(),
        seed: w.seed,
        json: w.response_format == Some(ResponseFormat::Json) || w.output_schema.is_some(),
        schema: w.output_schema.clone(),
        images,
        ..ChatRequest::default()
    })
}

#[async_trait]
impl Executor for LlmExecutor {
    async fn execute(&self, a: &Attempt) -> AttemptResult {
        let w: LlmWith = match serde_json::from_value(a.with.clone()) {
            Ok(w) => w,
            Err(e) => {
                return AttemptResult::Failed { error: format!("llm: {e}"), retryable: false, usage: Usage::default() };
            }
        };
        let req = match request_of(&w) {
            Ok(r) => r,
            Err(e) => {
                return AttemptResult::Failed { error: format!("llm: {e}"), retryable: false, usage: Usage::default() };
            }
        };
        let (r, usage) = self.complete_waiting(a, Usage::default(), &w, &req).await;
        match r {
            Ok(output) => AttemptResult::Succeeded { output: output.into(), usage },
            Err((error, retryable)) => AttemptResult::Failed { error, retryable, usage },
        }
    }

    async fn execute_or_defer(&self, a: &Attempt) -> Result<AttemptResult, crate::executor::Deferred> {
        let w: LlmWith = match serde_json::from_value(a.with.clone()) {
            Ok(w) => w,
            Err(e) => {
                return Ok(AttemptResult::Failed {
                    error: format!("llm: {e}"),
                    retryable: false,
                    usage: Usage::default(),
                });
            }
        };
        let req = match request_of(&w) {
            Ok(r) => r,
            Err(e) => {
                return Ok(AttemptResult::Failed {
                    error: format!("llm: {e}"),
                    retryable: false,
                    usage: Usage::default(),
                });
            }
        };
        let (r, usage) = self.complete(a, Usage::default(), &w, &req).await?;
        Ok(match r {
            Ok(output) => AttemptResult::Succeeded { output: output.into(), usage },
            Err((error, retryable)) => AttemptResult::Failed { error, retryable, usage },
        })
    }
}

#[async_trait]
impl Judge for LlmExecutor {
    async fn judge(
        &self,
        a: &Attempt,
        spent: Usage,
        text: &str,
        criteria: &str,
        model: &str,
        provider: Option<&str>,
    ) -> (Result<f64, TaskError>, Usage) {
        let w = LlmWith {
            provider: provider.map(str::to_string),
            model: model.to_string(),
            fallback_models: Vec::new(),
            system: Some(budget::JUDGE_SYSTEM.into()),
            prompt: Some(budget::judge_prompt(criteria, text)),
            messages: None,
            temperature: Some(0.0),
            top_p: None,
            max_tokens: Some(budget::JUDGE_MAX_TOKENS),
            stop: Vec::new(),
            seed: None,
            response_format: Some(ResponseFormat::Json),
            output_schema: Some(budget::judge_schema()),
        };
        // A judge's request is a system prompt and a prompt: no parts to refuse.
        let req = request_of(&w).unwrap_or_default();
        let (r, usage) = self.complete_waiting(a, spent, &w, &req).await;
        let r = match r {
            Ok(out) => Ok(out.pointer("/json/score").and_then(Value::as_f64).unwrap_or(0.0)),
            Err((message, retryable)) => Err(TaskError { message: format!("llm_judge: {message}"), retryable }),
        };
        (r, usage)
    }
}

#[cfg(test)]
mod tests;

/// A provider's key: the config's, else the one `secrets` holds under its `api_key_env`.
pub(crate) async fn api_key(
    config: &ProviderConfig,
    secrets: &dyn crate::secrets::Secrets,
) -> Result<Option<String>, CallError> {
    if let Some(k) = &config.api_key {
        return Ok(Some(k.clone()));
    }
    match &config.api_key_env {
        Some(name) => secrets.get(name).await.map_err(|e| CallError::Config(format!("reading the key {name}: {e}"))),
        None => Ok(None),
    }
}
