//! `step`: SQS-triggered; each batch advances the runs its messages belong to.
//! `step --local [--batch N]` polls the queue itself (LocalStack/moto) with the same handler.
use llmo_aws::sqs::SqsQueue;
use llmo_aws::step::Step;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    llmo_aws::env::help(
        "step: the SQS-triggered step handler of LLM-Orchestrator (Lambda).\n  step --local [--batch N]   poll the step queues with the same handler (LocalStack/moto)\nSettings: LLMO_TABLE, LLMO_QUEUE_URL, LLMO_FOLD_QUEUE_URL, LLMO_BUCKET, AWS_* (see shared/aws/src/config.rs).",
    );
    let obs = llmo_aws::env::Observability::init("step")?;
    let aws = llmo_aws::Aws::from_env().await?;
    let (executors, _, _) = llmo_aws::env::executors(&aws).await?;
    let queues = SqsQueue::step_queues(&aws);
    llmo_aws::local::sqs_function(
        "step",
        Step::new(&aws, executors, llmo_aws::step::StepSettings::from_env()),
        queues,
        obs,
    )
    .await
}
