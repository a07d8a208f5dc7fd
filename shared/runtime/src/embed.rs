//! The embedding API: LLM-Orchestrator's engine inside your own Rust program, with task types
//! of your own. The guide is `docs/embedding.md`; the example crate is `examples/custom-task`.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use llmo_runtime::embed::Engine;
//! # async fn demo(my_executor: Arc<dyn llmo_runtime::executor::Executor>) -> Result<(), llmo_runtime::embed::EmbedError> {
//! use llmo_core::tasks::TaskType;
//! // The `with` block's schema: derived (`TaskType::of::<MyWith>`, schemars) or written.
//! let with = serde_json::json!({
//!     "type": "object", "required": ["text"], "additionalProperties": false,
//!     "properties": { "text": { "type": "string" } }
//! });
//! let engine = Engine::builder()
//!     .standard(llmo_runtime::Setup::new(llmo_runtime::providers::Config::builtin(), true))
//!     .task_type(TaskType::with_schema("sentiment", "Score a text's sentiment.", with), my_executor)
//!     .build();
//! let run = engine.run("flow.yaml", "...workflow text...", Default::default()).await?;
//! println!("{:?}", run.state.outputs);
//! # Ok(()) }
//! ```
//!
//! What it promises (kept from version to version of this crate's 0.x line, and checked by the
//! example crate's test): a task type is its name, its description and the JSON Schema of its
//! `with` block ([`TaskType`]), checked by validation and included in [`Engine::schema`] (the
//! editor schema) like a built-in's; its executor sees the `with` block rendered
//! ([`crate::executor::Attempt::with`]) and answers an [`AttemptResult`]; runs are kept in the
//! store given ([`EngineBuilder::store`]: memory by default, SQLite for runs that outlive the
//! process) and resume where they stopped ([`Engine::resume`]): an attempt that recorded its
//! result never runs again.

use std::sync::Arc;

use llmo_core::engine::{Plan, RunState};
use llmo_core::inputs::InputError;
use llmo_core::source::SourceFile;
use llmo_core::tasks::TaskType;
use llmo_core::validate::{Outcome, Validator};
use serde_json::{Map, Value};

use crate::driver::{Driver, Finished, Options};
use crate::executor::{Executor, Registry};
use crate::ports::{Clock, SystemClock};
use crate::start::{StartError, StartRequest, Starter};
use crate::step::hooks::Observer;
use crate::store::{MemoryStore, RunStore, RunSummary};

/// What embedding can fail with.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The workflow does not validate: every diagnostic (render them with
    /// [`llmo_core::diagnostic`] or read `report.diagnostics`).
    #[error("the workflow does not validate ({} problems)", .0.report.diagnostics.len())]
    Invalid(Box<Outcome>),
    #[error("inputs do not match the workflow: {}", .0.iter().map(|e| format!("`{}`{}: {}", e.input, e.path, e.message)).collect::<Vec<_>>().join("; "))]
    Inputs(Vec<InputError>),
    #[error("no run `{0}` in this store")]
    NoSuchRun(String),
    #[error(transparent)]
    Driver(#[from] crate::driver::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error("{0}")]
    Start(String),
}

impl From<StartError> for EmbedError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::Invalid(o) => EmbedError::Invalid(o),
            StartError::Inputs(i) => EmbedError::Inputs(i),
            StartError::Store(s) => EmbedError::Store(s),
            other => EmbedError::Start(other.to_string()),
        }
    }
}

/// Builds an [`Engine`].
pub struct EngineBuilder {
    task_types: llmo_core::tasks::Registry,
    executors: Registry,
    store: Option<Arc<dyn RunStore>>,
    options: Options,
    clock: Arc<dyn Clock>,
    config: crate::providers::Config,
    mock: bool,
}

/// The engine: validation with your task types, runs, resumes and reads.
pub struct Engine {
    validator: Arc<Validator>,
    executors: Arc<Registry>,
    store: Arc<dyn RunStore>,
    options: Options,
    clock: Arc<dyn Clock>,
    config: crate::providers::Config,
    mock: bool,
}

impl Engine {
    /// A builder with the pure built-ins (`transform`, `evaluate` without a model judge,
    /// `policy`), a memory store and the default options.
    pub fn builder() -> EngineBuilder {
        EngineBuilder {
            task_types: llmo_core::tasks::Registry::default(),
            executors: Registry::with_builtins(None),
            store: None,
            options: Options::default(),
            clock: Arc::new(SystemClock::default()),
            config: crate::providers::Config::builtin(),
            mock: true,
        }
    }
}

impl EngineBuilder {
    /// The executors of every built-in task type (`llm` over `setup`'s providers, `http`, ...)
    /// and the prices budgets are kept with; a task type added with
    /// [`EngineBuilder::task_type`] keeps its executor.
    pub fn standard(mut self, setup: crate::Setup) -> Self {
        self.config = setup.config.clone();
        self.mock = setup.mock;
        let mut standard = setup.registry();
        for (ty, exec) in self.executors.iter() {
            if llmo_core::tasks::Registry::default().get(ty).is_none() {
                standard.register(ty.to_string(), exec.clone());
            }
        }
        self.executors = standard;
        self
    }

    /// A task type of your own: `ty` (its name, description and the JSON Schema of its `with`,
    /// [`TaskType::of`]) and what runs its attempts. A built-in's name replaces the built-in.
    pub fn task_type(mut self, ty: TaskType, exec: Arc<dyn Executor>) -> Self {
        self.executors.register(ty.name.clone(), exec);
        self.task_types.register(ty);
        self
    }

    /// Where runs are kept ([`crate::store::SqliteStore`] for runs that outlive the process).
    pub fn store(mut self, store: Arc<dyn RunStore>) -> Self {
        self.store = Some(store);
        self
    }

    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn build(self) -> Engine {
        let validator = Arc::new(Validator::new(self.task_types));
        let store: Arc<dyn RunStore> = self.store.unwrap_or_else(|| Arc::new(MemoryStore::default()));
        // `workflow` tasks: children from files beside their parent's (the `source_name` a run
        // is given), run in this engine's store with its task types.
        let starter = Starter::new(self.config.clone(), self.mock).with_validator(validator.clone());
        let executors = crate::children::embedded(
            self.executors,
            std::path::PathBuf::new(),
            store.clone(),
            self.clock.clone(),
            self.options.clone(),
            Arc::new(starter),
        );
        Engine {
            validator,
            executors,
            store,
            options: self.options,
            clock: self.clock,
            config: self.config,
            mock: self.mock,
        }
    }
}

impl Engine {
    /// Validates a workflow with every task type the engine knows.
    pub fn validate(&self, source_name: &str, source: &str) -> Outcome {
        self.validator.validate(&SourceFile::new(source_name.to_string(), source.to_string()))
    }

    /// The JSON Schema of workflow files with this engine's task types (for editors).
    pub fn schema(&self) -> Value {
        llmo_core::schema::workflow_schema(self.validator.registry())
    }

    fn starter(&self) -> Starter {
        Starter::new(self.config.clone(), self.mock).with_validator(self.validator.clone())
    }

    fn driver(&self, plan: Plan) -> Driver {
        Driver {
            plan: Arc::new(plan),
            store: self.store.clone(),
            executors: self.executors.clone(),
            clock: self.clock.clone(),
            blobs: None,
            options: self.options.clone(),
        }
    }

    /// Validates the workflow, checks `inputs` against it, stores a new run and drives it to
    /// its end.
    pub async fn run(
        &self,
        source_name: &str,
        source: &str,
        inputs: Map<String, Value>,
    ) -> Result<Finished, EmbedError> {
        self.run_observed(source_name, source, inputs, &mut ()).await
    }

    /// [`Engine::run`], telling `observer` of every batch of transitions as it is stored.
    pub async fn run_observed(
        &self,
        source_name: &str,
        source: &str,
        inputs: Map<String, Value>,
        observer: &mut dyn Observer,
    ) -> Result<Finished, EmbedError> {
        let starter = self.starter();
        let checked = starter.check(source_name, source)?;
        let prepared = starter.prepare(checked, source_name, source, &StartRequest { inputs, ..Default::default() })?;
        starter.create(self.store.as_ref(), &prepared).await?;
        let crate::start::Prepared { plan, state, .. } = prepared;
        Ok(self.driver(plan).start_created(state, observer).await?)
    }

    /// Continues a stored run that did not end (its process stopped): what recorded its result
    /// is kept, what was running runs again. An ended run is returned as it is.
    pub async fn resume(&self, run_id: &str) -> Result<Finished, EmbedError> {
        let stored = self.store.load(run_id).await?.ok_or_else(|| EmbedError::NoSuchRun(run_id.to_string()))?;
        let plan = self.plan_of(&stored.source_name, &stored.source)?;
        Ok(self.driver(plan).resume(run_id, &mut ()).await?)
    }

    /// A run's state as stored (its status, tasks, outputs, costs).
    pub async fn get(&self, run_id: &str) -> Result<Option<RunState>, EmbedError> {
        let Some(stored) = self.store.load(run_id).await? else { return Ok(None) };
        let plan = self.plan_of(&stored.source_name, &stored.source)?;
        Ok(Some(crate::store::rebuild(&plan, stored)?))
    }

    /// Every run in the store, newest first.
    pub async fn list(&self) -> Result<Vec<RunSummary>, EmbedError> {
        Ok(self.store.list().await?)
    }

    fn plan_of(&self, source_name: &str, source: &str) -> Result<Plan, EmbedError> {
        let checked = self.starter().check(source_name, source)?;
        let mut plan = Plan::new(checked);
        plan.set_prices(self.config.price_book(self.mock));
        Ok(plan)
    }
}
