//! Shared set-up of the tests against the local stack (`localstack/stack.sh up`): each test
//! provisions its own table, queues and bucket, so tests run in parallel. The API suites run
//! the same test code against `llmo serve`'s composition too ([`Target`], [`on_both!`]).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use http::Request as HttpRequest;
use llmo_api::Api;
use llmo_api::{Body, Request};
use llmo_aws::provision::{Resources, provision};
use llmo_aws::sqs::SqsQueue;
use llmo_aws::step::{DeadLetters, Step};
use llmo_aws::{Aws, local};
use llmo_core::engine::{Event, Plan, RunState, TaskStatus};
use llmo_core::source::SourceFile;
use llmo_core::validate::Validator;
use llmo_runtime::executor::Registry;
use llmo_runtime::fixtures::Fixtures;
use llmo_runtime::store::{RunStore, Transition};
use serde_json::{Value, json};
use tokio::sync::watch;

/// The local stack's clients, or `None` (and a notice) when no stack is configured. Under
/// `LLMO_REQUIRE_AWS=1` (as `make test` sets) a missing stack fails the test instead.
pub async fn aws() -> Option<Aws> {
    if std::env::var_os("AWS_ENDPOINT_URL").is_none() {
        assert!(
            std::env::var_os("LLMO_REQUIRE_AWS").is_none(),
            "LLMO_REQUIRE_AWS is set but no local stack is configured: run `localstack/stack.sh up` and export `localstack/stack.sh env`"
        );
        eprintln!("skipped: no local AWS (run `localstack/stack.sh up` and export `localstack/stack.sh env`)");
        return None;
    }
    Some(Aws::from_env().await.expect("the local stack's settings"))
}

pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        llmo_runtime::ports::now_ms() % 1_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub async fn stack(aws: &Aws, visibility_secs: u32, max_receives: u32) -> Aws {
    let name = unique("t");
    let r = Resources {
        table: name.clone(),
        queue: format!("{name}-steps"),
        dlq: format!("{name}-dead"),
        bucket: name.to_lowercase(),
        visibility_secs,
        max_receives,
        folds: true,
    };
    provision(aws, &r).await.expect("provisioning the local stack")
}

/// Executors answering models with `mock` and HTTP from every example's fixtures.
pub fn executors() -> Registry {
    let mut fixtures = Fixtures::default();
    for f in std::fs::read_dir(root().join("workflows/fixtures")).unwrap() {
        fixtures = fixtures.then(&Fixtures::load(&f.unwrap().path()).unwrap());
    }
    let mut registry = llmo_runtime::standard_registry(llmo_runtime::providers::Config::builtin(), true, fixtures);
    // As the step function's mock mode: a function task answers the event it would send.
    registry.register("function", Arc::new(llmo_lambda::FunctionExecutor::mock()));
    registry
}

pub fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The HS256 secret the tests' API verifies tokens with.
pub const SECRET: &[u8] = b"the-local-tests-hs256-secret-0123456789";

/// A token for `sub` in `tenant` with `roles`, valid for an hour.
pub fn token(sub: &str, tenant: &str, roles: &[&str]) -> String {
    let claims: std::collections::HashMap<&str, Value> = [
        ("sub", json!(sub)),
        ("tenant", json!(tenant)),
        ("roles", json!(roles)),
        ("aud", json!(llmo_api::auth::DEFAULT_AUDIENCE)),
        ("exp", json!(llmo_runtime::ports::now_ms() / 1000 + 3600)),
    ]
    .into();
    llmo_api::auth::mint_hs256(SECRET, &claims)
}

pub fn api(aws: &Aws) -> Api {
    llmo_aws::api::build(aws, executors(), llmo_runtime::providers::Config::builtin(), true)
        .with_auth(llmo_api::auth::Auth::hs256(SECRET, llmo_api::auth::DEFAULT_AUDIENCE))
}

/// A request as a developer of tenant `t1`.
pub async fn call(api: &Api, method: &str, uri: &str, body: Option<Value>) -> (u16, Value) {
    call_as(api, Some(&token("dev", "t1", &["developer"])), method, uri, body).await
}

/// A request with `token` (none: no Authorization header).
pub async fn call_as(api: &Api, token: Option<&str>, method: &str, uri: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = HttpRequest::builder().method(method).uri(uri).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req: Request = req.body(body.map_or(Body::Empty, |b| Body::Text(b.to_string()))).unwrap();
    let resp = api.handle(req).await;
    let status = resp.status().as_u16();
    let v = serde_json::from_slice(resp.body().as_ref()).unwrap_or(Value::Null);
    (status, v)
}

/// `n` step workers (each its own `Step`, as separate containers are) polling until dropped.
pub struct Workers {
    stop: watch::Sender<bool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Workers {
    pub fn start(aws: &Aws, n: usize, batch: usize, wrap: impl Fn(Step) -> Step) -> Self {
        let (stop, rx) = watch::channel(false);
        let mut handles = Vec::new();
        for _ in 0..n {
            let step = Arc::new(wrap(Step::new(aws, executors(), llmo_aws::step::StepSettings::default())));
            let queues = SqsQueue::step_queues(aws);
            let mut rx = rx.clone();
            handles.push(tokio::spawn(async move {
                local::poll_queues(&queues, batch, |e| step.handle(e), async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
            }));
        }
        Workers { stop, handles }
    }

    pub fn dead_letters(aws: &Aws) -> Self {
        let (stop, mut rx) = watch::channel(false);
        let dl = Arc::new(DeadLetters::new(aws, executors(), llmo_aws::step::StepSettings::default()));
        let queues = SqsQueue::dead_letter_queues(aws);
        let h = tokio::spawn(async move {
            local::poll_queues(&queues, 10, |e| dl.handle(e), async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
        });
        Workers { stop, handles: vec![h] }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for h in self.handles {
            let _ = h.await;
        }
    }
}

/// Polls the API until the run ends (or `secs` pass).
pub async fn wait_end(api: &Api, run_id: &str, secs: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let (code, v) = call(api, "GET", &format!("/runs/{run_id}"), None).await;
        assert_eq!(code, 200, "{v}");
        if ["succeeded", "failed", "cancelled", "timed_out"].contains(&v["status"].as_str().unwrap_or("")) {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "run {run_id} did not end in {secs} s: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn plan(source: &str) -> Arc<Plan> {
    let outcome = Validator::default().validate(&SourceFile::new("t.yaml", source));
    Arc::new(Plan::new(outcome.checked.expect("test workflow is valid")))
}

/// The same workflow run in-process with the same executors: the fault-free outcome.
pub async fn embedded(source: &str, inputs: Value) -> RunState {
    embedded_as("embedded", source, inputs).await
}

/// [`embedded`] under the run id `run_id` (what the run's idempotency keys derive from).
pub async fn embedded_as(run_id: &str, source: &str, inputs: Value) -> RunState {
    // With the prices the API's starter gives its runs (mock: everything free).
    let outcome = Validator::default().validate(&SourceFile::new("t.yaml", source.to_string()));
    let mut p = Plan::new(outcome.checked.expect("test workflow is valid"));
    p.set_prices(llmo_runtime::providers::Config::builtin().price_book(true));
    let p = Arc::new(p);
    let store = Arc::new(llmo_runtime::store::MemoryStore::default());
    let d = llmo_runtime::driver::Driver {
        plan: p.clone(),
        store,
        executors: Arc::new(executors()),
        clock: Arc::new(llmo_runtime::ports::SystemClock::default()),
        blobs: None,
        options: Default::default(),
    };
    let inputs =
        llmo_core::inputs::resolve_inputs(&p.checked.workflow.spec.inputs, inputs.as_object().unwrap()).unwrap();
    d.start(run_id, inputs, "t.yaml", source, &mut ()).await.unwrap().state
}

/// Checks a run's log: every task reached a terminal state exactly once (once per redrive of
/// the run) and each attempt's result was applied once. Returns the rebuilt state.
pub fn check_log(plan: &Plan, log: &[Transition], initial: RunState) -> RunState {
    let mut seen = std::collections::HashSet::new();
    for t in log {
        if let Event::AttemptFinished { .. } = &t.event {
            assert!(seen.insert(t.event.key()), "attempt result {} stored twice", t.event.key());
        }
    }
    let mut st = initial;
    let mut ended = vec![0u32; st.tasks.len()];
    for t in log {
        if let Event::Redrive { .. } = t.event {
            // The tasks a redrive runs again may end once more.
            ended
                .iter_mut()
                .zip(&st.tasks)
                .filter(|(_, x)| x.status != TaskStatus::Succeeded)
                .for_each(|(n, _)| *n = 0);
        }
        let before: Vec<bool> = st.tasks.iter().map(|x| x.status.is_terminal()).collect();
        plan.apply(&mut st, &t.event, t.at).expect("every stored transition applies");
        for (i, x) in st.tasks.iter().enumerate() {
            if x.status.is_terminal() && !before[i] {
                ended[i] += 1;
            }
        }
    }
    for (i, n) in ended.iter().enumerate() {
        assert!(*n <= 1, "task {} reached a terminal state {n} times", plan.checked.dag.id(i));
    }
    st
}

pub async fn initial_and_log(aws: &Aws, run_id: &str) -> (RunState, Vec<Transition>) {
    let store = llmo_aws::dynamo::DynamoStore::new(aws.clone());
    let initial = store.initial_state(run_id).await.unwrap().expect("the run exists");
    (initial, store.history(run_id).await.unwrap())
}

pub fn example_inputs(name: &str) -> Value {
    match name {
        "article-pipeline.yaml" => json!({"topic": "Rust ownership"}),
        "simple-inference.yaml" => json!({"question": "What is a DAG?"}),
        "document-intake.yaml" => json!({"bucket": "acme-intake", "key": "contracts/msa.pdf"}),
        "ticket-triage.yaml" => json!({"ticket": "My invoice is wrong", "plan": "pro"}),
        _ => json!({}),
    }
}

/// Where an API suite runs: the deployed composition on the local stack (DynamoDB, SQS, S3;
/// step workers polling as the `step` function's local mode does), or `llmo serve`'s (one
/// SQLite file; step workers in the process).
pub struct Target {
    pub api: Arc<Api>,
    pub name: &'static str,
    kind: Kind,
}

enum Kind {
    Stack { workers: Option<Workers> },
    Serve { local: llmo_api::local::Local, dir: std::path::PathBuf },
}

/// How the suites' targets are made: the executors their steps run with, answer links.
#[derive(Clone)]
pub struct Setup {
    pub workers: usize,
    pub links: Option<Vec<u8>>,
    pub executors: Arc<dyn Fn() -> Registry + Send + Sync>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup { workers: 1, links: None, executors: Arc::new(executors) }
    }
}

impl Target {
    /// On the local stack (fresh resources); `None` when no stack is configured.
    pub async fn stack(setup: Setup) -> Option<Target> {
        let aws = aws().await?;
        let aws = stack(&aws, 30, 5).await;
        let mut api = api(&aws).with_links(setup.links.clone());
        // As the step function's: `workflow` tasks start children in the deployment.
        let make = {
            let (aws, make) = (aws.clone(), setup.executors.clone());
            move || {
                let mut r = make();
                let config = llmo_runtime::providers::Config::builtin();
                r.register("workflow", Arc::new(llmo_aws::env::children(&aws, &config, true)));
                r
            }
        };
        api.worker.executors = Arc::new(make());
        let workers = (setup.workers > 0).then(|| {
            Workers::start(&aws, setup.workers, 10, move |mut s| {
                s.worker.executors = Arc::new(make());
                s
            })
        });
        Some(Target { api: Arc::new(api), name: "local stack", kind: Kind::Stack { workers } })
    }

    /// On a fresh SQLite file, as `llmo serve` composes it (with `setup.workers` step workers,
    /// at least one: serve always consumes its queue).
    pub async fn serve(setup: Setup) -> Target {
        let dir = std::env::temp_dir().join(unique("llmo-serve"));
        let mut settings = llmo_api::local::Settings::new(dir.join("state.db"));
        settings.workers = setup.workers.max(1);
        settings.sweep_every = Duration::from_secs(3600);
        let mut local = llmo_api::local::Local::open(
            settings,
            (setup.executors)(),
            llmo_runtime::providers::Config::builtin(),
            true,
        )
        .await
        .expect("opening a fresh state file");
        local.configure(|api| {
            api.auth = Some(llmo_api::auth::Auth::hs256(SECRET, llmo_api::auth::DEFAULT_AUDIENCE));
            api.links = setup.links.clone();
        });
        local.start();
        Target { api: local.api.clone(), name: "llmo serve", kind: Kind::Serve { local, dir } }
    }

    /// The state a run was created with and its whole log, through the store port.
    pub async fn initial_and_log(&self, run_id: &str) -> (RunState, Vec<Transition>) {
        let initial = self.api.store.initial_state(run_id).await.unwrap().expect("the store keeps initial states");
        (initial, self.api.store.history(run_id).await.unwrap())
    }

    pub async fn stop(self) {
        match self.kind {
            Kind::Stack { workers } => {
                if let Some(w) = workers {
                    w.stop().await;
                }
            }
            Kind::Serve { local, dir } => {
                drop(self.api);
                local.shutdown(Duration::from_secs(10)).await;
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// One API suite, run on the local stack (`$stack`, skipped without one) and on `llmo serve`
/// (`$serve`) from the same body: `async fn $body(t: &Target)`.
#[macro_export]
macro_rules! on_both {
    ($stack:ident, $serve:ident, $body:ident, $setup:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $stack() {
            let Some(t) = support::Target::stack($setup).await else { return };
            $body(&t).await;
            t.stop().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $serve() {
            let t = support::Target::serve($setup).await;
            $body(&t).await;
            t.stop().await;
        }
    };
}

/// `token` with one character of its signature changed (a middle one: the last character of
/// base64url carries padding bits, so changing it may leave the bytes the same).
pub fn forge(token: &str) -> String {
    let mut b = token.as_bytes().to_vec();
    let k = b.len() - 10;
    b[k] = if b[k] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).expect("a token is ASCII")
}
