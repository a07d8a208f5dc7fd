//! The runtime of LLM-Orchestrator: the ports the engine needs (run store, blobs, clock,
//! executors), their embedded adapters (in-memory, SQLite, files), the executors of the
//! built-in task types with the model providers, and the embedded driver.
pub mod audit;
pub mod callbacks;
pub mod children;
pub mod costs;
pub mod driver;
pub mod egress;
pub mod embed;
pub mod executor;
pub mod fixtures;
pub mod flow;
pub mod http;
pub mod meter;
pub mod ports;
pub mod providers;
pub mod queue;
pub mod reads;
pub mod secrets;
#[cfg(feature = "sqlite")]
pub mod sqlite_queue;
pub mod start;
pub mod step;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod ui;
pub mod view;
pub mod waits;
pub mod worker;
pub mod workflows;

use std::sync::Arc;

/// What the executors of the built-in task types are built from: [`Setup::registry`].
pub struct Setup {
    pub config: providers::Config,
    /// Every model call the fixtures do not answer goes to the mock provider, every `http`
    /// request to an echo: nothing leaves the machine.
    pub mock: bool,
    /// Scripted answers ([`fixtures`]); what they do not answer goes to the providers and the
    /// network unless `mock`.
    pub fixtures: fixtures::Fixtures,
    /// Provider keys the config does not hold.
    pub keys: Arc<dyn secrets::Secrets>,
    /// Where `secrets.NAME` of `http` headers is read (as `LLMO_SECRET_NAME`).
    pub secrets: Arc<dyn secrets::Secrets>,
    /// Where `http` tasks may connect.
    pub egress: egress::Egress,
    pub http: http::HttpLimits,
    /// Rate limits and circuits shared with other workers (in-process by default).
    pub flow: Arc<dyn flow::Flow>,
    /// Makes the `bedrock` providers (`llmo_bedrock::factory()`); without it they are refused.
    pub bedrock: Option<providers::ProviderFactory>,
}

impl Setup {
    /// Keys and secrets from the environment (secrets only under `LLMO_SECRET_`), the strict
    /// egress policy and the default limits.
    pub fn new(config: providers::Config, mock: bool) -> Self {
        Setup {
            config,
            mock,
            fixtures: fixtures::Fixtures::default(),
            keys: Arc::new(secrets::EnvSecrets),
            secrets: Arc::new(secrets::WorkflowSecrets(Arc::new(secrets::EnvSecrets))),
            egress: egress::Egress::strict(),
            http: http::HttpLimits::default(),
            flow: Arc::new(flow::Local::default()),
            bedrock: None,
        }
    }

    /// `llm` over the configured providers, `http`, `transform`, `evaluate` (with the model
    /// judge) and `policy`.
    pub fn registry(self) -> executor::Registry {
        let script = fixtures::Script::new(self.fixtures);
        let mut llm = providers::LlmExecutor::build(self.config, self.mock, self.keys, &self.egress)
            .with_flow(self.flow.clone())
            .with_script(script.clone());
        if let Some(make) = &self.bedrock {
            llm = llm.with_bedrock(make);
        }
        let llm = Arc::new(llm);
        let mut r = executor::Registry::with_builtins(Some(llm.clone()));
        r.register(llmo_core::agent::AGENT, Arc::new(providers::AgentExecutor(llm.clone())));
        r.register("llm", llm);
        let real: Option<Arc<dyn executor::Executor>> = (!self.mock).then(|| {
            Arc::new(http::HttpExecutor::new(self.egress, self.secrets.clone(), self.http).with_flow(self.flow.clone()))
                as Arc<dyn executor::Executor>
        });
        match real {
            Some(real) if script.fixtures.http.is_empty() => r.register("http", real),
            unmatched => r.register("http", Arc::new(fixtures::MockHttp { script, secrets: self.secrets, unmatched })),
        };
        r
    }
}

/// [`Setup::registry`] with the defaults of [`Setup::new`] and `fixtures`.
pub fn standard_registry(config: providers::Config, mock: bool, fixtures: fixtures::Fixtures) -> executor::Registry {
    Setup { fixtures, ..Setup::new(config, mock) }.registry()
}
