//! Sends one message body to the step queue, signed as the deployment signs its messages
//! (`LLMO_QUEUE_KEYS`), as a test's stand-in for a producer: a poison message (a schema version
//! from the future) for the real-Lambda smoke test (`localstack/lambda/smoke.sh`).
//!
//!   send_body '{"v": 99, "kind": "event", "run_id": "...", "event": {"type": "start"}}'

#[tokio::main]
async fn main() {
    let body = std::env::args().nth(1).expect("send_body BODY");
    let aws = llmo_aws::Aws::from_env().await.expect("AWS settings");
    llmo_aws::sqs::SqsQueue::new(aws).send_body(body, 0).await.expect("sending the message");
}
