//! The executor port: what runs one attempt of a task. Every task type (`llm`, `http`,
//! `transform`, `evaluate`, `policy`, and any a user adds in Rust) is an [`Executor`]
//! registered by type name in a [`Registry`].
//!
//! The driver renders the task's `with` block before calling an executor (so executors see
//! plain JSON), except the fields an executor asks to render itself ([`Executor::raw_fields`]:
//! `http` renders `headers` with secrets, which never enter the run's state).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
pub use llmo_core::engine::budget::Allowance;
use llmo_core::engine::builtin::{self, TaskError};
use llmo_core::engine::{AttemptResult, Ctx, Plan, Usage};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// One attempt of one task (or `for_each` item), as an executor sees it.
#[derive(Clone)]
pub struct Attempt {
    pub plan: Arc<Plan>,
    pub run_id: Arc<str>,
    /// The run's tenant (`None`: a single-user, embedded run): secrets are granted per tenant.
    pub tenant: Option<Arc<str>>,
    /// The task's index in the workflow; `None` for an `on.success`/`on.failure` hook.
    pub task: Option<usize>,
    /// The task's id (`on.failure[0]` for hooks).
    pub task_id: Arc<str>,
    /// The task type.
    pub ty: Arc<str>,
    pub item: Option<u32>,
    pub attempt: u32,
    /// The rendered `with` block (minus [`Executor::raw_fields`], which stay as written).
    pub with: Value,
    /// What the task's templates can read (`inputs`, the tasks it reads, `run`, `item`), as a
    /// template value (`serde_json::to_value(&context)` gives it as JSON).
    pub context: Ctx,
    /// The run's money left, if it has a cost budget: its limit less what is spent and what
    /// attempts in flight hold (what `policy` checks against).
    pub budget_left_usd: Option<f64>,
    /// What this attempt may spend on model calls, if the run has a budget: what it holds
    /// of it ([`llmo_core::engine::Unit::held`]). Executors never call a model whose worst
    /// case does not fit in what is left of it.
    pub allowance: Option<Allowance>,
    /// The prices the run keeps its budget with (frozen when it was created): calls are
    /// checked against the allowance with these, as the engine reserved it.
    pub prices: Option<Arc<llmo_core::engine::budget::PriceBook>>,
    /// The task's `timeout` (or `defaults.timeout`), if any.
    pub timeout: Option<Duration>,
    /// The attempt already holds its capacity under the fleet's rate limits (it was deferred
    /// until its reserved time came): its first call does not take again.
    pub admitted: bool,
    /// The run's depth among nested runs (0: a run nobody started; see `llmo_core::child`).
    pub depth: u32,
    /// The task token a task with a `callback` sends with its call ([`crate::callbacks`]).
    pub callback: Option<Arc<crate::callbacks::Token>>,
    /// An agent's step ([`llmo_core::agent::Step`]): the model turn the agent executor asks
    /// for, or the tool call this attempt runs (`ty` is then the tool's task type and `with`
    /// the tool's, rendered with the call's arguments as `args`).
    pub step: Option<Arc<llmo_core::agent::Step>>,
}

impl Attempt {
    /// The `callback` setting this attempt's call waits for an answer under, if any: its
    /// task's, or for an agent's tool call, its tool's.
    pub fn callback_with(&self) -> Option<&llmo_core::callback::CallbackWith> {
        let task = self.task?;
        match self.step.as_deref() {
            Some(llmo_core::agent::Step::Tool { tool, .. }) => self.plan.tool_callback(task, *tool),
            Some(llmo_core::agent::Step::Turn { .. }) => None,
            None => self.plan.callback_of(task),
        }
    }

    /// A key naming this task (this item) in this run: the same on every attempt and every
    /// redelivery, different for every other task, item or run. `http` sends it as
    /// `Idempotency-Key`.
    pub fn idempotency_key(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.run_id.as_bytes());
        h.update([0]);
        h.update(self.task_id.as_bytes());
        h.update([0]);
        h.update(self.item.map_or(String::from("-"), |i| i.to_string()).as_bytes());
        if let Some(step @ llmo_core::agent::Step::Tool { .. }) = self.step.as_deref() {
            // Each tool call of an agent is its own side effect.
            h.update([0]);
            h.update(step.key().as_bytes());
        }
        let d = h.finalize();
        d[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[async_trait]
pub trait Executor: Send + Sync {
    async fn execute(&self, attempt: &Attempt) -> AttemptResult;

    /// [`Executor::execute`], or `Err` when the attempt could not start for want of shared
    /// capacity (a fleet-wide rate limit, [`crate::flow`]) and should run again later: the
    /// serverless worker then sends it back to the queue with that delay instead of holding a
    /// Lambda while it waits. Executors that never defer need not implement it.
    async fn execute_or_defer(&self, attempt: &Attempt) -> Result<AttemptResult, Deferred> {
        Ok(self.execute(attempt).await)
    }

    /// True for pure, fast executors (microseconds, no I/O): the driver runs them in place
    /// instead of on a separate task.
    fn inline(&self) -> bool {
        false
    }

    /// `with` fields the driver leaves unrendered for the executor to render itself.
    fn raw_fields(&self) -> &'static [&'static str] {
        &[]
    }

    /// True for executors that keep the attempt's `timeout` themselves (a child run's deadline
    /// is the task's timeout: the child ends, timed out, and so does the attempt), so the
    /// runtime does not drop them at it.
    fn times_itself(&self) -> bool {
        false
    }

    /// True for executors whose attempt goes on outside the worker (a child run): the
    /// serverless worker calls [`Executor::detach`] instead of `execute` and stores no result;
    /// the attempt's `AttemptFinished` comes later from elsewhere (the child's end).
    fn detaches(&self) -> bool {
        false
    }

    /// Starts what the attempt waits for (idempotently: a redelivered attempt finds it
    /// started) and returns, or returns the attempt's result when it could not start.
    async fn detach(&self, attempt: &Attempt) -> Result<(), AttemptResult> {
        Err(self.execute(attempt).await)
    }

    /// Cancels run `run_id` that one of this executor's attempts started (a child run) and
    /// that is no longer wanted. Executors that start no runs need not implement it.
    async fn cancel(&self, run_id: &str) -> Result<(), String> {
        Err(format!("this executor starts no runs (asked to cancel `{run_id}`)"))
    }
}

/// An attempt that did not start: run it again after `after`; `admitted` when the capacity
/// it needs ([`crate::flow`]) is reserved for then (the attempt run then must not take again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deferred {
    pub after: std::time::Duration,
    pub admitted: bool,
}

/// Executors by task type.
#[derive(Default, Clone)]
pub struct Registry {
    by_type: HashMap<String, Arc<dyn Executor>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or replaces) the executor of a task type.
    pub fn register(&mut self, ty: impl Into<String>, exec: Arc<dyn Executor>) -> &mut Self {
        self.by_type.insert(ty.into(), exec);
        self
    }

    pub fn get(&self, ty: &str) -> Option<&Arc<dyn Executor>> {
        self.by_type.get(ty)
    }

    /// Every registered task type and its executor.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<dyn Executor>)> {
        self.by_type.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// `transform`, `evaluate` (without a model judge unless `judge` is given) and `policy`.
    pub fn with_builtins(judge: Option<Arc<dyn Judge>>) -> Self {
        let mut r = Registry::new();
        r.register("transform", Arc::new(Transform));
        r.register("policy", Arc::new(Policy));
        r.register("evaluate", Arc::new(Evaluate { judge }));
        r
    }
}

pub fn succeeded(output: Value) -> AttemptResult {
    let tokens = ["prompt_tokens", "completion_tokens"]
        .iter()
        .filter_map(|k| output.pointer(&format!("/usage/{k}")).and_then(Value::as_u64))
        .sum();
    let cost_usd = output.pointer("/usage/cost_usd").and_then(Value::as_f64).unwrap_or(0.0);
    AttemptResult::Succeeded { output: output.into(), usage: Usage { tokens, cost_usd } }
}

pub fn failed(e: TaskError) -> AttemptResult {
    AttemptResult::Failed { error: e.message, retryable: e.retryable, usage: Usage::default() }
}

fn result(r: Result<Value, TaskError>) -> AttemptResult {
    r.map_or_else(failed, succeeded)
}

pub struct Transform;

#[async_trait]
impl Executor for Transform {
    async fn execute(&self, a: &Attempt) -> AttemptResult {
        result(builtin::transform(&a.plan, &a.with, &a.context))
    }
    fn inline(&self) -> bool {
        true
    }
}

pub struct Policy;

#[async_trait]
impl Executor for Policy {
    async fn execute(&self, a: &Attempt) -> AttemptResult {
        let models: Vec<String> = a
            .plan
            .checked
            .workflow
            .spec
            .tasks
            .iter()
            .filter(|t| t.ty == "llm")
            .flat_map(|t| llmo_core::tasks::llm_models(&t.with))
            .map(|(_, m)| m)
            .collect();
        result(builtin::policy(&a.with, &models, a.budget_left_usd))
    }
    fn inline(&self) -> bool {
        true
    }
}

/// Grades a text against criteria with a model: a score in [0, 1], and what it cost either
/// way (a paid answer that is no grade still cost). `spent`: what the attempt spent before,
/// out of its allowance.
#[async_trait]
pub trait Judge: Send + Sync {
    async fn judge(
        &self,
        attempt: &Attempt,
        spent: Usage,
        text: &str,
        criteria: &str,
        model: &str,
        provider: Option<&str>,
    ) -> (Result<f64, TaskError>, Usage);
}

pub struct Evaluate {
    pub judge: Option<Arc<dyn Judge>>,
}

#[async_trait]
impl Executor for Evaluate {
    async fn execute(&self, a: &Attempt) -> AttemptResult {
        // Model-graded checks are asked first (they need the network); the pure checks then
        // run with their scores.
        let input = a.with.get("input").and_then(Value::as_str).unwrap_or_default();
        let mut scores = Vec::new();
        let mut usage = Usage::default();
        for c in a.with.get("checks").and_then(Value::as_array).into_iter().flatten() {
            if c.get("kind").and_then(Value::as_str) != Some("llm_judge") {
                continue;
            }
            let model = c.get("model").and_then(Value::as_str).unwrap_or_default();
            let criteria = c.get("criteria").and_then(Value::as_str).unwrap_or_default();
            let provider = c.get("provider").and_then(Value::as_str);
            let Some(judge) = &self.judge else {
                return failed(TaskError::fatal(format!("llm_judge with model `{model}` needs a model provider")));
            };
            let (r, u) = judge.judge(a, usage, input, criteria, model, provider).await;
            usage.tokens += u.tokens;
            usage.cost_usd += u.cost_usd;
            match r {
                Ok(s) => scores.push(s),
                Err(e) => return AttemptResult::Failed { error: e.message, retryable: e.retryable, usage },
            }
        }
        let mut next = scores.into_iter();
        match builtin::evaluate(&a.with, |_, _, _| Ok(next.next().unwrap_or(0.0))) {
            Ok(mut out) => {
                out["usage"] = serde_json::json!({ "tokens": usage.tokens, "cost_usd": usage.cost_usd });
                AttemptResult::Succeeded { output: out.into(), usage }
            }
            Err(e) => AttemptResult::Failed { error: e.message, retryable: e.retryable, usage },
        }
    }
    fn inline(&self) -> bool {
        self.judge.is_none()
    }
}

/// Does nothing and succeeds with a fixed output: for benchmarks of the runtime itself.
pub struct Noop(pub Value);

#[async_trait]
impl Executor for Noop {
    async fn execute(&self, _: &Attempt) -> AttemptResult {
        AttemptResult::Succeeded { output: self.0.clone().into(), usage: Usage::default() }
    }
    fn inline(&self) -> bool {
        true
    }
}

/// An attempt of task `a` (type `ty`) of a one-task workflow, for executor tests.
#[cfg(test)]
pub(crate) fn test_attempt(ty: &str, with: Value, item: Option<u32>, attempt: u32) -> Attempt {
    let wf = "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: w }\nspec:\n  inputs: { q: { type: string, default: x } }\n  secrets: { TOKEN: { hosts: [127.0.0.1, localhost] }, ONLY_IP: { hosts: [127.0.0.1] }, ELSEWHERE: { hosts: [\"*.example.com\"] } }\n  tasks:\n    - { id: a, type: transform, with: { output: 1 } }\n";
    test_attempt_of(wf, ty, with, item, attempt)
}

/// An attempt of task `a` (type `ty`) of workflow `wf`, for executor tests.
#[cfg(test)]
pub(crate) fn test_attempt_of(wf: &str, ty: &str, with: Value, item: Option<u32>, attempt: u32) -> Attempt {
    use llmo_core::source::SourceFile;
    use llmo_core::validate::Validator;
    let plan = Plan::new(Validator::default().validate(&SourceFile::new("w.yaml", wf)).checked.unwrap());
    Attempt {
        plan: Arc::new(plan),
        run_id: Arc::from("run-1"),
        tenant: None,
        task: Some(0),
        task_id: Arc::from("a"),
        ty: Arc::from(ty),
        item,
        attempt,
        with,
        context: Ctx::from(minijinja::value::Serde(
            serde_json::json!({ "inputs": { "q": "x" }, "tasks": {}, "run": { "id": "run-1" } }),
        )),
        budget_left_usd: None,
        allowance: None,
        prices: None,
        admitted: false,
        depth: 0,
        callback: None,
        step: None,
        timeout: Some(Duration::from_millis(500)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmo_core::source::SourceFile;
    use llmo_core::validate::Validator;

    fn attempt(run: &str, task: &str, item: Option<u32>, n: u32) -> Attempt {
        let wf = "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: w }\nspec:\n  tasks:\n    - { id: a, type: transform, with: { output: 1 } }\n";
        let plan = Plan::new(Validator::default().validate(&SourceFile::new("w.yaml", wf)).checked.unwrap());
        Attempt {
            plan: Arc::new(plan),
            run_id: Arc::from(run),
            tenant: None,
            task: Some(0),
            task_id: Arc::from(task),
            ty: Arc::from("transform"),
            item,
            attempt: n,
            with: Value::Null,
            context: Ctx::from(()),
            budget_left_usd: None,
            allowance: None,
            prices: None,
            admitted: false,
            depth: 0,
            callback: None,
            step: None,
            timeout: None,
        }
    }

    #[test]
    fn idempotency_keys_name_a_task_item_in_a_run_across_attempts() {
        let k = attempt("r1", "a", None, 1).idempotency_key();
        assert_eq!(k.len(), 32);
        assert_eq!(k, attempt("r1", "a", None, 3).idempotency_key(), "same on every attempt");
        assert_ne!(k, attempt("r2", "a", None, 1).idempotency_key());
        assert_ne!(k, attempt("r1", "b", None, 1).idempotency_key());
        assert_ne!(attempt("r1", "a", Some(0), 1).idempotency_key(), attempt("r1", "a", Some(1), 1).idempotency_key());
    }
}
