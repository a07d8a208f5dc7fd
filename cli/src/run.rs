//! `llmo run` / `resume` / `status` / `runs` / `cancel`: runs workflows in this process with
//! the embedded driver (`llmo_runtime::driver`), in memory or in a SQLite state file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use llmo_core::engine::{Event, Plan, RunState, RunStatus, TaskStatus};
use llmo_core::source::SourceFile;
use llmo_core::validate::{Checked, Validator};
use llmo_runtime::driver::{self, Driver, HookOutcome, Observer};
use llmo_runtime::executor::Registry;
use llmo_runtime::fixtures::Fixtures;
use llmo_runtime::ports::{BlobStore, DirBlobs, SystemClock};
use llmo_runtime::providers::Config;
use llmo_runtime::start::{self, StartError, StartRequest, Starter};
use llmo_runtime::store::{Durability, MemoryStore, RunStore, SqliteStore, StoredRun, Transition, rebuild};
use serde_json::{Map, Value, json};

/// How runs execute: shared by `run` and `resume`.
#[derive(Clone)]
pub struct Exec {
    /// Answer model calls with the mock provider and `http` tasks with an echo, unless the
    /// fixtures answer them.
    pub mock: bool,
    /// Scripted answers ([`llmo_runtime::fixtures`]).
    pub fixtures: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub concurrency: usize,
    pub durability: Durability,
}

pub struct Options {
    pub inputs: Vec<String>,
    pub input_file: Option<PathBuf>,
    /// SQLite file keeping runs (in memory when absent).
    pub state: Option<PathBuf>,
    pub exec: Exec,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

fn open_store(state: Option<&Path>, durability: Durability) -> Result<Arc<dyn RunStore>> {
    Ok(match state {
        Some(p) => Arc::new(SqliteStore::open(p, durability).with_context(|| format!("opening {}", p.display()))?),
        None => Arc::new(MemoryStore::default()),
    })
}

/// Blobs (output checkpoints) live beside the state file.
fn blobs(state: Option<&Path>) -> Option<Arc<dyn BlobStore>> {
    let dir = state?.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf).join("blobs");
    Some(Arc::new(DirBlobs(dir)))
}

pub fn config(exec: &Exec) -> Result<Config> {
    Ok(match (&exec.config, std::env::var_os("LLMO_CONFIG")) {
        (Some(p), _) => Config::load(p, true)?,
        (None, Some(p)) => Config::load(Path::new(&p), true)?,
        (None, None) => Config::load(Path::new(".llmo/config.yaml"), false)?,
    })
}

/// The executors of `plan`'s runs, answering from `--fixtures` first (refused when a rule
/// cannot apply to the workflow: a typo must not let a real call through).
fn registry(exec: &Exec, plan: &Plan) -> Result<Registry> {
    let fixtures = match &exec.fixtures {
        Some(p) => {
            let f = Fixtures::load(p).map_err(|e| anyhow::anyhow!("{e}"))?;
            f.check(&plan.checked.workflow).map_err(|e| anyhow::anyhow!("{e}"))?;
            if !exec.mock {
                eprintln!(
                    "{}: {} model and {} http rules answer the calls they match; the rest go to the providers and the network (add --mock to keep them offline)",
                    p.display(),
                    f.models.len(),
                    f.http.len()
                );
            }
            f
        }
        None => Fixtures::default(),
    };
    registry_with(exec, fixtures)
}

/// The executors, answering from `fixtures` first.
pub fn registry_with(exec: &Exec, fixtures: Fixtures) -> Result<Registry> {
    let config = config(exec)?;
    if !exec.mock {
        // A config file (perhaps a repository's) chose where these providers' calls and keys
        // go: say so before anything is sent.
        for (name, url, file) in config.file_endpoints() {
            eprintln!(
                "provider `{}` calls {} (set by {})",
                crate::term::clean(name),
                crate::term::clean(url),
                crate::term::clean(file)
            );
        }
    }
    let setup = llmo_runtime::Setup {
        fixtures,
        egress: llmo_runtime::egress::Egress::from_env().map_err(anyhow::Error::msg)?,
        http: llmo_runtime::http::HttpLimits::from_env().map_err(anyhow::Error::msg)?,
        bedrock: Some(llmo_bedrock::factory()),
        ..llmo_runtime::Setup::new(config, exec.mock)
    };
    let mut registry = setup.registry();
    let functions = if exec.mock {
        llmo_lambda::FunctionExecutor::mock()
    } else {
        llmo_lambda::FunctionExecutor::new(llmo_lambda::Settings::from_env().map_err(anyhow::Error::msg)?)
    };
    registry.register("function", Arc::new(functions));
    Ok(registry)
}

/// The plan, with the prices its runs keep their budget with.
fn prepared(mut plan: Plan, exec: &Exec) -> Result<Arc<Plan>> {
    plan.set_prices(config(exec)?.price_book(exec.mock));
    Ok(Arc::new(plan))
}

fn driver(plan: Arc<Plan>, store: Arc<dyn RunStore>, state: Option<&Path>, exec: &Exec) -> Result<Driver> {
    let options = driver::Options { concurrency: exec.concurrency.max(1), ..driver::Options::default() };
    let clock: Arc<dyn llmo_runtime::ports::Clock> = Arc::new(SystemClock::default());
    // `workflow` tasks: children from files beside this one, run in this process and store.
    let base = Path::new(plan.checked.source.name()).parent().map(Path::to_path_buf).unwrap_or_default();
    let mut reg = registry(exec, &plan)?;
    // Tasks waiting for a callback: their tokens are answered by `llmo callback --state F`
    // (or `llmo serve` on the same file). A run without a state file cannot wait for one.
    if let Some(state) = state
        && (0..plan.task_count()).any(|i| plan.callback_of(i).is_some() || plan.agent_has_callbacks(i))
    {
        llmo_runtime::callbacks::Callbacks::new(&crate::server::local_link_secret(state)?, None).install(&mut reg);
    }
    let executors = llmo_runtime::children::embedded(
        reg,
        base,
        store.clone(),
        clock.clone(),
        options.clone(),
        Arc::new(Starter::new(config(exec)?, exec.mock)),
    );
    Ok(Driver { executors, plan, store, clock, blobs: blobs(state), options })
}

/// Parses `--input k=v` (v as JSON when it parses, else as a string) and `--input-file`.
pub fn given_inputs(opts: &Options) -> Result<Map<String, Value>> {
    let mut given = Map::new();
    if let Some(f) = &opts.input_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        let loaded =
            llmo_core::yaml::load(&text, Default::default()).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        match loaded.json {
            Value::Object(m) => given.extend(m),
            _ => bail!("{}: inputs must be a mapping of input names to values", f.display()),
        }
    }
    given.extend(name_values(&opts.inputs)?);
    Ok(given)
}

/// `--input NAME=VALUE` arguments (VALUE read as JSON when it parses, else as text).
fn name_values(inputs: &[String]) -> Result<Map<String, Value>> {
    let mut given = Map::new();
    for kv in inputs {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--input takes NAME=VALUE, got `{kv}`");
        };
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        given.insert(k.to_string(), value);
    }
    Ok(given)
}

/// `-i NAME=VALUE` read as its input is declared: a `string` input takes VALUE as text
/// even when it reads as JSON (`-i year=2024`, `-i answer=true`); other types keep the JSON
/// reading.
pub fn as_declared(
    decl: &indexmap::IndexMap<String, llmo_core::model::InputSpec>,
    args: &[String],
    given: &mut Map<String, Value>,
) {
    for kv in args {
        let Some((k, v)) = kv.split_once('=') else { continue };
        if decl.get(k).is_some_and(|d| d.ty == llmo_core::model::InputType::String)
            && given.get(k).is_some_and(|g| !g.is_string())
        {
            given.insert(k.to_string(), Value::String(v.to_string()));
        }
    }
}

/// `llmo redrive -i NAME=VALUE ...`: the edited inputs (none when no `-i` is given).
pub fn edited_inputs(inputs: &[String]) -> Result<Option<Map<String, Value>>> {
    if inputs.is_empty() {
        return Ok(None);
    }
    name_values(inputs).map(Some)
}

/// What `llmo run` serves while (and after) it runs.
#[derive(Default)]
pub struct Serve {
    /// The run page's address.
    pub ui: Option<String>,
    /// The Prometheus metrics' address.
    pub metrics_addr: Option<String>,
}

pub fn run(checked: Checked, source: &SourceFile, opts: &Options, serve: &Serve) -> Result<ExitCode> {
    // Fixtures that cannot apply are refused before a run is stored.
    if let Some(p) = &opts.exec.fixtures {
        let f = Fixtures::load(p).map_err(|e| anyhow::anyhow!("{e}"))?;
        f.check(&checked.workflow).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let mut given = given_inputs(opts)?;
    as_declared(&checked.workflow.spec.inputs, &opts.inputs, &mut given);
    // The start-a-run use case every entry point shares: inputs checked, the plan priced, a
    // run id with 96 random bits, the run stored.
    let starter = Starter::new(config(&opts.exec)?, opts.exec.mock);
    let req = StartRequest { inputs: given, ..Default::default() };
    let prepared = match starter.prepare(checked, source.name(), source.text(), &req) {
        Ok(p) => p,
        Err(StartError::Inputs(errors)) => {
            for e in errors {
                eprintln!("error: {}: input `{}`{}: {}", source.name(), e.input, e.path, e.message);
            }
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    let rt = runtime()?;
    // A run that waits for a person or an event is answered from another process (`llmo
    // approve`, `llmo send-event`): it is kept in a state file, the default one if none is given.
    let answerable =
        (0..prepared.plan.task_count()).any(|i| prepared.plan.wait_of(i).is_some_and(|w| w.sleep.is_none()));
    let state_file = match (&opts.state, answerable) {
        (None, true) => {
            let p = PathBuf::from(".llmo/runs.db");
            eprintln!(
                "note: this workflow waits for answers, so the run is kept in {} (--state to choose)",
                p.display()
            );
            Some(p)
        }
        (s, _) => s.clone(),
    };
    let opts = &Options { state: state_file, inputs: Vec::new(), input_file: None, exec: opts.exec.clone() };
    let store = open_store(opts.state.as_deref(), opts.exec.durability)?;
    let run_id = prepared.state.run_id.clone();
    rt.block_on(starter.create(store.as_ref(), &prepared))?;
    let start::Prepared { plan, state, .. } = prepared;
    let plan = Arc::new(plan);
    let d = driver(plan.clone(), store.clone(), opts.state.as_deref(), &opts.exec)?;
    eprintln!("{run_id}: {} ({} tasks)", plan.checked.workflow.metadata.name, plan.task_count());
    if let Some(addr) = &serve.metrics_addr {
        let handle = llmo_runtime::meter::prometheus().context("--metrics-addr: a metrics recorder is already set")?;
        let bound = rt.block_on(crate::serve::metrics(addr, handle))?;
        eprintln!("metrics: http://{bound}/metrics");
    }
    if let Some(addr) = &serve.ui {
        let token = crate::serve::token()?;
        let bound = rt.block_on(crate::serve::ui(addr, store.clone(), &token))?;
        eprintln!("run page: http://{bound}/ui/runs/{run_id}#token={token}");
    }
    let mut progress = Progress::new(&plan, None).at(opts.state.as_deref());
    let end = until_interrupted(&rt, d.start_created(state, &mut progress))?;
    let Some(end) = end else { return Ok(interrupted(&run_id, opts.state.as_deref())) };
    let code = finish(&plan, &end.state, progress.started)?;
    if serve.ui.is_some() || serve.metrics_addr.is_some() {
        eprintln!("{run_id}: ended; still serving its page and metrics until Ctrl-C");
        let _ = rt.block_on(tokio::signal::ctrl_c());
    }
    if opts.state.is_none() {
        // The process ends next and its memory goes back with it: freeing the run's state,
        // plan and in-memory store piece by piece (tens of MB of small allocations for a big
        // workflow) and joining the runtime's threads would only delay the exit (2% of a
        // 1,000-task run's instructions). A state file is closed as usual.
        std::mem::forget((end, plan, d, store, progress));
        std::mem::forget(rt);
    }
    Ok(code)
}

/// Drives `run` to its end on `rt`, or stops at Ctrl-C (`None`).
fn until_interrupted<T>(
    rt: &tokio::runtime::Runtime,
    run: impl std::future::Future<Output = Result<T, driver::Error>>,
) -> Result<Option<T>> {
    Ok(rt.block_on(async {
        tokio::select! {
            r = run => r.map(Some),
            _ = tokio::signal::ctrl_c() => Ok(None),
        }
    })?)
}

fn interrupted(run_id: &str, state: Option<&Path>) -> ExitCode {
    match state {
        Some(p) => eprintln!("{run_id}: interrupted; continue with `llmo resume {run_id} --state {}`", p.display()),
        None => eprintln!("{run_id}: interrupted (in memory: use --state FILE to make runs resumable)"),
    }
    ExitCode::from(130)
}

/// Loads a stored run and rebuilds its plan from the workflow text it was started with.
async fn stored(store: &dyn RunStore, run_id: &str, state: &Path) -> Result<(Plan, StoredRun)> {
    let Some(run) = store.load(run_id).await? else {
        bail!("no run `{run_id}` in {}", state.display());
    };
    let outcome = Validator::shared().validate(&SourceFile::new(run.source_name.clone(), run.source.clone()));
    let Some(checked) = outcome.checked else {
        bail!("the stored workflow of `{run_id}` ({}) no longer validates", run.source_name);
    };
    Ok((Plan::new(checked), run))
}

/// `llmo resume RUN_ID`: continues a stored run where it stopped.
pub fn resume(run_id: &str, state: &Path, wait: bool, exec: &Exec) -> Result<ExitCode> {
    let rt = runtime()?;
    let store = open_store(Some(state), exec.durability)?;
    let (plan, run) = rt.block_on(stored(store.as_ref(), run_id, state))?;
    let plan = prepared(plan, exec)?;
    let workflow = run.workflow.clone();
    let st = rebuild(&plan, run)?;
    if st.status.is_terminal() {
        eprintln!("{run_id}: already {}", st.status.as_str());
        return finish(&plan, &st, Instant::now());
    }
    let d = driver(plan.clone(), store, Some(state), exec)?;
    let mut progress = Progress::new(&plan, Some(&st)).at(Some(state));
    let mut said = false;
    let end = loop {
        // One executor per run: a run a live process executes is not run a second time.
        match rt.block_on(d.store.owner(run_id))? {
            Some(o) if o.owner != d.options.owner && o.expires_at > llmo_runtime::ports::now_ms() && !o.dead_here() => {
                let owned = driver::Error::Owned { run: run_id.to_string(), owner: o };
                if !wait {
                    eprintln!("{}", crate::term::clean(&owned.to_string()));
                    eprintln!(
                        "{run_id}: not resumed; `llmo resume {run_id}{} --wait` takes it over when that process ends",
                        state_flag(Some(state))
                    );
                    return Ok(ExitCode::from(1));
                }
                if !said {
                    eprintln!("{}; waiting for it to end or stop", crate::term::clean(&owned.to_string()));
                    said = true;
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
                continue;
            }
            _ => {}
        }
        if !said {
            eprintln!("{run_id}: resuming {workflow} ({} tasks)", plan.task_count());
        }
        match until_interrupted(&rt, d.resume(run_id, &mut progress)) {
            // Taken by another process between the look and the lease: look again.
            Err(e) if matches!(e.downcast_ref::<driver::Error>(), Some(driver::Error::Owned { .. })) => continue,
            other => break other?,
        }
    };
    let Some(end) = end else { return Ok(interrupted(run_id, Some(state))) };
    if end.state.status.is_terminal() && said {
        eprintln!("{run_id}: the other process ended it ({})", end.state.status.as_str());
    }
    finish(&plan, &end.state, progress.started)
}

/// `llmo redrive RUN_ID`: a failed or timed-out run continues from its failed tasks; tasks
/// that succeeded keep their outputs and do not run again.
pub fn redrive(run_id: &str, edits: Option<Map<String, Value>>, state: &Path, exec: &Exec) -> Result<ExitCode> {
    let rt = runtime()?;
    let store = open_store(Some(state), exec.durability)?;
    let (plan, run) = rt.block_on(stored(store.as_ref(), run_id, state))?;
    let plan = prepared(plan, exec)?;
    let st = rebuild(&plan, run)?;
    if !matches!(st.status, RunStatus::Failed | RunStatus::TimedOut) {
        eprintln!("{run_id}: {}; only a failed or timed-out run is redriven", st.status.as_str());
        return Ok(ExitCode::from(1));
    }
    if let Some(e) = &edits
        && let Err(errors) = llmo_core::inputs::check_edits(&plan.checked.workflow.spec.inputs, &st.inputs, e)
    {
        for e in errors {
            eprintln!("error: {run_id}: input `{}`{}: {}", e.input, e.path, e.message);
        }
        return Ok(ExitCode::from(2));
    }
    let again = st.tasks.iter().filter(|t| t.status != TaskStatus::Succeeded).count();
    eprintln!("{run_id}: redriving {again} of {} tasks (the others keep their outputs)", plan.task_count());
    let d = driver(plan.clone(), store, Some(state), exec)?;
    let mut progress = Progress::new(&plan, None).at(Some(state));
    let end = until_interrupted(&rt, d.redrive(run_id, edits, &mut progress))?;
    let Some(end) = end else { return Ok(interrupted(run_id, Some(state))) };
    finish(&plan, &end.state, progress.started)
}

/// `llmo rerun RUN_ID --from TASK`: a new run reusing RUN_ID's recorded outputs, running TASK
/// and everything downstream of it again.
pub fn rerun(run_id: &str, from: &str, state: &Path, exec: &Exec) -> Result<ExitCode> {
    let rt = runtime()?;
    let store = open_store(Some(state), exec.durability)?;
    let (plan, run) = rt.block_on(stored(store.as_ref(), run_id, state))?;
    let (source_name, source) = (run.source_name.clone(), run.source.clone());
    let source_state = rebuild(&plan, run)?;
    let starter = Starter::new(config(exec)?, exec.mock);
    let prepared = match starter.prepare_rerun(&source_name, &source, &source_state, from) {
        Ok(p) => p,
        Err(StartError::Rerun(why)) => {
            eprintln!("error: {why}");
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    rt.block_on(starter.create(store.as_ref(), &prepared))?;
    let start::Prepared { plan, state: st, .. } = prepared;
    let new_id = st.run_id.clone();
    let reused = st.ended_tasks;
    let plan = Arc::new(plan);
    eprintln!("{new_id}: rerun of {run_id} from `{from}` ({reused} of {} tasks reused)", plan.task_count());
    let d = driver(plan.clone(), store, Some(state), exec)?;
    let mut progress = Progress::new(&plan, Some(&st)).at(Some(state));
    let end = until_interrupted(&rt, d.start_created(st, &mut progress))?;
    let Some(end) = end else { return Ok(interrupted(&new_id, Some(state))) };
    finish(&plan, &end.state, progress.started)
}

/// `llmo cancel RUN_ID`: cancels a stored run; a process running it stops within its poll
/// interval. This command runs the run's `on.failure` hooks.
pub fn cancel(run_id: &str, state: &Path, exec: &Exec) -> Result<ExitCode> {
    let rt = runtime()?;
    let store = open_store(Some(state), exec.durability)?;
    let (plan, _) = rt.block_on(stored(store.as_ref(), run_id, state))?;
    let plan = Arc::new(plan);
    let clock = SystemClock::default();
    match rt.block_on(driver::cancel(&plan, store.as_ref(), &clock, run_id))? {
        None => {
            eprintln!("{run_id}: already ended; nothing to cancel");
            Ok(ExitCode::from(1))
        }
        Some(st) => {
            let cancelled = st.tasks.iter().filter(|t| t.status == TaskStatus::Cancelled).count();
            eprintln!("{run_id}: cancelled ({cancelled} task{} not run)", if cancelled == 1 { "" } else { "s" });
            let reg = registry(exec, &plan)?;
            let mut progress = Progress::new(&plan, Some(&st));
            rt.block_on(driver::run_hooks(&plan, &reg, &st, st.status, &mut progress));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `llmo status RUN_ID`: the stored state of a run, as JSON (with `--history`, its log).
pub fn status(run_id: &str, state: &Path, history: bool) -> Result<ExitCode> {
    let rt = runtime()?;
    let store = open_store(Some(state), Durability::default())?;
    let (plan, run) = rt.block_on(stored(store.as_ref(), run_id, state))?;
    let workflow = run.workflow.clone();
    let st = rebuild(&plan, run)?;
    // What the API's run view says of links between runs (a child's parent, the children of
    // `workflow` tasks).
    let view = llmo_runtime::view::run(&plan, &workflow, &st);
    let tasks: Map<String, Value> = st
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut v = json!({ "status": t.status.as_str(), "attempts": t.attempts });
            // And of an agent's turns (each with its calls), while it runs too.
            for k in ["children", "turns"] {
                if let Some(c) = view["tasks"][i].get(k).filter(|c| !c.is_null()) {
                    v[k] = c.clone();
                }
            }
            for (k, x) in [("error", t.error.as_ref()), ("reason", t.reason.as_ref())] {
                if let Some(x) = x {
                    v[k] = json!(x);
                }
            }
            if let Some(o) = &t.output {
                v["output"] = Value::clone(o);
            }
            if t.tokens > 0 || t.cost_usd > 0.0 {
                v["tokens"] = json!(t.tokens);
                v["cost_usd"] = json!(t.cost_usd);
            }
            (plan.checked.dag.id(i).to_string(), v)
        })
        .collect();
    let mut out = json!({
        "run_id": st.run_id, "workflow": workflow, "status": st.status.as_str(), "version": st.version,
        "inputs": st.inputs,
        "started_at": st.started_at, "ended_at": st.ended_at, "error": st.error,
        "cost_usd": st.cost_usd, "tokens": st.tokens, "tasks": tasks, "outputs": st.outputs,
    });
    if let Some(r) = &st.rerun_of {
        out["rerun_of"] = json!(r);
    }
    if let Some(p) = &st.parent {
        out["parent"] = json!(p);
    }
    if !st.status.is_terminal() {
        let (_, owner) = liveness(&rt, store.as_ref(), run_id)?;
        out["live"] = json!(owner.is_some());
        out["owner"] = json!(owner);
        if owner.is_none() {
            out["resume"] = json!(format!("llmo resume {run_id} --state {}", state.display()));
        }
    }
    if history {
        let log = rt.block_on(store.history(run_id))?;
        out["history"] = log.iter().map(|t| describe(&plan, t)).collect();
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

/// One line of a run's history, for people.
fn describe(plan: &Plan, t: &Transition) -> Value {
    let id = |task: usize, item: Option<u32>| match item {
        Some(k) => format!("{}[{k}]", plan.checked.dag.id(task)),
        None => plan.checked.dag.id(task).to_string(),
    };
    let what = match &t.event {
        Event::Start => "start".to_string(),
        Event::Cancel => "cancel".to_string(),
        Event::Abort { reason } => format!("aborted: {reason}"),
        Event::Tick => "tick".to_string(),
        Event::Redrive { after, inputs: None } => format!("redrive (of the run ended at version {after})"),
        Event::Redrive { after, inputs: Some(edits) } => {
            let names: Vec<&str> = edits.keys().map(String::as_str).collect();
            format!("redrive (of the run ended at version {after}) with edited inputs: {}", names.join(", "))
        }
        Event::RetryDue { task, item, attempt } => format!("{} retry due (attempt {})", id(*task, *item), attempt + 1),
        Event::WakeDue { task, item, .. } => format!("{} woke", id(*task, *item)),
        Event::Complete { task, item, output, .. }
            if plan.callback_of(*task).is_some()
                || plan.agent_has_callbacks(*task) && output.get("approved").is_none() =>
        {
            format!("{} callback answered", id(*task, *item))
        }
        Event::CallbackFailed { task, item, error, .. } => format!("{} {error}", id(*task, *item)),
        Event::Heartbeat { task, item, .. } => format!("{} heartbeat", id(*task, *item)),
        Event::Complete { task, item, output, .. } => {
            let by = output.get("by").and_then(Value::as_str).unwrap_or("someone");
            match output.get("approved").and_then(Value::as_bool) {
                Some(true) => format!("{} approved by {by}", id(*task, *item)),
                Some(false) => format!("{} rejected by {by}", id(*task, *item)),
                None => format!("{} received its event (from {by})", id(*task, *item)),
            }
        }
        Event::AttemptFinished { task, item, attempt, result, .. } => match result {
            llmo_core::engine::AttemptResult::Succeeded { .. } => {
                format!("{} attempt {attempt} succeeded", id(*task, *item))
            }
            llmo_core::engine::AttemptResult::Failed { error, .. } => {
                format!("{} attempt {attempt} failed: {error}", id(*task, *item))
            }
        },
    };
    json!({ "version": t.version, "at": t.at, "event": what })
}

/// `llmo costs`: cost, tokens and runs per day and workflow (or for the whole state file:
/// `--by tenant`, the embedded runtime having one tenant, `local`).
pub fn costs(by: &str, since: &str, state: &Path, as_json: bool) -> Result<ExitCode> {
    use llmo_runtime::costs::{By, parse_since, roll_up};
    let by: By = by.parse().map_err(anyhow::Error::msg)?;
    let since = llmo_runtime::ports::now_ms().saturating_sub(parse_since(since).map_err(anyhow::Error::msg)?);
    let rt = runtime()?;
    let store = open_store(Some(state), Durability::default())?;
    let runs = rt.block_on(store.list())?;
    let rows = roll_up(&runs, by, "local", since);
    print_costs(&serde_json::to_value(&rows)?, as_json)
}

/// Prints cost rows (`day`, `key`, `runs`, `cost_usd`, `tokens`) as a table or as JSON.
pub fn print_costs(rows: &Value, as_json: bool) -> Result<ExitCode> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows = rows.as_array().cloned().unwrap_or_default();
    println!("{:<10}  {:<32}  {:>6}  {:>12}  {:>10}", "day", "key", "runs", "cost (USD)", "tokens");
    let (mut runs, mut cost, mut tokens) = (0u64, 0.0f64, 0u64);
    for r in &rows {
        let (n, c, t) =
            (r["runs"].as_u64().unwrap_or(0), r["cost_usd"].as_f64().unwrap_or(0.0), r["tokens"].as_u64().unwrap_or(0));
        println!(
            "{:<10}  {:<32}  {n:>6}  {c:>12.6}  {t:>10}",
            r["day"].as_str().unwrap_or(""),
            r["key"].as_str().unwrap_or("")
        );
        runs += n;
        cost += c;
        tokens += t;
    }
    println!("{:<10}  {:<32}  {runs:>6}  {cost:>12.6}  {tokens:>10}", "total", "");
    Ok(ExitCode::SUCCESS)
}

/// `llmo runs`: the runs in a state file, newest first.
pub fn runs(state: &Path, workflow: Option<&str>, status: Option<&str>, as_json: bool) -> Result<ExitCode> {
    // Listing creates nothing: no state file is no runs.
    if !state.exists() {
        if as_json {
            println!("[]");
        } else {
            eprintln!("no runs: {} does not exist", state.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let rt = runtime()?;
    let store = open_store(Some(state), Durability::default())?;
    let runs: Vec<_> = rt
        .block_on(store.list())?
        .into_iter()
        .filter(|r| workflow.is_none_or(|w| r.workflow == w) && status.is_none_or(|s| r.status == s))
        .collect();
    let mut rows = Vec::new();
    for r in runs {
        // A run not ended is either executed by a live process or waits for `llmo resume`.
        let (live, owner) = match r.status.as_str() {
            "running" | "pending" => {
                let (l, o) = liveness(&rt, store.as_ref(), &r.run_id)?;
                (Some(l), o)
            }
            _ => (None, None),
        };
        rows.push((r, live, owner));
    }
    if as_json {
        let out: Vec<Value> = rows
            .iter()
            .map(|(r, live, owner)| {
                json!({"run_id": r.run_id, "workflow": r.workflow, "status": r.status, "live": live.as_ref().map(|_| owner.is_some()),
                       "owner": owner, "started_at": r.started_at, "cost_usd": r.cost_usd, "tokens": r.tokens})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("RUN\tWORKFLOW\tSTATUS\tCOST\tSTARTED");
    for (r, live, _) in rows {
        let status = match live {
            Some(l) => format!("{} ({l})", r.status),
            None => r.status.clone(),
        };
        let started = r.started_at.map_or_else(|| "-".to_string(), utc);
        println!("{}\t{}\t{}\t${:.4}\t{started}", r.run_id, crate::term::clean(&r.workflow), status, r.cost_usd);
    }
    Ok(ExitCode::SUCCESS)
}

/// A time (ms since the epoch) as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let day = llmo_runtime::costs::day_of(ms);
    format!("{day}T{:02}:{:02}:{:02}Z", secs / 3600 % 24, secs / 60 % 60, secs % 60)
}

/// Whether a run not ended is executed by a live process (`live`, naming its pid and host,
/// with the owner) or not (`interrupted`: its owner died or stopped; `llmo resume` goes on).
fn liveness(rt: &tokio::runtime::Runtime, store: &dyn RunStore, run_id: &str) -> Result<(String, Option<String>)> {
    let now = llmo_runtime::ports::now_ms();
    Ok(match rt.block_on(store.owner(run_id))? {
        Some(o) if o.expires_at > now && !o.dead_here() => {
            let who = o.owner.split('#').next().unwrap_or(&o.owner).to_string();
            (format!("live: pid {who}"), Some(o.owner))
        }
        _ => ("interrupted".to_string(), None),
    })
}

fn finish(plan: &Plan, st: &RunState, started: Instant) -> Result<ExitCode> {
    summary(plan, st, started);
    println!("{}", serde_json::to_string_pretty(&st.outputs.clone().unwrap_or(Value::Null))?);
    Ok(if st.status == RunStatus::Succeeded { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Live progress on stderr: a line per task that ends (up to 200 tasks), else a summary line
/// twice a second.
struct Progress {
    ids: Vec<(String, String)>,
    /// Units already announced as waiting for an answer.
    asked: std::collections::HashSet<(usize, Option<u32>, u32)>,
    reported: Vec<bool>,
    seen_ended: u32,
    started: Instant,
    last_line: Instant,
    /// ` --state FILE` for the commands it prints (empty: the run is in memory).
    state: String,
    /// When the last line of `for_each` item counts was printed.
    items_line: Instant,
}

/// The `--state FILE` a printed command needs to reach the run (a run in memory: none).
pub fn state_flag(state: Option<&Path>) -> String {
    state.map(|p| format!(" --state {}", crate::term::clean(&p.display().to_string()))).unwrap_or_default()
}

const PER_TASK_LINES: usize = 200;

impl Progress {
    /// Says once which units wait for an approval or an event, and how to answer them.
    fn announce_waits(&mut self, st: &RunState) {
        for (i, ts) in st.tasks.iter().enumerate() {
            // An agent's calls waiting for an approval or a callback.
            for (k, u) in ts.units.iter().enumerate() {
                let Some(l) = u.agent.as_deref().filter(|_| u.status == TaskStatus::Running) else { continue };
                let item = (ts.units.len() > 1 || u.item.is_some()).then_some(k as u32);
                for c in l.answer_owed() {
                    if !self.asked.insert((i, item, c.attempt)) {
                        continue;
                    }
                    let id = &self.ids[i].0;
                    let at = item.map(|k| format!(" --item {k}")).unwrap_or_default();
                    if c.status == llmo_core::agent::CallStatus::AwaitingCallback {
                        eprintln!(
                            "⏸ {id} call {} ({}) waits for its callback: llmo callback TOKEN --output JSON{} (the token came with its call)",
                            crate::term::clean(&c.id),
                            crate::term::clean(&c.name),
                            self.state
                        );
                    } else {
                        eprintln!(
                            "⏸ {id} call {} ({}) waits for approval: llmo approve {} {id}{at} --call {}{} (or llmo reject)",
                            crate::term::clean(&c.id),
                            crate::term::clean(&c.name),
                            st.run_id,
                            crate::term::clean(&c.id),
                            self.state
                        );
                    }
                }
            }
            if ts.status != TaskStatus::Waiting {
                continue;
            }
            for (k, u) in ts.units.iter().enumerate() {
                let Some(w) = u.waits.as_ref().filter(|_| u.status == TaskStatus::Waiting) else { continue };
                let item = (ts.units.len() > 1 || u.item.is_some()).then_some(k as u32);
                if !self.asked.insert((i, item, u.attempt)) {
                    continue;
                }
                let id = &self.ids[i].0;
                let at = item.map(|k| format!(" --item {k}")).unwrap_or_default();
                match w.kind {
                    llmo_core::engine::WaitKind::Approval => eprintln!(
                        "⏸ {id}{} waits for approval{}: llmo approve {} {id}{at}{} (or llmo reject)",
                        item.map(|k| format!("[{k}]")).unwrap_or_default(),
                        w.prompt.as_deref().map(|p| format!(" (\"{}\")", crate::term::clean(p))).unwrap_or_default(),
                        st.run_id,
                        self.state
                    ),
                    llmo_core::engine::WaitKind::Event => eprintln!(
                        "⏸ {id}{} waits for event `{}` key `{}`: llmo send-event {} --key '{}'{}",
                        item.map(|k| format!("[{k}]")).unwrap_or_default(),
                        crate::term::clean(w.event.as_deref().unwrap_or_default()),
                        crate::term::clean(w.key.as_deref().unwrap_or_default()),
                        crate::term::clean(w.event.as_deref().unwrap_or_default()),
                        crate::term::clean(w.key.as_deref().unwrap_or_default()),
                        self.state
                    ),
                    llmo_core::engine::WaitKind::Callback => eprintln!(
                        "⏸ {id}{} waits for its callback: llmo callback TOKEN --output JSON{} (the token came with its call)",
                        item.map(|k| format!("[{k}]")).unwrap_or_default(),
                        self.state
                    ),
                    llmo_core::engine::WaitKind::Sleep => {}
                }
            }
        }
    }
}

impl Progress {
    fn new(plan: &Plan, resumed: Option<&RunState>) -> Self {
        let tasks = &plan.checked.workflow.spec.tasks;
        Progress {
            ids: tasks.iter().map(|t| (t.id.clone(), t.ty.clone())).collect(),
            asked: Default::default(),
            // Tasks that ended before an interruption are not reported again.
            reported: match resumed {
                Some(st) => st.tasks.iter().map(|t| t.status.is_terminal()).collect(),
                None => vec![false; tasks.len()],
            },
            seen_ended: resumed.map_or(0, |s| s.ended_tasks),
            started: Instant::now(),
            last_line: Instant::now(),
            state: String::new(),
            items_line: Instant::now().checked_sub(Duration::from_secs(1)).unwrap_or_else(Instant::now),
        }
    }

    /// Prints commands with `--state FILE` (the run's state file).
    fn at(mut self, state: Option<&Path>) -> Self {
        self.state = state_flag(state);
        self
    }
}

impl Progress {
    /// Says when an attempt failed and will be retried, as it happens (with why).
    fn announce_retries(&mut self, st: &RunState, stored: &[Transition]) {
        for t in stored {
            let llmo_core::engine::Event::AttemptFinished { task, item, attempt, result, .. } = &t.event else {
                continue;
            };
            let llmo_core::engine::AttemptResult::Failed { error, .. } = result else { continue };
            let unit = st.tasks.get(*task).and_then(|ts| ts.units.get(item.unwrap_or(0) as usize));
            if unit.is_some_and(|u| u.status == TaskStatus::RetryWait && u.attempt == *attempt) {
                let at = item.map(|k| format!("[{k}]")).unwrap_or_default();
                eprintln!(
                    "↻ {}{at} attempt {attempt} failed: {}; retrying",
                    self.ids[*task].0,
                    crate::term::clean(error)
                );
            }
        }
    }

    /// A running `for_each` task's items done, failed and running, at most twice a second.
    fn announce_items(&mut self, st: &RunState) {
        if self.items_line.elapsed() < Duration::from_millis(500) {
            return;
        }
        for (i, ts) in st.tasks.iter().enumerate() {
            if ts.status.is_terminal() || ts.units.len() < 2 {
                continue;
            }
            let count = |s: TaskStatus| ts.units.iter().filter(|u| u.status == s).count();
            let (done, failed, running) =
                (count(TaskStatus::Succeeded), count(TaskStatus::Failed), count(TaskStatus::Running));
            if done + failed + running == 0 {
                continue;
            }
            self.items_line = Instant::now();
            eprintln!("  {}: {done}/{} items done, {failed} failed, {running} running", self.ids[i].0, ts.units.len());
        }
    }
}

impl Observer for Progress {
    fn batch(&mut self, st: &RunState, stored: &[Transition]) {
        self.announce_waits(st);
        self.announce_retries(st, stored);
        self.announce_items(st);
        let total = self.ids.len();
        if total > PER_TASK_LINES {
            if self.last_line.elapsed() >= Duration::from_millis(500) || st.status.is_terminal() {
                self.last_line = Instant::now();
                let failed = st.tasks.iter().filter(|t| t.status == TaskStatus::Failed).count();
                eprintln!(
                    "[{}/{total}] {} running, {failed} failed  {:.1}s, ${:.4} so far",
                    st.ended_tasks,
                    st.running,
                    self.started.elapsed().as_secs_f64(),
                    st.cost_usd
                );
            }
            return;
        }
        if st.ended_tasks == self.seen_ended {
            return;
        }
        self.seen_ended = st.ended_tasks;
        for (i, ts) in st.tasks.iter().enumerate() {
            if self.reported[i] || !ts.status.is_terminal() {
                continue;
            }
            self.reported[i] = true;
            let done = self.reported.iter().filter(|r| **r).count();
            let mark = match ts.status {
                TaskStatus::Succeeded => "✓",
                TaskStatus::Failed => "✗",
                TaskStatus::Skipped => "–",
                _ => "∅",
            };
            let detail = match ts.status {
                TaskStatus::Failed => format!(": {}", crate::term::clean(ts.error.as_deref().unwrap_or("failed"))),
                TaskStatus::Skipped | TaskStatus::Cancelled => {
                    format!(" ({})", crate::term::clean(ts.reason.as_deref().unwrap_or("")))
                }
                _ => String::new(),
            };
            let (id, ty) = &self.ids[i];
            eprintln!(
                "[{done:>width$}/{total}] {mark} {id} ({ty}){detail}  {:.1}s, {} running, ${:.4} so far",
                self.started.elapsed().as_secs_f64(),
                st.running,
                st.cost_usd,
                width = total.to_string().len()
            );
        }
    }

    fn hook(&mut self, o: &HookOutcome) {
        match &o.result {
            llmo_core::engine::AttemptResult::Succeeded { .. } => eprintln!("hook {}: done", o.name),
            llmo_core::engine::AttemptResult::Failed { error, .. } => {
                eprintln!("hook {}: failed: {}", o.name, crate::term::clean(error))
            }
        }
    }
}

fn summary(plan: &Plan, st: &RunState, started: Instant) {
    let count = |s: TaskStatus| st.tasks.iter().filter(|t| t.status == s).count();
    eprintln!(
        "{}: {} in {:.2}s: {} succeeded, {} failed, {} skipped, {} cancelled; {} tokens, ${:.4}",
        st.run_id,
        st.status.as_str(),
        started.elapsed().as_secs_f64(),
        count(TaskStatus::Succeeded),
        count(TaskStatus::Failed),
        count(TaskStatus::Skipped),
        count(TaskStatus::Cancelled),
        st.tokens,
        st.cost_usd
    );
    if let Some(e) = &st.error {
        eprintln!("{}: {}", plan.checked.workflow.metadata.name, crate::term::clean(e));
    }
}
