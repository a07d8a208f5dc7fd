//! The embedding API as an application uses it (docs/embedding.md): its own task type is
//! validated with its schema (and is in the editor schema), runs, and a run stopped midway
//! (the process gone) resumes from the SQLite file with a new engine, without running again
//! what recorded its result.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use llmo_core::engine::{AttemptResult, RunStatus};
use llmo_core::tasks::TaskType;
use llmo_example_custom_task::{Sentiment, engine};
use llmo_runtime::embed::{EmbedError, Engine};
use llmo_runtime::executor::{Attempt, Executor, succeeded};
use llmo_runtime::store::{Durability, MemoryStore, SqliteStore};
use serde_json::json;

const REVIEW: &str = include_str!("../review.yaml");

#[test]
fn the_task_types_schema_is_checked_and_in_the_editor_schema() {
    let e = engine(Arc::new(MemoryStore::default()), true);
    assert!(e.validate("review.yaml", REVIEW).checked.is_some());
    let broken = REVIEW
        .replace("with: { text: \"{{ inputs.message }}\", threshold: 0.2 }", "with: { txt: \"{{ inputs.message }}\" }");
    let outcome = e.validate("review.yaml", &broken);
    assert!(outcome.checked.is_none());
    let records = outcome.report.records();
    let said: Vec<String> =
        records.iter().map(|r| format!("{}:{:?} {} {}", r.code, r.line, r.path, r.message)).collect();
    assert!(records.iter().any(|r| r.code == "WF011" && r.line == Some(17)), "the unknown field `txt`: {said:?}");
    assert!(records.iter().any(|r| r.code == "WF012"), "the missing `text`: {said:?}");
    let mistyped = REVIEW.replace("type: sentiment", "type: sentimnt");
    let records = e.validate("review.yaml", &mistyped).report.records();
    assert!(
        records.iter().any(|r| r.code == "WF021" && r.help.as_deref().unwrap_or("").contains("sentiment")),
        "{records:?}"
    );
    // A threshold out of the schema's range.
    let out_of_range = REVIEW.replace("threshold: 0.2", "threshold: 3");
    assert!(e.validate("review.yaml", &out_of_range).checked.is_none());
    let schema = e.schema().to_string();
    assert!(schema.contains("\"with_sentiment\"") && schema.contains("\"threshold\""), "editor schema");
    // The committed editor schema is this one (`cargo run -p llmo-example-custom-task -- --schema`).
    let committed: serde_json::Value = serde_json::from_str(include_str!("../schema.json")).unwrap();
    assert_eq!(committed, e.schema(), "examples/custom-task/schema.json is stale");
    // The built-in engine does not know it.
    assert!(Engine::builder().build().validate("review.yaml", REVIEW).checked.is_none());
}

#[tokio::test]
async fn a_run_uses_the_task_type_and_bad_inputs_are_refused() {
    let e = engine(Arc::new(MemoryStore::default()), true);
    let inputs = [("message".to_string(), json!("Terrible, it is broken. I want a refund"))].into_iter().collect();
    let end = e.run("review.yaml", REVIEW, inputs).await.unwrap();
    assert_eq!(end.state.status, RunStatus::Succeeded, "{:?}", end.state.error);
    let out = end.state.outputs.clone().unwrap();
    assert_eq!(out["mood"], "negative");
    assert_eq!(out["score"], -1.0);
    assert_eq!(out["escalated"], true);
    assert_eq!(e.list().await.unwrap().len(), 1);
    let wrong = [("messge".to_string(), json!("hi"))].into_iter().collect();
    assert!(matches!(e.run("review.yaml", REVIEW, wrong).await, Err(EmbedError::Inputs(_))));
}

/// `type: gate`: holds its attempt until the test opens it (or forever).
struct Gate {
    open: bool,
    calls: AtomicU32,
}

#[async_trait]
impl Executor for Gate {
    async fn execute(&self, _: &Attempt) -> AttemptResult {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if !self.open {
            std::future::pending::<()>().await;
        }
        succeeded(json!("through"))
    }
}

const GATED: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: gated }
spec:
  tasks:
    - { id: mood, type: sentiment, with: { text: "great, thanks" } }
    - { id: gate, type: gate, depends_on: [mood], with: {} }
  outputs:
    mood: "{{ tasks.mood.output.label }}"
    gate: "{{ tasks.gate.output }}"
"#;

fn gated(store: Arc<SqliteStore>, gate: Arc<Gate>) -> Engine {
    let with = json!({ "type": "object", "additionalProperties": false });
    Engine::builder()
        .task_type(Sentiment::task_type(), Arc::new(Sentiment))
        .task_type(TaskType::with_schema("gate", "Waits for the test.", with), gate)
        .store(store)
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_process_stopped_resumes_from_the_file_without_running_anything_twice() {
    let path = std::env::temp_dir().join(format!("llmo-embed-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let store = Arc::new(SqliteStore::open(&path, Durability::Process).unwrap());
    let closed = Arc::new(Gate { open: false, calls: AtomicU32::new(0) });
    let first = gated(store.clone(), closed.clone());
    let running = tokio::spawn(async move { first.run("gated.yaml", GATED, Default::default()).await });
    // Wait until the gate's attempt is under way (mood's result is stored), then stop the process.
    let reader = gated(store.clone(), closed.clone());
    let run_id = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if closed.calls.load(Ordering::SeqCst) > 0
                && let Some(r) = reader.list().await.unwrap().first()
            {
                return r.run_id.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the gate was reached");
    running.abort();
    let _ = running.await;
    drop(store);

    // A new process: a new engine on the same file.
    let store = Arc::new(SqliteStore::open(&path, Durability::Process).unwrap());
    let open = Arc::new(Gate { open: true, calls: AtomicU32::new(0) });
    let second = gated(store, open.clone());
    let before = second.get(&run_id).await.unwrap().expect("stored");
    assert_eq!(before.status, RunStatus::Running);
    let end = tokio::time::timeout(Duration::from_secs(60), second.resume(&run_id)).await.expect("resumed").unwrap();
    assert_eq!(end.state.status, RunStatus::Succeeded, "{:?}", end.state.error);
    assert_eq!(end.state.outputs.clone().unwrap(), json!({ "mood": "positive", "gate": "through" }));
    assert_eq!(end.state.tasks[0].attempts, 1, "mood recorded its result: not run again");
    assert_eq!(open.calls.load(Ordering::SeqCst), 1, "the gate ran again, once");
    // Resuming an ended run returns it as it is.
    assert_eq!(second.resume(&run_id).await.unwrap().state.status, RunStatus::Succeeded);
    assert!(matches!(second.resume("run-nope").await, Err(EmbedError::NoSuchRun(_))));
    let _ = std::fs::remove_file(&path);
}
