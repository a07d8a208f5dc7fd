//! Local modes: the same handlers Lambda runs, fed the same event types by a queue poller
//! (what Lambda's SQS event source mapping does) and by a plain HTTP server (what API
//! Gateway does), so the whole system runs on a laptop against LocalStack/moto.

use std::future::Future;
use std::net::SocketAddr;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_http::{Body, Request};

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
        let records = match records {
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

/// Serves `handler` over HTTP on `addr` (API Gateway's part, locally).
pub async fn serve<F, Fut>(addr: SocketAddr, handler: F) -> std::io::Result<()>
where
    F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = lambda_http::Response<Body>> + Send,
{
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let handler = handler.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = match axum::body::to_bytes(body, 16 * 1024 * 1024).await {
                Ok(b) => b,
                Err(e) => {
                    return axum::response::Response::builder()
                        .status(400)
                        .body(axum::body::Body::from(serde_json::json!({"error": e.to_string()}).to_string()))
                        .expect("valid response");
                }
            };
            let body = if bytes.is_empty() { Body::Empty } else { Body::Binary(bytes.to_vec()) };
            let resp = handler(Request::from_parts(parts, body)).await;
            let (parts, body) = resp.into_parts();
            axum::response::Response::from_parts(parts, axum::body::Body::from(body.to_vec()))
        }
    });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "api listening");
    axum::serve(listener, app).await
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

/// The `main` of an SQS-triggered function: under Lambda, `lambda_runtime` over `handler`;
/// with `--local [--batch N]` in the arguments, polls `queue` itself with the same handler
/// until Ctrl-C.
pub async fn sqs_function<H: SqsHandler>(name: &str, handler: H, queue: SqsQueue) -> Result<(), lambda_runtime::Error> {
    let handler = std::sync::Arc::new(handler);
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--local") {
        let batch = args.iter().position(|a| a == "--batch").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(10);
        tracing::info!(queue = %queue.url, batch, "{name}: polling locally");
        poll(&queue, batch, |e| handler.handle(e), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
        return Ok(());
    }
    lambda_runtime::run(lambda_runtime::service_fn(move |e: lambda_runtime::LambdaEvent<SqsEvent>| {
        let handler = handler.clone();
        async move { Ok::<_, lambda_runtime::Error>(handler.handle(e.payload).await) }
    }))
    .await
}
