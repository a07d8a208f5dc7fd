//! `api`: the HTTP API behind API Gateway (HTTP API, payload v2).
//! `api --local [--addr 127.0.0.1:8080]` serves the same handler over plain HTTP.
use std::sync::Arc;

use lambda_http::{Body, Request, Response, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    llmo_aws::env::help(
        "api: the HTTP API of LLM-Orchestrator behind API Gateway (Lambda).\n  api --local [--addr 127.0.0.1:8080]   serve the same handler over plain HTTP (LLMO_AUTH=hs256|jwks)",
    );
    let obs = Arc::new(llmo_aws::env::Observability::init("api")?);
    let aws = llmo_aws::Aws::from_env().await?;
    let (executors, config, mock) = llmo_aws::env::executors(&aws).await?;
    let args: Vec<String> = std::env::args().collect();
    let local = args.iter().any(|a| a == "--local");
    let auth = llmo_api::auth::Auth::from_env(!local).await?;
    if local && auth.is_api_gateway() {
        return Err("LLMO_AUTH=apigateway trusts API Gateway's authorizer, which --local does not have".into());
    }
    let metrics = match &obs.metrics {
        llmo_aws::env::Metrics::Prometheus(h) => Some(h.clone()),
        _ => None,
    };
    // Approvals' single-use answer links are signed with this secret (none: no links).
    let links = llmo_aws::api::link_secret(&aws).await?;
    let api = Arc::new(
        llmo_aws::api::build(&aws, executors, config, mock).with_auth(auth).with_metrics(metrics).with_links(links),
    );
    if local {
        let addr = args
            .iter()
            .position(|a| a == "--addr")
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let addr = addr.parse().map_err(|e| format!("--addr {addr}: {e}"))?;
        let gate = api.clone();
        let admit = move |parts| {
            let api = gate.clone();
            async move { api.admit(parts).await }
        };
        let limits = llmo_api::server::ServeLimits::allowing(&std::env::var("LLMO_ALLOWED_HOSTS").unwrap_or_default());
        let streamer = api.clone();
        let stream = move |req: llmo_api::Request| {
            let api = streamer.clone();
            async move { api.open_events(&req).await }
        };
        llmo_api::server::serve(
            addr,
            limits,
            admit,
            move |req| {
                let api = api.clone();
                async move { api.handle(req).await }
            },
            stream,
        )
        .await?;
        return Ok(());
    }
    lambda_http::run(service_fn(move |req: Request| {
        let (api, obs) = (api.clone(), obs.clone());
        async move {
            let reply = llmo_aws::api::response(api.handle(llmo_aws::api::request(req)).await);
            obs.flush().await;
            Ok::<Response<Body>, lambda_http::Error>(reply)
        }
    }))
    .await
}
