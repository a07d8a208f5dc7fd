//! Validation: from YAML text to a checked workflow, or to every error in the file at once.
//!
//! The pipeline:
//! 1. load YAML into a spanned tree under [`Limits`] (syntax errors and hostile input stop
//!    here, with one diagnostic);
//! 2. check the document against the generated JSON Schema (unknown fields, types, enums,
//!    ranges, durations, task `with` blocks), translating each schema error into a
//!    diagnostic with the field's line and column;
//! 3. deserialize what can be deserialized, task by task, so one broken task does not hide
//!    the errors of the others;
//! 4. semantic checks: ids, dependencies, cycles, fallbacks, template and expression syntax,
//!    references (a task reads only its ancestors), `for_each`, inputs, schedules, events,
//!    budgets, and per-type rules.
//!
//! The result is a [`Report`] and, when it holds no error, a [`Checked`] workflow with its DAG.

use std::collections::{BTreeSet, HashMap};
use std::sync::{LazyLock, Mutex, OnceLock};

use jsonschema::error::ValidationErrorKind;
use serde::Deserialize;
use serde_json::Value;

use crate::dag::{Dag, NodeSpec};
use crate::diagnostic::{Diagnostic, Report, did_you_mean, field_path};
use crate::expr::{Analyzer, SyntaxError, is_template};
use crate::inputs::{check_value, short};
use crate::model::{
    DURATION_PATTERN, Defaults, EventTrigger, HOST_PATTERN, Hooks, IDENT_PATTERN, InputSpec, InputType, NAME_PATTERN,
    Schedule, Task, Workflow,
};
use crate::schedule::{check_cron, check_rate};
use crate::source::{SourceFile, Span};
use crate::tasks::{
    Check, EvaluateWith, PolicyWith, Registry, TaskType, TransformWith, WaitWith, glob_match, llm_models, path_covers,
};
use crate::yaml::{Limits, LoadError, LoadIssue, Loaded, load};

/// Most tasks a workflow may have.
pub const MAX_TASKS: usize = 10_000;
/// From this many tasks on, templates are analysed on a second thread.
const PARALLEL_FROM: usize = 500;

/// What a task's result exposes to templates: `tasks.<id>.<field>`.
pub const TASK_FIELDS: &[&str] = &["output", "status", "error", "usage", "attempts", "items"];

/// The fields the output of a built-in task type can have (`None`: any, as a `transform`'s or
/// a registered type's). A `wait`'s depend on what it waits for; a task with a `callback` has
/// its answer's output, any JSON.
pub fn output_fields(ty: &str, with: &serde_json::Map<String, Value>) -> Option<&'static [&'static str]> {
    if with.contains_key("callback") {
        return None;
    }
    Some(match ty {
        "llm" => &["text", "json", "model", "usage", "fallback_from"],
        "agent" => &["text", "json", "model", "turns", "tool_calls", "transcript", "usage", "stopped"],
        "http" => &["status", "headers", "body"],
        "evaluate" => &["score", "passed", "checks"],
        "policy" => &["allowed", "reasons"],
        "wait" if with.contains_key("approval") => &["approved", "fields", "comment", "by", "timed_out"],
        "wait" if with.contains_key("event") => &["event", "key", "payload", "by", "timed_out"],
        "wait" => &["waited_until", "timed_out"],
        _ => return None,
    })
}
/// What `run.*` exposes everywhere.
pub const RUN_FIELDS: &[&str] = &["id", "workflow", "version", "started_at", "labels", "attempt"];
/// What `run.*` adds in hooks and outputs, once the run has ended.
pub const RUN_END_FIELDS: &[&str] = &["status", "error", "ended_at", "cost_usd", "tokens"];

/// Stable diagnostic codes; see `docs/errors.md`.
pub mod codes {
    pub const YAML_SYNTAX: &str = "WF001";
    pub const LIMIT: &str = "WF002";
    pub const DUPLICATE_KEY: &str = "WF003";
    pub const SCHEMA: &str = "WF010";
    pub const UNKNOWN_FIELD: &str = "WF011";
    pub const MISSING_FIELD: &str = "WF012";
    pub const DUPLICATE_ID: &str = "WF020";
    pub const UNKNOWN_TYPE: &str = "WF021";
    pub const UNKNOWN_DEPENDENCY: &str = "WF022";
    pub const CYCLE: &str = "WF023";
    pub const FALLBACK: &str = "WF024";
    pub const DUPLICATE_DEPENDENCY: &str = "WF025";
    pub const TEMPLATE_SYNTAX: &str = "WF030";
    pub const UNKNOWN_REFERENCE: &str = "WF031";
    pub const NOT_ANCESTOR: &str = "WF032";
    pub const ITEM_OUTSIDE_FOR_EACH: &str = "WF033";
    pub const SECRET_PLACE: &str = "WF034";
    pub const EXPRESSION_BRACES: &str = "WF035";
    pub const SECRET_UNDECLARED: &str = "WF036";
    pub const SECRET_HOSTS: &str = "WF037";
    pub const FOR_EACH: &str = "WF040";
    pub const TIMING: &str = "WF041";
    pub const CONCURRENCY: &str = "WF042";
    pub const INPUT: &str = "WF050";
    pub const SCHEDULE: &str = "WF060";
    pub const EVENT: &str = "WF061";
    pub const BUDGET: &str = "WF062";
    pub const TASK_CONFIG: &str = "WF070";
    pub const POLICY: &str = "WF071";
}
use codes::*;

mod graph;
mod refs;
mod schema_errors;
mod spec;
mod tasks;

/// A workflow that passed validation, with its graph and what each task reads.
#[derive(Debug, Clone)]
pub struct Checked {
    pub source: SourceFile,
    pub workflow: Workflow,
    pub dag: Dag,
    pub reads: Vec<Reads>,
    /// What `spec.outputs` read.
    pub output_reads: Reads,
}

/// What one task reads, from its templates and expressions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reads {
    pub tasks: BTreeSet<String>,
    pub inputs: BTreeSet<String>,
    pub run: BTreeSet<String>,
    pub secrets: BTreeSet<String>,
    pub item: bool,
    /// Reads `tasks` as a whole (iterates it, subscripts it, passes it on), not only named
    /// tasks: allowed in outputs and hooks.
    pub all_tasks: bool,
}

/// The result of validating one file.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub report: Report,
    /// Present when the report holds no error.
    pub checked: Option<Checked>,
}

/// Validates workflow documents. Build once, use for many files (it holds the compiled
/// schema); [`Validator::shared`] is the process's one validator of the built-in task types.
pub struct Validator {
    registry: Registry,
    schema: Value,
    compiled: Compiled,
    analyzer: Analyzer,
    limits: Limits,
}

/// The JSON Schema, compiled on a second thread from [`Validator::new`] on: compiling takes a
/// few milliseconds (jsonschema checks the schema against its meta-schema and builds every
/// pattern's regex), which is most of a small workflow's cold validation. A process's first
/// validation reads and parses its YAML meanwhile, and waits only for what is left.
struct Compiled {
    ready: OnceLock<jsonschema::Validator>,
    pending: Mutex<Option<std::thread::JoinHandle<jsonschema::Validator>>>,
}

impl Compiled {
    fn start(schema: &Value) -> Self {
        let compile = |schema: &Value| jsonschema::options().build(schema).expect("the generated schema compiles");
        let copy = schema.clone();
        match std::thread::Builder::new().name("llmo-schema".into()).spawn(move || compile(&copy)) {
            Ok(handle) => Compiled { ready: OnceLock::new(), pending: Mutex::new(Some(handle)) },
            // No thread to be had: compile here.
            Err(_) => Compiled { ready: OnceLock::from(compile(schema)), pending: Mutex::new(None) },
        }
    }

    fn get(&self) -> &jsonschema::Validator {
        self.ready.get_or_init(|| {
            let handle = self.pending.lock().unwrap_or_else(|e| e.into_inner()).take();
            // `get_or_init` runs this once; the handle is there until then.
            handle.expect("the schema is being compiled").join().expect("compiling the schema does not panic")
        })
    }
}

impl Default for Validator {
    fn default() -> Self {
        Self::new(Registry::default())
    }
}

impl Validator {
    pub fn new(registry: Registry) -> Self {
        let schema = crate::schema::workflow_schema(&registry);
        let compiled = Compiled::start(&schema);
        Validator { registry, schema, compiled, analyzer: Analyzer::new(), limits: Limits::default() }
    }

    /// The process's validator of the built-in task types, built on first use: a long-lived
    /// process (a Lambda container, `llmo serve`) compiles the schema once, not once per
    /// workflow it meets.
    pub fn shared() -> &'static Validator {
        static SHARED: LazyLock<Validator> = LazyLock::new(Validator::default);
        &SHARED
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// Validates one source file.
    pub fn validate(&self, source: &SourceFile) -> Outcome {
        let mut report = Report::new(source.clone());
        let loaded = match load(source.text(), self.limits) {
            Ok(l) => l,
            Err(e) => {
                report.push(load_error(&e));
                report.sort();
                return Outcome { report, checked: None };
            }
        };
        for issue in &loaded.issues {
            report.push(match issue {
                LoadIssue::DuplicateKey { key, span, first } => {
                    Diagnostic::error(DUPLICATE_KEY, format!("duplicate key `{key}`; the first value is kept"))
                        .at("", Some(*span))
                        .label("repeated here")
                        .related(*first, "first defined here")
                }
                LoadIssue::NonScalarKey { span } => {
                    Diagnostic::error(SCHEMA, "mapping keys must be plain strings").at("", Some(*span))
                }
            });
        }
        if let Some(items) = loaded.json.pointer("/spec/tasks").and_then(Value::as_array)
            && items.len() > MAX_TASKS
        {
            let span = loaded.locate("/spec/tasks").map(|(s, k)| k.unwrap_or(s));
            report.push(
                Diagnostic::error(LIMIT, format!("workflow has {} tasks; the limit is {MAX_TASKS}", items.len()))
                    .at("spec.tasks", span)
                    .help("split the work into several workflows, or use `for_each` to fan out over data"),
            );
            report.sort();
            return Outcome { report, checked: None };
        }
        let tasks = loaded.json.pointer("/spec/tasks").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
        let mut run =
            Run { v: self, loaded: &loaded, json: &loaded.json, report, pre: Vec::new(), suggest_budget: 2_000_000 };
        let large = tasks.len() >= PARALLEL_FROM;
        let checked = if large {
            // Analyse templates on a second thread while this one checks the schema and
            // builds the graph; the results meet in `run.pre`.
            std::thread::scope(|scope| {
                let worker = scope.spawn(|| analyse_tasks(&self.analyzer, &self.registry, tasks));
                run.check_with(move || worker.join().expect("template analysis does not panic"))
            })
        } else {
            run.check_with(Vec::new)
        };
        let mut report = run.report;
        report.sort();
        let checked = if report.has_errors() {
            None
        } else {
            checked.map(|(workflow, dag, reads, output_reads)| Checked {
                source: source.clone(),
                workflow,
                dag,
                reads,
                output_reads,
            })
        };
        if large {
            // The loaded tree of a large document is a few hundred thousand small allocations
            // (10,000 tasks: about 7 ms to free): freed on a thread of its own, off the
            // caller's path. If no thread can be had, it is freed here as usual.
            let _ = std::thread::Builder::new().name("llmo-free".into()).spawn(move || drop(loaded));
        }
        Outcome { report, checked }
    }
}

fn load_error(e: &LoadError) -> Diagnostic {
    let span = e.pos().map(|p| Span::new(p, p));
    match e {
        LoadError::Syntax { message, .. } => {
            Diagnostic::error(YAML_SYNTAX, format!("YAML syntax error: {message}")).at("", span)
        }
        LoadError::TooLarge { .. } => Diagnostic::error(LIMIT, e.to_string())
            .help("workflow files are limited to 10 MiB; move large data to inputs or S3"),
        LoadError::TooDeep { .. }
        | LoadError::TooManyNodes { .. }
        | LoadError::TooManyAliasNodes { .. }
        | LoadError::TooManyAliasBytes { .. } => Diagnostic::error(LIMIT, e.to_string())
            .at("", span)
            .help("deeply nested or alias-expanded documents are refused to keep validation fast and safe"),
        LoadError::UnknownAlias { .. } | LoadError::MultipleDocuments { .. } => {
            Diagnostic::error(YAML_SYNTAX, e.to_string()).at("", span)
        }
    }
}

/// Where a template or expression stands, which decides what it may read.
#[derive(Debug, Clone, Copy)]
enum Site {
    /// In task `idx`; `body` is false in `when` and `for_each` (evaluated before fan-out).
    Task {
        idx: usize,
        body: bool,
        secrets: bool,
    },
    Output,
    Hook {
        secrets: bool,
    },
    Event,
    /// `spec.concurrency.key`: rendered when the run starts (`inputs` and `run` only).
    RunKey,
}

/// A task as far as it could be read: the typed task when it deserialized, else its id and
/// dependencies read straight from JSON so that graph checks still run.
///
/// A typed task's id and dependencies live in the view, not in `task` (moved out, not copied:
/// 10,000 tasks have tens of thousands of them): read them here; [`TaskView::into_task`] puts
/// them back.
struct TaskView {
    task: Option<Task>,
    id: Option<String>,
    depends_on: Vec<String>,
    fallback: Option<String>,
}

impl TaskView {
    fn of(mut task: Task) -> TaskView {
        TaskView {
            id: Some(std::mem::take(&mut task.id)),
            depends_on: std::mem::take(&mut task.depends_on),
            fallback: task.on_failure.as_ref().and_then(|f| f.fallback()).map(str::to_string),
            task: Some(task),
        }
    }

    /// The whole task again.
    fn into_task(self) -> Option<Task> {
        let mut task = self.task?;
        task.id = self.id.unwrap_or_default();
        task.depends_on = self.depends_on;
        Some(task)
    }
}

struct Run<'a> {
    v: &'a Validator,
    loaded: &'a Loaded,
    json: &'a Value,
    report: Report,
    /// Tasks' templates and expressions analysed ahead of time, by task index.
    pre: Vec<TaskAnalysis>,
    /// String comparisons left for "did you mean" hints.
    suggest_budget: usize,
}

type Analysis = Result<Vec<Vec<String>>, SyntaxError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Template,
    Expression,
}

/// Calls `f` for every string of `v` that is a template or expression, with its pointer.
fn visit_strings<'j>(
    v: &'j Value,
    ptr: &mut String,
    rel: usize,
    ty: Option<&TaskType>,
    f: &mut impl FnMut(&'j str, &str, Kind, bool),
) {
    match v {
        Value::String(s) => {
            let r = ptr.get(rel..).unwrap_or("");
            if ty.is_some_and(|t| t.literal_paths.iter().any(|p| path_covers(p, r))) {
                return;
            }
            let secrets = ty.is_some_and(|t| t.secret_paths.iter().any(|p| path_covers(p, r)));
            if ty.is_some_and(|t| t.expression_paths.iter().any(|p| path_covers(p, r))) {
                f(s, ptr, Kind::Expression, secrets);
            } else if is_template(s) {
                f(s, ptr, Kind::Template, secrets);
            }
        }
        Value::Array(items) => {
            for (k, item) in items.iter().enumerate() {
                let len = ptr.len();
                ptr.push('/');
                ptr.push_str(&k.to_string());
                visit_strings(item, ptr, rel, ty, f);
                ptr.truncate(len);
            }
        }
        Value::Object(m) => {
            for (k, item) in m {
                let len = ptr.len();
                ptr.push('/');
                push_escaped(ptr, k);
                visit_strings(item, ptr, rel, ty, f);
                ptr.truncate(len);
            }
        }
        _ => {}
    }
}

/// The templates and expressions of one task, analysed ahead of the other checks.
#[derive(Default)]
struct TaskAnalysis {
    when: Option<Analysis>,
    for_each: Option<Analysis>,
    /// (pointer relative to `with`, kind, may read secrets, analysis), in document order.
    with: Vec<(String, Kind, bool, Analysis)>,
}

/// Analyses every task's templates and expressions. Independent of everything else the
/// validator does, so large documents run it on a second thread.
fn analyse_tasks(analyzer: &Analyzer, registry: &Registry, tasks: &[Value]) -> Vec<TaskAnalysis> {
    let mut ptr = String::new();
    tasks
        .iter()
        .map(|t| {
            let expr = |key: &str| match t.get(key) {
                Some(Value::String(s)) if !is_braced(s) => Some(analyzer.expression_refs(s)),
                _ => None,
            };
            let mut a = TaskAnalysis { when: expr("when"), for_each: expr("for_each"), with: Vec::new() };
            if let Some(with) = t.get("with") {
                let ty = t.get("type").and_then(Value::as_str).and_then(|n| registry.get(n));
                ptr.clear();
                visit_strings(with, &mut ptr, 0, ty, &mut |s, p, kind, secrets| {
                    let analysis = match kind {
                        Kind::Template => analyzer.template_refs(s),
                        Kind::Expression => analyzer.expression_refs(s),
                    };
                    a.with.push((p.to_string(), kind, secrets, analysis));
                });
            }
            a
        })
        .collect()
}

/// An expression written as a template: `"{{ x }}"`.
fn is_braced(s: &str) -> bool {
    let t = s.trim();
    t.starts_with("{{") && t.ends_with("}}")
}

fn typed<T: for<'de> Deserialize<'de>>(v: Option<&Value>) -> Option<T> {
    v.and_then(|v| T::deserialize(v).ok())
}

/// Like [`typed`], but when the value does not deserialize, retries without the fields the
/// schema rejected (they are reported already), so the rest is still checked.
fn typed_lenient<T: for<'de> Deserialize<'de>>(v: Option<&Value>, pointer: &str, bad: &BTreeSet<String>) -> Option<T> {
    let v = v?;
    if let Ok(t) = T::deserialize(v) {
        return Some(t);
    }
    let prefix = format!("{pointer}/");
    let mut copy = v.clone();
    let obj = copy.as_object_mut()?;
    for p in bad.range(prefix.clone()..).take_while(|p| p.starts_with(&prefix)) {
        obj.remove(p[prefix.len()..].split('/').next().unwrap_or(""));
    }
    T::deserialize(&copy).ok()
}

/// "a string", "an integer".
fn a(word: impl std::fmt::Display) -> String {
    let w = word.to_string();
    let article = if w.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    format!("{article} {w}")
}

/// First useful line of a multi-line library error (regex errors draw the pattern).
fn one_line(e: impl std::fmt::Display) -> String {
    let s = e.to_string();
    s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().trim_start_matches("error: ").to_string()
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "mapping",
    }
}

impl<'a> Run<'a> {
    /// The field path and span of a pointer (the nearest existing node if it is missing).
    fn loc(&self, pointer: &str) -> (String, Option<Span>) {
        let (span, _) = self.loaded.nearest(pointer);
        (field_path(pointer), Some(span))
    }

    /// Like [`loc`], but pointing at the key when the node is a mapping entry.
    fn loc_key(&self, pointer: &str) -> (String, Option<Span>) {
        let (span, key) = self.loaded.nearest(pointer);
        (field_path(pointer), Some(key.unwrap_or(span)))
    }

    fn push(&mut self, d: Diagnostic) {
        self.report.push(d);
    }

    /// A "did you mean" hint, within a budget of string comparisons per file: a file with
    /// thousands of misspellings among thousands of ids must still be checked in time.
    fn suggest<'c>(&mut self, word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<String> {
        if self.suggest_budget == 0 {
            return None;
        }
        let pool: Vec<&str> = candidates.into_iter().take(self.suggest_budget).collect();
        self.suggest_budget -= pool.len();
        did_you_mean(word, pool)
    }

    fn error(&mut self, code: &'static str, pointer: &str, message: impl Into<String>) -> &mut Diagnostic {
        let (path, span) = self.loc(pointer);
        self.report.push(Diagnostic::error(code, message).at(path, span));
        self.report.diagnostics.last_mut().expect("just pushed")
    }

    fn warning(&mut self, code: &'static str, pointer: &str, message: impl Into<String>) -> &mut Diagnostic {
        let (path, span) = self.loc(pointer);
        self.report.push(Diagnostic::warning(code, message).at(path, span));
        self.report.diagnostics.last_mut().expect("just pushed")
    }

    fn check_with(
        &mut self,
        analysed: impl FnOnce() -> Vec<TaskAnalysis>,
    ) -> Option<(Workflow, Dag, Vec<Reads>, Reads)> {
        if !self.json.is_object() {
            let (path, span) = self.loc("");
            self.push(
                Diagnostic::error(SCHEMA, format!("a workflow is a mapping, found {}", json_type(self.json)))
                    .at(path, span)
                    .help("start from an example in workflows/, or run `llmo schema` for the format"),
            );
            return None;
        }
        // Most documents are valid: the short-circuiting check first, and the one that
        // collects every error with its location only for a document that has some.
        let compiled = self.v.compiled.get();
        let schema_errors: Vec<_> =
            if compiled.is_valid(self.json) { Vec::new() } else { compiled.iter_errors(self.json).collect() };
        for e in &schema_errors {
            self.schema_error(e, None);
        }

        let bad: BTreeSet<String> = schema_errors.iter().map(|e| e.instance_path().as_str().to_string()).collect();
        let spec = self.json.get("spec");
        let inputs = self.inputs(spec);
        let defaults: Option<Defaults> = typed_lenient(spec.and_then(|s| s.get("defaults")), "/spec/defaults", &bad);
        // The common case, a document that matches the schema, is deserialized once; other
        // documents are read part by part so that one bad part does not hide the rest.
        let mut whole: Option<Workflow> =
            if schema_errors.is_empty() { Workflow::deserialize(self.json).ok() } else { None };
        let views = match whole.as_mut() {
            Some(w) => std::mem::take(&mut w.spec.tasks).into_iter().map(TaskView::of).collect(),
            None => self.task_views(spec, &bad),
        };
        let dag = self.graph(&views);

        self.pre = analysed();
        let input_names: Option<Vec<String>> = inputs.as_ref().map(|m| m.keys().cloned().collect());
        let declared_secrets: Vec<String> = spec
            .and_then(|s| s.get("secrets"))
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        let ctx =
            RefCtx { views: &views, dag: dag.as_ref(), inputs: input_names.as_deref(), secrets: &declared_secrets };
        let reads = if views.len() >= PARALLEL_FROM {
            // Tasks are checked independently: the second half on a second thread, with its
            // own report, merged afterwards.
            let half = views.len() / 2;
            let mut other = Run {
                v: self.v,
                loaded: self.loaded,
                json: self.json,
                report: Report::new(self.report.source.clone()),
                pre: self.pre.split_off(half.min(self.pre.len())),
                suggest_budget: self.suggest_budget / 2,
            };
            self.suggest_budget -= other.suggest_budget;
            let (ctx, inputs, defaults) = (&ctx, inputs.as_ref(), defaults.as_ref());
            let (mut first, second) = std::thread::scope(|scope| {
                let worker =
                    scope.spawn(|| other.tasks_semantics(half..views.len(), half, ctx, inputs, spec, defaults));
                let first = self.tasks_semantics(0..half, 0, ctx, inputs, spec, defaults);
                (first, worker.join().expect("task checks do not panic"))
            });
            self.report.diagnostics.append(&mut other.report.diagnostics);
            first.extend(second);
            first
        } else {
            self.tasks_semantics(0..views.len(), 0, &ctx, inputs.as_ref(), spec, defaults.as_ref())
        };
        let output_reads = self.outputs(spec, &ctx);
        self.hooks(spec, &ctx);
        self.run_key(spec, &ctx);
        self.schedule(spec, inputs.as_ref());
        self.events(spec, inputs.as_ref());
        self.budget_and_timing(spec, defaults.as_ref(), &views);
        self.secret_hosts(spec);
        self.policies(&views);

        if self.report.has_errors() {
            return None;
        }
        let workflow: Workflow = match whole {
            Some(mut w) => {
                w.spec.tasks = views.into_iter().filter_map(TaskView::into_task).collect();
                w
            }
            None => match Workflow::deserialize(self.json) {
                Ok(w) => w,
                Err(e) => {
                    // The schema and the types agree, so this is a bug; still report it plainly.
                    let (path, span) = self.loc("");
                    self.push(
                        Diagnostic::error(SCHEMA, format!("document does not match the workflow format: {e}"))
                            .at(path, span),
                    );
                    return None;
                }
            },
        };
        Some((workflow, dag?, reads, output_reads))
    }
}

/// Appends a JSON-pointer-escaped key.
fn push_escaped(ptr: &mut String, key: &str) {
    if key.contains(['~', '/']) {
        ptr.push_str(&key.replace('~', "~0").replace('/', "~1"));
    } else {
        ptr.push_str(key);
    }
}

fn with_secrets(site: Site, secrets: bool) -> Site {
    match site {
        Site::Task { idx, body, .. } => Site::Task { idx, body, secrets },
        Site::Hook { .. } => Site::Hook { secrets },
        other => other,
    }
}

fn regex_is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 64
}

/// A hint for values that must take one of several forms.
fn form_help(schema_path: &str) -> Option<&'static str> {
    if schema_path.starts_with("/$defs/OnFailure") {
        Some("use `fail`, `continue`, or `{ fallback: <task id> }`")
    } else if schema_path.starts_with("/$defs/TriggerRule") {
        Some("trigger is one of all_succeeded (default), all_done, any_succeeded, none_failed")
    } else if schema_path.starts_with("/$defs/Schedule") {
        Some("a schedule is `{ cron: \"0 6 * * ? *\" }` or `{ rate: 1h }`")
    } else {
        None
    }
}

/// A reference path, joined with dots only when a message needs it.
struct Dotted<'r>(&'r [String]);

impl std::fmt::Display for Dotted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, part) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            f.write_str(part)?;
        }
        Ok(())
    }
}

struct RefCtx<'v> {
    views: &'v [TaskView],
    dag: Option<&'v Dag>,
    inputs: Option<&'v [String]>,
    /// The names `spec.secrets` declares.
    secrets: &'v [String],
}

impl RefCtx<'_> {
    fn index_of(&self, id: &str) -> Option<usize> {
        match self.dag {
            Some(d) => d.index_of(id),
            None => self.views.iter().position(|v| v.id.as_deref() == Some(id)),
        }
    }
}

impl InputSpec {
    /// A declaration standing in for one that failed to parse: accepts anything.
    fn untyped() -> Self {
        InputSpec {
            ty: InputType::Object,
            description: None,
            required: false,
            default: None,
            enum_values: None,
            items: None,
            minimum: None,
            maximum: None,
            min_length: None,
            max_length: None,
        }
    }
}
