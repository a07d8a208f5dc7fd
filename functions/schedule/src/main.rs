//! `schedule`: the EventBridge target that starts runs of scheduled workflows. The rule's
//! input is `{"workflow": "<registered name>", "inputs": {..}}` (EventBridge Scheduler) or an
//! EventBridge event whose `detail` holds it (scheduled rule). The event's id is the start's
//! idempotency key: a tick delivered twice starts one run.
//!
//! `{"sweep": true}` (the template's every-5-minutes rule) runs the sweeper instead
//! (`llmo_api::sweep`): pending runs whose start was lost are started, runs past their deadline
//! are timed out. `schedule --sweep` does the same once from a shell (with the deployment's
//! environment) and prints what it did.
use std::sync::Arc;

use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    llmo_aws::env::help(
        "schedule: starts runs of scheduled and event-triggered workflows (EventBridge target, Lambda).\n  schedule --sweep          run the sweeper once and print what it did\n  schedule --event FILE     start the run one EventBridge event file describes",
    );
    let obs = Arc::new(llmo_aws::env::Observability::init("schedule")?);
    let aws = llmo_aws::Aws::from_env().await?;
    let (executors, config, mock) = llmo_aws::env::executors(&aws).await?;
    let api = Arc::new(llmo_aws::api::build(&aws, executors, config, mock));
    let grace = std::env::var("LLMO_SWEEP_GRACE_SECS").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(300);
    let sweeper = Arc::new(llmo_aws::api::sweeper(&aws, grace * 1000));
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--sweep") {
        let out = sweeper.sweep_now().await?;
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if let Some(i) = args.iter().position(|a| a == "--event") {
        // Local: start the run one event file describes, as EventBridge would.
        let path = args.get(i + 1).ok_or("--event FILE")?;
        let event: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
        let out = api.start_scheduled(&event).await?;
        println!("{out}");
        return Ok(());
    }
    lambda_runtime::run(service_fn(move |e: LambdaEvent<Value>| {
        let (api, sweeper, obs) = (api.clone(), sweeper.clone(), obs.clone());
        async move {
            let out = if e.payload.get("sweep").and_then(Value::as_bool) == Some(true) {
                match sweeper.sweep_now().await {
                    Ok(o) => serde_json::to_value(o).map_err(lambda_runtime::Error::from),
                    Err(e) => Err(lambda_runtime::Error::from(e.to_string())),
                }
            } else {
                api.start_scheduled(&e.payload).await.map_err(lambda_runtime::Error::from)
            };
            obs.flush().await;
            out
        }
    }))
    .await
}
