//! What templates see: the evaluation context of a task (inputs, run, the tasks it reads,
//! items), built without copying outputs, and rendering `with` blocks, keys and expressions in it.

use super::*;

/// A task's `with` block, prepared so that an attempt renders it without looking at what
/// needs no rendering: the block with each value to render replaced by `null`, and how to
/// render each of those.
pub(super) struct PreparedWith {
    base: Map<String, Value>,
    /// Position in `base`, the value as written, and how it renders.
    holes: Vec<(usize, Value, Hole)>,
}

pub(super) enum Hole {
    /// `"{{ expression }}"`: the expression's value.
    Expression(String),
    /// Text with `{{ path }}` holes (see `interp`).
    Pieces(Vec<crate::engine::interp::Piece>),
    /// Anything else: a template compiled into the environment, or a list or map holding
    /// templates ([`Plan::render_in`]).
    Other,
}

impl PreparedWith {
    pub(super) fn new(
        env: &mut Environment<'static>,
        simple: &mut std::collections::HashMap<String, Vec<crate::engine::interp::Piece>>,
        with: &Map<String, Value>,
    ) -> Self {
        let mut base = with.clone();
        let mut holes = Vec::new();
        for (pos, (_, v)) in base.iter_mut().enumerate() {
            let hole = match v {
                Value::String(s) if crate::expr::is_template(s) => match single_expression(s) {
                    Some(e) => Hole::Expression(e.to_string()),
                    None => match crate::engine::interp::parse(s) {
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

pub(super) fn has_template(v: &Value) -> bool {
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
pub(super) struct Fields {
    keys: &'static [&'static str],
    values: Vec<Ctx>,
}

impl Fields {
    pub(super) fn ctx(keys: &'static [&'static str], values: Vec<Ctx>) -> Ctx {
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
pub(super) struct TaskView {
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
pub(super) struct Reads(Vec<(Ctx, Ctx)>);

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
pub(super) fn add_templates(
    env: &mut Environment<'static>,
    simple: &mut std::collections::HashMap<String, Vec<crate::engine::interp::Piece>>,
    v: &Value,
) {
    match v {
        Value::String(s) if crate::expr::is_template(s) => {
            if single_expression(s).is_some() || simple.contains_key(s) || env.get_template(s).is_ok() {
                return;
            }
            match crate::engine::interp::parse(s) {
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
    pub(super) fn outputs_context(&self, st: &RunState) -> Ctx {
        self.context_of(st, self.output_reads.as_deref(), None, None, &self.run_parts(st, true))
    }

    /// A context whose `tasks` holds the tasks `visible` lists (all tasks when `None`).
    pub(super) fn context_of(
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
                        return Ok(Value::String(crate::engine::interp::render(pieces, ctx)?));
                    }
                    let tmpl = match self.env.get_template(s) {
                        Ok(t) => t,
                        Err(_) => self.env.template_from_str(s).map_err(|e| e.to_string())?,
                    };
                    let text = tmpl.render(ctx).map_err(|e| undefined_in_template(e, s, ctx))?;
                    if text.len() > crate::engine::limits::MAX_RENDERED_BYTES {
                        return Err(crate::engine::limits::too_large(text.len()));
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
            // An agent's tools are rendered per call, with its arguments (`args`).
            *v = if raw.contains(&k.as_str()) || (k == "tools" && self.is_agent(task)) {
                written.clone()
            } else {
                match hole {
                    Hole::Expression(e) => self.eval_in(e, ctx),
                    Hole::Pieces(pieces) => crate::engine::interp::render(pieces, ctx).map(Value::String),
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
            return Err(match crate::engine::interp::path_of(expr) {
                Some(path) => {
                    let n = missing_at(&path, ctx);
                    crate::engine::interp::undefined(expr.trim(), &path, n, ctx)
                }
                None => format!("`{}` is undefined (write `| default(...)` to allow it missing)", expr.trim()),
            });
        }
        let v = serde_json::to_value(&v).map_err(|e| e.to_string())?;
        let size = crate::engine::limits::json_size(&v, crate::engine::limits::MAX_RENDERED_BYTES);
        if size > crate::engine::limits::MAX_RENDERED_BYTES {
            return Err(crate::engine::limits::too_large(size));
        }
        Ok(v)
    }
}

/// A `for_each` task's output: each item's output in item order, `null` for an item that did
/// not succeed (its status and error are in the task's `items`).
pub(super) fn item_outputs(units: &[Unit]) -> Output {
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
pub(super) fn missing_at(path: &[String], ctx: &Ctx) -> usize {
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
pub(super) fn undefined_in_template(e: minijinja::Error, template: &str, ctx: &Ctx) -> String {
    if e.kind() != minijinja::ErrorKind::UndefinedError {
        return crate::engine::limits::explain(e);
    }
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else { break };
        let expr = after[..close].trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        if let Some(path) = crate::engine::interp::path_of(expr) {
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
                return crate::engine::interp::undefined(expr, &path, n, ctx);
            }
        }
        rest = &after[close + 2..];
    }
    format!("{} (write `| default(...)` where a value may be missing)", crate::engine::limits::explain(e))
}

/// A template or expression error: an undefined value named with its expression when it is a
/// plain path, else minijinja's explanation (limits named as such).
pub(super) fn undefined_or(e: minijinja::Error, expr: &str, ctx: &Ctx) -> String {
    if e.kind() == minijinja::ErrorKind::UndefinedError
        && let Some(path) = crate::engine::interp::path_of(expr)
    {
        return crate::engine::interp::undefined(expr.trim(), &path, missing_at(&path, ctx), ctx);
    }
    crate::engine::limits::explain(e)
}

/// A rendered key as text (a string as it is, anything else as JSON).
pub(super) fn key_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
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
