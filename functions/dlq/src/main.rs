//! `dlq`: consumes the dead-letter queue; fails the task or run each message was about.
//! `dlq --local` polls the dead-letter queue itself (LocalStack/moto) with the same handler.
use llmo_aws::sqs::SqsQueue;
use llmo_aws::step::DeadLetters;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    llmo_aws::env::help(
        "dlq: the dead-letter handler of LLM-Orchestrator (Lambda): fails the task or run of each message.\n  dlq --local   poll the dead-letter queues with the same handler (LocalStack/moto)",
    );
    let obs = llmo_aws::env::Observability::init("dlq")?;
    let aws = llmo_aws::Aws::from_env().await?;
    let (executors, _, _) = llmo_aws::env::executors(&aws).await?;
    let queues = SqsQueue::dead_letter_queues(&aws);
    llmo_aws::local::sqs_function(
        "dlq",
        DeadLetters::new(&aws, executors, llmo_aws::step::StepSettings::from_env()),
        queues,
        obs,
    )
    .await
}
