//! `type: function`: a task that is an AWS Lambda function, invoked synchronously with the
//! Lambda Invoke API ([`aws_sdk_lambda`]) within the task's timeout.
//!
//! - Only functions the operator lists may be invoked ([`Settings::allowed`],
//!   `LLMO_ALLOWED_FUNCTIONS`; deployed, the template's `InvokableFunctions`, which also scopes
//!   the IAM grant): a workflow names a function, it never widens the list.
//! - The event is the task's `payload` object plus `llmo`: `{ idempotency_key, run_id, task,
//!   item, attempt }`; the key is the same on every attempt and redelivery of the task item, so
//!   a function with side effects can do them once.
//! - A function error (Lambda's `X-Amz-Function-Error`) fails the attempt with the function's
//!   `errorType` and `errorMessage` and follows the task's `retry`; so do throttles, service
//!   errors and lost connections (retryable failures: one call per attempt, no hidden SDK
//!   retries, the task's backoff between them); an unknown or refused function, a denial or
//!   a bad request fail the task at once.
//! - An event over Lambda's 6 MB goes by claim check when a [`ClaimCheck`] is given (the
//!   serverless runtime's S3 bucket): the function gets `llmo.payload_ref` (`{ bucket, key }`)
//!   instead of the payload's fields, and reads them there. Without one such a task fails.

pub mod local;
pub mod sdk;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_lambda::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_lambda::types::InvocationType;
use aws_smithy_types::Blob;
use llmo_core::engine::AttemptResult;
use llmo_core::engine::builtin::TaskError;
use llmo_core::function::{AllowedFunctions, FunctionWith, MAX_PAYLOAD_BYTES};
use llmo_runtime::executor::{Attempt, Executor, failed, succeeded};
use serde_json::{Map, Value, json};

/// The longest a function may run (Lambda's own limit): the invocation's timeout when the task
/// sets none.
pub const MAX_FUNCTION_TIME: Duration = Duration::from_secs(15 * 60);

/// How `type: function` tasks reach Lambda. Read once, in each binary's `main`.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `LLMO_ALLOWED_FUNCTIONS`: names and ARNs, comma-separated (`NAME@TENANT`: for that
    /// tenant's runs only). Empty: no function may be
    /// invoked.
    pub allowed: AllowedFunctions,
    /// `LLMO_LAMBDA_ENDPOINT`: the Invoke API somewhere else than AWS (`cargo lambda watch`,
    /// LocalStack). Without AWS credentials in the environment, local ones are used there.
    pub endpoint: Option<String>,
}

impl Settings {
    pub fn from_env() -> Result<Self, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let allowed = match var("LLMO_ALLOWED_FUNCTIONS") {
            Some(list) => AllowedFunctions::parse(&list).map_err(|e| format!("LLMO_ALLOWED_FUNCTIONS: {e}"))?,
            None => AllowedFunctions::default(),
        };
        Ok(Settings { allowed, endpoint: var("LLMO_LAMBDA_ENDPOINT") })
    }
}

/// Where an event too large for Lambda is put for the function to read.
#[async_trait]
pub trait ClaimCheck: Send + Sync {
    /// Stores `body` as `key` (`runs/RUN/function-payloads/KEY-ATTEMPT.json`) and returns the
    /// reference the function gets (`{ bucket, key }` for S3).
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<Value, String>;
}

/// The executor of `type: function`.
pub struct FunctionExecutor {
    settings: Settings,
    /// Made at the first call: a run without function tasks loads no AWS settings.
    client: tokio::sync::OnceCell<aws_sdk_lambda::Client>,
    claims: Option<Arc<dyn ClaimCheck>>,
    /// Answers without calling anything (`--mock`, `llmo test`).
    mock: bool,
}

impl FunctionExecutor {
    /// The executor of `settings`; its client, with the SDK's settings ([`sdk::loader`]), is
    /// made at its first call.
    pub fn new(settings: Settings) -> Self {
        FunctionExecutor { settings, client: tokio::sync::OnceCell::new(), claims: None, mock: false }
    }

    /// An executor that invokes nothing and answers `{ function, payload }` (the event it
    /// would have sent): nothing leaves the machine, so any well-formed name is taken.
    pub fn mock() -> Self {
        FunctionExecutor { mock: true, ..FunctionExecutor::new(Settings::default()) }
    }

    async fn client(&self) -> &aws_sdk_lambda::Client {
        self.client
            .get_or_init(|| async {
                let mut loader = sdk::loader();
                if let Some(e) = &self.settings.endpoint {
                    loader = loader.endpoint_url(e);
                    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
                        // A local Invoke API checks no signature, but the SDK signs every request.
                        loader = loader.credentials_provider(aws_sdk_lambda::config::Credentials::new(
                            "llmo-local",
                            "llmo-local",
                            None,
                            None,
                            "llmo-local",
                        ));
                    }
                }
                let sdk = loader.load().await;
                let mut conf = aws_sdk_lambda::config::Builder::from(&sdk);
                if sdk.region().is_none() {
                    conf = conf.region(aws_sdk_lambda::config::Region::new("us-east-1"));
                }
                aws_sdk_lambda::Client::from_conf(conf.build())
            })
            .await
    }

    /// Events over 6 MB go to `claims`.
    pub fn with_claim_check(mut self, claims: Arc<dyn ClaimCheck>) -> Self {
        self.claims = Some(claims);
        self
    }

    async fn invoke(&self, a: &Attempt) -> Result<Value, TaskError> {
        let w: FunctionWith =
            serde_json::from_value(a.with.clone()).map_err(|e| TaskError::fatal(format!("function: {e}")))?;
        let function = w.function.trim();
        if self.mock {
            llmo_core::function::FunctionRef::parse(function).map_err(TaskError::fatal)?;
        } else {
            self.settings.allowed.check(function, a.tenant.as_deref()).map_err(TaskError::fatal)?;
        }
        let body = self.event_body(a, w.payload.unwrap_or_default()).await?;
        if self.mock {
            let payload: Value = serde_json::from_slice(&body).unwrap_or_default();
            return Ok(json!({ "function": function, "payload": payload }));
        }
        // The attempt's own timeout is enforced around the executor (its message is the run's);
        // the SDK's is a backstop a little later, so the call never outlives the attempt.
        let timeout = a.timeout.unwrap_or(MAX_FUNCTION_TIME).min(MAX_FUNCTION_TIME) + Duration::from_secs(5);
        let span = tracing::Span::current();
        span.record("faas.invoked_name", function);
        let out = self
            .client()
            .await
            .invoke()
            .function_name(function)
            .invocation_type(InvocationType::RequestResponse)
            .payload(Blob::new(body))
            .customize()
            .config_override(
                aws_sdk_lambda::config::Config::builder()
                    .timeout_config(
                        aws_sdk_lambda::config::timeout::TimeoutConfig::builder().operation_timeout(timeout).build(),
                    )
                    // One call per attempt: what failed in passing fails the attempt as
                    // retryable and the task's `retry` decides, with its backoff, as for `http`.
                    .retry_config(aws_sdk_lambda::config::retry::RetryConfig::disabled()),
            )
            .send()
            .await
            .map_err(|e| classify(function, e))?;
        let answer = out.payload.map(Blob::into_inner).unwrap_or_default();
        if let Some(kind) = out.function_error {
            return Err(function_error(function, &kind, &answer));
        }
        Ok(parse_answer(&answer))
    }

    /// The event: the payload's fields and `llmo`, or `llmo.payload_ref` when it is over
    /// Lambda's limit.
    async fn event_body(&self, a: &Attempt, payload: Map<String, Value>) -> Result<Vec<u8>, TaskError> {
        let key = a.idempotency_key();
        let mut llmo = json!({
            "idempotency_key": key,
            "run_id": &*a.run_id,
            "task": &*a.task_id,
            "item": a.item,
            "attempt": a.attempt,
        });
        if llmo_runtime::callbacks::missing(a) {
            return Err(TaskError::fatal(
                "this task waits for a callback, and this runtime issues no task tokens (set LLMO_LINK_SECRET)",
            ));
        }
        if let Some(cb) = &a.callback {
            llmo["callback"] = json!({"token": cb.token, "url": cb.url});
        }
        if payload.contains_key("llmo") {
            return Err(TaskError::fatal("function: `payload.llmo` is the engine's (the attempt's key and names)"));
        }
        let mut event = payload;
        event.insert("llmo".into(), llmo.clone());
        let body = serde_json::to_vec(&event).map_err(|e| TaskError::fatal(format!("function: payload: {e}")))?;
        if body.len() <= MAX_PAYLOAD_BYTES {
            return Ok(body);
        }
        let Some(claims) = &self.claims else {
            return Err(TaskError::fatal(format!(
                "function: the payload is {} bytes, over Lambda's 6 MB, and this runtime has no bucket for claim checks",
                body.len()
            )));
        };
        let name = format!("runs/{}/function-payloads/{key}-{}.json", a.run_id, a.attempt);
        let reference = claims
            .put(&name, body)
            .await
            .map_err(|e| TaskError { message: format!("function: storing the payload: {e}"), retryable: true })?;
        let mut llmo = llmo;
        llmo["payload_ref"] = reference;
        Ok(serde_json::to_vec(&json!({ "llmo": llmo })).expect("JSON"))
    }
}

#[async_trait]
impl Executor for FunctionExecutor {
    async fn execute(&self, a: &Attempt) -> AttemptResult {
        match self.invoke(a).await {
            Ok(v) => succeeded(v),
            Err(e) => failed(e),
        }
    }
}

/// The answer as JSON; an answer that is not JSON is kept as text.
fn parse_answer(answer: &[u8]) -> Value {
    if answer.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(answer).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(answer).into_owned()))
}

/// A function's own error: `{ errorType, errorMessage }` as Lambda's runtimes report it. It
/// follows the task's `retry`.
fn function_error(function: &str, kind: &str, answer: &[u8]) -> TaskError {
    let v = parse_answer(answer);
    let ty = v.get("errorType").and_then(Value::as_str).unwrap_or(kind);
    let msg = match v.get("errorMessage") {
        Some(Value::String(m)) => m.clone(),
        Some(other) => other.to_string(),
        None if v.is_null() => String::new(),
        None => v.to_string(),
    };
    let msg: String = msg.chars().take(2000).collect();
    TaskError { message: format!("function `{function}` failed: {ty}: {msg}"), retryable: true }
}

/// Lambda's refusals: what may pass (throttles, service errors, lost connections) is retried;
/// an unknown function, a denial or a bad request fails the task.
fn classify(
    function: &str,
    e: SdkError<aws_sdk_lambda::operation::invoke::InvokeError, aws_smithy_runtime_api::http::Response>,
) -> TaskError {
    match &e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            // A function error as Lambda emulators answer it (`cargo lambda watch`: a 500 whose
            // body is the function's `{ errorType, errorMessage }`, no error header).
            if err.code().is_none()
                && let Some(body) = s.raw().body().bytes()
                && parse_answer(body).get("errorType").is_some()
            {
                return function_error(function, "Unhandled", body);
            }
            let code = err.code().unwrap_or("unknown");
            let msg = err.message().unwrap_or_default();
            if err.is_resource_not_found_exception() {
                return TaskError::fatal(format!("unknown function `{function}` (Lambda: {code}: {msg})"));
            }
            let transient = err.is_too_many_requests_exception()
                || err.is_service_exception()
                || err.is_resource_not_ready_exception()
                || err.is_resource_conflict_exception()
                || err.is_ec2_throttled_exception()
                || err.is_ec2_unexpected_exception()
                || err.is_eni_limit_reached_exception()
                || err.is_snap_start_not_ready_exception()
                || err.is_snap_start_timeout_exception()
                || err.is_subnet_ip_address_limit_reached_exception();
            TaskError { message: format!("invoking `{function}`: {code}: {msg}"), retryable: transient }
        }
        SdkError::ConstructionFailure(_) => TaskError::fatal(format!(
            "invoking `{function}`: {}",
            aws_smithy_types::error::display::DisplayErrorContext(&e)
        )),
        _ => TaskError {
            message: format!("invoking `{function}`: {}", aws_smithy_types::error::display::DisplayErrorContext(&e)),
            retryable: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_function_errors_read_as_lambda_writes_them() {
        assert_eq!(parse_answer(b"{\"a\":1}"), json!({ "a": 1 }));
        assert_eq!(parse_answer(b""), Value::Null);
        assert_eq!(parse_answer(b"plain"), json!("plain"));
        let e = function_error("f", "Unhandled", br#"{"errorType":"Refused","errorMessage":"no"}"#);
        assert_eq!(e.message, "function `f` failed: Refused: no");
        assert!(e.retryable);
        let e = function_error("f", "Unhandled", b"");
        assert_eq!(e.message, "function `f` failed: Unhandled: ");
    }
}
