//! The handlers of the SQS-triggered functions: `step` (advance runs) and `dlq` (fail what
//! could not be processed). Both take and return `aws_lambda_events` types, so Lambda and the
//! local poller feed them the same way.

use std::sync::Arc;

use std::time::Duration;
use tracing::Instrument;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use llmo_core::engine::Event;
use llmo_runtime::executor::Registry;
use llmo_runtime::ports::SystemClock;
use llmo_runtime::queue::{Delivery, Message};
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

impl Step {
    pub fn new(aws: &Aws, executors: Registry) -> Self {
        let queue = Arc::new(SqsQueue::new(aws.clone()));
        let store = Arc::new(DynamoStore::new(aws.clone()));
        let mut worker =
            Worker::from_stored(store, queue.clone(), Arc::new(executors), Arc::new(SystemClock::default()));
        let folds = SqsQueue::folds(aws.clone()).map(Arc::new);
        worker.fold = folds.clone().map(|f| f as Arc<dyn llmo_runtime::queue::Queue>);
        // Concurrency keys held across the fleet.
        worker.flow = Arc::new(crate::flow::DynamoFlow::new(aws.clone()));
        let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        Step {
            worker,
            queue,
            folds,
            visibility_secs: var("LLMO_VISIBILITY_SECS").unwrap_or(60) as i32,
            continue_ms: var("LLMO_CONTINUE_MS").unwrap_or(5000),
            continue_steps: var("LLMO_CONTINUE_STEPS").unwrap_or(100) as usize,
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
/// An `Execute` fails its attempt for good (the task's `on_failure` then decides); any other
/// message aborts the run. Both go through the ordinary step, so `on.failure` hooks run.
pub struct DeadLetters {
    pub worker: Worker,
    pub queue: SqsQueue,
}

impl DeadLetters {
    pub fn new(aws: &Aws, executors: Registry) -> Self {
        let step_queue = Arc::new(SqsQueue::new(aws.clone()));
        let store = Arc::new(DynamoStore::new(aws.clone()));
        let worker = Worker::from_stored(store, step_queue, Arc::new(executors), Arc::new(SystemClock::default()));
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
            // An `Execute` fails its attempt through the engine; a run that no longer loads
            // (its workflow does not validate, its log does not replay) is aborted without it.
            let handled = async {
                match message {
                    Message::Event { event: Event::Abort { .. }, .. } => {
                        llmo_runtime::meter::dead_letter("unreadable");
                        self.worker.abort(&run, reason).await
                    }
                    message => {
                        let kind = if matches!(message, Message::Execute { .. }) { "attempt" } else { "run" };
                        llmo_runtime::meter::dead_letter(kind);
                        let trace = llmo_runtime::telemetry::traceparent();
                        let d = Delivery { receipt: String::new(), message, receive_count: 1, trace };
                        match self.worker.handle(&d).await {
                            Err(
                                llmo_runtime::worker::Error::BadWorkflow { .. }
                                | llmo_runtime::worker::Error::Store(llmo_runtime::store::Error::Corrupt { .. }),
                            ) => self.worker.abort(&run, reason).await,
                            other => other,
                        }
                    }
                }
            }
            .instrument(span)
            .await;
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
        let body = r.body.as_deref()?;
        let why = match self.queue.open(body).await {
            Ok(_) => format!("delivered {} times without being processed", receive_count(r)),
            Err(e) => e.to_string(),
        };
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        let run_id = v.get("run_id")?.as_str()?.to_string();
        let reason = format!("message moved to the dead-letter queue: {why}");
        let event = match v.get("kind").and_then(|k| k.as_str()) {
            Some("execute") => {
                let task = v.get("task")?.as_u64()? as usize;
                let item = v.get("item").and_then(|i| i.as_u64()).map(|i| i as u32);
                let attempt = v.get("attempt")?.as_u64()? as u32;
                let result =
                    llmo_runtime::executor::failed(llmo_core::engine::builtin::TaskError::fatal(reason.clone()));
                Event::finished(task, item, attempt, result)
            }
            _ => Event::Abort { reason: reason.clone() },
        };
        Some((Message::Event { run_id, event }, reason))
    }
}
