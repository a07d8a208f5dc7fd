//! The runtime of LLM-Orchestrator: the ports the engine needs (run store, blobs, clock,
//! executors), their embedded adapters (in-memory, SQLite, files), the executors of the
//! built-in task types with the model providers, and the embedded driver.
pub mod driver;
pub mod executor;
pub mod http;
pub mod ports;
pub mod providers;
pub mod queue;
pub mod secrets;
pub mod start;
pub mod store;
pub mod worker;

use std::sync::Arc;

/// The executors of the built-in task types: `llm` over the configured providers (every call
/// answered by `mock` when `mock` is set), `http` (answered from `fixtures` when `mock` is
/// set), `transform`, `evaluate` (with the model judge) and `policy`.
pub fn standard_registry(config: providers::Config, mock: bool, fixtures: http::Fixtures) -> executor::Registry {
    standard_registry_with(config, mock, fixtures, Arc::new(secrets::EnvSecrets), Arc::new(secrets::EnvSecrets))
}

/// [`standard_registry`] with provider keys (for providers whose key the config does not
/// hold) read from `keys`, and the `secrets.NAME` of `http` headers from `secrets`.
pub fn standard_registry_with(
    config: providers::Config,
    mock: bool,
    fixtures: http::Fixtures,
    keys: Arc<dyn secrets::Secrets>,
    secrets: Arc<dyn secrets::Secrets>,
) -> executor::Registry {
    let llm = Arc::new(providers::LlmExecutor::with_secrets(config, mock, keys));
    let mut r = executor::Registry::with_builtins(Some(llm.clone()));
    r.register("llm", llm);
    if mock {
        r.register("http", Arc::new(http::MockHttp { fixtures, secrets }));
    } else {
        r.register("http", Arc::new(http::HttpExecutor::with_secrets(secrets)));
    }
    r
}

/// [`providers::estimate`] of every `llm` task of a plan (zero for other tasks), for
/// [`llmo_core::engine::Plan::set_estimates`].
pub fn estimates(
    config: &providers::Config,
    mock: bool,
    plan: &llmo_core::engine::Plan,
) -> Vec<llmo_core::engine::Estimate> {
    plan.checked
        .workflow
        .spec
        .tasks
        .iter()
        .map(|t| if t.ty == "llm" { providers::estimate(config, mock, &t.with) } else { Default::default() })
        .collect()
}
