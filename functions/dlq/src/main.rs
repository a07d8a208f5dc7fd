//! `dlq`: consumes the dead-letter queue; fails the task or run each message was about.
//! `dlq --local` polls the dead-letter queue itself (LocalStack/moto) with the same handler.
use std::sync::Arc;

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{LambdaEvent, service_fn};
use llmo_aws::step::DeadLetters;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    llmo_aws::env::init_tracing();
    let aws = llmo_aws::Aws::from_env().await;
    let (executors, _, _) = llmo_aws::env::executors()?;
    let step = Arc::new(DeadLetters::new(&aws, executors));
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--local") {
        let batch = args.iter().position(|a| a == "--batch").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(10);
        let queue = llmo_aws::sqs::SqsQueue::dead_letters(aws.clone());
        tracing::info!(queue = %queue.url, batch, "dlq: polling locally");
        llmo_aws::local::poll(&queue, batch, |e| step.handle(e), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
        return Ok(());
    }
    lambda_runtime::run(service_fn(move |e: LambdaEvent<SqsEvent>| {
        let step = step.clone();
        async move { Ok::<_, lambda_runtime::Error>(step.handle(e.payload).await) }
    }))
    .await
}
