//! `llmo waiting`, `llmo approve`, `llmo reject` and `llmo send-event`: the tasks that wait for
//! a person or an event, and answering them, in a state file (a run started with `llmo run
//! --state`; the process running it picks the answer up within its poll) or through the
//! serverless API (`--api`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use llmo_core::engine::waits::{AnswerError, Approval};
use llmo_core::engine::{AttemptId, Plan};
use llmo_core::source::SourceFile;
use llmo_core::validate::Validator;
use llmo_runtime::ports::SystemClock;
use llmo_runtime::store::{Durability, SqliteStore, StoredRun};
use llmo_runtime::waits;
use serde_json::{Map, Value, json};

/// What the caller asks: approve or reject (with form fields and a comment).
pub struct Answer {
    pub approved: bool,
    pub fields: Vec<String>,
    pub comment: Option<String>,
    pub item: Option<u32>,
    /// An agent's tool call (its id).
    pub call: Option<String>,
}

impl Answer {
    pub fn fields_map(&self) -> Result<Map<String, Value>> {
        let mut m = Map::new();
        for f in &self.fields {
            let Some((k, v)) = f.split_once('=') else { bail!("--field `{f}` is not NAME=VALUE") };
            let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
            m.insert(k.to_string(), v);
        }
        Ok(m)
    }
}

fn plan_of(run: &StoredRun) -> Result<Plan, String> {
    let outcome = Validator::shared().validate(&SourceFile::new(run.source_name.clone(), run.source.clone()));
    outcome
        .checked
        .map(Plan::new)
        .ok_or_else(|| format!("the stored workflow ({}) no longer validates", run.source_name))
}

fn store(state: &Path) -> Result<SqliteStore> {
    if !state.exists() {
        bail!("no state file {} (runs that wait for answers are kept with `llmo run --state FILE`)", state.display());
    }
    SqliteStore::open(state, Durability::default()).with_context(|| format!("opening {}", state.display()))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")
}

/// Who answers from this machine: `$USER` on it.
fn me() -> String {
    format!("local:{}", std::env::var("USER").unwrap_or_else(|_| "user".into()))
}

/// `llmo waiting --state FILE`.
pub fn list(state: &Path, as_json: bool) -> Result<ExitCode> {
    let rt = runtime()?;
    let store = store(state)?;
    let found = rt.block_on(waits::list(&store, &plan_of, &|_, _, _, _| {}, None, "", None, 500))?;
    print_waiting(&found.into_iter().map(|(_, v)| v).collect::<Vec<_>>(), as_json)
}

pub fn print_waiting(rows: &[Value], as_json: bool) -> Result<ExitCode> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        eprintln!("no task is waiting for an answer");
        return Ok(ExitCode::SUCCESS);
    }
    for r in rows {
        let task = match r["item"].as_u64() {
            Some(k) => format!("{}[{k}]", r["task"].as_str().unwrap_or("?")),
            None => r["task"].as_str().unwrap_or("?").to_string(),
        };
        let what = match r["kind"].as_str() {
            Some("event") => {
                format!("event `{}` key `{}`", r["event"].as_str().unwrap_or(""), r["key"].as_str().unwrap_or(""))
            }
            _ => {
                let fields: Vec<String> = r["fields"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, f)| format!("{k}: {}", f["type"].as_str().unwrap_or("?"))).collect())
                    .unwrap_or_default();
                let mut prompt = r["prompt"].as_str().map(|p| format!(" \"{p}\"")).unwrap_or_default();
                if let Some(c) = r["call"].as_object() {
                    prompt = format!(
                        " of call {} `{}` {}{prompt}",
                        c.get("id").and_then(Value::as_str).unwrap_or("?"),
                        c.get("name").and_then(Value::as_str).unwrap_or("?"),
                        c.get("arguments").unwrap_or(&Value::Null)
                    );
                }
                if fields.is_empty() {
                    format!("approval{prompt}")
                } else {
                    format!("approval{prompt} [{}]", fields.join(", "))
                }
            }
        };
        let link = r["link"].as_str().map(|l| format!("\n    link: {}", crate::term::clean(l))).unwrap_or_default();
        let line = format!(
            "{}  {}  {task}  {what}",
            r["run_id"].as_str().unwrap_or("?"),
            r["workflow"].as_str().unwrap_or("?")
        );
        println!("{}{link}", crate::term::clean(&line));
    }
    Ok(ExitCode::SUCCESS)
}

fn refused(e: waits::Error) -> Result<ExitCode> {
    match e {
        waits::Error::Answer(AnswerError::NotWaiting(why)) => {
            eprintln!("error: {why}");
            Ok(ExitCode::from(3))
        }
        waits::Error::Answer(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
        waits::Error::NoSuchRun(id) => bail!("no run `{id}`"),
        e => Err(e.into()),
    }
}

/// `llmo approve|reject RUN TASK --state FILE`.
pub fn answer(run_id: &str, task: &str, a: &Answer, state: &Path) -> Result<ExitCode> {
    let rt = runtime()?;
    let store = store(state)?;
    let (plan, st) = rt.block_on(waits::load(&store, &plan_of, run_id)).map_err(anyhow::Error::from)?;
    let mut fields = a.fields_map()?;
    // A `string` field takes its text as written, even when it reads as JSON (`-f po=2024`).
    let declared = plan.answering(&st, task, a.item, a.call.as_deref()).ok().and_then(|id| plan.form_at(&st, id));
    if let Some(form) = declared {
        for f in &a.fields {
            let Some((k, v)) = f.split_once('=') else { continue };
            if form.fields.get(k).is_some_and(|d| d.ty == llmo_core::tasks::FieldType::String)
                && fields.get(k).is_some_and(|g| !g.is_string())
            {
                fields.insert(k.to_string(), Value::String(v.to_string()));
            }
        }
    }
    let approval = Approval { approved: a.approved, fields, comment: a.comment.clone(), call: a.call.clone() };
    let by = me();
    let r = rt.block_on(waits::answer(&plan, &store, &SystemClock::default(), run_id, |st| {
        plan.approve(st, task, a.item, &approval, &by)
    }));
    match r {
        Ok(_) => {
            let verb = if a.approved { "approved" } else { "rejected" };
            eprintln!(
                "{run_id}: `{task}` {verb} by {by} (the process running the run continues it; else `llmo resume {run_id}{}`)",
                crate::run::state_flag(Some(state))
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => refused(e),
    }
}

/// `llmo send-event NAME --key K --payload JSON --state FILE`: every unit of every run in the
/// file waiting for that event and key receives it.
pub fn send_event(name: &str, key: &str, payload: &Value, state: &Path) -> Result<ExitCode> {
    let rt = runtime()?;
    let store = store(state)?;
    let by = me();
    let found = rt.block_on(waits::list(&store, &plan_of, &|_, _, _, _| {}, None, "", Some((name, key)), 1000))?;
    let mut delivered = Vec::new();
    for (w, _) in found {
        let (plan, _) = rt.block_on(waits::load(&store, &plan_of, &w.run_id))?;
        let id: AttemptId = w.attempt_id();
        let r = rt.block_on(waits::answer(&plan, &store, &SystemClock::default(), &w.run_id, |st| {
            plan.deliver(st, id, payload, &by)
        }));
        match r {
            Ok(_) => delivered.push(json!({"run_id": w.run_id, "task": plan.checked.dag.id(w.task), "item": w.item})),
            Err(waits::Error::Answer(AnswerError::NotWaiting(_))) => {}
            Err(e) => return Err(e.into()),
        }
    }
    eprintln!(
        "event `{name}` key `{key}`: delivered to {} waiting task{}",
        delivered.len(),
        if delivered.len() == 1 { "" } else { "s" }
    );
    println!("{}", serde_json::to_string_pretty(&json!({"delivered": delivered}))?);
    // An event nothing waited for is most often a typo of its name or key: say so in the code.
    Ok(if delivered.is_empty() { ExitCode::from(3) } else { ExitCode::SUCCESS })
}

/// `llmo callback TOKEN --state FILE`: answers a callback's task token in a state file. The
/// token must verify with the file's key (`LLMO_LINK_SECRET`, else the file's development
/// secret: the one `llmo run --state` and `llmo serve` mint with).
pub fn callback(token: &str, answer: &llmo_runtime::callbacks::Answer, state: &Path) -> Result<ExitCode> {
    use llmo_runtime::callbacks::{Answer as Cb, Callbacks};
    use llmo_runtime::ports::Clock;
    let rt = runtime()?;
    let store = store(state)?;
    let claims = match Callbacks::new(&crate::server::local_link_secret(state)?, None).verify(token) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e} (for the runs in {})", state.display());
            return Ok(ExitCode::from(2));
        }
    };
    let (plan, _) = rt.block_on(waits::load(&store, &plan_of, &claims.run)).map_err(anyhow::Error::from)?;
    let clock = SystemClock::default();
    let now = clock.now();
    let r = rt.block_on(waits::answer(&plan, &store, &clock, &claims.run, |st| answer.event(&plan, st, &claims, now)));
    let what = match claims.item {
        Some(k) => format!("`{}`[{k}] attempt {}", claims.task, claims.attempt),
        None => format!("`{}` attempt {}", claims.task, claims.attempt),
    };
    let recorded = match r {
        Ok(_) => true,
        // A heartbeat close to the last one is not stored; the attempt lives all the same.
        Err(waits::Error::Answer(AnswerError::NotWaiting(_))) if *answer == Cb::Heartbeat => false,
        Err(e) => return refused(e),
    };
    let said = match answer {
        Cb::Output(_) => "answered: the task succeeds",
        Cb::Error { retryable: true, .. } => "failed (its `retry` applies)",
        Cb::Error { .. } => "failed for good",
        Cb::Heartbeat => "heartbeat",
    };
    eprintln!(
        "{}: {what} {said} (the process running the run continues it; else `llmo resume {}{}`)",
        claims.run,
        claims.run,
        crate::run::state_flag(Some(state))
    );
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "run_id": claims.run, "task": claims.task, "item": claims.item, "attempt": claims.attempt, "recorded": recorded,
        }))?
    );
    Ok(ExitCode::SUCCESS)
}
