//! `llmo serve`'s composition (`llmo_api::local`) beyond the shared API suites (which run in
//! `llmo-aws`'s tests on both compositions): one server per state file, schedules caught up
//! once after downtime, and a run whose step was in flight when the server stopped finishes
//! after a restart.

use std::sync::Arc;
use std::time::Duration;

use llmo_api::local::{Local, Settings};
use llmo_api::schedules::Schedules;
use llmo_runtime::workflows::Workflows;

const EVERY_MINUTE: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: tick }
spec:
  schedule: { rate: 1m, inputs: { n: 3 } }
  inputs:
    n: { type: integer }
  tasks:
    - { id: a, type: transform, with: { output: "{{ inputs.n }}" } }
"#;

fn dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("llmo-api-{name}-{}-{}", std::process::id(), llmo_runtime::ports::now_ms()))
}

async fn open(path: &std::path::Path) -> Result<Local, llmo_api::local::Error> {
    let mut s = Settings::new(path.to_path_buf());
    s.workers = 1;
    let registry =
        llmo_runtime::standard_registry(llmo_runtime::providers::Config::builtin(), true, Default::default());
    Local::open(s, registry, llmo_runtime::providers::Config::builtin(), true).await
}

async fn runs_of(local: &Local, tenant: &str) -> Vec<llmo_runtime::store::RunSummary> {
    let f = llmo_runtime::store::ListFilter { tenant: tenant.into(), ..Default::default() };
    local.api.index.list_page(&f).await.unwrap().runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_per_state_file() {
    let d = dir("lease");
    let first = open(&d.join("s.db")).await.unwrap();
    let err = open(&d.join("s.db")).await.err().expect("a second server on the same file is refused");
    assert!(err.to_string().contains("one `llmo serve` per file"), "{err}");
    first.shutdown(Duration::from_secs(5)).await;
    let again = open(&d.join("s.db")).await.expect("the lease was given up");
    again.shutdown(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(d);
}

/// A schedule that ticked while no server ran fires its latest tick once at start (with the
/// schedule's inputs); a restart in the same minute fires nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_tick_fires_once_after_downtime() {
    let d = dir("sched");
    let path = d.join("s.db");
    // Both rounds within one minute: a minute that turns meanwhile brings a tick of its own
    // (a second run, rightly), which is not what this test counts.
    let into_minute = llmo_runtime::ports::now_ms() % 60_000;
    if into_minute > 30_000 {
        tokio::time::sleep(Duration::from_millis(60_000 - into_minute + 500)).await;
    }
    let five_minutes_ago = llmo_runtime::ports::now_ms() - 5 * 60_000;
    for round in 0..2 {
        let mut local = open(&path).await.unwrap();
        if round == 0 {
            local.store.put("acme", "tick", EVERY_MINUTE, five_minutes_ago).await.unwrap();
        }
        local.start();
        let schedules = Schedules::start(local.api.clone(), local.store.clone(), local.stopping()).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let runs = loop {
            let runs = runs_of(&local, "acme").await;
            if (!runs.is_empty() && runs.iter().all(|r| r.status == "succeeded"))
                || std::time::Instant::now() > deadline
            {
                break runs;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Give a second (wrong) start the time it would take.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let runs = if runs.len() == 1 { runs_of(&local, "acme").await } else { runs };
        assert_eq!(runs.len(), 1, "round {round}: one run for the missed tick: {runs:?}");
        assert_eq!(runs[0].workflow, "tick");
        let st = local.api.store.load(&runs[0].run_id).await.unwrap().unwrap();
        assert_eq!(st.snapshot.inputs["n"], 3);
        schedules.stop().await;
        local.shutdown(Duration::from_secs(5)).await;
    }
    let _ = std::fs::remove_dir_all(d);
}

/// A message received and never acknowledged (the process stopped mid-step) is delivered again
/// at the next start, at once, and its run finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_in_flight_at_a_stop_runs_at_the_next_start() {
    use llmo_runtime::queue::Queue;
    let d = dir("inflight");
    let path = d.join("s.db");
    let run_id = {
        // Not started: nothing consumes the queue but this test.
        let local = open(&path).await.unwrap();
        let src = EVERY_MINUTE.replace("  schedule: { rate: 1m, inputs: { n: 3 } }\n", "");
        let started = local
            .api
            .start_run(
                "acme",
                llmo_api::api::Wanted::Source { name: "t.yaml".into(), text: src },
                [("n".to_string(), serde_json::json!(4))].into_iter().collect(),
                None,
            )
            .await
            .unwrap();
        let taken = local.queue.receive(10).await.unwrap();
        assert_eq!(taken.len(), 1, "the start is in flight");
        local.shutdown(Duration::from_secs(1)).await;
        started.run_id
    };
    let mut local = open(&path).await.unwrap();
    local.start();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let st = local.api.store.load(&run_id).await.unwrap().unwrap();
        let st = llmo_runtime::store::rebuild(&Arc::new(plan_of(&st.source)), st).unwrap();
        if st.status.is_terminal() {
            assert_eq!(st.status.as_str(), "succeeded");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the run did not finish after the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    local.shutdown(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(d);
}

fn plan_of(src: &str) -> llmo_core::engine::Plan {
    let outcome = llmo_core::validate::Validator::default()
        .validate(&llmo_core::source::SourceFile::new("t.yaml", src.to_string()));
    llmo_core::engine::Plan::new(outcome.checked.unwrap())
}
