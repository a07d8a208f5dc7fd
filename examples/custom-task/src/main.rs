//! `custom-task [--state FILE] [--live] WORKFLOW [key=value ...]`: runs a workflow that may use
//! the `sentiment` task type, keeping the run in a SQLite file, then reads it back. Models are
//! answered by the mock provider unless `--live` (then the usual provider keys are needed).
//! `custom-task --resume RUN_ID [--state FILE]` continues a run whose process stopped;
//! `custom-task --schema` prints the editor schema with `sentiment` (`schema.json` here).
//!
//!   cargo run -p llmo-example-custom-task -- examples/custom-task/review.yaml \
//!     message="The app is great, thanks for the fast fix"

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use llmo_runtime::store::{Durability, SqliteStore};
use serde_json::{Map, Value};

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut state, mut live, mut resume, mut file, mut inputs) =
        (PathBuf::from(".llmo/custom-task.db"), false, None, None, Map::new());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--state" => state = args.next().context("--state FILE")?.into(),
            "--live" => live = true,
            "--resume" => resume = Some(args.next().context("--resume RUN_ID")?),
            "--schema" => {
                // The editor schema with `sentiment` (examples/custom-task/schema.json).
                let engine =
                    llmo_example_custom_task::engine(Arc::new(llmo_runtime::store::MemoryStore::default()), true);
                println!("{}", serde_json::to_string_pretty(&engine.schema())?);
                return Ok(());
            }
            "-h" | "--help" => {
                println!("custom-task [--state FILE] [--live] WORKFLOW [key=value ...] | --resume RUN_ID");
                return Ok(());
            }
            kv if kv.contains('=') && file.is_some() => {
                let (k, v) = kv.split_once('=').expect("=");
                inputs.insert(k.to_string(), serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string())));
            }
            path if file.is_none() => file = Some(PathBuf::from(path)),
            other => bail!("unexpected argument `{other}`"),
        }
    }
    if let Some(dir) = state.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let store = Arc::new(SqliteStore::open(&state, Durability::Process).with_context(|| state.display().to_string())?);
    let engine = llmo_example_custom_task::engine(store, !live);
    let finished = match (resume, file) {
        (Some(run_id), _) => engine.resume(&run_id).await?,
        (None, Some(file)) => {
            let source = std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
            let name = file.display().to_string();
            let outcome = engine.validate(&name, &source);
            if outcome.checked.is_none() {
                for r in outcome.report.records() {
                    let at = r.line.map(|l| format!(":{l}:{}", r.column.unwrap_or(1))).unwrap_or_default();
                    eprintln!("{}{at}: {} {}: {}", r.file, r.code, r.path, r.message);
                }
                bail!("{name} does not validate");
            }
            engine.run(&name, &source, inputs).await?
        }
        (None, None) => bail!("custom-task [--state FILE] WORKFLOW [key=value ...] | --resume RUN_ID"),
    };
    let run = engine.get(&finished.state.run_id).await?.context("the run just stored")?;
    eprintln!("{}: {} ({} runs in {})", run.run_id, run.status.as_str(), engine.list().await?.len(), state.display());
    println!("{}", serde_json::to_string_pretty(&run.outputs)?);
    Ok(())
}
