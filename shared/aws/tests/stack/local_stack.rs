//! The serverless runtime end to end against the local stack: the `api` handler starts runs,
//! `step` workers (each with its own state cache, as separate containers) advance them
//! through SQS, DynamoDB and S3. Every test audits the run's stored transition log. The tests
//! with worker *processes* (every example, SIGKILL, heartbeat) are in functions/step/tests/.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use llmo_core::engine::{Event, Millis, RunStatus};
use llmo_runtime::queue::{Delivery, Message, Queue, QueueError};
use serde_json::json;
use support::*;

const FAN: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: fan }
spec:
  inputs:
    n: { type: integer, default: 200 }
  tasks:
    - id: split
      type: transform
      with: { output: "{{ range(inputs.n) | list }}" }
    - id: branch
      type: transform
      depends_on: [split]
      for_each: tasks.split.output
      with: { output: "{{ item * 2 }}" }
    - id: join
      type: transform
      depends_on: [branch]
      with: { output: "{{ tasks.branch.output | sum }}" }
  outputs:
    total: "{{ tasks.join.output }}"
"#;

/// A 200-branch fan-out joined by one task, with 4 workers racing: the join is released and
/// run exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_200_branch_join_is_released_once_with_4_workers() {
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 30, 5).await;
    let api = api(&aws);
    let workers = Workers::start(&aws, 4, 10, |s| s);
    let (code, v) = call(&api, "POST", "/runs", Some(json!({"source": FAN, "inputs": {"n": 200}}))).await;
    assert_eq!(code, 201, "{v}");
    let run_id = v["run_id"].as_str().unwrap().to_string();
    let got = wait_end(&api, &run_id, 180).await;
    workers.stop().await;
    assert_eq!(got["status"], "succeeded", "{got}");
    assert_eq!(got["outputs"]["total"], json!((0..200).map(|i| i * 2).sum::<i64>()));
    let (initial, log) = initial_and_log(&aws, &run_id).await;
    check_log(&plan(FAN), &log, initial);
    let join_results = log.iter().filter(|t| matches!(t.event, Event::AttemptFinished { task: 2, .. })).count();
    assert_eq!(join_results, 1, "the join ran once");
}

/// Sends every message twice.
struct Twice(Arc<dyn Queue>);

#[async_trait]
impl Queue for Twice {
    async fn send(&self, m: &Message, delay: Millis) -> Result<(), QueueError> {
        self.0.send(m, delay).await?;
        self.0.send(m, delay).await
    }
    async fn send_batch(&self, ms: &[(Message, Millis)]) -> Result<(), QueueError> {
        self.0.send_batch(ms).await?;
        self.0.send_batch(ms).await
    }
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, QueueError> {
        self.0.receive(max).await
    }
    async fn ack(&self, r: &str) -> Result<(), QueueError> {
        self.0.ack(r).await
    }
}

/// Every message is delivered twice (to different workers): the outcome and log are those of
/// a fault-free run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_message_delivered_twice_changes_nothing() {
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 30, 5).await;
    let api = api(&aws);
    let workers = Workers::start(&aws, 3, 10, |mut s| {
        let twice: Arc<dyn Queue> = Arc::new(Twice(s.queue.clone()));
        s.worker.queue = twice;
        s
    });
    let (code, v) = call(&api, "POST", "/runs", Some(json!({"source": FAN, "inputs": {"n": 30}}))).await;
    assert_eq!(code, 201, "{v}");
    // The first message (Start) goes twice as well.
    let run_id = v["run_id"].as_str().unwrap().to_string();
    api.queue.send(&Message::Event { run_id: run_id.clone(), event: Event::Start }, 0).await.unwrap();
    let got = wait_end(&api, &run_id, 120).await;
    workers.stop().await;
    let want = embedded(FAN, json!({"n": 30})).await;
    assert_eq!(got["status"], "succeeded", "{got}");
    assert_eq!(got["outputs"], serde_json::to_value(&want.outputs).unwrap());
    let (initial, log) = initial_and_log(&aws, &run_id).await;
    check_log(&plan(FAN), &log, initial);
    assert_eq!(log.len() as u64, want.version, "as many transitions as a run without duplicates");
}

/// A message no worker can process (from a newer producer) is retried, moved to the
/// dead-letter queue, and the `dlq` handler fails its run with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_message_is_dead_lettered_and_fails_its_run() {
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 1, 2).await;
    let api = api(&aws);
    let store = llmo_aws::dynamo::DynamoStore::new(aws.clone());
    // A run whose start message never comes: only the poison message is about it.
    let p = plan(FAN);
    let mut st = p.new_run("poisoned", serde_json::Map::from_iter([("n".to_string(), json!(3))]));
    st.tenant = Some("t1".into()); // the tenant `call` reads as

    llmo_runtime::store::RunStore::create(&store, "fan", "fan.yaml", FAN, &st).await.unwrap();
    let poison = json!({"v": 99, "kind": "event", "run_id": "poisoned", "event": {"type": "start"}}).to_string();
    llmo_aws::sqs::SqsQueue::new(aws.clone()).send_body(poison, 0).await.unwrap();
    let workers = Workers::start(&aws, 1, 10, |s| s);
    let dead = Workers::dead_letters(&aws);
    let got = wait_end(&api, "poisoned", 60).await;
    workers.stop().await;
    dead.stop().await;
    assert_eq!(got["status"], "failed", "{got}");
    let error = got["error"].as_str().unwrap();
    assert!(error.contains("dead-letter") && error.contains("newer than this worker"), "{error}");
}

/// A run whose stored workflow no longer validates can never be stepped: its messages are
/// dead-lettered and the `dlq` handler ends it `failed` without the engine, with the reason;
/// the status route shows that instead of an internal error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_whose_stored_workflow_is_corrupt_dead_letters_and_ends_failed() {
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 1, 2).await;
    let api = api(&aws);
    let store = llmo_aws::dynamo::DynamoStore::new(aws.clone());
    let p = plan(FAN);
    let mut st = p.new_run("corrupt", serde_json::Map::from_iter([("n".to_string(), json!(3))]));
    st.tenant = Some("t1".into());
    let broken = FAN.replace("tasks:", "taskz:");
    llmo_runtime::store::RunStore::create(&store, "fan", "fan.yaml", &broken, &st).await.unwrap();
    let start = Message::Event { run_id: "corrupt".into(), event: Event::Start };
    api.queue.send(&start, 0).await.unwrap();
    let workers = Workers::start(&aws, 1, 10, |s| s);
    let dead = Workers::dead_letters(&aws);
    let got = wait_end(&api, "corrupt", 60).await;
    workers.stop().await;
    dead.stop().await;
    assert_eq!(got["status"], "failed", "{got}");
    let error = got["error"].as_str().unwrap();
    assert!(error.starts_with("message moved to the dead-letter queue: delivered"), "{error}");
    assert!(got["unreadable"].as_str().unwrap().contains("no longer validates"), "{got}");
    let (_, log) = initial_and_log(&aws, "corrupt").await;
    assert!(matches!(log.last().map(|t| &t.event), Some(Event::Abort { .. })), "{log:?}");
    assert_eq!(log.iter().filter(|t| matches!(t.event, Event::Abort { .. })).count(), 1, "aborted once");
}

/// Always answers like a service that is down: a retryable failure.
struct Down;

#[async_trait]
impl llmo_runtime::executor::Executor for Down {
    async fn execute(&self, _: &llmo_runtime::executor::Attempt) -> llmo_core::engine::AttemptResult {
        llmo_core::engine::AttemptResult::Failed {
            error: "HTTP 503: down".into(),
            retryable: true,
            usage: Default::default(),
        }
    }
}

/// The run timeout holds in the serverless runtime: a run whose task keeps retrying ends
/// `timed_out` at its deadline (the step that started it armed a `Tick`), and what the task
/// does after that is not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_whose_task_keeps_retrying_times_out() {
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 30, 5).await;
    let api = api(&aws);
    const RETRYING: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: retrying }
spec:
  timeout: 5s
  tasks:
    - id: call
      type: http
      retry: { max_attempts: 100, backoff: { initial: 200ms, max: 200ms, jitter: none } }
      with: { url: "https://down.example.invalid/" }
"#;
    let (code, v) = call(&api, "POST", "/runs", Some(json!({"source": RETRYING}))).await;
    assert_eq!(code, 201, "{v}");
    let run_id = v["run_id"].as_str().unwrap().to_string();
    let workers = Workers::start(&aws, 1, 10, |mut s| {
        let mut reg = executors();
        reg.register("http", Arc::new(Down));
        s.worker.executors = Arc::new(reg);
        s
    });
    let started = std::time::Instant::now();
    let got = wait_end(&api, &run_id, 30).await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(600)).await;
    workers.stop().await;
    assert_eq!(got["status"], "timed_out", "{got}");
    // SQS delays are whole seconds, so a 200 ms backoff waits about a second: a 5 s deadline
    // leaves room for several attempts even on a loaded machine (CI once saw one in 2 s).
    assert!(took >= Duration::from_millis(4000) && took < Duration::from_secs(20), "{took:?}");
    let attempts = got["tasks"][0]["attempts"].as_u64().unwrap();
    assert!(attempts >= 2, "it was retrying: {got}");
    let (initial, log) = initial_and_log(&aws, &run_id).await;
    let st = check_log(&plan(RETRYING), &log, initial);
    assert_eq!(st.status, RunStatus::TimedOut);
    assert_eq!(log.last().unwrap().event, Event::Tick, "nothing stored after the timeout");
}

/// Cancel reaches an attempt in flight: the worker running a slow HTTP call sees the cancel
/// (it reads the run's log while attempts run) and drops the call: the server sees the
/// connection close long before it would have answered, and no result is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_stops_a_slow_http_call_and_stores_no_result() {
    use tokio::io::AsyncReadExt;
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 30, 5).await;
    let api = api(&aws);
    // A server that never answers and reports when the client hangs up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (hung_up, mut hung_up_rx) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let hung_up = hung_up.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = hung_up.send(std::time::Instant::now());
            });
        }
    });
    let slow = format!(
        "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: {{ name: slow }}\nspec:\n  tasks:\n    - {{ id: call, type: http, timeout: 60s, with: {{ url: 'http://127.0.0.1:{port}/slow' }} }}\n"
    );
    let (code, v) = call(&api, "POST", "/runs", Some(json!({"source": slow}))).await;
    assert_eq!(code, 201, "{v}");
    let run_id = v["run_id"].as_str().unwrap().to_string();
    let workers = Workers::start(&aws, 1, 10, |mut s| {
        let mut reg = executors();
        let http = llmo_runtime::http::HttpExecutor::new(
            llmo_runtime::egress::Egress::loopback(),
            Arc::new(llmo_runtime::secrets::MapSecrets::default()),
            Default::default(),
        );
        reg.register("http", Arc::new(http));
        s.worker.executors = Arc::new(reg);
        s.worker.watch_every = Some(Duration::from_millis(200));
        s
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = call(&api, "GET", &format!("/runs/{run_id}"), None).await;
        if v["tasks"][0]["status"] == "running" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the call did not start: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // the request is on the wire
    let cancelled_at = std::time::Instant::now();
    let (code, v) = call(&api, "POST", &format!("/runs/{run_id}/cancel"), None).await;
    assert_eq!(code, 200, "{v}");
    let hung = tokio::time::timeout(Duration::from_secs(10), hung_up_rx.recv()).await;
    let hung = hung.expect("the call was stopped within 10 s").unwrap();
    assert!(hung.duration_since(cancelled_at) < Duration::from_secs(5), "{:?}", hung.duration_since(cancelled_at));
    tokio::time::sleep(Duration::from_millis(500)).await;
    workers.stop().await;
    server.abort();
    let got = wait_end(&api, &run_id, 10).await;
    assert_eq!(got["status"], "cancelled", "{got}");
    let (initial, log) = initial_and_log(&aws, &run_id).await;
    check_log(&plan(&slow), &log, initial);
    assert_eq!(log.last().unwrap().event, Event::Cancel, "no result stored after the cancel");
    assert!(!log.iter().any(|t| matches!(t.event, Event::AttemptFinished { .. })), "{log:?}");
}

/// DynamoDB's 400 KB limit is on the whole item: a 250 KB workflow with a 250 KB input (each
/// under the spill threshold alone) still creates the run, which runs to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_250_kb_source_with_a_250_kb_input_creates_the_run() {
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 30, 5).await;
    let api = api(&aws);
    let comment: String = (0..4200).map(|i| format!("# {i:060}\n")).collect();
    let source = format!(
        "{comment}apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: {{ name: wide }}\nspec:\n  inputs:\n    text: {{ type: string }}\n  tasks:\n    - {{ id: size, type: transform, with: {{ output: \"{{{{ inputs.text | length }}}}\" }} }}\n  outputs:\n    size: \"{{{{ tasks.size.output }}}}\"\n"
    );
    assert!(source.len() > 250 * 1024);
    let text = "b".repeat(250 * 1024);
    let (code, v) = call(&api, "POST", "/runs", Some(json!({"source": source, "inputs": {"text": text}}))).await;
    assert_eq!(code, 201, "{v}");
    let run_id = v["run_id"].as_str().unwrap().to_string();
    let workers = Workers::start(&aws, 1, 10, |s| s);
    let got = wait_end(&api, &run_id, 30).await;
    workers.stop().await;
    assert_eq!(got["status"], "succeeded", "{got}");
    assert_eq!(got["outputs"]["size"], json!(250 * 1024));
}

/// Ten messages just under the claim-check size (200 KB each, 2 MB in all) go out in batches
/// under SQS's 1 MiB per request, and all ten arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_200_kb_messages_are_sent_in_batches_under_the_request_limit() {
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 30, 5).await;
    let queue = llmo_aws::sqs::SqsQueue::new(aws.clone());
    let msgs: Vec<(Message, Millis)> = (0..10)
        .map(|i| {
            let reason = format!("{i}:{}", "r".repeat(190 * 1024));
            (Message::Event { run_id: format!("big-{i}"), event: Event::Abort { reason } }, 0)
        })
        .collect();
    queue.send_batch(&msgs).await.unwrap();
    let mut got = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while got.len() < 10 && std::time::Instant::now() < deadline {
        for d in queue.receive(10).await.unwrap() {
            got.insert(d.message.run_id().to_string());
            queue.ack(&d.receipt).await.unwrap();
        }
    }
    assert_eq!(got.len(), 10, "{got:?}");
}

/// Every item of a run (run, start key, log items, snapshot) expires at the same time: its
/// creation plus the retention, the one setting the bucket's lifecycle also uses; and the
/// run carries the deployment's longest run time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_item_of_a_run_expires_at_the_same_time() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 30, 5).await;
    let api = api(&aws);
    let (code, v) =
        call(&api, "POST", "/runs", Some(json!({"source": FAN, "inputs": {"n": 4}, "idempotency_key": "k-exp"}))).await;
    assert_eq!(code, 201, "{v}");
    let run_id = v["run_id"].as_str().unwrap().to_string();
    let workers = Workers::start(&aws, 1, 1, |s| s);
    let got = wait_end(&api, &run_id, 30).await;
    workers.stop().await;
    assert_eq!(got["status"], "succeeded", "{got}");
    let items = aws
        .dynamodb
        .query()
        .table_name(&aws.table)
        .key_condition_expression("pk = :p")
        .expression_attribute_values(":p", AttributeValue::S(format!("RUN#{run_id}")))
        .send()
        .await
        .unwrap();
    let mut expiries: Vec<(String, String)> = items
        .items()
        .iter()
        .map(|i| {
            let sk = i["sk"].as_s().unwrap().clone();
            let x = i.get("expires_at").and_then(|x| x.as_n().ok()).cloned().unwrap_or_else(|| format!("none on {sk}"));
            (sk, x)
        })
        .collect();
    let scan = aws.dynamodb.scan().table_name(&aws.table).send().await.unwrap();
    for i in scan.items() {
        if i["pk"].as_s().unwrap().starts_with("IDEM#") && i.get("run_id").and_then(|r| r.as_s().ok()) == Some(&run_id)
        {
            expiries.push(("IDEM".into(), i["expires_at"].as_n().unwrap().clone()));
        }
    }
    let kinds: std::collections::BTreeSet<&str> = expiries.iter().map(|(k, _)| &k[..4]).collect();
    assert!(["IDEM", "LOG#", "META", "SNAP"].iter().all(|k| kinds.contains(k)), "{expiries:?}");
    let first = &expiries[0].1;
    assert!(expiries.iter().all(|(_, x)| x == first), "{expiries:?}");
    let created_ms: u64 = run_id[4..17].parse().unwrap();
    let want = created_ms / 1000 + aws.lifetime.horizon_secs();
    assert_eq!(first.parse::<u64>().unwrap(), want);
    let (initial, _) = initial_and_log(&aws, &run_id).await;
    assert_eq!(initial.max_age_ms, Some(aws.lifetime.max_run_ms()));
}

/// The sweeper ends what no message would: a run stored without its `Start` message is
/// started, and a running run past its deadline whose `Tick` never came is timed out; a run
/// that ended is out of the sweeper's index, and sweeping twice changes nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sweeper_starts_orphaned_runs_and_times_out_overdue_ones() {
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 30, 5).await;
    let api = api(&aws);
    let store = llmo_aws::dynamo::DynamoStore::new(aws.clone());
    use llmo_runtime::store::RunStore;
    // An orphan: stored, its Start never sent.
    let p = plan(FAN);
    let mut orphan = p.new_run("orphan", serde_json::Map::from_iter([("n".to_string(), json!(2))]));
    orphan.tenant = Some("t1".into());
    store.create("fan", "fan.yaml", FAN, &orphan).await.unwrap();
    // Overdue: started (its deadline stored), its Tick lost.
    const SLOW: &str = "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: slow }\nspec:\n  timeout: 1s\n  tasks:\n    - { id: a, type: transform, with: { output: 1 } }\n";
    let slow = plan(SLOW);
    let mut overdue = slow.new_run("overdue", serde_json::Map::new());
    overdue.tenant = Some("t1".into());
    store.create("slow", "slow.yaml", SLOW, &overdue).await.unwrap();
    let mut head = overdue.clone();
    let now = llmo_runtime::ports::now_ms();
    slow.apply(&mut head, &Event::Start, now).unwrap();
    let t = llmo_runtime::store::Transition::new(1, now, Event::Start);
    assert!(store.append(0, &[t], &head).await.unwrap());

    let sweeper = llmo_aws::api::sweeper(&aws, 0);
    let early = sweeper.sweep(now + 10).await.unwrap();
    assert_eq!(early.restarted, vec!["orphan".to_string()], "{early:?}");
    assert!(early.timed_out.is_empty(), "not overdue yet: {early:?}");
    let out = sweeper.sweep(now + 5_000).await.unwrap();
    assert_eq!(out.timed_out, vec!["overdue".to_string()], "{out:?}");
    let workers = Workers::start(&aws, 1, 10, |s| s);
    let a = wait_end(&api, "orphan", 30).await;
    let b = wait_end(&api, "overdue", 30).await;
    workers.stop().await;
    assert_eq!(a["status"], "succeeded", "{a}");
    assert_eq!(b["status"], "timed_out", "{b}");
    let after = sweeper.sweep(now + 10_000).await.unwrap();
    assert_eq!(after.looked_at, 0, "ended runs leave the index: {after:?}");
    let (_, log) = initial_and_log(&aws, "orphan").await;
    assert_eq!(log.iter().filter(|t| t.event == Event::Start).count(), 1, "started once");
}

/// The sweeper pages the whole index for what it must act on: one tenant's runs that only
/// wait (more of them than a sweep acts on, all older) never hide another tenant's orphan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_waiting_runs_do_not_hide_an_orphan_from_the_sweeper() {
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 30, 5).await;
    let store = llmo_aws::dynamo::DynamoStore::new(aws.clone());
    use llmo_runtime::store::RunStore;
    const NAP: &str = "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: nap }\nspec:\n  timeout: 30d\n  tasks:\n    - { id: a, type: wait, with: { sleep: { for: 20d } } }\n";
    let nap = plan(NAP);
    let now = llmo_runtime::ports::now_ms();
    for i in 0..12 {
        let mut st = nap.new_run(format!("sleeper-{i}"), serde_json::Map::new());
        st.tenant = Some("t-sleepy".into());
        store.create("nap", "nap.yaml", NAP, &st).await.unwrap();
        let mut head = st.clone();
        nap.apply(&mut head, &Event::Start, now).unwrap();
        let t = llmo_runtime::store::Transition::new(1, now, Event::Start);
        assert!(store.append(0, &[t], &head).await.unwrap());
    }
    let p = plan(FAN);
    let mut orphan = p.new_run("late-orphan", serde_json::Map::from_iter([("n".to_string(), json!(2))]));
    orphan.tenant = Some("t-other".into());
    store.create("fan", "fan.yaml", FAN, &orphan).await.unwrap();
    let mut sweeper = llmo_aws::api::sweeper(&aws, 0);
    sweeper.limit = 5;
    let out = sweeper.sweep(llmo_runtime::ports::now_ms() + 10).await.unwrap();
    assert_eq!(out.restarted, vec!["late-orphan".to_string()], "{out:?}");
    assert!(out.timed_out.is_empty(), "{out:?}");
    assert_eq!(out.looked_at, 13, "every live run was looked at: {out:?}");
}

/// Payloads over the limits (a 450 KB input, a 900 KB task output, a 450 KB message, none of
/// which deflates under the item limit) travel through S3 and come back intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payloads_over_the_size_limits_travel_through_s3() {
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 30, 5).await;
    let api = api(&aws);
    let workers = Workers::start(&aws, 2, 10, |s| s);
    const BIG: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: big }
spec:
  inputs:
    text: { type: string }
  tasks:
    - id: twice
      type: transform
      with: { output: "{{ inputs.text ~ inputs.text }}" }
    - id: size
      type: transform
      depends_on: [twice]
      with: { output: "{{ tasks.twice.output | length }}" }
  outputs:
    size: "{{ tasks.size.output }}"
    tail: "{{ tasks.twice.output[-5:] }}"
"#;
    // Incompressible (payloads are stored deflated): 64 symbols drawn at random.
    const SYMBOLS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let text: String = (0..450 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            SYMBOLS[(x >> 58) as usize] as char
        })
        .collect();
    let (code, v) = call(&api, "POST", "/runs", Some(json!({"source": BIG, "inputs": {"text": text}}))).await;
    assert_eq!(code, 201, "{v}");
    let run_id = v["run_id"].as_str().unwrap().to_string();
    let got = wait_end(&api, &run_id, 60).await;
    workers.stop().await;
    assert_eq!(got["status"], "succeeded", "{got}");
    assert_eq!(got["outputs"]["size"], json!(900 * 1024));
    let objects = aws.s3.list_objects_v2().bucket(&aws.bucket).prefix(format!("runs/{run_id}/")).send().await.unwrap();
    let keys: Vec<&str> = objects.contents().iter().filter_map(|o| o.key()).collect();
    assert!(keys.iter().any(|k| k.contains("/initial-")), "input spilled: {keys:?}");
    assert!(keys.iter().any(|k| k.contains("/log-")), "output spilled: {keys:?}");
    assert!(keys.iter().any(|k| k.ends_with("/result.json")), "result written: {keys:?}");
    // A message over SQS's limit goes by claim check.
    let q = llmo_aws::sqs::SqsQueue::new(aws.clone());
    let big = Message::Event { run_id: "r".into(), event: Event::Abort { reason: text.clone() } };
    q.send(&big, 0).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..5 {
        got = q.receive(1).await.unwrap();
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message, big);
}

const CHAIN: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: chain }
spec:
  tasks:
    - { id: t0, type: transform, with: { output: 0 } }
    - { id: t1, type: transform, depends_on: [t0], with: { output: 1 } }
    - { id: t2, type: transform, depends_on: [t1], with: { output: 2 } }
    - { id: t3, type: transform, depends_on: [t2], with: { output: 3 } }
    - { id: t4, type: transform, depends_on: [t3], with: { output: 4 } }
    - { id: t5, type: transform, depends_on: [t4], with: { output: 5 } }
    - { id: t6, type: transform, depends_on: [t5], with: { output: 6 } }
    - { id: t7, type: transform, depends_on: [t6], with: { output: 7 } }
    - { id: t8, type: transform, depends_on: [t7], with: { output: 8 } }
    - { id: t9, type: transform, depends_on: [t8], with: { output: 9 } }
"#;

fn long_chain(n: usize) -> String {
    let mut s = String::from(
        "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: long-chain }\nspec:\n  tasks:\n",
    );
    for i in 0..n {
        let dep = if i == 0 { String::new() } else { format!(", depends_on: [t{}]", i - 1) };
        s.push_str(&format!("    - {{ id: t{i}, type: transform{dep}, with: {{ output: {i} }} }}\n"));
    }
    s
}

/// A cancel through the API stops the run: no transition after it, the rest cancelled, and
/// the same start key never starts a second run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_stops_a_run_and_a_start_key_starts_one_run() {
    let Some(aws) = aws().await else { return };
    // Long enough that the cancel lands mid-run although a worker steps a chain in place (400
    // tasks once ran to the end first, in 6.5 s, on a busy CI machine: the cancel's write
    // waits for the worker stepping the chain; a longer chain costs nothing when it lands).
    let chain = long_chain(1000);
    let chain = chain.as_str();
    let aws = stack(&aws, 30, 5).await;
    let api = api(&aws);
    let body = json!({"source": chain, "idempotency_key": "k-1"});
    let (code, v) = call(&api, "POST", "/runs", Some(body.clone())).await;
    assert_eq!(code, 201, "{v}");
    let run_id = v["run_id"].as_str().unwrap().to_string();
    let (code, again) = call(&api, "POST", "/runs", Some(body)).await;
    assert_eq!((code, again["run_id"].as_str()), (200, Some(run_id.as_str())), "one key, one run");
    let workers = Workers::start(&aws, 1, 1, |s| s);
    // Let a few tasks finish, then cancel.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, v) = call(&api, "GET", &format!("/runs/{run_id}"), None).await;
        let done = v["tasks"].as_array().unwrap().iter().filter(|t| t["status"] == "succeeded").count();
        if done >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the run did not progress: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, v) = call(&api, "POST", &format!("/runs/{run_id}/cancel"), None).await;
    assert_eq!(code, 200, "{v}");
    // A cancel that lost the log to the busy worker waits on the fold queue for a worker:
    // keep them until the run has ended (a fixed 2 s was too short on a loaded machine).
    let got = wait_end(&api, &run_id, 60).await;
    workers.stop().await;
    assert_eq!(got["status"], "cancelled", "{got}");
    let (initial, log) = initial_and_log(&aws, &run_id).await;
    let st = check_log(&plan(chain), &log, initial);
    assert_eq!(st.status, RunStatus::Cancelled);
    assert_eq!(log.last().unwrap().event, Event::Cancel, "nothing was stored after the cancel");
    let tasks = got["tasks"].as_array().unwrap();
    assert!(tasks.iter().any(|t| t["status"] == "cancelled"), "{got}");
}

/// A delay longer than SQS holds a message (15 minutes; 1 s here) is carried by the
/// `llmo-not-before` attribute: the step handler sends an early message back with the rest of
/// its delay, and the run starts no earlier than asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delay_longer_than_sqs_allows_is_honoured() {
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 30, 5).await;
    let api = api(&aws);
    let (code, v) = call(&api, "POST", "/runs", Some(json!({"source": CHAIN}))).await;
    assert_eq!(code, 201, "{v}");
    let run_id = v["run_id"].as_str().unwrap().to_string();
    // Take the API's immediate start off the queue and send it again, 3.5 s late, through a
    // queue whose longest delay is 1 s.
    let mut short = llmo_aws::sqs::SqsQueue::new(aws.clone());
    let records = short.receive_records(10).await.unwrap();
    assert_eq!(records.len(), 1, "the start message");
    let receipts: Vec<String> = records.iter().filter_map(|r| r.receipt_handle.clone()).collect();
    short.delete_batch(&receipts).await.unwrap();
    short.max_delay_ms = 1000;
    let sent = llmo_runtime::ports::now_ms();
    short.send(&Message::Event { run_id: run_id.clone(), event: Event::Start }, 3500).await.unwrap();
    let workers = Workers::start(&aws, 1, 10, |s| s);
    let got = wait_end(&api, &run_id, 60).await;
    workers.stop().await;
    assert_eq!(got["status"], "succeeded", "{got}");
    let started = got["started_at"].as_u64().unwrap();
    assert!(started >= sent + 3500, "the run started {} ms after the delayed start was sent", started - sent);
    let (initial, log) = initial_and_log(&aws, &run_id).await;
    check_log(&plan(CHAIN), &log, initial);
}

/// `GET /costs` sums what a tenant's runs recorded (runs, tokens, cost) per UTC day and
/// workflow, or for the tenant; another tenant sees none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn costs_roll_up_a_tenants_runs_per_day_and_workflow() {
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 30, 5).await;
    let api = api(&aws);
    let workers = Workers::start(&aws, 1, 10, |s| s);
    let source = std::fs::read_to_string(root().join("workflows/simple-inference.yaml")).unwrap();
    let mut tokens = 0;
    for q in ["What is a DAG?", "What is a queue?"] {
        let (code, v) = call(&api, "POST", "/runs", Some(json!({"source": source, "inputs": {"question": q}}))).await;
        assert_eq!(code, 201, "{v}");
        let got = wait_end(&api, v["run_id"].as_str().unwrap(), 60).await;
        assert_eq!(got["status"], "succeeded", "{got}");
        tokens += got["tokens"].as_u64().unwrap();
    }
    let (code, v) = call(&api, "POST", "/runs", Some(json!({"source": FAN, "inputs": {"n": 3}}))).await;
    assert_eq!(code, 201, "{v}");
    wait_end(&api, v["run_id"].as_str().unwrap(), 60).await;
    workers.stop().await;
    assert!(tokens > 0);

    let (code, v) = call(&api, "GET", "/costs?by=workflow&since=1d", None).await;
    assert_eq!(code, 200, "{v}");
    let rows = v["rows"].as_array().unwrap();
    let day = llmo_runtime::costs::day_of(llmo_runtime::ports::now_ms());
    let simple = rows.iter().find(|r| r["key"] == "simple-inference").unwrap_or_else(|| panic!("{v}"));
    assert_eq!(
        (simple["day"].as_str(), simple["runs"].as_u64(), simple["tokens"].as_u64()),
        (Some(day.as_str()), Some(2), Some(tokens))
    );
    let fan = rows.iter().find(|r| r["key"] == "fan").unwrap();
    assert_eq!((fan["runs"].as_u64(), fan["tokens"].as_u64()), (Some(1), Some(0)));
    assert_eq!(v["total"]["runs"], 3);
    assert_eq!(v["truncated"], false);

    let (_, v) = call(&api, "GET", "/costs?by=tenant&since=7d", None).await;
    assert_eq!(v["rows"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!((v["rows"][0]["key"].as_str(), v["rows"][0]["runs"].as_u64()), (Some("t1"), Some(3)));

    let other = token("someone", "t2", &["viewer"]);
    let (code, v) = call_as(&api, Some(&other), "GET", "/costs", None).await;
    assert_eq!(code, 200);
    assert_eq!(v["rows"], json!([]), "another tenant's runs are not counted");
    for bad in ["/costs?by=model", "/costs?since=7w", "/costs?since=1000d"] {
        assert_eq!(call(&api, "GET", bad, None).await.0, 400, "{bad}");
    }
}

/// A dependency that fails `fetch` while `broken`, counting the calls it receives.
struct Flaky {
    calls: std::sync::atomic::AtomicUsize,
    broken: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl llmo_runtime::executor::Executor for Flaky {
    async fn execute(&self, a: &llmo_runtime::executor::Attempt) -> llmo_core::engine::AttemptResult {
        use std::sync::atomic::Ordering::SeqCst;
        self.calls.fetch_add(1, SeqCst);
        if self.broken.load(SeqCst) && &*a.task_id == "fetch" {
            llmo_core::engine::AttemptResult::Failed {
                error: "HTTP 503: down for maintenance".into(),
                retryable: false,
                usage: Default::default(),
            }
        } else {
            llmo_core::engine::AttemptResult::Succeeded {
                output: json!({"status": 200, "body": {"n": if &*a.task_id == "first" { 4 } else { 2 }}}).into(),
                usage: Default::default(),
            }
        }
    }
}

/// `POST /runs/{id}/redrive` on the serverless runtime: a run failed at a broken dependency
/// continues from that task once it is fixed; the tasks that succeeded are not run again (the
/// dependency counts its calls), the run item's status and the sweeper's index follow, and a
/// run that is not failed answers 409.
fn flaky_setup(flaky: &Arc<Flaky>) -> Setup {
    let dep = flaky.clone();
    Setup {
        workers: 2,
        executors: Arc::new(move || {
            let mut reg = executors();
            reg.register("http", dep.clone());
            reg
        }),
        ..Setup::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_continues_a_failed_run_from_its_failed_task() {
    let flaky = Arc::new(Flaky { calls: Default::default(), broken: true.into() });
    let Some(t) = Target::stack(flaky_setup(&flaky)).await else { return };
    redrive(&t, &flaky).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_continues_a_failed_run_from_its_failed_task_on_serve() {
    let flaky = Arc::new(Flaky { calls: Default::default(), broken: true.into() });
    let t = Target::serve(flaky_setup(&flaky)).await;
    redrive(&t, &flaky).await;
    t.stop().await;
}

async fn redrive(t: &Target, flaky: &Flaky) {
    use std::sync::atomic::Ordering::SeqCst;
    let api = t.api.clone();
    let source = std::fs::read_to_string(root().join("tests/fixtures/redrive/flaky.yaml")).unwrap();
    let (code, v) =
        call(&api, "POST", "/runs", Some(json!({"source": source, "inputs": {"base": "https://example.invalid"}})))
            .await;
    assert_eq!(code, 201, "{v}");
    let run_id = v["run_id"].as_str().unwrap().to_string();
    let got = wait_end(&api, &run_id, 60).await;
    assert_eq!(got["status"], "failed", "{got}");
    assert_eq!(flaky.calls.load(SeqCst), 2, "first, then fetch");
    let (code, v) = call(&api, "POST", "/runs/run-0000000000000-000000000000000000000000/redrive", None).await;
    assert_eq!(code, 404, "{v}");

    flaky.broken.store(false, SeqCst);
    let uri = format!("/runs/{run_id}/redrive");
    let (code, v) = call(&api, "POST", &uri, Some(json!({"inputs": {"bsae": "https://x.invalid"}}))).await;
    assert_eq!(code, 422, "an edit that does not check is refused: {v}");
    // Redriven with an edited input (recorded in the log with the redrive).
    let (code, v) = call(&api, "POST", &uri, Some(json!({"inputs": {"base": "https://moved.invalid"}}))).await;
    assert_eq!(code, 200, "{v}");
    assert!(["running", "succeeded"].contains(&v["status"].as_str().unwrap()), "{v}");
    let got = wait_end(&api, &run_id, 60).await;
    // The listings follow the run's status (the run item's summary moved with the redrive).
    let listed = |status: &'static str| {
        let api = &api;
        async move { call(api, "GET", &format!("/runs?status={status}"), None).await.1 }
    };
    let has = |v: &serde_json::Value| v["runs"].as_array().unwrap().iter().any(|r| r["run_id"] == run_id.as_str());
    assert!(has(&listed("succeeded").await));
    assert!(!has(&listed("failed").await));
    assert_eq!(got["status"], "succeeded", "{got}");
    assert_eq!(got["outputs"]["total"], json!(42));
    assert_eq!(flaky.calls.load(SeqCst), 3, "only the failed task called out again");
    let tasks = got["tasks"].as_array().unwrap();
    let attempts: Vec<u64> = tasks.iter().map(|t| t["attempts"].as_u64().unwrap()).collect();
    assert_eq!(attempts, vec![1, 1, 2, 1]);
    let (code, v) = call(&api, "POST", &format!("/runs/{run_id}/redrive"), None).await;
    assert_eq!(code, 409, "{v}");
    let (initial, log) = t.initial_and_log(&run_id).await;
    let st = check_log(&plan(&source), &log, initial);
    assert_eq!(st.status, RunStatus::Succeeded);
    assert!(
        log.iter().any(
            |t| matches!(&t.event, Event::Redrive { inputs: Some(i), .. } if i["base"] == "https://moved.invalid")
        )
    );
    assert_eq!(st.inputs["base"], "https://moved.invalid");
}

/// `POST /runs/{id}/rerun` on the serverless runtime: a new run that reuses the fan-out's
/// recorded outputs and runs the join again; its provenance names the source run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_from_the_join_reuses_the_fan_out() {
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 30, 5).await;
    let api = api(&aws);
    let workers = Workers::start(&aws, 2, 10, |s| s);
    let (code, v) = call(&api, "POST", "/runs", Some(json!({"source": FAN, "inputs": {"n": 5}}))).await;
    assert_eq!(code, 201, "{v}");
    let first = v["run_id"].as_str().unwrap().to_string();
    let got = wait_end(&api, &first, 60).await;
    assert_eq!(got["status"], "succeeded", "{got}");
    let (code, v) = call(&api, "POST", &format!("/runs/{first}/rerun"), Some(json!({"from": "nope"}))).await;
    assert_eq!(code, 409, "{v}");
    let (code, v) = call(&api, "POST", &format!("/runs/{first}/rerun"), Some(json!({"from": "join"}))).await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["reused_tasks"], 2);
    let second = v["run_id"].as_str().unwrap().to_string();
    let again = wait_end(&api, &second, 60).await;
    workers.stop().await;
    assert_eq!(again["status"], "succeeded", "{again}");
    assert_eq!(again["outputs"], got["outputs"]);
    assert_eq!(again["rerun_of"], json!({"run_id": first, "from": "join"}));
    let attempts: Vec<u64> =
        again["tasks"].as_array().unwrap().iter().map(|t| t["attempts"].as_u64().unwrap()).collect();
    assert_eq!(attempts, vec![0, 0, 1], "split and branch reused, join run again");
    let other = token("someone", "t2", &["developer"]);
    let (code, _) =
        call_as(&api, Some(&other), "POST", &format!("/runs/{first}/rerun"), Some(json!({"from": "join"}))).await;
    assert_eq!(code, 404, "another tenant's run");
    let (initial, log) = initial_and_log(&aws, &second).await;
    check_log(&plan(FAN), &log, initial);
}

/// A `wait` task on the serverless runtime: the wait is one delayed SQS message (no worker
/// runs or polls for it); the run goes on when it is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_is_a_delayed_message_and_the_run_goes_on_after_it() {
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 30, 5).await;
    let api = api(&aws);
    let workers = Workers::start(&aws, 2, 10, |s| s);
    const NAP: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: nap }
spec:
  tasks:
    - { id: nap, type: wait, with: { sleep: { for: 3s } } }
    - { id: after, type: transform, depends_on: [nap], with: { output: "{{ tasks.nap.output.waited_until }}" } }
  outputs:
    woke: "{{ tasks.after.output }}"
"#;
    let started = std::time::Instant::now();
    let (code, v) = call(&api, "POST", "/runs", Some(json!({"source": NAP}))).await;
    assert_eq!(code, 201, "{v}");
    let run_id = v["run_id"].as_str().unwrap().to_string();
    let got = wait_end(&api, &run_id, 60).await;
    workers.stop().await;
    assert_eq!(got["status"], "succeeded", "{got}");
    assert!(started.elapsed() >= Duration::from_secs(3), "{:?}", started.elapsed());
    let woke = got["outputs"]["woke"].as_u64().unwrap();
    assert_eq!(got["tasks"][0]["status"], "succeeded");
    let (initial, log) = initial_and_log(&aws, &run_id).await;
    check_log(&plan(NAP), &log, initial);
    let keys: Vec<String> = log.iter().map(|t| t.event.key()).collect();
    assert_eq!(keys, vec!["start", "wake/0/-/1", "done/1/-/1"], "nothing happened while it waited");
    assert!(log[1].at >= woke && log[1].at - log[0].at >= 3000, "{log:?}");
}

/// The event source mapping's batching window as `local::poll` emulates it: messages that come
/// within the window after the first join its batch, which is handed over once; without a
/// window a receive's messages are handed over at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batching_window_fills_the_batch_before_handing_it_over() {
    let Some(base) = aws().await else { return };
    let aws = stack(&base, 30, 5).await;
    let sender = aws.clone();
    let send = move |n: usize| {
        let aws = sender.clone();
        async move {
            for i in 0..n {
                aws.sqs.send_message().queue_url(&aws.queue_url).message_body(format!("m{i}")).send().await.unwrap();
            }
        }
    };
    for window in [2, 0] {
        let mut q = llmo_aws::sqs::SqsQueue::new(aws.clone());
        q.batch_window_secs = window;
        let batches = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (done_tx, done_rx) = tokio::sync::watch::channel(false);
        send(3).await;
        let later = tokio::spawn({
            let send = send.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(600)).await;
                send(4).await;
            }
        });
        let seen = batches.clone();
        let poller = llmo_aws::local::poll(
            &q,
            10,
            move |e: aws_lambda_events::event::sqs::SqsEvent| {
                let mut b = seen.lock().unwrap();
                b.push(e.records.len());
                if b.iter().sum::<usize>() >= 7 {
                    let _ = done_tx.send(true);
                }
                async { aws_lambda_events::event::sqs::SqsBatchResponse::default() }
            },
            async move {
                let mut rx = done_rx;
                let _ = rx.wait_for(|d| *d).await;
            },
        );
        tokio::time::timeout(Duration::from_secs(20), poller).await.expect("all 7 messages handled");
        later.await.unwrap();
        let b = batches.lock().unwrap().clone();
        if window > 0 {
            assert_eq!(b, vec![7], "one batch of the 3 first and the 4 that came 0.6 s later");
        } else {
            assert!(b.len() >= 2 && b[0] <= 3, "without a window the first receive's messages go at once: {b:?}");
        }
    }
}
