//! A Lambda function for the `type: function` tests, hosted by `cargo lambda watch` (its Runtime
//! API): it answers with what it was sent, fails with a function error of its own type when
//! the event says `fail`, and sleeps `sleep_ms` first when asked (to run past a timeout).
//! `count_in: DIR` makes it write one file per call named by the event's idempotency key and
//! attempt, so tests can count the calls it took.

use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use serde_json::{Value, json};

#[derive(Debug)]
struct Refused(String);

impl From<Refused> for Diagnostic {
    fn from(e: Refused) -> Diagnostic {
        Diagnostic { error_type: "Refused".into(), error_message: e.0 }
    }
}

async fn handle(event: LambdaEvent<Value>) -> Result<Value, Refused> {
    let p = event.payload;
    if let Some(dir) = p.get("count_in").and_then(Value::as_str) {
        let key = p["llmo"]["idempotency_key"].as_str().unwrap_or("none");
        let name = format!("{dir}/{key}-{}-{}", p["llmo"]["attempt"], event.context.request_id);
        std::fs::write(name, b"").map_err(|e| Refused(e.to_string()))?;
    }
    if let Some(ms) = p.get("sleep_ms").and_then(Value::as_u64) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    if let Some(why) = p.get("fail").and_then(Value::as_str) {
        return Err(Refused(why.to_string()));
    }
    Ok(json!({ "echo": p, "request_id": event.context.request_id }))
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(service_fn(handle)).await
}
