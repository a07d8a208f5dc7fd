//! `llmo serve`: the whole API on one machine without AWS. The same [`Api`] as deployed, on one
//! SQLite file: the run store, the run index, the workflow registry, the audit trail and the
//! step queue ([`SqliteQueue`]) are its tables. Step workers in the process consume the queue
//! with the serverless protocol (`Worker`, the same code the `step` function runs), so
//! retries, waits, timers and cancels behave as deployed; the sweeper runs on a timer and
//! registered workflows' schedules fire here ([`crate::schedules`]).
//!
//! One process owns the file (a lease in it, renewed while it serves): a second `llmo serve`
//! on the same file is refused. Nothing is lost on a stop: a message is deleted only once its
//! step is stored, so what was in flight when the process stopped (Ctrl-C lets the steps in
//! flight finish for a while; `kill -9` does not) is delivered again when it starts next,
//! at once (no other process can hold it).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use llmo_runtime::audit::AuditLog;
use llmo_runtime::executor::Registry;
use llmo_runtime::ports::{Clock, SystemClock};
use llmo_runtime::providers::Config;
use llmo_runtime::queue::{Delivery, Queue};
use llmo_runtime::sqlite_queue::SqliteQueue;
use llmo_runtime::start::Starter;
use llmo_runtime::store::{Durability, Owner, RunStore, SqliteStore};
use llmo_runtime::worker::{Continue, Worker};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::Api;
use crate::sweep::Sweeper;

/// How the local server runs (read once by the CLI and passed down).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The SQLite file: runs, workflows, audit trail and queue.
    pub state: PathBuf,
    pub durability: Durability,
    /// Step workers consuming the queue concurrently.
    pub workers: usize,
    /// Messages one worker takes at a time (a run's messages in one batch make one step).
    pub batch: usize,
    /// How long a delivered message stays invisible before it is delivered again (its step
    /// has not been stored by then: the process died, or the step is that slow).
    pub visibility: Duration,
    /// Deliveries after which a message is dead-lettered: its attempt fails, or its run ends.
    pub max_receives: u32,
    /// How often the sweeper runs, and how long past a run's creation or deadline it waits.
    pub sweep_every: Duration,
    pub sweep_grace: Duration,
    /// Steps of a chain a worker runs in place after its batch's own.
    pub continue_steps: usize,
    /// Attempts of one run per message ([`llmo_runtime::queue::pack`]).
    pub pack: usize,
}

impl Settings {
    pub fn new(state: PathBuf) -> Self {
        Settings {
            state,
            durability: Durability::Process,
            workers: 4,
            batch: 10,
            visibility: Duration::from_secs(15 * 60),
            max_receives: 5,
            sweep_every: Duration::from_secs(60),
            sweep_grace: Duration::from_secs(300),
            continue_steps: 8,
            pack: 10,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("state file {path}: {source}")]
    Store { path: String, source: llmo_runtime::store::Error },
    #[error(
        "state file {path} is served by {} (its lease runs {}s more unless renewed): one `llmo serve` per file",
        owner.owner,
        owner.expires_at.saturating_sub(llmo_runtime::ports::now_ms()).div_ceil(1000)
    )]
    Owned { path: String, owner: Owner },
    #[error("state file {path}: the queue: {source}")]
    Queue { path: String, source: llmo_runtime::queue::QueueError },
}

/// The lease the serving process holds on its file (a row of the store's run leases).
const SERVE_LEASE: &str = "llmo-serve";
const LEASE_MS: u64 = 30_000;

/// The API on a SQLite file, and its step workers once [`Local::start`]ed.
pub struct Local {
    pub api: Arc<Api>,
    pub store: Arc<SqliteStore>,
    pub queue: Arc<SqliteQueue>,
    settings: Settings,
    worker: Arc<Worker>,
    owner: String,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Local {
    /// Opens (or creates) the state file, takes its lease, and builds the API on it: not yet
    /// consuming the queue. Messages in flight when the previous process stopped are made
    /// visible again at once.
    pub async fn open(settings: Settings, executors: Registry, config: Config, mock: bool) -> Result<Self, Error> {
        let path = settings.state.display().to_string();
        let store = Arc::new(
            SqliteStore::open(&settings.state, settings.durability)
                .map_err(|source| Error::Store { path: path.clone(), source })?,
        );
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::default());
        let owner = Owner::this_process();
        let mut held = store.lease(SERVE_LEASE, &owner, LEASE_MS, clock.now()).await;
        if let Ok(Some(dead)) = &held
            && dead.dead_here()
        {
            // Its server was killed: no need to wait its lease out.
            let _ = store.release(SERVE_LEASE, &dead.owner).await;
            held = store.lease(SERVE_LEASE, &owner, LEASE_MS, clock.now()).await;
        }
        match held {
            Ok(None) => {}
            Ok(Some(held)) => return Err(Error::Owned { path, owner: held }),
            Err(source) => return Err(Error::Store { path, source }),
        }
        let queue = Arc::new(SqliteQueue::new(store.clone(), clock.clone(), settings.visibility.as_millis() as u64));
        let back = queue.release_in_flight().map_err(|source| Error::Queue { path: path.clone(), source })?;
        if back > 0 {
            tracing::info!(messages = back, "steps in flight when the server last stopped are delivered again");
        }
        let mut executors = executors;
        // `workflow` tasks: children of registered workflows, started in this file's store and
        // queue; their parent's attempt detaches until they end.
        executors.register(
            llmo_core::child::WORKFLOW,
            Arc::new(llmo_runtime::children::Children::new(
                store.clone(),
                queue.clone(),
                store.clone(),
                Arc::new(Starter::new(config.clone(), mock)),
            )),
        );
        let executors = Arc::new(executors);
        let mut worker = Worker::from_stored(store.clone(), queue.clone(), executors.clone(), clock.clone());
        worker.pack = settings.pack;
        let flow = worker.flow.clone();
        let api_worker = Worker::from_stored(store.clone(), queue.clone(), executors, clock);
        let api = Api {
            reads: llmo_runtime::reads::Reads::new(flow),
            workflows: store.clone(),
            index: store.clone(),
            store: store.clone() as Arc<dyn RunStore>,
            queue: queue.clone() as Arc<dyn Queue>,
            worker: api_worker,
            starter: Starter::new(config, mock),
            audit: store.clone() as Arc<dyn AuditLog>,
            sweeper: Sweeper::new(store.clone(), queue.clone(), settings.sweep_grace.as_millis() as u64),
            auth: None,
            metrics: None,
            links: None,
            triggers: Default::default(),
            // The log is a local file: its version is read every 50 ms (an indexed read).
            streams: Arc::new(crate::api::events::Streams::new(
                64,
                16,
                llmo_runtime::stream::Follow { poll: std::time::Duration::from_millis(50), ..Default::default() },
            )),
        };
        let (stop, _) = watch::channel(false);
        Ok(Local {
            api: Arc::new(api),
            store,
            queue,
            settings,
            worker: Arc::new(worker),
            owner,
            stop,
            tasks: JoinSet::new(),
        })
    }

    /// Changes the API before it is started (authentication, links, metrics).
    pub fn configure(&mut self, f: impl FnOnce(&mut Api)) {
        let api = Arc::get_mut(&mut self.api).expect("configured before the API is shared");
        f(api);
    }

    /// Starts the step workers, the sweeper and the lease's renewal.
    pub fn start(&mut self) {
        for n in 0..self.settings.workers.max(1) {
            let (queue, worker, settings, stop) =
                (self.queue.clone(), self.worker.clone(), self.settings.clone(), self.stop.subscribe());
            self.tasks.spawn(consume(n, queue, worker, settings, stop));
        }
        let (api, every, mut stop) = (self.api.clone(), self.settings.sweep_every, self.stop.subscribe());
        self.tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => return,
                }
                if let Err(e) = api.sweeper.sweep_now().await {
                    tracing::warn!(error = %e, "sweep failed");
                }
            }
        });
        let (store, owner, mut stop) = (self.store.clone(), self.owner.clone(), self.stop.subscribe());
        self.tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(LEASE_MS / 3)) => {}
                    _ = stop.changed() => return,
                }
                match store.lease(SERVE_LEASE, &owner, LEASE_MS, llmo_runtime::ports::now_ms()).await {
                    Ok(None) => {}
                    Ok(Some(o)) => tracing::error!(other = %o.owner, "another process took this state file's lease"),
                    Err(e) => tracing::warn!(error = %e, "renewing the state file's lease failed"),
                }
            }
        });
    }

    /// A stop signal the caller's other tasks (the HTTP server, schedules) may wait on.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Stops taking messages, lets the steps in flight finish for up to `grace`, and gives
    /// the file's lease up. Steps still running after that are abandoned unacknowledged: the
    /// next start delivers their messages again.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(?grace, "steps still running at shutdown are delivered again at the next start");
            self.tasks.abort_all();
        }
        if let Err(e) = self.store.release(SERVE_LEASE, &self.owner).await {
            tracing::warn!(error = %e, "giving the state file's lease up failed");
        }
    }
}

/// One step worker: receives a batch, dead-letters what was delivered too often, steps the
/// rest (chains in place), and acknowledges what was stored.
async fn consume(n: usize, queue: Arc<SqliteQueue>, worker: Arc<Worker>, s: Settings, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        let batch = match queue.receive(s.batch).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(worker = n, error = %e, "receiving from the queue failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if batch.is_empty() {
            tokio::select! {
                () = queue.idle(Duration::from_millis(500)) => {}
                _ = stop.changed() => return,
            }
            continue;
        }
        let (dead, live): (Vec<Delivery>, Vec<Delivery>) =
            batch.into_iter().partition(|d| d.receive_count > s.max_receives);
        for d in dead {
            let reason = format!(
                "message moved to the dead-letter queue: delivered {} times without being processed",
                d.receive_count - 1
            );
            let run = d.message.run_id().to_string();
            match worker.dead_letter(d.message.clone(), reason).await {
                Ok(_) | Err(llmo_runtime::worker::Error::NoSuchRun(_)) => ack(&queue, &d).await,
                Err(e) => tracing::warn!(%run, error = %e, "dead letter not handled yet"),
            }
        }
        if live.is_empty() {
            continue;
        }
        let until = llmo_runtime::ports::now_ms() + 10_000;
        let c = Continue { max_rounds: s.continue_steps, until };
        let results = worker.handle_batch_continuing(&live, c).await;
        for (d, r) in live.iter().zip(results) {
            match r {
                Ok(_) => ack(&queue, d).await,
                // Delivered again after the visibility timeout, dead-lettered past the limit.
                Err(e) => tracing::warn!(run = d.message.run_id(), error = %e, "step failed; delivered again later"),
            }
        }
    }
}

async fn ack(queue: &SqliteQueue, d: &Delivery) {
    if let Err(e) = queue.ack(&d.receipt).await {
        tracing::warn!(error = %e, "acknowledging a message failed; it is delivered again");
    }
}
