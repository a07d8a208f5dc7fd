//! The API on AWS: [`build`] puts `llmo_api::Api` on DynamoDB, SQS and S3, and [`request`] /
//! [`response`] convert between API Gateway's events (`lambda_http`) and the API's `http`
//! types, carrying the JWT authorizer's verified claims over.

use std::sync::Arc;

use llmo_api::Api;
use llmo_api::auth::AuthorizerClaims;
use llmo_api::sweep::Sweeper;
use llmo_runtime::executor::Registry;
use llmo_runtime::ports::SystemClock;
use llmo_runtime::providers::Config;
use llmo_runtime::queue::Queue;
use llmo_runtime::start::Starter;
use llmo_runtime::worker::Worker;

use crate::Aws;
use crate::audit::Audit;
use crate::dynamo::DynamoStore;
use crate::sqs::SqsQueue;

pub use llmo_api::api::{BODY_BYTES, LINK_BODY_BYTES, OPENAPI, Route};

/// The API on the deployment's table, queues and bucket; no authentication until
/// [`Api::with_auth`].
pub fn build(aws: &Aws, executors: Registry, config: Config, mock: bool) -> Api {
    let store = Arc::new(DynamoStore::new(aws.clone()));
    let queue = Arc::new(SqsQueue::new(aws.clone()));
    let mut worker =
        Worker::from_stored(store.clone(), queue.clone(), Arc::new(executors), Arc::new(SystemClock::default()));
    // A cancel or an answer that loses the run's log to a busy worker goes to the fold
    // queue, as a step's events do, instead of racing it (up to `CasRetry::max_lost` lost
    // writes, then a 500).
    worker.fold = SqsQueue::folds(aws.clone()).map(|f| Arc::new(f) as Arc<dyn Queue>);
    // Concurrency keys a cancel releases, and the tenants' places for expensive reads, are
    // the fleet's (the step function's), not this process's.
    let flow: Arc<dyn llmo_runtime::flow::Flow> = Arc::new(crate::flow::DynamoFlow::new(aws.clone()));
    worker.flow = flow.clone();
    Api {
        reads: llmo_runtime::reads::Reads::new(flow),
        workflows: store.clone(),
        index: store.clone(),
        store: store.clone(),
        queue: queue.clone() as Arc<dyn Queue>,
        worker,
        starter: Starter::new(config, mock).with_max_age(aws.lifetime.max_run_ms()),
        audit: Arc::new(Audit::new(aws)),
        sweeper: sweeper(aws, 300_000),
        auth: None,
        metrics: None,
        links: None,
        triggers: Default::default(),
        streams: Default::default(),
    }
}

/// The sweeper over the deployment's live-run index and step queue.
pub fn sweeper(aws: &Aws, grace_ms: u64) -> Sweeper {
    Sweeper::new(Arc::new(DynamoStore::new(aws.clone())), Arc::new(SqsQueue::new(aws.clone())), grace_ms)
}

/// API Gateway's request as the API's: the body, and the claims its JWT authorizer verified
/// (an [`AuthorizerClaims`] extension).
pub fn request(req: lambda_http::Request) -> llmo_api::Request {
    use lambda_http::RequestExt;
    use lambda_http::request::RequestContext;
    let claims = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => ctx
            .authorizer
            .as_ref()
            .and_then(|a| a.jwt.as_ref())
            .map(|jwt| AuthorizerClaims(jwt.claims.iter().map(|(k, v)| (k.clone(), v.clone())).collect())),
        _ => None,
    };
    let (parts, body) = req.into_parts();
    let body = match body {
        lambda_http::Body::Empty => llmo_api::Body::Empty,
        lambda_http::Body::Text(t) => llmo_api::Body::Text(t),
        lambda_http::Body::Binary(b) => llmo_api::Body::Binary(b),
        // `Body` is non-exhaustive; anything else carries its bytes.
        #[allow(unreachable_patterns)]
        b => llmo_api::Body::Binary(b.to_vec()),
    };
    let mut req = http::Request::from_parts(parts, body);
    if let Some(c) = claims {
        req.extensions_mut().insert(c);
    }
    req
}

/// The API's reply as API Gateway's.
pub fn response(resp: llmo_api::Response) -> lambda_http::Response<lambda_http::Body> {
    let (parts, body) = resp.into_parts();
    let body = match body {
        llmo_api::Body::Empty => lambda_http::Body::Empty,
        llmo_api::Body::Text(t) => lambda_http::Body::Text(t),
        llmo_api::Body::Binary(b) => lambda_http::Body::Binary(b),
    };
    lambda_http::Response::from_parts(parts, body)
}

/// The secret answer links are signed with: `LLMO_LINK_SECRET` (local), else the Secrets
/// Manager secret `LLMO_LINK_SECRET_ARN` names (deployed); none: no links. For the API's main.
pub async fn link_secret(aws: &crate::Aws) -> Result<Option<Vec<u8>>, String> {
    let secret =
        match (std::env::var("LLMO_LINK_SECRET").ok().filter(|s| !s.is_empty()), std::env::var("LLMO_LINK_SECRET_ARN"))
        {
            (Some(s), _) => s.into_bytes(),
            (None, Ok(arn)) if !arn.is_empty() => {
                let out = aws.secretsmanager.get_secret_value().secret_id(&arn).send().await.map_err(|e| {
                    format!("reading the answer-link secret: {}", aws_sdk_secretsmanager::error::DisplayErrorContext(e))
                })?;
                out.secret_string().unwrap_or_default().as_bytes().to_vec()
            }
            _ => return Ok(None),
        };
    if secret.len() < 32 {
        return Err("the answer-link secret (LLMO_LINK_SECRET) must be at least 32 bytes".into());
    }
    Ok(Some(secret))
}
