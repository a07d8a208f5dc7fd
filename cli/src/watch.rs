//! `llmo watch RUN`: follows a run's events as they happen, from a state file (read as
//! `llmo serve` and `llmo run --state` write it) or, with `--api`, from
//! `GET /runs/{id}/events` (server-sent events), reconnecting with `Last-Event-ID` when the
//! stream ends before the run does. One line per event on stdout (`--json`: the event's data),
//! until the run ends: exit 0 when it succeeded, 1 otherwise.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use llmo_runtime::stream::{EventId, Follower};
use serde_json::Value;

/// Prints one event (`event` named, with its `data`).
fn print(event: &str, data: &Value, json: bool) {
    if json {
        println!("{}", serde_json::json!({"event": event, "data": data}));
        return;
    }
    let clean = |v: &Value| crate::term::clean(&v.as_str().map_or_else(|| v.to_string(), str::to_string)).into_owned();
    match event {
        "transition" => {
            let kind = data.pointer("/event/event").map(clean).unwrap_or_default();
            let changes: Vec<String> = data["tasks"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{} → {}", crate::term::clean(k), clean(v)))
                .collect();
            let changes = if changes.is_empty() { String::new() } else { format!(": {}", changes.join(", ")) };
            println!("#{} {kind}{changes} (run {})", data["version"], clean(&data["run"]));
        }
        "end" => {
            let error = data["error"].as_str().map(|e| format!(": {}", crate::term::clean(e))).unwrap_or_default();
            println!("run {}{error}", clean(&data["status"]));
            println!("{}", serde_json::to_string_pretty(&data["outputs"]).unwrap_or_default());
        }
        other => println!("{other}: {data}"),
    }
}

fn exit_of(end: &Value) -> ExitCode {
    if end["status"] == "succeeded" { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

/// Follows a run of a state file.
pub fn local(run_id: &str, state: &Path, json: bool) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let store: Arc<dyn llmo_runtime::store::RunStore> = Arc::new(
            llmo_runtime::store::SqliteStore::open(state, Default::default())
                .with_context(|| format!("opening {}", state.display()))?,
        );
        let Some(run) = store.load(run_id).await? else { bail!("no run `{run_id}` in {}", state.display()) };
        let outcome = llmo_core::validate::Validator::shared()
            .validate(&llmo_core::source::SourceFile::new(run.source_name.clone(), run.source.clone()));
        let Some(checked) = outcome.checked else {
            bail!("the stored workflow of `{run_id}` ({}) no longer validates", run.source_name)
        };
        let plan = Arc::new(llmo_core::engine::Plan::new(checked));
        let mut f = Follower::start(store, plan, run_id, EventId::default()).await?;
        loop {
            for fr in f.poll().await? {
                print(fr.event, &fr.data, json);
                if fr.event == "end" {
                    return Ok(exit_of(&fr.data));
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// An event of a `text/event-stream`, as it is parsed.
#[derive(Default)]
struct Sse {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

/// Follows a run through the API's event stream.
pub fn remote(run_id: &str, api: Option<&str>, json: bool) -> Result<ExitCode> {
    let url = format!("{}/runs/{run_id}/events", crate::remote::base(api));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        // No overall timeout: a stream lasts as long as the run (the server ends idle ones).
        let client = crate::remote::client_with(None)?;
        let mut last: Option<String> = None;
        let mut retry = Duration::from_secs(1);
        let mut failures = 0;
        loop {
            let mut req = client.get(&url).header("accept", "text/event-stream");
            if let Some(id) = &last {
                req = req.header("last-event-id", id);
            }
            let mut resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    failures += 1;
                    if failures > 5 {
                        bail!("cannot reach the API at {url}: {e}");
                    }
                    tokio::time::sleep(retry * failures).await;
                    continue;
                }
            };
            let status = resp.status().as_u16();
            if status == 204 {
                // The run's end was seen already: nothing more will come.
                println!("run ended");
                return Ok(ExitCode::SUCCESS);
            }
            if status != 200 {
                let text = resp.text().await.unwrap_or_default();
                let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
                return Ok(crate::remote::refused(&format!("events of {run_id}"), status, &v));
            }
            failures = 0;
            let mut buf = String::new();
            let mut ev = Sse::default();
            while let Some(chunk) = resp.chunk().await.unwrap_or(None) {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(n) = buf.find('\n') {
                    let line: String = buf.drain(..=n).collect();
                    let line = line.trim_end_matches(['\n', '\r']);
                    if line.is_empty() {
                        let done = std::mem::take(&mut ev);
                        let Some(name) = done.event else { continue };
                        let data: Value = serde_json::from_str(&done.data).unwrap_or(Value::String(done.data));
                        if done.id.is_some() {
                            last = done.id;
                        }
                        print(&name, &data, json);
                        if name == "end" {
                            return Ok(exit_of(&data));
                        }
                        continue;
                    }
                    if line.starts_with(':') {
                        continue;
                    }
                    let (field, value) = line.split_once(':').map_or((line, ""), |(f, v)| (f, v.trim_start()));
                    match field {
                        "id" => ev.id = Some(value.to_string()),
                        "event" => ev.event = Some(value.to_string()),
                        "data" => {
                            if !ev.data.is_empty() {
                                ev.data.push('\n');
                            }
                            ev.data.push_str(value);
                        }
                        "retry" => {
                            if let Ok(ms) = value.parse::<u64>() {
                                retry = Duration::from_millis(ms.clamp(100, 60_000));
                            }
                        }
                        _ => {}
                    }
                }
            }
            // The stream ended before the run: again, after the events seen.
            tokio::time::sleep(retry).await;
        }
    })
}
