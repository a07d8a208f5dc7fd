//! Tests of the serverless worker.

use super::*;
use llmo_core::engine::TaskStatus;

mod unpack_tests {
    use super::*;
    use crate::queue::{ManualClock, MemoryQueue};
    use crate::store::MemoryStore;
    use async_trait::async_trait;

    const LEASE: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: lease }
spec:
  tasks:
    - { id: a, type: transform, for_each: "range(3)", with: { output: "{{ item }}" } }
    - { id: b, type: transform, depends_on: [a], with: { output: "{{ tasks.a.output | sum }}" } }
    - { id: c, type: transform, depends_on: [b], with: { output: "{{ tasks.b.output }}!" } }
  outputs:
    c: "{{ tasks.c.output }}"
"#;

    /// A worker that died before sending anything: every send fails.
    struct Dead(Arc<MemoryQueue>);

    #[async_trait]
    impl Queue for Dead {
        async fn send(&self, _: &Message, _: Millis) -> Result<(), QueueError> {
            Err(QueueError::Io("the worker died".into()))
        }
        async fn receive(&self, max: usize) -> Result<Vec<Delivery>, QueueError> {
            self.0.receive(max).await
        }
        async fn ack(&self, receipt: &str) -> Result<(), QueueError> {
            self.0.ack(receipt).await
        }
    }

    struct Setup {
        clock: Arc<ManualClock>,
        queue: Arc<MemoryQueue>,
        store: Arc<MemoryStore>,
        plan: Arc<Plan>,
    }

    impl Setup {
        async fn new() -> Setup {
            let checked = Validator::default().validate(&SourceFile::new("lease.yaml", LEASE)).checked.expect("valid");
            let plan = Arc::new(Plan::new(checked));
            let clock = Arc::new(ManualClock::default());
            clock.set(1_000_000);
            let queue = Arc::new(MemoryQueue::new(clock.clone(), 30_000));
            let store = Arc::new(MemoryStore::default());
            store.create("lease", "lease.yaml", LEASE, &plan.new_run("r", Default::default())).await.unwrap();
            queue.send(&Message::Event { run_id: "r".into(), event: Event::Start }, 0).await.unwrap();
            Setup { clock, queue, store, plan }
        }

        fn worker(&self, queue: Arc<dyn Queue>) -> Worker {
            let registry = crate::standard_registry(crate::providers::Config::builtin(), true, Default::default());
            let plan = self.plan.clone();
            let mut w = Worker::new(
                self.store.clone(),
                queue,
                Arc::new(registry),
                self.clock.clone(),
                Arc::new(move |_| Some(plan.clone())),
            );
            w.pack = 10;
            w
        }

        /// Steps the run's `Start`: what it sends is a packed message of `a`'s attempts.
        async fn start(&self, w: &Worker) {
            let start = self.receive().await;
            w.handle_batch(&start).await.pop().unwrap().unwrap();
            self.queue.ack(&start[0].receipt).await.unwrap();
        }

        async fn receive(&self) -> Vec<Delivery> {
            self.queue.receive(10).await.unwrap()
        }

        /// Steps every message until the queue is empty; the run's state then.
        async fn drain(&self, w: &Worker) -> RunState {
            for _ in 0..100 {
                let ds = self.receive().await;
                if ds.is_empty() {
                    break;
                }
                for (d, r) in ds.iter().zip(w.handle_batch(&ds).await) {
                    r.unwrap();
                    self.queue.ack(&d.receipt).await.unwrap();
                }
            }
            rebuild(&self.plan, self.store.load("r").await.unwrap().unwrap()).unwrap()
        }
    }

    /// The packed message of `a`'s three attempts is the lease on the chain stepped in place
    /// after it (b, then c). Its worker dies after storing b's result and before sending c:
    /// delivered again, the message re-sends what b's transition owes, and the run ends.
    #[tokio::test]
    async fn a_packed_message_delivered_again_recovers_the_chain_stepped_in_place_under_it() {
        let s = Setup::new().await;
        let w = s.worker(s.queue.clone());
        s.start(&w).await;
        let packed = s.receive().await;
        assert!(
            matches!(&packed[..], [d] if matches!(d.message, Message::Attempts { ref attempts, .. } if attempts.len() == 3))
        );
        let dead = s.worker(Arc::new(Dead(s.queue.clone())));
        let c = Continue { max_rounds: 1, until: Millis::MAX };
        assert!(dead.handle_batch_continuing(&packed, c).await[0].is_err(), "c could not be sent");
        let st = rebuild(&s.plan, s.store.load("r").await.unwrap().unwrap()).unwrap();
        assert_eq!(st.tasks[1].status, TaskStatus::Succeeded, "b ran in place and was stored");
        assert_eq!(st.tasks[2].status, TaskStatus::Running, "c was started, never sent");
        s.clock.advance(30_000);
        let st = s.drain(&w).await;
        assert_eq!(st.status, RunStatus::Succeeded, "{:?}", st.tasks.iter().map(|t| t.status).collect::<Vec<_>>());
        assert_eq!(st.outputs, Some(serde_json::json!({"c": "3!"})));
    }

    /// A packed message whose worker died while its attempts ran: delivered again, its
    /// attempts still running are not run together again but sent one per message.
    #[tokio::test]
    async fn a_packed_message_delivered_again_sends_its_running_attempts_one_per_message() {
        let s = Setup::new().await;
        let w = s.worker(s.queue.clone());
        s.start(&w).await;
        assert_eq!(s.receive().await.len(), 1, "one packed message, never handled: its worker died");
        s.clock.advance(30_000);
        let again = s.receive().await;
        assert_eq!(again[0].receive_count, 2);
        w.handle_batch(&again).await.pop().unwrap().unwrap();
        s.queue.ack(&again[0].receipt).await.unwrap();
        let st = rebuild(&s.plan, s.store.load("r").await.unwrap().unwrap()).unwrap();
        assert_eq!(st.tasks[0].status, TaskStatus::Running, "nothing of a ran");
        let sent: Vec<Message> = s.receive().await.into_iter().map(|d| d.message).collect();
        let one =
            |item| Message::Execute { run_id: "r".into(), task: 0, item: Some(item), attempt: 1, admitted: false };
        assert_eq!(sent, vec![one(0), one(1), one(2)]);
        s.clock.advance(30_000);
        assert_eq!(s.drain(&w).await.status, RunStatus::Succeeded);
    }

    /// A step whose transition is dear to replay (a hundred approvals, each prompt much of a
    /// template's fuel) leaves a snapshot after it: the API's reads and the next cold
    /// worker start from there instead of rendering the prompts again.
    #[tokio::test]
    async fn a_step_dear_to_replay_leaves_a_snapshot() {
        const HEAVY: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: heavy }
spec:
  tasks:
    - id: hold
      type: wait
      for_each: "range(100)"
      with:
        approval:
          prompt: "{% for i in range(40000) %}{% endfor %}{{ item }}"
"#;
        let checked = Validator::default().validate(&SourceFile::new("heavy.yaml", HEAVY)).checked.expect("valid");
        let plan = Arc::new(Plan::new(checked));
        let s = Setup { plan: plan.clone(), ..Setup::new().await };
        s.store.create("heavy", "heavy.yaml", HEAVY, &plan.new_run("h", Default::default())).await.unwrap();
        s.queue.send(&Message::Event { run_id: "h".into(), event: Event::Start }, 0).await.unwrap();
        let w = s.worker(s.queue.clone());
        let ds: Vec<Delivery> = s.receive().await.into_iter().filter(|d| d.message.run_id() == "h").collect();
        w.handle_batch(&ds).await.pop().unwrap().unwrap();
        let stored = s.store.load("h").await.unwrap().unwrap();
        let tail: Vec<String> = stored.tail.iter().map(|t| t.event.key()).collect();
        assert_eq!(stored.snapshot.version, 1, "loading replays {tail:?}");
        let st = rebuild(&plan, stored).unwrap();
        assert_eq!(st.tasks[0].units.len(), 100);
    }
}

mod cas_tests {
    use super::CasRetry;
    use std::time::Duration;

    #[test]
    fn lost_writes_back_off_with_jitter_up_to_the_cap() {
        let c = CasRetry::default();
        for lost in 1..12 {
            let ceiling = (c.base * (1 << lost)).min(c.cap);
            let waits: Vec<Duration> = (0..50).map(|t| c.delay("run-1", 1_000 + t, lost)).collect();
            assert!(waits.iter().all(|w| *w <= ceiling), "{lost}: {waits:?}");
            assert!(waits.iter().any(|w| *w != waits[0]), "jittered");
        }
        assert_eq!(c.delay("r", 5, 3), c.delay("r", 5, 3), "deterministic for one run, clock and count");
        let zero = CasRetry { base: Duration::ZERO, ..c };
        assert_eq!(zero.delay("r", 5, 3), Duration::ZERO);
    }
}
