//! Throughput, per-step latency and AWS cost of the serverless runtime on the local stack.
//!
//!   localstack/with-stack.sh cargo run --release -p llmo-aws --example serverless -- [--no-fold] [--check] [--window SECS] [--pack N] [--latency MS] [chain|layered|wide|children|agent] [TASKS] [WORKERS...]
//!
//! Runs a layered DAG of TASKS `transform` tasks (default 1,000: 10 layers, each task reading
//! two of the layer before), a chain of TASKS, or `wide`: one `for_each` of TASKS items between
//! two tasks, or `children`: one `for_each` of TASKS child runs (`type: workflow`, each a
//! registered one-task workflow), or `agent`: one `for_each` of TASKS agents of five turns
//! (four with a `transform` tool call; the model answers at once, by turn; a step is a turn or
//! a call), through the `step` handler with 1, 2 and 4 workers (each its own warm container,
//! polling batches of 10 from the step queue and the fold queue as Lambda's event source
//! mappings do; `--no-fold` deploys no fold queue, so every step appends itself), and counts
//! every AWS request the run made (SDK interceptor) and the DynamoDB capacity it consumed
//! (`ReturnConsumedCapacity`; conditional writes that lost a race are charged by item size).
//! `--window SECS` gives the step queue's pollers a batching window (the event source mapping's
//! `MaximumBatchingWindowInSeconds`; the template's `StepBatchWindow`): fuller batches, fewer
//! invocations, up to SECS more latency per queue hop.
//! `--latency MS` makes every step (each item of `wide`) a model call to a local
//! OpenAI-compatible server answering after MS ms (`model_server`, started here), and bills
//! compute by the invocations' measured durations.
//! `--pack N` puts up to N attempts of a run in one step message (`Worker::pack`; the
//! template's `StepAttemptsPerMessage`, 10 by default); `--pack 1` sends one per attempt.
//! `--cold [STEP_BINARY]` measures the step function's cold start instead (see `cold_starts`).
//! `--check` fails (exits non-zero) unless the contention targets hold: lost conditional writes
//! at most 2% of the log's writes, and WRU per step at the largest fleet within 1.2x of one
//! worker's (`make test` runs a small one; `make bench` the full sizes).
//! Beside it, the emulator's floor: the SDK calls one step needs, issued raw, one after another.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity};
use llmo_aws::Aws;
use llmo_aws::metrics::{Reading, price};
use llmo_aws::provision::{Resources, provision};
use llmo_aws::sqs::SqsQueue;
use llmo_aws::step::Step;
use llmo_runtime::providers::Config;

#[path = "../../runtime/examples/common/local_model.rs"]
mod local_model;

/// The body of a step: a transform whose output is the YAML scalar `output`, or with `llm` a
/// model call to the local model server with that text in its prompt.
fn body(llm: bool, output: &str) -> String {
    if llm {
        format!(
            "type: llm, with: {{ provider: local, model: m, prompt: \"Item {}\", max_tokens: 5 }}",
            output.trim_matches('"')
        )
    } else {
        format!("type: transform, with: {{ output: {output} }}")
    }
}

/// The child of the `children` shape (registered as `bench-child` in tenant `bench`).
const CHILD: &str = "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: bench-child }\nspec:\n  inputs: { i: { type: integer } }\n  tasks:\n    - { id: t, type: transform, with: { output: \"{{ inputs.i }}\" } }\n  outputs: { i: \"{{ tasks.t.output }}\" }\n";

/// The `agent` shape: each agent's model asks for one call of its `transform` tool per turn
/// for four turns, then answers: nine steps an agent.
const AGENT_TURNS: usize = 5;

/// The agents' model: an instant answer decided by the turn (as every worker sees the same
/// turn, any worker may ask any turn), so the figures are the orchestration's alone.
struct BenchModel;

#[async_trait::async_trait]
impl llmo_runtime::executor::Executor for BenchModel {
    async fn execute(&self, a: &llmo_runtime::executor::Attempt) -> llmo_core::engine::AttemptResult {
        let turn = match a.step.as_deref() {
            Some(llmo_core::agent::Step::Turn { turn, .. }) => *turn as usize,
            _ => 0,
        };
        let output = if turn < AGENT_TURNS {
            serde_json::json!({"text": "", "tool_calls": [{"id": format!("c{turn}"), "name": "t", "arguments": {"n": turn}}]})
        } else {
            serde_json::json!({"text": "done"})
        };
        llmo_core::engine::AttemptResult::Succeeded {
            output: output.into(),
            usage: llmo_core::engine::Usage { tokens: 110, cost_usd: 0.0 },
        }
    }
}

fn workflow(tasks: usize, shape: &str, llm: bool) -> String {
    if shape == "agent" {
        return format!(
            "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: {{ name: agents }}\nspec:\n  tasks:\n    - id: agents\n      type: agent\n      for_each: \"range({tasks})\"\n      with:\n        model: gpt-4o-mini\n        prompt: \"agent {{{{ item }}}}\"\n        tools: [{{ name: t, parameters: {{ type: object, properties: {{ n: {{ type: integer }} }} }}, run: {{ type: transform, with: {{ output: \"r{{{{ args.n }}}}\" }} }} }}]\n"
        );
    }
    if shape == "children" {
        return format!(
            "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: {{ name: fan }}\nspec:\n  tasks:\n    - {{ id: kids, type: workflow, for_each: \"range({tasks})\", with: {{ workflow: bench-child, inputs: {{ i: \"{{{{ item }}}}\" }} }} }}\n"
        );
    }
    if shape == "wide" {
        return format!(
            "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: {{ name: wide }}\nspec:\n  tasks:\n    - {{ id: a, type: transform, with: {{ output: 1 }} }}\n    - {{ id: docs, depends_on: [a], for_each: \"range({tasks})\", {} }}\n    - {{ id: z, type: transform, depends_on: [docs], with: {{ output: done }} }}\n",
            body(llm, "\"{{ item }}\"")
        );
    }
    if shape == "chain" {
        let mut y = String::from(
            "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: chain }\nspec:\n  tasks:\n",
        );
        for i in 0..tasks {
            let deps = if i == 0 { String::new() } else { format!(", depends_on: [t{}]", i - 1) };
            y.push_str(&format!("    - {{ id: t{i}{deps}, {} }}\n", body(llm, &i.to_string())));
        }
        return y;
    }
    let layers = 10.min(tasks);
    let width = tasks / layers;
    let mut y =
        String::from("apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: layered }\nspec:\n  tasks:\n");
    for l in 0..layers {
        for i in 0..width {
            let deps = if l == 0 {
                String::new()
            } else {
                format!(", depends_on: [t{}_{}, t{}_{}]", l - 1, i, l - 1, (i + 1) % width)
            };
            y.push_str(&format!("    - {{ id: t{l}_{i}{deps}, {} }}\n", body(llm, &i.to_string())));
        }
    }
    y
}

async fn fresh(aws: &Aws, tag: &str, folds: bool) -> Aws {
    let name = format!("bench-{tag}-{}", llmo_runtime::ports::now_ms() % 10_000_000);
    let r = Resources {
        table: name.clone(),
        queue: format!("{name}-steps"),
        dlq: format!("{name}-dead"),
        bucket: name.clone(),
        visibility_secs: 60,
        max_receives: 5,
        folds,
    };
    provision(aws, &r).await.expect("provision")
}

struct Run {
    tasks: usize,
    workers: usize,
    secs: f64,
    invocations: u64,
    /// Seconds the invocations ran, summed (what Lambda bills as duration).
    busy_secs: f64,
    usage: Reading,
}

/// How the workers are deployed.
struct Deployment {
    folds: bool,
    /// The step queue's batching window, seconds.
    window: i32,
    /// Attempts per step message.
    pack: usize,
    /// The providers of real model calls (`--latency`); none: transforms and mock models.
    models: Option<Config>,
    /// The `children` shape: runs in tenant `bench`, whose `bench-child` is registered.
    children: bool,
    /// The `agent` shape: its model is [`BenchModel`].
    agents: bool,
}

async fn run(aws: &Aws, source: &str, tasks: usize, workers: usize, d: &Deployment) -> Run {
    let (folds, window, pack) = (d.folds, d.window, d.pack);
    let aws = fresh(aws, &format!("w{workers}"), folds).await;
    let api = llmo_aws::api::build(
        &aws,
        llmo_runtime::standard_registry(Config::builtin(), true, Default::default()),
        Config::builtin(),
        true,
    );
    let tenant = if d.children { "bench" } else { "-" };
    if d.children {
        use llmo_runtime::workflows::Workflows;
        let defs = llmo_aws::dynamo::DynamoStore::new(aws.clone());
        defs.put(tenant, "bench-child", CHILD, llmo_runtime::ports::now_ms()).await.expect("registering the child");
    }
    let before = aws.meter.read();
    let t0 = Instant::now();
    // Started through the start-a-run use case, as the API does (the API's own
    // authentication and audit write are not part of a step's cost).
    let req =
        llmo_runtime::start::StartRequest { tenant: d.children.then(|| tenant.to_string()), ..Default::default() };
    let started = api
        .starter
        .start(&*api.store, &*api.queue, "bench.yaml", source, &req)
        .await
        .unwrap_or_else(|e| panic!("start failed: {e}"));
    let run_id = started.run_id;
    let invocations = Arc::new(AtomicU64::new(0));
    let busy_micros = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut handles = Vec::new();
    for _ in 0..workers {
        let mut registry = match &d.models {
            Some(config) => llmo_runtime::standard_registry(config.clone(), false, Default::default()),
            None => llmo_runtime::standard_registry(Config::builtin(), true, Default::default()),
        };
        if d.agents {
            registry.register("agent", Arc::new(BenchModel));
        }
        if d.children {
            registry.register("workflow", Arc::new(llmo_aws::env::children(&aws, &Config::builtin(), true)));
        }
        let mut step = Step::new(&aws, registry, llmo_aws::step::StepSettings::from_env());
        step.worker.pack = pack;
        let step = Arc::new(step);
        // Long polls of 20 s, as Lambda's event source mapping makes (an empty receive is a
        // billed request too).
        let mut queues = SqsQueue::step_queues(&aws);
        queues.iter_mut().for_each(|q| {
            q.wait_secs = 20;
            q.batch_window_secs = if q.fifo { 0 } else { window };
        });
        let (inv, busy, mut rx) = (invocations.clone(), busy_micros.clone(), stop_rx.clone());
        handles.push(tokio::spawn(async move {
            llmo_aws::local::poll_queues(
                &queues,
                10,
                |e| {
                    inv.fetch_add(1, Ordering::Relaxed);
                    let (step, busy) = (step.clone(), busy.clone());
                    async move {
                        let t = Instant::now();
                        let r = step.handle(e).await;
                        busy.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                        r
                    }
                },
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                },
            )
            .await
        }));
    }
    // Watched through clients of its own, so the watching is not counted as the run's.
    let watcher =
        Aws::from_env().await.expect("AWS settings").named(&aws.table, &aws.queue_url, &aws.dlq_url, &aws.bucket);
    let store = llmo_aws::dynamo::DynamoStore::new(watcher);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let runs = store
            .list_page(&llmo_aws::dynamo::ListFilter {
                tenant: tenant.into(),
                // The `children` shape's parent among its children.
                workflow: d.children.then(|| "fan".to_string()),
                ..Default::default()
            })
            .await
            .unwrap()
            .runs;
        if let Some(r) = runs.iter().find(|r| r.run_id == run_id && r.status != "running" && r.status != "pending") {
            // A benchmark of a run that failed measures nothing.
            if r.status != "succeeded" {
                use llmo_runtime::store::RunStore;
                let checked = llmo_core::validate::Validator::default()
                    .validate(&llmo_core::source::SourceFile::new("bench.yaml", source))
                    .checked
                    .expect("the bench workflow is valid");
                let stored = store.load(&run_id).await.unwrap().expect("the run is stored");
                let st = llmo_runtime::store::rebuild(&llmo_core::engine::Plan::new(checked), stored).unwrap();
                panic!("the run {run_id} ended {}: {:?}", r.status, st.error);
            }
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(1200), "the run did not finish");
    }
    let secs = t0.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    // Not waiting out the pollers' long polls: the run has ended, and the requests they make
    // from here on are not the run's.
    let usage = aws.meter.read().since(&before);
    for h in handles {
        h.abort();
        let _ = h.await;
    }
    Run {
        tasks,
        workers,
        secs,
        invocations: invocations.load(Ordering::Relaxed),
        busy_secs: busy_micros.load(Ordering::Relaxed) as f64 / 1e6,
        usage,
    }
}

/// The raw SDK calls of one step, one after another: receive, conditional put, query, send,
/// delete. Returns seconds per step.
async fn floor(aws: &Aws, n: usize) -> f64 {
    let aws = fresh(aws, "floor", false).await;
    let q = SqsQueue::new(aws.clone());
    aws.sqs.send_message().queue_url(&q.url).message_body("x").send().await.unwrap();
    let t0 = Instant::now();
    for i in 0..n {
        let got = aws
            .sqs
            .receive_message()
            .queue_url(&q.url)
            .max_number_of_messages(1)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        let m = got.messages().first().cloned().expect("a message");
        aws.dynamodb
            .put_item()
            .table_name(&aws.table)
            .item("pk", AttributeValue::S("RUN#floor".into()))
            .item("sk", AttributeValue::S(format!("LOG#{i:020}")))
            .item("t", AttributeValue::S("[]".into()))
            .condition_expression("attribute_not_exists(sk)")
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .unwrap();
        aws.dynamodb
            .query()
            .table_name(&aws.table)
            .key_condition_expression("pk = :pk AND sk > :s")
            .expression_attribute_values(":pk", AttributeValue::S("RUN#floor".into()))
            .expression_attribute_values(":s", AttributeValue::S(format!("LOG#{i:020}")))
            .consistent_read(true)
            .send()
            .await
            .unwrap();
        aws.sqs.send_message().queue_url(&q.url).message_body("x").send().await.unwrap();
        aws.sqs.delete_message().queue_url(&q.url).receipt_handle(m.receipt_handle().unwrap()).send().await.unwrap();
    }
    t0.elapsed().as_secs_f64() / n as f64
}

/// The `step` function's cold start, `n` times: a run is started (its `Start` waits in the
/// queue), then a fresh `step --local` process (the binary at `bin`) is spawned; reported are
/// spawn to ready (its "polling locally" log line: everything Lambda's Init Duration covers,
/// SDK configuration and executors included) and spawn to the `Start` applied (the first
/// message handled, receive included).
async fn cold_starts(aws: &Aws, bin: &str, n: usize) {
    use tokio::io::AsyncBufReadExt;
    const ONE: &str = "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: cold }\nspec:\n  tasks:\n    - { id: a, type: transform, with: { output: 1 } }\n";
    let (mut ready, mut first) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let aws = fresh(aws, "cold", true).await;
        let api = llmo_aws::api::build(
            &aws,
            llmo_runtime::standard_registry(Config::builtin(), true, Default::default()),
            Config::builtin(),
            true,
        );
        let run_id =
            api.starter.start(&*api.store, &*api.queue, "cold.yaml", ONE, &Default::default()).await.unwrap().run_id;
        let store = llmo_aws::dynamo::DynamoStore::new(aws.clone());
        let t0 = Instant::now();
        let mut child = tokio::process::Command::new(bin)
            .arg("--local")
            .envs(aws.resource_env())
            .env("LLMO_MOCK", "1")
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the step binary starts");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let ready_at = async {
            while let Ok(Some(l)) = lines.next_line().await {
                if l.contains("polling locally") {
                    return t0.elapsed();
                }
            }
            panic!("the step process ended before it was ready");
        };
        let applied_at = async {
            loop {
                if llmo_runtime::store::RunStore::version(&store, &run_id).await.unwrap().unwrap_or(0) > 0 {
                    return t0.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let (r, f) = tokio::join!(ready_at, applied_at);
        ready.push(r.as_secs_f64() * 1e3);
        first.push(f.as_secs_f64() * 1e3);
        let _ = child.kill().await;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    println!(
        "step cold start ({n} processes): ready {:.1} ms median ({:.1}-{:.1}), first message handled {:.1} ms median ({:.1}-{:.1})",
        median(&mut ready),
        ready[0],
        ready[ready.len() - 1],
        median(&mut first),
        first[0],
        first[first.len() - 1]
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--cold") {
        let bin = args.get(1).cloned().unwrap_or_else(|| "target/release/step".into());
        cold_starts(&Aws::from_env().await.expect("AWS settings"), &bin, 7).await;
        return;
    }
    let folds = !args.iter().any(|a| a == "--no-fold");
    let check = args.iter().any(|a| a == "--check");
    args.retain(|a| a != "--no-fold" && a != "--check");
    let mut window = 0;
    if let Some(i) = args.iter().position(|a| a == "--window") {
        window = args.get(i + 1).and_then(|a| a.parse().ok()).expect("--window SECS");
        args.drain(i..i + 2);
    }
    // Attempts per step message: the deployment's default unless given (1: one per message).
    let mut pack = llmo_aws::step::DEFAULT_ATTEMPTS_PER_MESSAGE;
    if let Some(i) = args.iter().position(|a| a == "--pack") {
        pack = args.get(i + 1).and_then(|a| a.parse().ok()).expect("--pack N");
        args.drain(i..i + 2);
    }
    // Steps that call a model answering after this many ms instead of transforms.
    let mut latency: Option<u64> = None;
    if let Some(i) = args.iter().position(|a| a == "--latency") {
        latency = Some(args.get(i + 1).and_then(|a| a.parse().ok()).expect("--latency MS"));
        args.drain(i..i + 2);
    }
    let shape = match args.first().map(String::as_str) {
        Some(s @ ("chain" | "layered" | "wide" | "children" | "agent")) => s.to_string(),
        _ => "layered".to_string(),
    };
    if args.first() == Some(&shape) {
        args.remove(0);
    }
    let tasks: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let workers: Vec<usize> =
        if args.len() > 1 { args[1..].iter().filter_map(|a| a.parse().ok()).collect() } else { vec![1, 2, 4] };
    let aws = Aws::from_env().await.expect("AWS settings");
    let server = latency.map(local_model::ModelServer::start);
    let models = server.as_ref().map(local_model::ModelServer::config);
    let source = workflow(tasks, &shape, latency.is_some());
    let what = match shape.as_str() {
        "wide" => format!("for_each of {tasks} items"),
        "children" => format!("for_each of {tasks} child runs of a one-task workflow (a step is a child)"),
        "agent" => format!(
            "for_each of {tasks} agents, {AGENT_TURNS} turns each, a tool call in each but the last (a step is a turn or a call)"
        ),
        _ => format!("{shape} DAG of {tasks} tasks"),
    };
    let kind = match latency {
        Some(ms) => format!("model calls answered after {ms} ms"),
        None => "transform tasks".to_string(),
    };
    println!(
        "{what}, {kind}, {}{}",
        if folds { "fold queue" } else { "no fold queue" },
        if window > 0 { format!(", {window} s batching window on the step queue") } else { String::new() }
    );
    println!("up to {pack} attempts per step message");
    let floor = floor(&aws, 100).await;
    println!(
        "emulator floor: {:.2} ms per step (receive, conditional put, query, send, delete; sequential)",
        floor * 1e3
    );
    println!(
        "| workers | tasks | wall s | steps/s | ms/step | vs floor | invocations/step | invocation ms/step | SQS req/step | DynamoDB req/step | WRU/step | RRU/step | S3 req/step | log writes | lost CAS | lost % | $/M steps |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let deployment =
        Deployment { folds, window, pack, models, children: shape == "children", agents: shape == "agent" };
    // (workers, WRU per step, lost writes, log writes) of each run, for `--check`.
    let mut seen: Vec<(usize, f64, u64, u64)> = Vec::new();
    for w in workers {
        let r = run(&aws, &source, tasks, w, &deployment).await;
        let n = match shape.as_str() {
            "wide" => r.tasks + 2,
            "agent" => r.tasks * (2 * AGENT_TURNS - 1),
            _ => r.tasks,
        } as f64;
        let u = r.usage;
        let inv = r.invocations as f64 / n;
        // Compute: with transforms, 20 ms at 128 MB per invocation and per step (this VM's
        // invocations mostly wait for the emulators, which AWS answers faster); with model
        // calls (`--latency`), the invocations' measured durations at 128 MB, since waiting
        // for a model is billed time.
        let compute = match latency {
            None => inv * price::LAMBDA_PER_INVOCATION_20MS_128MB + price::LAMBDA_PER_INVOCATION_20MS_128MB,
            Some(_) => r.busy_secs / n * 0.125 * price::LAMBDA_PER_GB_SECOND,
        };
        let cost = (u.sqs_requests as f64 / n) * price::SQS_PER_REQUEST
            + (u.wru / n) * price::DYNAMODB_PER_WRU
            + (u.rru / n) * price::DYNAMODB_PER_RRU
            + (u.s3_requests as f64 / n) * price::S3_PER_PUT
            + inv * price::LAMBDA_PER_REQUEST
            + compute;
        let per = r.secs / n;
        println!(
            "| {} | {} | {:.1} | {:.0} | {:.2} | {:.2}x | {:.3} | {:.1} | {:.3} | {:.3} | {:.3} | {:.3} | {:.4} | {} | {} | {:.1}% | ${:.3} |",
            r.workers,
            r.tasks,
            r.secs,
            n / r.secs,
            per * 1e3,
            per / floor,
            inv,
            r.busy_secs / n * 1e3,
            u.sqs_requests as f64 / n,
            u.dynamodb_requests as f64 / n,
            u.wru / n,
            u.rru / n,
            u.s3_requests as f64 / n,
            u.log_writes,
            u.lost_writes,
            100.0 * u.lost_writes as f64 / u.log_writes.max(1) as f64,
            cost * 1e6,
        );
        seen.push((r.workers, u.wru / n, u.lost_writes, u.log_writes));
    }
    if check {
        // The contention targets (issue 15): lost conditional writes at most 2% of the log's
        // writes at every fleet size, and WRU per step at the largest fleet within 1.2x of one
        // worker's.
        for (w, _, lost, writes) in &seen {
            assert!(*lost * 50 <= *writes, "{w} workers: {lost} of {writes} log writes lost (over 2%)");
        }
        if let (Some(one), Some(most)) = (seen.iter().find(|s| s.0 == 1), seen.iter().max_by_key(|s| s.0)) {
            assert!(
                most.1 <= 1.2 * one.1,
                "WRU per step with {} workers is {:.3}, over 1.2x one worker's {:.3}",
                most.0,
                most.1,
                one.1
            );
        }
        println!("check: contention targets hold");
    }
    println!(
        "AWS Step Functions Standard: ${:.2} per million state transitions",
        price::STEP_FUNCTIONS_STANDARD_PER_TRANSITION * 1e6
    );
}
