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

/// An HTTP client that sends `$LLMO_TOKEN` as the bearer token on every request (the API
/// refuses requests without one; `llmo token` makes one for a local API).
fn client() -> Result<reqwest::Client> {
    client_with(Some(Duration::from_secs(60)))
}

/// [`client`] with another overall timeout per request (none: a stream that lasts).
pub fn client_with(timeout: Option<Duration>) -> Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = std::env::var("LLMO_TOKEN").ok().filter(|t| !t.is_empty()) {
        let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
            .context("LLMO_TOKEN is not a valid header value")?;
        v.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    let mut b = reqwest::Client::builder().default_headers(headers).connect_timeout(Duration::from_secs(10));
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    b.build().context("building the HTTP client")
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

pub fn refused(what: &str, status: u16, v: &Value) -> ExitCode {
    eprintln!(
        "error: {what}: HTTP {status}: {}",
        crate::term::clean(v.get("error").and_then(Value::as_str).unwrap_or(&v.to_string()))
    );
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
    let mut inputs = given_inputs(opts)?;
    // `-i` read as the workflow declares its inputs (the API checks them again).
    let outcome = llmo_core::validate::Validator::shared()
        .validate(&llmo_core::source::SourceFile::new(file.display().to_string(), source.clone()));
    if let Some(checked) = &outcome.checked {
        crate::run::as_declared(&checked.workflow.spec.inputs, &opts.inputs, &mut inputs);
    }
    let url = base(api);
    runtime()?.block_on(async {
        let client = client()?;
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
                eprintln!("{}", crate::term::clean(&line));
                last = line;
            }
            match v["status"].as_str() {
                Some("succeeded") => {
                    println!("{}", serde_json::to_string_pretty(&v["outputs"])?);
                    return Ok(ExitCode::SUCCESS);
                }
                Some("failed" | "cancelled" | "timed_out") => {
                    eprintln!("{run_id}: {}", crate::term::clean(v["error"].as_str().unwrap_or("ended")));
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
        let client = client()?;
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
        let client = client()?;
        // The log comes in pages: follow `next` to the end.
        let mut ts: Vec<Value> = Vec::new();
        let mut after = 0;
        loop {
            let (status, v) = call(client.get(format!("{url}/runs/{run_id}/history?after={after}")), &url).await?;
            if status != 200 {
                return Ok(refused(&format!("history of {run_id}"), status, &v));
            }
            let Some(page) = v["transitions"].as_array() else { bail!("the API answered without transitions") };
            ts.extend(page.iter().cloned());
            match v["next"].as_u64() {
                Some(n) if n > after => after = n,
                _ => break,
            }
        }
        for t in &ts {
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
            println!("v{:<5} {:>13}  {}", t["version"], t["at"], crate::term::clean(&what));
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `llmo audit`: the audit trail (admins): a run's records, or the tenant's in a time range.
/// `POST /sweep`: prints what the sweep did (JSON).
pub fn sweep(api: Option<&str>) -> Result<ExitCode> {
    let url = base(api);
    runtime()?.block_on(async {
        let client = client()?;
        let (status, v) = call(client.post(format!("{url}/sweep")), &url).await?;
        if status != 200 {
            return Ok(refused("sweep", status, &v));
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        Ok(ExitCode::SUCCESS)
    })
}

pub fn audit(
    run: Option<&str>,
    since: Option<&str>,
    tenant: Option<&str>,
    limit: u32,
    api: Option<&str>,
    json_out: bool,
) -> Result<ExitCode> {
    let url = base(api);
    let mut query: Vec<(String, String)> = vec![("limit".into(), limit.to_string())];
    if let Some(r) = run {
        query.push(("run".into(), r.to_string()));
    }
    if let Some(t) = tenant {
        query.push(("tenant".into(), t.to_string()));
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let since_ms = match since {
        Some(s) => {
            let d = llmo_core::model::Duration::parse(s)
                .with_context(|| format!("--since {s}: a duration such as 30m, 24h or 7d"))?;
            now.saturating_sub(d.0.as_millis() as u64)
        }
        None if run.is_some() => now.saturating_sub(30 * 86_400_000),
        None => now.saturating_sub(86_400_000),
    };
    query.push(("since".into(), since_ms.to_string()));
    query.push(("until".into(), now.to_string()));
    runtime()?.block_on(async {
        let client = client()?;
        let (status, v) = call(client.get(format!("{url}/audit")).query(&query), &url).await?;
        if status != 200 {
            return Ok(refused("reading the audit trail", status, &v));
        }
        if json_out {
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(ExitCode::SUCCESS);
        }
        for r in v["records"].as_array().into_iter().flatten() {
            let f = |k: &str, or: &'static str| crate::term::clean(r[k].as_str().unwrap_or(or)).into_owned();
            println!(
                "{}  {:<10} {:<20} {:<10} {:<24} {:<40} {}",
                r["at"],
                f("tenant", ""),
                f("actor", ""),
                f("role", ""),
                f("action", ""),
                f("target", "-"),
                f("result", "")
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `llmo token`: an HS256 token for an API that verifies with `$LLMO_JWT_SECRET` (a local
/// `api --local`; deployed APIs take tokens from your identity provider).
pub fn token(
    secret: &str,
    sub: &str,
    tenant: &str,
    roles: &[String],
    ttl_secs: u64,
    audience: &str,
    issuer: Option<&str>,
) -> Result<String> {
    if secret.len() < 32 {
        bail!("LLMO_JWT_SECRET must be at least 32 bytes");
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), json!(sub));
    claims.insert("tenant".into(), json!(tenant));
    claims.insert("roles".into(), json!(roles));
    claims.insert("aud".into(), json!(audience));
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + ttl_secs));
    if let Some(i) = issuer {
        claims.insert("iss".into(), json!(i));
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .context("signing the token")
}

/// `llmo costs --api`: `GET /costs` of the serverless API.
pub fn costs(by: &str, since: &str, tenant: Option<&str>, api: Option<&str>, as_json: bool) -> Result<ExitCode> {
    let base = base(api);
    let mut url = format!("{base}/costs?by={by}&since={since}");
    if let Some(t) = tenant {
        url.push_str(&format!("&tenant={t}"));
    }
    let rt = runtime()?;
    let (status, v) = rt.block_on(async { call(client()?.get(&url), &url).await })?;
    if status != 200 {
        return Ok(refused("costs", status, &v));
    }
    if v["truncated"].as_bool() == Some(true) {
        eprintln!("note: more runs than one answer sums; the totals cover the newest {}", 50_000);
    }
    crate::run::print_costs(&v["rows"], as_json)
}

/// `llmo redrive RUN --api`: `POST /runs/{id}/redrive` (with `{"inputs"}` when edited), then
/// the run's state.
pub fn redrive(run_id: &str, edits: Option<serde_json::Map<String, Value>>, api: Option<&str>) -> Result<ExitCode> {
    let base = base(api);
    let url = format!("{base}/runs/{run_id}/redrive");
    let rt = runtime()?;
    let req = |c: reqwest::Client| match &edits {
        Some(e) => c.post(&url).json(&json!({"inputs": e})),
        None => c.post(&url),
    };
    let (status, v) = rt.block_on(async { call(req(client()?), &url).await })?;
    if status != 200 {
        return Ok(refused("redrive", status, &v));
    }
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(ExitCode::SUCCESS)
}

/// `llmo rerun RUN --from TASK --api`: `POST /runs/{id}/rerun`, then the new run.
pub fn rerun(run_id: &str, from: &str, api: Option<&str>) -> Result<ExitCode> {
    let base = base(api);
    let url = format!("{base}/runs/{run_id}/rerun");
    let rt = runtime()?;
    let (status, v) = rt.block_on(async { call(client()?.post(&url).json(&json!({"from": from})), &url).await })?;
    if status != 201 {
        return Ok(refused("rerun", status, &v));
    }
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(ExitCode::SUCCESS)
}

/// `llmo waiting --api`: `GET /waiting`.
pub fn waiting(api: Option<&str>, as_json: bool) -> Result<ExitCode> {
    let base = base(api);
    let url = format!("{base}/waiting");
    let rt = runtime()?;
    let (status, v) = rt.block_on(async { call(client()?.get(&url), &url).await })?;
    if status != 200 {
        return Ok(refused("waiting", status, &v));
    }
    let rows = v["waiting"].as_array().cloned().unwrap_or_default();
    crate::waits::print_waiting(&rows, as_json)
}

/// `llmo approve|reject RUN TASK --api`: `POST /runs/{id}/tasks/{task}/complete`. Exit 3 when
/// the task no longer waits (answered already, timed out: HTTP 409).
pub fn answer(
    run_id: &str,
    task: &str,
    a: &crate::waits::Answer,
    fields: Value,
    api: Option<&str>,
) -> Result<ExitCode> {
    let base = base(api);
    let url = format!("{base}/runs/{run_id}/tasks/{task}/complete");
    let mut body = json!({"approved": a.approved, "fields": fields});
    if let Some(c) = &a.comment {
        body["comment"] = json!(c);
    }
    if let Some(i) = a.item {
        body["item"] = json!(i);
    }
    if let Some(c) = &a.call {
        body["call"] = json!(c);
    }
    let rt = runtime()?;
    let (status, v) = rt.block_on(async { call(client()?.post(&url).json(&body), &url).await })?;
    match status {
        200 => {
            let verb = if a.approved { "approved" } else { "rejected" };
            eprintln!("{run_id}: `{task}` {verb}");
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        409 => {
            refused("answer", status, &v);
            Ok(ExitCode::from(3))
        }
        _ => Ok(refused("answer", status, &v)),
    }
}

/// `llmo callback TOKEN --api`: `POST /callbacks/{token}` (or its `/heartbeat`).
pub fn callback(token: &str, answer: &llmo_runtime::callbacks::Answer, api: Option<&str>) -> Result<ExitCode> {
    use llmo_runtime::callbacks::Answer;
    let base = base(api);
    let (url, body) = match answer {
        Answer::Heartbeat => (format!("{base}/callbacks/{token}/heartbeat"), json!({})),
        Answer::Output(v) => (format!("{base}/callbacks/{token}"), json!({"output": v})),
        Answer::Error { error, retryable } => {
            (format!("{base}/callbacks/{token}"), json!({"error": error, "retryable": retryable}))
        }
    };
    let shown = format!("{base}/callbacks/…");
    let rt = runtime()?;
    let (status, v) = rt.block_on(async { call(client()?.post(&url).json(&body), &shown).await })?;
    match status {
        200 => {
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        409 => {
            refused("callback", status, &v);
            Ok(ExitCode::from(3))
        }
        _ => Ok(refused("callback", status, &v)),
    }
}

/// `llmo send-event NAME --api`: `POST /events`.
pub fn send_event(name: &str, key: &str, payload: &Value, api: Option<&str>) -> Result<ExitCode> {
    let base = base(api);
    let url = format!("{base}/events");
    let body = json!({"name": name, "key": key, "payload": payload});
    let rt = runtime()?;
    let (status, v) = rt.block_on(async { call(client()?.post(&url).json(&body), &url).await })?;
    if status != 200 {
        return Ok(refused("send-event", status, &v));
    }
    let n = v["delivered"].as_array().map_or(0, Vec::len);
    eprintln!("event `{name}` key `{key}`: delivered to {n} waiting task{}", if n == 1 { "" } else { "s" });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(if n == 0 { ExitCode::from(3) } else { ExitCode::SUCCESS })
}
