//! `submit`, `status --api`, `logs`: the CLI against a deployed (or local) `api` function.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::run::{Options, given_inputs};

/// The API's base URL: `--api`, else `$LLMO_API_URL`, else the local `api --local` default.
pub fn base(api: Option<&str>) -> String {
    api.map(str::to_string)
        .or_else(|| std::env::var("LLMO_API_URL").ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "http://127.0.0.1:8080".into())
        .trim_end_matches('/')
        .to_string()
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")
}

async fn call(req: reqwest::RequestBuilder, url: &str) -> Result<(u16, Value)> {
    let resp = req.send().await.with_context(|| format!("cannot reach the API at {url}"))?;
    let status = resp.status().as_u16();
    let text = resp.text().await.with_context(|| format!("reading the answer of {url}"))?;
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, v))
}

fn refused(what: &str, status: u16, v: &Value) -> ExitCode {
    eprintln!("error: {what}: HTTP {status}: {}", v.get("error").and_then(Value::as_str).unwrap_or(&v.to_string()));
    if let Some(ds) = v.get("diagnostics").and_then(Value::as_array) {
        for d in ds {
            eprintln!(
                "  {}:{}:{}: {} [{}] {}",
                d["file"].as_str().unwrap_or("?"),
                d["line"],
                d["column"],
                d["field"].as_str().unwrap_or(""),
                d["code"].as_str().unwrap_or(""),
                d["message"].as_str().unwrap_or("")
            );
        }
    }
    if let Some(is) = v.get("inputs").and_then(Value::as_array) {
        for i in is {
            eprintln!(
                "  input `{}`{}: {}",
                i["input"].as_str().unwrap_or("?"),
                i["path"].as_str().unwrap_or(""),
                i["message"].as_str().unwrap_or("")
            );
        }
    }
    ExitCode::from(1)
}

/// Submits a workflow file with inputs; with `wait`, follows the run to its end.
pub fn submit(file: &Path, opts: &Options, api: Option<&str>, key: Option<&str>, wait: bool) -> Result<ExitCode> {
    let source = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let inputs = given_inputs(opts)?;
    let url = base(api);
    runtime()?.block_on(async {
        let client = reqwest::Client::new();
        let mut body = json!({"source": source, "source_name": file.display().to_string(), "inputs": inputs});
        if let Some(k) = key {
            body["idempotency_key"] = json!(k);
        }
        let (status, v) = call(client.post(format!("{url}/runs")).json(&body), &url).await?;
        if !(200..300).contains(&status) {
            return Ok(refused(&format!("submitting {}", file.display()), status, &v));
        }
        let run_id = v["run_id"].as_str().context("the API answered without a run id")?.to_string();
        eprintln!(
            "{run_id}: submitted to {url}{}",
            if v["created"] == false { " (already started with this key)" } else { "" }
        );
        if !wait {
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(ExitCode::SUCCESS);
        }
        let mut last = String::new();
        loop {
            let (status, v) = call(client.get(format!("{url}/runs/{run_id}")), &url).await?;
            if status != 200 {
                return Ok(refused(&format!("status of {run_id}"), status, &v));
            }
            let tasks = v["tasks"].as_array().cloned().unwrap_or_default();
            let count = |s: &str| tasks.iter().filter(|t| t["status"] == s).count();
            let line = format!(
                "{run_id}: {} · {} done, {} running, {} failed of {} · ${:.4}",
                v["status"].as_str().unwrap_or("?"),
                count("succeeded") + count("skipped"),
                count("running"),
                count("failed"),
                tasks.len(),
                v["cost_usd"].as_f64().unwrap_or(0.0)
            );
            if line != last {
                eprintln!("{line}");
                last = line;
            }
            match v["status"].as_str() {
                Some("succeeded") => {
                    println!("{}", serde_json::to_string_pretty(&v["outputs"])?);
                    return Ok(ExitCode::SUCCESS);
                }
                Some("failed" | "cancelled" | "timed_out") => {
                    eprintln!("{run_id}: {}", v["error"].as_str().unwrap_or("ended"));
                    return Ok(ExitCode::from(1));
                }
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    })
}

/// Prints a run's state as the API reports it.
pub fn status(run_id: &str, api: Option<&str>) -> Result<ExitCode> {
    let url = base(api);
    runtime()?.block_on(async {
        let client = reqwest::Client::new();
        let (status, v) = call(client.get(format!("{url}/runs/{run_id}")), &url).await?;
        if status != 200 {
            return Ok(refused(&format!("status of {run_id}"), status, &v));
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        Ok(ExitCode::SUCCESS)
    })
}

/// Prints a run's transition log, one line per transition.
pub fn logs(run_id: &str, api: Option<&str>, json_out: bool) -> Result<ExitCode> {
    let url = base(api);
    runtime()?.block_on(async {
        let client = reqwest::Client::new();
        let (status, v) = call(client.get(format!("{url}/runs/{run_id}/history")), &url).await?;
        if status != 200 {
            return Ok(refused(&format!("history of {run_id}"), status, &v));
        }
        let Some(ts) = v["transitions"].as_array() else { bail!("the API answered without transitions") };
        for t in ts {
            if json_out {
                println!("{t}");
                continue;
            }
            let e = &t["event"];
            let what = match e["event"].as_str() {
                Some(kind) => {
                    let mut s = kind.to_string();
                    for k in ["task", "item", "attempt"] {
                        if let Some(x) = e.get(k).filter(|x| !x.is_null()) {
                            s.push_str(&format!(" {k}={x}"));
                        }
                    }
                    if let Some(r) = e.get("result") {
                        let outcome = r.get("outcome").and_then(Value::as_str).unwrap_or("result");
                        s.push_str(&format!(" {outcome}"));
                        if let Some(err) = r.get("error").and_then(Value::as_str) {
                            s.push_str(&format!(": {err}"));
                        }
                    }
                    if let Some(r) = e.get("reason").and_then(Value::as_str) {
                        s.push_str(&format!(": {r}"));
                    }
                    s
                }
                None => e.to_string(),
            };
            println!("v{:<5} {:>13}  {what}", t["version"], t["at"]);
        }
        Ok(ExitCode::SUCCESS)
    })
}
