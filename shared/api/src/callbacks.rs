//! `POST /callbacks/{token}` and `POST /callbacks/{token}/heartbeat`: the holder of a
//! callback's task token answers it (see `llmo_runtime::callbacks`).
//!
//! The token is the credential: it is signed by this deployment and names the tenant, run,
//! task, item and attempt it answers. A bearer token is not needed (the system answering is
//! often not a user of the API); when one is sent it must verify and be of the token's tenant
//! (another tenant's caller gets a 404, as for any of that tenant's runs). An answer is applied
//! once, as one event through the API's worker: the loser of two racing answers, a replayed
//! answer and an answer after the attempt ended all get a 409 that says why. Nothing is
//! stored for a refused answer.

use http::StatusCode;
use llmo_core::callback::CallbackClaims;
use llmo_core::engine::waits::AnswerError;
use llmo_runtime::audit::Record;
use llmo_runtime::callbacks::{Answer, Callbacks};
use llmo_runtime::store::Waiter;
use serde_json::{Value, json};

use crate::answers::answer_error;
use crate::api::{Api, Reply, problem, reply};
use crate::auth::AuthError;
use crate::{Body, Request};

impl Api {
    /// The tokens' keys: from the answer-link secret (none: this API answers no callbacks).
    fn callbacks(&self) -> Option<Callbacks> {
        self.links.as_deref().map(|s| Callbacks::new(s, None))
    }

    /// Answers a callback (or its heartbeat) and writes the audit record (actor `callback`).
    pub(crate) async fn callback(&self, req: &Request, token: &str, heartbeat: bool, arrived: u64) -> Reply {
        let (reply, claims) = self.callback_in(req, token, heartbeat).await;
        if let Some(c) = claims {
            let record = Record {
                at: arrived,
                tenant: c.tenant.clone(),
                actor: "callback".into(),
                role: "token".into(),
                action: if heartbeat { "POST /callbacks/{token}/heartbeat" } else { "POST /callbacks/{token}" }.into(),
                target: Some(format!("{}/{}", c.run, c.task)),
                run_id: Some(c.run),
                result: reply.status().as_u16().to_string(),
            };
            if let Err(e) = self.audit.write(&record).await {
                tracing::error!(error = %e, action = record.action, "audit record not written");
            }
        }
        reply
    }

    async fn callback_in(&self, req: &Request, token: &str, heartbeat: bool) -> (Reply, Option<CallbackClaims>) {
        let Some(callbacks) = self.callbacks() else {
            return (
                problem(StatusCode::NOT_FOUND, "callbacks are not configured on this API (LLMO_LINK_SECRET)"),
                None,
            );
        };
        let claims = match callbacks.verify(token) {
            Ok(c) => c,
            Err(e) => return (problem(StatusCode::UNAUTHORIZED, e), None),
        };
        // A bearer, when sent, must verify and be of the token's tenant.
        if req.headers().contains_key(http::header::AUTHORIZATION) {
            let principal = match &self.auth {
                Some(a) => a.authenticate(req).await,
                None => Err(AuthError::Unauthenticated("this API has no authentication configured".into())),
            };
            match principal {
                Ok(p) if p.tenant == claims.tenant => {}
                Ok(_) => return (crate::api::no_run(&claims.run), None),
                Err(AuthError::Unauthenticated(why)) => return (problem(StatusCode::UNAUTHORIZED, why), None),
                Err(AuthError::Forbidden(why)) => return (problem(StatusCode::FORBIDDEN, why), None),
                Err(AuthError::BadTenant(why)) => return (problem(StatusCode::BAD_REQUEST, why), None),
            }
        }
        let answer = if heartbeat {
            Answer::Heartbeat
        } else {
            let body: Value = match req.body() {
                Body::Empty => return (problem(StatusCode::BAD_REQUEST, "the answer is a JSON body"), Some(claims)),
                b => match serde_json::from_slice(b.as_ref()) {
                    Ok(v) => v,
                    Err(e) => {
                        return (problem(StatusCode::BAD_REQUEST, format!("the body is not JSON: {e}")), Some(claims));
                    }
                },
            };
            match Answer::from_body(&body) {
                Ok(a) => a,
                Err(m) => return (problem(StatusCode::BAD_REQUEST, m), Some(claims)),
            }
        };
        let (plan, st) = match self.loaded(&claims.tenant, &claims.run).await {
            Ok(x) => x,
            Err(r) => return (*r, Some(claims)),
        };
        let now = llmo_runtime::ports::now_ms();
        let event = match answer.event(&plan, &st, &claims, now) {
            Ok(e) => e,
            Err(e) => return (answer_error(e), Some(claims)),
        };
        // A heartbeat leaves the task waiting: its waiter stays listed.
        let waiter = (!heartbeat).then(|| event.attempt_id().and_then(|a| Waiter::of(&st, a))).flatten();
        let done = json!({
            "run_id": claims.run, "task": claims.task, "item": claims.item, "attempt": claims.attempt,
        });
        match self.apply(&claims.run, event, waiter).await {
            Ok(recorded) if heartbeat => {
                // A heartbeat close to the last one is not stored; the attempt lives all the same.
                let mut v = done;
                v["recorded"] = json!(recorded);
                (reply(StatusCode::OK, v), Some(claims))
            }
            Ok(true) => {
                let mut v = done;
                v["recorded"] = json!(true);
                (reply(StatusCode::OK, v), Some(claims))
            }
            Ok(false) => {
                // Say why: the winner's answer (or the timeout) is stored now.
                let why = match self.loaded(&claims.tenant, &claims.run).await {
                    Ok((plan, st)) => match answer.event(&plan, &st, &claims, now) {
                        Err(AnswerError::NotWaiting(m)) => m,
                        _ => format!("`{}` was answered by another request first", claims.task),
                    },
                    Err(_) => format!("`{}` was answered by another request first", claims.task),
                };
                (problem(StatusCode::CONFLICT, why), Some(claims))
            }
            Err(r) => (*r, Some(claims)),
        }
    }
}
