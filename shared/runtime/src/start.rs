//! Starting a run: the one use case every entry point goes through (`llmo run`, the API's
//! `POST /runs`, EventBridge Scheduler ticks and EventBridge events).
//!
//! [`Starter::prepare`] checks the inputs against the workflow's declarations, prices the
//! plan for budgets, gives the run an id with 96 random bits and ties it to its tenant;
//! [`Starter::create`] stores it once per idempotency key; [`Starter::start`] also sends its
//! `Start`. Idempotency keys are scoped by tenant and by key space: a client's key can never
//! name a scheduler tick's or an event's, and the same key sent with another workflow or other
//! inputs is refused ([`StartError::KeyReused`]) instead of answering with someone else's run.

use llmo_core::engine::{Event, Plan, RunState};
use llmo_core::inputs::InputError;
use llmo_core::source::SourceFile;
use llmo_core::validate::{Checked, Outcome, Validator};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::providers::Config;
use crate::queue::{Message, Queue};
use crate::store::{self, Created, RunStore, StartKey};

/// The longest idempotency key a client may send (bytes).
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// Who chose an idempotency key. Each space is its own namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySpace {
    /// An API or CLI caller (`Idempotency-Key`).
    Client,
    /// An EventBridge Scheduler tick (schedule and scheduled time).
    Schedule,
    /// An EventBridge event (its id).
    Event,
    /// A parent's `workflow` task starting a child (the child's run id, derived from the
    /// parent's attempt).
    Child,
}

impl KeySpace {
    fn as_str(self) -> &'static str {
        match self {
            KeySpace::Client => "client",
            KeySpace::Schedule => "schedule",
            KeySpace::Event => "event",
            KeySpace::Child => "child",
        }
    }
}

/// An idempotency key in its space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    space: KeySpace,
    key: String,
}

impl IdempotencyKey {
    /// A client's key: 1 to [`MAX_IDEMPOTENCY_KEY`] bytes of printable ASCII.
    pub fn client(key: &str) -> Result<Self, StartError> {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
            return Err(StartError::BadKey(format!(
                "an idempotency key is 1 to {MAX_IDEMPOTENCY_KEY} characters (this one has {})",
                key.len()
            )));
        }
        if !key.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(StartError::BadKey("an idempotency key is printable ASCII without spaces".into()));
        }
        Ok(IdempotencyKey { space: KeySpace::Client, key: key.to_string() })
    }

    /// A key chosen by the system (a scheduler tick or an event id); hashed when long.
    pub fn system(space: KeySpace, key: &str) -> Self {
        let key = if key.len() > MAX_IDEMPOTENCY_KEY { hex(&Sha256::digest(key.as_bytes())) } else { key.to_string() };
        IdempotencyKey { space, key }
    }

    pub fn space(&self) -> KeySpace {
        self.space
    }

    /// The key's id in the store: unique per tenant and space.
    pub fn id(&self, tenant: Option<&str>) -> String {
        format!("{}#{}#{}", tenant.unwrap_or("-"), self.space.as_str(), self.key)
    }
}

/// A request to start a run of a validated workflow.
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    /// The tenant the run belongs to (from the caller's token; none for embedded runs).
    pub tenant: Option<String>,
    pub inputs: Map<String, Value>,
    pub key: Option<IdempotencyKey>,
}

/// A run ready to be stored.
pub struct Prepared {
    pub plan: Plan,
    pub state: RunState,
    pub workflow: String,
    pub source_name: String,
    pub source: String,
    key: Option<StartKey>,
}

/// What a start did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub run_id: String,
    pub workflow: String,
    /// False when the idempotency key had already started this run.
    pub created: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the workflow does not validate")]
    Invalid(Box<Outcome>),
    #[error("inputs do not match the workflow")]
    Inputs(Vec<InputError>),
    #[error("{0}")]
    BadKey(String),
    #[error("the idempotency key was already used by another request (another workflow or other inputs)")]
    KeyReused,
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("could not send the run's start: {0}")]
    Queue(String),
    #[error("{0}")]
    Rerun(String),
}

/// The start-a-run use case, with what it needs to check and price a workflow.
pub struct Starter {
    validator: Checker,
    config: Config,
    mock: bool,
    max_age_ms: Option<u64>,
}

/// The process's shared validator of the built-in task types, or one of an embedder's own
/// (with its task types).
#[derive(Clone)]
enum Checker {
    Shared(&'static Validator),
    Own(std::sync::Arc<Validator>),
}

impl std::ops::Deref for Checker {
    type Target = Validator;
    fn deref(&self) -> &Validator {
        match self {
            Checker::Shared(v) => v,
            Checker::Own(v) => v,
        }
    }
}

impl Starter {
    pub fn new(config: Config, mock: bool) -> Self {
        Starter { validator: Checker::Shared(Validator::shared()), config, mock, max_age_ms: None }
    }

    /// Checks workflows with `validator` (one that knows an embedder's task types).
    pub fn with_validator(mut self, validator: std::sync::Arc<Validator>) -> Self {
        self.validator = Checker::Own(validator);
        self
    }

    /// Every run started times out at the latest `ms` after its start (the deployment's
    /// longest run; see `RunState::max_age_ms`).
    pub fn with_max_age(mut self, ms: u64) -> Self {
        self.max_age_ms = Some(ms);
        self
    }

    /// Validates a workflow's text (`Invalid` with every diagnostic when it does not).
    pub fn check(&self, source_name: &str, source: &str) -> Result<Checked, StartError> {
        let outcome = self.validator.validate(&SourceFile::new(source_name.to_string(), source.to_string()));
        match outcome.checked {
            Some(c) => Ok(c),
            None => Err(StartError::Invalid(Box::new(outcome))),
        }
    }

    /// Checks the inputs, prices the plan and makes the run's initial state.
    pub fn prepare(
        &self,
        checked: Checked,
        source_name: &str,
        source: &str,
        req: &StartRequest,
    ) -> Result<Prepared, StartError> {
        let inputs = llmo_core::inputs::resolve_inputs(&checked.workflow.spec.inputs, &req.inputs)
            .map_err(StartError::Inputs)?;
        let mut plan = Plan::new(checked);
        plan.set_prices(self.config.price_book(self.mock));
        let workflow = plan.checked.workflow.metadata.name.clone();
        let key = req.key.as_ref().map(|k| StartKey {
            id: k.id(req.tenant.as_deref()),
            fingerprint: fingerprint(&workflow, source, &inputs),
        });
        let mut state = plan.new_run(new_run_id(), inputs);
        state.tenant = req.tenant.clone();
        state.max_age_ms = self.max_age_ms;
        Ok(Prepared { plan, state, workflow, source_name: source_name.to_string(), source: source.to_string(), key })
    }

    /// A new run of the workflow `source` (the text `run` was started from) that reuses `run`'s
    /// recorded outputs and runs `from` and everything downstream of it again
    /// ([`Plan::rerun`]), in `run`'s tenant. Store it with [`Starter::create`].
    pub fn prepare_rerun(
        &self,
        source_name: &str,
        source: &str,
        run: &RunState,
        from: &str,
    ) -> Result<Prepared, StartError> {
        let checked = self.check(source_name, source)?;
        let mut plan = Plan::new(checked);
        plan.set_prices(self.config.price_book(self.mock));
        let Some(i) = plan.checked.dag.index_of(from) else {
            return Err(StartError::Rerun(format!("the workflow has no task `{from}`")));
        };
        if !run.status.is_terminal() {
            return Err(StartError::Rerun(format!(
                "{} is {}: only an ended run is rerun",
                run.run_id,
                run.status.as_str()
            )));
        }
        let workflow = plan.checked.workflow.metadata.name.clone();
        let mut state = plan.rerun(new_run_id(), run, i);
        state.tenant = run.tenant.clone();
        state.max_age_ms = self.max_age_ms;
        Ok(Prepared {
            plan,
            state,
            workflow,
            source_name: source_name.to_string(),
            source: source.to_string(),
            key: None,
        })
    }

    /// Stores a prepared run once per idempotency key.
    pub async fn create(&self, store: &dyn RunStore, p: &Prepared) -> Result<Started, StartError> {
        match store.create_keyed(p.key.as_ref(), &p.workflow, &p.source_name, &p.source, &p.state).await? {
            Created::New => Ok(Started { run_id: p.state.run_id.clone(), workflow: p.workflow.clone(), created: true }),
            Created::Existing { run_id, fingerprint } => {
                if p.key.as_ref().is_some_and(|k| k.fingerprint != fingerprint) {
                    return Err(StartError::KeyReused);
                }
                Ok(Started { run_id, workflow: p.workflow.clone(), created: false })
            }
        }
    }

    /// Validates, prepares, stores (once per key) and sends the run's `Start`. The `Start` is
    /// sent again for a repeated key too: the first request may have died before sending it,
    /// and a second `Start` is ignored.
    pub async fn start(
        &self,
        store: &dyn RunStore,
        queue: &dyn Queue,
        source_name: &str,
        source: &str,
        req: &StartRequest,
    ) -> Result<Started, StartError> {
        let checked = self.check(source_name, source)?;
        let p = self.prepare(checked, source_name, source, req)?;
        let started = self.create(store, &p).await?;
        queue
            .send(&Message::Event { run_id: started.run_id.clone(), event: Event::Start }, 0)
            .await
            .map_err(|e| StartError::Queue(e.to_string()))?;
        Ok(started)
    }
}

/// A new run id: `run-<ms since the epoch, 13 digits>-<96 random bits, 24 hex digits>`
/// (sortable by time, unguessable).
pub fn new_run_id() -> String {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    format!("run-{:013}-{}", crate::ports::now_ms(), hex(&bytes))
}

/// What makes two start requests the same: the workflow, its text and the resolved inputs
/// (objects with their keys sorted).
fn fingerprint(workflow: &str, source: &str, inputs: &Map<String, Value>) -> String {
    let mut h = Sha256::new();
    h.update(workflow.as_bytes());
    h.update([0]);
    h.update(Sha256::digest(source.as_bytes()));
    h.update(canonical(&Value::Object(inputs.clone())).as_bytes());
    hex(&h.finalize())
}

fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let parts: Vec<String> =
                keys.into_iter().map(|k| format!("{}:{}", Value::String(k.clone()), canonical(&m[k]))).collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(canonical).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::MemoryQueue;
    use crate::store::MemoryStore;

    const WF: &str = "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: echo }\nspec:\n  inputs:\n    n: { type: integer, required: true }\n  tasks:\n    - id: a\n      type: transform\n      with: { output: \"{{ inputs.n }}\" }\n";

    fn req(tenant: &str, n: i64, key: Option<&str>) -> StartRequest {
        let mut inputs = Map::new();
        inputs.insert("n".into(), n.into());
        StartRequest { tenant: Some(tenant.into()), inputs, key: key.map(|k| IdempotencyKey::client(k).unwrap()) }
    }

    #[tokio::test]
    async fn a_key_starts_one_run_per_tenant_and_request() {
        let starter = Starter::new(Config::builtin(), true);
        let store = MemoryStore::default();
        let queue = MemoryQueue::new(std::sync::Arc::new(crate::ports::SystemClock::default()), 30_000);
        let a = starter.start(&store, &queue, "wf.yaml", WF, &req("t1", 1, Some("k"))).await.unwrap();
        assert!(a.created);
        let again = starter.start(&store, &queue, "wf.yaml", WF, &req("t1", 1, Some("k"))).await.unwrap();
        assert_eq!(again, Started { created: false, ..a.clone() });
        // The same key with other inputs is refused, not answered with the first run.
        let other = starter.start(&store, &queue, "wf.yaml", WF, &req("t1", 2, Some("k"))).await;
        assert!(matches!(other, Err(StartError::KeyReused)), "{other:?}");
        // Another tenant's identical key is its own.
        let b = starter.start(&store, &queue, "wf.yaml", WF, &req("t2", 1, Some("k"))).await.unwrap();
        assert!(b.created && b.run_id != a.run_id);
        let st = store.load(&b.run_id).await.unwrap().unwrap().snapshot;
        assert_eq!(st.tenant.as_deref(), Some("t2"));
        // A scheduler's key never collides with a client's of the same text.
        assert_ne!(
            IdempotencyKey::client("k").unwrap().id(Some("t1")),
            IdempotencyKey::system(KeySpace::Schedule, "k").id(Some("t1"))
        );
    }

    #[test]
    fn client_keys_are_bounded() {
        assert!(IdempotencyKey::client(&"x".repeat(MAX_IDEMPOTENCY_KEY)).is_ok());
        assert!(matches!(IdempotencyKey::client(&"x".repeat(MAX_IDEMPOTENCY_KEY + 1)), Err(StartError::BadKey(_))));
        assert!(matches!(IdempotencyKey::client(""), Err(StartError::BadKey(_))));
        assert!(matches!(IdempotencyKey::client("a b"), Err(StartError::BadKey(_))));
        assert!(matches!(IdempotencyKey::client("a\u{7f}"), Err(StartError::BadKey(_))));
    }

    #[test]
    fn run_ids_carry_96_random_bits() {
        let a = new_run_id();
        let b = new_run_id();
        assert_ne!(a, b);
        let random = a.rsplit('-').next().unwrap();
        assert_eq!(random.len(), 24);
        assert!(random.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn fingerprints_ignore_key_order_only() {
        let a: Map<String, Value> = serde_json::from_str(r#"{"x": 1, "y": {"b": 2, "a": 1}}"#).unwrap();
        let b: Map<String, Value> = serde_json::from_str(r#"{"y": {"a": 1, "b": 2}, "x": 1}"#).unwrap();
        let c: Map<String, Value> = serde_json::from_str(r#"{"y": {"a": 1, "b": 3}, "x": 1}"#).unwrap();
        assert_eq!(fingerprint("w", "s", &a), fingerprint("w", "s", &b));
        assert_ne!(fingerprint("w", "s", &a), fingerprint("w", "s", &c));
        assert_ne!(fingerprint("w", "s", &a), fingerprint("w", "t", &a));
    }
}
