//! Waiting tasks as the use cases see them: listing the tasks that wait for a person or an
//! event, and answering them in a store (the embedded runtime and the CLI; the serverless
//! API applies the same events through its worker, which also sends what follows).
//!
//! Checking an answer is the engine's ([`llmo_core::engine::waits`]); exactly-once is the
//! store's compare-and-set plus the engine ignoring a second completion of one attempt.

use llmo_core::engine::waits::AnswerError;
use llmo_core::engine::{AttemptId, Event, Plan, RunState, RunStatus, TaskStatus, WaitKind};
use serde_json::{Value, json};

use crate::ports::Clock;
use crate::store::{RunStore, StoredRun, Transition, Waiter, rebuild};

/// Why an answer was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no run `{0}`")]
    NoSuchRun(String),
    #[error(transparent)]
    Answer(#[from] AnswerError),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error("{0}")]
    Plan(String),
    /// A read refused for its cost ([`crate::reads`]).
    #[error(transparent)]
    Read(crate::reads::ReadError),
}

/// A waiting task, as lists show it (and the API and CLI print it).
pub fn describe(plan: &Plan, st: &RunState, id: AttemptId) -> Option<Value> {
    let u = st.tasks.get(id.task)?.units.get(id.unit())?;
    let w = st.waits_at(id)?;
    let call = st.waiting_call(id);
    if u.status != TaskStatus::Waiting && call.is_none() || st.status != RunStatus::Running {
        return None;
    }
    let mut v = json!({
        "run_id": st.run_id,
        "workflow": plan.checked.workflow.metadata.name,
        "task": plan.checked.dag.id(id.task),
        "item": id.item,
        "attempt": id.attempt,
        "kind": w.kind.as_str(),
        "since": w.since,
        "timeout_at": w.timeout_at,
    });
    match w.kind {
        WaitKind::Approval => {
            let a = plan.form_at(st, id)?;
            v["prompt"] = json!(w.prompt);
            v["fields"] = serde_json::to_value(&a.fields).unwrap_or(Value::Null);
            v["approvers"] = serde_json::to_value(&a.approvers).unwrap_or(Value::Null);
            // An agent's call: what it would run.
            if let Some(c) = call {
                v["call"] = json!({"id": c.id, "name": c.name, "arguments": c.arguments});
            }
        }
        WaitKind::Event => {
            v["event"] = json!(w.event);
            v["key"] = json!(w.key);
        }
        WaitKind::Sleep => v["wake_at"] = json!(u.wake_at),
        // Its token is never listed: only the call it was sent with carries it.
        WaitKind::Callback => {
            v["wake_at"] = json!(if call.is_some() { w.callback_due().map(|(at, _)| at) } else { u.wake_at });
            v["heartbeat_ms"] = json!(w.heartbeat);
            v["beat_at"] = json!(w.beat_at);
            if let Some(c) = call {
                v["call"] = json!({"id": c.id, "name": c.name, "arguments": c.arguments});
            }
        }
    }
    Some(v)
}

/// The tasks of `tenant` (`""`: runs without one) waiting for an approval or an event, oldest
/// first, at most `limit`. Entries whose unit is no longer waiting are dropped from the index
/// on the way. `plan_of` builds a stored run's plan (its workflow validated again); `decorate`
/// may add to each listed task's description from its run (the API adds answer links).
/// With `reads`, each run is read at a bounded cost ([`crate::reads::Reads`]: the API's
/// listing of many runs is capped per tenant as its reads of one are).
#[allow(clippy::too_many_arguments)]
pub async fn list(
    store: &dyn RunStore,
    plan_of: &(dyn Fn(&StoredRun) -> Result<Plan, String> + Sync),
    decorate: &(dyn Fn(&Plan, &RunState, &Waiter, &mut Value) + Sync),
    reads: Option<&crate::reads::Reads>,
    tenant: &str,
    event: Option<(&str, &str)>,
    limit: usize,
) -> Result<Vec<(Waiter, Value)>, Error> {
    let mut out = Vec::new();
    // Stale entries are read past (and dropped); a page a few times the limit covers them.
    for w in store.waiters(tenant, event, limit.saturating_mul(4).max(16)).await? {
        if out.len() >= limit {
            break;
        }
        let loaded = match reads {
            None => load(store, plan_of, &w.run_id).await.map(|(p, st)| (std::sync::Arc::new(p), st)),
            Some(r) => read(store, plan_of, r, tenant, &w.run_id).await,
        };
        match loaded {
            Ok((plan, st)) => match describe(&plan, &st, w.attempt_id()) {
                Some(mut v) => {
                    decorate(&plan, &st, &w, &mut v);
                    out.push((w, v));
                }
                None => store.drop_waiter(&w).await?,
            },
            Err(Error::NoSuchRun(_)) => store.drop_waiter(&w).await?,
            // Too dear to read now: the listing says so rather than leave runs out.
            Err(e @ Error::Read(_)) => return Err(e),
            Err(e) => tracing::warn!(run = w.run_id, error = %e, "a waiting run could not be read"),
        }
    }
    Ok(out)
}

/// [`load`] through `reads`.
async fn read(
    store: &dyn RunStore,
    plan_of: &(dyn Fn(&StoredRun) -> Result<Plan, String> + Sync),
    reads: &crate::reads::Reads,
    tenant: &str,
    run_id: &str,
) -> Result<(std::sync::Arc<Plan>, RunState), Error> {
    let stored = store.load(run_id).await?.ok_or_else(|| Error::NoSuchRun(run_id.to_string()))?;
    let plan = std::sync::Arc::new(plan_of(&stored).map_err(Error::Plan)?);
    match reads.state(store, tenant, plan.clone(), stored).await {
        Ok(st) => Ok((plan, st)),
        Err(crate::reads::ReadError::Store(e)) => Err(e.into()),
        Err(e) => Err(Error::Read(e)),
    }
}

/// A stored run's plan and state.
pub async fn load(
    store: &dyn RunStore,
    plan_of: &(dyn Fn(&StoredRun) -> Result<Plan, String> + Sync),
    run_id: &str,
) -> Result<(Plan, RunState), Error> {
    let stored = store.load(run_id).await?.ok_or_else(|| Error::NoSuchRun(run_id.to_string()))?;
    let plan = plan_of(&stored).map_err(Error::Plan)?;
    let st = rebuild(&plan, stored)?;
    Ok((plan, st))
}

/// Records the answer `answer` builds from the run's current state (compare-and-set,
/// rebuilt and checked again after a lost race). Exactly once: when the unit no longer
/// waits (answered meanwhile, timed out), `AnswerError::NotWaiting`. What the answer's
/// transition asks for (the next tasks) is carried out by the driver running the run, or
/// by `llmo resume`. Returns the state after.
pub async fn answer(
    plan: &Plan,
    store: &dyn RunStore,
    clock: &dyn Clock,
    run_id: &str,
    answer: impl Fn(&RunState) -> Result<Event, AnswerError>,
) -> Result<RunState, Error> {
    loop {
        let stored = store.load(run_id).await?.ok_or_else(|| Error::NoSuchRun(run_id.to_string()))?;
        let mut st = rebuild(plan, stored)?;
        let event = answer(&st)?;
        let before = st.clone();
        let expected = st.version;
        let now = clock.now();
        if let Err(why) = plan.apply(&mut st, &event, now) {
            return Err(AnswerError::NotWaiting(format!("not waiting for an answer: {}", why.0)).into());
        }
        let t = Transition::new(st.version, now, event.clone());
        if store.append(expected, &[t], &st).await? {
            // Answered: its entry in the index goes (an agent's call is no longer awaiting, so
            // its waiter is built from the state before).
            if let Some(id) = event.attempt_id()
                && st.tasks[id.task].units.get(id.unit()).is_some_and(|u| u.status != TaskStatus::Waiting)
                && let Some(w) = Waiter::of(&st, id).or_else(|| Waiter::of(&before, id))
            {
                store.drop_waiter(&w).await?;
            }
            return Ok(st);
        }
    }
}
