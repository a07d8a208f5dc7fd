//! `wait` tasks in the embedded runtime, on a simulated clock (tokio's paused time, which the
//! driver's `SystemClock` follows): a six-hour sleep and a sleep until a time an input names
//! end without anything running meanwhile, and a run interrupted while it waits resumes its
//! wait from the stored state instead of starting it over; an approval an hour into its wait,
//! written to the store by another process, resumes the run once.

use std::sync::Arc;
use std::time::Duration;

use llmo_core::engine::{Plan, RunStatus, TaskStatus};
use llmo_core::source::SourceFile;
use llmo_core::validate::Validator;
use llmo_runtime::driver::{Driver, Observer, Options};
use llmo_runtime::ports::SystemClock;
use llmo_runtime::store::{MemoryStore, RunStore};
use serde_json::json;

const NAP: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: nap }
spec:
  inputs: { until: { type: string } }
  tasks:
    - { id: nap, type: wait, with: { sleep: { for: 6h } } }
    - { id: until, type: wait, with: { sleep: { until: "{{ inputs.until }}" } } }
    - { id: done, type: transform, depends_on: [nap, until], with: { output: "{{ tasks.nap.output.waited_until }}" } }
"#;

struct Quiet;
impl Observer for Quiet {}

fn driver(store: Arc<MemoryStore>) -> Driver {
    let checked = Validator::default().validate(&SourceFile::new("nap.yaml", NAP)).checked.expect("valid");
    Driver {
        plan: Arc::new(Plan::new(checked)),
        store,
        executors: Arc::new(llmo_runtime::standard_registry(
            llmo_runtime::providers::Config::builtin(),
            true,
            Default::default(),
        )),
        clock: Arc::new(SystemClock::default()),
        blobs: None,
        options: Options { poll: Duration::from_secs(60), ..Options::default() },
    }
}

fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let day = llmo_runtime::costs::day_of(ms);
    format!("{day}T{:02}:{:02}:{:02}Z", secs / 3600 % 24, secs / 60 % 60, secs % 60)
}

#[tokio::test(start_paused = true)]
async fn six_hours_of_sleep_pass_on_a_simulated_clock() {
    let store = Arc::new(MemoryStore::default());
    let d = driver(store.clone());
    let start = d.clock.now();
    let until = rfc3339(start + 2 * 3_600_000);
    let inputs = json!({"until": until}).as_object().cloned().unwrap();
    let end = d.start("run-nap", inputs, "nap.yaml", NAP, &mut Quiet).await.unwrap();
    assert_eq!(end.state.status, RunStatus::Succeeded, "{:?}", end.state.error);
    let elapsed = d.clock.now() - start;
    assert!((6 * 3_600_000..6 * 3_600_000 + 60_000).contains(&elapsed), "{elapsed} ms");
    let nap = &end.state.tasks[0];
    assert_eq!(nap.attempts, 1);
    assert_eq!(nap.output.as_deref().unwrap()["waited_until"].as_u64().unwrap(), start + 6 * 3_600_000);
    // Between the start and the wakes the log holds nothing: nothing ran, nothing polled.
    let log = store.history("run-nap").await.unwrap();
    let kinds: Vec<String> = log.iter().map(|t| t.event.key()).collect();
    assert_eq!(kinds[0], "start");
    assert_eq!(&kinds[1..3], &["wake/1/-/1".to_string(), "wake/0/-/1".to_string()], "{kinds:?}");
}

#[tokio::test(start_paused = true)]
async fn a_run_stopped_while_waiting_resumes_its_wait() {
    let store = Arc::new(MemoryStore::default());
    let d = driver(store.clone());
    let start = d.clock.now();
    let inputs = json!({"until": rfc3339(start)}).as_object().cloned().unwrap();
    // Stopped (its process gone) an hour into the six-hour wait.
    let mut quiet = Quiet;
    let run = d.start("run-2", inputs, "nap.yaml", NAP, &mut quiet);
    assert!(tokio::time::timeout(Duration::from_secs(3600), run).await.is_err());
    // The lease of the process that is gone lapses.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let d = driver(store.clone());
    let st = llmo_runtime::store::rebuild(&d.plan, store.load("run-2").await.unwrap().unwrap()).unwrap();
    assert_eq!(st.tasks[0].status, TaskStatus::Waiting);
    let end = d.resume("run-2", &mut Quiet).await.unwrap();
    assert_eq!(end.state.status, RunStatus::Succeeded);
    assert_eq!(end.state.tasks[0].attempts, 1, "the wait was resumed, not started again");
    let woke = end.state.tasks[0].output.as_deref().unwrap()["waited_until"].as_u64().unwrap();
    assert_eq!(woke, start + 6 * 3_600_000, "it wakes when it was due, not six hours after the resume");
}

const REVIEW: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: review }
spec:
  tasks:
    - id: review
      type: wait
      with:
        approval:
          prompt: Ship it?
          fields: { channel: { type: string, enum: [blog, mail] } }
        timeout: 2h
    - { id: ship, type: transform, depends_on: [review], with: { output: "{{ tasks.review.output.fields.channel }} by {{ tasks.review.output.by }}" } }
  outputs:
    shipped: "{{ tasks.ship.output }}"
"#;

fn review_driver(store: Arc<MemoryStore>) -> Driver {
    let checked = Validator::default().validate(&SourceFile::new("review.yaml", REVIEW)).checked.expect("valid");
    Driver { plan: Arc::new(Plan::new(checked)), ..driver(store) }
}

/// An approval that comes an hour into the wait (from another process: written to the store,
/// as `llmo approve` does) is picked up by the driver running the run, which goes on; the
/// same answer again, and a second answer, are refused; the timeout (2 h) never fires.
#[tokio::test(start_paused = true)]
async fn an_approval_an_hour_later_resumes_the_run_once() {
    use llmo_core::engine::waits::{AnswerError, Approval};
    let store = Arc::new(MemoryStore::default());
    let d = review_driver(store.clone());
    let (plan, clock) = (d.plan.clone(), d.clock.clone());
    let start = d.clock.now();
    let running =
        tokio::spawn(async move { d.start("run-r", Default::default(), "review.yaml", REVIEW, &mut Quiet).await });
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let listed = store.waiters("", None, 10).await.unwrap();
    assert_eq!(listed.len(), 1, "the waiting approval is listed: {listed:?}");
    let approval = Approval {
        approved: true,
        fields: json!({"channel": "mail"}).as_object().cloned().unwrap(),
        ..Default::default()
    };
    let answer = |by: &'static str| {
        let (plan, store, approval, clock) = (plan.clone(), store.clone(), approval.clone(), clock.clone());
        async move {
            llmo_runtime::waits::answer(&plan, store.as_ref(), clock.as_ref(), "run-r", |st| {
                plan.approve(st, "review", None, &approval, by)
            })
            .await
        }
    };
    let st = answer("ann").await.unwrap();
    assert_eq!(st.tasks[0].status, TaskStatus::Succeeded);
    assert!(store.waiters("", None, 10).await.unwrap().is_empty(), "answered: no longer listed");
    match answer("bob").await {
        Err(llmo_runtime::waits::Error::Answer(AnswerError::NotWaiting(m))) => assert!(m.contains("by ann"), "{m}"),
        other => panic!("a second answer: {other:?}"),
    }
    let end = running.await.unwrap().unwrap();
    assert_eq!(end.state.status, RunStatus::Succeeded, "{:?}", end.state.error);
    assert_eq!(end.state.outputs, Some(json!({"shipped": "mail by ann"})));
    let log = store.history("run-r").await.unwrap();
    let took = log[1].at - start;
    assert!((3_600_000..3_700_000).contains(&took), "answered an hour in, not at the timeout: {took} ms");
    let keys: Vec<String> = log.iter().map(|t| t.event.key()).collect();
    assert_eq!(keys, ["start", "complete/0/-/1", "done/1/-/1"], "nothing ran or polled while it waited");
}

/// A hundred approvals whose prompts each take much of a template's fuel to render: the run's
/// `start` transition is dear to replay, though one small line in the log.
fn heavy_prompts() -> String {
    r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: heavy }
spec:
  inputs: { items: { type: array } }
  tasks:
    - id: hold
      type: wait
      for_each: inputs.items
      with:
        approval:
          prompt: "{% for i in range(40000) %}{% endfor %}{{ item }}"
"#
    .to_string()
}

/// A transition dear to replay (templates rendered as units start) is snapshotted by the
/// driver that applied it, so loading the run (a reader, `resume`) does not render them again.
#[tokio::test(start_paused = true)]
async fn a_transition_dear_to_replay_is_followed_by_a_snapshot() {
    let src = heavy_prompts();
    let store = Arc::new(MemoryStore::default());
    let checked = Validator::default().validate(&SourceFile::new("heavy.yaml", src.as_str())).checked.expect("valid");
    let d = Driver { plan: Arc::new(Plan::new(checked)), ..driver(store.clone()) };
    // The run waits for its approvals; its process goes away.
    let mut quiet = Quiet;
    let inputs = json!({"items": (0..100).collect::<Vec<u32>>()}).as_object().cloned().unwrap();
    let run = d.start("run-heavy", inputs, "heavy.yaml", &src, &mut quiet);
    if let Ok(end) = tokio::time::timeout(Duration::from_secs(60), run).await {
        panic!(
            "the run should wait: {:?}",
            end.map(|f| (f.state.status, f.state.error, f.state.tasks[0].error.clone()))
        );
    }
    let stored = store.load("run-heavy").await.unwrap().unwrap();
    let tail: Vec<String> = stored.tail.iter().map(|t| t.event.key()).collect();
    assert!(stored.snapshot.version >= 1, "no snapshot after the dear start: loading replays {tail:?}");
    assert!(!tail.contains(&"start".to_string()), "{tail:?}");
    // What loading would cost without the snapshot: the whole log replayed.
    let inputs = stored.snapshot.inputs.clone();
    let first = llmo_runtime::store::StoredRun::tail_only(
        d.plan.new_run("run-heavy", inputs),
        store.history("run-heavy").await.unwrap(),
    );
    let started = std::time::Instant::now();
    llmo_runtime::store::rebuild(&d.plan, first).unwrap();
    let whole = started.elapsed();
    assert!(whole >= 2 * llmo_runtime::store::SNAPSHOT_AFTER, "the start is not dear enough to test with: {whole:?}");
    let started = std::time::Instant::now();
    let st = llmo_runtime::store::rebuild(&d.plan, stored).unwrap();
    assert_eq!(st.tasks[0].units.len(), 100);
    assert!(st.tasks[0].units.iter().all(|u| u.status == TaskStatus::Waiting));
    assert!(
        started.elapsed() < llmo_runtime::store::SNAPSHOT_AFTER,
        "loading took {:?} (the whole log: {whole:?})",
        started.elapsed()
    );
}
