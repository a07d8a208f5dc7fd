//! One run is one trace across functions (issue 13): the API's span, every step of the run
//! (separate SQS messages handled by two workers), each attempt and each model call share one
//! trace id, and each step's parent is the span that sent its message (W3C trace context in the
//! SQS message attribute `traceparent`). Spans are captured with the OpenTelemetry SDK's
//! in-memory exporter. Its own test binary: it installs the global subscriber.

mod support;

use std::collections::HashMap;

use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry::{KeyValue, Value as OtelValue};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SimpleSpanProcessor, SpanData};
use serde_json::json;
use support::*;
use tracing_subscriber::layer::SubscriberExt;

const CHAIN: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: traced-chain }
spec:
  inputs:
    topic: { type: string, default: tracing }
  tasks:
    - id: ask
      type: llm
      with: { provider: openai, model: gpt-4o-mini, prompt: "Say something about {{ inputs.topic }}" }
    - id: shout
      type: transform
      depends_on: [ask]
      with: { output: "{{ tasks.ask.output.text | upper }}" }
    - id: review
      type: llm
      depends_on: [shout]
      with: { provider: openai, model: gpt-4o-mini, prompt: "Review: {{ tasks.shout.output }}", max_tokens: 64 }
  outputs:
    review: "{{ tasks.review.output.text }}"
"#;

fn attr<'a>(s: &'a SpanData, key: &str) -> Option<&'a OtelValue> {
    s.attributes.iter().find(|kv: &&KeyValue| kv.key.as_str() == key).map(|kv| &kv.value)
}

fn attr_str(s: &SpanData, key: &str) -> String {
    attr(s, key).map(|v| v.as_str().to_string()).unwrap_or_default()
}

fn attr_i64(s: &SpanData, key: &str) -> Option<i64> {
    match attr(s, key)? {
        OtelValue::I64(v) => Some(*v),
        OtelValue::F64(v) => Some(*v as i64),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_is_one_trace_from_the_api_through_every_step() {
    let Some(aws) = aws().await else { return };
    let exporter = InMemorySpanExporter::default();
    let provider = llmo_runtime::telemetry::provider_with("llmo-test", SimpleSpanProcessor::new(exporter.clone()));
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("t")));
    tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber of this test binary");

    let aws = stack(&aws, 30, 5).await;
    let api = api(&aws);
    // Steps in place off: every step of the chain is its own SQS message, so the trace must
    // cross the queue (and the two workers) at every hop.
    let workers = Workers::start(&aws, 2, 10, |mut s| {
        s.continue_ms = 0;
        s
    });
    let (code, v) = call(&api, "POST", "/runs", Some(json!({"source": CHAIN}))).await;
    assert_eq!(code, 201, "{v}");
    let run_id = v["run_id"].as_str().unwrap().to_string();
    let got = wait_end(&api, &run_id, 60).await;
    workers.stop().await;
    assert_eq!(got["status"], "succeeded", "{got}");
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    let start = spans
        .iter()
        .find(|s| s.name == "POST /runs" && attr_str(s, "http.route") == "POST /runs")
        .unwrap_or_else(|| {
            panic!(
                "the API's span of POST /runs among {:?}",
                spans
                    .iter()
                    .filter(|s| !s.name.contains('.') && !s.name.contains('_'))
                    .map(|s| (s.name.to_string(), attr_str(s, "http.route")))
                    .collect::<Vec<_>>()
            )
        });
    let trace = start.span_context.trace_id();
    let mine: Vec<&SpanData> = spans.iter().filter(|s| s.span_context.trace_id() == trace).collect();
    let by_id: HashMap<SpanId, &SpanData> = mine.iter().map(|s| (s.span_context.span_id(), *s)).collect();

    let steps: Vec<&SpanData> =
        mine.iter().copied().filter(|s| s.name == "step" && attr_str(s, "run_id") == run_id).collect();
    // Start, then each attempt's result (3) at least: four steps, each a separate message.
    assert!(
        steps.len() >= 4,
        "{} steps in the run's trace: {:?}",
        steps.len(),
        mine.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    for s in &steps {
        assert_eq!(attr_str(s, "workflow"), "traced-chain");
        let parent = by_id
            .get(&s.parent_span_id)
            .unwrap_or_else(|| panic!("step {:?} has no parent in the trace", s.span_context.span_id()));
        // A step's parent is the span that sent its message: the API (Start) or a step.
        assert!(
            parent.name == "step" || parent.span_context.span_id() == start.span_context.span_id(),
            "parent {}",
            parent.name
        );
        // Every step leads back to the API's span.
        let mut at = *s;
        let mut hops = 0;
        while at.span_context.span_id() != start.span_context.span_id() {
            at = by_id.get(&at.parent_span_id).expect("an unbroken chain to the API's span");
            hops += 1;
            assert!(hops < 100);
        }
    }
    let step_to_step = steps.iter().filter(|s| by_id.get(&s.parent_span_id).is_some_and(|p| p.name == "step")).count();
    assert!(step_to_step >= 3, "steps started by steps through SQS: {step_to_step}");

    let attempts: Vec<&SpanData> = mine.iter().copied().filter(|s| s.name.starts_with("attempt ")).collect();
    let names: Vec<&str> = attempts.iter().map(|s| s.name.as_ref()).collect();
    for t in ["attempt ask", "attempt shout", "attempt review"] {
        assert!(names.contains(&t), "{t} in {names:?}");
    }
    for a in &attempts {
        assert_eq!(by_id[&a.parent_span_id].name, "step", "an attempt runs in a step");
        assert_eq!(attr_str(a, "outcome"), "succeeded");
        assert_eq!(attr_str(a, "run_id"), run_id);
    }

    let chats: Vec<&SpanData> = mine.iter().copied().filter(|s| s.name == "chat gpt-4o-mini").collect();
    assert_eq!(chats.len(), 2, "one model call per llm task");
    for c in &chats {
        assert!(by_id[&c.parent_span_id].name.starts_with("attempt "), "a model call is a child of its attempt");
        assert_eq!(attr_str(c, "gen_ai.operation.name"), "chat");
        assert_eq!(attr_str(c, "gen_ai.request.model"), "gpt-4o-mini");
        assert_eq!(attr_str(c, "gen_ai.provider.name"), "mock");
        assert!(attr_i64(c, "gen_ai.usage.input_tokens").is_some_and(|t| t > 0), "input tokens on {:?}", c.attributes);
        assert!(attr_i64(c, "gen_ai.usage.output_tokens").is_some_and(|t| t > 0));
        assert!(attr(c, "llmo.cost_usd").is_some());
    }
    let review = chats.iter().find(|c| by_id[&c.parent_span_id].name == "attempt review").unwrap();
    assert_eq!(attr_i64(review, "gen_ai.request.max_tokens"), Some(64));
}
