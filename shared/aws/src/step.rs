//! The handlers of the SQS-triggered functions: `step` (advance runs) and `dlq` (fail what
//! could not be processed). Both take and return `aws_lambda_events` types, so Lambda and the
//! local poller feed them the same way.

use std::sync::Arc;

use std::time::Duration;
use tracing::Instrument;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use llmo_runtime::executor::Registry;
use llmo_runtime::ports::SystemClock;
use llmo_runtime::queue::{Delivery, Message, QueueError};
use llmo_runtime::worker::{Continue, Worker};

use crate::config::Aws;
use crate::dynamo::DynamoStore;
use crate::sqs::{Decoded, SqsQueue};

/// What the step function keeps between invocations of a warm container.
pub struct Step {
    pub worker: Worker,
    pub queue: Arc<SqsQueue>,
    /// The fold queue (FIFO), when the deployment has one: the worker deposits there the
    /// events of steps that would race other workers, and batches from it are folds.
    pub folds: Option<Arc<SqsQueue>>,
    /// The queue's visibility timeout; a step running longer than a third of it extends it.
    pub visibility_secs: i32,
    /// How long an invocation goes on stepping, in place, the one attempt a step asks for
    /// next (a chain), instead of sending it through the queue; 0 turns it off
    /// (`LLMO_CONTINUE_MS`, default 5000). See `Worker::handle_batch_continuing`.
    pub continue_ms: u64,
    /// At most this many steps in place per invocation (`LLMO_CONTINUE_STEPS`, default 100).
    pub continue_steps: usize,
}

/// The `step` and `dlq` functions' settings, read once in their `main`
/// ([`StepSettings::from_env`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepSettings {
    /// How many attempts of a run one step message carries at most (`LLMO_ATTEMPTS_PER_MESSAGE`,
    /// default 10, at most [`llmo_runtime::queue::MAX_ATTEMPTS_PER_MESSAGE`]); see
    /// `Worker::pack`. An invocation then runs up to its batch size times this many attempts
    /// at once.
    pub attempts_per_message: usize,
    /// The step queue's visibility timeout in seconds (`LLMO_VISIBILITY_SECS`, default 60).
    pub visibility_secs: i32,
    /// `LLMO_CONTINUE_MS` (default 5000) and `LLMO_CONTINUE_STEPS` (default 100): steps in place.
    pub continue_ms: u64,
    pub continue_steps: usize,
}

impl Default for StepSettings {
    fn default() -> Self {
        StepSettings {
            attempts_per_message: DEFAULT_ATTEMPTS_PER_MESSAGE,
            visibility_secs: 60,
            continue_ms: 5000,
            continue_steps: 100,
        }
    }
}

impl StepSettings {
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        let d = StepSettings::default();
        StepSettings {
            attempts_per_message: var("LLMO_ATTEMPTS_PER_MESSAGE")
                .map_or(d.attempts_per_message, |n| n as usize)
                .clamp(1, llmo_runtime::queue::MAX_ATTEMPTS_PER_MESSAGE),
            visibility_secs: var("LLMO_VISIBILITY_SECS").map_or(d.visibility_secs, |n| n as i32),
            continue_ms: var("LLMO_CONTINUE_MS").unwrap_or(d.continue_ms),
            continue_steps: var("LLMO_CONTINUE_STEPS").map_or(d.continue_steps, |n| n as usize),
        }
    }
}

/// The template's `StepAttemptsPerMessage` default, and the step function's.
pub const DEFAULT_ATTEMPTS_PER_MESSAGE: usize = 10;

impl Step {
    pub fn new(aws: &Aws, executors: Registry, settings: StepSettings) -> Self {
        let queue = Arc::new(SqsQueue::new(aws.clone()));
        let store = Arc::new(DynamoStore::new(aws.clone()));
        let mut worker =
            Worker::from_stored(store, queue.clone(), Arc::new(executors), Arc::new(SystemClock::default()));
        let folds = SqsQueue::folds(aws.clone()).map(Arc::new);
        worker.fold = folds.clone().map(|f| f as Arc<dyn llmo_runtime::queue::Queue>);
        // Concurrency keys held across the fleet.
        worker.flow = Arc::new(crate::flow::DynamoFlow::new(aws.clone()));
        worker.pack = settings.attempts_per_message;
        Step {
            worker,
            queue,
            folds,
            visibility_secs: settings.visibility_secs,
            continue_ms: settings.continue_ms,
            continue_steps: settings.continue_steps,
        }
    }

    /// Handles a batch: the records that failed are reported (`ReportBatchItemFailures`) and
    /// come back after the visibility timeout; the rest are deleted. A batch from the fold
    /// queue (an event source ARN ending in `.fifo`) is a fold (`Worker::handle_folds`).
    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let folding = self.folds.is_some()
            && event.records.first().and_then(|r| r.event_source_arn.as_deref()).is_some_and(|a| a.ends_with(".fifo"));
        let mut failed: Vec<String> = Vec::new();
        let mut ready: Vec<(String, Delivery)> = Vec::new();
        for r in &event.records {
            let id = r.message_id.clone().unwrap_or_default();
            match self.queue.decode(r).await {
                Ok(Decoded::Ready(message)) => {
                    let receive_count = receive_count(r);
                    if let Some(age) = crate::sqs::age_secs(r) {
                        llmo_runtime::meter::queue_wait(age);
                    }
                    let receipt = r.receipt_handle.clone().unwrap_or_default();
                    ready.push((id, Delivery { receipt, message, receive_count, trace: crate::sqs::trace_of(r) }));
                }
                Ok(Decoded::Early { body, left_ms }) => {
                    if let Err(e) = self.queue.send_traced(body, left_ms, crate::sqs::trace_of(r)).await {
                        tracing::warn!(message = %id, error = %e, "could not defer an early message");
                        failed.push(id);
                    }
                }
                // Not made by this deployment: dropped (acknowledged), never acted on, and
                // never dead-lettered (the dead-letter handler would fail the run it names).
                Err(QueueError::Forged(why)) => {
                    tracing::error!(message = %id, %why, "forged message dropped");
                    llmo_runtime::meter::forged_message();
                }
                Err(e) => {
                    // Delivered again until the redrive policy moves it to the dead-letter queue.
                    tracing::error!(message = %id, error = %e, "message cannot be read");
                    failed.push(id);
                }
            }
        }
        let deliveries: Vec<Delivery> = ready.iter().map(|(_, d)| d.clone()).collect();
        let receipts: Vec<String> = deliveries.iter().map(|d| d.receipt.clone()).collect();
        let heartbeat = self.heartbeat(receipts, folding);
        // The batch's messages stay unacknowledged (and, by the heartbeat, invisible) while
        // the work they lead to is stepped in place: they are its lease. A fold steps nothing
        // in place: it would hold the run's message group meanwhile.
        let results = if folding {
            self.worker.handle_folds(&deliveries).await
        } else if self.continue_ms == 0 {
            self.worker.handle_batch(&deliveries).await
        } else {
            let c =
                Continue { max_rounds: self.continue_steps, until: llmo_runtime::ports::now_ms() + self.continue_ms };
            self.worker.handle_batch_continuing(&deliveries, c).await
        };
        heartbeat.abort();
        for ((id, d), r) in ready.iter().zip(results) {
            match r {
                Ok(outcome) => tracing::debug!(message = %id, run = d.message.run_id(), ?outcome, "step done"),
                Err(e) => {
                    tracing::warn!(message = %id, run = d.message.run_id(), error = %e, "step failed");
                    failed.push(id.clone());
                }
            }
        }
        let mut resp = SqsBatchResponse::default();
        for id in failed {
            let mut f = BatchItemFailure::default();
            f.item_identifier = id;
            resp.batch_item_failures.push(f);
        }
        resp
    }

    /// Extends the records' visibility every third of the timeout while the step runs (a slow
    /// model call must not let SQS hand its message to a second worker).
    fn heartbeat(&self, receipts: Vec<String>, folding: bool) -> tokio::task::JoinHandle<()> {
        let queue = match &self.folds {
            Some(f) if folding => f.clone(),
            _ => self.queue.clone(),
        };
        let secs = self.visibility_secs.max(3);
        tokio::spawn(async move {
            let every = Duration::from_secs((secs / 3) as u64);
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = queue.extend(&receipts, secs).await {
                    tracing::warn!(error = %e, "visibility heartbeat failed");
                }
            }
        })
    }
}

fn receive_count(r: &SqsMessage) -> u32 {
    r.attributes.get("ApproximateReceiveCount").and_then(|c| c.parse().ok()).unwrap_or(1)
}

/// The dead-letter handler: a message that failed every delivery fails what it was about.
/// An `Execute` fails its attempt for good (the task's `on_failure` then decides), an
/// `Attempts` fails each attempt it names; any other message aborts the run. Both go through
/// the ordinary step, so `on.failure` hooks run.
pub struct DeadLetters {
    pub worker: Worker,
    pub queue: SqsQueue,
}

impl DeadLetters {
    pub fn new(aws: &Aws, executors: Registry, settings: StepSettings) -> Self {
        let step_queue = Arc::new(SqsQueue::new(aws.clone()));
        let store = Arc::new(DynamoStore::new(aws.clone()));
        let mut worker = Worker::from_stored(store, step_queue, Arc::new(executors), Arc::new(SystemClock::default()));
        worker.pack = settings.attempts_per_message;
        DeadLetters { worker, queue: SqsQueue::dead_letters(aws.clone()) }
    }

    pub async fn handle(&self, event: SqsEvent) -> SqsBatchResponse {
        let mut resp = SqsBatchResponse::default();
        for r in &event.records {
            let id = r.message_id.clone().unwrap_or_default();
            let Some((message, reason)) = self.verdict(r).await else {
                tracing::error!(message = %id, body = ?r.body, "dead letter names no run; dropped");
                continue;
            };
            let run = message.run_id().to_string();
            let span = tracing::info_span!("dead letter", run_id = %run, %reason);
            llmo_runtime::telemetry::adopt(&span, crate::sqs::trace_of(r).as_deref());
            let handled = self.worker.dead_letter(message, reason).instrument(span).await;
            match handled {
                Ok(o) => {
                    tracing::warn!(message = %id, %run, ?o, "dead letter failed its task or run")
                }
                Err(llmo_runtime::worker::Error::NoSuchRun(run)) => {
                    tracing::error!(message = %id, %run, "dead letter for an unknown run; dropped")
                }
                Err(e) => {
                    tracing::warn!(message = %id, error = %e, "dead letter not handled yet");
                    let mut f = BatchItemFailure::default();
                    f.item_identifier = id;
                    resp.batch_item_failures.push(f);
                }
            }
        }
        resp
    }

    /// The event that fails what a dead letter was about, read leniently (the message may be
    /// from a newer producer, or not decode at all).
    async fn verdict(&self, r: &SqsMessage) -> Option<(Message, String)> {
        let signed = r.body.as_deref()?;
        // A message this deployment did not sign fails no run.
        let body = match self.queue.unsigned(signed).await {
            Ok(b) => b,
            Err(e) => {
                llmo_runtime::meter::forged_message();
                tracing::error!(error = %e, "forged dead letter dropped");
                return None;
            }
        };
        let why = match self.queue.open(signed).await {
            Ok(_) => format!("delivered {} times without being processed", receive_count(r)),
            Err(e) => e.to_string(),
        };
        let reason = format!("message moved to the dead-letter queue: {why}");
        Some((llmo_runtime::worker::dead_letter_verdict(&body, &reason)?, reason))
    }
}
