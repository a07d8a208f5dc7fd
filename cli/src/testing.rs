//! `llmo test`: a workflow's test cases, in `NAME.test.yaml` beside `NAME.yaml`, run offline
//! and in parallel. Each case gives inputs, fixtures (scripted model and HTTP answers,
//! [`llmo_runtime::fixtures`]), answers to the approvals and events the run waits for, and
//! what it expects: the run's status and error, its outputs, and tasks' statuses (the branch
//! taken), outputs and attempts. Objects in `expect` compare by the keys they list; everything
//! else compares exactly. Failures print one line per difference; `--junit FILE` writes a
//! JUnit XML report for CI. The format is in docs/workflow-spec.md ("Testing workflows").

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use llmo_core::diagnostic::did_you_mean;
use llmo_core::engine::waits::Approval;
use llmo_core::engine::{AttemptId, Plan, RunState, TaskStatus};
use llmo_core::source::SourceFile;
use llmo_core::validate::{Checked, Validator};
use llmo_core::yaml::Loaded;
use llmo_runtime::driver::{self, Driver, Observer};
use llmo_runtime::fixtures::{Fixtures, Locator};
use llmo_runtime::ports::SystemClock;
use llmo_runtime::providers::Config;
use llmo_runtime::start::{StartError, StartRequest, Starter};
use llmo_runtime::store::{MemoryStore, RunStore, Transition};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The suffix of test files.
pub const SUFFIX: &str = ".test.yaml";

/// Longest a case runs unless it says otherwise, in the run's (virtual) time: backoffs, sleeps
/// and timeouts pass at once, so only a run that never ends reaches it.
const CASE_TIMEOUT: Duration = Duration::from_secs(30 * 86400);

/// One test file, loaded and checked against its workflow.
pub struct Suite {
    pub file: String,
    secrets: Arc<dyn llmo_runtime::secrets::Secrets>,
    checked: Checked,
    source: SourceFile,
    cases: Vec<Case>,
}

struct Case {
    name: String,
    inputs: Map<String, Value>,
    fixtures: Fixtures,
    answers: Vec<WaitAnswer>,
    timeout: Duration,
    expect: Expect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteFile {
    /// The workflow, relative to the test file (default: its name without `.test`).
    workflow: Option<String>,
    /// Fixtures every case uses: a file (or a list of files, relative to the test file), or a
    /// mapping written in place. A case's own fixtures come first.
    fixtures: Option<Value>,
    /// Values of the workflow's `secrets.NAME` for its runs here (nothing is sent anywhere:
    /// the runs are offline). The environment's secrets are never read by a test.
    #[serde(default)]
    secrets: std::collections::BTreeMap<String, String>,
    cases: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    name: String,
    #[serde(default)]
    inputs: Map<String, Value>,
    fixtures: Option<Value>,
    #[serde(default)]
    answers: Vec<WaitAnswer>,
    timeout: Option<llmo_core::model::Duration>,
    #[serde(default)]
    expect: ExpectFile,
}

/// An answer to a task waiting for a person (`approve`) or an event (`event`), given when the
/// run has nothing left to do but wait; or `time_out: true`: nobody answers, and the wait's
/// `timeout` passes (in virtual time, at once).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitAnswer {
    task: String,
    item: Option<u32>,
    approve: Option<bool>,
    #[serde(default)]
    fields: Map<String, Value>,
    comment: Option<String>,
    event: Option<Value>,
    /// The output a task with a `callback` is answered with.
    callback: Option<Value>,
    /// Or the error its attempt fails with (its `retry` applies).
    callback_error: Option<String>,
    #[serde(default)]
    time_out: bool,
    /// For an agent's call waiting for an approval or a callback: the call's id (the first
    /// waiting when absent).
    call: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectFile {
    status: Option<String>,
    error: Option<String>,
    outputs: Option<Value>,
    #[serde(default)]
    tasks: Map<String, Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskExpect {
    status: Option<String>,
    output: Option<Value>,
    attempts: Option<u32>,
    error: Option<String>,
}

struct Expect {
    status: Option<String>,
    error: Option<String>,
    outputs: Option<Value>,
    /// (task id, its index, what is expected).
    tasks: Vec<(String, usize, TaskExpect)>,
}

/// `refused`: the run was not started (its inputs were refused).
const RUN_STATUSES: &[&str] = &["succeeded", "failed", "cancelled", "timed_out", "waiting", "refused"];
const TASK_STATUSES: &[&str] = &["succeeded", "failed", "skipped", "cancelled", "waiting", "pending"];

/// Where a pointer of the test file is.
fn at(file: &str, loaded: &Loaded, pointer: &str) -> String {
    Locator { file, loaded, base: String::new() }.at(pointer)
}

/// Reads and checks a test file: every problem, each located.
pub fn load(path: &Path, validator: &Validator) -> Result<Suite, Vec<String>> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("{file}: {e}")])?;
    let loaded = llmo_core::yaml::load(&text, Default::default()).map_err(|e| vec![format!("{file}: {e}")])?;
    let suite: SuiteFile =
        serde_json::from_value(loaded.json.clone()).map_err(|e| vec![format!("{}: {e}", at(&file, &loaded, ""))])?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let wf_path = match &suite.workflow {
        Some(w) => dir.join(w),
        None => {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let Some(stem) = name.strip_suffix(SUFFIX) else {
                return Err(vec![format!(
                    "{file}: name the workflow with `workflow:` (or name this file NAME{SUFFIX})"
                )]);
            };
            dir.join(format!("{stem}.yaml"))
        }
    };
    let wf_text =
        std::fs::read_to_string(&wf_path).map_err(|e| vec![format!("{file}: workflow {}: {e}", wf_path.display())])?;
    let source = SourceFile::new(wf_path.display().to_string(), wf_text);
    let Some(checked) = validator.validate(&source).checked else {
        return Err(vec![format!(
            "{file}: its workflow {} does not validate (see `llmo validate {}`)",
            wf_path.display(),
            wf_path.display()
        )]);
    };
    let mut errors = Vec::new();
    let shared = match &suite.fixtures {
        None => Fixtures::default(),
        Some(Value::Object(_)) => Fixtures::parse(
            suite.fixtures.as_ref().unwrap(),
            &Locator { file: &file, loaded: &loaded, base: "/fixtures".into() },
        )
        .unwrap_or_else(|e| {
            errors.extend(e.0);
            Fixtures::default()
        }),
        Some(v) => {
            let paths: Vec<&Value> = match v {
                Value::Array(a) => a.iter().collect(),
                v => vec![v],
            };
            let mut all = Fixtures::default();
            for p in paths {
                match p.as_str() {
                    Some(p) => match Fixtures::load(&dir.join(p)) {
                        Ok(f) => all = all.then(&f),
                        Err(e) => errors.extend(e.0),
                    },
                    None => errors.push(format!(
                        "{}: a fixtures file, a list of them, or fixtures written in place",
                        at(&file, &loaded, "/fixtures")
                    )),
                }
            }
            all
        }
    };
    let ids: Vec<&str> = checked.workflow.spec.tasks.iter().map(|t| t.id.as_str()).collect();
    let mut cases = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, raw) in suite.cases.iter().enumerate() {
        let p = format!("/cases/{i}");
        let c: CaseFile = match serde_json::from_value(raw.clone()) {
            Ok(c) => c,
            Err(e) => {
                errors.push(format!("{}: {e}", at(&file, &loaded, &p)));
                continue;
            }
        };
        if !names.insert(c.name.clone()) {
            errors.push(format!("{}: a second case named `{}`", at(&file, &loaded, &format!("{p}/name")), c.name));
        }
        let own = match &c.fixtures {
            None => Fixtures::default(),
            Some(v) => Fixtures::parse(v, &Locator { file: &file, loaded: &loaded, base: format!("{p}/fixtures") })
                .unwrap_or_else(|e| {
                    errors.extend(e.0);
                    Fixtures::default()
                }),
        };
        let fixtures = own.then(&shared);
        if let Err(e) = fixtures.check(&checked.workflow) {
            errors.extend(e.0);
        }
        let status_ok = |s: &Option<String>, allowed: &[&str], pointer: String, errors: &mut Vec<String>| {
            if let Some(s) = s
                && !allowed.contains(&s.as_str())
            {
                errors.push(format!("{}: `{s}` is not one of {}", at(&file, &loaded, &pointer), allowed.join(", ")));
            }
        };
        status_ok(&c.expect.status, RUN_STATUSES, format!("{p}/expect/status"), &mut errors);
        let mut tasks = Vec::new();
        for (id, v) in &c.expect.tasks {
            let tp = format!("{p}/expect/tasks/{id}");
            let Some(index) = ids.iter().position(|t| t == id) else {
                let hint = did_you_mean(id, ids.iter().copied()).map(|h| format!(" ({h})")).unwrap_or_default();
                errors.push(format!(
                    "{}: workflow `{}` has no task `{id}`{hint}",
                    at(&file, &loaded, &tp),
                    checked.workflow.metadata.name
                ));
                continue;
            };
            let te = match v {
                Value::String(s) => TaskExpect { status: Some(s.clone()), ..Default::default() },
                v => match serde_json::from_value::<TaskExpect>(v.clone()) {
                    Ok(t) => t,
                    Err(e) => {
                        errors.push(format!("{}: {e}", at(&file, &loaded, &tp)));
                        continue;
                    }
                },
            };
            status_ok(&te.status, TASK_STATUSES, tp, &mut errors);
            tasks.push((id.clone(), index, te));
        }
        for (j, a) in c.answers.iter().enumerate() {
            let ap = at(&file, &loaded, &format!("{p}/answers/{j}"));
            match checked.workflow.spec.tasks.iter().find(|t| t.id == a.task) {
                None => {
                    errors.push(format!("{ap}: workflow `{}` has no task `{}`", checked.workflow.metadata.name, a.task))
                }
                Some(t) if t.with.contains_key("callback") && (a.approve.is_some() || a.event.is_some()) => {
                    errors.push(format!(
                        "{ap}: `{}` waits for a callback: `callback: OUTPUT`, `callback_error: MESSAGE` or `time_out: true`",
                        a.task
                    ))
                }
                Some(t) if t.with.contains_key("callback") => {}
                Some(t)
                    if t.ty == llmo_core::agent::AGENT
                        && (a.event.is_some()
                            || a.approve.is_some() && (a.callback.is_some() || a.callback_error.is_some())) =>
                {
                    errors.push(format!(
                        "{ap}: `{}` is an agent: its tool calls are answered with `approve: true|false` (an approval), `callback: OUTPUT` or `callback_error: MESSAGE` (a callback), or `time_out: true`; `call: ID` picks one",
                        a.task
                    ))
                }
                Some(t) if t.ty == llmo_core::agent::AGENT => {}
                Some(_) if a.call.is_some() => {
                    errors.push(format!("{ap}: `call` names an agent's tool call, and `{}` is not an agent", a.task))
                }
                Some(t) if t.ty != "wait" => errors.push(format!(
                    "{ap}: `{}` is a `{}` task, neither a `wait` nor one with a `callback`",
                    a.task, t.ty
                )),
                Some(_) if a.callback.is_some() || a.callback_error.is_some() => {
                    errors.push(format!("{ap}: `{}` has no `callback` to answer", a.task))
                }
                Some(t) if a.time_out && !t.with.contains_key("timeout") => {
                    errors.push(format!("{ap}: `{}` has no `timeout` to pass", a.task))
                }
                _ => {}
            }
            let forms =
                [a.approve.is_some(), a.event.is_some(), a.callback.is_some(), a.callback_error.is_some(), a.time_out];
            if forms.iter().filter(|b| **b).count() != 1 {
                errors.push(format!("{ap}: an answer is `approve: true|false`, `event: PAYLOAD`, `callback: OUTPUT`, `callback_error: MESSAGE` or `time_out: true`"));
            }
        }
        let expect = Expect { status: c.expect.status, error: c.expect.error, outputs: c.expect.outputs, tasks };
        cases.push(Case {
            name: c.name,
            inputs: c.inputs,
            fixtures,
            answers: c.answers,
            timeout: c.timeout.map_or(CASE_TIMEOUT, |d| d.0),
            expect,
        });
    }
    if suite.cases.is_empty() {
        errors.push(format!("{}: no cases", at(&file, &loaded, "/cases")));
    }
    let secrets = Arc::new(llmo_runtime::secrets::WorkflowSecrets(Arc::new(llmo_runtime::secrets::MapSecrets(
        suite
            .secrets
            .iter()
            .map(|(k, v)| (format!("{}{k}", llmo_runtime::secrets::WORKFLOW_PREFIX), v.clone()))
            .collect(),
    ))));
    if errors.is_empty() { Ok(Suite { file, secrets, checked, source, cases }) } else { Err(errors) }
}

impl Suite {
    /// Its cases.
    pub fn len(&self) -> usize {
        self.cases.len()
    }
}

/// What a case came to.
struct Outcome {
    suite: usize,
    name: String,
    took: Duration,
    /// The run's own time (virtual: backoffs and sleeps pass at once).
    simulated: Duration,
    /// Differences from what was expected (empty: passed).
    failures: Vec<String>,
    /// Why the case could not run (its inputs were refused, it ran past its timeout, ...).
    error: Option<String>,
}

/// Sees every batch the driver stores: the latest state, for the harness to answer waits.
struct Watch(Arc<Mutex<Option<RunState>>>, Arc<tokio::sync::Notify>);

impl Observer for Watch {
    fn batch(&mut self, state: &RunState, _stored: &[Transition]) {
        *self.0.lock().expect("watch") = Some(state.clone());
        self.1.notify_one();
    }
}

/// Nothing runs or is due: every unfinished unit waits for an answer (a person or an event).
fn only_waits(plan: &Plan, st: &RunState) -> Option<Vec<AttemptId>> {
    let mut waiting = Vec::new();
    for (i, t) in st.tasks.iter().enumerate() {
        let item = |u: usize| plan.checked.workflow.spec.tasks[i].for_each.as_ref().map(|_| u as u32);
        if plan.is_agent(i) && t.status == TaskStatus::Running {
            // An agent whose only work left is calls waiting for an approval or a callback.
            for (u, unit) in t.units.iter().enumerate() {
                match unit.agent.as_deref().filter(|_| unit.status == TaskStatus::Running) {
                    Some(l) if l.running().next().is_some() || l.retrying().next().is_some() => return None,
                    Some(l) => waiting.extend(l.answer_owed().map(|c| AttemptId {
                        task: i,
                        item: item(u),
                        attempt: c.attempt,
                    })),
                    None if unit.status.is_terminal() || unit.status == TaskStatus::Pending => {}
                    None => return None,
                }
            }
            continue;
        }
        if matches!(t.status, TaskStatus::Ready | TaskStatus::Running | TaskStatus::RetryWait) {
            return None;
        }
        for (u, unit) in t.units.iter().enumerate() {
            match unit.status {
                TaskStatus::Waiting
                    if plan.wait_of(i).is_some_and(|w| w.sleep.is_none()) || plan.callback_of(i).is_some() =>
                {
                    waiting.push(AttemptId { task: i, item: item(u), attempt: unit.attempt })
                }
                s if s.is_terminal() || s == TaskStatus::Pending => {}
                _ => return None,
            }
        }
    }
    (!waiting.is_empty()).then_some(waiting)
}

async fn run_case(suite: Arc<Suite>, index: usize, case: usize, config: Config) -> Outcome {
    let c = &suite.cases[case];
    let started = Instant::now();
    let virtual_start = tokio::time::Instant::now();
    let mut out = Outcome {
        suite: index,
        name: c.name.clone(),
        took: Duration::ZERO,
        simulated: Duration::ZERO,
        failures: Vec::new(),
        error: None,
    };
    match drive(&suite, c, config).await {
        Ok(st) => out.failures = compare(c, &st),
        Err(Stop::Refused(why)) => out.failures = refused(c, &why),
        Err(Stop::Broken(e)) => out.error = Some(e),
    }
    out.took = started.elapsed();
    out.simulated = virtual_start.elapsed();
    out
}

/// Why a case has no final state.
enum Stop {
    /// The run was not started: its inputs were refused (a case may expect that).
    Refused(String),
    /// The case could not be run to its end.
    Broken(String),
}

impl From<String> for Stop {
    fn from(s: String) -> Self {
        Stop::Broken(s)
    }
}

/// A case whose run was refused: what it expected of that.
fn refused(c: &Case, why: &str) -> Vec<String> {
    let mut out = Vec::new();
    match c.expect.status.as_deref() {
        Some("refused") => {}
        want => out.push(format!("status: expected {}, got refused ({why})", want.unwrap_or("succeeded"))),
    }
    if let Some(w) = &c.expect.error
        && !why.contains(w.as_str())
    {
        out.push(format!("error: expected it to contain {w:?}, got {why:?}"));
    }
    out
}

/// Runs a case to its end (or to waits nothing answers): its final state.
async fn drive(suite: &Suite, c: &Case, config: Config) -> Result<RunState, Stop> {
    let starter = Starter::new(config.clone(), true);
    let req = StartRequest { inputs: c.inputs.clone(), ..Default::default() };
    let prepared = match starter.prepare(suite.checked.clone(), suite.source.name(), suite.source.text(), &req) {
        Ok(p) => p,
        Err(StartError::Inputs(errors)) => {
            return Err(Stop::Refused(
                errors
                    .iter()
                    .map(|e| format!("input `{}`{}: {}", e.input, e.path, e.message))
                    .collect::<Vec<_>>()
                    .join("; "),
            ));
        }
        Err(e) => return Err(e.to_string().into()),
    };
    let store: Arc<dyn RunStore> = Arc::new(MemoryStore::default());
    starter.create(store.as_ref(), &prepared).await.map_err(|e| e.to_string())?;
    let llmo_runtime::start::Prepared { plan, state, .. } = prepared;
    let plan = Arc::new(plan);
    let run_id = state.run_id.clone();
    let setup = llmo_runtime::Setup {
        fixtures: c.fixtures.clone(),
        secrets: suite.secrets.clone(),
        ..llmo_runtime::Setup::new(config, true)
    };
    let nudge = Arc::new(tokio::sync::Notify::new());
    // Nothing else writes the run but this harness, which nudges the driver after each
    // answer: no polling, and no lease renewals, to step through in virtual time.
    let options = driver::Options {
        poll: Duration::from_secs(86400),
        lease: Duration::from_secs(365 * 86400),
        nudge: Some(nudge.clone()),
        ..driver::Options::default()
    };
    let clock: Arc<dyn llmo_runtime::ports::Clock> = Arc::new(SystemClock::default());
    let mut registry = setup.registry();
    registry.register("function", Arc::new(llmo_lambda::FunctionExecutor::mock()));
    // Tasks with a `callback` send a token (scripted calls: it never leaves the process; the
    // case's answers go to the run directly).
    llmo_runtime::callbacks::Callbacks::new(b"llmo test: tokens that never leave the process", None)
        .install(&mut registry);
    // Child workflows run as `llmo run` runs them: files beside the workflow, in this store
    // (their answers to waits are not scripted: a child that waits waits).
    let base = std::path::Path::new(suite.source.name()).parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    let executors = llmo_runtime::children::embedded(
        registry,
        base,
        store.clone(),
        clock.clone(),
        options.clone(),
        Arc::new(starter),
    );
    let d = Driver { plan: plan.clone(), store: store.clone(), executors, clock, blobs: None, options };
    let latest = Arc::new(Mutex::new(None));
    let notify = Arc::new(tokio::sync::Notify::new());
    let mut watch = Watch(latest.clone(), notify.clone());
    let mut run = tokio::spawn(async move { d.start_created(state, &mut watch).await });
    let deadline = tokio::time::sleep(c.timeout);
    tokio::pin!(deadline);
    let mut answers = c.answers.clone();
    let mut answered = 0;
    let mut expiring: Vec<WaitAnswer> = Vec::new();
    loop {
        tokio::select! {
            end = &mut run => {
                return match end {
                    Ok(Ok(f)) => Ok(f.state),
                    Ok(Err(e)) => Err(format!("the run stopped: {e}").into()),
                    Err(e) => Err(format!("the run panicked: {e}").into()),
                };
            }
            _ = &mut deadline => {
                run.abort();
                return Err(format!("still running after {:?} (a case's `timeout` gives it longer)", c.timeout).into());
            }
            _ = notify.notified() => {}
        }
        let Some(st) = latest.lock().expect("watch").clone() else { continue };
        // Until the driver has taken up the last answer, what it showed is from before it.
        if st.version < answered {
            continue;
        }
        let Some(waiting) = only_waits(&plan, &st) else { continue };
        let matches = |a: &WaitAnswer, w: &AttemptId| {
            let call = st.waiting_call(*w);
            // An agent's call is answered as what it waits for: an approval or a callback.
            let kind = call.is_none_or(|c| {
                let callback = c.status == llmo_core::agent::CallStatus::AwaitingCallback;
                a.time_out || callback == (a.callback.is_some() || a.callback_error.is_some())
            });
            plan.checked.dag.id(w.task) == a.task
                && (a.item.is_none() || a.item == w.item)
                && (a.call.is_none() || call.map(|c| &c.id) == a.call.as_ref())
                && kind
        };
        // A wait left to time out: its timer ends it and the run goes on by itself.
        if waiting.iter().any(|w| expiring.iter().any(|a| matches(a, w))) {
            continue;
        }
        // The first answer written for a waiting task goes in; with none left, the run ends
        // here as `waiting`.
        let pick = answers.iter().position(|a| waiting.iter().any(|w| matches(a, w)));
        let Some(k) = pick else {
            run.abort();
            return Ok(st);
        };
        let a = answers.remove(k);
        if a.time_out {
            expiring.push(a);
            continue;
        }
        let clock = SystemClock::default();
        let id = *waiting.iter().find(|w| matches(&a, w)).expect("picked for a waiting unit");
        let r =
            llmo_runtime::waits::answer(&plan, store.as_ref(), &clock, &run_id, |st| match (&a.approve, &a.event) {
                (Some(ok), _) => plan.approve_at(
                    st,
                    id,
                    &Approval { approved: *ok, fields: a.fields.clone(), comment: a.comment.clone(), call: None },
                    "llmo-test",
                ),
                (None, Some(payload)) => plan.deliver(st, id, payload, "llmo-test"),
                (None, None) => match (&a.callback, &a.callback_error) {
                    (Some(output), _) => plan.callback_succeeded(st, id, output.clone()),
                    (None, Some(error)) => plan.callback_failed(st, id, error, true),
                    (None, None) => unreachable!("checked when loaded (time_out answers are not sent)"),
                },
            })
            .await;
        match r {
            Ok(after) => {
                answered = after.version;
                nudge.notify_one();
            }
            Err(e) => {
                run.abort();
                return Err(format!("answering `{}`: {e}", a.task).into());
            }
        }
    }
}

/// The status a test names for a task: `waiting` for any unit waiting.
fn task_status(s: TaskStatus) -> &'static str {
    match s {
        TaskStatus::Succeeded => "succeeded",
        TaskStatus::Failed => "failed",
        TaskStatus::Skipped => "skipped",
        TaskStatus::Cancelled => "cancelled",
        TaskStatus::Waiting => "waiting",
        TaskStatus::Pending | TaskStatus::Ready => "pending",
        TaskStatus::Running | TaskStatus::RetryWait => "running",
    }
}

/// Every difference between what `c` expects and the run's final state.
fn compare(c: &Case, st: &RunState) -> Vec<String> {
    let mut out = Vec::new();
    let status = if st.status.is_terminal() { st.status.as_str() } else { "waiting" };
    let detail = st.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default();
    match &c.expect.status {
        Some(want) if want != status => out.push(format!("status: expected {want}, got {status}{detail}")),
        // Unsaid, a case expects its run to succeed.
        None if status != "succeeded" => out.push(format!("status: expected succeeded, got {status}{detail}")),
        _ => {}
    }
    if let Some(want) = &c.expect.error {
        match &st.error {
            Some(e) if e.contains(want.as_str()) => {}
            Some(e) => out.push(format!("error: expected it to contain {want:?}, got {e:?}")),
            None => out.push(format!("error: expected one containing {want:?}, got none")),
        }
    }
    if let Some(want) = &c.expect.outputs {
        differ("outputs", want, st.outputs.as_ref().unwrap_or(&Value::Null), &mut out);
    }
    for (id, i, want) in &c.expect.tasks {
        let t = &st.tasks[*i];
        if let Some(s) = &want.status {
            // An agent whose calls wait for an approval or a callback, and nothing else runs, is
            // waiting.
            let awaiting = t.units.iter().any(|u| {
                u.agent.as_deref().is_some_and(|l| {
                    l.answer_owed().next().is_some() && l.running().next().is_none() && l.retrying().next().is_none()
                })
            });
            let got = if t.status == TaskStatus::Running && awaiting { "waiting" } else { task_status(t.status) };
            if s != got {
                let why = t.error.as_deref().or(t.reason.as_deref()).map(|e| format!(" ({e})")).unwrap_or_default();
                out.push(format!("tasks.{id}: expected {s}, got {got}{why}"));
            }
        }
        if let Some(w) = &want.output {
            let got = t.output.as_deref().cloned().unwrap_or(Value::Null);
            differ(&format!("tasks.{id}.output"), w, &got, &mut out);
        }
        if let Some(n) = want.attempts
            && n != t.attempts
        {
            out.push(format!("tasks.{id}.attempts: expected {n}, got {}", t.attempts));
        }
        if let Some(w) = &want.error {
            match &t.error {
                Some(e) if e.contains(w.as_str()) => {}
                got => out.push(format!("tasks.{id}.error: expected it to contain {w:?}, got {got:?}")),
            }
        }
    }
    out
}

/// Objects compare by the keys `want` lists, lists item by item and length, numbers by value,
/// the rest exactly.
fn differ(path: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                match g.get(k) {
                    Some(gv) => differ(&format!("{path}.{k}"), wv, gv, out),
                    None => {
                        let hint =
                            did_you_mean(k, g.keys().map(String::as_str)).map(|h| format!("; {h}")).unwrap_or_default();
                        out.push(format!("{path}.{k}: expected {}, got nothing{hint}", short(wv)))
                    }
                }
            }
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => {
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                differ(&format!("{path}[{i}]"), wv, gv, out);
            }
        }
        (Value::Number(w), Value::Number(g)) if w.as_f64() == g.as_f64() => {}
        (w, g) if w == g => {}
        (w, g) => out.push(format!("{path}: expected {}, got {}", short(w), short(g))),
    }
}

/// A value on one line, cut at 200 characters.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 200 { format!("{}...", s.chars().take(200).collect::<String>()) } else { s }
}

/// The test files of `paths`: files as given, a workflow's own test file, every `*.test.yaml`
/// under a directory.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let roots: Vec<PathBuf> = if paths.is_empty() { vec![PathBuf::from(".")] } else { paths.to_vec() };
    for p in roots {
        if p.is_dir() {
            walk(&p, &mut out).with_context(|| format!("reading {}", p.display()))?;
        } else if p.to_string_lossy().ends_with(SUFFIX) {
            out.push(p);
        } else {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let stem = name.strip_suffix(".yaml").or_else(|| name.strip_suffix(".yml")).unwrap_or(name);
            let beside = p.with_file_name(format!("{stem}{SUFFIX}"));
            anyhow::ensure!(beside.exists(), "{}: no test file {} beside it", p.display(), beside.display());
            out.push(beside);
        }
    }
    out.dedup();
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        if e.file_type()?.is_dir() {
            if !name.starts_with('.') && name != "target" && name != "node_modules" {
                walk(&p, out)?;
            }
        } else if name.ends_with(SUFFIX) {
            out.push(p);
        }
    }
    Ok(())
}

pub struct Options {
    pub paths: Vec<PathBuf>,
    pub jobs: usize,
    pub filter: Option<String>,
    pub junit: Option<PathBuf>,
    pub config: Config,
}

/// `llmo test`: 0 when every case passed, 1 when one failed, 2 when a test file is invalid.
pub fn test(validator: &Validator, opts: Options) -> Result<ExitCode> {
    let files = discover(&opts.paths)?;
    anyhow::ensure!(!files.is_empty(), "no test files (NAME{SUFFIX}) found");
    let mut suites = Vec::new();
    let mut invalid = 0;
    for f in &files {
        match load(f, validator) {
            Ok(s) => suites.push(Arc::new(s)),
            Err(errors) => {
                invalid += 1;
                for e in errors {
                    eprintln!("error: {}", crate::term::clean(&e));
                }
            }
        }
    }
    let started = Instant::now();
    let queue: std::collections::VecDeque<(usize, usize)> = suites
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.cases
                .iter()
                .enumerate()
                .filter(|(_, c)| opts.filter.as_deref().is_none_or(|f| c.name.contains(f)))
                .map(move |(k, _)| (i, k))
        })
        .collect();
    let total = queue.len();
    let queue = Arc::new(Mutex::new(queue));
    let (tx, rx) = std::sync::mpsc::channel::<Outcome>();
    // Each case runs on its own single-threaded runtime with paused time, so backoffs, sleeps
    // and timeouts pass at once (virtual time), `jobs` cases at a time on as many threads.
    let workers: Vec<_> = (0..opts.jobs.clamp(1, total.max(1)))
        .map(|_| {
            let (queue, tx, suites, config) = (queue.clone(), tx.clone(), suites.clone(), opts.config.clone());
            std::thread::spawn(move || {
                loop {
                    let Some((i, k)) = queue.lock().expect("queue").pop_front() else { return };
                    let o = match tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build()
                    {
                        Ok(rt) => rt.block_on(run_case(suites[i].clone(), i, k, config.clone())),
                        Err(e) => Outcome {
                            suite: i,
                            name: suites[i].cases[k].name.clone(),
                            took: Duration::ZERO,
                            simulated: Duration::ZERO,
                            failures: Vec::new(),
                            error: Some(format!("starting its runtime: {e}")),
                        },
                    };
                    if tx.send(o).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    drop(tx);
    let mut outcomes = Vec::new();
    for o in rx {
        report(&suites[o.suite].file, &o);
        outcomes.push(o);
    }
    for w in workers {
        if w.join().is_err() {
            anyhow::bail!("a test case panicked");
        }
    }
    let failed = outcomes.iter().filter(|o| !o.failures.is_empty()).count();
    let errored = outcomes.iter().filter(|o| o.error.is_some()).count();
    let passed = outcomes.len() - failed - errored;
    eprintln!(
        "{passed} passed, {failed} failed, {errored} could not run{} in {:.2}s",
        if invalid > 0 {
            format!(", {invalid} invalid test file{}", if invalid == 1 { "" } else { "s" })
        } else {
            String::new()
        },
        started.elapsed().as_secs_f64()
    );
    if let Some(p) = &opts.junit {
        std::fs::write(p, junit(&suites, &outcomes)).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(if invalid > 0 {
        ExitCode::from(2)
    } else if failed + errored > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn report(file: &str, o: &Outcome) {
    let took = if o.simulated >= Duration::from_secs(1) {
        format!("{:.2}s; {} of run time", o.took.as_secs_f64(), span(o.simulated))
    } else {
        format!("{:.2}s", o.took.as_secs_f64())
    };
    let name = crate::term::clean(&o.name);
    match (&o.error, o.failures.is_empty()) {
        (None, true) => eprintln!("ok    {file} › {name} ({took})"),
        (Some(e), _) => eprintln!("ERROR {file} › {name} ({took})\n      {}", crate::term::clean(e)),
        (None, false) => {
            eprintln!("FAIL  {file} › {name} ({took})");
            for f in &o.failures {
                eprintln!("      {}", crate::term::clean(f));
            }
        }
    }
}

/// `2.5s`, `3m10s`, `2h5m`, `7d3h`.
fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

fn xml(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t'))
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&apos;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// A JUnit XML report: a `testsuite` per test file, a `testcase` per case.
fn junit(suites: &[Arc<Suite>], outcomes: &[Outcome]) -> String {
    let total_time: f64 = outcomes.iter().map(|o| o.took.as_secs_f64()).sum();
    let failures = outcomes.iter().filter(|o| !o.failures.is_empty()).count();
    let errors = outcomes.iter().filter(|o| o.error.is_some()).count();
    let mut x = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"llmo test\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{total_time:.3}\">\n",
        outcomes.len()
    );
    for (i, s) in suites.iter().enumerate() {
        let mine: Vec<&Outcome> = outcomes.iter().filter(|o| o.suite == i).collect();
        let time: f64 = mine.iter().map(|o| o.took.as_secs_f64()).sum();
        x += &format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" time=\"{time:.3}\">\n",
            xml(&s.file),
            mine.len(),
            mine.iter().filter(|o| !o.failures.is_empty()).count(),
            mine.iter().filter(|o| o.error.is_some()).count()
        );
        let class = xml(&s.checked.workflow.metadata.name);
        for o in mine {
            x += &format!(
                "    <testcase classname=\"{class}\" name=\"{}\" time=\"{:.3}\"",
                xml(&o.name),
                o.took.as_secs_f64()
            );
            match (&o.error, o.failures.is_empty()) {
                (None, true) => x += "/>\n",
                (Some(e), _) => {
                    x += &format!(">\n      <error message=\"{}\">{}</error>\n    </testcase>\n", xml(e), xml(e))
                }
                (None, false) => {
                    let n = o.failures.len();
                    x += &format!(
                        ">\n      <failure message=\"{n} expectation{} not met\">{}</failure>\n    </testcase>\n",
                        if n == 1 { "" } else { "s" },
                        xml(&o.failures.join("\n"))
                    )
                }
            }
        }
        x += "  </testsuite>\n";
    }
    x += "</testsuites>\n";
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_compare_by_the_keys_expected_and_the_rest_exactly() {
        let mut out = Vec::new();
        differ(
            "outputs",
            &json!({"a": 1, "b": {"c": [1, "x"]}, "txt": "hi"}),
            &json!({"a": 1.0, "b": {"c": [1, "y"], "extra": true}, "text": "hi"}),
            &mut out,
        );
        assert_eq!(
            out,
            vec![
                "outputs.b.c[1]: expected \"x\", got \"y\"".to_string(),
                "outputs.txt: expected \"hi\", got nothing; did you mean `text`?".to_string(),
            ]
        );
    }

    #[test]
    fn junit_escapes_and_counts() {
        let x = xml("a<b & \"c\"\u{1b}");
        assert_eq!(x, "a&lt;b &amp; &quot;c&quot;");
    }
}
