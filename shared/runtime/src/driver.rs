//! The embedded driver: runs one workflow run in this process, many attempts at once.
//!
//! One loop owns the run's state. Each turn it takes every event that has arrived (attempt
//! results, due retries, clock ticks), applies them with the engine, appends the resulting
//! transitions to the store in one compare-and-set write, and only then carries out their
//! commands: pure executors run in place, the others on tokio tasks (at most
//! `concurrency` at once), retries go on a timer list. A transition is therefore durable
//! before anything it caused happens, and batching turns many results that arrive together
//! into one write.
//!
//! Another writer (`llmo cancel`, or a second process resuming the same run) makes the next
//! append fail; the driver reloads the run and re-applies its pending events to it. While
//! idle it checks the stored version every `poll`, so a cancel is noticed within that time.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use llmo_core::engine::builtin::TaskError;
use llmo_core::engine::{AttemptId, Command, Event, Millis, Plan, RunParts, RunState, RunStatus, TaskStatus};
use serde_json::{Map, Value};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tracing::Instrument;

use llmo_core::engine::budget::spends;

use crate::executor::{Executor, Registry, failed};
use crate::ports::{BlobStore, Clock};
pub use crate::step::hooks::{HookOutcome, Observer, run_hooks};
use crate::step::{
    self,
    attempt::{prepare, run_with_timeout},
};
use crate::store::{self, RunStore, Transition, rebuild};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("no run `{0}` in this store")]
    NoSuchRun(String),
    #[error("run `{0}` stalled with nothing left to do (an engine bug)")]
    Stalled(String),
    /// Another process executes the run (its lease has not lapsed).
    #[error("run `{run}` is being executed by {} (its lease runs {}s more unless renewed)", owner.owner, owner.expires_at.saturating_sub(crate::ports::now_ms()).div_ceil(1000))]
    Owned { run: String, owner: store::Owner },
    /// This driver's lease was taken over (the process stalled past it): it stops.
    #[error("run `{0}` was taken over by another process; this one stopped executing it")]
    TakenOver(String),
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Attempts running at once on separate tasks (the workflow's `max_parallel` applies too).
    pub concurrency: usize,
    /// Write a snapshot after this many transitions (or twice the task count, if more), so
    /// loading replays at most that many.
    pub snapshot_every: u64,
    /// While waiting, how often to look for another writer (a cancel).
    pub poll: Duration,
    /// When the run ends by itself (a task failed it, its budget stopped it) while model
    /// calls run, how long to wait for their answers so that what they cost is counted.
    pub settle_grace: Duration,
    /// Who this driver is, as its runs' leases name it ([`store::Owner::this_process`]).
    pub owner: String,
    /// How long a run's lease lasts without renewal (renewed every third of it while the
    /// driver lives): how soon another process may take over a run whose owner died.
    pub lease: Duration,
    /// Woken by a writer in this process (an answer `llmo test` gives a waiting task): look
    /// for other writers now rather than at the next `poll`.
    pub nudge: Option<Arc<tokio::sync::Notify>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            concurrency: 64,
            snapshot_every: 4096,
            poll: Duration::from_millis(250),
            settle_grace: Duration::from_secs(30),
            owner: store::Owner::this_process(),
            lease: Duration::from_secs(10),
            nudge: None,
        }
    }
}

/// A run that ended: its final state and what its hooks did (hooks run in the process that
/// stored the run's last transition).
#[derive(Debug, Clone)]
pub struct Finished {
    pub state: RunState,
    pub hooks: Vec<HookOutcome>,
}

pub struct Driver {
    pub plan: Arc<Plan>,
    pub store: Arc<dyn RunStore>,
    pub executors: Arc<Registry>,
    pub clock: Arc<dyn Clock>,
    /// Where final outputs are checkpointed (`runs/<id>/outputs.json`), if anywhere.
    pub blobs: Option<Arc<dyn BlobStore>>,
    pub options: Options,
}

/// A run's lease while a driver drives it: dropped (the drive ended, or its future was
/// dropped), the renewal stops and the lease is given up (best effort; else it lapses).
struct Leased {
    renewer: JoinHandle<()>,
    store: Arc<dyn RunStore>,
    run_id: String,
    owner: String,
}

impl Drop for Leased {
    fn drop(&mut self) {
        self.renewer.abort();
        let (store, run_id, owner) =
            (self.store.clone(), std::mem::take(&mut self.run_id), std::mem::take(&mut self.owner));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.release(&run_id, &owner).await {
                    tracing::warn!(run = %run_id, error = %e, "the run's lease was not released (it lapses)");
                }
            });
        }
    }
}

/// A task's id, type and executor (if one is registered for its type).
type TaskInfo = (Arc<str>, Arc<str>, Option<Arc<dyn Executor>>);

struct Turn {
    st: RunState,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    inbox: Vec<Event>,
    timers: BTreeMap<(Millis, u64), Event>,
    timer_seq: u64,
    /// Attempts on their own tasks, by unit: the attempt number and its task. An entry leaves
    /// when its result is taken from the channel (or it is cancelled), so the map holds what
    /// is in flight and nothing is rescanned per attempt.
    running: HashMap<AttemptId, JoinHandle<()>>,
    /// Attempts to start once fewer than `ahead` are on tasks: a `for_each` of thousands
    /// builds and spawns its attempts as places free up, not all at its start (each holds its
    /// rendered `with` and context; the semaphore runs `concurrency` of them at a time).
    queued: VecDeque<AttemptId>,
    ahead: usize,
    since_snapshot: u64,
    /// Time spent applying the transitions since the last snapshot: what loading would spend
    /// replaying them ([`store::SNAPSHOT_AFTER`]).
    dear: std::time::Duration,
    ended: Option<RunStatus>,
    /// The run's `inputs` and `run` as templates see them (fixed once it has started).
    parts: Option<RunParts>,
    run_id: Arc<str>,
    /// Per task: its id, type and executor.
    tasks: Vec<TaskInfo>,
    /// Set when this driver's lease on the run was taken over: it stops at its next turn.
    lost: Arc<std::sync::atomic::AtomicBool>,
    /// What another writer's transitions asked for (an answer to a waiting task given with
    /// `llmo approve` from another process): carried out here, as if this driver had
    /// applied them.
    adopted: Vec<Command>,
}

impl Driver {
    /// Creates a run, starts it and drives it to its end.
    pub async fn start(
        &self,
        run_id: &str,
        inputs: Map<String, Value>,
        source_name: &str,
        source: &str,
        observer: &mut dyn Observer,
    ) -> Result<Finished, Error> {
        let st = self.plan.new_run(run_id, inputs);
        self.store.create(&self.plan.checked.workflow.metadata.name, source_name, source, &st).await?;
        self.acquire(run_id).await?;
        self.drive(st, vec![Event::Start], Vec::new(), observer).await
    }

    /// Starts a run already stored (by [`crate::start::Starter::create`]) and drives it to
    /// its end.
    pub async fn start_created(&self, st: RunState, observer: &mut dyn Observer) -> Result<Finished, Error> {
        self.acquire(&st.run_id).await?;
        self.drive(st, vec![Event::Start], Vec::new(), observer).await
    }

    /// Continues a stored run: attempts that were running run again, retries are re-armed,
    /// nothing that recorded its result runs again.
    ///
    /// One executor per run: a run another live process executes is refused
    /// ([`Error::Owned`]); one whose owner died (its lease lapsed) is taken over.
    pub async fn resume(&self, run_id: &str, observer: &mut dyn Observer) -> Result<Finished, Error> {
        if self.store.version(run_id).await?.is_none() {
            return Err(Error::NoSuchRun(run_id.to_string()));
        }
        self.acquire(run_id).await?;
        let st = match self.load(run_id).await {
            Ok(st) if !st.status.is_terminal() => st,
            other => {
                self.store.release(run_id, &self.options.owner).await?;
                return other.map(|state| Finished { state, hooks: Vec::new() });
            }
        };
        let (first, cmds) = if st.status == RunStatus::Pending {
            (vec![Event::Start], Vec::new())
        } else {
            (Vec::new(), self.plan.in_flight(&st))
        };
        self.drive(st, first, cmds, observer).await
    }

    /// Continues a failed or timed-out run from its failed tasks (`Event::Redrive`): tasks
    /// that succeeded keep their outputs; the others are decided and run again, with fresh
    /// retries. A run in any other state is returned as it is.
    /// `inputs`: edits to the run's inputs, checked by the caller
    /// ([`llmo_core::inputs::check_edits`]) and recorded with the redrive.
    pub async fn redrive(
        &self,
        run_id: &str,
        inputs: Option<Map<String, Value>>,
        observer: &mut dyn Observer,
    ) -> Result<Finished, Error> {
        self.acquire(run_id).await?;
        let st = match self.load(run_id).await {
            Ok(st) if matches!(st.status, RunStatus::Failed | RunStatus::TimedOut) => st,
            other => {
                self.store.release(run_id, &self.options.owner).await?;
                return other.map(|state| Finished { state, hooks: Vec::new() });
            }
        };
        let after = st.version;
        self.drive(st, vec![Event::Redrive { after, inputs }], Vec::new(), observer).await
    }

    /// Takes the run's lease for this driver ([`RunStore::lease`]); [`Driver::drive`] renews
    /// it while it drives and gives it up at the end.
    async fn acquire(&self, run_id: &str) -> Result<(), Error> {
        let ttl = self.options.lease.as_millis() as u64;
        let now = self.clock.now();
        match self.store.lease(run_id, &self.options.owner, ttl, now).await? {
            None => Ok(()),
            // Its owner was a process of this machine that is gone (kill -9): taken over now,
            // as it would be once the lease lapsed.
            Some(owner) if owner.dead_here() => {
                match self.store.lease(run_id, &self.options.owner, ttl, now.max(owner.expires_at)).await? {
                    None => Ok(()),
                    Some(owner) => Err(Error::Owned { run: run_id.to_string(), owner }),
                }
            }
            Some(owner) => Err(Error::Owned { run: run_id.to_string(), owner }),
        }
    }

    /// The run's current state; a replay that was dear leaves a snapshot, so the next load
    /// (another process's, a reader's) does not pay for it again.
    async fn load(&self, run_id: &str) -> Result<RunState, Error> {
        let stored = self.store.load(run_id).await?.ok_or_else(|| Error::NoSuchRun(run_id.to_string()))?;
        let started = std::time::Instant::now();
        let st = rebuild(&self.plan, stored)?;
        if started.elapsed() >= store::SNAPSHOT_AFTER {
            self.store.snapshot(&st).await?;
            crate::meter::dear_snapshot();
        }
        Ok(st)
    }

    async fn drive(
        &self,
        st: RunState,
        first: Vec<Event>,
        cmds: Vec<Command>,
        observer: &mut dyn Observer,
    ) -> Result<Finished, Error> {
        let span = tracing::info_span!(
            "run",
            run_id = %st.run_id,
            workflow = %self.plan.checked.workflow.metadata.name,
            status = tracing::field::Empty,
        );
        // The lease (taken by the caller) is renewed every third of its time while the run
        // is driven; if another process took it over meanwhile (this one stalled past it),
        // the driver stops at its next turn.
        let run_id = st.run_id.clone();
        let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let renewer = {
            let (store, owner, lost) = (self.store.clone(), self.options.owner.clone(), lost.clone());
            let (run_id, ttl, clock) = (run_id.clone(), self.options.lease, self.clock.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    match store.lease(&run_id, &owner, ttl.as_millis() as u64, clock.now()).await {
                        Ok(None) => {}
                        Ok(Some(other)) => {
                            tracing::warn!(run = %run_id, other = %other.owner, "the run's lease was taken over");
                            lost.store(true, std::sync::atomic::Ordering::SeqCst);
                            return;
                        }
                        Err(e) => tracing::warn!(run = %run_id, error = %e, "the run's lease was not renewed"),
                    }
                }
            })
        };
        // Dropped with the drive (an interrupted `llmo run`), it stops renewing and gives
        // the lease up.
        let lease = Leased { renewer, store: self.store.clone(), run_id, owner: self.options.owner.clone() };
        let r = self.drive_in(st, first, cmds, observer, lost).instrument(span.clone()).await;
        lease.renewer.abort();
        if let Err(e) = self.store.release(&lease.run_id, &lease.owner).await {
            tracing::warn!(run = %lease.run_id, error = %e, "the run's lease was not released (it lapses)");
        }
        drop(lease);
        if let Ok(f) = &r {
            span.record("status", f.state.status.as_str());
        }
        r
    }

    async fn drive_in(
        &self,
        st: RunState,
        first: Vec<Event>,
        cmds: Vec<Command>,
        observer: &mut dyn Observer,
        lost: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<Finished, Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        let sem = Arc::new(Semaphore::new(self.options.concurrency.max(1)));
        let st_run_id = st.run_id.clone();
        let mut t = Turn {
            st,
            tx,
            rx,
            inbox: first,
            timers: BTreeMap::new(),
            timer_seq: 0,
            running: HashMap::new(),
            // Twice the concurrency: attempts waiting for a concurrency key hold no permit, so
            // the ones behind them may still start.
            queued: VecDeque::new(),
            ahead: 2 * self.options.concurrency.max(1),
            since_snapshot: 0,
            dear: std::time::Duration::ZERO,
            lost: lost.clone(),
            ended: None,
            parts: None,
            run_id: Arc::from(st_run_id.as_str()),
            adopted: Vec::new(),
            tasks: self
                .plan
                .checked
                .workflow
                .spec
                .tasks
                .iter()
                .map(|t| (Arc::from(t.id.as_str()), Arc::from(t.ty.as_str()), self.executors.get(&t.ty).cloned()))
                .collect(),
        };
        let mut cmds = cmds;
        loop {
            if lost.load(std::sync::atomic::Ordering::SeqCst) {
                for (_, h) in t.running.drain() {
                    h.abort();
                }
                return Err(Error::TakenOver(t.st.run_id.clone()));
            }
            for cmd in cmds.drain(..) {
                self.carry_out(&mut t, cmd, &sem).await;
            }
            while t.running.len() < t.ahead
                && let Some(id) = t.queued.pop_front()
            {
                // Still to run as it was queued (not cancelled or ended since).
                let current = self.plan.is_running(&t.st, id);
                if current && t.ended.is_none() {
                    let AttemptId { task, item, attempt } = id;
                    self.carry_out(&mut t, Command::Execute { task, item, attempt }, &sem).await;
                }
            }
            if let Some(status) = t.ended {
                return self.finish(t, status, observer).await;
            }
            if t.inbox.is_empty() {
                self.wait(&mut t).await?;
                if !t.adopted.is_empty() {
                    // Another writer's transition (an answer): observers see its state.
                    observer.batch(&t.st, &[]);
                }
                if t.ended.is_some() {
                    // Another writer ended the run (a cancel): it runs the hooks.
                    for (_, h) in t.running.drain() {
                        h.abort();
                    }
                    return Ok(Finished { state: t.st, hooks: Vec::new() });
                }
            }
            while let Ok(e) = t.rx.try_recv() {
                t.inbox.push(e);
            }
            cmds = self.apply_batch(&mut t, observer).await?;
            cmds.append(&mut t.adopted);
        }
    }

    /// Takes the stored state after another writer moved the run, and adopts what it owes
    /// that this driver is not already doing: attempts it does not run, timers it has not
    /// set, waiters.
    async fn reload(&self, t: &mut Turn) -> Result<(), Error> {
        t.st = self.load(&t.st.run_id).await?;
        t.parts = None;
        // Looked up once per in-flight attempt: a set, not a scan of a queue of thousands.
        let queued: std::collections::HashSet<AttemptId> = t.queued.iter().copied().collect();
        for c in self.plan.in_flight(&t.st) {
            let known = match &c {
                Command::Execute { task, item, attempt } => {
                    let id = AttemptId { task: *task, item: *item, attempt: *attempt };
                    t.running.get(&id).is_some_and(|h| !h.is_finished()) || queued.contains(&id)
                }
                Command::ScheduleRetry { task, item, attempt, .. } => {
                    let e = Event::RetryDue { task: *task, item: *item, attempt: *attempt };
                    t.timers.values().any(|x| *x == e)
                }
                Command::ScheduleWake { task, item, attempt, .. } => {
                    let e = Event::WakeDue { task: *task, item: *item, attempt: *attempt };
                    t.timers.values().any(|x| *x == e)
                }
                _ => false,
            };
            if !known && !t.adopted.contains(&c) {
                t.adopted.push(c);
            }
        }
        Ok(())
    }

    /// Applies the inbox, stores it, returns the commands to carry out.
    async fn apply_batch(&self, t: &mut Turn, observer: &mut dyn Observer) -> Result<Vec<Command>, Error> {
        let started = std::time::Instant::now();
        loop {
            let expected = t.st.version;
            let before = t.st.status;
            let now = self.clock.now();
            for e in &t.inbox {
                if let Event::AttemptFinished { task, item, attempt, .. } = e {
                    // Its task sent this as its last act: it is over (or about to be).
                    t.running.remove(&AttemptId { task: *task, item: *item, attempt: *attempt });
                }
            }
            let step::commit::Applied { log: batch, cmds, took: applied, .. } =
                step::commit::apply(&self.plan, &mut t.st, t.inbox.drain(..), now);
            if batch.is_empty() {
                return Ok(cmds);
            }
            if self.store.append(expected, &batch, &t.st).await? {
                crate::meter::applied(&self.plan.checked.workflow.metadata.name, before, &t.st, &cmds);
                crate::meter::step("applied", started.elapsed().as_secs_f64());
                t.since_snapshot += batch.len() as u64;
                t.dear += applied;
                // A snapshot costs O(tasks): at most one per 2 × tasks transitions keeps that O(1)
                // per transition, and loading replays at most that many. Transitions dear to
                // apply (templates rendered: waits, budget holds, outputs) are snapshotted
                // after, so loading never pays more than `SNAPSHOT_AFTER` for them.
                let many = t.since_snapshot >= self.options.snapshot_every.max(2 * self.plan.task_count() as u64);
                if many || t.dear >= store::SNAPSHOT_AFTER {
                    self.store.snapshot(&t.st).await?;
                    if !many {
                        crate::meter::dear_snapshot();
                    }
                    t.since_snapshot = 0;
                    t.dear = std::time::Duration::ZERO;
                }
                observer.batch(&t.st, &batch);
                return Ok(cmds);
            }
            // Another writer moved the run: take its state and apply our events again.
            self.reload(t).await?;
            t.inbox.extend(batch.into_iter().map(|tr| tr.event));
            if t.st.status.is_terminal() {
                t.inbox.clear();
                t.ended = Some(t.st.status);
                return Ok(Vec::new());
            }
        }
    }

    async fn wait(&self, t: &mut Turn) -> Result<(), Error> {
        loop {
            // Read "anything still running" before looking in the channel: a task sends its
            // result before it finishes, so a finished task's result is then in the channel.
            let alive = t.running.values().any(|h| !h.is_finished());
            if !alive && !t.queued.is_empty() {
                // Every spawned attempt has ended (their results, if any, are in the channel,
                // which the loop reads next): their places go to the queued attempts. Only
                // attempts that panicked without a result stay in the map otherwise.
                t.running.clear();
                return Ok(());
            }
            if let Ok(e) = t.rx.try_recv() {
                t.inbox.push(e);
                return Ok(());
            }
            let next = t.timers.keys().next().map(|(at, _)| *at).into_iter().chain(t.st.deadline).min();
            // A unit waiting for an answer (with no timeout) keeps the run alive: its answer
            // comes through the store (see the version check below).
            let answerable = t.st.awaits_answer();
            if next.is_none() && !alive && !answerable {
                return Err(Error::Stalled(t.st.run_id.clone()));
            }
            let sleep = next.map_or(self.options.poll, |at| {
                Duration::from_millis(at.saturating_sub(self.clock.now())).min(self.options.poll)
            });
            tokio::select! {
                Some(e) = t.rx.recv() => {
                    t.inbox.push(e);
                    return Ok(());
                }
                _ = tokio::time::sleep(sleep) => {}
                _ = async {
                    match &self.options.nudge {
                        Some(n) => n.notified().await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
            if t.lost.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(());
            }
            let now = self.clock.now();
            while let Some(entry) = t.timers.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                t.inbox.push(entry.remove());
            }
            if t.st.deadline.is_some_and(|d| d <= now) {
                t.inbox.push(Event::Tick);
            }
            if !t.inbox.is_empty() {
                return Ok(());
            }
            // Idle: has another writer (a cancel) moved the run?
            if self.store.version(&t.st.run_id).await? != Some(t.st.version) {
                self.reload(t).await?;
                if t.st.status.is_terminal() {
                    t.ended = Some(t.st.status);
                    return Ok(());
                }
                if !t.adopted.is_empty() {
                    return Ok(());
                }
            }
        }
    }

    async fn carry_out(&self, t: &mut Turn, cmd: Command, sem: &Arc<Semaphore>) {
        match cmd {
            Command::Execute { task, item, attempt } => {
                let id = AttemptId { task, item, attempt };
                let (task_id, ty, exec) = &t.tasks[task];
                if !exec.as_ref().is_some_and(|e| e.inline()) && t.running.len() >= t.ahead {
                    t.queued.push_back(id);
                    return;
                }
                let ids = (t.run_id.clone(), task_id.clone(), ty.clone());
                let parts = t.parts.get_or_insert_with(|| self.plan.run_parts(&t.st, false));
                let (exec, a) = match prepare(&self.plan, &t.st, parts, ids, id, |ty| self.executors.get(ty).cloned()) {
                    Ok(x) => x,
                    Err(r) => {
                        t.inbox.push(id.finished(r));
                        return;
                    }
                };
                let ty = &a.ty;
                if exec.inline() {
                    let result = exec.execute(&a).await;
                    crate::meter::attempt(ty, &result);
                    t.inbox.push(id.finished(result));
                    return;
                }
                let tx = t.tx.clone();
                let sem = sem.clone();
                // A task's concurrency key, held in this process while the attempt runs.
                let key = step::keys::task_key_of(&self.plan, &t.st, id, &a.context);
                let holder = step::keys::attempt_holder(&t.run_id, id);
                let rank = step::keys::rank_of(&self.plan);
                let handle = tokio::spawn(
                    async move {
                        use crate::flow::Flow;
                        let flow = crate::flow::process_local();
                        let mut _held = None;
                        if let Some((key, limit)) = key {
                            while let Ok(false) = flow.enter(&key, &holder, limit, rank).await {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            _held = Some(crate::flow::KeyGuard { flow: flow.clone(), key, holder });
                        }
                        let Ok(_permit) = sem.acquire_owned().await else { return };
                        let result = run_with_timeout(exec.as_ref(), &a).await;
                        drop(_held);
                        let _ = tx.send(id.finished(result));
                    }
                    .in_current_span(),
                );
                if let Some(old) = t.running.insert(id, handle) {
                    old.abort();
                }
            }
            Command::ScheduleRetry { task, item, attempt, at } => {
                t.timer_seq += 1;
                t.timers.insert((at, t.timer_seq), Event::RetryDue { task, item, attempt });
            }
            Command::ScheduleWake { task, item, attempt, at } => {
                t.timer_seq += 1;
                t.timers.insert((at, t.timer_seq), Event::WakeDue { task, item, attempt });
            }
            Command::Await { task, item, attempt } => {
                if let Some(w) = crate::store::Waiter::of(&t.st, AttemptId { task, item, attempt })
                    && let Err(e) = self.store.put_waiter(&w).await
                {
                    tracing::error!(error = %e, "the waiting task could not be listed");
                }
            }
            Command::CancelRunning { tasks } => {
                // Model calls already sent are billed: they run on and report what they spent
                // (the engine counts it, once). Everything else stops now.
                let info = &t.tasks;
                t.running.retain(|id, h| {
                    if tasks.contains(&id.task) && !spends(&info[id.task].1) {
                        h.abort();
                        false
                    } else {
                        true
                    }
                });
                // Queued attempts never started: what they hold of the budget is given back.
                let mut kept = VecDeque::with_capacity(t.queued.len());
                for q in t.queued.drain(..) {
                    if tasks.contains(&q.task) {
                        t.inbox.push(q.finished(failed(TaskError::fatal("cut off before it started"))));
                    } else {
                        kept.push_back(q);
                    }
                }
                t.queued = kept;
            }
            Command::Finished { status } => t.ended = Some(status),
            // A child run started by an attempt that was cut off: the executor that started it
            // cancels it (its end is no longer awaited).
            Command::CancelRun { run_id } => {
                if let Some(exec) = self.executors.get(llmo_core::child::WORKFLOW)
                    && let Err(e) = exec.cancel(&run_id).await
                {
                    tracing::warn!(child = %run_id, error = %e, "the child run could not be cancelled");
                }
            }
        }
    }

    /// Waits (at most `options.settle_grace`) for the model calls still running when the run
    /// ended to answer, and stores what they spent: the provider bills a call that was sent,
    /// so the run counts it. Other attempts are stopped.
    async fn settle_cut_off(&self, t: &mut Turn, observer: &mut dyn Observer) -> Result<(), Error> {
        let until = tokio::time::Instant::now() + self.options.settle_grace;
        loop {
            // Looked at before the channel: an attempt sends its answer before it finishes,
            // so a finished one's answer is in the channel by then.
            let st = &t.st;
            let owed = t.running.iter().any(|(&id, h)| {
                !h.is_finished()
                    && spends(&t.tasks[id.task].1)
                    && st.tasks[id.task].units.get(id.unit()).is_some_and(|u| {
                        u.attempt == id.attempt && u.held.is_some() && u.status == TaskStatus::Cancelled
                    })
            });
            while let Ok(e) = t.rx.try_recv() {
                t.inbox.push(e);
            }
            if !t.inbox.is_empty() {
                // Applies what counts (answers of attempts cut off) and drops the rest.
                self.apply_batch(t, observer).await?;
                t.inbox.clear();
            }
            if !owed {
                return Ok(());
            }
            tokio::select! {
                Some(e) = t.rx.recv() => t.inbox.push(e),
                _ = tokio::time::sleep_until(until) => {
                    tracing::warn!(run = %t.st.run_id, "model calls still running when the run ended did not answer in time; what they hold stays counted as spent");
                    return Ok(());
                }
            }
        }
    }

    async fn finish(&self, mut t: Turn, status: RunStatus, observer: &mut dyn Observer) -> Result<Finished, Error> {
        self.settle_cut_off(&mut t, observer).await?;
        for (_, h) in t.running.drain() {
            h.abort();
        }
        self.store.snapshot(&t.st).await?;
        if let Some(blobs) = &self.blobs {
            let outputs = serde_json::json!({
                "run_id": t.st.run_id, "status": t.st.status.as_str(), "outputs": t.st.outputs, "error": t.st.error,
            });
            let key = format!("runs/{}/outputs.json", t.st.run_id);
            if let Err(e) = blobs.put(&key, serde_json::to_vec_pretty(&outputs).unwrap_or_default()).await {
                tracing::warn!(run = %t.st.run_id, error = %e, "could not checkpoint the outputs");
            }
        }
        let hooks = run_hooks(&self.plan, &self.executors, &t.st, status, observer).await;
        Ok(Finished { state: t.st, hooks })
    }
}

/// Cancels a stored run (compare-and-set, retried on a lost race). A driver running the run
/// notices at its next write or poll and stops. Returns the state after, or `None` if the
/// run had already ended.
pub async fn cancel(
    plan: &Plan,
    store: &dyn RunStore,
    clock: &dyn Clock,
    run_id: &str,
) -> Result<Option<RunState>, Error> {
    loop {
        let stored = store.load(run_id).await?.ok_or_else(|| Error::NoSuchRun(run_id.to_string()))?;
        let mut st = rebuild(plan, stored)?;
        if st.status.is_terminal() {
            return Ok(None);
        }
        let expected = st.version;
        let now = clock.now();
        if plan.apply(&mut st, &Event::Cancel, now).is_err() {
            return Ok(None);
        }
        let t = Transition::new(st.version, now, Event::Cancel);
        if store.append(expected, &[t], &st).await? {
            store.snapshot(&st).await?;
            return Ok(Some(st));
        }
    }
}

#[cfg(test)]
mod tests;
