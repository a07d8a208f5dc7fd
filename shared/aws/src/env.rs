//! What every function reads from its environment besides the AWS resources.

use std::path::Path;

use llmo_runtime::executor::Registry;
use llmo_runtime::fixtures::Fixtures;
use llmo_runtime::providers::Config;

/// Executors and provider config: `LLMO_CONFIG` (provider config file), `LLMO_MOCK=1` (every
/// model call answered by the `mock` provider, `http` by an echo) and `LLMO_FIXTURES` (a
/// `:`-separated list of fixtures files answering the calls they match; for local runs and
/// tests, never set it in AWS).
/// Provider keys and `http` secrets come from the Secrets Manager secret `LLMO_SECRETS_ARN`
/// (cached for `LLMO_SECRETS_TTL_SECS`, 300 by default) when it is set, workflows reading only
/// its `LLMO_SECRET_*` names; else from the environment. `http` tasks connect under
/// `LLMO_EGRESS_ALLOW` / `LLMO_EGRESS_ALLOW_HTTP` and `LLMO_HTTP_MAX_RESPONSE_BYTES` /
/// `LLMO_HTTP_MAX_REDIRECTS` (see `llmo_runtime::egress`, `llmo_runtime::http`). `function`
/// tasks invoke what `LLMO_ALLOWED_FUNCTIONS` lists ([`llmo_lambda::Settings`]), events over
/// 6 MB by claim check in the bucket. Tasks with a `callback` send task tokens keyed from the
/// answer-link secret ([`crate::api::link_secret`]), to be answered at `LLMO_PUBLIC_URL` (the
/// API's address: the template sets it); without the secret they fail, saying so.
pub async fn executors(aws: &crate::Aws) -> Result<(Registry, Config, bool), String> {
    let (mut registry, config, mock) = executors_without_callbacks(aws)?;
    if let Some(secret) = crate::api::link_secret(aws).await? {
        let public = std::env::var("LLMO_PUBLIC_URL").ok().filter(|v| !v.is_empty());
        llmo_runtime::callbacks::Callbacks::new(&secret, public).install(&mut registry);
    }
    Ok((registry, config, mock))
}

fn executors_without_callbacks(aws: &crate::Aws) -> Result<(Registry, Config, bool), String> {
    let config = match std::env::var_os("LLMO_CONFIG") {
        Some(p) => Config::load(Path::new(&p), true).map_err(|e| e.to_string())?,
        None => Config::builtin(),
    };
    let mock = std::env::var("LLMO_MOCK").is_ok_and(|v| v == "1" || v == "true");
    let mut fixtures = Fixtures::default();
    if let Ok(list) = std::env::var("LLMO_FIXTURES") {
        for p in list.split(':').filter(|p| !p.is_empty()) {
            fixtures = fixtures.then(&Fixtures::load(Path::new(p)).map_err(|e| e.to_string())?);
        }
    }
    use llmo_runtime::secrets::{EnvSecrets, Secrets, WorkflowSecrets};
    use std::sync::Arc;
    // Provider keys and workflow secrets share the secret; workflows see only its
    // `LLMO_SECRET_*` names, so no workflow can send a provider key anywhere.
    let (keys, secrets): (Arc<dyn Secrets>, Arc<dyn Secrets>) =
        match std::env::var("LLMO_SECRETS_ARN").ok().filter(|v| !v.is_empty()) {
            Some(arn) => {
                let ttl = std::env::var("LLMO_SECRETS_TTL_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
                let sm: Arc<dyn Secrets> = Arc::new(crate::secrets::SecretsManager::new(
                    aws.secretsmanager.clone(),
                    arn,
                    std::time::Duration::from_secs(ttl),
                ));
                (sm.clone(), Arc::new(WorkflowSecrets(sm)))
            }
            None => (Arc::new(EnvSecrets), Arc::new(WorkflowSecrets(Arc::new(EnvSecrets)))),
        };
    let setup = llmo_runtime::Setup {
        fixtures,
        keys,
        secrets,
        egress: llmo_runtime::egress::Egress::from_env()?,
        http: llmo_runtime::http::HttpLimits::from_env()?,
        // Rate limits and open circuits shared by every function of the deployment.
        flow: Arc::new(crate::flow::DynamoFlow::new(aws.clone())),
        // Bedrock with the function's role (the template grants the models it lists).
        bedrock: Some(llmo_bedrock::factory()),
        ..llmo_runtime::Setup::new(config.clone(), mock)
    };
    let mut registry = setup.registry();
    let functions = if mock {
        llmo_lambda::FunctionExecutor::mock()
    } else {
        llmo_lambda::FunctionExecutor::new(llmo_lambda::Settings::from_env()?)
            .with_claim_check(Arc::new(crate::blobs::S3Blobs { aws: aws.clone() }))
    };
    registry.register("function", Arc::new(functions));
    registry.register(llmo_core::child::WORKFLOW, Arc::new(children(aws, &config, mock)));
    Ok((registry, config, mock))
}

/// The `workflow` executor of the deployment: children of the tenant's registered workflows,
/// stored in its table and started on its step queue, within the deployment's run lifetime.
pub fn children(aws: &crate::Aws, config: &Config, mock: bool) -> llmo_runtime::children::Children {
    use std::sync::Arc;
    let store = Arc::new(crate::dynamo::DynamoStore::new(aws.clone()));
    llmo_runtime::children::Children::new(
        store.clone(),
        Arc::new(crate::sqs::SqsQueue::new(aws.clone())),
        store,
        Arc::new(llmo_runtime::start::Starter::new(config.clone(), mock).with_max_age(aws.lifetime.max_run_ms())),
    )
}

/// What every function sets up first: logs and traces ([`llmo_runtime::telemetry`]: JSON in
/// Lambda or with `LLMO_LOG_FORMAT=json`, OTLP export when `OTEL_EXPORTER_OTLP_ENDPOINT` is
/// set) and metrics: CloudWatch embedded metric format lines on stdout in Lambda (namespace
/// `LLMO_METRICS_NAMESPACE`, default `LLMOrchestrator`, flushed after each invocation: no API
/// call), a Prometheus registry locally (served on the local API's `/metrics`, and on
/// `LLMO_METRICS_ADDR` by the local SQS functions).
pub struct Observability {
    pub telemetry: llmo_runtime::telemetry::Telemetry,
    pub metrics: Metrics,
}

pub enum Metrics {
    Emf(&'static metrics_cloudwatch_embedded::Collector),
    Prometheus(metrics_exporter_prometheus::PrometheusHandle),
    Off,
}

impl Observability {
    /// Reads the environment once and installs the subscriber and the metrics recorder.
    pub fn init(function: &str) -> Result<Self, String> {
        let settings = llmo_runtime::telemetry::Settings::from_env(&format!("llmo-{function}"))?;
        let telemetry = llmo_runtime::telemetry::init(&settings)?;
        let metrics = if std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some() {
            let namespace = std::env::var("LLMO_METRICS_NAMESPACE").unwrap_or_else(|_| "LLMOrchestrator".into());
            match metrics_cloudwatch_embedded::Builder::new()
                .cloudwatch_namespace(namespace)
                .with_dimension("function", function.to_string())
                .init()
            {
                Ok(c) => {
                    llmo_runtime::meter::describe();
                    Metrics::Emf(c)
                }
                Err(e) => return Err(format!("metrics: {e}")),
            }
        } else {
            llmo_runtime::meter::prometheus().map_or(Metrics::Off, Metrics::Prometheus)
        };
        Ok(Observability { telemetry, metrics })
    }

    /// After each Lambda invocation: the metrics as one EMF line, the spans sent.
    pub async fn flush(&self) {
        if let Metrics::Emf(c) = &self.metrics
            && let Err(e) = c.flush(std::io::stdout())
        {
            tracing::warn!(error = %e, "could not write metrics");
        }
        self.telemetry.flush().await;
    }

    /// The Prometheus exposition of what this process recorded, when it keeps one.
    pub fn prometheus(&self) -> Option<String> {
        match &self.metrics {
            Metrics::Prometheus(h) => Some(h.render()),
            _ => None,
        }
    }
}

/// A function's `--help` (or `-h`): prints `usage` and exits, before any setting is read or any
/// client is built (so `--help` sends nothing anywhere). Each `main` calls it first.
pub fn help(usage: &str) {
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        println!("{usage}");
        std::process::exit(0);
    }
}
