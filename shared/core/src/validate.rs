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

use jsonschema::error::ValidationErrorKind;
use serde::Deserialize;
use serde_json::Value;

use crate::dag::{Dag, NodeSpec};
use crate::diagnostic::{Diagnostic, Report, did_you_mean, field_path};
use crate::expr::{Analyzer, SyntaxError, is_template};
use crate::inputs::{check_value, short};
use crate::model::{
    DURATION_PATTERN, Defaults, EventTrigger, Hooks, IDENT_PATTERN, InputSpec, InputType, NAME_PATTERN, Schedule, Task,
    Workflow,
};
use crate::schedule::{check_cron, check_rate};
use crate::source::{SourceFile, Span};
use crate::tasks::{
    Check, EvaluateWith, PolicyWith, Registry, TaskType, TransformWith, glob_match, llm_models, path_covers,
};
use crate::yaml::{Limits, LoadError, LoadIssue, Loaded, load};

/// Most tasks a workflow may have.
pub const MAX_TASKS: usize = 10_000;
/// From this many tasks on, templates are analysed on a second thread.
const PARALLEL_FROM: usize = 500;

/// What a task's result exposes to templates: `tasks.<id>.<field>`.
pub const TASK_FIELDS: &[&str] = &["output", "status", "error", "usage", "attempts"];
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
    pub const FOR_EACH: &str = "WF040";
    pub const TIMING: &str = "WF041";
    pub const INPUT: &str = "WF050";
    pub const SCHEDULE: &str = "WF060";
    pub const EVENT: &str = "WF061";
    pub const BUDGET: &str = "WF062";
    pub const TASK_CONFIG: &str = "WF070";
    pub const POLICY: &str = "WF071";
}
use codes::*;

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
/// schema).
pub struct Validator {
    registry: Registry,
    schema: Value,
    compiled: jsonschema::Validator,
    analyzer: Analyzer,
    limits: Limits,
}

impl Default for Validator {
    fn default() -> Self {
        Self::new(Registry::default())
    }
}

impl Validator {
    pub fn new(registry: Registry) -> Self {
        let schema = crate::schema::workflow_schema(&registry);
        let compiled = jsonschema::options().build(&schema).expect("the generated schema compiles");
        Validator { registry, schema, compiled, analyzer: Analyzer::new(), limits: Limits::default() }
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
        let checked = if tasks.len() >= PARALLEL_FROM {
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
        LoadError::TooDeep { .. } | LoadError::TooManyNodes { .. } | LoadError::TooManyAliasNodes { .. } => {
            Diagnostic::error(LIMIT, e.to_string())
                .at("", span)
                .help("deeply nested or alias-expanded documents are refused to keep validation fast and safe")
        }
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
}

/// A task as far as it could be read: the typed task when it deserialized, else its id and
/// dependencies read straight from JSON so that graph checks still run.
struct TaskView {
    task: Option<Task>,
    id: Option<String>,
    depends_on: Vec<String>,
    fallback: Option<String>,
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
        let schema_errors: Vec<_> = self.v.compiled.iter_errors(self.json).collect();
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
            Some(w) => std::mem::take(&mut w.spec.tasks)
                .into_iter()
                .map(|t| TaskView {
                    id: Some(t.id.clone()),
                    depends_on: t.depends_on.clone(),
                    fallback: t.on_failure.as_ref().and_then(|f| f.fallback()).map(str::to_string),
                    task: Some(t),
                })
                .collect(),
            None => self.task_views(spec, &bad),
        };
        let dag = self.graph(&views);

        self.pre = analysed();
        let input_names: Option<Vec<String>> = inputs.as_ref().map(|m| m.keys().cloned().collect());
        let ctx = RefCtx { views: &views, dag: dag.as_ref(), inputs: input_names.as_deref() };
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
        self.schedule(spec, inputs.as_ref());
        self.events(spec, inputs.as_ref());
        self.budget_and_timing(spec, defaults.as_ref(), &views);
        self.policies(&views);

        if self.report.has_errors() {
            return None;
        }
        let workflow: Workflow = match whole {
            Some(mut w) => {
                w.spec.tasks = views.into_iter().filter_map(|v| v.task).collect();
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

    // ---- schema errors -------------------------------------------------------------

    fn schema_error(&mut self, e: &jsonschema::ValidationError<'_>, help: Option<&'static str>) {
        let pointer = e.instance_path().as_str().to_string();
        let schema_path = e.schema_path().as_str().to_string();
        let help = help.or_else(|| form_help(&schema_path));
        let instance = e.instance();
        match e.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                let allowed = self.allowed_properties(&schema_path);
                for name in unexpected {
                    let p = format!("{pointer}/{}", name.replace('~', "~0").replace('/', "~1"));
                    let (path, span) = self.loc_key(&p);
                    let hint = self
                        .suggest(name, allowed.iter().map(String::as_str))
                        .or_else(|| (!allowed.is_empty()).then(|| format!("allowed here: {}", allowed.join(", "))));
                    self.push(
                        Diagnostic::error(UNKNOWN_FIELD, format!("unknown field `{name}`"))
                            .at(path, span)
                            .label("not a field here")
                            .help_opt(hint),
                    );
                }
            }
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().unwrap_or("?");
                let (path, span) = self.loc_key(&pointer);
                self.push(
                    Diagnostic::error(MISSING_FIELD, format!("missing required field `{name}`"))
                        .at(path, span)
                        .label(format!("`{name}` is required here"))
                        .help_opt(help.map(str::to_string)),
                );
            }
            ValidationErrorKind::Pattern { pattern } => {
                let value = short(instance);
                let (msg, hint) = if pattern == DURATION_PATTERN {
                    (
                        format!("invalid duration `{value}`"),
                        "write a number and a unit: 500ms, 30s, 5m, 1h30m, 2d".to_string(),
                    )
                } else if pattern == IDENT_PATTERN {
                    let fixed: String =
                        value.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
                    (
                        format!("`{value}` is not a valid identifier"),
                        format!(
                            "use letters, digits and `_`, not starting with a digit (ids are read as `tasks.<id>` in templates), e.g. `{fixed}`"
                        ),
                    )
                } else if pattern == NAME_PATTERN {
                    (
                        format!("invalid workflow name `{value}`"),
                        "use lower-case letters, digits and `-` (at most 63 characters), e.g. `article-pipeline`"
                            .to_string(),
                    )
                } else {
                    (format!("`{value}` does not match the pattern `{pattern}`"), String::new())
                };
                let (path, span) = self.loc(&pointer);
                self.push(Diagnostic::error(SCHEMA, msg).at(path, span).help_opt((!hint.is_empty()).then_some(hint)));
            }
            ValidationErrorKind::Type { kind } => {
                let expected = format!("{kind:?}")
                    .replace("Single(", "")
                    .replace("Multiple(", "")
                    .replace(')', "")
                    .to_lowercase()
                    .replace("object", "mapping")
                    .replace("array", "list");
                let hint = if schema_path.starts_with("/$defs/Duration") {
                    Some("durations are strings with a unit, e.g. `60s`".to_string())
                } else {
                    help.map(str::to_string)
                };
                let (path, span) = self.loc(&pointer);
                self.push(
                    Diagnostic::error(
                        SCHEMA,
                        format!("expected {expected}, found {} `{}`", json_type(instance), short(instance)),
                    )
                    .at(path, span)
                    .help_opt(hint),
                );
            }
            ValidationErrorKind::Enum { options } => {
                let opts: Vec<String> = options.as_array().map(|a| a.iter().map(short).collect()).unwrap_or_default();
                let value = short(instance);
                let hint = self.suggest(&value, opts.iter().map(String::as_str)).or(help.map(str::to_string));
                let (path, span) = self.loc(&pointer);
                self.push(
                    Diagnostic::error(SCHEMA, format!("`{value}` is not one of: {}", opts.join(", ")))
                        .at(path, span)
                        .help_opt(hint),
                );
            }
            ValidationErrorKind::Constant { expected_value } => {
                let (path, span) = self.loc(&pointer);
                self.push(
                    Diagnostic::error(
                        SCHEMA,
                        format!("expected `{}`, found `{}`", short(expected_value), short(instance)),
                    )
                    .at(path, span)
                    .help_opt(help.map(str::to_string)),
                );
            }
            ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
                self.alternatives(e, context, help);
            }
            _ => {
                let (path, span) = self.loc(&pointer);
                self.push(Diagnostic::error(SCHEMA, e.to_string()).at(path, span).help_opt(help.map(str::to_string)));
            }
        }
    }

    /// An `anyOf`/`oneOf` failure: find the alternative the author meant and report its
    /// errors, or list the alternatives.
    fn alternatives(
        &mut self,
        e: &jsonschema::ValidationError<'_>,
        context: &[Vec<jsonschema::ValidationError<'static>>],
        help: Option<&'static str>,
    ) {
        let inst = e.instance_path().as_str();
        let tag_mismatch = |x: &jsonschema::ValidationError<'_>| {
            matches!(x.kind(), ValidationErrorKind::Constant { .. } | ValidationErrorKind::Enum { .. })
                && x.instance_path().as_str().len() > inst.len()
                && x.instance_path().as_str().starts_with(inst)
                && x.instance_path().as_str()[inst.len() + 1..].find('/').is_none()
        };
        let type_mismatch = |x: &jsonschema::ValidationError<'_>| {
            matches!(x.kind(), ValidationErrorKind::Type { .. }) && x.instance_path().as_str() == inst
        };
        // An enum written as one constant per alternative (documented enum variants).
        let consts: Vec<String> = context
            .iter()
            .filter_map(|b| {
                b.iter().find_map(|x| match x.kind() {
                    ValidationErrorKind::Constant { expected_value } if x.instance_path().as_str() == inst => {
                        Some(short(expected_value))
                    }
                    _ => None,
                })
            })
            .collect();
        if !context.is_empty() && consts.len() == context.len() {
            let value = short(e.instance());
            let hint = self.suggest(&value, consts.iter().map(String::as_str)).or(help.map(str::to_string));
            let (path, span) = self.loc(inst);
            self.push(
                Diagnostic::error(SCHEMA, format!("`{value}` is not one of: {}", consts.join(", ")))
                    .at(path, span)
                    .help_opt(hint),
            );
            return;
        }
        let viable: Vec<&Vec<_>> =
            context.iter().filter(|b| !b.iter().any(|x| tag_mismatch(x) || type_mismatch(x))).collect();
        if let Some(best) = viable.iter().min_by_key(|b| b.len()) {
            for x in best.iter() {
                self.schema_error(x, help);
            }
            return;
        }
        // No alternative fits: if they differ by a tag field (`kind`), say which tags exist.
        let mut tags: Vec<(String, String)> = Vec::new();
        for b in context {
            for x in b {
                if let ValidationErrorKind::Constant { expected_value } = x.kind()
                    && tag_mismatch(x)
                {
                    tags.push((x.instance_path().as_str().to_string(), short(expected_value)));
                }
            }
        }
        if let Some((tag_ptr, _)) = tags.first().cloned() {
            let field = tag_ptr.rsplit('/').next().unwrap_or("kind").to_string();
            let value = self.json.pointer(&tag_ptr).map(short).unwrap_or_default();
            let names: Vec<String> = tags.into_iter().map(|(_, v)| v).collect();
            let hint = self.suggest(&value, names.iter().map(String::as_str));
            let (path, span) = self.loc(&tag_ptr);
            self.push(
                Diagnostic::error(SCHEMA, format!("unknown {field} `{value}`; expected one of: {}", names.join(", ")))
                    .at(path, span)
                    .help_opt(hint),
            );
            return;
        }
        let (path, span) = self.loc(inst);
        self.push(
            Diagnostic::error(SCHEMA, format!("`{}` does not match any allowed form", short(e.instance())))
                .at(path, span)
                .help_opt(help.map(str::to_string)),
        );
    }

    /// Property names the schema allows where an `additionalProperties` error was raised.
    fn allowed_properties(&self, schema_path: &str) -> Vec<String> {
        let parent = schema_path.strip_suffix("/additionalProperties").unwrap_or(schema_path);
        self.v
            .schema
            .pointer(parent)
            .and_then(|s| s.get("properties"))
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    // ---- parts -----------------------------------------------------------------------

    fn inputs(&mut self, spec: Option<&Value>) -> Option<indexmap::IndexMap<String, InputSpec>> {
        let raw = spec.and_then(|s| s.get("inputs")).and_then(Value::as_object)?;
        let mut out = indexmap::IndexMap::new();
        for (name, v) in raw {
            let p = format!("/spec/inputs/{name}");
            if !regex_is_ident(name) {
                let (path, span) = self.loc_key(&p);
                self.push(
                    Diagnostic::error(INPUT, format!("input name `{name}` is not an identifier"))
                        .at(path, span)
                        .help("inputs are read as `inputs.<name>`: use letters, digits and `_`"),
                );
            }
            let Some(spec) = typed::<InputSpec>(Some(v)) else {
                // Reported by the schema; keep the name declared so references still resolve.
                out.insert(name.clone(), InputSpec::untyped());
                continue;
            };
            self.input_decl(&p, &spec);
            out.insert(name.clone(), spec);
        }
        Some(out)
    }

    fn input_decl(&mut self, p: &str, spec: &InputSpec) {
        if let Some(items) = &spec.items {
            if spec.ty != InputType::Array {
                self.error(
                    INPUT,
                    &format!("{p}/items"),
                    format!("`items` only applies to arrays; this input is {}", a(spec.ty)),
                );
            }
            self.input_decl(&format!("{p}/items"), items);
        }
        if let Some(values) = &spec.enum_values {
            for (i, v) in values.iter().enumerate() {
                let bare = InputSpec { enum_values: None, ..spec.clone() };
                if let Some((_, msg)) = check_value(&bare, v).into_iter().next() {
                    self.error(INPUT, &format!("{p}/enum/{i}"), format!("enum value does not fit the input: {msg}"));
                }
            }
        }
        if let Some(d) = &spec.default {
            for (sub, msg) in check_value(spec, d) {
                self.error(INPUT, &format!("{p}/default{sub}"), format!("default does not fit the input: {msg}"));
            }
            if spec.required {
                self.warning(
                    INPUT,
                    &format!("{p}/required"),
                    "an input with a default is never missing; `required` has no effect",
                );
            }
        }
        if let (Some(a), Some(b)) = (spec.minimum, spec.maximum)
            && a > b
        {
            self.error(INPUT, &format!("{p}/minimum"), format!("minimum {a} is greater than maximum {b}"));
        }
        if let (Some(a), Some(b)) = (spec.min_length, spec.max_length)
            && a > b
        {
            self.error(INPUT, &format!("{p}/min_length"), format!("min_length {a} is greater than max_length {b}"));
        }
    }

    fn task_views(&mut self, spec: Option<&Value>, bad: &BTreeSet<String>) -> Vec<TaskView> {
        let Some(raw) = spec.and_then(|s| s.get("tasks")).and_then(Value::as_array) else {
            return Vec::new();
        };
        raw.iter()
            .enumerate()
            .map(|(i, t)| {
                // A task with a bad field is still checked for everything else: drop the
                // fields the schema rejected (they are reported already) and read the rest.
                let task: Option<Task> = typed(Some(t)).or_else(|| {
                    let prefix = format!("/spec/tasks/{i}/");
                    let mut t = t.clone();
                    let obj = t.as_object_mut()?;
                    for p in bad.range(prefix.clone()..).take_while(|p| p.starts_with(&prefix)) {
                        let p = &p[prefix.len()..];
                        let key = p.split('/').next().unwrap_or("");
                        if !matches!(key, "id" | "type" | "with") {
                            obj.remove(key);
                        }
                    }
                    if bad.contains(&format!("/spec/tasks/{i}")) {
                        obj.retain(|k, _| {
                            matches!(
                                k.as_str(),
                                "id" | "type"
                                    | "description"
                                    | "depends_on"
                                    | "trigger"
                                    | "when"
                                    | "for_each"
                                    | "max_concurrency"
                                    | "with"
                                    | "retry"
                                    | "timeout"
                                    | "on_failure"
                            )
                        });
                    }
                    typed(Some(&t))
                });
                let (id, depends_on, fallback) = match &task {
                    Some(task) => (
                        Some(task.id.clone()),
                        task.depends_on.clone(),
                        task.on_failure.as_ref().and_then(|f| f.fallback()).map(str::to_string),
                    ),
                    None => (
                        t.get("id").and_then(Value::as_str).map(str::to_string),
                        t.get("depends_on")
                            .and_then(Value::as_array)
                            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
                            .unwrap_or_default(),
                        t.pointer("/on_failure/fallback").and_then(Value::as_str).map(str::to_string),
                    ),
                };
                TaskView { task, id, depends_on, fallback }
            })
            .collect()
    }

    /// Ids, types, dependencies, fallbacks and cycles; returns the DAG when it is acyclic.
    fn graph(&mut self, views: &[TaskView]) -> Option<Dag> {
        let mut first: HashMap<&str, usize> = HashMap::new();
        for (i, v) in views.iter().enumerate() {
            let Some(id) = v.id.as_deref() else { continue };
            if let Some(&j) = first.get(id) {
                let (path, span) = self.loc(&format!("/spec/tasks/{i}/id"));
                let (_, first_span) = self.loc(&format!("/spec/tasks/{j}/id"));
                let mut d = Diagnostic::error(DUPLICATE_ID, format!("duplicate task id `{id}`"))
                    .at(path, span)
                    .label("used again here")
                    .help("task ids must be unique within a workflow");
                if let Some(s) = first_span {
                    d = d.related(s, "first used here");
                }
                self.push(d);
            } else {
                first.insert(id, i);
            }
        }
        let ids: Vec<&str> = first.keys().copied().collect();
        let types: Vec<&str> = self.v.registry.names().collect();
        for (i, v) in views.iter().enumerate() {
            if let Some(t) = &v.task
                && self.v.registry.get(&t.ty).is_none()
            {
                let hint = self
                    .suggest(&t.ty, types.iter().copied())
                    .unwrap_or_else(|| format!("known types: {}", types.join(", ")));
                self.error(UNKNOWN_TYPE, &format!("/spec/tasks/{i}/type"), format!("unknown task type `{}`", t.ty))
                    .help = Some(hint);
            }
            let mut seen = BTreeSet::new();
            for (k, d) in v.depends_on.iter().enumerate() {
                let p = format!("/spec/tasks/{i}/depends_on/{k}");
                if !first.contains_key(d.as_str()) {
                    let hint = self.suggest(d, ids.iter().copied());
                    self.error(UNKNOWN_DEPENDENCY, &p, format!("unknown task `{d}` in depends_on")).help = hint;
                } else if !seen.insert(d.as_str()) {
                    self.warning(DUPLICATE_DEPENDENCY, &p, format!("`{d}` is listed twice in depends_on"));
                }
            }
        }
        // Fallbacks.
        let mut fallback_of: HashMap<&str, usize> = HashMap::new();
        for (i, v) in views.iter().enumerate() {
            let Some(f) = v.fallback.as_deref() else { continue };
            let p = format!("/spec/tasks/{i}/on_failure/fallback");
            let me = v.id.as_deref().unwrap_or("?");
            let Some(&fi) = first.get(f) else {
                let hint = self.suggest(f, ids.iter().copied());
                self.error(UNKNOWN_DEPENDENCY, &p, format!("unknown fallback task `{f}`")).help = hint;
                continue;
            };
            if f == me {
                self.error(FALLBACK, &p, "a task cannot be its own fallback");
                continue;
            }
            if let Some(&other) = fallback_of.get(f) {
                let other_id = views[other].id.as_deref().unwrap_or("?");
                self.error(
                    FALLBACK,
                    &p,
                    format!("`{f}` is already the fallback of `{other_id}`; a fallback serves one task"),
                );
                continue;
            }
            fallback_of.insert(f, i);
            if views[fi].fallback.is_some() {
                self.error(FALLBACK, &p, format!("`{f}` has a fallback of its own; fallbacks do not chain")).help =
                    Some("give the fallback task `on_failure: continue` or `fail`".into());
            }
            for (j, other) in views.iter().enumerate() {
                if other.depends_on.iter().any(|d| d == f) {
                    let k = other.depends_on.iter().position(|d| d == f).unwrap_or(0);
                    let other_id = other.id.as_deref().unwrap_or("?");
                    self.error(
                        FALLBACK,
                        &format!("/spec/tasks/{j}/depends_on/{k}"),
                        format!("`{other_id}` depends on `{f}`, which is the fallback of `{me}`"),
                    )
                    .help =
                        Some(format!("depend on `{me}` instead: its result is the fallback's when the fallback ran"));
                }
            }
        }
        let nodes: Vec<NodeSpec<'_>> = views
            .iter()
            .enumerate()
            .map(|(i, v)| NodeSpec {
                // Broken or duplicate ids get a unique placeholder so indexes stay aligned.
                id: match v.id.as_deref() {
                    Some(id) if first.get(id) == Some(&i) => id,
                    _ => "",
                },
                depends_on: v.depends_on.iter().map(String::as_str).collect(),
                // A self-fallback is reported above; it is not a cycle too.
                fallback: v.fallback.as_deref().filter(|f| Some(*f) != v.id.as_deref()),
            })
            .collect();
        match Dag::build(&nodes) {
            Ok(dag) => Some(dag),
            Err(cycles) => {
                for c in cycles {
                    let names: Vec<&str> = c.iter().map(|&i| nodes[i].id).collect();
                    let mut text = names.join(" -> ");
                    text.push_str(" -> ");
                    text.push_str(names[0]);
                    let a = c[0];
                    let next = names.get(1).copied().unwrap_or(names[0]);
                    let k = views[a].depends_on.iter().position(|d| d == next);
                    let p = match k {
                        Some(k) => format!("/spec/tasks/{a}/depends_on/{k}"),
                        None => format!("/spec/tasks/{a}/on_failure"),
                    };
                    self.error(CYCLE, &p, format!("dependency cycle: {text}")).help =
                        Some("each task depends on the next; remove one of these dependencies".into());
                }
                None
            }
        }
    }

    // ---- per-task semantics ------------------------------------------------------------

    /// Checks tasks `range`; `self.pre` holds their analyses from index `pre_base` on.
    fn tasks_semantics(
        &mut self,
        range: std::ops::Range<usize>,
        pre_base: usize,
        ctx: &RefCtx<'_>,
        inputs: Option<&indexmap::IndexMap<String, InputSpec>>,
        spec: Option<&Value>,
        defaults: Option<&Defaults>,
    ) -> Vec<Reads> {
        range
            .map(|i| match &ctx.views[i].task {
                Some(task) => self.task_semantics(i, i - pre_base, task, ctx, inputs, spec, defaults),
                None => Reads::default(),
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn task_semantics(
        &mut self,
        i: usize,
        pre_index: usize,
        task: &Task,
        ctx: &RefCtx<'_>,
        inputs: Option<&indexmap::IndexMap<String, InputSpec>>,
        spec: Option<&Value>,
        defaults: Option<&Defaults>,
    ) -> Reads {
        let base = format!("/spec/tasks/{i}");
        let mut reads = Reads::default();
        let body = Site::Task { idx: i, body: true, secrets: false };
        let head = Site::Task { idx: i, body: false, secrets: false };
        let pre = self.pre.get_mut(pre_index).map(std::mem::take);
        let (pre_when, pre_for_each, pre_with) = match pre {
            Some(p) => (p.when, p.for_each, Some(p.with)),
            None => (None, None, None),
        };
        if let Some(w) = &task.when {
            self.expression_analysed(w, pre_when, &format!("{base}/when"), head, ctx, &mut reads);
        }
        if let Some(fe) = &task.for_each {
            let refs = self.expression_analysed(fe, pre_for_each, &format!("{base}/for_each"), head, ctx, &mut reads);
            for r in refs {
                if r.len() >= 2
                    && r[0] == "inputs"
                    && let Some(decl) = inputs.and_then(|m| m.get(&r[1]))
                    && r.len() == 2
                    && decl.ty != InputType::Array
                    && decl.ty != InputType::Object
                {
                    self.error(
                        FOR_EACH,
                        &format!("{base}/for_each"),
                        format!("`for_each` needs a list, but input `{}` is {}", r[1], a(decl.ty)),
                    )
                    .help = Some(format!("declare `{}` with `type: array`", r[1]));
                }
            }
            if let (Some(mc), Some(mp)) = (
                task.max_concurrency,
                spec.and_then(|s| s.pointer("/concurrency/max_parallel")).and_then(Value::as_u64),
            ) && u64::from(mc) > mp
            {
                self.warning(
                    FOR_EACH,
                    &format!("{base}/max_concurrency"),
                    format!("max_concurrency {mc} exceeds the run's max_parallel {mp}; at most {mp} items run at once"),
                );
            }
        } else if task.max_concurrency.is_some() {
            self.error(
                FOR_EACH,
                &format!("{base}/max_concurrency"),
                "`max_concurrency` only applies to a task with `for_each`",
            )
            .help = Some("remove it, or add `for_each: <list expression>`".into());
        }
        let v = self.v;
        let ty = v.registry.get(&task.ty);
        let with = self.json["spec"]["tasks"][i].get("with");
        match (with, pre_with) {
            (Some(_), Some(found)) => {
                for (rel, kind, secrets, analysis) in found {
                    let p = format!("{base}/with{rel}");
                    let site = with_secrets(body, secrets);
                    match kind {
                        Kind::Template => self.template_analysed(analysis, &p, site, ctx, &mut reads),
                        Kind::Expression => {
                            let src = self.json.pointer(&p).and_then(Value::as_str).unwrap_or_default();
                            self.expression_analysed(src, Some(analysis), &p, site, ctx, &mut reads)
                        }
                    };
                }
            }
            (Some(with), None) => {
                self.walk_with(with, &mut format!("{base}/with"), base.len() + 5, ty, body, ctx, &mut reads);
            }
            (None, _) => {}
        }
        if let Some(ty) = ty {
            self.type_rules(&base, ty, with);
        }
        // Timing.
        if let Some(t) = task.timeout
            && t.0.is_zero()
        {
            self.error(TIMING, &format!("{base}/timeout"), "timeout must be greater than zero");
        }
        let retry = crate::model::EffectiveRetry::default()
            .overlay(defaults.and_then(|d| d.retry.as_ref()))
            .overlay(task.retry.as_ref());
        if retry.initial > retry.max && task.retry.as_ref().and_then(|r| r.backoff.as_ref()).is_some() {
            self.error(TIMING, &format!("{base}/retry/backoff"), "backoff `initial` is longer than `max`");
        }
        reads
    }

    /// Checks the templates and expressions of a `with` block (or any templated value).
    #[allow(clippy::too_many_arguments)]
    fn walk_with(
        &mut self,
        v: &Value,
        ptr: &mut String,
        rel: usize,
        ty: Option<&TaskType>,
        site: Site,
        ctx: &RefCtx<'_>,
        reads: &mut Reads,
    ) {
        let mut found = Vec::new();
        visit_strings(v, ptr, rel, ty, &mut |src, p, kind, secrets| found.push((src, p.to_string(), kind, secrets)));
        for (src, p, kind, secrets) in found {
            let site = with_secrets(site, secrets);
            match kind {
                Kind::Expression => self.expression(src, &p, site, ctx, reads),
                Kind::Template => self.template(src, &p, site, ctx, reads),
            };
        }
    }

    fn template(&mut self, src: &str, ptr: &str, site: Site, ctx: &RefCtx<'_>, reads: &mut Reads) -> Vec<Vec<String>> {
        let analysed = self.v.analyzer.template_refs(src);
        self.template_analysed(analysed, ptr, site, ctx, reads)
    }

    fn template_analysed(
        &mut self,
        analysed: Analysis,
        ptr: &str,
        site: Site,
        ctx: &RefCtx<'_>,
        reads: &mut Reads,
    ) -> Vec<Vec<String>> {
        match analysed {
            Ok(refs) => {
                self.references(&refs, ptr, site, ctx, reads);
                refs
            }
            Err(e) => {
                self.syntax(ptr, &e, "template");
                Vec::new()
            }
        }
    }

    fn expression(
        &mut self,
        src: &str,
        ptr: &str,
        site: Site,
        ctx: &RefCtx<'_>,
        reads: &mut Reads,
    ) -> Vec<Vec<String>> {
        self.expression_analysed(src, None, ptr, site, ctx, reads)
    }

    fn expression_analysed(
        &mut self,
        src: &str,
        pre: Option<Analysis>,
        ptr: &str,
        site: Site,
        ctx: &RefCtx<'_>,
        reads: &mut Reads,
    ) -> Vec<Vec<String>> {
        let trimmed = src.trim();
        if trimmed.starts_with("{{") && trimmed.ends_with("}}") {
            let inner = trimmed[2..trimmed.len() - 2].trim().to_string();
            self.error(EXPRESSION_BRACES, ptr, "this field is an expression, not a template").help =
                Some(format!("write it without braces: `{inner}`"));
            return Vec::new();
        }
        let analysed = pre.unwrap_or_else(|| self.v.analyzer.expression_refs(src));
        match analysed {
            Ok(refs) => {
                self.references(&refs, ptr, site, ctx, reads);
                refs
            }
            Err(e) => {
                self.syntax(ptr, &e, "expression");
                Vec::new()
            }
        }
    }

    fn syntax(&mut self, ptr: &str, e: &SyntaxError, what: &str) {
        let at = match e.line {
            Some(l) if l > 1 => format!(" (line {l} of the {what})"),
            _ => String::new(),
        };
        self.error(TEMPLATE_SYNTAX, ptr, format!("{what} syntax error{at}: {}", e.message));
    }

    /// Checks what a template or expression reads against what its site may read.
    fn references(&mut self, refs: &[Vec<String>], ptr: &str, site: Site, ctx: &RefCtx<'_>, reads: &mut Reads) {
        for r in refs {
            let root = r[0].as_str();
            let dotted = Dotted(r);
            match root {
                "inputs" if !matches!(site, Site::Event) => {
                    if let Some(name) = r.get(1) {
                        if let Some(decl) = ctx.inputs
                            && !decl.iter().any(|d| d == name)
                        {
                            let hint = self
                                .suggest(name, decl.iter().map(String::as_str))
                                .unwrap_or_else(|| "declare it under `spec.inputs`".to_string());
                            self.error(
                                UNKNOWN_REFERENCE,
                                ptr,
                                format!("`{dotted}` reads an undeclared input `{name}`"),
                            )
                            .help = Some(hint);
                        } else if ctx.inputs.is_none() {
                            self.error(
                                UNKNOWN_REFERENCE,
                                ptr,
                                format!("`{dotted}` reads input `{name}`, but the workflow declares no inputs"),
                            )
                            .help = Some("declare it under `spec.inputs`".into());
                        }
                        reads.inputs.insert(name.clone());
                    }
                }
                "tasks" if !matches!(site, Site::Event) => {
                    let Some(id) = r.get(1) else {
                        reads.all_tasks = true;
                        if let Site::Task { .. } = site {
                            self.error(
                                UNKNOWN_REFERENCE,
                                ptr,
                                "`tasks` is read dynamically; references cannot be checked",
                            )
                            .help = Some("name the task: `tasks.<id>.output`".into());
                        }
                        continue;
                    };
                    let Some(j) = ctx.index_of(id) else {
                        let hint = self.suggest(id, ctx.views.iter().filter_map(|v| v.id.as_deref()));
                        self.error(UNKNOWN_REFERENCE, ptr, format!("`{dotted}` reads unknown task `{id}`")).help = hint;
                        continue;
                    };
                    if let Some(field) = r.get(2)
                        && !TASK_FIELDS.contains(&field.as_str())
                    {
                        let hint = self
                            .suggest(field, TASK_FIELDS.iter().copied())
                            .unwrap_or_else(|| format!("a task result has: {}", TASK_FIELDS.join(", ")));
                        self.error(
                            UNKNOWN_REFERENCE,
                            ptr,
                            format!("`{dotted}`: a task result has no field `{field}`"),
                        )
                        .help = Some(hint);
                    }
                    if let Site::Task { idx, .. } = site {
                        let me = ctx.views[idx].id.as_deref().unwrap_or("?");
                        if j == idx {
                            self.error(NOT_ANCESTOR, ptr, format!("task `{me}` reads its own result (`{dotted}`)"));
                        } else if let Some(dag) = ctx.dag
                            && !dag.is_ancestor(j, idx)
                        {
                            self.error(
                                NOT_ANCESTOR,
                                ptr,
                                format!("task `{me}` reads `{dotted}` but does not depend on `{id}`"),
                            )
                            .help = Some(format!(
                                "add `{id}` to the depends_on of `{me}` (directly or through another task) so it has run first"
                            ));
                        }
                    }
                    reads.tasks.insert(id.clone());
                }
                "run" if !matches!(site, Site::Event) => {
                    if let Some(field) = r.get(1) {
                        let ended = matches!(site, Site::Hook { .. } | Site::Output);
                        let known =
                            RUN_FIELDS.contains(&field.as_str()) || (ended && RUN_END_FIELDS.contains(&field.as_str()));
                        if !known {
                            let all: Vec<&str> =
                                RUN_FIELDS.iter().chain(if ended { RUN_END_FIELDS } else { &[] }).copied().collect();
                            let hint = if RUN_END_FIELDS.contains(&field.as_str()) {
                                Some(format!(
                                    "`run.{field}` is only known once the run has ended: read it in `outputs` or `on` hooks"
                                ))
                            } else {
                                self.suggest(field, all.iter().copied())
                                    .or_else(|| Some(format!("`run` has: {}", all.join(", "))))
                            };
                            self.error(UNKNOWN_REFERENCE, ptr, format!("`{dotted}`: `run` has no field `{field}`"))
                                .help = hint;
                        }
                        reads.run.insert(field.clone());
                    }
                }
                "item" | "item_index" => match site {
                    Site::Task { idx, body: true, .. }
                        if ctx.views[idx].task.as_ref().is_some_and(|t| t.for_each.is_some()) =>
                    {
                        reads.item = true;
                    }
                    Site::Task { body: false, idx, .. }
                        if ctx.views[idx].task.as_ref().is_some_and(|t| t.for_each.is_some()) =>
                    {
                        self.error(
                            ITEM_OUTSIDE_FOR_EACH,
                            ptr,
                            format!("`{root}` is not defined in `when` or `for_each`"),
                        )
                        .help = Some("`when` and `for_each` are evaluated once, before the fan-out".into());
                    }
                    _ => {
                        self.error(
                            ITEM_OUTSIDE_FOR_EACH,
                            ptr,
                            format!("`{root}` is only defined inside a task with `for_each`"),
                        )
                        .help = Some(
                            "add `for_each: <list expression>` to this task, or read the value another way".into(),
                        );
                    }
                },
                "secrets" => match site {
                    Site::Task { secrets: true, .. } | Site::Hook { secrets: true } => {
                        if let Some(name) = r.get(1) {
                            reads.secrets.insert(name.clone());
                        }
                    }
                    _ => {
                        self.error(SECRET_PLACE, ptr, "secrets may only be read in http `headers`").help =
                            Some("secrets must not reach prompts, bodies or outputs, where they would be stored or sent to a model".into());
                    }
                },
                "event" if matches!(site, Site::Event) => {}
                _ => {
                    let roots: &[&str] = match site {
                        Site::Event => &["event"],
                        _ => &["inputs", "tasks", "run", "item", "item_index"],
                    };
                    let hint = self
                        .suggest(root, roots.iter().copied())
                        .unwrap_or_else(|| format!("templates here can read: {}", roots.join(", ")));
                    self.error(UNKNOWN_REFERENCE, ptr, format!("unknown variable `{root}`")).help = Some(hint);
                }
            }
        }
    }

    /// Rules of the built-in task types that a schema cannot say.
    fn type_rules(&mut self, base: &str, ty: &TaskType, with: Option<&Value>) {
        let w = format!("{base}/with");
        match ty.name.as_str() {
            "llm" => {
                // Read straight from JSON: this runs for every llm task, and the schema has
                // already checked the types.
                let Some(with) = with.and_then(Value::as_object) else { return };
                match (with.get("prompt"), with.get("messages")) {
                    (None, None) => {
                        self.error(TASK_CONFIG, &w, "an llm task needs `prompt` or `messages`");
                    }
                    (Some(_), Some(_)) => {
                        self.error(TASK_CONFIG, &format!("{w}/messages"), "set `prompt` or `messages`, not both");
                    }
                    _ => {}
                }
                if let Some(schema) = with.get("output_schema") {
                    if let Err(e) = jsonschema::meta::validate(schema) {
                        self.error(
                            TASK_CONFIG,
                            &format!("{w}/output_schema"),
                            format!("`output_schema` is not a valid JSON Schema: {}", one_line(e)),
                        );
                    }
                    if with.get("response_format").and_then(Value::as_str) == Some("text") {
                        self.error(
                            TASK_CONFIG,
                            &format!("{w}/response_format"),
                            "`output_schema` needs `response_format: json`",
                        );
                    }
                }
                let fallbacks = with.get("fallback_models").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
                for (k, m) in fallbacks.iter().enumerate() {
                    let Some(m) = m.as_str() else { continue };
                    if m.trim().is_empty() || m.split('/').count() > 2 || m.starts_with('/') || m.ends_with('/') {
                        self.error(
                            TASK_CONFIG,
                            &format!("{w}/fallback_models/{k}"),
                            format!("`{m}` is not `model` or `provider/model`"),
                        );
                    }
                }
            }
            "transform" => {
                let Some(t) = typed::<TransformWith>(with) else { return };
                if t.output.is_some() == t.expression.is_some() {
                    self.error(TASK_CONFIG, &w, "a transform task needs exactly one of `output` and `expression`");
                }
            }
            "evaluate" => {
                let Some(ev) = typed::<EvaluateWith>(with) else { return };
                for (k, c) in ev.checks.iter().enumerate() {
                    let p = format!("{w}/checks/{k}");
                    match c {
                        Check::Regex { pattern } => {
                            if let Err(e) = regex::Regex::new(pattern) {
                                self.error(
                                    TASK_CONFIG,
                                    &format!("{p}/pattern"),
                                    format!("invalid regular expression: {}", one_line(e)),
                                );
                            }
                        }
                        Check::JsonSchema { schema } => {
                            if let Err(e) = jsonschema::meta::validate(schema) {
                                self.error(
                                    TASK_CONFIG,
                                    &format!("{p}/schema"),
                                    format!("not a valid JSON Schema: {e}"),
                                );
                            }
                        }
                        Check::Range { min, max } => {
                            if min.is_none() && max.is_none() {
                                self.error(TASK_CONFIG, &p, "a range check needs `min`, `max` or both");
                            }
                            if let (Some(a), Some(b)) = (min, max)
                                && a > b
                            {
                                self.error(
                                    TASK_CONFIG,
                                    &format!("{p}/min"),
                                    format!("min {a} is greater than max {b}"),
                                );
                            }
                        }
                        _ => {}
                    }
                }
            }
            "policy" => {
                let Some(pw) = typed::<PolicyWith>(with) else { return };
                for (k, pat) in pw.deny_patterns.iter().enumerate() {
                    if let Err(e) = regex::Regex::new(pat) {
                        self.error(
                            POLICY,
                            &format!("{w}/deny_patterns/{k}"),
                            format!("invalid regular expression: {}", one_line(e)),
                        );
                    }
                }
            }
            _ => {}
        }
    }

    /// Model allow/deny lists of policy tasks, checked against every llm task now rather
    /// than at run time.
    fn policies(&mut self, views: &[TaskView]) {
        if !views.iter().any(|v| v.task.as_ref().is_some_and(|t| t.ty == "policy")) {
            return;
        }
        let mut models: Vec<(usize, String, String)> = Vec::new();
        for (i, v) in views.iter().enumerate() {
            let Some(t) = &v.task else { continue };
            if t.ty == "llm" {
                for (rel, model) in llm_models(&t.with) {
                    models.push((i, format!("/spec/tasks/{i}/with{rel}"), model));
                }
            }
        }
        for (pi, v) in views.iter().enumerate() {
            let Some(t) = &v.task else { continue };
            if t.ty != "policy" {
                continue;
            }
            let Some(pw) = typed::<PolicyWith>(self.json["spec"]["tasks"][pi].get("with")) else { continue };
            let policy_id = t.id.clone();
            for (ti, ptr, model) in &models {
                let bare = model.rsplit('/').next().unwrap_or(model);
                let matches = |g: &String| glob_match(g, model) || glob_match(g, bare);
                let task_id = views[*ti].id.clone().unwrap_or_default();
                if let Some(g) = pw.deny_models.iter().find(|g| matches(g)) {
                    self.error(
                        POLICY,
                        ptr,
                        format!("model `{model}` of task `{task_id}` is denied by policy `{policy_id}` (`{g}`)"),
                    );
                } else if !pw.allow_models.is_empty() && !pw.allow_models.iter().any(matches) {
                    self.error(
                        POLICY,
                        ptr,
                        format!("model `{model}` of task `{task_id}` is not in the allow list of policy `{policy_id}`"),
                    )
                    .help = Some(format!("allowed: {}", pw.allow_models.join(", ")));
                }
            }
        }
    }

    // ---- spec-level parts ------------------------------------------------------------------

    fn outputs(&mut self, spec: Option<&Value>, ctx: &RefCtx<'_>) -> Reads {
        let mut reads = Reads::default();
        let Some(outputs) = spec.and_then(|s| s.get("outputs")).and_then(Value::as_object) else { return reads };
        for (name, v) in outputs {
            let mut p = format!("/spec/outputs/{}", name.replace('~', "~0").replace('/', "~1"));
            let rel = p.len();
            self.walk_with(v, &mut p, rel, None, Site::Output, ctx, &mut reads);
        }
        reads
    }

    fn hooks(&mut self, spec: Option<&Value>, ctx: &RefCtx<'_>) {
        let Some(hooks) = typed::<Hooks>(spec.and_then(|s| s.get("on"))) else { return };
        let types: Vec<&str> = self.v.registry.names().collect();
        for (kind, list) in [("success", &hooks.success), ("failure", &hooks.failure)] {
            for (i, h) in list.iter().enumerate() {
                let base = format!("/spec/on/{kind}/{i}");
                let v = self.v;
                let ty = v.registry.get(&h.ty);
                if ty.is_none() {
                    let hint = self.suggest(&h.ty, types.iter().copied());
                    self.error(UNKNOWN_TYPE, &format!("{base}/type"), format!("unknown task type `{}`", h.ty)).help =
                        hint;
                }
                let mut reads = Reads::default();
                if let Some(with) = self.json.pointer(&format!("{base}/with")) {
                    let mut p = format!("{base}/with");
                    let rel = p.len();
                    self.walk_with(with, &mut p, rel, ty, Site::Hook { secrets: false }, ctx, &mut reads);
                }
                if let Some(ty) = ty {
                    self.type_rules(&base, ty, self.json.pointer(&format!("{base}/with")));
                }
            }
        }
    }

    fn schedule(&mut self, spec: Option<&Value>, inputs: Option<&indexmap::IndexMap<String, InputSpec>>) {
        let Some(s) = typed::<Schedule>(spec.and_then(|s| s.get("schedule"))) else { return };
        let p = "/spec/schedule";
        match (&s.cron, &s.rate) {
            (Some(_), Some(_)) => {
                self.error(SCHEDULE, p, "set `cron` or `rate`, not both");
            }
            (None, None) => {
                self.error(SCHEDULE, p, "a schedule needs `cron` or `rate`").help =
                    Some("e.g. `cron: \"0 6 * * ? *\"` (06:00 UTC daily) or `rate: 1h`".into());
            }
            (Some(c), None) => {
                if let Err(e) = check_cron(c) {
                    self.error(SCHEDULE, &format!("{p}/cron"), format!("invalid cron expression: {e}")).help =
                        Some("EventBridge cron has 6 fields: minutes hours day-of-month month day-of-week year, e.g. `0 6 * * ? *`".into());
                }
            }
            (None, Some(r)) => {
                if let Err(e) = check_rate(r.0) {
                    self.error(SCHEDULE, &format!("{p}/rate"), format!("invalid rate: {e}"));
                }
            }
        }
        if let Some(tz) = &s.timezone
            && !(tz == "UTC"
                || tz.split('/').count() >= 2
                    && tz.split('/').all(|part| {
                        !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || "_+-".contains(c))
                    }))
        {
            self.error(SCHEDULE, &format!("{p}/timezone"), format!("`{tz}` is not an IANA time zone name")).help =
                Some("e.g. `UTC`, `Europe/Paris`, `America/New_York`".into());
        }
        if let Some(decl) = inputs {
            let given: serde_json::Map<String, Value> = s.inputs.clone().into_iter().collect();
            if let Err(errs) = crate::inputs::resolve_inputs(decl, &given) {
                for e in errs {
                    let ptr = if given.contains_key(&e.input) {
                        format!("{p}/inputs/{}{}", e.input, e.path)
                    } else {
                        format!("{p}/inputs")
                    };
                    self.error(INPUT, &ptr, format!("scheduled runs: {}", e.message));
                }
            }
        } else if !s.inputs.is_empty() {
            self.error(INPUT, &format!("{p}/inputs"), "the schedule passes inputs, but the workflow declares none");
        }
    }

    fn events(&mut self, spec: Option<&Value>, inputs: Option<&indexmap::IndexMap<String, InputSpec>>) {
        let Some(raw) = spec.and_then(|s| s.get("events")).and_then(Value::as_array) else { return };
        let mut names = BTreeSet::new();
        let empty = RefCtx { views: &[], dag: None, inputs: None };
        for (i, ev) in raw.iter().enumerate() {
            let Some(ev) = typed::<EventTrigger>(Some(ev)) else { continue };
            let base = format!("/spec/events/{i}");
            if !names.insert(ev.name.clone()) {
                self.error(EVENT, &format!("{base}/name"), format!("duplicate event trigger name `{}`", ev.name));
            }
            if ev.pattern.is_empty() {
                self.error(EVENT, &format!("{base}/pattern"), "an empty pattern would match every event on the bus");
            }
            self.event_pattern(&Value::Object(ev.pattern.clone()), &mut format!("{base}/pattern"));
            let decl = inputs.cloned().unwrap_or_default();
            for (name, tmpl) in &ev.inputs {
                let p = format!("{base}/inputs/{name}");
                if !decl.contains_key(name) {
                    let hint = self.suggest(name, decl.keys().map(String::as_str));
                    let (path, span) = self.loc_key(&p);
                    self.push(
                        Diagnostic::error(INPUT, format!("event trigger sets undeclared input `{name}`"))
                            .at(path, span)
                            .help_opt(hint),
                    );
                }
                let mut reads = Reads::default();
                self.template(tmpl, &p, Site::Event, &empty, &mut reads);
            }
            for (name, d) in &decl {
                if d.required && d.default.is_none() && !ev.inputs.contains_key(name) {
                    let (path, span) = self.loc_key(&base);
                    self.push(
                        Diagnostic::error(
                            INPUT,
                            format!("event trigger `{}` does not set required input `{name}`", ev.name),
                        )
                        .at(path, span)
                        .help(format!("add `{name}: \"{{{{ event.detail... }}}}\"` under `inputs`")),
                    );
                }
            }
        }
    }

    /// EventBridge patterns: every leaf is a list of match values.
    fn event_pattern(&mut self, v: &Value, ptr: &mut String) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    let len = ptr.len();
                    ptr.push('/');
                    ptr.push_str(&k.replace('~', "~0").replace('/', "~1"));
                    match child {
                        Value::Object(_) => self.event_pattern(child, ptr),
                        Value::Array(_) => {}
                        other => {
                            let p = ptr.clone();
                            self.error(
                                EVENT,
                                &p,
                                format!("pattern values must be lists, found {} `{}`", json_type(other), short(other)),
                            )
                            .help = Some(format!("write `[{}]`", short(other)));
                        }
                    }
                    ptr.truncate(len);
                }
            }
            _ => {
                let p = ptr.clone();
                self.error(EVENT, &p, "an event pattern is a mapping");
            }
        }
    }

    fn budget_and_timing(&mut self, spec: Option<&Value>, defaults: Option<&Defaults>, views: &[TaskView]) {
        if let Some(b) = typed::<crate::model::Budget>(spec.and_then(|s| s.get("budget"))) {
            if b.max_cost_usd.is_some_and(|c| c <= 0.0) {
                self.error(BUDGET, "/spec/budget/max_cost_usd", "max_cost_usd must be greater than zero").help =
                    Some("remove `budget` for no limit".into());
            }
            if b.max_cost_usd.is_none() && b.max_tokens.is_none() {
                self.warning(BUDGET, "/spec/budget", "an empty budget sets no limit");
            }
        }
        if let Some(d) = defaults {
            if d.timeout.is_some_and(|t| t.0.is_zero()) {
                self.error(TIMING, "/spec/defaults/timeout", "timeout must be greater than zero");
            }
            let r = crate::model::EffectiveRetry::default().overlay(d.retry.as_ref());
            if r.initial > r.max {
                self.error(TIMING, "/spec/defaults/retry/backoff", "backoff `initial` is longer than `max`");
            }
        }
        let run_timeout = typed::<crate::model::Duration>(spec.and_then(|s| s.get("timeout")));
        if let Some(rt) = run_timeout {
            if rt.0.is_zero() {
                self.error(TIMING, "/spec/timeout", "timeout must be greater than zero");
            }
            for (i, v) in views.iter().enumerate() {
                if let Some(t) = v.task.as_ref().and_then(|t| t.timeout)
                    && t > rt
                {
                    self.warning(
                        TIMING,
                        &format!("/spec/tasks/{i}/timeout"),
                        format!("task timeout {t} is longer than the run timeout {rt}"),
                    );
                }
            }
        }
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
