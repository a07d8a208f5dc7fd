//! `type: workflow`: child runs ([`llmo_core::child`] holds the pure part).
//!
//! - [`Children`] is the workers' executor (the serverless `step` function, `llmo serve`): it
//!   starts the child in the parent's store and queue and *detaches* ([`Executor::detach`]):
//!   nothing is stored for the attempt and no compute waits; the child's end sends the
//!   parent's `AttemptFinished` (the worker does, when it carries out the child's `Finished`).
//! - [`InlineChildren`] is the embedded runtime's: the child runs in the same process and store
//!   under its own driver, and the attempt's result is the child's end.
//!
//! Either way the child's id is derived from the parent's attempt
//! ([`llmo_core::child::child_run_id`]) and stored once under that key, so a redelivered or
//! resumed attempt finds its child instead of making a second one, and a retry (a new attempt)
//! makes a new one. The child lives in the parent's tenant, one level deeper (at most
//! [`llmo_core::child::MAX_DEPTH`]), its budget capped by what the parent's attempt holds and
//! its lifetime by the task's `timeout`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use llmo_core::child::{MAX_DEPTH, Parent, WorkflowRef, WorkflowWith, child_run_id};
use llmo_core::engine::builtin::TaskError;
use llmo_core::engine::{AttemptResult, Event, RunState};
use llmo_core::model::Budget;

use crate::executor::{Attempt, Executor, failed};
use crate::queue::{Message, Queue};
use crate::start::{IdempotencyKey, KeySpace, Prepared, StartError, StartRequest, Starter};
use crate::store::RunStore;
use crate::workflows::Workflows;

/// The parsed `with` of a `workflow` attempt.
fn with_of(a: &Attempt) -> Result<(WorkflowWith, WorkflowRef), TaskError> {
    let with: WorkflowWith = serde_json::from_value(a.with.clone())
        .map_err(|e| TaskError::fatal(format!("`workflow` task `{}`: {e}", a.task_id)))?;
    let r = WorkflowRef::parse(&with.workflow).map_err(TaskError::fatal)?;
    Ok((with, r))
}

/// Prepares attempt `a`'s child of workflow `source`: its id, inputs, tenant, parent, depth,
/// budget cap and lifetime.
fn prepare(
    starter: &Starter,
    a: &Attempt,
    with: &WorkflowWith,
    name: &str,
    source: &str,
) -> Result<Prepared, TaskError> {
    if a.depth >= MAX_DEPTH {
        return Err(TaskError::fatal(format!(
            "`{}` would start a child run {} levels deep; runs nest at most {MAX_DEPTH} deep",
            a.task_id,
            a.depth + 1
        )));
    }
    let Some(task) = a.task else {
        return Err(TaskError::fatal("a hook cannot start a child run"));
    };
    let run_id = child_run_id(&a.run_id, &a.task_id, a.item, a.attempt);
    let req = StartRequest {
        tenant: a.tenant.as_deref().map(str::to_string),
        inputs: with.inputs.clone().unwrap_or_default(),
        key: Some(IdempotencyKey::system(KeySpace::Child, &run_id)),
    };
    let refused = |e: StartError| TaskError::fatal(format!("child workflow `{name}`: {}", start_error(e)));
    let checked = starter.check(name, source).map_err(refused)?;
    let mut p = starter.prepare(checked, name, source, &req).map_err(refused)?;
    p.state.run_id = run_id;
    let parent = Parent {
        run_id: a.run_id.to_string(),
        task,
        task_id: a.task_id.to_string(),
        item: a.item,
        attempt: a.attempt,
        depth: a.depth + 1,
    };
    let cap = a.allowance.map(|al| Budget { max_cost_usd: al.cost_usd, max_tokens: al.tokens });
    p.plan.adopt(&mut p.state, parent, cap);
    if let Some(t) = a.timeout {
        let t = t.as_millis() as u64;
        p.state.max_age_ms = Some(p.state.max_age_ms.map_or(t, |m| m.min(t)));
    }
    Ok(p)
}

/// `NAME@VERSION`: the workflow found for `NAME` must be at `VERSION` (one version of a name
/// is registered, or lies beside, at a time).
fn at_version(p: &Prepared, name: &str, version: Option<&str>) -> Result<(), TaskError> {
    let found = p.plan.checked.workflow.metadata.version.as_deref();
    match version {
        Some(v) if found != Some(v) => Err(TaskError::fatal(format!(
            "workflow `{name}` is at version {}, not {v} (one version of a name is kept at a time)",
            found.unwrap_or("(none)")
        ))),
        _ => Ok(()),
    }
}

/// A start refusal as one line (inputs and validation errors listed).
fn start_error(e: StartError) -> String {
    match e {
        StartError::Inputs(errors) => {
            let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            format!("its inputs do not match: {}", list.join("; "))
        }
        StartError::Invalid(outcome) => {
            let list: Vec<String> = outcome
                .report
                .records()
                .into_iter()
                .map(|r| format!("{}:{}:{}: {}", r.file, r.line.unwrap_or(0), r.column.unwrap_or(0), r.message))
                .collect();
            format!("it does not validate: {}", list.join("; "))
        }
        other => other.to_string(),
    }
}

/// The workers' `workflow` executor: starts the child of a registered workflow and detaches.
pub struct Children {
    store: Arc<dyn RunStore>,
    queue: Arc<dyn Queue>,
    workflows: Arc<dyn Workflows>,
    starter: Arc<Starter>,
}

impl Children {
    pub fn new(
        store: Arc<dyn RunStore>,
        queue: Arc<dyn Queue>,
        workflows: Arc<dyn Workflows>,
        starter: Arc<Starter>,
    ) -> Self {
        Children { store, queue, workflows, starter }
    }

    /// Starts attempt `a`'s child (or finds it started, and sends its `Start` again: a first
    /// delivery may have died before sending it; a second `Start` is ignored). Its run id.
    pub async fn start(&self, a: &Attempt) -> Result<String, TaskError> {
        let (with, r) = with_of(a)?;
        let (name, version) = match r {
            WorkflowRef::Registered { name, version } => (name, version),
            WorkflowRef::File(f) => {
                return Err(TaskError::fatal(format!(
                    "`{f}`: a workflow file is found only by an embedded run (`llmo run`); here register it (`POST /workflows`) and name it"
                )));
            }
        };
        // A run without a tenant (started by no API caller) looks in the tenant `-`, as
        // listings do: never an empty key, which a store would refuse again on every try.
        let tenant = a.tenant.as_deref().filter(|t| !t.is_empty()).unwrap_or("-");
        let source = match self.workflows.get(tenant, &name).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(TaskError::fatal(format!("no workflow `{name}` is registered"))),
            Err(e) => return Err(TaskError { message: format!("reading workflow `{name}`: {e}"), retryable: true }),
        };
        let file = format!("{name}.yaml");
        let p = prepare(&self.starter, a, &with, &file, &source)?;
        at_version(&p, &name, version.as_deref())?;
        let transient =
            |e: String| TaskError { message: format!("starting child workflow `{name}`: {e}"), retryable: true };
        let started = match self.starter.create(&*self.store, &p).await {
            Ok(s) => s.run_id,
            // The same attempt, with the workflow re-registered or its inputs changed since:
            // the child it started is the one.
            Err(StartError::KeyReused) => p.state.run_id.clone(),
            Err(e) => return Err(transient(e.to_string())),
        };
        self.queue
            .send(&Message::Event { run_id: started.clone(), event: Event::Start }, 0)
            .await
            .map_err(|e| transient(e.to_string()))?;
        tracing::info!(parent = %a.run_id, task = %a.task_id, child = %started, "child run started");
        Ok(started)
    }
}

#[async_trait]
impl Executor for Children {
    async fn execute(&self, a: &Attempt) -> AttemptResult {
        failed(TaskError::fatal(format!(
            "`{}`: this runtime does not wait for child runs (its worker does not detach attempts)",
            a.task_id
        )))
    }

    fn detaches(&self) -> bool {
        true
    }

    async fn detach(&self, a: &Attempt) -> Result<(), AttemptResult> {
        self.start(a).await.map(|_| ()).map_err(failed)
    }
}

/// How an embedded run starts and runs a child to its end, in the same process and store
/// ([`DriverChildren`]: a driver like the parent's).
#[async_trait]
pub trait RunChild: Send + Sync {
    /// Stores `p` (once: a child already stored is resumed, an ended one only read) and runs
    /// it to its end. The ended child's state.
    async fn run_child(&self, p: Prepared) -> Result<RunState, String>;

    /// Cancels the stored child `run_id` (its parent's attempt was cut off).
    async fn cancel_child(&self, run_id: &str) -> Result<(), String>;
}

/// The embedded runtime's `workflow` executor: a file relative to the parent's file (`NAME`
/// is `NAME.yaml` there); the child runs inline and the attempt is its end.
pub struct InlineChildren {
    /// Where children are looked for when their parent's workflow was not read from a file
    /// with a directory (children's paths are relative to their parent's file).
    pub base: PathBuf,
    pub starter: Arc<Starter>,
    pub runner: Arc<dyn RunChild>,
}

/// The largest child workflow file an embedded run reads.
pub const MAX_CHILD_FILE_BYTES: u64 = 1024 * 1024;

impl InlineChildren {
    /// Where a child of `a`'s run is looked for: beside the file its workflow was read from,
    /// else under `base`.
    fn dir_of(&self, a: &Attempt) -> PathBuf {
        match Path::new(a.plan.checked.source.name()).parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => self.base.clone(),
        }
    }

    /// The child's file: `x.yaml` under `dir`, or `NAME.yaml` there.
    fn source(r: &WorkflowRef, dir: &Path) -> Result<(String, String), TaskError> {
        let path = match r {
            WorkflowRef::File(f) => resolve(dir, f)?,
            WorkflowRef::Registered { name, .. } => dir.join(format!("{name}.yaml")),
        };
        let text = read_bounded(&path)?;
        Ok((path.display().to_string(), text))
    }
}

/// A child workflow's file, at most [`MAX_CHILD_FILE_BYTES`].
fn read_bounded(path: &Path) -> Result<String, TaskError> {
    let meta =
        std::fs::metadata(path).map_err(|e| TaskError::fatal(format!("child workflow `{}`: {e}", path.display())))?;
    if meta.len() > MAX_CHILD_FILE_BYTES {
        return Err(TaskError::fatal(format!(
            "child workflow `{}` is {} bytes, over {MAX_CHILD_FILE_BYTES}",
            path.display(),
            meta.len()
        )));
    }
    std::fs::read_to_string(path).map_err(|e| TaskError::fatal(format!("child workflow `{}`: {e}", path.display())))
}

/// The files the `workflow` tasks of `checked` (read from `path`) name without templates, as
/// an embedded run finds them (`x.yaml` relative to the file's directory, `NAME` as
/// `NAME.yaml` there when that file exists): `(task id, file)`.
pub fn file_references(path: &Path, checked: &llmo_core::validate::Checked) -> Vec<(String, PathBuf)> {
    let base = path.parent().unwrap_or(Path::new(""));
    let mut out = Vec::new();
    for t in checked.workflow.spec.tasks.iter().filter(|t| t.ty == llmo_core::child::WORKFLOW) {
        let Some(w) = t.with.get("workflow").and_then(serde_json::Value::as_str) else { continue };
        if w.contains("{{") {
            continue;
        }
        match WorkflowRef::parse(w) {
            Ok(WorkflowRef::File(f)) => {
                if let Ok(p) = resolve(base, &f) {
                    out.push((t.id.clone(), p));
                }
            }
            Ok(WorkflowRef::Registered { name, .. }) => {
                let p = base.join(format!("{name}.yaml"));
                if p.exists() {
                    out.push((t.id.clone(), p));
                }
            }
            Err(_) => {}
        }
    }
    out
}

/// Refuses child workflow files that form a cycle or nest deeper than
/// [`llmo_core::child::MAX_DEPTH`], starting from `path`: the chain of files, by task.
/// `check` validates a file's text (the caller's validator, with its task types). Each file is
/// read and validated once, however many tasks name it.
pub fn check_nesting(
    path: &Path,
    check: &dyn Fn(&Path, &str) -> Option<llmo_core::validate::Checked>,
) -> Result<(), String> {
    type Chain = Vec<(PathBuf, String)>;
    let key = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    /// How many levels of children `path` starts below itself.
    fn walk(
        path: &Path,
        chain: &mut Chain,
        done: &mut std::collections::HashMap<PathBuf, u32>,
        key: &dyn Fn(&Path) -> PathBuf,
        check: &dyn Fn(&Path, &str) -> Option<llmo_core::validate::Checked>,
    ) -> Result<u32, String> {
        if let Some(&levels) = done.get(&key(path)) {
            return Ok(levels);
        }
        let Ok(text) = read_bounded(path) else { return Ok(0) };
        let Some(checked) = check(path, &text) else { return Ok(0) };
        let mut levels = 0;
        for (task, child) in file_references(path, &checked) {
            let show = |chain: &Chain| {
                let mut s: Vec<String> = chain.iter().map(|(p, t)| format!("{} (task `{t}`)", p.display())).collect();
                s.push(child.display().to_string());
                s.join(" → ")
            };
            chain.push((path.to_path_buf(), task));
            if chain.iter().any(|(p, _)| key(p) == key(&child)) {
                return Err(format!("child workflows form a cycle: {}", show(chain)));
            }
            let below = walk(&child, chain, done, key, check)?;
            // `child` runs at depth `chain.len()`, and starts `below` levels under it.
            if chain.len() as u32 + below > MAX_DEPTH {
                return Err(format!("child workflows nest deeper than {MAX_DEPTH}: {}", show(chain)));
            }
            levels = levels.max(below + 1);
            chain.pop();
        }
        done.insert(key(path), levels);
        Ok(levels)
    }
    walk(path, &mut Vec::new(), &mut Default::default(), &key, check).map(|_| ())
}

/// `file` under `base`: relative paths only, never above `base`.
pub fn resolve(base: &Path, file: &str) -> Result<PathBuf, TaskError> {
    let p = Path::new(file);
    if p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(TaskError::fatal(format!(
            "`{file}`: a child workflow file is a path relative to the parent's directory, without `..`"
        )));
    }
    Ok(base.join(p))
}

#[async_trait]
impl Executor for InlineChildren {
    async fn execute(&self, a: &Attempt) -> AttemptResult {
        let run = async {
            let (with, r) = with_of(a)?;
            let (file, source) = Self::source(&r, &self.dir_of(a))?;
            let p = prepare(&self.starter, a, &with, &file, &source)?;
            if let WorkflowRef::Registered { name, version } = &r {
                at_version(&p, name, version.as_deref())?;
            }
            let ended = self
                .runner
                .run_child(p)
                .await
                .map_err(|e| TaskError { message: format!("child run: {e}"), retryable: true })?;
            Ok(ended)
        };
        match run.await {
            Ok(st) => match st.report_to_parent() {
                Some((_, Event::AttemptFinished { result, .. })) => result,
                _ => failed(TaskError::fatal("the child run did not end")),
            },
            Err(e) => failed(e),
        }
    }

    async fn cancel(&self, run_id: &str) -> Result<(), String> {
        self.runner.cancel_child(run_id).await
    }

    fn times_itself(&self) -> bool {
        true
    }
}

/// Runs children with drivers like the parent's: the same store, executors, clock and options
/// (the executors are set once the registry holding the [`InlineChildren`] is built).
pub struct DriverChildren {
    store: Arc<dyn RunStore>,
    clock: Arc<dyn crate::ports::Clock>,
    options: crate::driver::Options,
    starter: Arc<Starter>,
    executors: std::sync::OnceLock<std::sync::Weak<crate::executor::Registry>>,
}

#[async_trait]
impl RunChild for DriverChildren {
    async fn run_child(&self, p: Prepared) -> Result<RunState, String> {
        let executors = self
            .executors
            .get()
            .and_then(std::sync::Weak::upgrade)
            .ok_or("the executors are gone (the process is stopping)")?;
        let run_id = p.state.run_id.clone();
        let known = self.store.version(&run_id).await.map_err(|e| e.to_string())?.is_some();
        if !known {
            self.starter.create(&*self.store, &p).await.map_err(start_error)?;
        }
        let d = crate::driver::Driver {
            plan: Arc::new(p.plan),
            store: self.store.clone(),
            executors,
            clock: self.clock.clone(),
            blobs: None,
            options: self.options.clone(),
        };
        let ended = if known { d.resume(&run_id, &mut ()).await } else { d.start_created(p.state, &mut ()).await };
        ended.map(|f| f.state).map_err(|e| e.to_string())
    }

    async fn cancel_child(&self, run_id: &str) -> Result<(), String> {
        let Some(stored) = self.store.load(run_id).await.map_err(|e| e.to_string())? else { return Ok(()) };
        let checked = self.starter.check(&stored.source_name, &stored.source).map_err(start_error)?;
        let plan = llmo_core::engine::Plan::new(checked);
        crate::driver::cancel(&plan, &*self.store, &*self.clock, run_id).await.map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// `registry` with the embedded `workflow` executor added (unless it has one): children from
/// files beside their parent's (under `base` when the parent's has no directory), run in
/// `store` by drivers with `options`.
pub fn embedded(
    mut registry: crate::executor::Registry,
    base: PathBuf,
    store: Arc<dyn RunStore>,
    clock: Arc<dyn crate::ports::Clock>,
    options: crate::driver::Options,
    starter: Arc<Starter>,
) -> Arc<crate::executor::Registry> {
    let runner = Arc::new(DriverChildren {
        store,
        clock,
        options,
        starter: starter.clone(),
        executors: std::sync::OnceLock::new(),
    });
    // An embedder's own `workflow` executor stays.
    if registry.get(llmo_core::child::WORKFLOW).is_none() {
        registry.register("workflow", Arc::new(InlineChildren { base, starter, runner: runner.clone() }));
    }
    let registry = Arc::new(registry);
    let _ = runner.executors.set(Arc::downgrade(&registry));
    registry
}

/// A wide tree of references to the same files is walked once per file (hundreds of tasks
/// naming one file, eight levels deep, would otherwise be read 100^8 times).
#[cfg(test)]
mod nesting_tests {
    use super::*;

    fn validate(p: &Path, text: &str) -> Option<llmo_core::validate::Checked> {
        llmo_core::validate::Validator::default()
            .validate(&llmo_core::source::SourceFile::new(p.display().to_string(), text))
            .checked
    }

    fn file(dir: &Path, name: &str, children: &[&str]) {
        let mut tasks = String::from("    - { id: t, type: transform, with: { output: 1 } }\n");
        for (i, c) in children.iter().enumerate() {
            tasks.push_str(&format!("    - {{ id: c{i}, type: workflow, with: {{ workflow: {c} }} }}\n"));
        }
        let text = format!(
            "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: {{ name: {name} }}\nspec:\n  tasks:\n{tasks}"
        );
        std::fs::write(dir.join(format!("{name}.yaml")), text).unwrap();
    }

    #[test]
    fn wide_trees_are_walked_once_per_file_and_depth_and_cycles_are_found() {
        let dir = std::env::temp_dir().join(format!("llmo-nesting-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // l0 .. l7: each names the next 200 times; l8 is a leaf. Nine levels of runs: the top
        // one (depth 0) and eight of children, the most there may be.
        file(&dir, "l8", &[]);
        for d in (0..8).rev() {
            let next = format!("l{}", d + 1);
            file(&dir, &format!("l{d}"), &vec![next.as_str(); 200]);
        }
        let reads = std::sync::atomic::AtomicUsize::new(0);
        let counted = |p: &Path, t: &str| {
            reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            validate(p, t)
        };
        assert_eq!(check_nesting(&dir.join("l0.yaml"), &counted), Ok(()));
        assert_eq!(reads.load(std::sync::atomic::Ordering::Relaxed), 9, "each file once");
        // One level more is refused.
        file(&dir, "top", &["l0"]);
        let e = check_nesting(&dir.join("top.yaml"), &validate).unwrap_err();
        assert!(e.contains("nest deeper than 8"), "{e}");
        // A cycle, found through a file already walked.
        file(&dir, "a", &["l7", "b"]);
        file(&dir, "b", &["l8", "a"]);
        let e = check_nesting(&dir.join("a.yaml"), &validate).unwrap_err();
        assert!(e.contains("form a cycle") && e.contains("b.yaml (task `c1`)"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
