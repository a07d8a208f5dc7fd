//! The transition function: (state, event, now) → new state + commands. No I/O.
//!
//! Every runtime (embedded, serverless) does the same loop: read the run's state, apply one
//! event here, store the new state with compare-and-set on its version, then carry out the
//! returned commands. Applying an event that no longer matches the state (a duplicate or late
//! delivery) changes nothing and returns [`Ignored`].

use minijinja::Environment;

/// A template context: what [`Plan::context_value`] builds.
pub type Ctx = minijinja::Value;
use serde_json::{Map, Value};

use super::state::*;
use crate::dag::EdgeKind;
use crate::model::{EffectiveRetry, FailureAction, Jitter, OnFailure, TriggerRule};
use crate::validate::Checked;

mod agent;
mod callbacks;
mod context;
mod dispatch;
mod progress;
mod transition;

pub use context::RunParts;
use context::{PreparedWith, add_templates, item_outputs};
pub(crate) use context::{json_ctx, single_expression};

/// The task type whose units wait instead of running (`sleep`, `approval`, `event`).
pub const WAIT: &str = "wait";

/// Why an event changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ignored(pub &'static str);

/// A checked workflow prepared for execution.
pub struct Plan {
    pub checked: Checked,
    env: Environment<'static>,
    /// Templates that are plain text with `{{ path }}` holes, by their text (see `interp`).
    simple: std::collections::HashMap<String, Vec<super::interp::Piece>>,
    /// Each task's `with`, prepared for rendering once per attempt.
    withs: Vec<PreparedWith>,
    retry: Vec<EffectiveRetry>,
    /// Declared dependencies of each task.
    deps: Vec<Vec<usize>>,
    /// Dependents of each task, fallback edges included.
    children: Vec<Vec<usize>>,
    /// T → its fallback F.
    fallback: Vec<Option<usize>>,
    /// F → the task it stands in for.
    fallback_of: Vec<Option<usize>>,
    /// Tasks whose results each task reads (for its evaluation context).
    reads: Vec<Vec<usize>>,
    /// Position of each task in the topological order.
    topo_pos: Vec<usize>,
    /// The prices a new run's budget is kept with (see [`Plan::set_prices`]).
    prices: Option<std::sync::Arc<super::budget::PriceBook>>,
    /// Each task's id as a template value.
    ids: Vec<Ctx>,
    /// The tasks `outputs` read, when every reference names its task (`None`: some read
    /// `tasks` as a whole), so rendering them does not build every task's view.
    pub(super) output_reads: Option<Vec<usize>>,
    /// Each `wait` task's `with` block, typed (see [`super::waits`]).
    pub(super) waits: Vec<Option<crate::tasks::WaitWith>>,
    /// Each `function` or `http` task's `callback` setting (see [`super::callbacks`]).
    pub(super) callbacks: Vec<Option<crate::callback::CallbackWith>>,
    /// Each `agent` task's `with` and tool schemas (see [`agent`]).
    agents: Vec<Option<agent::AgentPlan>>,
}

impl Plan {
    pub fn new(checked: Checked) -> Plan {
        let wf = &checked.workflow;
        let dag = &checked.dag;
        let n = wf.spec.tasks.len();
        let base = EffectiveRetry::default().overlay(wf.spec.defaults.as_ref().and_then(|d| d.retry.as_ref()));
        let retry = wf.spec.tasks.iter().map(|t| base.overlay(t.retry.as_ref())).collect();
        let deps = (0..n)
            .map(|i| dag.parents(i).filter(|(_, k)| *k == EdgeKind::DependsOn).map(|(p, _)| p).collect())
            .collect();
        let children = (0..n).map(|i| dag.children(i).map(|(c, _)| c).collect()).collect();
        let mut fallback = vec![None; n];
        let mut fallback_of = vec![None; n];
        for (i, t) in wf.spec.tasks.iter().enumerate() {
            if let Some(f) = t.on_failure.as_ref().and_then(OnFailure::fallback).and_then(|f| dag.index_of(f)) {
                fallback[i] = Some(f);
                fallback_of[f] = Some(i);
            }
        }
        let reads = checked
            .reads
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut v: Vec<usize> = r.tasks.iter().filter_map(|id| dag.index_of(id)).collect();
                // A fallback may read the error of the task it stands in for.
                if let Some(owner) = fallback_of[i] {
                    v.push(owner);
                }
                v
            })
            .collect();
        let mut topo_pos = vec![0; n];
        for (pos, &i) in dag.topological_order().iter().enumerate() {
            topo_pos[i] = pos;
        }
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_fuel(Some(super::limits::TEMPLATE_FUEL));
        // Templates are named by their text; a name ending in `.html` must not turn on escaping.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        // Templates are compiled once, named by their text; `render` finds them by it.
        let mut simple = std::collections::HashMap::new();
        let withs = wf.spec.tasks.iter().map(|t| PreparedWith::new(&mut env, &mut simple, &t.with)).collect();
        let mut add = |v: &Value| add_templates(&mut env, &mut simple, v);
        wf.spec.outputs.values().for_each(&mut add);
        if let Some(on) = &wf.spec.on {
            on.success.iter().chain(&on.failure).flat_map(|h| h.with.values()).for_each(&mut add);
        }
        let ids = wf.spec.tasks.iter().map(|t| Ctx::from(t.id.as_str())).collect();
        let output_reads = (!checked.output_reads.all_tasks).then(|| {
            // An unknown id is left out: it is undefined either way.
            let mut v: Vec<usize> = checked.output_reads.tasks.iter().filter_map(|id| dag.index_of(id)).collect();
            v.sort_unstable();
            v
        });
        let waits = wf
            .spec
            .tasks
            .iter()
            .map(|t| (t.ty == WAIT).then(|| serde_json::from_value(Value::Object(t.with.clone())).ok()).flatten())
            .collect();
        let callbacks = wf
            .spec
            .tasks
            .iter()
            .map(|t| {
                let cb = t.with.get("callback").filter(|_| matches!(t.ty.as_str(), "http" | "function"))?;
                serde_json::from_value(cb.clone()).ok()
            })
            .collect();
        let agents = wf.spec.tasks.iter().map(agent::AgentPlan::of).collect();
        Plan {
            agents,
            waits,
            callbacks,
            checked,
            env,
            simple,
            withs,
            retry,
            deps,
            children,
            fallback,
            fallback_of,
            reads,
            topo_pos,
            prices: None,
            ids,
            output_reads,
        }
    }

    pub fn task_count(&self) -> usize {
        self.deps.len()
    }

    /// Sets the prices runs of this plan keep their budget with (the runtime knows prices;
    /// the engine does not): each attempt reserves its worst case from them before it starts
    /// ([`super::budget`]). A run keeps the prices it was created with (in its state), so
    /// replaying its log later gives the same decisions whatever prices say then. Without
    /// prices an attempt under a budget holds nothing, so it may make no model call that
    /// spends what the budget limits (fail closed).
    pub fn set_prices(&mut self, prices: super::budget::PriceBook) {
        self.prices = Some(std::sync::Arc::new(prices));
    }

    /// A new run in `pending`.
    /// A new run (not started) of this workflow that reuses what `source` (a run of the same
    /// workflow) recorded: every task that succeeded there keeps its output here, except
    /// `from` and every task downstream of it, which run again (with the source's inputs).
    /// Nothing is spent on the reused tasks; `rerun_of` records the provenance.
    pub fn rerun(&self, run_id: impl Into<String>, source: &RunState, from: usize) -> RunState {
        let mut st = self.new_run(run_id, source.inputs.clone());
        let dag = &self.checked.dag;
        for (i, old) in source.tasks.iter().enumerate().take(st.tasks.len()) {
            if i == from || dag.is_ancestor(from, i) || old.status != TaskStatus::Succeeded {
                continue;
            }
            let ts = &mut st.tasks[i];
            ts.status = TaskStatus::Succeeded;
            ts.output = old.output.clone();
            ts.reason = Some(format!("reused from {}", source.run_id));
            ts.started_at = old.started_at;
            ts.ended_at = old.ended_at;
            st.ended_tasks += 1;
        }
        st.rerun_of = Some(RerunOf { run_id: source.run_id.clone(), from: dag.id(from).to_string() });
        st
    }

    pub fn new_run(&self, run_id: impl Into<String>, inputs: Map<String, Value>) -> RunState {
        RunState {
            run_id: run_id.into(),
            tenant: None,
            version: 0,
            status: RunStatus::Pending,
            inputs,
            tasks: (0..self.task_count()).map(|_| TaskState::pending()).collect(),
            started_at: None,
            ended_at: None,
            deadline: None,
            max_age_ms: None,
            cost_usd: 0.0,
            tokens: 0,
            outputs: None,
            error: None,
            ended_by: None,
            dispatchable: Vec::new(),
            running: 0,
            ended_tasks: 0,
            estimates: Vec::new(),
            prices: self.checked.workflow.spec.budget.and(self.prices.clone()),
            reserved: Estimate::default(),
            unsettled: Estimate::default(),
            rerun_of: None,
            budget_stop: None,
            parent: None,
            budget_cap: None,
        }
    }

    /// The run's budget: `spec.budget`, tightened by what a parent passed down to it.
    pub fn budget_of(&self, st: &RunState) -> Option<crate::model::Budget> {
        crate::child::tighter(self.checked.workflow.spec.budget, st.budget_cap)
    }

    /// Makes `st` (not started) a child run of `parent` whose spending is capped by `cap`
    /// (what the parent's attempt holds for it, if the parent has a budget).
    pub fn adopt(&self, st: &mut RunState, parent: crate::child::Parent, cap: Option<crate::model::Budget>) {
        st.parent = Some(parent);
        st.budget_cap = cap;
        if cap.is_some() {
            st.prices = self.prices.clone();
        }
    }

    /// Applies `event` to `state` in place. On success the state's version has grown by one
    /// and the commands are returned; when ignored, the state is untouched.
    pub fn apply(&self, state: &mut RunState, event: &Event, now: Millis) -> Result<Vec<Command>, Ignored> {
        let mut t = Transition {
            plan: self,
            st: state,
            now,
            cmds: Vec::new(),
            work: Vec::new(),
            cause: event.key(),
            parts: None,
        };
        t.event(event)?;
        t.st.version += 1;
        if cfg!(debug_assertions) && t.st.tasks.len() <= 256 {
            t.check_holds();
        }
        Ok(t.cmds)
    }

    /// A task's outcome as its dependents see it: a failed task whose fallback succeeded
    /// counts as succeeded with the fallback's output. `None` while not settled.
    fn view<'s>(&self, st: &'s RunState, i: usize) -> (Option<TaskStatus>, Option<&'s Output>) {
        let ts = &st.tasks[i];
        if !ts.status.is_terminal() {
            return (None, None);
        }
        if ts.status == TaskStatus::Failed
            && let Some(f) = self.fallback[i]
        {
            let fs = &st.tasks[f];
            return match fs.status {
                TaskStatus::Succeeded => (Some(TaskStatus::Succeeded), fs.output.as_ref()),
                s if s.is_terminal() => (Some(TaskStatus::Failed), None),
                _ => (None, None),
            };
        }
        (Some(ts.status), ts.output.as_ref())
    }

    /// What a failure of task `i` (or of its fallback) does to the run.
    fn fails_run(&self, i: usize) -> bool {
        let policy_of = |t: usize| match &self.checked.workflow.spec.tasks[t].on_failure {
            Some(OnFailure::Action(FailureAction::Continue)) => false,
            Some(OnFailure::Action(FailureAction::Fail)) | None => true,
            Some(OnFailure::Fallback(_)) => true,
        };
        match self.fallback[i] {
            Some(f) => policy_of(f),
            None => policy_of(i),
        }
    }

    /// The delay before the retry of `attempt`, the `nth` of its unit.
    fn backoff(&self, st: &RunState, task: usize, item: Option<u32>, attempt: u32, nth: u32) -> Millis {
        let r = &self.retry[task];
        let base = r.initial.as_millis() as f64 * r.multiplier.powi(nth.saturating_sub(1) as i32);
        let d = base.min(r.max.as_millis() as f64);
        // Jitter from a hash of the attempt, so a replayed run waits the same.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in st
            .run_id
            .bytes()
            .chain(task.to_le_bytes())
            .chain(item.unwrap_or(u32::MAX).to_le_bytes())
            .chain(attempt.to_le_bytes())
        {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let u = (h >> 11) as f64 / (1u64 << 53) as f64;
        (match r.jitter {
            Jitter::None => d,
            Jitter::Full => d * u,
            Jitter::Equal => d / 2.0 + d / 2.0 * u,
        }) as Millis
    }
}

struct Transition<'p, 's> {
    plan: &'p Plan,
    st: &'s mut RunState,
    now: Millis,
    cmds: Vec<Command>,
    /// Tasks whose readiness may have changed.
    work: Vec<usize>,
    /// Key of the event being applied.
    cause: String,
    /// The run's context parts, made once per transition when budget holds need them.
    parts: Option<RunParts>,
}

/// One dimension of a budget (money or tokens): `committed` (spent, and held by attempts cut
/// off), `reserved` (held by running attempts), the new attempt's `hold`, the limit `max`.
/// `why(over_by_hold)` says why it is over: the budget is spent, or this hold would overspend.
fn room_in(committed: f64, reserved: f64, hold: f64, max: f64, why: impl FnOnce(bool) -> String) -> Room {
    if committed >= max {
        Room::Over(why(false))
    } else if committed + hold > max {
        Room::Over(why(true))
    } else if committed + reserved + hold > max {
        Room::Wait
    } else {
        Room::Fits
    }
}

/// Whether an attempt fits in the run's budget ([`Transition::room`]).
enum Room {
    Fits,
    /// Not while attempts in flight hold what it needs.
    Wait,
    /// Never: the run fails, with this reason.
    Over(String),
}

/// Jinja truthiness for a JSON value.
/// The error of a `for_each` over [`super::limits::MAX_FOR_EACH_ITEMS`].
fn too_many(n: usize) -> String {
    format!("`for_each` gave {n} items, over the limit of {}", super::limits::MAX_FOR_EACH_ITEMS)
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
    }
}
