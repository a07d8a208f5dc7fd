//! Running one attempt: the attempt its executor sees (the `with` block rendered in its
//! context, its budget allowance, its timeout), run within its timeout in an `attempt` span.

use std::sync::Arc;

use llmo_core::engine::builtin::TaskError;
use llmo_core::engine::{AttemptId, AttemptResult, Plan, RunParts, RunState, Usage};
use serde_json::Value;

use crate::executor::{Allowance, Attempt, Executor, failed};

/// The attempt as its executor sees it; a `with` block that does not render fails it.
#[allow(clippy::too_many_arguments)]
pub fn build_attempt(
    plan: &Arc<Plan>,
    st: &RunState,
    parts: &RunParts,
    (run_id, task_id, ty): (Arc<str>, Arc<str>, Arc<str>),
    id: AttemptId,
    exec: &dyn Executor,
) -> Result<Attempt, AttemptResult> {
    let AttemptId { task, item, attempt } = id;
    let spec = &plan.checked.workflow.spec;
    let t = &spec.tasks[task];
    let context = plan.context_in(st, Some(task), item, parts);
    let with = plan
        .render_task_with(task, &context, exec.raw_fields())
        .map_err(|(k, e)| failed(TaskError::fatal(format!("rendering `with.{k}`: {e}"))))?;
    let with = Value::Object(with);
    // The workflow's budget, tightened by what a parent passed down to a child run.
    let budget = plan.budget_of(st);
    Ok(Attempt {
        plan: plan.clone(),
        run_id,
        tenant: st.tenant.as_deref().map(Arc::from),
        task: Some(task),
        task_id,
        ty,
        item,
        attempt,
        with,
        context,
        budget_left_usd: budget
            .and_then(|b| b.max_cost_usd)
            .map(|m| m - st.cost_usd - st.reserved.cost_usd - st.unsettled.cost_usd),
        prices: budget.and(st.prices.clone()),
        allowance: budget.map(|b| {
            // What the unit holds; a unit started before holds were kept may take what is left.
            let held = st.tasks[task].units.get(id.unit()).and_then(|u| u.held);
            let left = |max: f64, spent: f64| (max - spent).max(0.0);
            Allowance {
                cost_usd: b.max_cost_usd.map(|m| held.map_or(left(m, st.cost_usd), |h| h.cost_usd)),
                tokens: b.max_tokens.map(|m| held.map_or(m.saturating_sub(st.tokens), |h| h.tokens)),
            }
        }),
        admitted: false,
        depth: st.depth(),
        callback: None,
        step: None,
        timeout: t.timeout.or(spec.defaults.as_ref().and_then(|d| d.timeout)).map(|d| d.0),
    })
}

/// The executor and the attempt of `id`: the task's own; for an agent, the model turn (the
/// `agent` executor) or the tool call it is (the tool's executor, its `with` rendered with the
/// call's arguments as `args`). `exec_of` finds an executor by task type. Fails the attempt
/// when no executor is registered, a `with` does not render, or the attempt is no longer one
/// of the agent's steps (a late delivery: its result will be ignored).
pub fn prepare(
    plan: &Arc<Plan>,
    st: &RunState,
    parts: &RunParts,
    (run_id, task_id, ty): (Arc<str>, Arc<str>, Arc<str>),
    id: AttemptId,
    exec_of: impl Fn(&str) -> Option<Arc<dyn Executor>>,
) -> Result<(Arc<dyn Executor>, Attempt), AttemptResult> {
    let none = |ty: &str| failed(TaskError::fatal(format!("no executor is registered for task type `{ty}`")));
    if !plan.is_agent(id.task) {
        let exec = exec_of(&ty).ok_or_else(|| none(&ty))?;
        let a = build_attempt(plan, st, parts, (run_id, task_id, ty), id, exec.as_ref())?;
        return Ok((exec, a));
    }
    let step = plan
        .agent_step(st, id)
        .ok_or_else(|| failed(TaskError::fatal("this attempt is no longer one of the agent's steps")))?;
    let tool = match &step {
        llmo_core::agent::Step::Turn { .. } => None,
        llmo_core::agent::Step::Tool { tool, .. } => plan.agent_with(id.task).map(|w| &w.tools[*tool]),
    };
    let Some(tool) = tool else {
        let exec = exec_of(&ty).ok_or_else(|| none(&ty))?;
        let mut a = build_attempt(plan, st, parts, (run_id, task_id, ty), id, exec.as_ref())?;
        a.step = Some(Arc::new(step));
        return Ok((exec, a));
    };
    let tool_ty: Arc<str> = Arc::from(tool.run.ty.as_str());
    let exec = exec_of(&tool_ty).ok_or_else(|| none(&tool_ty))?;
    let mut a = build_attempt(plan, st, parts, (run_id, task_id, tool_ty), id, exec.as_ref())?;
    let llmo_core::agent::Step::Tool { call, .. } = &step else { unreachable!("a tool's step") };
    // The tool's `with` in the task's context plus `args` (and the answer to its approval as
    // `approval`, when its tool has one); fields the executor renders itself (an http tool's
    // headers, with secrets) stay as written.
    let ctx = minijinja::context! {
        args => minijinja::Value::from(minijinja::value::Serde(&call.arguments)),
        approval => minijinja::Value::from(minijinja::value::Serde(&call.approval)),
        ..a.context.clone()
    };
    let mut with = tool.run.with.clone();
    let mut raw = serde_json::Map::new();
    for f in exec.raw_fields() {
        if let Some(v) = with.remove(*f) {
            raw.insert((*f).to_string(), v);
        }
    }
    let mut with = plan
        .render_in(&Value::Object(with), &ctx)
        .map_err(|e| failed(TaskError::fatal(format!("rendering the `with` of tool `{}`: {e}", tool.name))))?;
    if let Value::Object(m) = &mut with {
        m.extend(raw);
    }
    a.with = with;
    a.context = ctx;
    a.step = Some(Arc::new(step));
    Ok((exec, a))
}

/// Runs one attempt under its `timeout`, in an `attempt` span (a child of the current one).
pub async fn run_with_timeout(exec: &dyn Executor, a: &Attempt) -> AttemptResult {
    loop {
        match run_deferrable(exec, a).await {
            Ok(r) => return r,
            // In one process a deferred attempt waits where it is.
            Err(d) => tokio::time::sleep(d.after).await,
        }
    }
}

/// Runs an attempt within its timeout, in an `attempt` span; `Err` when the executor deferred
/// it ([`Executor::execute_or_defer`]).
pub async fn run_deferrable(exec: &dyn Executor, a: &Attempt) -> Result<AttemptResult, crate::executor::Deferred> {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "attempt",
        otel.name = match a.step.as_deref() {
            Some(llmo_core::agent::Step::Tool { call, .. }) => format!("tool {} {}", a.task_id, call.name),
            Some(llmo_core::agent::Step::Turn { turn, .. }) => format!("turn {} {turn}", a.task_id),
            None => format!("attempt {}", a.task_id),
        },
        run_id = %a.run_id,
        task = %a.task_id,
        task_type = %a.ty,
        item = a.item,
        attempt = a.attempt,
        // An agent's step: `t3` its third turn, `t3c<id>` a call of it (the tool in `otel.name`).
        agent_step = a.step.as_deref().map(llmo_core::agent::Step::key),
        outcome = tracing::field::Empty,
        error = tracing::field::Empty,
    );
    let run = async {
        match a.timeout.filter(|_| !exec.times_itself()) {
            Some(d) => tokio::time::timeout(d, exec.execute_or_defer(a)).await.unwrap_or_else(|_| {
                Ok(AttemptResult::Failed {
                    error: format!("timed out after {}", llmo_core::model::Duration(d)),
                    retryable: true,
                    usage: Usage::default(),
                })
            }),
            None => exec.execute_or_defer(a).await,
        }
    };
    let result = match run.instrument(span.clone()).await {
        Ok(r) => r,
        Err(d) => {
            span.record("outcome", "deferred");
            return Err(d);
        }
    };
    record_attempt(&span, &a.ty, &result);
    span.in_scope(|| match &result {
        AttemptResult::Succeeded { usage, .. } => {
            tracing::debug!(tokens = usage.tokens, cost_usd = usage.cost_usd, "attempt succeeded")
        }
        AttemptResult::Failed { error, retryable, .. } => tracing::info!(%error, retryable, "attempt failed"),
    });
    Ok(result)
}

/// Puts an attempt's outcome on its span and in the metrics.
pub fn record_attempt(span: &tracing::Span, ty: &str, result: &AttemptResult) {
    match result {
        AttemptResult::Succeeded { .. } => {
            span.record("outcome", "succeeded");
        }
        AttemptResult::Failed { error, retryable, .. } => {
            span.record("outcome", if *retryable { "retryable" } else { "failed" });
            span.record("error", error.as_str());
        }
    }
    crate::meter::attempt(ty, result);
}
