//! Scripted answers (`llmo run --fixtures FILE`, `llmo test`): what models answer per task,
//! `for_each` item and attempt (a 429 and then an answer, a JSON answer, an answer that takes
//! too long), and what `http` requests get, per request. One file format, documented in
//! `docs/workflow-spec.md` ("Fixtures"):
//!
//! ```yaml
//! models:
//!   - task: classify                 # which calls: task, item, attempt, model, prompt_contains
//!     answers:                       # one per call, in order; the last one repeats
//!       - error: { status: 429, retry_after: 100ms }
//!       - json: { category: billing }
//! http:
//!   - method: GET
//!     url: "https://api.example.com/tickets/*"
//!     body: { tickets: [] }          # or `answers: [{status, headers, body}, {error: ...}]`
//! ```
//!
//! A rule answers the calls it matches; every other call goes where it would have gone (the
//! mock provider and an echo under `--mock`, the real provider and the network without it), so
//! canned tools can sit beside real models. [`Fixtures::check`] refuses rules that could never
//! apply to a workflow (an unknown task, a task of another type, an item of a task without
//! `for_each`), so a typo cannot silently let a real call through.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use llmo_core::diagnostic::{did_you_mean, field_path};
use llmo_core::engine::AttemptResult;
use llmo_core::model::Workflow;
use llmo_core::tasks::glob_match;
use llmo_core::yaml::Loaded;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::executor::{Attempt, Executor, failed};
use crate::providers::{CallError, ChatRequest, ChatResponse, status_error};
use crate::secrets::Secrets;

/// A fixtures file, or the `fixtures` of a test case.
#[derive(Debug, Clone, Default)]
pub struct Fixtures {
    pub models: Vec<ModelRule>,
    pub http: Vec<HttpRule>,
}

/// Which calls a rule answers; every field given must match.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// The task's id (a hook's is `on.success[0]`, `on.failure[0]`).
    pub task: Option<String>,
    /// The `for_each` item's index (from 0).
    pub item: Option<u32>,
    /// The task's attempt (from 1): the engine's retries, not the calls within one attempt.
    pub attempt: Option<u32>,
}

/// Model answers for the calls of `llm` tasks and of `evaluate` tasks' judges.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRule {
    #[serde(flatten)]
    pub on: Match,
    /// The model called (a fallback's name answers only its calls).
    pub model: Option<String>,
    /// Text the rendered prompt (system and messages) must contain.
    pub prompt_contains: Option<String>,
    /// One answer for every call it matches, or `answers`.
    pub answer: Option<ModelAnswer>,
    #[serde(default)]
    pub answers: Vec<ModelAnswer>,
    /// Where the rule is written (`file:line:col: models[0]`), for messages.
    #[serde(skip)]
    pub at: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelAnswer {
    pub text: Option<String>,
    /// A JSON answer (sent as its text; `output_schema` still checks it).
    pub json: Option<Value>,
    pub error: Option<Failure>,
    /// Tokens the answer reports (else its words are counted, as the mock provider does).
    pub usage: Option<Tokens>,
    /// How long the call takes before it answers (`2s`): for timeouts.
    pub delay: Option<llmo_core::model::Duration>,
    /// Tools the model asks to call (with `text` or alone): `[{ name, arguments, id? }]`.
    #[serde(default)]
    pub tool_calls: Vec<ScriptedCall>,
}

/// A scripted tool call. Without an `id`, one is made from the turn and the call's place.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedCall {
    pub name: String,
    #[serde(default)]
    pub arguments: Value,
    pub id: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tokens {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// A failed call: `429`, `"connection refused"` (a network error), `"timeout"`, or
/// `{ status, message, retry_after }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Failure {
    Status(u16),
    Text(String),
    Full {
        status: u16,
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        retry_after: Option<llmo_core::model::Duration>,
    },
}

/// HTTP answers for `http` tasks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRule {
    #[serde(flatten)]
    pub on: Match,
    /// Method to match (any when absent).
    pub method: Option<String>,
    /// URL glob (`*` and `?`) matched against the rendered URL without its query (any when
    /// absent).
    pub url: Option<String>,
    /// The single answer, written inline (`status`, `headers`, `body`, `error`, `delay`).
    #[serde(flatten)]
    pub inline: HttpAnswer,
    /// Or one answer per request, in order; the last one repeats.
    #[serde(default)]
    pub answers: Vec<HttpAnswer>,
    #[serde(skip)]
    pub at: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpAnswer {
    pub status: Option<u16>,
    #[serde(default)]
    pub headers: Map<String, Value>,
    pub body: Option<Value>,
    /// The request fails without an answer (`connection refused`, `timeout`).
    pub error: Option<String>,
    pub delay: Option<llmo_core::model::Duration>,
}

impl HttpAnswer {
    fn is_empty(&self) -> bool {
        self.status.is_none() && self.headers.is_empty() && self.body.is_none() && self.error.is_none()
    }
}

/// Says where a value of a loaded YAML document is: `file:line:col: field`.
pub struct Locator<'a> {
    pub file: &'a str,
    pub loaded: &'a Loaded,
    /// The pointer of the fixtures in the document (`/cases/0/fixtures`; empty for a file).
    pub base: String,
}

impl Locator<'_> {
    /// `file:line:col: models[0].answers[1]` for a pointer relative to [`Locator::base`].
    pub fn at(&self, rel: &str) -> String {
        let pointer = format!("{}{rel}", self.base);
        let (span, key) = self.loaded.nearest(&pointer);
        let span = key.unwrap_or(span);
        let field = field_path(&pointer);
        format!("{}:{}:{}: {field}", self.file, span.start.line, span.start.column)
    }
}

/// Why a fixtures file or block cannot be used: every problem, each located.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct FixtureError(pub Vec<String>);

impl Fixtures {
    /// Reads a fixtures file (YAML).
    pub fn load(path: &Path) -> Result<Fixtures, FixtureError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| FixtureError(vec![format!("{name}: {e}")]))?;
        let loaded =
            llmo_core::yaml::load(&text, Default::default()).map_err(|e| FixtureError(vec![format!("{name}: {e}")]))?;
        Fixtures::parse(&loaded.json, &Locator { file: &name, loaded: &loaded, base: String::new() })
    }

    /// The fixtures of a mapping `{ models: [...], http: [...] }`.
    pub fn parse(v: &Value, at: &Locator) -> Result<Fixtures, FixtureError> {
        let mut errors = Vec::new();
        let mut out = Fixtures::default();
        let Some(map) = v.as_object() else {
            return Err(FixtureError(vec![format!("{}: fixtures are a mapping with `models` and `http`", at.at(""))]));
        };
        for key in map.keys() {
            if key != "models" && key != "http" {
                let hint = did_you_mean(key, ["models", "http"]).map(|h| format!(" ({h})")).unwrap_or_default();
                errors.push(format!(
                    "{}: unknown key{hint}; fixtures have `models` and `http`",
                    at.at(&format!("/{key}"))
                ));
            }
        }
        for (i, rule) in list(map.get("models"), "/models", at, &mut errors).iter().enumerate() {
            let p = format!("/models/{i}");
            match serde_json::from_value::<ModelRule>(rule.clone()) {
                Err(e) => errors.push(format!("{}: {e}", at.at(&p))),
                Ok(mut r) => {
                    r.at = at.at(&p);
                    let single = r.answer.is_some();
                    if let Some(a) = r.answer.take() {
                        if !r.answers.is_empty() {
                            errors.push(format!("{}: give `answer` or `answers`, not both", r.at));
                        }
                        r.answers.insert(0, a);
                    }
                    if r.answers.is_empty() {
                        errors.push(format!("{}: a model rule needs `answer` or `answers`", r.at));
                    }
                    for (j, a) in r.answers.iter().enumerate() {
                        let n = [a.text.is_some(), a.json.is_some(), a.error.is_some()].iter().filter(|b| **b).count();
                        let calls = !a.tool_calls.is_empty();
                        if (!calls && n != 1) || (calls && (a.json.is_some() || a.error.is_some())) {
                            let field = if single { format!("{p}/answer") } else { format!("{p}/answers/{j}") };
                            errors.push(format!(
                                "{}: an answer is one of `text`, `json` or `error`, or `tool_calls` (with `text` or alone)",
                                at.at(&field)
                            ));
                        }
                    }
                    out.models.push(r);
                }
            }
        }
        for (i, rule) in list(map.get("http"), "/http", at, &mut errors).iter().enumerate() {
            let p = format!("/http/{i}");
            match serde_json::from_value::<HttpRule>(rule.clone()) {
                Err(e) => errors.push(format!("{}: {e}", at.at(&p))),
                Ok(mut r) => {
                    r.at = at.at(&p);
                    if !r.inline.is_empty() && !r.answers.is_empty() {
                        errors.push(format!("{}: give the answer inline or `answers`, not both", r.at));
                    }
                    if r.answers.is_empty() {
                        r.answers.push(std::mem::take(&mut r.inline));
                    }
                    if r.url.is_none() && r.on.task.is_none() {
                        errors.push(format!("{}: an http rule needs `url` or `task`", r.at));
                    }
                    out.http.push(r);
                }
            }
        }
        if errors.is_empty() { Ok(out) } else { Err(FixtureError(errors)) }
    }

    /// `self`'s rules first (they win), then `other`'s.
    pub fn then(mut self, other: &Fixtures) -> Fixtures {
        self.models.extend(other.models.iter().cloned());
        self.http.extend(other.http.iter().cloned());
        self
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty() && self.http.is_empty()
    }

    /// Refuses rules that cannot apply to `wf`: a task it does not have, a model answer for a
    /// task that calls no model, an HTTP answer for a task that sends no request, an item of a
    /// task without `for_each`.
    pub fn check(&self, wf: &Workflow) -> Result<(), FixtureError> {
        let mut tasks: Vec<(String, &str, bool)> =
            wf.spec.tasks.iter().map(|t| (t.id.clone(), t.ty.as_str(), t.for_each.is_some())).collect();
        if let Some(on) = &wf.spec.on {
            for (kind, hooks) in [("success", &on.success), ("failure", &on.failure)] {
                for (i, h) in hooks.iter().enumerate() {
                    tasks.push((format!("on.{kind}[{i}]"), h.ty.as_str(), false));
                }
            }
        }
        let mut errors = Vec::new();
        for (rules, types, what) in [
            (
                self.models.iter().map(|r| &r.at).collect::<Vec<_>>(),
                &["llm", "evaluate", "agent"][..],
                "`llm`, `evaluate` or `agent`",
            ),
            (self.http.iter().map(|r| &r.at).collect(), &["http", "agent"][..], "`http`"),
        ] {
            if let Some(at) = rules.first()
                && !tasks.iter().any(|t| types.contains(&t.1))
            {
                errors.push(format!("{at}: workflow `{}` has no {what} task to answer", wf.metadata.name));
            }
        }
        let mut check = |on: &Match, at: &str, types: &[&str], other: &str| {
            let Some(id) = &on.task else { return };
            match tasks.iter().find(|t| &t.0 == id) {
                None => {
                    let hint = did_you_mean(id, tasks.iter().map(|t| t.0.as_str()))
                        .map(|h| format!(" ({h})"))
                        .unwrap_or_default();
                    errors.push(format!("{at}: task: workflow `{}` has no task `{id}`{hint}", wf.metadata.name));
                }
                Some((_, ty, _)) if !types.contains(ty) => errors.push(format!(
                    "{at}: task: `{id}` is a `{ty}` task, which {}; {other}",
                    if types.contains(&"llm") { "calls no model" } else { "sends no HTTP request" }
                )),
                Some((_, _, false)) if on.item.is_some() => {
                    errors.push(format!("{at}: item: task `{id}` has no `for_each`, so it has no items"))
                }
                _ => {}
            }
            if on.attempt == Some(0) {
                errors.push(format!("{at}: attempt: attempts count from 1"));
            }
        };
        for r in &self.models {
            check(
                &r.on,
                &r.at,
                &["llm", "evaluate", "agent"],
                "model answers apply to `llm`, `evaluate` and `agent` tasks",
            );
        }
        for r in &self.http {
            check(&r.on, &r.at, &["http", "agent"], "HTTP answers apply to `http` tasks and agents' `http` tools");
        }
        if errors.is_empty() { Ok(()) } else { Err(FixtureError(errors)) }
    }
}

fn list<'v>(v: Option<&'v Value>, p: &str, at: &Locator, errors: &mut Vec<String>) -> &'v [Value] {
    match v {
        None | Some(Value::Null) => &[],
        Some(Value::Array(a)) => a,
        Some(_) => {
            errors.push(format!("{}: a list of rules", at.at(p)));
            &[]
        }
    }
}

/// The call a rule is asked about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallKey {
    pub run_id: Arc<str>,
    pub task: Arc<str>,
    pub item: Option<u32>,
    pub attempt: u32,
}

impl CallKey {
    pub fn of(a: &Attempt) -> CallKey {
        CallKey { run_id: a.run_id.clone(), task: a.task_id.clone(), item: a.item, attempt: a.attempt }
    }
}

impl Match {
    fn matches(&self, k: &CallKey) -> bool {
        self.task.as_deref().is_none_or(|t| t == &*k.task)
            && self.item.is_none_or(|i| k.item == Some(i))
            && self.attempt.is_none_or(|n| n == k.attempt)
    }
}

/// [`Fixtures`] being answered from: which answer of each rule each task (item) of each run is
/// at. Calls of one task item are sequential, so "the second call of `classify` in this run"
/// is well defined even when runs and items go in parallel.
#[derive(Debug, Default)]
pub struct Script {
    pub fixtures: Fixtures,
    /// (model rule?, rule, run, task, item) → calls answered.
    next: Mutex<HashMap<(bool, usize, CallKey), usize>>,
}

impl Script {
    pub fn new(fixtures: Fixtures) -> Arc<Script> {
        Arc::new(Script { fixtures, next: Mutex::default() })
    }

    fn take<T: Clone>(&self, model: bool, rule: usize, answers: &[T], k: &CallKey) -> T {
        // Counted per task item, over its attempts (an `attempt` matcher narrows the rule).
        let key = (model, rule, CallKey { attempt: 0, ..k.clone() });
        let mut next = self.next.lock().expect("script");
        // One entry per rule and task item of each run: a long-lived local worker forgets them
        // past this many (a run then starts its rules' answers over), instead of growing.
        if next.len() >= 65_536 && !next.contains_key(&key) {
            next.clear();
        }
        let n = next.entry(key).or_default();
        let a = answers[(*n).min(answers.len() - 1)].clone();
        *n += 1;
        a
    }

    /// The scripted answer of a model call, if a rule matches it.
    pub fn model_answer(&self, k: &CallKey, req: &ChatRequest) -> Option<ModelAnswer> {
        let (i, rule) = self.fixtures.models.iter().enumerate().find(|(_, r)| {
            r.on.matches(k)
                && r.model.as_deref().is_none_or(|m| m == req.model)
                && r.prompt_contains.as_deref().is_none_or(|p| {
                    req.system.as_deref().is_some_and(|s| s.contains(p))
                        || req.messages.iter().any(|(_, c)| c.contains(p))
                })
        })?;
        Some(self.take(true, i, &rule.answers, k))
    }

    /// The scripted answer of an HTTP request, if a rule matches it.
    pub fn http_answer(&self, k: &CallKey, method: &str, url: &str) -> Option<HttpAnswer> {
        let (i, rule) = self.fixtures.http.iter().enumerate().find(|(_, r)| {
            r.on.matches(k)
                && r.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method))
                && r.url.as_deref().is_none_or(|u| glob_match(u, url))
        })?;
        Some(self.take(false, i, &rule.answers, k))
    }
}

impl ModelAnswer {
    /// What the provider would have returned.
    pub async fn respond(&self, req: &ChatRequest) -> Result<ChatResponse, CallError> {
        if let Some(d) = self.delay {
            tokio::time::sleep(d.0).await;
        }
        if let Some(f) = &self.error {
            return Err(match f {
                Failure::Status(s) => status_error(*s, None, &format!("scripted {s}")),
                Failure::Text(t) if t == "timeout" => CallError::Timeout(self.delay.map_or(Duration::ZERO, |d| d.0)),
                Failure::Text(t) => CallError::Network(t.clone()),
                Failure::Full { status, message, retry_after } => status_error(
                    *status,
                    retry_after.map(|d| d.0),
                    message.as_deref().unwrap_or(&format!("scripted {status}")),
                ),
            });
        }
        let text = match (&self.text, &self.json) {
            (Some(t), _) => t.clone(),
            (None, Some(v)) => v.to_string(),
            (None, None) => String::new(),
        };
        let (prompt_tokens, completion_tokens) = match self.usage {
            Some(u) => (u.prompt_tokens, u.completion_tokens),
            None => crate::providers::word_usage(req, &text),
        };
        let turn = req.turns.len();
        let tool_calls = self
            .tool_calls
            .iter()
            .enumerate()
            .map(|(k, c)| crate::providers::tools::ToolCall {
                id: c.id.clone().unwrap_or_else(|| format!("call_{turn}_{k}")),
                name: c.name.clone(),
                arguments: if c.arguments.is_null() { serde_json::json!({}) } else { c.arguments.clone() },
            })
            .collect();
        Ok(ChatResponse {
            text,
            model: req.model.clone(),
            prompt_tokens,
            completion_tokens,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            tool_calls,
        })
    }
}

/// Answers `http` tasks from a [`Script`]; a request no rule matches goes to `unmatched` (the
/// real executor, when models and the network are real) or, without one, gets `200` with a
/// body echoing the request (`{ mock: true, method, url, body }`, under `--mock`). Secrets are
/// still resolved and checked against their hosts, so a missing or misdirected one shows up
/// offline too. A scripted answer makes no connection, so the egress policy does not apply.
pub struct MockHttp {
    pub script: Arc<Script>,
    pub secrets: Arc<dyn Secrets>,
    pub unmatched: Option<Arc<dyn Executor>>,
}

impl Default for MockHttp {
    fn default() -> Self {
        MockHttp {
            script: Script::new(Fixtures::default()),
            secrets: Arc::new(crate::secrets::EnvSecrets),
            unmatched: None,
        }
    }
}

#[async_trait]
impl Executor for MockHttp {
    async fn execute(&self, a: &Attempt) -> AttemptResult {
        use crate::http::{headers, host_of, method_name, outcome, parse_with, request_url};
        let w = match parse_with(a) {
            Ok(w) => w,
            Err(e) => return failed(e),
        };
        let m = method_name(w.method);
        let bare = w.url.split('?').next().unwrap_or(&w.url);
        let hit = self.script.http_answer(&CallKey::of(a), m, bare);
        if hit.is_none()
            && let Some(inner) = &self.unmatched
        {
            return inner.execute(a).await;
        }
        let url = match request_url(&w) {
            Ok(u) => u,
            Err(e) => return failed(e),
        };
        let revealed = match headers(a, &w, &host_of(&url), self.secrets.as_ref()).await {
            Ok((_, r)) => r,
            Err(e) => return failed(e),
        };
        match hit {
            Some(f) => {
                if let Some(d) = f.delay {
                    tokio::time::sleep(d.0).await;
                }
                if let Some(e) = f.error {
                    return AttemptResult::Failed {
                        error: format!("{m} {bare}: {e} (scripted)"),
                        retryable: true,
                        usage: Default::default(),
                    };
                }
                let body = f.body.unwrap_or(Value::Null).to_string();
                outcome(&w, f.status.unwrap_or(200), f.headers, &body, &revealed)
            }
            None => {
                let echo = json!({ "mock": true, "method": m, "url": w.url, "body": w.body });
                outcome(&w, 200, Map::new(), &echo.to_string(), &revealed)
            }
        }
    }

    fn raw_fields(&self) -> &'static [&'static str] {
        &["headers"]
    }
}

#[cfg(test)]
mod tests;
