//! Tests of the embedded driver.

use super::*;
use crate::executor::Attempt;
use crate::executor::Transform;
use crate::ports::SystemClock;
use crate::store::MemoryStore;
use async_trait::async_trait;
use llmo_core::engine::TaskStatus;
use llmo_core::engine::{AttemptResult, Usage};
use llmo_core::source::SourceFile;
use llmo_core::validate::Validator;
use serde_json::json;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

fn plan(wf: &str) -> Arc<Plan> {
    let outcome = Validator::default().validate(&SourceFile::new("t.yaml", wf));
    Arc::new(Plan::new(outcome.checked.unwrap_or_else(|| panic!("{:?}", outcome.report))))
}

/// Sleeps `ms`, fails the first `fail_first` attempts of each task with a retryable error,
/// and records which (task, attempt) ran.
struct Work {
    ms: u64,
    fail_first: u32,
    calls: AtomicU32,
    ran: Mutex<Vec<(String, u32)>>,
}

impl Work {
    fn new(ms: u64, fail_first: u32) -> Arc<Self> {
        Arc::new(Work { ms, fail_first, calls: AtomicU32::new(0), ran: Mutex::new(Vec::new()) })
    }
}

#[async_trait]
impl Executor for Work {
    async fn execute(&self, a: &Attempt) -> AttemptResult {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.ran.lock().unwrap().push((a.task_id.to_string(), a.attempt));
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        if a.attempt <= self.fail_first {
            return AttemptResult::Failed { error: "503".into(), retryable: true, usage: Usage::default() };
        }
        AttemptResult::Succeeded { output: json!(&*a.task_id).into(), usage: Usage { tokens: 1, cost_usd: 0.001 } }
    }
}

fn driver(plan: &Arc<Plan>, store: &Arc<MemoryStore>, work: &Arc<Work>) -> Driver {
    let mut reg = Registry::new();
    reg.register("transform", Arc::new(Transform));
    reg.register("http", work.clone());
    Driver {
        plan: plan.clone(),
        store: store.clone(),
        executors: Arc::new(reg),
        clock: Arc::new(SystemClock::default()),
        blobs: None,
        options: Options { poll: Duration::from_millis(20), ..Options::default() },
    }
}

const HEAD: &str = "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: t }\nspec:\n";

/// A run of one `http` task over `range(items)`, its driver at `concurrency` with `http`
/// answered by `exec`: the workflow text and the driver.
fn wide(items: usize, concurrency: usize, exec: Arc<dyn Executor>) -> (String, Driver) {
    let wf = format!(
        "{HEAD}  tasks:\n    - {{ id: each, type: http, for_each: \"range({items})\", with: {{ url: \"http://x/{{{{ item }}}}\" }} }}\n"
    );
    let mut d = driver(&plan(&wf), &Arc::new(MemoryStore::default()), &Work::new(1, 0));
    d.options.concurrency = concurrency;
    let mut reg = Registry::new();
    reg.register("http", exec);
    d.executors = Arc::new(reg);
    (wf, d)
}

#[tokio::test(start_paused = true)]
async fn independent_attempts_run_at_the_same_time_and_retries_wait() {
    let mut wf = format!(
        "{HEAD}  defaults: {{ retry: {{ max_attempts: 2, backoff: {{ initial: 1s, jitter: none }} }} }}\n  tasks:\n"
    );
    for i in 0..10 {
        wf += &format!("    - {{ id: t{i}, type: http, with: {{ url: \"http://x/{i}\" }} }}\n");
    }
    wf += "    - { id: join, type: transform, depends_on: [t0, t9], with: { output: \"{{ tasks.t0.output }}+{{ tasks.t9.output }}\" } }\n";
    let plan = plan(&wf);
    let store = Arc::new(MemoryStore::default());
    let work = Work::new(100, 1);
    let started = tokio::time::Instant::now();
    let end = driver(&plan, &store, &work).start("r", Map::new(), "t.yaml", &wf, &mut ()).await.unwrap();
    assert_eq!(end.state.status, RunStatus::Succeeded, "{:?}", end.state.error);
    assert_eq!(end.state.tasks[10].output.as_deref(), Some(&json!("t0+t9")));
    assert_eq!(work.calls.load(Ordering::SeqCst), 20, "each task failed once, then succeeded");
    // 10 in parallel: 100 ms, 1 s retry delay, 100 ms again; one after another would be 2 s+.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1200) && took < Duration::from_millis(1500), "{took:?}");
    let history = store.history("r").await.unwrap();
    assert_eq!(history.last().unwrap().version, end.state.version, "every transition is in the log");
    assert!(history.len() < 42, "results arriving together are stored together: {}", history.len());
}

#[tokio::test(start_paused = true)]
async fn a_wide_for_each_runs_each_item_once_at_the_concurrency_and_a_failure_stops_the_queued() {
    // 50 items, 4 at a time: 8 are spawned ahead, the rest wait in the driver's queue.
    let work = Work::new(100, 0);
    let (wf, d) = wide(50, 4, work.clone());
    let started = tokio::time::Instant::now();
    let end = d.start("r", Map::new(), "t.yaml", &wf, &mut ()).await.unwrap();
    assert_eq!(end.state.status, RunStatus::Succeeded, "{:?}", end.state.error);
    assert_eq!(work.calls.load(Ordering::SeqCst), 50, "every item once");
    let output = end.state.tasks[0].output.as_deref().unwrap();
    assert_eq!(output.as_array().map(Vec::len), Some(50));
    // 13 rounds of 4 (the last of 2) at 100 ms: no round waits on the queue.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1300) && took < Duration::from_millis(1400), "{took:?}");

    // Items fail from the 6th call on (not retryable): the task fails at its first
    // failure, and the items still queued never run.
    struct FailFrom(AtomicU32);
    #[async_trait]
    impl Executor for FailFrom {
        async fn execute(&self, _: &Attempt) -> AttemptResult {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            if n >= 5 {
                return AttemptResult::Failed { error: "400".into(), retryable: false, usage: Usage::default() };
            }
            AttemptResult::Succeeded { output: json!(n).into(), usage: Usage::default() }
        }
    }
    let fail = Arc::new(FailFrom(AtomicU32::new(0)));
    let (wf, d) = wide(50, 4, fail.clone());
    let end = d.start("r2", Map::new(), "t.yaml", &wf, &mut ()).await.unwrap();
    assert_eq!(end.state.status, RunStatus::Failed);
    let calls = fail.0.load(Ordering::SeqCst);
    assert!(calls <= 12, "the items after the failure's round did not run: {calls} calls");
}

#[tokio::test(start_paused = true)]
async fn attempts_that_panic_leave_no_place_taken_and_the_run_reports_it_stalled() {
    // Every attempt panics (no result): the queued items still get their turn, and the
    // run ends as stalled instead of waiting for ever on places nobody frees.
    struct Panics(AtomicU32);
    #[async_trait]
    impl Executor for Panics {
        async fn execute(&self, _: &Attempt) -> AttemptResult {
            self.0.fetch_add(1, Ordering::SeqCst);
            panic!("an executor bug");
        }
    }
    let panics = Arc::new(Panics(AtomicU32::new(0)));
    let (wf, d) = wide(6, 1, panics.clone());
    let end = tokio::time::timeout(Duration::from_secs(60), d.start("r", Map::new(), "t.yaml", &wf, &mut ())).await;
    assert!(matches!(end, Ok(Err(Error::Stalled(_)))), "{:?}", end.map(|r| r.map(|f| f.state.status)));
    assert_eq!(panics.0.load(Ordering::SeqCst), 6, "every item was tried");
}

#[tokio::test(start_paused = true)]
async fn resume_reruns_what_was_running_and_nothing_that_succeeded() {
    let wf = format!(
        "{HEAD}  tasks:\n    - {{ id: a, type: http, with: {{ url: u }} }}\n    - {{ id: b, type: http, depends_on: [a], with: {{ url: u }} }}\n    - {{ id: c, type: http, depends_on: [b], with: {{ url: u }} }}\n"
    );
    let plan = plan(&wf);
    let store = Arc::new(MemoryStore::default());
    // First process: dies (is dropped) while `b` runs.
    let work = Work::new(1000, 0);
    let d = driver(&plan, &store, &work);
    let mut quiet = ();
    let run = d.start("r", Map::new(), "t.yaml", &wf, &mut quiet);
    assert!(tokio::time::timeout(Duration::from_millis(1500), run).await.is_err());
    assert_eq!(*work.ran.lock().unwrap(), vec![("a".to_string(), 1), ("b".to_string(), 1)]);
    // Its lease lapses (a process that dies gives nothing up).
    tokio::time::sleep(Duration::from_secs(11)).await;
    // Second process.
    let work = Work::new(10, 0);
    let end = driver(&plan, &store, &work).resume("r", &mut ()).await.unwrap();
    assert_eq!(end.state.status, RunStatus::Succeeded);
    assert_eq!(*work.ran.lock().unwrap(), vec![("b".to_string(), 1), ("c".to_string(), 1)]);
    assert!(matches!(driver(&plan, &store, &work).resume("nope", &mut ()).await, Err(Error::NoSuchRun(_))));
}

/// One executor per run: while the process executing a run lives (renewing its lease),
/// another's `resume` is refused, naming the owner; once the owner is gone (its lease
/// lapsed), the run is taken over, and the first owner, should it wake, stops.
#[tokio::test(start_paused = true)]
async fn a_run_has_one_owner_at_a_time() {
    let wf = format!(
        "{HEAD}  tasks:\n    - {{ id: a, type: http, with: {{ url: u }} }}\n    - {{ id: b, type: http, depends_on: [a], with: {{ url: u }} }}\n"
    );
    let plan = plan(&wf);
    let store = Arc::new(MemoryStore::default());
    let slow = Work::new(60_000, 0);
    let first = driver(&plan, &store, &slow);
    let owner = first.options.owner.clone();
    let (wf2, store2) = (wf.clone(), store.clone());
    let live = tokio::spawn(async move { first.start("r", Map::new(), "t.yaml", &wf2, &mut ()).await });
    tokio::time::sleep(Duration::from_secs(30)).await;
    // Thirty seconds in (three lease lengths, renewed all along), it is still its run.
    let work = Work::new(10, 0);
    match driver(&plan, &store2, &work).resume("r", &mut ()).await {
        Err(Error::Owned { owner: o, .. }) => assert_eq!(o.owner, owner),
        other => panic!("expected Owned, got {:?}", other.map(|f| f.state.status)),
    }
    assert!(work.ran.lock().unwrap().is_empty(), "nothing ran twice");
    let end = live.await.unwrap().unwrap();
    assert_eq!(end.state.status, RunStatus::Succeeded);
    assert_eq!(store.owner("r").await.unwrap(), None, "the lease was given up at the end");
}

/// A driver that stalled past its lease and finds it taken over stops executing the run
/// (the new owner goes on with it) instead of running it a second time.
#[tokio::test(start_paused = true)]
async fn a_driver_whose_lease_was_taken_over_stops() {
    let wf = format!("{HEAD}  tasks:\n    - {{ id: a, type: http, with: {{ url: u }} }}\n");
    let plan = plan(&wf);
    let store = Arc::new(MemoryStore::default());
    let slow = Work::new(120_000, 0);
    let d = driver(&plan, &store, &slow);
    let (wf2, store2) = (wf.clone(), store.clone());
    let live = tokio::spawn(async move { d.start("r", Map::new(), "t.yaml", &wf2, &mut ()).await });
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Another process takes the run as if the lease had lapsed (this one stalled).
    let now = crate::ports::SystemClock::default().now();
    assert_eq!(store2.lease("r", "usurper", 60_000, now + 3_600_000).await.unwrap(), None);
    let end = tokio::time::timeout(Duration::from_secs(30), live).await.expect("stopped").unwrap();
    assert!(matches!(end, Err(Error::TakenOver(_))), "{:?}", end.map(|f| f.state.status));
    assert_eq!(store2.owner("r").await.unwrap().map(|o| o.owner), Some("usurper".to_string()), "not given up");
}

#[tokio::test(start_paused = true)]
async fn a_cancel_from_another_writer_stops_the_run_and_runs_failure_hooks_once() {
    let wf = format!(
        "{HEAD}  tasks:\n    - {{ id: a, type: http, with: {{ url: u }} }}\n    - {{ id: b, type: http, depends_on: [a], with: {{ url: u }} }}\n  on:\n    failure:\n      - {{ type: transform, with: {{ output: \"{{{{ run.status }}}}\" }} }}\n"
    );
    let plan = plan(&wf);
    let store = Arc::new(MemoryStore::default());
    let work = Work::new(10_000, 0);
    let d = driver(&plan, &store, &work);
    let clock = SystemClock::default();
    let mut quiet = ();
    let (end, cancelled) = tokio::join!(d.start("r", Map::new(), "t.yaml", &wf, &mut quiet), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cancel(&plan, store.as_ref(), &clock, "r").await.unwrap()
    });
    let end = end.unwrap();
    assert_eq!(end.state.status, RunStatus::Cancelled);
    assert!(end.hooks.is_empty(), "the canceller runs the hooks, not the driver");
    assert_eq!(end.state.tasks[1].status, TaskStatus::Cancelled);
    assert_eq!(work.calls.load(Ordering::SeqCst), 1, "b never started");
    let st = cancelled.unwrap();
    let mut reg = Registry::new();
    reg.register("transform", Arc::new(Transform));
    let hooks = run_hooks(&plan, &reg, &st, st.status, &mut ()).await;
    assert_eq!(hooks.len(), 1);
    assert!(matches!(&hooks[0].result, AttemptResult::Succeeded { output, .. } if **output == "cancelled"));
    assert!(cancel(&plan, store.as_ref(), &clock, "r").await.unwrap().is_none(), "already ended");
}

#[tokio::test(start_paused = true)]
async fn an_attempt_over_its_timeout_fails_and_is_retried() {
    let wf = format!(
        "{HEAD}  tasks:\n    - {{ id: a, type: http, timeout: 50ms, retry: {{ max_attempts: 2, backoff: {{ initial: 10ms }} }}, with: {{ url: u }} }}\n"
    );
    let plan = plan(&wf);
    let store = Arc::new(MemoryStore::default());
    let work = Work::new(100, 0);
    let end = driver(&plan, &store, &work).start("r", Map::new(), "t.yaml", &wf, &mut ()).await.unwrap();
    assert_eq!(end.state.status, RunStatus::Failed);
    assert_eq!(end.state.tasks[0].attempts, 2);
    assert_eq!(end.state.tasks[0].error.as_deref(), Some("timed out after 50ms"));
}
