//! A load generator for the API (`llmo serve`, or the local stack's `api --local`): many
//! concurrent clients start runs and read them, and the latencies of `POST /runs` and
//! `GET /runs/{id}` are reported (p50, p99, max) with the throughput; then, optionally, many
//! runs are left waiting for an approval and the reads are measured again with them live,
//! with the server's memory (RSS) and state file size.
//!
//!   load URL TOKEN [--clients 16] [--seconds 20] [--waiting 10000] [--pid PID] [--state FILE]
//!        [--check]
//!
//! `--check` (the one-shot run in `make test`) fails unless every request succeeded and the
//! figures are present; it sets no latency target (CI machines vary).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ECHO: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: load-echo }
spec:
  inputs: { n: { type: integer } }
  tasks:
    - { id: a, type: transform, with: { output: "{{ inputs.n }}" } }
  outputs: { n: "{{ tasks.a.output }}" }
"#;

const WAITS: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: load-waits }
spec:
  inputs: { n: { type: integer } }
  tasks:
    - id: approve
      type: wait
      with: { approval: { prompt: "Run {{ inputs.n }}?" }, timeout: 24h }
"#;

struct Args {
    url: String,
    token: String,
    clients: usize,
    seconds: u64,
    waiting: usize,
    pid: Option<u32>,
    state: Option<String>,
    check: bool,
}

fn args() -> Args {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| a.iter().position(|x| x == name).and_then(|i| a.get(i + 1)).cloned();
    let usage = "load URL TOKEN [--clients N] [--seconds S] [--waiting N] [--pid PID] [--state FILE] [--check]";
    Args {
        url: a.first().expect(usage).trim_end_matches('/').to_string(),
        token: a.get(1).expect(usage).clone(),
        clients: flag("--clients").map_or(16, |v| v.parse().expect("--clients N")),
        seconds: flag("--seconds").map_or(20, |v| v.parse().expect("--seconds S")),
        waiting: flag("--waiting").map_or(0, |v| v.parse().expect("--waiting N")),
        pid: flag("--pid").map(|v| v.parse().expect("--pid PID")),
        state: flag("--state"),
        check: a.iter().any(|x| x == "--check"),
    }
}

#[derive(Default)]
struct Lat(std::sync::Mutex<Vec<Duration>>);

impl Lat {
    fn add(&self, d: Duration) {
        self.0.lock().unwrap().push(d);
    }

    fn summary(&self) -> Value {
        let mut v = self.0.lock().unwrap().clone();
        v.sort();
        if v.is_empty() {
            return json!({"n": 0});
        }
        let q = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1].as_secs_f64() * 1000.0;
        json!({"n": v.len(), "p50_ms": round(q(0.50)), "p99_ms": round(q(0.99)), "max_ms": round(q(1.0))})
    }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
    failures: AtomicU64,
}

impl Client {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Option<Value> {
        let mut r = self.http.request(method, format!("{}{path}", self.url)).bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(b);
        }
        match r.send().await {
            Ok(resp) if resp.status().is_success() => resp.json().await.ok(),
            Ok(resp) => {
                if self.failures.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("{path}: HTTP {}: {}", resp.status(), resp.text().await.unwrap_or_default());
                }
                None
            }
            Err(e) => {
                if self.failures.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("{path}: {e}");
                }
                None
            }
        }
    }
}

/// `clients` loops for `seconds`: each starts a run of `workflow` and reads it.
async fn mixed(c: &Arc<Client>, clients: usize, seconds: u64, workflow: &str) -> (Value, Value, f64) {
    let (post, get) = (Arc::new(Lat::default()), Arc::new(Lat::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let n = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..clients {
        let (c, post, get, stop, n, wf) =
            (c.clone(), post.clone(), get.clone(), stop.clone(), n.clone(), workflow.to_string());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let t = Instant::now();
                let body = json!({"workflow": wf, "inputs": {"n": k as u64 * 1_000_000 + i}});
                let Some(v) = c.call(reqwest::Method::POST, "/runs", Some(&body)).await else { continue };
                post.add(t.elapsed());
                let id = v["run_id"].as_str().unwrap_or_default().to_string();
                let t = Instant::now();
                if c.call(reqwest::Method::GET, &format!("/runs/{id}"), None).await.is_some() {
                    get.add(t.elapsed());
                }
                n.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let rate = n.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    (post.summary(), get.summary(), round(rate))
}

/// The server's own view (its `/metrics`, operators only): requests answered, the time spent
/// answering them, and the AWS requests made and the time spent waiting on them.
#[derive(Debug, Clone, Copy, Default)]
struct Server {
    requests: f64,
    api_s: f64,
    aws_calls: f64,
    aws_s: f64,
}

async fn server(c: &Client) -> Option<Server> {
    let text = c.http.get(format!("{}/metrics", c.url)).bearer_auth(&c.token).send().await.ok()?.text().await.ok()?;
    let sum = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' ')))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Some(Server {
        requests: sum("llmo_api_request_seconds_count"),
        api_s: sum("llmo_api_request_seconds_sum"),
        aws_calls: sum("llmo_aws_call_seconds_count"),
        aws_s: sum("llmo_aws_call_seconds_sum"),
    })
}

/// Per request, between two readings: the API's time, of it the time waiting on AWS, and the
/// rest (the handlers' own).
fn split(a: Option<Server>, b: Option<Server>) -> Value {
    let (Some(a), Some(b)) = (a, b) else { return Value::Null };
    let n = (b.requests - a.requests).max(1.0);
    let api = (b.api_s - a.api_s) / n * 1000.0;
    let aws = (b.aws_s - a.aws_s) / n * 1000.0;
    json!({
        "requests": n, "api_ms_per_request": round(api), "aws_wait_ms_per_request": round(aws),
        "aws_calls_per_request": round((b.aws_calls - a.aws_calls) / n), "own_ms_per_request": round(api - aws),
    })
}

fn rss_mb(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(round(kb / 1024.0))
}

fn file_mb(path: &str) -> Option<f64> {
    // The SQLite file and its write-ahead log.
    let size = |p: &str| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let total = size(path) + size(&format!("{path}-wal"));
    (total > 0).then(|| round(total as f64 / 1_048_576.0))
}

#[tokio::main]
async fn main() {
    let a = args();
    let http = reqwest::Client::builder().pool_max_idle_per_host(a.clients * 2).build().expect("an HTTP client");
    let c = Arc::new(Client { http, url: a.url.clone(), token: a.token.clone(), failures: AtomicU64::new(0) });
    for src in [ECHO, WAITS] {
        c.call(reqwest::Method::POST, "/workflows", Some(&json!({"source": src})))
            .await
            .expect("registering a workflow");
    }
    let mut report = json!({"url": a.url, "clients": a.clients, "seconds": a.seconds});
    eprintln!("== {} clients for {} s: POST /runs then GET /runs/{{id}}", a.clients, a.seconds);
    let before = server(&c).await;
    let (post, get, rate) = mixed(&c, a.clients, a.seconds, "load-echo").await;
    let inside = split(before, server(&c).await);
    report["idle"] = json!({"post_runs": post, "get_run": get, "runs_per_s": rate, "server": inside});
    eprintln!("{}", report["idle"]);
    if a.waiting > 0 {
        eprintln!("== {} runs left waiting for an approval", a.waiting);
        let before = (a.pid.and_then(rss_mb), a.state.as_deref().and_then(file_mb));
        let t = Instant::now();
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..a.clients {
            let (c, next, total) = (c.clone(), next.clone(), a.waiting as u64);
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return;
                    }
                    let body = json!({"workflow": "load-waits", "inputs": {"n": i}});
                    c.call(reqwest::Method::POST, "/runs", Some(&body)).await;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let took = t.elapsed().as_secs_f64();
        // Every one of them waits (listed by `GET /waiting`, a page at most).
        let waiting = c.call(reqwest::Method::GET, "/waiting", None).await;
        let listed = waiting.as_ref().and_then(|w| w["waiting"].as_array()).map_or(0, Vec::len);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let reading = server(&c).await;
        let (post, get, rate) = mixed(&c, a.clients, a.seconds, "load-echo").await;
        let inside = split(reading, server(&c).await);
        report["waiting"] = json!({
            "server": inside,
            "runs": a.waiting,
            "started_in_s": round(took),
            "listed_by_get_waiting": listed,
            "rss_mb": {"before": before.0, "after": a.pid.and_then(rss_mb)},
            "state_mb": {"before": before.1, "after": a.state.as_deref().and_then(file_mb)},
            "post_runs": post, "get_run": get, "runs_per_s": rate,
        });
        eprintln!("{}", report["waiting"]);
    }
    report["failures"] = json!(c.failures.load(Ordering::Relaxed));
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    if a.check {
        let ok = c.failures.load(Ordering::Relaxed) == 0
            && report["idle"]["post_runs"]["n"].as_u64().unwrap_or(0) > 0
            && report["idle"]["get_run"]["n"].as_u64().unwrap_or(0) > 0
            && (a.waiting == 0 || report["waiting"]["listed_by_get_waiting"].as_u64().unwrap_or(0) > 0);
        if !ok {
            eprintln!("load --check: failed requests or missing figures");
            std::process::exit(1);
        }
    }
}
