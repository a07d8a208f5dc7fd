//! `llmo run` / `resume` / `status` / `runs`: runs workflows in this process through
//! `llmo_runtime::Runner`, in memory or in a SQLite file (`--state`), one attempt at a time,
//! with the built-in `transform`, `evaluate` and `policy` task types and the offline `mock`
//! model provider. Not yet here (issue 3): real model providers, `http`, concurrency.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use llmo_core::engine::builtin::{self, TaskError};
use llmo_core::engine::{AttemptResult, Plan, RunState, RunStatus, TaskStatus, Usage};
use llmo_core::source::SourceFile;
use llmo_core::validate::{Checked, Validator};
use llmo_runtime::runner::{Runner, now_ms};
use llmo_runtime::store::{MemoryStore, SqliteStore, Store};
use serde_json::{Map, Value};

pub struct Options {
    pub inputs: Vec<String>,
    pub input_file: Option<PathBuf>,
    /// Answer every `llm` task (and model-graded check) with the mock provider.
    pub mock: bool,
    /// SQLite file keeping runs (in memory when absent).
    pub state: Option<PathBuf>,
}

fn open_store(state: Option<&Path>) -> Result<Box<dyn Store>> {
    Ok(match state {
        Some(p) => Box::new(SqliteStore::open(p).with_context(|| format!("opening {}", p.display()))?),
        None => Box::new(MemoryStore::default()),
    })
}

/// Parses `--input k=v` (v as JSON when it parses, else as a string) and `--input-file`.
fn given_inputs(opts: &Options) -> Result<Map<String, Value>> {
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
    for kv in &opts.inputs {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--input takes NAME=VALUE, got `{kv}`");
        };
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        given.insert(k.to_string(), value);
    }
    Ok(given)
}

pub fn run(checked: Checked, source: &SourceFile, opts: &Options) -> Result<ExitCode> {
    let given = given_inputs(opts)?;
    let inputs = match llmo_core::inputs::resolve_inputs(&checked.workflow.spec.inputs, &given) {
        Ok(i) => i,
        Err(errors) => {
            for e in errors {
                eprintln!("error: {}: input `{}`{}: {}", source.name(), e.input, e.path, e.message);
            }
            return Ok(ExitCode::from(2));
        }
    };
    let store = open_store(opts.state.as_deref())?;
    let plan = Plan::new(checked);
    let run_id = format!("run-{}", now_ms());
    eprintln!("{run_id}: {} ({} tasks)", plan.checked.workflow.metadata.name, plan.task_count());
    let runner = Runner { plan: &plan, store: store.as_ref() };
    let models = llm_models(&plan);
    let mut exec =
        |plan: &Plan, st: &RunState, task: usize, item: Option<u32>| execute(plan, st, task, item, opts.mock, &models);
    let started = Instant::now();
    let mut reported = vec![false; plan.task_count()];
    let st = runner.start(&run_id, inputs, source.name(), source.text(), &mut exec, &mut |st| {
        report_progress(&plan, st, &mut reported, started)
    })?;
    finish(&plan, &st, started)
}

/// `llmo resume RUN_ID`: continues a stored run where it stopped.
pub fn resume(validator: &Validator, run_id: &str, state: &Path, mock: bool) -> Result<ExitCode> {
    let store = open_store(Some(state))?;
    let Some(record) = store.load(run_id)? else {
        bail!("no run `{run_id}` in {}", state.display());
    };
    let outcome = validator.validate(&SourceFile::new(record.source_name.clone(), record.source.clone()));
    let Some(checked) = outcome.checked else {
        bail!("the stored workflow of `{run_id}` no longer validates");
    };
    let plan = Plan::new(checked);
    if record.state.status.is_terminal() {
        eprintln!("{run_id}: already {}", record.state.status.as_str());
        return finish(&plan, &record.state, Instant::now());
    }
    eprintln!("{run_id}: resuming {} ({} tasks)", record.workflow, plan.task_count());
    let runner = Runner { plan: &plan, store: store.as_ref() };
    let models = llm_models(&plan);
    let mut exec =
        |plan: &Plan, st: &RunState, task: usize, item: Option<u32>| execute(plan, st, task, item, mock, &models);
    let started = Instant::now();
    // Tasks that ended before the interruption are not reported again.
    let mut reported: Vec<bool> = record.state.tasks.iter().map(|t| t.status.is_terminal()).collect();
    let st = runner.resume(run_id, &mut exec, &mut |st| report_progress(&plan, st, &mut reported, started))?;
    finish(&plan, &st, started)
}

/// `llmo status RUN_ID`: the stored state of a run, as JSON.
pub fn status(run_id: &str, state: &Path) -> Result<ExitCode> {
    let store = open_store(Some(state))?;
    let Some(record) = store.load(run_id)? else {
        bail!("no run `{run_id}` in {}", state.display());
    };
    let outcome = Validator::default().validate(&SourceFile::new(record.source_name.clone(), record.source.clone()));
    let ids: Vec<String> = match &outcome.checked {
        Some(c) => c.workflow.spec.tasks.iter().map(|t| t.id.clone()).collect(),
        None => (0..record.state.tasks.len()).map(|i| i.to_string()).collect(),
    };
    let st = &record.state;
    let tasks: serde_json::Map<String, Value> = st
        .tasks
        .iter()
        .zip(&ids)
        .map(|(t, id)| {
            (
                id.clone(),
                serde_json::json!({ "status": t.status.as_str(), "attempts": t.attempts, "error": t.error, "reason": t.reason }),
            )
        })
        .collect();
    let out = serde_json::json!({
        "run_id": st.run_id, "workflow": record.workflow, "status": st.status.as_str(), "version": st.version,
        "started_at": st.started_at, "ended_at": st.ended_at, "error": st.error,
        "cost_usd": st.cost_usd, "tokens": st.tokens, "tasks": tasks, "outputs": st.outputs,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

/// `llmo runs`: the runs in a state file, newest first.
pub fn runs(state: &Path) -> Result<ExitCode> {
    let store = open_store(Some(state))?;
    for r in store.list()? {
        println!("{}	{}	{}	${:.4}", r.run_id, r.workflow, r.status, r.cost_usd);
    }
    Ok(ExitCode::SUCCESS)
}

fn finish(plan: &Plan, st: &RunState, started: Instant) -> Result<ExitCode> {
    summary(plan, st, started);
    println!("{}", serde_json::to_string_pretty(&st.outputs.clone().unwrap_or(Value::Null))?);
    Ok(if st.status == RunStatus::Succeeded { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `provider/model` of every llm task, for policy checks.
fn llm_models(plan: &Plan) -> Vec<String> {
    let tasks = &plan.checked.workflow.spec.tasks;
    tasks
        .iter()
        .filter(|t| t.ty == "llm")
        .flat_map(|t| llmo_core::tasks::llm_models(&t.with))
        .map(|(_, model)| model)
        .collect()
}

fn execute(plan: &Plan, st: &RunState, task: usize, item: Option<u32>, mock: bool, models: &[String]) -> AttemptResult {
    let t = &plan.checked.workflow.spec.tasks[task];
    let with = match plan.render_with(st, task, item) {
        Ok(w) => w,
        Err(e) => return failed(TaskError::fatal(format!("rendering `with`: {e}"))),
    };
    let uses_mock = |provider: Option<&str>| mock || provider == Some("mock");
    let result = match t.ty.as_str() {
        "transform" => builtin::transform(plan, &with, &plan.context(st, Some(task), item)),
        "evaluate" => builtin::evaluate(&with, |_, model, provider| {
            if uses_mock(provider) {
                Ok(0.8)
            } else {
                Err(TaskError::fatal(format!(
                    "llm_judge with model `{model}` needs a model provider, not available in this build yet; run with --mock"
                )))
            }
        }),
        "policy" => {
            let left = plan.checked.workflow.spec.budget.and_then(|b| b.max_cost_usd).map(|m| m - st.cost_usd);
            builtin::policy(&with, models, left)
        }
        "llm" => {
            let provider = with.get("provider").and_then(Value::as_str);
            if uses_mock(provider) {
                // Lets tests interrupt a run while a model call is in flight.
                if let Some(ms) = std::env::var("LLMO_MOCK_DELAY_MS").ok().and_then(|v| v.parse().ok()) {
                    std::thread::sleep(Duration::from_millis(ms));
                }
                Ok(builtin::mock_llm(&with))
            } else {
                Err(TaskError::fatal(format!(
                    "model provider `{}` is not available in this build yet; run with --mock for offline output",
                    provider.unwrap_or("default")
                )))
            }
        }
        other => Err(TaskError::fatal(format!("the `{other}` executor is not available in this build yet"))),
    };
    match result {
        Ok(output) => {
            let tokens = ["prompt_tokens", "completion_tokens"]
                .iter()
                .filter_map(|k| output.pointer(&format!("/usage/{k}")).and_then(Value::as_u64))
                .sum();
            let cost_usd = output.pointer("/usage/cost_usd").and_then(Value::as_f64).unwrap_or(0.0);
            AttemptResult::Succeeded { output, usage: Usage { tokens, cost_usd } }
        }
        Err(e) => failed(e),
    }
}

fn failed(e: TaskError) -> AttemptResult {
    AttemptResult::Failed { error: e.message, retryable: e.retryable, usage: Usage::default() }
}

fn report_progress(plan: &Plan, st: &RunState, reported: &mut [bool], started: Instant) {
    let total = reported.len();
    for (i, ts) in st.tasks.iter().enumerate() {
        if reported[i] || !ts.status.is_terminal() {
            continue;
        }
        reported[i] = true;
        let done = reported.iter().filter(|r| **r).count();
        let mark = match ts.status {
            TaskStatus::Succeeded => "✓",
            TaskStatus::Failed => "✗",
            TaskStatus::Skipped => "–",
            _ => "∅",
        };
        let detail = match ts.status {
            TaskStatus::Failed => format!(": {}", ts.error.as_deref().unwrap_or("failed")),
            TaskStatus::Skipped | TaskStatus::Cancelled => format!(" ({})", ts.reason.as_deref().unwrap_or("")),
            _ => String::new(),
        };
        let ty = &plan.checked.workflow.spec.tasks[i].ty;
        eprintln!(
            "[{done:>width$}/{total}] {mark} {} ({ty}){detail}  {:.1}s, ${:.4} so far",
            plan.checked.dag.id(i),
            started.elapsed().as_secs_f64(),
            st.cost_usd,
            width = total.to_string().len()
        );
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
        eprintln!("{}: {e}", plan.checked.workflow.metadata.name);
    }
}
