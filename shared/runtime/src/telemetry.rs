//! Logs, traces and the trace context that joins one run's work across processes.
//!
//! Every binary calls [`init`] once from its `main` with what it read from its environment
//! ([`Settings`]). Logs are text or JSON lines (JSON carries the fields of every span a line is
//! in: `run_id`, `task`, `attempt`, ...). Traces are exported over OTLP/HTTP (protobuf) only
//! when an endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT`); otherwise no OpenTelemetry
//! layer is installed and spans cost what a `tracing` span costs.
//!
//! A run's trace crosses processes as a W3C `traceparent` string: [`traceparent`] reads the
//! current span's context (the queue adapters put it in a message attribute, the CLI in a
//! request header), [`adopt`] makes a span a child of one received. With no OpenTelemetry
//! layer, [`traceparent`] is `None` and [`adopt`] does nothing.
//!
//! Span names and attributes: `step` (one queue step of one run: `run_id`, `workflow`,
//! `messages`, `version`, `outcome`), `attempt` (`run_id`, `task`, `task_type`, `item`,
//! `attempt`, `outcome`), `chat {model}` (the OpenTelemetry GenAI conventions:
//! `gen_ai.operation.name`, `gen_ai.provider.name`, `gen_ai.request.model`,
//! `gen_ai.request.max_tokens`, `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`,
//! plus `llmo.cost_usd`), `http {method}` (`http.request.method`, `server.address`,
//! `http.response.status_code`), `run` (an embedded run), `api` (`http.route`, `tenant`).

use std::collections::HashMap;
use std::sync::OnceLock;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    /// One JSON object per line, with the fields of the line's spans (`spans`).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format `{other}`: use `text` or `json`")),
        }
    }
}

/// What [`init`] needs, read by each `main` from its environment or flags.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `service.name` of the exported spans (`llmo-step`, `llmo`, ...).
    pub service: String,
    pub format: LogFormat,
    /// Leave out timestamps (CloudWatch adds its own).
    pub without_time: bool,
    /// The log filter (`RUST_LOG` syntax); `info` when absent.
    pub filter: Option<String>,
    /// OTLP/HTTP base endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`, e.g. `http://localhost:4318`):
    /// spans go to `<endpoint>/v1/traces`. `None`: no export.
    pub otlp_endpoint: Option<String>,
}

impl Settings {
    /// The usual reading of the environment: `RUST_LOG`, `LLMO_LOG_FORMAT` (`text`/`json`;
    /// JSON without timestamps when in Lambda), `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn from_env(service: &str) -> Result<Self, String> {
        let in_lambda = std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some();
        let format = match std::env::var("LLMO_LOG_FORMAT") {
            Ok(v) if !v.is_empty() => v.parse()?,
            _ if in_lambda => LogFormat::Json,
            _ => LogFormat::Text,
        };
        Ok(Settings {
            service: service.to_string(),
            format,
            without_time: in_lambda,
            filter: std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty()),
            otlp_endpoint: std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|v| !v.is_empty()),
        })
    }
}

/// Keeps the span exporter of [`init`]; [`Telemetry::flush`] sends what is buffered (Lambda
/// calls it after each invocation: a frozen container sends nothing).
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the finished spans now (on a blocking thread: the exporter runs on tokio).
    pub async fn flush(&self) {
        if let Some(p) = self.provider.clone() {
            let r = tokio::task::spawn_blocking(move || p.force_flush()).await;
            if let Ok(Err(e)) = r {
                tracing::warn!(error = %e, "could not export spans");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            // Shutting down blocks on the exporter's task; never on a runtime thread.
            let _ = std::thread::spawn(move || p.shutdown()).join();
        }
    }
}

/// Which spans are exported, whatever the log filter says: `info` and above, but not the AWS
/// SDK's per-request internals (serialization, attempts; its operation spans stay).
pub const EXPORT_FILTER: &str = "info,aws_smithy_runtime=warn";

/// Installs the global subscriber: the log layer and, with an endpoint, the OTLP layer.
/// Must run inside a tokio runtime when exporting.
pub fn init(s: &Settings) -> Result<Telemetry, String> {
    let filter = || EnvFilter::try_new(s.filter.as_deref().unwrap_or("info")).map_err(|e| format!("RUST_LOG: {e}"));
    let logs = match (s.format, s.without_time) {
        (LogFormat::Json, true) => json_layer().without_time().boxed(),
        (LogFormat::Json, false) => json_layer().boxed(),
        (LogFormat::Text, true) => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).without_time().boxed(),
        (LogFormat::Text, false) => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
    };
    let registry = tracing_subscriber::registry().with(logs.with_filter(filter()?));
    let Some(endpoint) = &s.otlp_endpoint else {
        let _ = registry.try_init();
        return Ok(Telemetry::default());
    };
    let provider = otlp_provider(&s.service, endpoint)?;
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("llmo"));
    let _ = registry.with(layer.with_filter(EnvFilter::new(EXPORT_FILTER))).try_init();
    Ok(Telemetry { provider: Some(provider) })
}

fn json_layer<S>() -> tracing_subscriber::fmt::Layer<
    S,
    tracing_subscriber::fmt::format::JsonFields,
    tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json>,
    fn() -> std::io::Stderr,
>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(false)
        .with_span_list(true)
        .with_writer(std::io::stderr as fn() -> std::io::Stderr)
}

/// A tracer provider exporting over OTLP/HTTP to `<endpoint>/v1/traces`, in batches sent
/// from a tokio task.
pub fn otlp_provider(service: &str, endpoint: &str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| format!("OTLP client: {e}"))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(OtlpHttp(client))
        .with_endpoint(url)
        .build()
        .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
    let batch = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
        exporter,
        opentelemetry_sdk::runtime::Tokio,
    )
    .build();
    Ok(provider_with(service, batch))
}

/// A tracer provider sending spans to `processor`, for `service` (tests pass an in-memory
/// exporter's processor).
pub fn provider_with(
    service: &str,
    processor: impl opentelemetry_sdk::trace::SpanProcessor + 'static,
) -> SdkTracerProvider {
    let resource = opentelemetry_sdk::Resource::builder_empty().with_service_name(service.to_string()).build();
    SdkTracerProvider::builder().with_resource(resource).with_span_processor(processor).build()
}

/// The OTLP exporter's HTTP client: the runtime's reqwest (rustls), so no second TLS stack.
#[derive(Debug, Clone)]
struct OtlpHttp(reqwest::Client);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpHttp {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<opentelemetry_http::Response<opentelemetry_http::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let mut req = self.0.request(parts.method, parts.uri.to_string()).body(body.to_vec());
        for (k, v) in parts.headers.iter() {
            req = req.header(k, v);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        let mut out = opentelemetry_http::Response::builder().status(status.as_u16());
        out = out.header("content-type", "application/x-protobuf");
        Ok(out.body(opentelemetry_http::Bytes::from(body.to_vec()))?)
    }
}

fn propagator() -> &'static TraceContextPropagator {
    static P: OnceLock<TraceContextPropagator> = OnceLock::new();
    P.get_or_init(TraceContextPropagator::new)
}

/// The current span's trace context as a W3C `traceparent` value; `None` when nothing is
/// traced (no OpenTelemetry layer, or no current span).
pub fn traceparent() -> Option<String> {
    traceparent_of(&Span::current())
}

/// `span`'s trace context as a W3C `traceparent` value.
pub fn traceparent_of(span: &Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let mut carrier: HashMap<String, String> = HashMap::new();
    propagator().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the remote span `traceparent` names (ignored when malformed, or
/// when nothing is traced). Call before the span is first entered.
pub fn adopt(span: &Span, traceparent: Option<&str>) {
    let Some(tp) = traceparent else { return };
    if span.is_disabled() {
        return;
    }
    let carrier: HashMap<String, String> = HashMap::from([("traceparent".to_string(), tp.to_string())]);
    let cx = propagator().extract(&carrier);
    let _ = span.set_parent(cx);
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SimpleSpanProcessor};

    #[test]
    fn a_span_adopted_from_a_traceparent_continues_its_trace() {
        let exporter = InMemorySpanExporter::default();
        let provider = provider_with("test", SimpleSpanProcessor::new(exporter.clone()));
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("t")));
        tracing::subscriber::with_default(subscriber, || {
            let parent = tracing::info_span!("sender");
            let tp = parent.in_scope(traceparent).expect("a traced span has a context");
            assert_eq!(tp.len(), 55, "{tp}");
            assert!(tp.starts_with("00-"), "{tp}");
            drop(parent);
            let child = tracing::info_span!("receiver");
            adopt(&child, Some(&tp));
            drop(child);
        });
        let spans = exporter.get_finished_spans().unwrap();
        let sender = spans.iter().find(|s| s.name == "sender").unwrap();
        let receiver = spans.iter().find(|s| s.name == "receiver").unwrap();
        assert_eq!(receiver.span_context.trace_id(), sender.span_context.trace_id());
        assert_eq!(receiver.parent_span_id, sender.span_context.span_id());
    }

    #[test]
    fn without_an_opentelemetry_layer_nothing_is_propagated() {
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("x");
            assert_eq!(span.in_scope(traceparent), None);
            adopt(&span, Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        });
    }

    #[test]
    fn log_formats_parse() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert!("yaml".parse::<LogFormat>().unwrap_err().contains("`text` or `json`"));
    }
}
