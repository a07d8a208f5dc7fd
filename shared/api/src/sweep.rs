//! The sweeper: every run ends, even one whose messages were lost. Over ports: the live runs
//! (DynamoDB's `by_live` index deployed, the SQLite `runs` table under `llmo serve`) and the
//! step queue.
//!
//! Steps of a run are driven by its queue messages, and SQS does not lose them: a message that
//! cannot be processed reaches the dead-letter handler, which fails its run. What is left is a
//! run whose message was never sent: the API stored the run and then could not send its
//! `Start` (the client saw an error and did not retry with its idempotency key), or a run whose
//! deadline `Tick` was never armed. The sweeper, run every few minutes (the `schedule`
//! function with `{"sweep": true}`, or `llmo sweep`), reads the runs not ended yet (the sparse
//! `by_live` index) and
//! - re-sends `Start` to a run still `pending` `grace` after its creation (a duplicate start is
//!   ignored: the engine starts a run once);
//! - sends `Tick` to a run `running` `grace` past its deadline (every serverless run has one:
//!   `spec.timeout`, or the deployment's longest run), which times it out.
//!
//! Both go through the ordinary step, so each is applied exactly once however often the
//! sweeper runs.

use std::sync::Arc;

use llmo_core::engine::Event;
use llmo_runtime::queue::{Message, Queue};
use llmo_runtime::store::LiveRuns;
use serde::Serialize;

/// Why a sweep did not finish (what it sent before is sent).
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("sweep: reading the live runs: {0}")]
    Store(#[from] llmo_runtime::store::Error),
    #[error("sweep: {0}")]
    Queue(#[from] llmo_runtime::queue::QueueError),
}

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Swept {
    /// Live runs read to find the ones to act on (the whole `by_live` index, created before
    /// the grace period).
    pub looked_at: u64,
    /// Pending runs whose `Start` was sent again.
    pub restarted: Vec<String>,
    /// Running runs past their deadline that were sent a `Tick`.
    pub timed_out: Vec<String>,
}

pub struct Sweeper {
    live: Arc<dyn LiveRuns>,
    queue: Arc<dyn Queue>,
    /// How long after its creation a pending run, or after its deadline a running one, is left
    /// alone (`LLMO_SWEEP_GRACE_SECS`, default 300).
    pub grace_ms: u64,
    /// Most runs acted on per sweep (the rest wait for the next); every live run is looked at.
    pub limit: usize,
}

impl Sweeper {
    pub fn new(live: Arc<dyn LiveRuns>, queue: Arc<dyn Queue>, grace_ms: u64) -> Self {
        Sweeper { live, queue, grace_ms, limit: 10_000 }
    }

    /// [`Sweeper::sweep`] at the current time.
    pub async fn sweep_now(&self) -> Result<Swept, SweepError> {
        self.sweep(llmo_runtime::ports::now_ms()).await
    }

    pub async fn sweep(&self, now_ms: u64) -> Result<Swept, SweepError> {
        let cutoff = now_ms.saturating_sub(self.grace_ms);
        let (runs, scanned) = self.live.live_runs(cutoff, cutoff, self.limit).await?;
        let mut out = Swept { looked_at: scanned, ..Default::default() };
        let mut msgs = Vec::new();
        for r in runs {
            let event = match (r.status.as_str(), r.deadline) {
                ("pending", _) => {
                    out.restarted.push(r.run_id.clone());
                    Event::Start
                }
                ("running", Some(d)) if d + self.grace_ms <= now_ms => {
                    out.timed_out.push(r.run_id.clone());
                    Event::Tick
                }
                _ => continue,
            };
            msgs.push((Message::Event { run_id: r.run_id, event }, 0));
        }
        if !msgs.is_empty() {
            self.queue.send_batch(&msgs).await?;
        }
        tracing::info!(
            looked_at = out.looked_at,
            restarted = out.restarted.len(),
            timed_out = out.timed_out.len(),
            "sweep"
        );
        Ok(out)
    }
}
