//! The counters and histograms the runtime records, through the `metrics` facade: each
//! binary installs a recorder (CloudWatch embedded metric format in Lambda, Prometheus for
//! the local API and `llmo run --metrics-addr`, none otherwise: then recording costs a
//! relaxed atomic load).
//!
//! Names (the same in Prometheus and CloudWatch):
//!
//! | name | kind | labels |
//! | --- | --- | --- |
//! | `llmo_runs_started_total` | counter | `workflow` |
//! | `llmo_runs_finished_total` | counter | `workflow`, `status` |
//! | `llmo_steps_total` | counter | `outcome` (`applied`, `replayed`, `failed`) |
//! | `llmo_step_seconds` | histogram | |
//! | `llmo_queue_wait_seconds` | histogram | (message age when received) |
//! | `llmo_attempts_total` | counter | `task_type`, `outcome` (`succeeded`, `failed`, `retryable`) |
//! | `llmo_retries_total` | counter | `workflow` |
//! | `llmo_model_calls_total` | counter | `provider`, `model`, `outcome` (`ok`, `error`) |
//! | `llmo_model_call_seconds` | histogram | `provider`, `model` |
//! | `llmo_tokens_total` | counter | `workflow`, `model`, `direction` (`input`, `output`) |
//! | `llmo_cost_microusd_total` | counter (millionths of a US dollar) | `workflow`, `model` |
//! | `llmo_budget_stops_total` | counter | `workflow` |
//! | `llmo_cas_lost_total` | counter | |
//! | `llmo_dead_letters_total` | counter | `kind` (`attempt`, `run`, `unreadable`) |
//! | `llmo_http_calls_total` | counter | `method`, `status` |
//! | `llmo_api_requests_total` | counter | `route`, `status` |
//! | `llmo_api_request_seconds` | histogram | `route` |
//! | `llmo_aws_call_seconds` | histogram | `service` (`dynamodb`, `sqs`, `s3`, `scheduler`) |
//! | `llmo_expensive_reads_total` | counter | |
//! | `llmo_forged_messages_total` | counter | |
//! | `llmo_snapshots_total` | counter | |

use llmo_core::engine::{Command, RunState, RunStatus};

/// Describes every metric (units and help text) to the installed recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!("llmo_runs_started_total", "Runs started");
    describe_counter!("llmo_runs_finished_total", "Runs ended, by final status");
    describe_counter!("llmo_steps_total", "Steps (queue messages of one run handled together, or driver turns)");
    describe_histogram!("llmo_step_seconds", Unit::Seconds, "Time to handle one step");
    describe_histogram!("llmo_api_request_seconds", Unit::Seconds, "Time the API takes to answer a request");
    describe_histogram!(
        "llmo_aws_call_seconds",
        Unit::Seconds,
        "Time from sending an AWS request to its response (the serverless runtime's store, queue, blobs)"
    );
    describe_histogram!("llmo_queue_wait_seconds", Unit::Seconds, "Age of a message when it is received");
    describe_counter!("llmo_attempts_total", "Task attempts finished, by outcome");
    describe_counter!("llmo_retries_total", "Retries scheduled");
    describe_counter!("llmo_model_calls_total", "Model calls (each HTTP call to a provider)");
    describe_histogram!("llmo_model_call_seconds", Unit::Seconds, "Duration of a model call");
    describe_counter!("llmo_tokens_total", "Model tokens, input and output");
    describe_counter!("llmo_cost_microusd_total", "Model cost in millionths of a US dollar");
    describe_counter!("llmo_budget_stops_total", "Runs stopped by their budget");
    describe_counter!("llmo_cas_lost_total", "Compare-and-set writes lost to another writer");
    describe_counter!("llmo_events_deposited_total", "Events handed to a run's fold group");
    describe_counter!("llmo_attempts_deferred_total", "Attempts delayed for want of fleet-wide capacity");
    describe_counter!("llmo_dead_letters_total", "Messages handled by the dead-letter handler");
    describe_counter!("llmo_http_calls_total", "HTTP calls of `http` tasks");
    describe_counter!("llmo_api_requests_total", "API requests answered, by route and status");
    describe_counter!("llmo_forged_messages_total", "Queue messages dropped: not signed by this deployment");
    describe_counter!("llmo_expensive_reads_total", "Reads of a run that replayed past their slice");
    describe_counter!("llmo_snapshots_total", "Snapshots written after a dear replay or stretch of transitions");
}

/// Distinct values one label takes in a process before the rest are reported as `other`:
/// workflow names come from users (every inline workflow may be named anew), and a series
/// per value would grow without bound.
pub const LABEL_VALUES: usize = 200;

/// A label's values seen so far, up to [`LABEL_VALUES`].
struct Bounded(std::sync::Mutex<std::collections::HashSet<String>>);

impl Bounded {
    fn label(&self, value: &str) -> String {
        let mut seen = self.0.lock().expect("label values");
        if seen.contains(value) {
            return value.to_string();
        }
        if seen.len() < LABEL_VALUES {
            seen.insert(value.to_string());
            return value.to_string();
        }
        "other".to_string()
    }
}

static WORKFLOWS: std::sync::LazyLock<Bounded> = std::sync::LazyLock::new(|| Bounded(Default::default()));
static MODELS: std::sync::LazyLock<Bounded> = std::sync::LazyLock::new(|| Bounded(Default::default()));

/// The `workflow` label of `name`: itself, or `other` past [`LABEL_VALUES`] names.
pub fn workflow_label(name: &str) -> String {
    WORKFLOWS.label(name)
}

/// The `model` label of a call: the model when it has a price (the table is the operator's,
/// so its names are bounded) and fewer than [`LABEL_VALUES`] were seen, else `other` (a
/// templated model name is whatever a workflow's inputs say).
pub fn model_label(model: &str, priced: bool) -> String {
    if priced { MODELS.label(model) } else { "other".to_string() }
}

/// What one stored transition batch of a run changed: runs started and ended, retries, budget
/// stops. Called by the worker and the driver after a successful append.
pub fn applied(workflow: &str, before: RunStatus, after: &RunState, cmds: &[Command]) {
    let wf = workflow_label(workflow);
    if before == RunStatus::Pending && after.status != RunStatus::Pending {
        metrics::counter!("llmo_runs_started_total", "workflow" => wf.clone()).increment(1);
    }
    if !before.is_terminal() && after.status.is_terminal() {
        metrics::counter!("llmo_runs_finished_total", "workflow" => wf.clone(), "status" => after.status.as_str())
            .increment(1);
        if after.status == RunStatus::Failed && after.error.as_deref().is_some_and(|e| e.contains("budget")) {
            metrics::counter!("llmo_budget_stops_total", "workflow" => wf.clone()).increment(1);
        }
    }
    let retries = cmds.iter().filter(|c| matches!(c, Command::ScheduleRetry { .. })).count();
    if retries > 0 {
        metrics::counter!("llmo_retries_total", "workflow" => wf).increment(retries as u64);
    }
}

/// An attempt's result came back.
pub fn attempt(task_type: &str, result: &llmo_core::engine::AttemptResult) {
    use llmo_core::engine::AttemptResult;
    let outcome = match result {
        AttemptResult::Succeeded { .. } => "succeeded",
        AttemptResult::Failed { retryable: true, .. } => "retryable",
        AttemptResult::Failed { .. } => "failed",
    };
    metrics::counter!("llmo_attempts_total", "task_type" => task_type.to_string(), "outcome" => outcome).increment(1);
}

/// A step ended (`outcome`: `applied`, `replayed`, `failed`) after `seconds`.
pub fn step(outcome: &'static str, seconds: f64) {
    metrics::counter!("llmo_steps_total", "outcome" => outcome).increment(1);
    metrics::histogram!("llmo_step_seconds").record(seconds);
}

/// A model call ended. `model` is its label ([`model_label`]).
#[allow(clippy::too_many_arguments)]
pub fn model_call(
    workflow: &str,
    provider: &str,
    model: &str,
    ok: bool,
    seconds: f64,
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: f64,
) {
    let (p, m) = (provider.to_string(), model.to_string());
    metrics::counter!("llmo_model_calls_total", "provider" => p.clone(), "model" => m.clone(), "outcome" => if ok { "ok" } else { "error" })
        .increment(1);
    metrics::histogram!("llmo_model_call_seconds", "provider" => p, "model" => m.clone()).record(seconds);
    if !ok {
        return;
    }
    let wf = workflow_label(workflow);
    metrics::counter!("llmo_tokens_total", "workflow" => wf.clone(), "model" => m.clone(), "direction" => "input")
        .increment(input_tokens);
    metrics::counter!("llmo_tokens_total", "workflow" => wf.clone(), "model" => m.clone(), "direction" => "output")
        .increment(output_tokens);
    metrics::counter!("llmo_cost_microusd_total", "workflow" => wf, "model" => m)
        .increment((cost_usd * 1e6).round().max(0.0) as u64);
}

/// A read of a run that replayed past its slice (and needed one of its tenant's places).
pub fn expensive_read() {
    metrics::counter!("llmo_expensive_reads_total").increment(1);
}

/// A snapshot written because the transitions since the last one were dear to replay.
pub fn dear_snapshot() {
    metrics::counter!("llmo_snapshots_total").increment(1);
}

/// A queue message dropped because this deployment did not sign it.
pub fn forged_message() {
    metrics::counter!("llmo_forged_messages_total").increment(1);
}

/// Compare-and-set writes lost.
pub fn cas_lost(n: u64) {
    metrics::counter!("llmo_cas_lost_total").increment(n);
}

/// Attempts sent back to the queue for want of shared capacity (fleet-wide rate limits).
pub fn deferred(n: usize) {
    metrics::counter!("llmo_attempts_deferred_total").increment(n as u64);
}

/// Attempts of packed messages delivered again, sent back one per message.
pub fn unpacked(n: usize) {
    metrics::counter!("llmo_attempts_unpacked_total").increment(n as u64);
}

/// Events a step handed to its run's fold group instead of appending them itself.
pub fn deposited(n: usize) {
    metrics::counter!("llmo_events_deposited_total").increment(n as u64);
}

/// How old a message was when it was received.
pub fn queue_wait(seconds: f64) {
    metrics::histogram!("llmo_queue_wait_seconds").record(seconds);
}

/// The dead-letter handler took a message (`kind`: `attempt`, `run`, `unreadable`).
pub fn dead_letter(kind: &'static str) {
    metrics::counter!("llmo_dead_letters_total", "kind" => kind).increment(1);
}

/// An `http` task's call answered with `status` (0: no answer).
pub fn http_call(method: &str, status: u16) {
    metrics::counter!("llmo_http_calls_total", "method" => method.to_string(), "status" => status.to_string())
        .increment(1);
}

/// The API answered a request.
pub fn api_request(route: &'static str, status: u16, seconds: f64) {
    metrics::counter!("llmo_api_requests_total", "route" => route, "status" => status.to_string()).increment(1);
    metrics::histogram!("llmo_api_request_seconds", "route" => route).record(seconds);
}

/// A Prometheus recorder installed as the global one, or the handle of the one already
/// installed by an earlier call; `None` if another kind of recorder is installed.
pub fn prometheus() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    use std::sync::OnceLock;
    static HANDLE: OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(&[0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0])
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prometheus_exposition_names_what_was_recorded() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            model_call("article", "openai", "gpt-4o-mini", true, 0.2, 100, 20, 0.0015);
            model_call("article", "openai", "gpt-4o-mini", true, 0.2, 100, 20, 0.0015);
            step("applied", 0.01);
            cas_lost(2);
        });
        let text = handle.render();
        assert!(
            text.contains(r#"llmo_tokens_total{workflow="article",model="gpt-4o-mini",direction="input"} 200"#),
            "{text}"
        );
        assert!(text.contains("llmo_cas_lost_total 2"), "{text}");
        assert!(
            text.contains("# TYPE llmo_step_seconds summary") || text.contains("# TYPE llmo_step_seconds histogram")
        );
        assert!(text.contains(r#"llmo_cost_microusd_total{workflow="article",model="gpt-4o-mini"} 3000"#), "{text}");
    }

    /// Label values are bounded: 2,000 workflow names make 200 series and `other`; a model
    /// without a price (a templated name, anything an input says) is `other`.
    #[test]
    fn label_values_are_bounded() {
        let names = Bounded(Default::default());
        let labels: std::collections::HashSet<String> = (0..2000).map(|i| names.label(&format!("wf-{i}"))).collect();
        assert_eq!(labels.len(), LABEL_VALUES + 1);
        assert!(labels.contains("other"));
        assert_eq!(names.label("wf-7"), "wf-7", "a name seen before keeps its series");
        assert_eq!(model_label("any-model-an-input-names", false), "other");
        assert_eq!(model_label("gpt-4o-mini", true), "gpt-4o-mini");
    }
}
