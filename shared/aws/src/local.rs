//! Local modes: the same handlers Lambda runs, fed the same event types by a queue poller
//! (what Lambda's SQS event source mapping does) and by a plain HTTP server (what API
//! Gateway does), so the whole system runs on a laptop against LocalStack/moto.

use std::future::Future;
use std::net::SocketAddr;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};

use crate::sqs::SqsQueue;

/// Polls `queue` in batches of up to `batch`, hands each batch to `handler` and deletes the
/// records it did not report as failed, until `stop` resolves.
pub async fn poll<F, Fut>(queue: &SqsQueue, batch: usize, handler: F, stop: impl Future<Output = ()>)
where
    F: Fn(SqsEvent) -> Fut,
    Fut: Future<Output = SqsBatchResponse>,
{
    tokio::pin!(stop);
    loop {
        // Checked between receives, never by dropping one: SQS would still hand the messages
        // of an abandoned long poll to it, and they would wait out their visibility timeout.
        if futures::FutureExt::now_or_never(&mut stop).is_some() {
            return;
        }
        let records = queue.receive_records(batch).await;
        let mut records = match records {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "receive failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
        };
        if records.is_empty() {
            continue;
        }
        // A batching window: fill the batch from further receives (each a billed request) for
        // up to the window from the first message, as the event source mapping does.
        if queue.batch_window_secs > 0 {
            let until = std::time::Instant::now() + std::time::Duration::from_secs(queue.batch_window_secs as u64);
            while records.len() < batch {
                let left = until.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                // SQS waits whole seconds: the last wait may end a little past the window.
                let wait = left.as_secs_f64().ceil() as i32;
                match queue.receive_records_waiting(batch - records.len(), wait).await {
                    Ok(more) => records.extend(more),
                    Err(e) => {
                        tracing::warn!(error = %e, "receive failed; handing over the batch so far");
                        break;
                    }
                }
            }
        }
        let mut event = SqsEvent::default();
        event.records = records;
        let receipts: Vec<(String, String)> = event
            .records
            .iter()
            .map(|r| (r.message_id.clone().unwrap_or_default(), r.receipt_handle.clone().unwrap_or_default()))
            .collect();
        let resp = handler(event).await;
        let done: Vec<String> = receipts
            .into_iter()
            .filter(|(id, _)| !resp.batch_item_failures.iter().any(|f| &f.item_identifier == id))
            .map(|(_, r)| r)
            .collect();
        if let Err(e) = queue.delete_batch(&done).await {
            tracing::warn!(error = %e, "delete failed; the messages come back and are handled again");
        }
    }
}

/// [`poll`] over several queues at once (the step function's step and fold queues, the
/// dead-letter function's two dead-letter queues), with one handler, until `stop` resolves.
pub async fn poll_queues<F, Fut>(queues: &[SqsQueue], batch: usize, handler: F, stop: impl Future<Output = ()>)
where
    F: Fn(SqsEvent) -> Fut,
    Fut: Future<Output = SqsBatchResponse>,
{
    use futures::FutureExt;
    let stop = stop.shared();
    let polls = queues.iter().map(|q| poll(q, batch, &handler, stop.clone()));
    futures::future::join_all(polls).await;
}

/// A handler of SQS batches (`step`, `dlq`).
pub trait SqsHandler: Send + Sync + 'static {
    fn handle(&self, event: SqsEvent) -> impl Future<Output = SqsBatchResponse> + Send;
}

impl SqsHandler for crate::step::Step {
    fn handle(&self, event: SqsEvent) -> impl Future<Output = SqsBatchResponse> + Send {
        crate::step::Step::handle(self, event)
    }
}

impl SqsHandler for crate::step::DeadLetters {
    fn handle(&self, event: SqsEvent) -> impl Future<Output = SqsBatchResponse> + Send {
        crate::step::DeadLetters::handle(self, event)
    }
}

/// The `main` of an SQS-triggered function: under Lambda, `lambda_runtime` over `handler`,
/// flushing metrics and spans after each invocation; with `--local [--batch N]` in the
/// arguments, polls `queue` itself with the same handler until Ctrl-C (and serves its
/// Prometheus metrics on `LLMO_METRICS_ADDR` when set).
pub async fn sqs_function<H: SqsHandler>(
    name: &str,
    handler: H,
    queues: Vec<SqsQueue>,
    obs: crate::env::Observability,
) -> Result<(), lambda_runtime::Error> {
    let handler = std::sync::Arc::new(handler);
    let obs = std::sync::Arc::new(obs);
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--local") {
        let batch = args.iter().position(|a| a == "--batch").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(10);
        if let Some(addr) = std::env::var("LLMO_METRICS_ADDR").ok().filter(|a| !a.is_empty()) {
            let addr: SocketAddr = addr.parse().map_err(|e| format!("LLMO_METRICS_ADDR {addr}: {e}"))?;
            if !addr.ip().is_loopback() {
                return Err(
                    format!("LLMO_METRICS_ADDR {addr}: the metrics have no authentication; use loopback").into()
                );
            }
            let obs = obs.clone();
            let listener = tokio::net::TcpListener::bind(addr).await?;
            tokio::spawn(serve_metrics(listener, move || obs.prometheus().unwrap_or_default()));
        }
        let urls: Vec<&str> = queues.iter().map(|q| q.url.as_str()).collect();
        tracing::info!(queues = ?urls, batch, "{name}: polling locally");
        poll_queues(&queues, batch, |e| handler.handle(e), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
        return Ok(());
    }
    lambda_runtime::run(lambda_runtime::service_fn(move |e: lambda_runtime::LambdaEvent<SqsEvent>| {
        let (handler, obs) = (handler.clone(), obs.clone());
        async move {
            let out = handler.handle(e.payload).await;
            obs.flush().await;
            Ok::<_, lambda_runtime::Error>(out)
        }
    }))
    .await
}

/// Serves `GET /metrics` (Prometheus text exposition of `render()`) on `listener`, for a
/// process that has no API of its own (a local step worker). Callers bind it to loopback
/// only: it has no authentication.
pub async fn serve_metrics<F>(listener: tokio::net::TcpListener, render: F) -> std::io::Result<()>
where
    F: Fn() -> String + Clone + Send + Sync + 'static,
{
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let render = render.clone();
            async move { ([("content-type", "text/plain; version=0.0.4")], render()) }
        }),
    );
    axum::serve(listener, app).await
}
