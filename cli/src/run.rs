//! `llmo run`: runs a workflow in this process, in memory, one attempt at a time.
//!
//! A first, sequential embedded runner over the engine's transition function: it applies
//! events exactly as the durable runtimes will (apply → commands → execute), with the
//! built-in `transform`, `evaluate` and `policy` task types and the offline `mock` model
//! provider. Not yet here (issue 3): real model providers, `http`, a durable store,
//! concurrency and resume.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use llmo_core::engine::builtin::{self, TaskError};
use llmo_core::engine::{AttemptResult, Command, Event, Millis, Plan, RunState, RunStatus, TaskStatus, Usage};
use llmo_core::validate::Checked;
use serde_json::{Map, Value};

pub struct Options {
    pub inputs: Vec<String>,
    pub input_file: Option<PathBuf>,
    /// Answer every `llm` task (and model-graded check) with the mock provider.
    pub mock: bool,
}

fn epoch_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as Millis)
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

pub fn run(checked: Checked, file: &Path, opts: &Options) -> Result<ExitCode> {
    let given = given_inputs(opts)?;
    let inputs = match llmo_core::inputs::resolve_inputs(&checked.workflow.spec.inputs, &given) {
        Ok(i) => i,
        Err(errors) => {
            for e in errors {
                eprintln!("error: {}: input `{}`{}: {}", file.display(), e.input, e.path, e.message);
            }
            return Ok(ExitCode::from(2));
        }
    };
    let plan = Plan::new(checked);
    let models = llm_models(&plan);
    let run_id = format!("run-{}", epoch_ms());
    let mut st = plan.new_run(run_id.clone(), inputs);
    let started = Instant::now();
    let base = epoch_ms();
    let now = || base + started.elapsed().as_millis() as Millis;
    let total = plan.task_count();
    eprintln!("{run_id}: {} ({total} tasks)", plan.checked.workflow.metadata.name);

    let mut queue: VecDeque<Command> = plan.apply(&mut st, &Event::Start, now()).expect("a new run starts").into();
    let mut timers: Vec<(Millis, Event)> = Vec::new();
    let mut reported = vec![false; total];
    loop {
        report_progress(&plan, &st, &mut reported, started);
        if let Some(cmd) = queue.pop_front() {
            match cmd {
                Command::Execute { task, item, attempt } => {
                    let result = execute(&plan, &st, task, item, opts.mock, &models);
                    if let AttemptResult::Failed { error, retryable: true, .. } = &result {
                        eprintln!("  ↻ {} attempt {attempt} failed: {error}", label(&plan, task, item));
                    }
                    let event = Event::AttemptFinished { task, item, attempt, result };
                    if let Ok(cmds) = plan.apply(&mut st, &event, now()) {
                        queue.extend(cmds);
                    }
                }
                Command::ScheduleRetry { task, item, attempt, at } => {
                    timers.push((at, Event::RetryDue { task, item, attempt }));
                }
                Command::CancelRunning { .. } | Command::Finished { .. } => {}
            }
            continue;
        }
        if st.status.is_terminal() {
            break;
        }
        let due = timers.iter().map(|(at, _)| *at).chain(st.deadline).min();
        let Some(at) = due else { bail!("run stalled with nothing left to do (an engine bug)") };
        std::thread::sleep(Duration::from_millis(at.saturating_sub(now())));
        let mut fired: Vec<Event> = Vec::new();
        timers.retain(|(t, e)| {
            if *t <= now() {
                fired.push(e.clone());
                false
            } else {
                true
            }
        });
        fired.push(Event::Tick);
        for e in fired {
            if let Ok(cmds) = plan.apply(&mut st, &e, now()) {
                queue.extend(cmds);
            }
        }
    }
    report_progress(&plan, &st, &mut reported, started);
    summary(&plan, &st, started);
    println!("{}", serde_json::to_string_pretty(&st.outputs.clone().unwrap_or(Value::Null))?);
    Ok(if st.status == RunStatus::Succeeded { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn label(plan: &Plan, task: usize, item: Option<u32>) -> String {
    let id = plan.checked.dag.id(task);
    match item {
        Some(k) => format!("{id}[{k}]"),
        None => id.to_string(),
    }
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
