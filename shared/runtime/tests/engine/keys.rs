//! Concurrency keys in the embedded runtime: a task's `concurrency: { key, limit }` holds
//! attempts with the same rendered key to `limit` at once in the process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use llmo_core::engine::{AttemptResult, Plan, RunStatus, Usage};
use llmo_core::source::SourceFile;
use llmo_core::validate::Validator;
use llmo_runtime::driver::{Driver, Options};
use llmo_runtime::executor::{Attempt, Executor, Registry};
use llmo_runtime::ports::SystemClock;
use llmo_runtime::store::MemoryStore;

const KEYED: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: keyed }
spec:
  tasks:
    - id: each
      type: transform
      for_each: "range(8)"
      concurrency: { key: "{{ item % 2 }}", limit: 1 }
      with: { output: "{{ item }}" }
"#;

/// Counts attempts in flight per key (the item's parity) and at all.
#[derive(Default)]
struct Tracker {
    now: Mutex<(HashMap<u32, u32>, u32)>,
    most: Mutex<(HashMap<u32, u32>, u32)>,
}

#[async_trait]
impl Executor for Tracker {
    async fn execute(&self, a: &Attempt) -> AttemptResult {
        let key = a.item.unwrap_or(0) % 2;
        {
            let (mut now, mut most) = (self.now.lock().unwrap(), self.most.lock().unwrap());
            *now.0.entry(key).or_default() += 1;
            now.1 += 1;
            let k = now.0[&key];
            let m = most.0.entry(key).or_default();
            *m = (*m).max(k);
            most.1 = most.1.max(now.1);
        }
        tokio::time::sleep(std::time::Duration::from_millis(40)).await;
        let mut now = self.now.lock().unwrap();
        *now.0.get_mut(&key).unwrap() -= 1;
        now.1 -= 1;
        AttemptResult::Succeeded { output: a.with["output"].clone().into(), usage: Usage::default() }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_with_the_same_key_run_one_at_a_time_and_other_keys_alongside() {
    let checked = Validator::default().validate(&SourceFile::new("keyed.yaml", KEYED)).checked.expect("valid");
    let tracker = Arc::new(Tracker::default());
    let mut reg = Registry::new();
    reg.register("transform", tracker.clone());
    let d = Driver {
        plan: Arc::new(Plan::new(checked)),
        store: Arc::new(MemoryStore::default()),
        executors: Arc::new(reg),
        clock: Arc::new(SystemClock::default()),
        blobs: None,
        options: Options::default(),
    };
    let end = d.start("keyed-run", Default::default(), "keyed.yaml", KEYED, &mut ()).await.unwrap();
    assert_eq!(end.state.status, RunStatus::Succeeded, "{:?}", end.state.error);
    let most = tracker.most.lock().unwrap().clone();
    assert_eq!(most.0.get(&0), Some(&1), "key 0: one at a time");
    assert_eq!(most.0.get(&1), Some(&1), "key 1: one at a time");
    assert_eq!(most.1, 2, "the two keys ran alongside each other");
}
