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
}

/// A task's `with` block, prepared so that an attempt renders it without looking at what
/// needs no rendering: the block with each value to render replaced by `null`, and how to
/// render each of those.
struct PreparedWith {
    base: Map<String, Value>,
    /// Position in `base`, the value as written, and how it renders.
    holes: Vec<(usize, Value, Hole)>,
}

enum Hole {
    /// `"{{ expression }}"`: the expression's value.
    Expression(String),
    /// Text with `{{ path }}` holes (see `interp`).
    Pieces(Vec<super::interp::Piece>),
    /// Anything else: a template compiled into the environment, or a list or map holding
    /// templates ([`Plan::render_in`]).
    Other,
}

impl PreparedWith {
    fn new(
        env: &mut Environment<'static>,
        simple: &mut std::collections::HashMap<String, Vec<super::interp::Piece>>,
        with: &Map<String, Value>,
    ) -> Self {
        let mut base = with.clone();
        let mut holes = Vec::new();
        for (pos, (_, v)) in base.iter_mut().enumerate() {
            let hole = match v {
                Value::String(s) if crate::expr::is_template(s) => match single_expression(s) {
                    Some(e) => Hole::Expression(e.to_string()),
                    None => match super::interp::parse(s) {
                        Some(pieces) => Hole::Pieces(pieces),
                        None => {
                            add_templates(env, simple, v);
                            Hole::Other
                        }
                    },
                },
                Value::Array(_) | Value::Object(_) if has_template(v) => {
                    add_templates(env, simple, v);
                    Hole::Other
                }
                _ => continue,
            };
            holes.push((pos, std::mem::take(v), hole));
        }
        PreparedWith { base, holes }
    }
}

/// The expression of a template that is exactly one `{{ expression }}`.
pub(crate) fn single_expression(s: &str) -> Option<&str> {
    let t = s.trim();
    t.strip_prefix("{{").and_then(|r| r.strip_suffix("}}")).filter(|e| !e.contains("{{") && !e.contains("}}"))
}

fn has_template(v: &Value) -> bool {
    match v {
        Value::String(s) => crate::expr::is_template(s),
        Value::Array(items) => items.iter().any(has_template),
        Value::Object(m) => m.values().any(has_template),
        _ => false,
    }
}

/// See [`Plan::run_parts`].
#[derive(Debug, Clone)]
pub struct RunParts {
    inputs: Ctx,
    run: Ctx,
    /// Each task's `tasks.<id>` value, kept once its result is final (it never changes after).
    views: std::sync::Arc<[std::sync::OnceLock<Ctx>]>,
}

/// A context map with fixed keys, read without building a map (contexts are built per attempt).
#[derive(Debug)]
struct Fields {
    keys: &'static [&'static str],
    values: Vec<Ctx>,
}

impl Fields {
    fn ctx(keys: &'static [&'static str], values: Vec<Ctx>) -> Ctx {
        debug_assert_eq!(keys.len(), values.len());
        Ctx::from_object(Fields { keys, values })
    }
}

impl minijinja::value::Object for Fields {
    fn repr(self: &std::sync::Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Map
    }
    fn get_value(self: &std::sync::Arc<Self>, key: &Ctx) -> Option<Ctx> {
        let k = key.as_str()?;
        self.keys.iter().position(|x| *x == k).map(|i| self.values[i].clone())
    }
    fn enumerate(self: &std::sync::Arc<Self>) -> minijinja::value::Enumerator {
        minijinja::value::Enumerator::Str(self.keys)
    }
}

/// `tasks.<id>` as templates see it: `status`, `output`, `error`, `attempts`, `usage`
/// (`tokens`, `cost_usd`). Holds the task's output itself (shared, not copied) and turns it
/// into a template value the first time a template reads it.
#[derive(Debug)]
struct TaskView {
    status: &'static str,
    output: Option<Output>,
    output_ctx: std::sync::OnceLock<Ctx>,
    error: Option<Ctx>,
    attempts: u32,
    tokens: u64,
    cost_usd: f64,
    /// A `for_each` task's items: each one's `status` and `error`.
    items: Option<Ctx>,
}

impl TaskView {
    const KEYS: &[&str] = &["status", "output", "error", "attempts", "usage"];
    /// A `for_each` task's.
    const KEYS_ITEMS: &[&str] = &["status", "output", "error", "attempts", "usage", "items"];
}

impl minijinja::value::Object for TaskView {
    fn repr(self: &std::sync::Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Map
    }
    fn get_value(self: &std::sync::Arc<Self>, key: &Ctx) -> Option<Ctx> {
        Some(match key.as_str()? {
            "status" => Ctx::from(self.status),
            "output" => match &self.output {
                Some(o) => self.output_ctx.get_or_init(|| json_ctx(o)).clone(),
                None => Ctx::from(()),
            },
            "error" => self.error.clone().unwrap_or(Ctx::from(())),
            "attempts" => Ctx::from(self.attempts),
            "usage" => Fields::ctx(&["tokens", "cost_usd"], vec![Ctx::from(self.tokens), Ctx::from(self.cost_usd)]),
            "items" => self.items.clone()?,
            _ => return None,
        })
    }
    fn enumerate(self: &std::sync::Arc<Self>) -> minijinja::value::Enumerator {
        minijinja::value::Enumerator::Str(if self.items.is_some() { Self::KEYS_ITEMS } else { Self::KEYS })
    }
}

/// The `tasks` map of one attempt's context: the few tasks it reads, found by a linear search.
#[derive(Debug)]
struct Reads(Vec<(Ctx, Ctx)>);

impl minijinja::value::Object for Reads {
    fn repr(self: &std::sync::Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Map
    }
    fn get_value(self: &std::sync::Arc<Self>, key: &Ctx) -> Option<Ctx> {
        let k = key.as_str()?;
        self.0.iter().find(|(id, _)| id.as_str() == Some(k)).map(|(_, v)| v.clone())
    }
    fn enumerate(self: &std::sync::Arc<Self>) -> minijinja::value::Enumerator {
        minijinja::value::Enumerator::Values(self.0.iter().map(|(id, _)| id.clone()).collect())
    }
}

/// A JSON value as a template value, built directly: the value `Value::from_serialize`
/// gives (maps, sequences, numbers as serde hands them over) without a pass through serde,
/// which was a large part of making each finished task's view.
pub(crate) fn json_ctx(v: &Value) -> Ctx {
    match v {
        Value::Null => Ctx::from(()),
        Value::Bool(b) => Ctx::from(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Ctx::from(u),
            (None, Some(i)) => Ctx::from(i),
            _ => Ctx::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Ctx::from(s.as_str()),
        Value::Array(items) => Ctx::from_object(items.iter().map(json_ctx).collect::<Vec<_>>()),
        Value::Object(m) => Ctx::from_pairs(m.iter().map(|(k, v)| (k.as_str(), json_ctx(v)))),
    }
}

/// Prepares the templates (not the single `{{ expression }}`s) found in `v`: plain
/// interpolations as pieces, others compiled into `env`.
fn add_templates(
    env: &mut Environment<'static>,
    simple: &mut std::collections::HashMap<String, Vec<super::interp::Piece>>,
    v: &Value,
) {
    match v {
        Value::String(s) if crate::expr::is_template(s) => {
            if single_expression(s).is_some() || simple.contains_key(s) || env.get_template(s).is_ok() {
                return;
            }
            match super::interp::parse(s) {
                Some(pieces) => {
                    simple.insert(s.clone(), pieces);
                }
                None => {
                    // A template that does not compile fails its attempt when rendered, with the error.
                    let _ = env.add_template_owned(s.clone(), s.clone());
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|x| add_templates(env, simple, x)),
        Value::Object(m) => m.values().for_each(|x| add_templates(env, simple, x)),
        _ => {}
    }
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
        Plan {
            waits,
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

    /// The evaluation context for task `task` (and item), as templates see it, as JSON.
    pub fn context(&self, st: &RunState, task: Option<usize>, item: Option<u32>) -> Value {
        serde_json::to_value(self.context_value(st, task, item)).unwrap_or(Value::Null)
    }

    /// The evaluation context for task `task` (and item) as a template value: `inputs`, the
    /// tasks it reads (all tasks when `task` is `None`, as `outputs` and hooks see them),
    /// `run`, and `item`/`item_index` for `for_each` items.
    ///
    /// Built directly as template values: this runs once per attempt and is a large part of a
    /// runtime's per-step cost.
    pub fn context_value(&self, st: &RunState, task: Option<usize>, item: Option<u32>) -> Ctx {
        self.context_in(st, task, item, &self.run_parts(st, task.is_none()))
    }

    /// The parts of a context that do not change while a run is running: its `inputs` and,
    /// for tasks (`ended: false`), its `run`. A runtime computes them once per run and builds
    /// each attempt's context with [`Plan::context_in`].
    pub fn run_parts(&self, st: &RunState, ended: bool) -> RunParts {
        let wf = &self.checked.workflow;
        let opt = |v: Option<Millis>| v.map_or(Ctx::from(()), Ctx::from);
        let mut run = vec![
            ("id", Ctx::from(st.run_id.as_str())),
            ("workflow", Ctx::from(wf.metadata.name.as_str())),
            ("version", wf.metadata.version.as_deref().map_or(Ctx::from(()), Ctx::from)),
            ("started_at", opt(st.started_at)),
            ("labels", Ctx::from_pairs(wf.metadata.labels.iter().map(|(k, v)| (k.as_str(), Ctx::from(v.as_str()))))),
            ("attempt", Ctx::from(1)),
        ];
        if ended {
            run.extend([
                ("status", Ctx::from(st.status.as_str())),
                ("error", st.error.as_deref().map_or(Ctx::from(()), Ctx::from)),
                ("ended_at", opt(st.ended_at)),
                ("cost_usd", Ctx::from(st.cost_usd)),
                ("tokens", Ctx::from(st.tokens)),
            ]);
        }
        RunParts {
            inputs: Ctx::from_pairs(st.inputs.iter().map(|(k, v)| (k.as_str(), json_ctx(v)))),
            run: Ctx::from_pairs(run),
            views: (0..self.task_count()).map(|_| std::sync::OnceLock::new()).collect(),
        }
    }

    /// [`Plan::context_value`] with the run's parts given.
    pub fn context_in(&self, st: &RunState, task: Option<usize>, item: Option<u32>, parts: &RunParts) -> Ctx {
        self.context_of(st, task.map(|i| self.reads[i].as_slice()), task, item, parts)
    }

    /// The context `outputs` are rendered in: [`Plan::context_value`] for the ended run, with
    /// only the tasks they read when that is known.
    fn outputs_context(&self, st: &RunState) -> Ctx {
        self.context_of(st, self.output_reads.as_deref(), None, None, &self.run_parts(st, true))
    }

    /// A context whose `tasks` holds the tasks `visible` lists (all tasks when `None`).
    fn context_of(
        &self,
        st: &RunState,
        visible: Option<&[usize]>,
        task: Option<usize>,
        item: Option<u32>,
        parts: &RunParts,
    ) -> Ctx {
        let task_value = |i: usize| {
            let (status, output) = self.view(st, i);
            let make = || {
                let ts = &st.tasks[i];
                Ctx::from_object(TaskView {
                    status: status.map_or("pending", TaskStatus::as_str),
                    output: output.cloned(),
                    output_ctx: std::sync::OnceLock::new(),
                    error: ts.error.as_deref().map(Ctx::from),
                    attempts: ts.attempts,
                    tokens: ts.tokens,
                    cost_usd: ts.cost_usd,
                    items: self.checked.workflow.spec.tasks[i].for_each.as_ref().map(|_| {
                        Ctx::from_object(
                            ts.units
                                .iter()
                                .map(|u| {
                                    Fields::ctx(
                                        &["status", "error"],
                                        vec![
                                            Ctx::from(u.status.as_str()),
                                            u.error.as_deref().map_or(Ctx::from(()), Ctx::from),
                                        ],
                                    )
                                })
                                .collect::<Vec<_>>(),
                        )
                    }),
                })
            };
            // A task whose result is final looks the same to every later reader.
            match status {
                Some(_) => parts.views[i].get_or_init(make).clone(),
                None => make(),
            }
        };
        let tasks = match visible {
            Some(v) => Ctx::from_object(Reads(v.iter().map(|&r| (self.ids[r].clone(), task_value(r))).collect())),
            None => Ctx::from_pairs((0..self.task_count()).map(|i| (self.ids[i].clone(), task_value(i)))),
        };
        match (task, item) {
            (Some(i), Some(k)) => Fields::ctx(
                &["inputs", "tasks", "run", "item", "item_index"],
                vec![
                    parts.inputs.clone(),
                    tasks,
                    parts.run.clone(),
                    st.tasks[i].units.get(k as usize).and_then(|u| u.item.as_ref()).map_or(Ctx::from(()), json_ctx),
                    Ctx::from(k),
                ],
            ),
            _ => Fields::ctx(&["inputs", "tasks", "run"], vec![parts.inputs.clone(), tasks, parts.run.clone()]),
        }
    }

    /// Renders a templated value: strings are templates; a string that is exactly one
    /// `{{ expression }}` yields the expression's value, not its text.
    pub fn render(&self, v: &Value, ctx: &Value) -> Result<Value, String> {
        self.render_in(v, &json_ctx(ctx))
    }

    /// [`Plan::render`] in a context built by [`Plan::context_value`].
    pub fn render_in(&self, v: &Value, ctx: &Ctx) -> Result<Value, String> {
        Ok(match v {
            Value::String(s) if crate::expr::is_template(s) => match single_expression(s) {
                Some(expr) => self.eval_in(expr, ctx)?,
                None => {
                    if let Some(pieces) = self.simple.get(s.as_str()) {
                        return Ok(Value::String(super::interp::render(pieces, ctx)?));
                    }
                    let tmpl = match self.env.get_template(s) {
                        Ok(t) => t,
                        Err(_) => self.env.template_from_str(s).map_err(|e| e.to_string())?,
                    };
                    let text = tmpl.render(ctx).map_err(|e| undefined_in_template(e, s, ctx))?;
                    if text.len() > super::limits::MAX_RENDERED_BYTES {
                        return Err(super::limits::too_large(text.len()));
                    }
                    Value::String(text)
                }
            },
            Value::Array(items) => {
                Value::Array(items.iter().map(|x| self.render_in(x, ctx)).collect::<Result<_, _>>()?)
            }
            Value::Object(m) => Value::Object(
                m.iter().map(|(k, x)| Ok((k.clone(), self.render_in(x, ctx)?))).collect::<Result<_, String>>()?,
            ),
            other => other.clone(),
        })
    }

    /// The run's concurrency key (`spec.concurrency.key`, rendered with its inputs) and
    /// limit, if the workflow has one: `Err` when the key does not render.
    pub fn run_key(&self, st: &RunState) -> Option<(Result<String, String>, u32)> {
        let c = self.checked.workflow.spec.concurrency.as_ref()?;
        let (key, limit) = (c.key.as_ref()?, c.limit?);
        let ctx = self.context_value(st, None, None);
        Some((self.render_in(&Value::String(key.clone()), &ctx).map(|v| key_text(&v)), limit))
    }

    /// Task `task`'s concurrency key rendered in an attempt's context (`ctx`, as its `with`
    /// is) and its limit, if the task has one.
    pub fn task_key(&self, task: usize, ctx: &Ctx) -> Option<(Result<String, String>, u32)> {
        let c = self.checked.workflow.spec.tasks.get(task)?.concurrency.as_ref()?;
        Some((self.render_in(&Value::String(c.key.clone()), ctx).map(|v| key_text(&v)), c.limit))
    }

    /// The rendered `with` block of an attempt.
    pub fn render_with(&self, st: &RunState, task: usize, item: Option<u32>) -> Result<Value, String> {
        let ctx = self.context_value(st, Some(task), item);
        self.render_task_with(task, &ctx, &[]).map(Value::Object).map_err(|(_, e)| e)
    }

    /// Task `task`'s `with` block rendered in `ctx` (a context built by
    /// [`Plan::context_in`]), the fields named in `raw` left as written. On error, the
    /// field that did not render and why.
    pub fn render_task_with(
        &self,
        task: usize,
        ctx: &Ctx,
        raw: &[&str],
    ) -> Result<Map<String, Value>, (String, String)> {
        let prepared = &self.withs[task];
        let mut with = prepared.base.clone();
        let mut holes = prepared.holes.iter().peekable();
        for (pos, (k, v)) in with.iter_mut().enumerate() {
            let Some((_, written, hole)) = holes.next_if(|(p, _, _)| *p == pos) else { continue };
            *v = if raw.contains(&k.as_str()) {
                written.clone()
            } else {
                match hole {
                    Hole::Expression(e) => self.eval_in(e, ctx),
                    Hole::Pieces(pieces) => super::interp::render(pieces, ctx).map(Value::String),
                    Hole::Other => self.render_in(written, ctx),
                }
                .map_err(|e| (k.clone(), e))?
            };
        }
        Ok(with)
    }

    /// Evaluates an expression (`when`, `for_each`, a transform's `expression`) in `ctx`.
    pub fn eval_expression(&self, expr: &str, ctx: &Value) -> Result<Value, String> {
        self.eval_in(expr, &json_ctx(ctx))
    }

    /// [`Plan::eval_expression`] in a context built by [`Plan::context_value`].
    pub fn eval_in(&self, expr: &str, ctx: &Ctx) -> Result<Value, String> {
        let e = self.env.compile_expression(expr).map_err(|e| e.to_string())?;
        let v = e.eval(ctx).map_err(|e| undefined_or(e, expr, ctx))?;
        // An expression whose value is undefined is an error (not a silent `null`), unless it
        // says what to use instead (`| default(...)`, `is defined`).
        if v.is_undefined() {
            return Err(match super::interp::path_of(expr) {
                Some(path) => {
                    let n = missing_at(&path, ctx);
                    super::interp::undefined(expr.trim(), &path, n, ctx)
                }
                None => format!("`{}` is undefined (write `| default(...)` to allow it missing)", expr.trim()),
            });
        }
        let v = serde_json::to_value(&v).map_err(|e| e.to_string())?;
        let size = super::limits::json_size(&v, super::limits::MAX_RENDERED_BYTES);
        if size > super::limits::MAX_RENDERED_BYTES {
            return Err(super::limits::too_large(size));
        }
        Ok(v)
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

impl Transition<'_, '_> {
    fn event(&mut self, event: &Event) -> Result<(), Ignored> {
        match event {
            Event::Start => {
                if self.st.status != RunStatus::Pending {
                    return Err(Ignored("run already started"));
                }
                self.move_run(RunStatus::Running);
                self.arm_deadline();
                self.work = if self.st.ended_tasks > 0 {
                    // A rerun: tasks it reuses have ended already; every other task is decided.
                    (0..self.plan.task_count()).filter(|&i| self.st.tasks[i].status == TaskStatus::Pending).collect()
                } else {
                    (0..self.plan.task_count()).filter(|&i| self.plan.deps[i].is_empty()).collect()
                };
                self.advance();
            }
            Event::Redrive { after, inputs } => {
                if !matches!(self.st.status, RunStatus::Failed | RunStatus::TimedOut) {
                    return Err(Ignored("only a failed or timed-out run is redriven"));
                }
                if self.st.version != *after {
                    return Err(Ignored("the run changed since this redrive was asked for"));
                }
                self.move_run(RunStatus::Running);
                self.st.error = None;
                self.st.outputs = None;
                for (k, v) in inputs.iter().flatten() {
                    self.st.inputs.insert(k.clone(), v.clone());
                }
                self.arm_deadline();
                for i in 0..self.st.tasks.len() {
                    if self.st.tasks[i].status == TaskStatus::Succeeded {
                        continue;
                    }
                    let ts = &mut self.st.tasks[i];
                    ts.attempt_base = ts.units.iter().map(|u| u.attempt).max().unwrap_or(0).max(ts.attempt_base);
                    // The run ended, so no unit runs: holds of attempts cut off then are dropped
                    // with their units (an answer that comes later is not counted).
                    for h in ts.units.iter().filter_map(|u| u.held) {
                        self.st.unsettled.sub(h);
                    }
                    let ts = &mut self.st.tasks[i];
                    ts.units.clear();
                    ts.tally = Default::default();
                    ts.output = None;
                    ts.error = None;
                    ts.reason = None;
                    ts.deps_settled = 0;
                    self.move_task(i, TaskStatus::Pending);
                    self.work.push(i);
                }
                self.advance();
            }
            Event::AttemptFinished { task, item, attempt, result, in_place } => {
                let id = AttemptId { task: *task, item: *item, attempt: *attempt };
                let usage = match result {
                    AttemptResult::Succeeded { usage, .. } | AttemptResult::Failed { usage, .. } => *usage,
                };
                let unit = self.unit(id)?;
                if unit.status == TaskStatus::Cancelled
                    && unit.attempt == id.attempt
                    && unit.held.is_some_and(|h| !h.is_zero() || usage.tokens > 0 || usage.cost_usd > 0.0)
                {
                    // Its task or run ended while it ran: what it spent is counted (once: the
                    // hold goes with it), nothing else changes. Even in an ended run.
                    self.settle_usage(id, usage);
                    if self.st.status == RunStatus::Running {
                        // What it held may let attempts waiting for the budget start.
                        self.advance();
                    }
                    return Ok(());
                }
                self.running()?;
                if unit.status != TaskStatus::Running || unit.attempt != id.attempt {
                    return Err(Ignored("not the running attempt (duplicate or late)"));
                }
                let nth = unit.nth(id.attempt);
                if *in_place {
                    self.unit_mut(id).in_place.push(id.attempt);
                }
                self.settle_usage(id, usage);
                let max_attempts = self.plan.retry[*task].max_attempts;
                match result {
                    AttemptResult::Succeeded { output, .. } => {
                        self.move_unit(id.task, id.unit(), TaskStatus::Succeeded);
                        let u = self.unit_mut(id);
                        u.output = Some(Output::clone(output));
                        u.error = None;
                    }
                    AttemptResult::Failed { error, retryable, .. } if *retryable && nth < max_attempts => {
                        let at = self.now + self.plan.backoff(self.st, *task, *item, *attempt, nth);
                        let cause = self.cause.clone();
                        self.move_unit(id.task, id.unit(), TaskStatus::RetryWait);
                        let u = self.unit_mut(id);
                        u.error = Some(error.clone());
                        u.retry_at = Some(at);
                        u.cause = Some(cause);
                        self.cmds.push(Command::ScheduleRetry { task: *task, item: *item, attempt: *attempt, at });
                    }
                    AttemptResult::Failed { error, .. } => {
                        self.move_unit(id.task, id.unit(), TaskStatus::Failed);
                        self.unit_mut(id).error = Some(error.clone());
                    }
                }
                self.settle(*task);
                self.advance();
            }
            Event::RetryDue { task, item, attempt } => {
                self.running()?;
                let id = AttemptId { task: *task, item: *item, attempt: *attempt };
                let unit = self.unit(id)?;
                if unit.status != TaskStatus::RetryWait || unit.attempt != id.attempt {
                    return Err(Ignored("no retry due for this attempt"));
                }
                self.move_unit(id.task, id.unit(), TaskStatus::Pending);
                self.unit_mut(id).retry_at = None;
                self.make_dispatchable(*task);
                self.advance();
            }
            Event::WakeDue { task, item, attempt } => {
                self.running()?;
                let id = AttemptId { task: *task, item: *item, attempt: *attempt };
                let unit = self.unit(id)?;
                if unit.status != TaskStatus::Waiting || unit.attempt != id.attempt {
                    return Err(Ignored("no wait due for this attempt"));
                }
                if unit.wake_at.is_none() {
                    return Err(Ignored("this wait has no time to wake"));
                }
                let woke = if unit.error.is_some() { Err(None) } else { self.plan.woke(id.task, unit).map_err(Some) };
                match woke {
                    Ok(output) => {
                        self.move_unit(id.task, id.unit(), TaskStatus::Succeeded);
                        self.unit_mut(id).output = Some(Output::new(output));
                    }
                    Err(error) => {
                        self.move_unit(id.task, id.unit(), TaskStatus::Failed);
                        if let Some(e) = error {
                            self.unit_mut(id).error = Some(e);
                        }
                    }
                }
                self.settle(id.task);
                self.advance();
            }
            Event::Complete { task, item, attempt, output } => {
                self.running()?;
                let id = AttemptId { task: *task, item: *item, attempt: *attempt };
                let unit = self.unit(id)?;
                if unit.status != TaskStatus::Waiting
                    || unit.attempt != id.attempt
                    || unit.waits.as_ref().is_none_or(|w| w.kind == WaitKind::Sleep)
                {
                    return Err(Ignored("not waiting for an answer (answered, timed out, or late)"));
                }
                match self.plan.rejection(id.task, output) {
                    None => {
                        self.move_unit(id.task, id.unit(), TaskStatus::Succeeded);
                        self.unit_mut(id).output = Some(output.clone());
                    }
                    Some(error) => {
                        self.move_unit(id.task, id.unit(), TaskStatus::Failed);
                        let u = self.unit_mut(id);
                        u.output = Some(output.clone());
                        u.error = Some(error);
                    }
                }
                self.settle(id.task);
                self.advance();
            }
            Event::Cancel => {
                self.running_or_pending()?;
                self.end(RunStatus::Cancelled, "cancelled".to_string());
            }
            Event::Abort { reason } => {
                self.running_or_pending()?;
                self.end(RunStatus::Failed, reason.clone());
            }
            Event::Tick => {
                self.running()?;
                match self.st.deadline {
                    Some(d) if self.now >= d => self.end(RunStatus::TimedOut, "run timed out".to_string()),
                    _ => return Err(Ignored("nothing due")),
                }
            }
        }
        Ok(())
    }

    fn running(&self) -> Result<(), Ignored> {
        if self.st.status == RunStatus::Running { Ok(()) } else { Err(Ignored("run is not running")) }
    }

    fn running_or_pending(&self) -> Result<(), Ignored> {
        if self.st.status.is_terminal() { Err(Ignored("run already ended")) } else { Ok(()) }
    }

    fn unit(&self, id: AttemptId) -> Result<&Unit, Ignored> {
        self.st.tasks.get(id.task).and_then(|t| t.units.get(id.unit())).ok_or(Ignored("no such task or item"))
    }

    fn unit_mut(&mut self, id: AttemptId) -> &mut Unit {
        &mut self.st.tasks[id.task].units[id.unit()]
    }

    /// Tests (debug builds) check the kept sums of holds against a recount of the units.
    fn check_holds(&self) {
        let (mut reserved, mut unsettled) = (Estimate::default(), Estimate::default());
        for u in self.st.tasks.iter().flat_map(|t| &t.units) {
            match (u.held, u.status) {
                (Some(h), TaskStatus::Running) => reserved.add(h),
                (Some(h), TaskStatus::Cancelled) => unsettled.add(h),
                (Some(h), s) => panic!("a {s:?} unit holds {h:?}"),
                (None, _) => {}
            }
        }
        for (kept, fresh, what) in
            [(self.st.reserved, reserved, "reserved"), (self.st.unsettled, unsettled, "unsettled")]
        {
            debug_assert_eq!(kept.tokens, fresh.tokens, "{what} tokens");
            debug_assert!((kept.cost_usd - fresh.cost_usd).abs() < 1e-9, "{what}: {kept:?} against {fresh:?}");
        }
    }

    /// Counts what attempt `id` spent and releases what it held of the budget.
    fn settle_usage(&mut self, id: AttemptId, usage: Usage) {
        let u = self.unit_mut(id);
        let cut_off = u.status == TaskStatus::Cancelled;
        if let Some(h) = u.held.take() {
            if cut_off { &mut self.st.unsettled } else { &mut self.st.reserved }.sub(h);
        }
        let ts = &mut self.st.tasks[id.task];
        ts.tokens += usage.tokens;
        ts.cost_usd += usage.cost_usd;
        self.st.tokens += usage.tokens;
        self.st.cost_usd += usage.cost_usd;
    }

    /// The run's deadline from now: its `timeout`, and at most its `max_age_ms`.
    fn arm_deadline(&mut self) {
        let timeout = self.plan.checked.workflow.spec.timeout.map(|d| self.now + d.0.as_millis() as Millis);
        let max_age = self.st.max_age_ms.map(|m| self.now.saturating_add(m));
        self.st.deadline = match (timeout, max_age) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// Moves the run to `to` (checked against [`super::moves::RUN_MOVES`]), with its times.
    fn move_run(&mut self, to: RunStatus) {
        let from = self.st.status;
        debug_assert!(super::moves::run_move(from, to), "run {from:?} -> {to:?}");
        self.st.status = to;
        if from == RunStatus::Pending && to == RunStatus::Running {
            self.st.started_at = Some(self.now);
        }
        if from.is_terminal() {
            self.st.ended_at = None;
            self.st.ended_by = None;
        }
        if to.is_terminal() {
            self.st.ended_at = Some(self.now);
            self.st.ended_by = Some(self.cause.clone());
        }
    }

    /// Moves task `i` to `to` (checked against [`super::moves::TASK_MOVES`]; staying put is
    /// no move), counting it in `ended_tasks` and stamping `ended_at` when it ends.
    fn move_task(&mut self, i: usize, to: TaskStatus) {
        let ts = &mut self.st.tasks[i];
        let from = ts.status;
        if from == to {
            return;
        }
        debug_assert!(super::moves::task_move(from, to), "task {i} {from:?} -> {to:?}");
        ts.status = to;
        if from.is_terminal() {
            ts.ended_at = None;
            self.st.ended_tasks -= 1;
        }
        if to.is_terminal() {
            ts.ended_at = Some(self.now);
            self.st.ended_tasks += 1;
        }
    }

    /// Moves unit `k` of task `i` to `to` (checked against [`super::moves::UNIT_MOVES`]),
    /// keeping `running` right; a unit that starts (runs, or waits) begins its next attempt,
    /// recorded as started by the event being applied.
    fn move_unit(&mut self, i: usize, k: usize, to: TaskStatus) {
        let cause = &self.cause;
        let ts = &mut self.st.tasks[i];
        let u = &mut ts.units[k];
        let from = u.status;
        debug_assert!(super::moves::unit_move(from, to), "task {i} unit {k} {from:?} -> {to:?}");
        u.status = to;
        if let Some(c) = &mut ts.tally.0 {
            c.by_status[from as usize] -= 1;
            c.by_status[to as usize] += 1;
            if to == TaskStatus::Pending {
                c.first_pending = c.first_pending.min(k);
            }
        }
        if from == TaskStatus::Running {
            self.st.running -= 1;
            if to == TaskStatus::Cancelled
                && let Some(h) = u.held
            {
                // Cut off: its answer may still come (and be counted), or never.
                self.st.reserved.sub(h);
                self.st.unsettled.add(h);
            }
        }
        if from == TaskStatus::Pending && matches!(to, TaskStatus::Running | TaskStatus::Waiting) {
            u.attempt += 1;
            u.cause = Some(cause.clone());
            u.started_by.push(cause.clone());
            ts.attempts += 1;
            ts.started_at.get_or_insert(self.now);
        }
        if to == TaskStatus::Running {
            self.st.running += 1;
        }
    }

    /// A task's derived status while it runs: some unit running, else one waiting for its
    /// retry, else ready (units left to start).
    fn derive_task(&mut self, i: usize) {
        let c = self.counts(i);
        let to = if c.get(TaskStatus::Running) > 0 {
            TaskStatus::Running
        } else if c.get(TaskStatus::Waiting) > 0 {
            TaskStatus::Waiting
        } else if c.get(TaskStatus::RetryWait) > 0 {
            TaskStatus::RetryWait
        } else {
            TaskStatus::Ready
        };
        self.move_task(i, to);
    }

    /// Task `i`'s unit tally, counted from its units if the state has none yet.
    fn counts(&mut self, i: usize) -> Counts {
        let ts = &mut self.st.tasks[i];
        let c = *ts.tally.0.get_or_insert_with(|| Counts::of(&ts.units));
        // Tests (debug builds) check the kept tally against a recount, where that is cheap.
        if cfg!(debug_assertions) && ts.units.len() <= 256 {
            let fresh = Counts::of(&ts.units);
            debug_assert_eq!(c.by_status, fresh.by_status, "task {i}'s unit tally");
            debug_assert!(c.first_pending <= fresh.first_pending, "task {i}'s first pending unit");
        }
        c
    }

    /// Derives a task's status from its units once one changed.
    fn settle(&mut self, i: usize) {
        let spec_task = &self.plan.checked.workflow.spec.tasks[i];
        let is_for_each = spec_task.for_each.is_some();
        let tolerance = spec_task.tolerate_failures.filter(|_| is_for_each);
        let c = self.counts(i);
        if let Some(tol) = tolerance {
            // Every item runs; the task decides once none is left to run.
            let ended = [TaskStatus::Succeeded, TaskStatus::Failed, TaskStatus::Cancelled, TaskStatus::Skipped]
                .iter()
                .map(|s| c.get(*s) as usize)
                .sum::<usize>();
            let ts = &mut self.st.tasks[i];
            if ended < ts.units.len() {
                self.derive_task(i);
                return;
            }
            let (failed, total) = (c.get(TaskStatus::Failed) as usize, ts.units.len());
            ts.output = Some(item_outputs(&ts.units));
            if tol.allows(failed, total) {
                self.move_task(i, TaskStatus::Succeeded);
            } else {
                let (k, u) =
                    ts.units.iter().enumerate().find(|(_, u)| u.status == TaskStatus::Failed).expect("a failure");
                ts.error = Some(format!(
                    "{failed} of {total} items failed, more than `tolerate_failures` allows; the first, item {k}: {}",
                    u.error.as_deref().unwrap_or_default()
                ));
                self.move_task(i, TaskStatus::Failed);
            }
            self.task_ended(i);
            return;
        }
        let ts = &mut self.st.tasks[i];
        // Only a task with a failed unit is searched for it.
        let first_failed = if c.get(TaskStatus::Failed) > 0 {
            ts.units.iter().enumerate().find(|(_, u)| u.status == TaskStatus::Failed)
        } else {
            None
        };
        if let Some((k, u)) = first_failed {
            let error = u.error.clone().unwrap_or_default();
            ts.error = Some(if is_for_each { format!("item {k}: {error}") } else { error });
            let mut stopped = false;
            for k in 0..self.st.tasks[i].units.len() {
                let status = self.st.tasks[i].units[k].status;
                if !status.is_terminal() {
                    stopped |= status == TaskStatus::Running;
                    self.move_unit(i, k, TaskStatus::Cancelled);
                }
            }
            // What the items that finished gave is kept (`null` for the others).
            if is_for_each {
                self.st.tasks[i].output = Some(item_outputs(&self.st.tasks[i].units));
            }
            self.move_task(i, TaskStatus::Failed);
            if stopped {
                self.cmds.push(Command::CancelRunning { tasks: vec![i] });
            }
            self.task_ended(i);
            return;
        }
        if c.get(TaskStatus::Succeeded) as usize == ts.units.len() {
            ts.output = Some(if is_for_each {
                item_outputs(&ts.units)
            } else {
                ts.units[0].output.clone().unwrap_or_else(|| Output::new(Value::Null))
            });
            self.move_task(i, TaskStatus::Succeeded);
            self.task_ended(i);
        } else {
            self.derive_task(i);
        }
    }

    /// A task reached a terminal state: wake its dependents, fail the run if it must.
    fn task_ended(&mut self, i: usize) {
        if let Ok(k) = self.dispatchable_index(i) {
            self.st.dispatchable.remove(k);
        }
        self.work.extend(self.plan.children[i].iter().copied());
        let failed = self.st.tasks[i].status == TaskStatus::Failed;
        // The task a fallback stands in for is settled by the fallback's outcome.
        let owner = self.plan.fallback_of[i];
        if let Some(o) = owner {
            self.work.extend(self.plan.children[o].iter().copied());
        }
        let subject = owner.unwrap_or(i);
        let effective_failure = match owner {
            Some(o) => {
                self.st.tasks[o].status == TaskStatus::Failed && self.st.tasks[i].status != TaskStatus::Succeeded
            }
            None => failed && self.plan.fallback[i].is_none(),
        };
        // After a budget stop, failures (attempts refused for want of budget among them) do not
        // end the run: what may still run without spending does, and the run ends then.
        if effective_failure
            && self.plan.fails_run(subject)
            && self.st.status == RunStatus::Running
            && self.st.budget_stop.is_none()
        {
            let id = self.plan.checked.dag.id(i);
            let error = self.st.tasks[i].error.clone().unwrap_or_else(|| "not run".to_string());
            self.end(RunStatus::Failed, format!("task `{id}` failed: {error}"));
        }
    }

    /// Makes pending tasks ready (or skips them), dispatches units, and ends the run when
    /// every task has ended.
    fn advance(&mut self) {
        while let Some(i) = self.work.pop() {
            if self.st.status != RunStatus::Running {
                return;
            }
            if self.st.tasks[i].status == TaskStatus::Pending {
                self.consider(i);
            }
        }
        if self.st.status != RunStatus::Running {
            return;
        }
        self.dispatch();
        if self.st.status != RunStatus::Running {
            return;
        }
        // Attempts refused by a budget stop ended their tasks: their dependents are next.
        if !self.work.is_empty() {
            return self.advance();
        }
        if self.st.ended_tasks as usize == self.st.tasks.len() {
            self.finish();
        }
    }

    fn skip(&mut self, i: usize, reason: String) {
        self.st.tasks[i].reason = Some(reason);
        self.move_task(i, TaskStatus::Skipped);
        self.task_ended(i);
    }

    fn fail_task(&mut self, i: usize, error: String) {
        self.st.tasks[i].error = Some(error);
        self.move_task(i, TaskStatus::Failed);
        self.task_ended(i);
    }

    /// Decides a pending task whose dependencies may have ended.
    fn consider(&mut self, i: usize) {
        let plan = self.plan;
        if let Some(owner) = plan.fallback_of[i] {
            match self.st.tasks[owner].status {
                TaskStatus::Failed => {}
                s if s.is_terminal() => {
                    return self.skip(i, format!("not needed: `{}` {}", plan.checked.dag.id(owner), s.as_str()));
                }
                _ => return,
            }
        }
        let deps = &plan.deps[i];
        let mut k = self.st.tasks[i].deps_settled as usize;
        while k < deps.len() {
            if plan.view(self.st, deps[k]).0.is_none() {
                self.st.tasks[i].deps_settled = k as u32;
                return;
            }
            k += 1;
        }
        self.st.tasks[i].deps_settled = k as u32;
        let outcomes: Vec<TaskStatus> = deps.iter().filter_map(|&d| plan.view(self.st, d).0).collect();
        let task = &plan.checked.workflow.spec.tasks[i];
        let rule = task.trigger.unwrap_or_default();
        let ok = |s: &TaskStatus| *s == TaskStatus::Succeeded;
        let pass = outcomes.is_empty()
            || match rule {
                TriggerRule::AllSucceeded => outcomes.iter().all(ok),
                TriggerRule::AllDone => true,
                TriggerRule::AnySucceeded => outcomes.iter().any(ok),
                TriggerRule::NoneFailed => !outcomes.contains(&TaskStatus::Failed),
            };
        if !pass {
            return self.skip(i, format!("trigger rule {} not met", rule.as_str()));
        }
        let needs_ctx = task.when.is_some() || task.for_each.is_some();
        let ctx = if needs_ctx { plan.context_value(self.st, Some(i), None) } else { Ctx::from(()) };
        if let Some(w) = &task.when {
            match plan.eval_in(w, &ctx) {
                Ok(v) if truthy(&v) => {}
                Ok(_) => return self.skip(i, format!("`when` is false: {w}")),
                Err(e) => return self.fail_task(i, format!("`when` failed: {e}")),
            }
        }
        let base = self.st.tasks[i].attempt_base;
        let fresh = |item: Option<Value>| Unit { attempt: base, base, ..Unit::new(item) };
        let units: Vec<Unit> = match &task.for_each {
            None => vec![fresh(None)],
            Some(fe) => match plan.eval_in(fe, &ctx) {
                Ok(Value::Array(items)) if items.len() > super::limits::MAX_FOR_EACH_ITEMS => {
                    return self.fail_task(i, too_many(items.len()));
                }
                Ok(Value::Object(m)) if m.len() > super::limits::MAX_FOR_EACH_ITEMS => {
                    return self.fail_task(i, too_many(m.len()));
                }
                Ok(Value::Array(items)) => items.into_iter().map(|v| fresh(Some(v))).collect(),
                Ok(Value::Object(m)) => m.into_iter().map(|(k, _)| fresh(Some(Value::String(k)))).collect(),
                Ok(other) => return self.fail_task(i, format!("`for_each` gave {other}, not a list")),
                Err(e) => return self.fail_task(i, format!("`for_each` failed: {e}")),
            },
        };
        let ts = &mut self.st.tasks[i];
        if units.is_empty() {
            ts.output = Some(Output::new(Value::Array(Vec::new())));
            self.move_task(i, TaskStatus::Succeeded);
            return self.task_ended(i);
        }
        ts.units = units;
        ts.tally = Default::default();
        self.move_task(i, TaskStatus::Ready);
        self.make_dispatchable(i);
    }

    fn dispatchable_index(&self, i: usize) -> Result<usize, usize> {
        let pos = self.plan.topo_pos[i];
        self.st.dispatchable.binary_search_by_key(&pos, |&t| self.plan.topo_pos[t])
    }

    fn make_dispatchable(&mut self, i: usize) {
        if let Err(k) = self.dispatchable_index(i) {
            self.st.dispatchable.insert(k, i);
        }
    }

    /// Starts pending units, in task order, within `max_parallel` and `max_concurrency`,
    /// while the budget lasts.
    fn dispatch(&mut self) {
        let spec = &self.plan.checked.workflow.spec;
        let cap = spec.concurrency.as_ref().and_then(|c| c.max_parallel).unwrap_or(u32::MAX);
        // Compacts the list in place as it goes (read at `r`, keep at `w`): removing entries one
        // by one would be quadratic when thousands become dispatchable at once.
        let n = self.st.dispatchable.len();
        let (mut r, mut w) = (0, 0);
        // Units a budget stop refuses: failed once the list is compacted.
        let mut over: Vec<(usize, usize)> = Vec::new();
        while r < n && self.st.running < cap {
            let i = self.st.dispatchable[r];
            r += 1;
            let task_cap = spec.tasks[i].max_concurrency.map_or(usize::MAX, |m| m as usize);
            let counts = self.counts(i);
            let mut task_running = counts.get(TaskStatus::Running) as usize;
            let for_each = spec.tasks[i].for_each.is_some();
            let mut pending_left = false;
            // Units before `first_pending` are not pending: a wide `for_each` is not rescanned
            // from its first item each time one more may start.
            let mut first_pending = self.st.tasks[i].units.len();
            for k in counts.first_pending..self.st.tasks[i].units.len() {
                if self.st.tasks[i].units[k].status != TaskStatus::Pending {
                    continue;
                }
                if self.st.running >= cap || task_running >= task_cap {
                    pending_left = true;
                    first_pending = k;
                    break;
                }
                let item = for_each.then_some(k as u32);
                // After a budget stop nothing that spends starts.
                if self.st.budget_stop.is_some() && !super::budget::spends_nothing(&spec.tasks[i].ty) {
                    over.push((i, k));
                    pending_left = true;
                    first_pending = k;
                    break;
                }
                let free = super::budget::spends_nothing(&spec.tasks[i].ty);
                let hold = if free { Estimate::default() } else { self.reservation(i, item) };
                // A built-in task that spends nothing is not the budget's concern.
                match if free { Room::Fits } else { self.room(i, hold) } {
                    Room::Fits => {}
                    Room::Wait => {
                        // Attempts in flight hold the rest: this one starts when they settle.
                        pending_left = true;
                        first_pending = k;
                        break;
                    }
                    Room::Over(reason) => {
                        // Spending stops here; the rest of the run goes on without it.
                        self.st.budget_stop.get_or_insert(reason);
                        over.push((i, k));
                        pending_left = true;
                        first_pending = k;
                        break;
                    }
                }
                if spec.tasks[i].ty == WAIT {
                    // Nothing runs: the unit waits for a delayed `WakeDue` (a render error is
                    // reported when it wakes, at once).
                    let (waits, at, error) = match self.plan.start_wait(self.st, i, item, self.now) {
                        Ok((w, at)) => (Some(w), at, None),
                        Err(e) => (None, Some(self.now), Some(e)),
                    };
                    self.move_unit(i, k, TaskStatus::Waiting);
                    let u = &mut self.st.tasks[i].units[k];
                    u.wake_at = at;
                    u.error = error.map(|e| format!("`wait`: {e}"));
                    let attempt = u.attempt;
                    if waits.as_ref().is_some_and(|w| w.kind != WaitKind::Sleep) {
                        self.cmds.push(Command::Await { task: i, item, attempt });
                    }
                    u.waits = waits;
                    if let Some(at) = at {
                        self.cmds.push(Command::ScheduleWake { task: i, item, attempt, at });
                    }
                    continue;
                }
                self.move_unit(i, k, TaskStatus::Running);
                self.st.tasks[i].units[k].held = Some(hold);
                self.st.reserved.add(hold);
                let attempt = self.st.tasks[i].units[k].attempt;
                task_running += 1;
                self.cmds.push(Command::Execute { task: i, item, attempt });
            }
            if let Some(c) = &mut self.st.tasks[i].tally.0 {
                // Every unit before `first_pending` was looked at and is not pending now (a
                // unit made pending since lowers it again, in `move_unit`).
                c.first_pending = first_pending;
            }
            self.derive_task(i);
            if pending_left {
                self.st.dispatchable[w] = i;
                w += 1;
            }
        }
        self.st.dispatchable.copy_within(r..n, w);
        self.st.dispatchable.truncate(w + n - r);
        let reason = self.st.budget_stop.clone().unwrap_or_default();
        for (i, k) in over {
            if self.st.tasks[i].status.is_terminal() || self.st.tasks[i].units[k].status != TaskStatus::Pending {
                continue;
            }
            self.move_unit(i, k, TaskStatus::Failed);
            self.st.tasks[i].units[k].error = Some(reason.clone());
            self.settle(i);
        }
    }

    /// What an attempt of task `i` (item `item`) holds of the run's budget while it runs: its
    /// worst case from the run's prices on its rendered `with` ([`super::budget`]); for a run
    /// stored before prices were kept, the task's estimate then. Zero without a budget.
    fn reservation(&mut self, i: usize, item: Option<u32>) -> Estimate {
        if self.plan.checked.workflow.spec.budget.is_none() {
            return Estimate::default();
        }
        let Some(book) = &self.st.prices else {
            return self.st.estimates.get(i).copied().unwrap_or_default();
        };
        let ty = self.plan.checked.workflow.spec.tasks[i].ty.as_str();
        if !super::budget::spends(ty) {
            return Estimate::default();
        }
        let parts = self.parts.get_or_insert_with(|| self.plan.run_parts(self.st, false));
        let ctx = self.plan.context_in(self.st, Some(i), item, parts);
        match self.plan.render_task_with(i, &ctx, &[]) {
            Ok(with) => book.attempt(ty, &Value::Object(with)),
            // The attempt fails when it renders the same way: it calls nothing.
            Err(_) => Estimate::default(),
        }
    }

    /// Whether an attempt of task `i` that holds `hold` may start. What is committed (spent,
    /// plus what attempts cut off still hold) plus `hold` must fit in the budget, else the
    /// run is over it; and with what running attempts hold on top, else it waits for them
    /// to settle. Money and tokens alike ([`room_in`]).
    fn room(&self, i: usize, hold: Estimate) -> Room {
        let Some(b) = self.plan.checked.workflow.spec.budget else { return Room::Fits };
        let id = self.plan.checked.dag.id(i);
        let st = &*self.st;
        let (cut, reserved) = (st.unsettled, st.reserved);
        let money = b.max_cost_usd.map(|max| {
            let cut_off = if cut.cost_usd > 0.0 {
                format!(" (${:.4} of it held by attempts cut off)", cut.cost_usd)
            } else {
                String::new()
            };
            let committed = st.cost_usd + cut.cost_usd;
            room_in(committed, reserved.cost_usd, hold.cost_usd, max, |over_by_hold| {
                if over_by_hold {
                    format!(
                        "budget exceeded: `{id}` (may cost ${:.4}) would take spending from ${committed:.4}{cut_off} over ${max}",
                        hold.cost_usd
                    )
                } else {
                    format!("budget exceeded: spent ${committed:.4}{cut_off} of ${max}")
                }
            })
        });
        let tokens = b.max_tokens.map(|max| {
            let committed = st.tokens + cut.tokens;
            room_in(committed as f64, reserved.tokens as f64, hold.tokens as f64, max as f64, |over_by_hold| {
                if over_by_hold {
                    format!(
                        "budget exceeded: `{id}` (may use {} tokens) would take usage from {committed} over {max} tokens",
                        hold.tokens
                    )
                } else {
                    format!("budget exceeded: used {committed} of {max} tokens")
                }
            })
        });
        match (money.unwrap_or(Room::Fits), tokens.unwrap_or(Room::Fits)) {
            (over @ Room::Over(_), _) | (_, over @ Room::Over(_)) => over,
            (Room::Wait, _) | (_, Room::Wait) => Room::Wait,
            _ => Room::Fits,
        }
    }

    /// Every task ended and none failed the run: render the outputs.
    fn finish(&mut self) {
        let ctx = self.plan.outputs_context(self.st);
        let outputs = Value::Object(self.plan.checked.workflow.spec.outputs.clone().into_iter().collect());
        if let Some(reason) = self.st.budget_stop.clone() {
            // The outputs say what was kept (each rendered on its own: one that reads what
            // did not finish is `null`).
            let kept: Map<String, Value> = self
                .plan
                .checked
                .workflow
                .spec
                .outputs
                .iter()
                .map(|(k, v)| (k.clone(), self.plan.render_in(v, &ctx).unwrap_or(Value::Null)))
                .collect();
            self.st.outputs = Some(Value::Object(kept));
            self.st.error = Some(format!("{reason} (spending stopped; what finished is kept)"));
            self.move_run(RunStatus::Failed);
            self.cmds.push(Command::Finished { status: RunStatus::Failed });
            return;
        }
        match self.plan.render_in(&outputs, &ctx) {
            Ok(v) => {
                self.st.outputs = Some(v);
                self.move_run(RunStatus::Succeeded);
                self.cmds.push(Command::Finished { status: RunStatus::Succeeded });
            }
            Err(e) => self.end(RunStatus::Failed, format!("outputs: {e}")),
        }
    }

    /// Ends the run early: tasks not ended are cancelled.
    fn end(&mut self, status: RunStatus, error: String) {
        let mut running = Vec::new();
        for i in 0..self.st.tasks.len() {
            if self.st.tasks[i].status.is_terminal() {
                continue;
            }
            if self.st.tasks[i].units.iter().any(|u| u.status == TaskStatus::Running) {
                running.push(i);
            }
            for k in 0..self.st.tasks[i].units.len() {
                if !self.st.tasks[i].units[k].status.is_terminal() {
                    self.move_unit(i, k, TaskStatus::Cancelled);
                }
            }
            self.st.tasks[i].reason = Some(format!("run {}", status.as_str()));
            self.move_task(i, TaskStatus::Cancelled);
        }
        self.st.error = Some(error);
        self.move_run(status);
        self.st.dispatchable.clear();
        debug_assert_eq!(self.st.running, 0, "every unit has stopped");
        debug_assert_eq!(self.st.ended_tasks as usize, self.st.tasks.len(), "every task has ended");
        if !running.is_empty() {
            self.cmds.push(Command::CancelRunning { tasks: running });
        }
        self.cmds.push(Command::Finished { status });
    }
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

#[cfg(test)]
mod json_ctx_tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::{Ctx, json_ctx};

    pub(super) fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            ".{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(("[a-z]{0,4}", inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn same(direct: &Ctx, v: &Value) {
        let via_serde = Ctx::from(minijinja::value::Serde(v));
        assert_eq!(direct, &via_serde, "{v}");
        assert_eq!(direct.kind(), via_serde.kind(), "{v}");
        assert_eq!(direct.to_string(), via_serde.to_string(), "{v}");
        assert_eq!(serde_json::to_string(direct).unwrap(), serde_json::to_string(&via_serde).unwrap(), "{v}");
        assert_eq!(direct.as_i64(), via_serde.as_i64(), "{v}");
    }

    #[test]
    fn json_values_become_the_template_values_serde_would_make() {
        for v in [json!(null), json!(u64::MAX), json!(-1), json!(1.5), json!({"b": 1, "a": [true, "x"]})] {
            same(&json_ctx(&v), &v);
        }
    }

    proptest! {
        #[test]
        fn any_json_value_becomes_the_template_value_serde_would_make(v in json()) {
            same(&json_ctx(&v), &v);
        }
    }
}

#[cfg(test)]
mod task_view_tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::json_ctx_tests::json;
    use super::{Ctx, Fields, Output, TaskView, json_ctx};

    /// `tasks.<id>` as it was built before `TaskView`: a fixed-key map of template values.
    fn eager(status: &'static str, output: Option<&Value>, error: Option<&str>, attempts: u32, tokens: u64) -> Ctx {
        let usage = Fields::ctx(&["tokens", "cost_usd"], vec![Ctx::from(tokens), Ctx::from(0.25)]);
        Fields::ctx(
            TaskView::KEYS,
            vec![
                Ctx::from(status),
                output.map_or(Ctx::from(()), json_ctx),
                error.map_or(Ctx::from(()), Ctx::from),
                Ctx::from(attempts),
                usage,
            ],
        )
    }

    fn view(status: &'static str, output: Option<&Value>, error: Option<&str>, attempts: u32, tokens: u64) -> Ctx {
        Ctx::from_object(TaskView {
            status,
            output: output.cloned().map(Output::new),
            output_ctx: Default::default(),
            error: error.map(Ctx::from),
            attempts,
            tokens,
            cost_usd: 0.25,
            items: None,
        })
    }

    /// Templates see the same thing through either.
    fn same(status: &'static str, output: Option<&Value>, error: Option<&str>) {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        let (a, b) = (eager(status, output, error, 3, 7), view(status, output, error, 3, 7));
        for t in [
            "{{ v }}",
            "{{ v|tojson }}",
            "{{ v|length }}",
            "{% for k in v %}{{ k }}={{ v[k] }};{% endfor %}",
            "{{ v|items|list }}",
            "{{ v.status }} {{ v.error }} {{ v.attempts }} {{ v.usage.tokens + v.usage.cost_usd }}",
            "{{ v.output }}",
            "{{ v.output|tojson }}",
            "{{ v.output is mapping }} {{ v.output is sequence }} {{ v.output is string }}",
            "{{ v.output|length if v.output is iterable else 0 }}",
            "{{ v == other }} {{ v.output == other.output }}",
            "{{ v.missing }}",
        ] {
            let render = |v: &Ctx, other: &Ctx| {
                env.render_str(t, minijinja::context! { v => v.clone(), other => other.clone() }).map_err(|e| e.kind())
            };
            assert_eq!(render(&b, &a), render(&a, &b), "{t} with output {output:?}");
        }
        assert_eq!(serde_json::to_value(&b).unwrap(), serde_json::to_value(&a).unwrap());
    }

    #[test]
    fn a_task_view_reads_like_the_map_it_replaces() {
        same("pending", None, None);
        same("failed", None, Some("boom"));
        same("succeeded", Some(&serde_json::json!({"text": "ok", "n": [1, 2.5, null]})), None);
    }

    proptest! {
        #[test]
        fn any_output_reads_the_same_through_a_task_view(v in json()) {
            same("succeeded", Some(&v), None);
        }
    }
}

/// A `for_each` task's output: each item's output in item order, `null` for an item that did
/// not succeed (its status and error are in the task's `items`).
fn item_outputs(units: &[Unit]) -> Output {
    Output::new(Value::Array(
        units
            .iter()
            .map(|u| match u.status {
                TaskStatus::Succeeded => u.output.as_deref().cloned().unwrap_or(Value::Null),
                _ => Value::Null,
            })
            .collect(),
    ))
}

/// The index of the first part of `path` that is not in `ctx`.
fn missing_at(path: &[String], ctx: &Ctx) -> usize {
    let mut v = ctx.clone();
    for (n, part) in path.iter().enumerate() {
        v = v.get_attr(part).unwrap_or_default();
        if v.is_undefined() {
            return n;
        }
    }
    path.len() - 1
}

/// A template's error: an undefined value named with the first `{{ path }}` of the template
/// that is undefined (else minijinja's explanation, with how to allow it).
fn undefined_in_template(e: minijinja::Error, template: &str, ctx: &Ctx) -> String {
    if e.kind() != minijinja::ErrorKind::UndefinedError {
        return super::limits::explain(e);
    }
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else { break };
        let expr = after[..close].trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        if let Some(path) = super::interp::path_of(expr) {
            let n = missing_at(&path, ctx);
            let mut v = ctx.clone();
            let mut undefined = false;
            for part in &path {
                v = v.get_attr(part).unwrap_or_default();
                if v.is_undefined() {
                    undefined = true;
                    break;
                }
            }
            if undefined {
                return super::interp::undefined(expr, &path, n, ctx);
            }
        }
        rest = &after[close + 2..];
    }
    format!("{} (write `| default(...)` where a value may be missing)", super::limits::explain(e))
}

/// A template or expression error: an undefined value named with its expression when it is a
/// plain path, else minijinja's explanation (limits named as such).
fn undefined_or(e: minijinja::Error, expr: &str, ctx: &Ctx) -> String {
    if e.kind() == minijinja::ErrorKind::UndefinedError
        && let Some(path) = super::interp::path_of(expr)
    {
        return super::interp::undefined(expr.trim(), &path, missing_at(&path, ctx), ctx);
    }
    super::limits::explain(e)
}

/// A rendered key as text (a string as it is, anything else as JSON).
fn key_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
