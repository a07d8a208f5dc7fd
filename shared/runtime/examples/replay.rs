//! What reading a run costs when its log is dear to replay (issue 23): a run whose one
//! `start` transition dispatched ITEMS approvals, each prompt a fuel-heavy template.
//!
//!   replay [ITEMS] [LOOP] [--check]
//!
//! Drives the run with the embedded driver on a SQLite store until it waits for its approvals,
//! then measures, in this process:
//! - `whole log`: replaying the log from the run's first state (what every read cost before
//!   writers snapshotted after dear transitions: `GET /runs/{id}` took 6.8 s for 1,000 waits);
//! - `load`: what a read costs now (the store's snapshot plus the transitions after it);
//! - how many transitions a load replays.
//!
//! `--check` fails unless a load replays nothing dear (under `store::SNAPSHOT_AFTER`) and is
//! at least 10x cheaper than the whole log.
use std::sync::Arc;
use std::time::{Duration, Instant};

use llmo_core::engine::Plan;
use llmo_core::source::SourceFile;
use llmo_core::validate::Validator;
use llmo_runtime::driver::{Driver, Observer, Options};
use llmo_runtime::ports::SystemClock;
use llmo_runtime::store::{self, Durability, RunStore, SqliteStore, StoredRun};

struct Quiet;
impl Observer for Quiet {}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let check = args.iter().any(|a| a == "--check");
    let nums: Vec<u64> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (items, work) = (nums.first().copied().unwrap_or(1000), nums.get(1).copied().unwrap_or(100_000));
    let src = format!(
        "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: {{ name: heavy }}\nspec:\n  tasks:\n    - id: hold\n      type: wait\n      for_each: \"range({items})\"\n      with:\n        approval:\n          prompt: \"{{% for i in range({work}) %}}{{% endfor %}}{{{{ item }}}}\"\n"
    );
    let checked = Validator::default().validate(&SourceFile::new("heavy.yaml", src.as_str())).checked.expect("valid");
    let plan = Arc::new(Plan::new(checked));
    let dir = std::env::temp_dir().join(format!("llmo-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Arc::new(SqliteStore::open(&dir.join("runs.db"), Durability::Process).unwrap());
    let d = Driver {
        plan: plan.clone(),
        store: store.clone(),
        executors: Arc::new(llmo_runtime::standard_registry(
            llmo_runtime::providers::Config::builtin(),
            true,
            Default::default(),
        )),
        clock: Arc::new(SystemClock::default()),
        blobs: None,
        options: Options::default(),
    };
    // The run waits for its approvals: its driver is stopped once the start is stored.
    let started = Instant::now();
    let mut quiet = Quiet;
    let run = d.start("r", Default::default(), "heavy.yaml", &src, &mut quiet);
    let _ = tokio::time::timeout(Duration::from_secs(2), run).await;
    let write = started.elapsed();
    let history = store.history("r").await.unwrap();
    let whole = median(
        (0..5)
            .map(|_| {
                let first = StoredRun::tail_only(plan.new_run("r", Default::default()), history.clone());
                let t = Instant::now();
                store::rebuild(&plan, first).unwrap();
                t.elapsed()
            })
            .collect(),
    );
    let mut tail = 0;
    let mut loads = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let stored = store.load("r").await.unwrap().unwrap();
        tail = stored.tail.len();
        store::rebuild(&plan, stored).unwrap();
        loads.push(t.elapsed());
    }
    let load = median(loads);
    println!(
        "replay: {items} approvals x range({work}): driver to waiting {write:.1?}; \
         whole log {whole:.1?}; a load now {load:.2?}, replaying {tail} transitions ({:.0}x)",
        whole.as_secs_f64() / load.as_secs_f64()
    );
    std::fs::remove_dir_all(&dir).ok();
    if check {
        assert!(load < store::SNAPSHOT_AFTER, "a load took {load:?}");
        assert!(whole >= 10 * load, "a load ({load:?}) is not 10x cheaper than the whole log ({whole:?})");
    }
}
