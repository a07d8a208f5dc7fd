//! What a `type: function` call costs on this machine, against `cargo lambda watch` hosting the
//! test function (`examples/test_function.rs`, a `lambda_runtime` echo):
//!
//!   cargo build --release -p llmo-lambda --examples && target/release/examples/invoke_bench [N]
//!
//! Times N sequential calls three ways, after 20 to warm up: the Invoke API by hand (one
//! kept-alive HTTP/1.1 connection: the floor of the local emulation, `cargo lambda watch`
//! relaying to the function's Runtime API), the AWS SDK's `Invoke` (signing, its HTTP client),
//! and the `type: function` executor (the allowlist, the event with the attempt's idempotency
//! key, the SDK call, the answer's checks). Prints p50, p99 and mean per call for each, and the
//! executor's cost over the SDK's (what this project adds to a call).

use std::sync::Arc;
use std::time::{Duration, Instant};

use llmo_core::engine::{AttemptResult, Plan};
use llmo_core::function::AllowedFunctions;
use llmo_core::source::SourceFile;
use llmo_core::validate::Validator;
use llmo_lambda::local::{LocalFunctions, cargo_lambda};
use llmo_runtime::executor::{Attempt, Executor};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const WORKFLOW: &str = "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: bench }\nspec:\n  tasks:\n    - { id: call, type: function, with: { function: echo, payload: { n: 1 } } }\n";

fn summary(name: &str, mut ms: Vec<f64>) -> f64 {
    ms.sort_by(f64::total_cmp);
    let pick = |q: f64| ms[((ms.len() as f64 * q) as usize).min(ms.len() - 1)];
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    println!("| {name} | {} | {:.3} | {:.3} | {:.3} |", ms.len(), pick(0.5), pick(0.99), mean);
    pick(0.5)
}

/// One Invoke request by hand on a kept-alive connection; the answer's body.
async fn raw(conn: &mut BufReader<tokio::net::TcpStream>, port: u16, body: &str) -> String {
    let req = format!(
        "POST /2015-03-31/functions/echo/invocations HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.get_mut().write_all(req.as_bytes()).await.expect("the request is written");
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).await.expect("a header line");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().expect("a length");
        }
    }
    let mut buf = vec![0u8; len];
    conn.read_exact(&mut buf).await.expect("the body");
    String::from_utf8(buf).expect("utf-8")
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(300);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cl = cargo_lambda(&root).expect("cargo-lambda (localstack/stack.sh install puts it in .venv/tools/bin)");
    let bin = std::env::current_exe().unwrap().with_file_name("test_function");
    let local = LocalFunctions::start(&cl, &bin, &["echo"]).await.expect("the test function starts");
    let endpoint = local.endpoint();
    let port: u16 = endpoint.rsplit(':').next().unwrap().parse().unwrap();
    println!("{n} sequential calls of a Rust echo function under cargo lambda watch (after 20 to warm up)\n");
    println!("| way | calls | p50 ms | p99 ms | mean ms |");
    println!("| --- | --- | --- | --- | --- |");

    let event =
        json!({"n": 1, "llmo": {"idempotency_key": "k", "run_id": "r", "task": "call", "item": null, "attempt": 1}})
            .to_string();
    let mut conn = BufReader::new(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 20 {
        let t = Instant::now();
        let answer = raw(&mut conn, port, &event).await;
        assert!(answer.contains("\"echo\""), "{answer}");
        if i >= 20 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    summary("Invoke API by hand (the emulation's floor)", times);

    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_lambda::config::Credentials::new("test", "test", None, None, "bench"))
        .endpoint_url(&endpoint)
        .load()
        .await;
    let sdk = aws_sdk_lambda::Client::new(&conf);
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 20 {
        let t = Instant::now();
        let out = sdk
            .invoke()
            .function_name("echo")
            .payload(aws_smithy_types::Blob::new(event.as_bytes()))
            .send()
            .await
            .expect("the SDK's Invoke");
        assert!(out.function_error().is_none());
        if i >= 20 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let sdk_p50 = summary("AWS SDK `Invoke`", times);

    let settings =
        llmo_lambda::Settings { allowed: AllowedFunctions::parse("echo").unwrap(), endpoint: Some(endpoint.clone()) };
    let exec = llmo_lambda::FunctionExecutor::new(settings);
    let checked = Validator::default().validate(&SourceFile::new("bench.yaml", WORKFLOW)).checked.expect("valid");
    let a = Attempt {
        plan: Arc::new(Plan::new(checked)),
        run_id: "run-bench".into(),
        tenant: None,
        task: Some(0),
        task_id: "call".into(),
        ty: "function".into(),
        item: None,
        attempt: 1,
        with: json!({"function": "echo", "payload": {"n": 1}}),
        context: Default::default(),
        budget_left_usd: None,
        allowance: None,
        prices: None,
        timeout: Some(Duration::from_secs(10)),
        admitted: false,
        depth: 0,
        callback: None,
        step: None,
    };
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 20 {
        let t = Instant::now();
        let r = exec.execute(&a).await;
        assert!(matches!(r, AttemptResult::Succeeded { .. }), "{r:?}");
        if i >= 20 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let exec_p50 = summary("`type: function` executor", times);
    println!("\nthe executor over the SDK's call: {:+.3} ms at p50", exec_p50 - sdk_p50);
    drop(local);
}
