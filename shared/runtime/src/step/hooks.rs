//! What a run's end owes: the `on.success` / `on.failure` hooks, and what observers are told.

use std::sync::Arc;

use llmo_core::engine::builtin::TaskError;
use llmo_core::engine::{AttemptResult, Plan, RunState, RunStatus};
use serde_json::{Map, Value};

use crate::executor::{Attempt, Registry, failed};
use crate::step::attempt::run_with_timeout;
use crate::store::Transition;

/// How one `on.success` / `on.failure` hook ended.
#[derive(Debug, Clone, PartialEq)]
pub struct HookOutcome {
    pub name: String,
    pub result: AttemptResult,
}

/// What an observer is told after each stored batch.
pub trait Observer: Send {
    fn batch(&mut self, _state: &RunState, _stored: &[Transition]) {}
    fn hook(&mut self, _outcome: &HookOutcome) {}
}

impl Observer for () {}

/// Runs the `on.success` or `on.failure` hooks of an ended run, each under its retry policy
/// (retryable failures only). A hook's failure is reported, never changes the run.
pub async fn run_hooks(
    plan: &Arc<Plan>,
    executors: &Registry,
    st: &RunState,
    status: RunStatus,
    observer: &mut dyn Observer,
) -> Vec<HookOutcome> {
    let Some(on) = &plan.checked.workflow.spec.on else { return Vec::new() };
    let (kind, hooks) =
        if status == RunStatus::Succeeded { ("success", &on.success) } else { ("failure", &on.failure) };
    let context = plan.context_value(st, None, None);
    let mut out = Vec::new();
    for (i, hook) in hooks.iter().enumerate() {
        let name = format!("on.{kind}[{i}] ({})", hook.ty);
        let retry = llmo_core::model::EffectiveRetry::default().overlay(hook.retry.as_ref());
        let result = match executors.get(&hook.ty) {
            None => failed(TaskError::fatal(format!("no executor is registered for task type `{}`", hook.ty))),
            Some(exec) => {
                let mut with = hook.with.clone();
                let mut raw = Map::new();
                for f in exec.raw_fields() {
                    if let Some(v) = with.remove(*f) {
                        raw.insert((*f).to_string(), v);
                    }
                }
                match plan.render_in(&Value::Object(with), &context) {
                    Err(e) => failed(TaskError::fatal(format!("rendering `with`: {e}"))),
                    Ok(mut with) => {
                        if let Value::Object(m) = &mut with {
                            m.extend(raw);
                        }
                        let mut a = Attempt {
                            plan: plan.clone(),
                            run_id: Arc::from(st.run_id.as_str()),
                            tenant: st.tenant.as_deref().map(Arc::from),
                            task: None,
                            task_id: Arc::from(format!("on.{kind}[{i}]")),
                            ty: Arc::from(hook.ty.as_str()),
                            item: None,
                            attempt: 1,
                            with,
                            context: context.clone(),
                            budget_left_usd: None,
                            allowance: None,
                            prices: None,
                            admitted: false,
                            depth: st.depth(),
                            callback: None,
                            step: None,
                            timeout: hook.timeout.map(|d| d.0),
                        };
                        let mut delay = retry.initial;
                        loop {
                            let r = run_with_timeout(exec.as_ref(), &a).await;
                            match &r {
                                AttemptResult::Failed { retryable: true, .. } if a.attempt < retry.max_attempts => {
                                    tokio::time::sleep(delay).await;
                                    delay = retry.max.min(delay.mul_f64(retry.multiplier));
                                    a.attempt += 1;
                                }
                                _ => break r,
                            }
                        }
                    }
                }
            }
        };
        let outcome = HookOutcome { name, result };
        observer.hook(&outcome);
        out.push(outcome);
    }
    out
}
