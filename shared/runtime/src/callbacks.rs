//! Task tokens of callbacks (`callback` on a `function` or `http` task, see
//! [`llmo_core::callback`]): minted for an attempt when its call goes out, checked when their
//! holder answers (`POST /callbacks/{token}`, `llmo callback`).
//!
//! A token is a JWT (HS256) over [`CallbackClaims`]: tenant, run, task, item, attempt and an
//! expiry. Its key is derived from the deployment's answer-link secret (`LLMO_LINK_SECRET`),
//! so no new secret is to be kept, and its audience differs from an answer link's: neither is
//! taken for the other. The signature proves the token was issued here for that attempt; that
//! it is answered once, and only while its attempt waits, is the run's state's
//! ([`llmo_core::engine::callbacks`]).

use std::sync::Arc;

use async_trait::async_trait;
use llmo_core::callback::{AUDIENCE, CallbackClaims};
use llmo_core::engine::builtin::TaskError;
use llmo_core::engine::waits::AnswerError;
use llmo_core::engine::{AttemptResult, Event, Millis, Plan, RunState};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::executor::{Attempt, Deferred, Executor, Registry, failed};

/// The headers an `http` task with a callback sends its token and the URL to answer in.
pub const TOKEN_HEADER: &str = "Llmo-Callback-Token";
pub const URL_HEADER: &str = "Llmo-Callback-Url";

/// A minted token, and the URL its holder answers at (when the API's address is known).
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub token: String,
    pub url: Option<String>,
}

/// Mints and checks task tokens.
#[derive(Clone)]
pub struct Callbacks {
    key: Arc<[u8]>,
    /// The API's public address (`https://api.example.com`), for the callback URL.
    base_url: Option<Arc<str>>,
}

impl std::fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callbacks").field("base_url", &self.base_url).finish_non_exhaustive()
    }
}

/// Slack past the attempt's own bounds before a token expires.
const SLACK_SECS: u64 = 3600;

impl Callbacks {
    /// Tokens keyed from `secret` (the answer-link secret: at least 32 bytes), answered at
    /// `base_url` (none: only `llmo callback` and those who know the API answer them).
    pub fn new(secret: &[u8], base_url: Option<String>) -> Self {
        let mut h = Sha256::new();
        h.update(b"llmo-callback\0");
        h.update(secret);
        Callbacks { key: Arc::from(&h.finalize()[..]), base_url: base_url.map(|u| Arc::from(u.trim_end_matches('/'))) }
    }

    /// The token of attempt `a` (of a task with a `callback`), valid until its call's timeout
    /// and its callback's timeout have passed (and an hour).
    pub fn mint(&self, a: &Attempt, now_secs: u64) -> Token {
        let cb = a.callback_with().cloned().unwrap_or_default();
        let call = a.timeout.map_or(3600, |t| t.as_secs() + 1);
        let claims = CallbackClaims {
            aud: AUDIENCE.into(),
            exp: now_secs + call + cb.timeout_ms() / 1000 + SLACK_SECS,
            tenant: a.tenant.as_deref().unwrap_or("-").to_string(),
            run: a.run_id.to_string(),
            task: a.task_id.to_string(),
            item: a.item,
            attempt: a.attempt,
        };
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&self.key),
        )
        .expect("HS256 signs any claims");
        let url = self.base_url.as_ref().map(|b| format!("{b}/callbacks/{token}"));
        Token { token, url }
    }

    /// The claims of `token` when it was minted here and has not expired.
    pub fn verify(&self, token: &str) -> Result<CallbackClaims, String> {
        if token.len() > 4096 {
            return Err("the task token is not valid: too long".into());
        }
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_audience(&[AUDIENCE]);
        v.leeway = 0;
        jsonwebtoken::decode::<CallbackClaims>(token, &jsonwebtoken::DecodingKey::from_secret(&self.key), &v)
            .map(|d| d.claims)
            .map_err(|e| format!("the task token is not valid: {e}"))
    }

    /// Wraps the `http` and `function` executors of `registry` so that their attempts of
    /// tasks with a `callback` carry a token.
    pub fn install(&self, registry: &mut Registry) {
        for ty in ["http", "function"] {
            if let Some(inner) = registry.get(ty).cloned() {
                registry.register(ty, Arc::new(Sending { inner, callbacks: self.clone() }));
            }
        }
    }
}

/// What the holder of a token answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The task succeeds with this output.
    Output(Value),
    /// The attempt fails; `retry` applies when `retryable`.
    Error { error: String, retryable: bool },
    /// The call is still being worked on: the heartbeat's deadline moves.
    Heartbeat,
}

impl Answer {
    /// The answer a body says: `{"output": ANY}` or `{"error": "...", "retryable": bool}`
    /// (retryable unless it says `false`).
    pub fn from_body(body: &Value) -> Result<Answer, String> {
        let Some(o) = body.as_object() else {
            return Err("the answer is a JSON object: `{\"output\": ...}` or `{\"error\": \"...\"}`".into());
        };
        if let Some(k) = o.keys().find(|k| !matches!(k.as_str(), "output" | "error" | "retryable")) {
            return Err(format!("unknown field `{k}` (an answer has `output`, or `error` and `retryable`)"));
        }
        match (o.get("output"), o.get("error")) {
            (Some(out), None) if !o.contains_key("retryable") => Ok(Answer::Output(out.clone())),
            (None, Some(Value::String(e))) => {
                let retryable = match o.get("retryable") {
                    None => true,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err("`retryable` is true or false".into()),
                };
                Ok(Answer::Error { error: e.clone(), retryable })
            }
            (None, Some(_)) => Err("`error` is a message (a string)".into()),
            (Some(_), _) => Err("an answer has `output`, or `error` (with `retryable`), not both".into()),
            (None, None) => Err("an answer has `output` (the task succeeds) or `error` (it fails)".into()),
        }
    }

    /// The event that records this answer to the attempt `claims` name, if it still waits.
    pub fn event(
        &self,
        plan: &Plan,
        st: &RunState,
        claims: &CallbackClaims,
        now: Millis,
    ) -> Result<Event, AnswerError> {
        let id = plan.callback_unit(st, &claims.task, claims.item, claims.attempt)?;
        match self {
            Answer::Output(v) => plan.callback_succeeded(st, id, v.clone()),
            Answer::Error { error, retryable } => plan.callback_failed(st, id, error, *retryable),
            Answer::Heartbeat => plan.callback_heartbeat(st, id, now),
        }
    }
}

/// The failure of a callback task's attempt in a runtime that cannot mint tokens.
pub fn unconfigured() -> AttemptResult {
    failed(TaskError::fatal(
        "this task waits for a callback, and this runtime issues no task tokens (set LLMO_LINK_SECRET, at least \
         32 bytes; `llmo serve` and `llmo run --state` keep one of their own)",
    ))
}

/// Whether attempt `a` is of a task with a `callback` that has no token: its call must not go.
pub fn missing(a: &Attempt) -> bool {
    a.callback.is_none() && a.callback_with().is_some()
}

/// An executor whose attempts of callback tasks carry a fresh token.
struct Sending {
    inner: Arc<dyn Executor>,
    callbacks: Callbacks,
}

impl Sending {
    fn with_token<'a>(&self, a: &'a Attempt) -> std::borrow::Cow<'a, Attempt> {
        if a.callback.is_some() || a.callback_with().is_none() {
            return std::borrow::Cow::Borrowed(a);
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut owned = a.clone();
        owned.callback = Some(Arc::new(self.callbacks.mint(a, now)));
        std::borrow::Cow::Owned(owned)
    }
}

#[async_trait]
impl Executor for Sending {
    async fn execute(&self, a: &Attempt) -> AttemptResult {
        self.inner.execute(&self.with_token(a)).await
    }

    async fn execute_or_defer(&self, a: &Attempt) -> Result<AttemptResult, Deferred> {
        self.inner.execute_or_defer(&self.with_token(a)).await
    }

    fn inline(&self) -> bool {
        self.inner.inline()
    }

    fn raw_fields(&self) -> &'static [&'static str] {
        self.inner.raw_fields()
    }

    fn times_itself(&self) -> bool {
        self.inner.times_itself()
    }

    fn detaches(&self) -> bool {
        self.inner.detaches()
    }

    async fn detach(&self, a: &Attempt) -> Result<(), AttemptResult> {
        self.inner.detach(&self.with_token(a)).await
    }

    async fn cancel(&self, run_id: &str) -> Result<(), String> {
        self.inner.cancel(run_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bound_to_their_attempt_and_key() {
        let yaml = "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: w }\nspec:\n  tasks:\n    - { id: a, type: http, with: { url: 'https://x.example.com', callback: { timeout: 1h } } }\n";
        let mut a = crate::executor::test_attempt_of(yaml, "http", serde_json::json!({}), None, 2);
        a.tenant = Some(Arc::from("acme"));
        let c = Callbacks::new(&[7; 32], Some("https://api.example.com/".into()));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let t = c.mint(&a, now);
        let claims = c.verify(&t.token).unwrap();
        assert_eq!(
            (claims.tenant.as_str(), claims.run.as_str(), claims.task.as_str(), claims.item, claims.attempt),
            ("acme", "run-1", "a", None, 2)
        );
        assert_eq!(claims.exp, now + 1 + 3600 + SLACK_SECS);
        assert_eq!(t.url.as_deref(), Some(format!("https://api.example.com/callbacks/{}", t.token).as_str()));
        assert!(Callbacks::new(&[8; 32], None).verify(&t.token).is_err(), "another deployment's key");
        let forged = format!("{}x", &t.token);
        assert!(c.verify(&forged).is_err());
        // An answer link signed with the same secret is not a task token.
        let link = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::json!({"aud": "llmo-answer", "exp": 4_000_000_000u64, "tenant": "acme", "run": "run-1", "task": "a", "attempt": 2}),
            &jsonwebtoken::EncodingKey::from_secret(&c.key),
        )
        .unwrap();
        assert!(c.verify(&link).is_err());
        assert!(missing(&a), "no token yet");
        assert!(c.verify(&c.mint(&a, 0).token).is_err(), "expired");
    }

    #[test]
    fn answers_are_read_strictly() {
        use serde_json::json;
        assert_eq!(Answer::from_body(&json!({"output": {"a": 1}})), Ok(Answer::Output(json!({"a": 1}))));
        assert_eq!(Answer::from_body(&json!({"output": null})), Ok(Answer::Output(Value::Null)));
        assert_eq!(
            Answer::from_body(&json!({"error": "boom"})),
            Ok(Answer::Error { error: "boom".into(), retryable: true })
        );
        assert_eq!(
            Answer::from_body(&json!({"error": "boom", "retryable": false})),
            Ok(Answer::Error { error: "boom".into(), retryable: false })
        );
        for bad in [
            json!({}),
            json!([1]),
            json!({"output": 1, "error": "x"}),
            json!({"output": 1, "retryable": true}),
            json!({"error": 3}),
            json!({"error": "x", "retryable": "no"}),
            json!({"outptu": 1}),
        ] {
            assert!(Answer::from_body(&bad).is_err(), "{bad}");
        }
    }
}
