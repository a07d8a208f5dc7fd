//! The API's routes for waiting tasks: `GET /waiting`, `POST /runs/{id}/tasks/{task}/complete`
//! (an approval or rejection, by an authenticated caller the wait allows, or by whoever holds
//! the wait's single-use link) and `POST /events`.
//!
//! An answer is applied as one `Event::Complete` through the API's worker (compare-and-set on
//! the run's log, then the next tasks are sent): exactly once per waiting attempt, so the
//! loser of two racing answers, a replayed request and an answer after the timeout all get a
//! 409 that says why.

use http::StatusCode;
use llmo_core::engine::waits::{AnswerError, Approval, may_answer};
use llmo_core::engine::{AttemptId, Event, Plan, RunState, WaitKind};
use llmo_runtime::queue::{Delivery, Message};
use llmo_runtime::store::{StoredRun, Waiter};
use llmo_runtime::worker::Outcome;
use serde_json::{Map, Value, json};
use std::sync::Arc;

use crate::api::{Api, Refusal, Reply, internal, no_run, problem, reply};
use crate::auth::{Principal, Role};

/// Most tasks one `GET /waiting` lists, and most waiting tasks one `POST /events` answers.
pub const WAITING_PAGE: usize = 100;
/// Longest comment an answer may carry.
pub const COMMENT_BYTES: usize = 4096;
/// How long a link stays valid when its wait has no timeout (it stops working anyway once
/// the task is answered or the run ends).
pub const LINK_DAYS: u64 = 30;

/// The claims of a single-use answer link (HS256 with the deployment's link secret): the
/// same claims as a callback's task token, under another audience.
pub type LinkClaims = llmo_core::callback::AttemptClaims;

const LINK_AUDIENCE: &str = "llmo-answer";

/// Signs an answer link's token.
pub fn mint_link(secret: &[u8], c: &LinkClaims) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        c,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("HS256 signs any claims")
}

/// Checks an answer link's token: signature, audience, expiry.
pub fn verify_link(secret: &[u8], token: &str) -> Result<LinkClaims, String> {
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.set_audience(&[LINK_AUDIENCE]);
    v.leeway = 0;
    jsonwebtoken::decode::<LinkClaims>(token, &jsonwebtoken::DecodingKey::from_secret(secret), &v)
        .map(|d| d.claims)
        .map_err(|e| format!("the link is not valid: {e}"))
}

pub(crate) fn answer_error(e: AnswerError) -> Reply {
    match e {
        AnswerError::NoSuchTask(m) => problem(StatusCode::NOT_FOUND, m),
        AnswerError::NotWaiting(m) => problem(StatusCode::CONFLICT, m),
        AnswerError::Invalid(m) => problem(StatusCode::BAD_REQUEST, m),
    }
}

/// The approval an answer's body gives: `{"approved": bool, "fields": {..}, "comment": ".."}`.
fn approval_of(body: &Value) -> Result<(Approval, Option<u32>), String> {
    let bad = |m: &str| Err(m.to_string());
    let Some(approved) = body.get("approved").and_then(Value::as_bool) else {
        return bad("`approved` (true to approve, false to reject) is required");
    };
    let fields = match body.get("fields") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return bad("`fields` is an object of the form's fields"),
    };
    let comment = match body.get("comment") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= COMMENT_BYTES => Some(s.clone()),
        Some(_) => return bad("`comment` is a string of at most 4096 bytes"),
    };
    let item = match body.get("item") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => Some(n),
            None => return bad("`item` is the index of a `for_each` item"),
        },
    };
    let call = match body.get("call") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Some(s.clone()),
        Some(_) => return bad("`call` is the id of an agent's tool call (a string of at most 256 bytes)"),
    };
    Ok((Approval { approved, fields, comment, call }, item))
}

impl Api {
    fn plan_of(&self, s: &StoredRun) -> Result<Plan, String> {
        self.starter.check(&s.source_name, &s.source).map(Plan::new).map_err(|e| e.to_string())
    }

    pub(crate) async fn loaded(&self, tenant: &str, id: &str) -> Result<(Arc<Plan>, RunState), Refusal> {
        let stored = match self.store.load(id).await {
            Ok(Some(s)) if s.snapshot.tenant.as_deref().unwrap_or("-") == tenant => s,
            Ok(_) => return Err(Box::new(no_run(id))),
            Err(e) => return Err(Box::new(internal(e))),
        };
        let plan = Arc::new(self.plan_of(&stored).map_err(|e| Box::new(problem(StatusCode::CONFLICT, e)))?);
        let st = self.state_of(tenant, plan.clone(), stored).await?;
        Ok((plan, st))
    }

    /// Applies an answer's event through the worker: `Ok(true)` when it was recorded (and
    /// `waiter`, the answered task's entry in the index, is dropped), `Ok(false)` when another
    /// answer (or the timeout) got there first.
    pub(crate) async fn apply(&self, run_id: &str, event: Event, waiter: Option<Waiter>) -> Result<bool, Refusal> {
        let d = Delivery {
            receipt: String::new(),
            message: Message::Event { run_id: run_id.to_string(), event },
            receive_count: 1,
            trace: llmo_runtime::telemetry::traceparent(),
        };
        // Applied here, never deposited on the fold queue (other attempts of the run may be
        // running: an agent's, or other tasks'): the caller is told whether its answer won.
        match self.worker.handle_applying(&d).await {
            Ok(Outcome::Applied(_)) => {
                if let Some(w) = waiter
                    && let Err(e) = self.store.drop_waiter(&w).await
                {
                    tracing::warn!(error = %e, "an answered task's waiter was not dropped (it is dropped when next listed)");
                }
                Ok(true)
            }
            Ok(Outcome::Replayed) => Ok(false),
            Ok(Outcome::Deposited(_)) => Err(Box::new(internal("an answer was deposited, not applied"))),
            Err(e) => {
                // The answer may be stored with what it asks for unsent (the queue failed):
                // its event on the queue makes a worker apply it, or, if it is stored, send
                // what it owes (a stored event's redelivery replays its commands).
                if let Err(q) = llmo_runtime::queue::Queue::send(self.queue.as_ref(), &d.message, 0).await {
                    tracing::error!(error = %q, "an answer's event could not be queued either");
                }
                Err(Box::new(internal(e)))
            }
        }
    }

    /// The answer link of a waiting approval, when it offers one and links are configured.
    fn link(&self, st: &RunState, plan: &Plan, id: AttemptId) -> Option<String> {
        let secret = self.links.as_deref()?;
        let spec = plan.form_at(st, id)?;
        if !spec.link {
            return None;
        }
        let w = st.waits_at(id)?;
        let exp = w.timeout_at.unwrap_or(w.since + LINK_DAYS * 86_400_000) / 1000;
        let claims = LinkClaims {
            aud: LINK_AUDIENCE.into(),
            exp,
            tenant: st.tenant.clone().unwrap_or_else(|| "-".into()),
            run: st.run_id.clone(),
            task: plan.checked.dag.id(id.task).to_string(),
            item: id.item,
            attempt: id.attempt,
        };
        Some(mint_link(secret, &claims))
    }

    /// `GET /waiting`: the tenant's tasks waiting for an approval or an event, oldest first;
    /// an approval's single-use link is included for callers who may answer it.
    pub(crate) async fn waiting(&self, p: &Principal, tenant: &str) -> Reply {
        let plan_of = |s: &StoredRun| self.plan_of(s);
        let link = |plan: &Plan, st: &RunState, w: &Waiter, v: &mut Value| {
            if w.kind == WaitKind::Approval
                && self.may_answer(p, plan.form_at(st, w.attempt_id()).and_then(|f| f.approvers.as_ref()))
                && let Some(token) = self.link(st, plan, w.attempt_id())
            {
                v["link"] = json!(format!("/ui/answer.html#{token}"));
                v["token"] = json!(token);
            }
        };
        let store = self.store.as_ref();
        match llmo_runtime::waits::list(store, &plan_of, &link, Some(&self.reads), tenant, None, WAITING_PAGE).await {
            Ok(found) => {
                reply(StatusCode::OK, json!({"waiting": found.into_iter().map(|(_, v)| v).collect::<Vec<_>>()}))
            }
            Err(llmo_runtime::waits::Error::Read(e)) => crate::api::read_refused(e),
            Err(e) => internal(e),
        }
    }

    /// Whether `p` may answer an approval that names `approvers`.
    fn may_answer(&self, p: &Principal, approvers: Option<&llmo_core::tasks::Approvers>) -> bool {
        match approvers {
            None => p.may(Role::Developer),
            Some(a) => may_answer(Some(a), &p.subject, |r| match r {
                "viewer" => p.may(Role::Viewer),
                "developer" => p.may(Role::Developer),
                "admin" => p.may(Role::Admin),
                _ => false,
            }),
        }
    }

    /// `POST /runs/{id}/tasks/{task}/complete` by an authenticated caller.
    pub(crate) async fn complete(&self, p: &Principal, tenant: &str, id: &str, task: &str, body: &Value) -> Reply {
        let (answer, item) = match approval_of(body) {
            Ok(a) => a,
            Err(m) => return problem(StatusCode::BAD_REQUEST, m),
        };
        let (plan, st) = match self.loaded(tenant, id).await {
            Ok(x) => x,
            Err(r) => return *r,
        };
        let approvers = match plan.checked.dag.index_of(task) {
            // An agent's tools each name their approvers: the call answered says whose.
            Some(i) if plan.is_agent(i) => match plan.answering(&st, task, item, answer.call.as_deref()) {
                Ok(at) => plan.form_at(&st, at).and_then(|f| f.approvers.as_ref()),
                Err(e) => return answer_error(e),
            },
            Some(i) => plan.wait_of(i).and_then(|w| w.approval.as_ref()).and_then(|a| a.approvers.as_ref()),
            None => None,
        };
        if plan.checked.dag.index_of(task).is_some() && !self.may_answer(p, approvers) {
            return problem(
                StatusCode::FORBIDDEN,
                format!("{} may not answer `{task}` (see its `approvers`)", p.subject),
            );
        }
        self.answer(tenant, id, (task, item, None), &answer, &p.subject, plan, st).await
    }

    /// `POST /answer` `{"token", "approved", "fields", "comment"}`: the holder of an
    /// approval's link answers. The token names the run, task, item and attempt; it works
    /// once (the attempt stops waiting) and never for another attempt. Also returns the
    /// tenant, run and task it acted on (for the audit record).
    pub(crate) async fn complete_by_link(&self, body: &Value) -> (Reply, Option<(String, String, String)>) {
        let Some(secret) = self.links.as_deref() else {
            return (problem(StatusCode::NOT_FOUND, "answer links are not configured on this API"), None);
        };
        let Some(token) = body.get("token").and_then(Value::as_str) else {
            return (problem(StatusCode::UNAUTHORIZED, "the answer link's `token` is required"), None);
        };
        let c = match verify_link(secret, token) {
            Ok(c) => c,
            Err(e) => return (problem(StatusCode::UNAUTHORIZED, e), None),
        };
        let done = Some((c.tenant.clone(), c.run.clone(), c.task.clone()));
        let (plan, st) = match self.loaded(&c.tenant, &c.run).await {
            Ok(x) => x,
            Err(r) => return (*r, done),
        };
        // Without `approved`, the holder only asks what the wait asks (the answer page).
        if body.get("approved").is_none() {
            let id =
                plan.checked.dag.index_of(&c.task).map(|task| AttemptId { task, item: c.item, attempt: c.attempt });
            let question = id.and_then(|id| llmo_runtime::waits::describe(&plan, &st, id));
            return match question {
                Some(mut q) => {
                    if let Some(o) = q.as_object_mut() {
                        o.remove("approvers");
                    }
                    (reply(StatusCode::OK, q), None)
                }
                None => (problem(StatusCode::CONFLICT, format!("`{}` is not waiting for an answer", c.task)), None),
            };
        }
        let (answer, _) = match approval_of(body) {
            Ok(a) => a,
            Err(m) => return (problem(StatusCode::BAD_REQUEST, m), done),
        };
        // The link is for one attempt: after a redrive its new attempt needs a new link (an
        // agent's link is for one of its calls).
        let index = plan.checked.dag.index_of(&c.task);
        let current = index.and_then(|i| st.tasks[i].units.get(c.item.unwrap_or(0) as usize)).map(|u| u.attempt);
        if current != Some(c.attempt) && !index.is_some_and(|i| plan.is_agent(i)) {
            return (problem(StatusCode::CONFLICT, "the link is for an earlier attempt of this task"), done);
        }
        let r = self.answer(&c.tenant, &c.run, (&c.task, c.item, Some(c.attempt)), &answer, "link", plan, st).await;
        (r, done)
    }

    /// Records `answer` to `task` (`item`; at `attempt` when a link names it).
    #[allow(clippy::too_many_arguments)]
    async fn answer(
        &self,
        tenant: &str,
        id: &str,
        (task, item, attempt): (&str, Option<u32>, Option<u32>),
        answer: &Approval,
        by: &str,
        plan: Arc<Plan>,
        st: RunState,
    ) -> Reply {
        let approve = |plan: &Plan, st: &RunState| match (attempt, plan.checked.dag.index_of(task)) {
            (Some(attempt), Some(i)) => plan.approve_at(st, AttemptId { task: i, item, attempt }, answer, by),
            _ => plan.approve(st, task, item, answer, by),
        };
        let event = match approve(&plan, &st) {
            Ok(e) => e,
            Err(e) => return answer_error(e),
        };
        let output = match &event {
            Event::Complete { output, .. } => Value::clone(output),
            _ => Value::Null,
        };
        let waiter = event.attempt_id().and_then(|a| Waiter::of(&st, a));
        match self.apply(id, event, waiter).await {
            Ok(true) => reply(
                StatusCode::OK,
                json!({"run_id": id, "task": task, "item": item, "output": output, "recorded": true}),
            ),
            Ok(false) => {
                // Say why: reload (the winner's answer, or the timeout, is stored now).
                let why = match self.loaded(tenant, id).await {
                    Ok((plan, st)) => match approve(&plan, &st) {
                        Err(AnswerError::NotWaiting(m)) => m,
                        _ => format!("`{task}` was answered by another request first"),
                    },
                    Err(_) => format!("`{task}` was answered by another request first"),
                };
                problem(StatusCode::CONFLICT, why)
            }
            Err(r) => *r,
        }
    }

    /// `POST /events` `{"name", "key", "payload"}`: every task of the tenant waiting for this
    /// event and key receives it, once. Events are not kept: one posted before a task waits
    /// for it resumes nothing (`delivered` is empty).
    pub(crate) async fn events(&self, p: &Principal, tenant: &str, body: &Value) -> Reply {
        let Some(name) = body.get("name").and_then(Value::as_str).filter(|n| !n.is_empty() && n.len() <= 128) else {
            return problem(StatusCode::BAD_REQUEST, "`name` (the event's name, 1 to 128 characters) is required");
        };
        let key = match body.get("key") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) if s.len() <= 512 => s.clone(),
            Some(_) => return problem(StatusCode::BAD_REQUEST, "`key` is a string of at most 512 bytes"),
        };
        let payload = body.get("payload").cloned().unwrap_or(Value::Null);
        let waiters = match self.store.waiters(tenant, Some((name, &key)), WAITING_PAGE).await {
            Ok(w) => w,
            Err(e) => return internal(e),
        };
        let mut delivered = Vec::new();
        for w in waiters {
            let (plan, st) = match self.loaded(tenant, &w.run_id).await {
                Ok(x) => x,
                Err(_) => {
                    let _ = self.store.drop_waiter(&w).await;
                    continue;
                }
            };
            let event = match plan.deliver(&st, w.attempt_id(), &payload, &p.subject) {
                Ok(e) => e,
                Err(AnswerError::Invalid(m)) => return problem(StatusCode::BAD_REQUEST, m),
                Err(_) => {
                    let _ = self.store.drop_waiter(&w).await;
                    continue;
                }
            };
            match self.apply(&w.run_id, event, Some(w.clone())).await {
                Ok(true) => delivered.push(json!({
                    "run_id": w.run_id, "task": plan.checked.dag.id(w.task), "item": w.item,
                })),
                Ok(false) => {}
                Err(r) => return *r,
            }
        }
        reply(StatusCode::OK, json!({"name": name, "key": key, "delivered": delivered}))
    }
}
