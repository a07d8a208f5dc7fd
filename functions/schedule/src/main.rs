//! `schedule`: the EventBridge target that starts runs of scheduled workflows. The rule's
//! input is `{"workflow": "<registered name>", "inputs": {..}}` (EventBridge Scheduler) or an
//! EventBridge event whose `detail` holds it (scheduled rule). The event's id is the start's
//! idempotency key: a tick delivered twice starts one run.
use std::sync::Arc;

use lambda_runtime::{LambdaEvent, service_fn};
use llmo_aws::api::Api;
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    llmo_aws::env::init_tracing();
    let aws = llmo_aws::Aws::from_env().await;
    let (executors, config, mock) = llmo_aws::env::executors(&aws)?;
    let api = Arc::new(Api::new(&aws, executors, config, mock));
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--event") {
        // Local: start the run one event file describes, as EventBridge would.
        let path = args.get(i + 1).ok_or("--event FILE")?;
        let event: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
        let out = api.start_scheduled(&event).await?;
        println!("{out}");
        return Ok(());
    }
    lambda_runtime::run(service_fn(move |e: LambdaEvent<Value>| {
        let api = api.clone();
        async move { api.start_scheduled(&e.payload).await.map_err(lambda_runtime::Error::from) }
    }))
    .await
}
