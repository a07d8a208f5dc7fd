//! The queue-driven step: messages in, steps of runs, their consequences out. This is the
//! serverless runtime's unit of work (a batch of SQS messages, one Lambda invocation) and what
//! the deterministic simulation drives over the in-memory ports.
//!
//! Protocol, for a batch of messages (grouped by run; each run's group is one step):
//! 1. Load the run (snapshot + log; a warm worker keeps the state it last saw and reads only
//!    the transitions stored since).
//! 2. `Execute` of an attempt the stored run still has running (or each such attempt an
//!    `Attempts` message names): run it (the group's attempts run concurrently); its result
//!    is an event. Any other `Execute` (the attempt already finished, or the run ended)
//!    re-sends what its finishing transition asked for
//!    (`Plan::replay`): its first worker may have died between storing that transition and
//!    sending its commands.
//! 3. Apply the events and append them in one compare-and-set write; on a lost race, reload
//!    and apply again. An event already applied is ignored, and its commands are re-sent.
//! 4. Send the commands (`Execute` → queue, `ScheduleRetry` → delayed queue message,
//!    `Finished` → snapshot and hooks). Only then are the messages acknowledged (by the
//!    caller, on `Ok`).
//!
//! A crash anywhere leaves messages unacknowledged; they are delivered again and the steps
//! above make the second delivery finish the work without doing any transition twice.
//!
//! `handle_batch_continuing` also steps, in place, the one attempt a step asks for next (a
//! chain) while the batch's messages stay unacknowledged as the lease on that work; a message
//! delivered again replays what its transition owes through the attempts it started that have
//! finished in place since (`Plan::replay_chain`), which recovers work lost with a dead worker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use llmo_core::engine::{AttemptId, AttemptResult, Command, Event, Millis, Plan, RunState, RunStatus};
use llmo_core::source::SourceFile;
use llmo_core::validate::Validator;
use sha2::{Digest, Sha256};

use crate::executor::Registry;
use crate::ports::Clock;
use crate::queue::{Delivery, Message, Queue, QueueError};
use crate::step::attempt::{prepare, run_deferrable};
use crate::step::commit;
use crate::step::hooks::{Observer, run_hooks};
use crate::step::keys::{KEY_RETRY_MS, attempt_holder, rank_of, run_key_of, task_key_of};
use crate::store::{self, RunStore, Transition, rebuild};
use tracing::Instrument;

/// An attempt kept to run in place, with the trace context of the step that asked for it.
type Kept = (Message, Option<String>);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("no run `{0}`")]
    NoSuchRun(String),
    #[error("the stored workflow of run `{run}` does not validate: {why}")]
    BadWorkflow { run: String, why: String },
    /// The step of a run failed (every message of the run in the batch gets this).
    #[error("step of run `{0}` failed: {1}")]
    Step(String, String),
}

/// Retries of a lost compare-and-set write (another worker extended the run's log first):
/// after the `k`-th loss in a row the step waits a random time up to `base * 2^k` (at most
/// `cap`; "full jitter") before it reloads and re-applies, and after `max_lost` losses it gives
/// the messages back to the queue (they come back after the visibility timeout) instead of
/// competing further. Every lost write is billed, so contention must not grow unbounded.
#[derive(Debug, Clone, Copy)]
pub struct CasRetry {
    pub max_lost: u32,
    pub base: std::time::Duration,
    pub cap: std::time::Duration,
}

impl Default for CasRetry {
    fn default() -> Self {
        CasRetry { max_lost: 8, base: std::time::Duration::from_millis(10), cap: std::time::Duration::from_millis(500) }
    }
}

impl CasRetry {
    /// The wait after the `lost`-th loss: uniform in [0, min(cap, base * 2^lost)], drawn from a
    /// hash of the run, the clock and the count (deterministic under a simulated clock).
    pub fn delay(&self, run_id: &str, now: Millis, lost: u32) -> std::time::Duration {
        let ceiling = self.base.saturating_mul(1u32 << lost.min(16)).min(self.cap);
        let mut h = Sha256::new();
        h.update(run_id.as_bytes());
        h.update(now.to_le_bytes());
        h.update(lost.to_le_bytes());
        let r = u64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"));
        let nanos = ceiling.as_nanos() as u64;
        std::time::Duration::from_nanos(if nanos == 0 { 0 } else { r % (nanos + 1) })
    }
}

/// When the run's timeout must be checked, if this step owes that: a step that started the
/// run (or is a redelivery of its start, whose first worker may have died before sending it)
/// arms the deadline; a `Tick` that came early (another worker's clock) re-arms it. Only for a
/// workflow's own `spec.timeout`: the deployment's longest-run deadline (days away, which the
/// queue would carry by re-sending the message every 15 minutes) is left to the sweeper, which
/// reads deadlines every few minutes anyway. A child run's deadline (its parent task's
/// `timeout`) is armed too when it is within one delayed message (15 minutes). The embedded
/// driver keeps its own timer instead.
fn tick_due(plan: &Plan, events: &[Event], next: &RunState, now: Millis) -> Option<Millis> {
    const ONE_DELAY_MS: Millis = 15 * 60 * 1000;
    let child_soon = next.parent.is_some() && next.deadline.is_some_and(|d| d <= now.saturating_add(ONE_DELAY_MS));
    if plan.checked.workflow.spec.timeout.is_none() && !child_soon {
        return None;
    }
    let deadline = next.deadline.filter(|_| next.status == RunStatus::Running)?;
    let owes = events.iter().any(|e| matches!(e, Event::Start | Event::Redrive { .. }))
        || events.iter().any(|e| matches!(e, Event::Tick)) && deadline > now;
    owes.then_some(deadline)
}

/// What a step did, for logs and tests.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Stored transitions (up to this version) and sent their commands.
    Applied(u64),
    /// Nothing new to store; re-sent what an earlier transition asked for (if anything).
    Replayed,
    /// Handed this many events to the run's fold group (other workers were running attempts
    /// of the run): the step that folds them stores them and sends their commands.
    Deposited(usize),
}

/// How far [`Worker::handle_batch_continuing`] goes on in place.
#[derive(Debug, Clone, Copy)]
pub struct Continue {
    /// Rounds of steps after the batch's own.
    pub max_rounds: usize,
    /// Clock time after which no further round starts.
    pub until: Millis,
}

/// Finds the plan of a run by its id (`None`: build it from the workflow text stored with
/// the run).
pub type PlanOf = Arc<dyn Fn(&str) -> Option<Arc<Plan>> + Send + Sync>;

/// What a step's messages bring ([`Worker::intake`]).
struct Intake {
    events: Vec<Event>,
    /// Keys of transitions whose commands are owed again.
    owed: Vec<String>,
    /// Keys of redelivered messages: what they owe is followed through finished work.
    again: Vec<String>,
    /// Live attempts to run in this step.
    attempts: Vec<AttemptId>,
    /// Of those, the ones whose capacity was reserved before they were deferred.
    admitted: Vec<AttemptId>,
    /// Messages to send back delayed once the step's own work is done.
    deferred: Vec<(Message, Millis)>,
}

/// Runs whose state a warm worker keeps (beyond it, the cache starts again).
const CACHED_RUNS: usize = 512;

struct Cached {
    plan: Arc<Plan>,
    state: RunState,
    /// Time this worker spent replaying and applying the run's transitions since the last
    /// snapshot it knows of: what a load would spend ([`store::SNAPSHOT_AFTER`]).
    dear: std::time::Duration,
}

pub struct Worker {
    pub store: Arc<dyn RunStore>,
    pub queue: Arc<dyn Queue>,
    pub executors: Arc<Registry>,
    pub clock: Arc<dyn Clock>,
    /// The plan of a run (`None`: from the stored workflow text).
    pub plan: PlanOf,
    /// While attempts run, how often the store is read to see whether the run has ended
    /// meanwhile (a cancel from the API, a timeout), to stop them (`None`: never; default 2 s).
    pub watch_every: Option<std::time::Duration>,
    /// How lost compare-and-set writes are retried.
    pub cas: CasRetry,
    /// The fold queue: one that hands a run's messages to one consumer at a time (an SQS FIFO
    /// queue grouped by run, [`crate::queue::MemoryQueue::grouped`]). With it, a step of a run
    /// whose other attempts are running elsewhere does not race them for the log's next
    /// version: it sends its events there, and [`Worker::handle_folds`] applies every event
    /// waiting for the run in one append (see "Folds" in ARCHITECTURE.md). `None`: every
    /// step appends itself, retrying lost writes.
    pub fold: Option<Arc<dyn Queue>>,
    /// Where concurrency keys (`spec.concurrency.key`, a task's `concurrency`) are held: in
    /// this process by default, in DynamoDB for the serverless fleet.
    pub flow: Arc<dyn crate::flow::Flow>,
    /// Up to this many attempts of a run that are to run now go in one message
    /// ([`crate::queue::pack`]); they then run concurrently in one step, so a wide layer costs
    /// fewer messages, receives, deletes, deposits and invocations. 1 (the default) sends one
    /// `Execute` per attempt, which spreads them over the most workers.
    pub pack: usize,
    runs: Mutex<HashMap<String, Cached>>,
    plans: Mutex<HashMap<[u8; 32], Arc<Plan>>>,
}

impl Worker {
    pub fn new(
        store: Arc<dyn RunStore>,
        queue: Arc<dyn Queue>,
        executors: Arc<Registry>,
        clock: Arc<dyn Clock>,
        plan: PlanOf,
    ) -> Self {
        Worker {
            store,
            queue,
            executors,
            clock,
            plan,
            watch_every: Some(std::time::Duration::from_secs(2)),
            cas: CasRetry::default(),
            fold: None,
            flow: crate::flow::process_local(),
            pack: 1,
            runs: Mutex::default(),
            plans: Mutex::default(),
        }
    }

    /// A worker that builds every plan from the workflow text stored with its run.
    pub fn from_stored(
        store: Arc<dyn RunStore>,
        queue: Arc<dyn Queue>,
        executors: Arc<Registry>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self::new(store, queue, executors, clock, Arc::new(|_| None))
    }

    /// Handles one delivery. `Ok` means the message may be acknowledged; on `Err` it must not
    /// be (it is delivered again).
    pub async fn handle(&self, d: &Delivery) -> Result<Outcome, Error> {
        self.handle_batch(std::slice::from_ref(d)).await.pop().expect("one result per delivery")
    }

    /// Handles a batch of deliveries: one result per delivery, in order. The messages of one
    /// run make one step (one load, concurrent attempts, one write); runs go concurrently.
    pub async fn handle_batch(&self, ds: &[Delivery]) -> Vec<Result<Outcome, Error>> {
        self.handle_batch_with(ds, None, false, false).await
    }

    /// Handles one delivery appending its events itself, never depositing them on the fold
    /// queue (a lost write is retried): for a caller that must know whether its event was
    /// applied, like the API recording an answer (a deposited answer's outcome would be
    /// known only later, so racing answers could not be told apart).
    pub async fn handle_applying(&self, d: &Delivery) -> Result<Outcome, Error> {
        self.handle_batch_with(std::slice::from_ref(d), None, false, true).await.pop().expect("one result per delivery")
    }

    /// Handles a batch from the fold queue: the events other steps deposited, each run's
    /// applied in one append (a lost write, to the API or a worker that stepped a run alone,
    /// is retried as ever), then their commands are sent. Never deposits again.
    pub async fn handle_folds(&self, ds: &[Delivery]) -> Vec<Result<Outcome, Error>> {
        self.handle_batch_with(ds, None, false, true).await
    }

    /// [`Worker::handle_batch`], then the work it caused, in place: while a round's steps
    /// ask for exactly one attempt to run now (a chain), it is stepped here instead of being
    /// sent, for at most `c.max_rounds` rounds or until `c.until` (clock time). What is left
    /// is sent; wider work goes through the queue, spread over workers. This saves a queue
    /// round trip (a send, a receive, a delete and an invocation) per step of a chain.
    ///
    /// The caller must keep the batch's messages unacknowledged (and invisible) until this
    /// returns: they are the lease on the work done in place. If this process dies, they are
    /// delivered again, and a message delivered again whose transition is already applied
    /// sends what that transition owes followed along the chain (`Plan::replay_chain`), which
    /// recovers the step in place that was lost.
    pub async fn handle_batch_continuing(&self, ds: &[Delivery], c: Continue) -> Vec<Result<Outcome, Error>> {
        let kept = Mutex::new(Vec::new());
        let mut results = self.handle_batch_with(ds, Some(&kept), false, false).await;
        let mut pending: Vec<Kept> = kept.into_inner().expect("kept messages");
        let mut failed = Vec::new();
        let mut rounds = 0;
        while pending.len() == 1 && rounds < c.max_rounds && self.clock.now() < c.until {
            rounds += 1;
            let round: Vec<Delivery> = pending
                .drain(..)
                .map(|(message, trace)| Delivery { receipt: String::new(), message, receive_count: 1, trace })
                .collect();
            let kept = Mutex::new(Vec::new());
            let done = self.handle_batch_with(&round, Some(&kept), true, false).await;
            pending = kept.into_inner().expect("kept messages");
            // A step that failed here goes through the queue (and its retries), as it would have.
            failed.extend(round.into_iter().zip(done).filter(|(_, r)| r.is_err()).map(|(d, _)| (d.message, d.trace)));
        }
        pending.extend(failed);
        if !pending.is_empty() {
            // Sent in the trace of the step that asked for them (the first one's, when several).
            let span = tracing::info_span!("send", messages = pending.len());
            crate::telemetry::adopt(&span, pending[0].1.as_deref());
            let out: Vec<(Message, Millis)> = pending.into_iter().map(|(m, _)| (m, 0)).collect();
            let out = crate::queue::pack(out, self.pack);
            if let Err(e) = self.queue.send_batch(&out).instrument(span).await {
                // Not acknowledged: the batch is delivered again and replays what was lost.
                let why = e.to_string();
                for (d, r) in ds.iter().zip(results.iter_mut()) {
                    *r = Err(Error::Step(d.message.run_id().to_string(), why.clone()));
                }
            }
        }
        results
    }

    /// `in_place`: `ds` are attempts kept by the previous round, never sent to the queue.
    /// `folding`: `ds` come from the fold queue.
    async fn handle_batch_with(
        &self,
        ds: &[Delivery],
        keep: Option<&Mutex<Vec<Kept>>>,
        in_place: bool,
        folding: bool,
    ) -> Vec<Result<Outcome, Error>> {
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, d) in ds.iter().enumerate() {
            let run = d.message.run_id();
            match groups.iter_mut().find(|(r, _)| *r == run) {
                Some((_, idx)) => idx.push(i),
                None => groups.push((run, vec![i])),
            }
        }
        let steps = groups.iter().map(|(run, idx)| {
            let msgs: Vec<(&Message, bool)> = idx.iter().map(|&i| (&ds[i].message, ds[i].receive_count > 1)).collect();
            let trace = idx.iter().find_map(|&i| ds[i].trace.as_deref());
            async move { self.step(run, &msgs, keep, in_place, folding, trace).await }
        });
        let done = futures::future::join_all(steps).await;
        let mut out: Vec<Option<Result<Outcome, Error>>> = (0..ds.len()).map(|_| None).collect();
        for ((run, idx), r) in groups.iter().zip(done) {
            match r {
                Ok(o) => idx.iter().for_each(|&i| out[i] = Some(Ok(o.clone()))),
                Err(e) => {
                    let why = e.to_string();
                    tracing::warn!(run = %run, error = %e, "step failed; its messages will be delivered again");
                    // The first message keeps the error as it is (the dead-letter handler tells
                    // a run that cannot load from one that failed a step); the others get it
                    // as text.
                    let mut first = Some(e);
                    for &i in idx {
                        out[i] = Some(Err(first.take().unwrap_or_else(|| Error::Step(run.to_string(), why.clone()))));
                    }
                }
            }
        }
        out.into_iter().map(|r| r.expect("every delivery has a result")).collect()
    }

    /// One step of one run over its messages in this batch.
    /// Each message comes with whether it was delivered before (it may then be the lease of
    /// a chain stepped in place by a worker that died: see `Plan::replay_chain`).
    /// In a `step` span, a child of `trace` (the trace context its first message carried).
    async fn step(
        &self,
        run_id: &str,
        msgs: &[(&Message, bool)],
        keep: Option<&Mutex<Vec<Kept>>>,
        in_place: bool,
        folding: bool,
        trace: Option<&str>,
    ) -> Result<Outcome, Error> {
        let span = tracing::info_span!(
            "step",
            run_id,
            workflow = tracing::field::Empty,
            messages = msgs.len(),
            in_place,
            folding,
            version = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        crate::telemetry::adopt(&span, trace);
        let started = std::time::Instant::now();
        let r = self.step_in(run_id, msgs, keep, in_place, folding).instrument(span.clone()).await;
        let outcome = match &r {
            Ok(Outcome::Applied(v)) => {
                span.record("version", v);
                "applied"
            }
            Ok(Outcome::Replayed) => "replayed",
            Ok(Outcome::Deposited(_)) => "deposited",
            Err(_) => "failed",
        };
        span.record("outcome", outcome);
        crate::meter::step(outcome, started.elapsed().as_secs_f64());
        r
    }

    /// One step of a run: what the messages bring, the attempts they name run here, and the
    /// batch committed (or deposited for the fold).
    async fn step_in(
        &self,
        run_id: &str,
        msgs: &[(&Message, bool)],
        keep: Option<&Mutex<Vec<Kept>>>,
        in_place: bool,
        folding: bool,
    ) -> Result<Outcome, Error> {
        let (plan, st) = self.load(run_id).await?;
        tracing::Span::current().record("workflow", plan.checked.workflow.metadata.name.as_str());
        let mut intake = self.intake(run_id, &plan, &st, msgs, in_place).await?;
        if !intake.attempts.is_empty() {
            let Some((events, deferred)) =
                self.run_attempts(run_id, &plan, &st, &intake.attempts, &intake.admitted, in_place).await
            else {
                return Ok(Outcome::Replayed);
            };
            intake.events.extend(events);
            intake.deferred.extend(deferred);
        }
        self.commit(run_id, plan, st, intake, keep, folding).await
    }

    /// What the messages bring: events to apply, what finished work owes again, the live
    /// attempts to run here. A packed message delivered again sends its live attempts back one
    /// per message; a run whose concurrency key is full has its `Start` deferred.
    async fn intake(
        &self,
        run_id: &str,
        plan: &Plan,
        st: &RunState,
        msgs: &[(&Message, bool)],
        in_place: bool,
    ) -> Result<Intake, Error> {
        let mut events: Vec<Event> = Vec::new();
        let mut owed: Vec<String> = Vec::new();
        // Keys of redelivered messages: what they owe is followed through finished work.
        let mut again: Vec<String> = Vec::new();
        let mut attempts: Vec<AttemptId> = Vec::new();
        let mut deferred: Vec<(Message, Millis)> = Vec::new();
        // Attempts whose capacity was reserved before they were deferred.
        let mut admitted_ids: Vec<AttemptId> = Vec::new();
        // The attempts the messages name, with whether their message was delivered before and
        // whether it was a packed message delivered again.
        let mut named: Vec<(AttemptId, bool, bool)> = Vec::new();
        for &(m, redelivered) in msgs {
            match m {
                Message::Event { event, .. } => {
                    if redelivered {
                        again.push(event.key());
                    }
                    if !events.iter().any(|e| e.key() == event.key()) {
                        events.push(event.clone());
                    }
                }
                Message::Events { events: deposited, .. } => {
                    for event in deposited {
                        if redelivered {
                            again.push(event.key());
                        }
                        if !events.iter().any(|e| e.key() == event.key()) {
                            events.push(event.clone());
                        }
                    }
                }
                &Message::Execute { task, item, attempt, admitted, .. } => {
                    let id = AttemptId { task, item, attempt };
                    if admitted {
                        admitted_ids.push(id);
                    }
                    named.push((id, redelivered, false));
                }
                Message::Attempts { attempts: these, .. } => {
                    named.extend(these.iter().map(|a| (*a, redelivered, redelivered && !in_place)))
                }
            }
        }
        // Run an attempt the stored run still has running; for any other, what its finishing
        // transition asked for is owed again (through what it stepped in place, when its
        // message is delivered again: `Plan::replay_chain`). A packed message delivered again
        // (its first delivery failed, or its worker died) does not run its live attempts
        // together again: they go back one per message, so that one that crashes or outlasts
        // every invocation it is in is dead-lettered alone, not with those packed beside it.
        let mut unpacked: Vec<(Message, Millis)> = Vec::new();
        for (id, redelivered, split) in named {
            let live = plan.is_running(st, id);
            if !live {
                let key = id.finished_key();
                if redelivered {
                    again.push(key.clone());
                }
                owed.push(key);
            } else if split {
                let AttemptId { task, item, attempt } = id;
                let m = Message::Execute { run_id: run_id.to_string(), task, item, attempt, admitted: false };
                if !unpacked.contains(&(m.clone(), 0)) {
                    unpacked.push((m, 0));
                }
            } else if !attempts.contains(&id) {
                attempts.push(id);
            }
        }
        if !unpacked.is_empty() {
            // Sent before anything is stored: they are running in the stored state already, and
            // sending one twice (this step failing and coming back) is harmless.
            tracing::info!(
                attempts = unpacked.len(),
                "a packed message delivered again: its running attempts go back one per message"
            );
            self.queue.send_batch(&unpacked).await?;
            crate::meter::unpacked(unpacked.len());
        }
        // A run with a concurrency key starts only when it holds its key: otherwise its Start
        // comes back later and the run stays pending.
        if st.status == RunStatus::Pending
            && events.iter().any(|e| matches!(e, Event::Start))
            && let Some((key, limit)) = run_key_of(plan, st)
            && !self.enter_key(&key, run_id, limit, rank_of(plan)).await
        {
            events.retain(|e| !matches!(e, Event::Start));
            let m = Message::Event { run_id: run_id.to_string(), event: Event::Start };
            deferred.push((m, KEY_RETRY_MS + self.cas.delay(run_id, self.clock.now(), 4).as_millis() as Millis));
        }
        Ok(Intake { events, owed, again, attempts, admitted: admitted_ids, deferred })
    }

    /// Runs the attempts under their task concurrency keys: their results, and those deferred
    /// for want of shared capacity (back to the queue, delayed). `None` when the run ended
    /// meanwhile (the attempts were stopped; nothing of them is stored).
    async fn run_attempts(
        &self,
        run_id: &str,
        plan: &Arc<Plan>,
        st: &RunState,
        attempts: &[AttemptId],
        admitted_ids: &[AttemptId],
        in_place: bool,
    ) -> Option<(Vec<Event>, Vec<(Message, Millis)>)> {
        let mut events = Vec::new();
        let mut deferred = Vec::new();
        let parts = plan.run_parts(st, false);
        let runs = attempts.iter().map(|&id| {
            let (plan, st, parts) = (plan, st, &parts);
            let admitted = admitted_ids.contains(&id);
            async move {
                let t = &plan.checked.workflow.spec.tasks[id.task];
                let ids = (Arc::from(run_id), Arc::from(t.id.as_str()), Arc::from(t.ty.as_str()));
                let result = match prepare(plan, st, parts, ids, id, |ty| self.executors.get(ty).cloned()) {
                    Ok((exec, a)) if exec.detaches() => match exec.detach(&a).await {
                        // Started elsewhere (a child run): its result comes later.
                        Ok(()) => return Ok(None),
                        // Not started for now (a store or queue error, perhaps after
                        // the child was stored): the same attempt again shortly, which
                        // finds what it stored, rather than a new attempt and child.
                        Err(AttemptResult::Failed { retryable: true, error, .. }) => {
                            tracing::warn!(
                                run = run_id,
                                task = %t.id,
                                %error,
                                "a detached attempt could not start; it is tried again"
                            );
                            let delay = self.cas.delay(&attempt_holder(run_id, id), self.clock.now(), 4);
                            let after = std::time::Duration::from_millis(KEY_RETRY_MS + delay.as_millis() as Millis);
                            return Err((id, crate::executor::Deferred { after, admitted: false }));
                        }
                        Err(r) => r,
                    },
                    Ok((exec, mut a)) => {
                        a.admitted = admitted;
                        // A task's concurrency key: held while the attempt runs.
                        let key = task_key_of(plan, st, id, &a.context);
                        let holder = attempt_holder(run_id, id);
                        if let Some((key, limit)) = &key
                            && !self.enter_key(key, &holder, *limit, rank_of(plan)).await
                        {
                            let after = std::time::Duration::from_millis(
                                KEY_RETRY_MS + self.cas.delay(&holder, self.clock.now(), 4).as_millis() as Millis,
                            );
                            return Err((id, crate::executor::Deferred { after, admitted: false }));
                        }
                        let r = run_deferrable(exec.as_ref(), &a).await;
                        if let Some((key, _)) = &key {
                            self.flow.leave(key, &holder).await;
                        }
                        match r {
                            Ok(r) => r,
                            Err(d) => return Err((id, d)),
                        }
                    }
                    Err(r) => r,
                };
                Ok(Some(Event::AttemptFinished { task: id.task, item: id.item, attempt: id.attempt, result, in_place }))
            }
        });
        let all = futures::future::join_all(runs);
        let results = match self.watch_every {
            None => all.await,
            Some(every) => tokio::select! {
                r = all => r,
                why = self.ended_meanwhile(run_id, st.version, every) => {
                    // Dropping the attempts aborts their model and HTTP calls; nothing of
                    // them is stored, and the messages are done with.
                    tracing::info!(run = run_id, %why, "the run ended while its attempts ran; they were stopped");
                    return None;
                }
            },
        };
        for r in results {
            match r {
                Ok(e) => events.extend(e),
                // Not started for want of shared capacity: back to the queue, delayed
                // (sent once the step's own work is done; nothing is stored for it).
                Err((id, d)) => {
                    let m = Message::Execute {
                        run_id: run_id.to_string(),
                        task: id.task,
                        item: id.item,
                        attempt: id.attempt,
                        admitted: d.admitted,
                    };
                    deferred.push((m, d.after.as_millis() as Millis));
                }
            }
        }
        Some((events, deferred))
    }

    /// Applies the step's events to the stored state and appends them (compare-and-set), or
    /// deposits them on the fold queue when other attempts of the run are running; then sends
    /// what they ask for, arms the run's tick and sends what was deferred.
    async fn commit(
        &self,
        run_id: &str,
        plan: Arc<Plan>,
        mut st: RunState,
        intake: Intake,
        keep: Option<&Mutex<Vec<Kept>>>,
        folding: bool,
    ) -> Result<Outcome, Error> {
        let Intake { events, owed, again, attempts, deferred, .. } = intake;
        let workflow = plan.checked.workflow.metadata.name.as_str();
        // Other attempts of the run are running (elsewhere, or later in this worker): their
        // results would race this step's for the log's next version, so this step's events go
        // to the fold queue. A step that is all the run has running (a chain, a start, a
        // retry falling due in a quiet run) appends itself, saving the fold's round trip.
        let mut deposit = !folding && self.fold.is_some() && st.running as usize > attempts.len();
        let mut lost = 0u32;
        loop {
            let expected = st.version;
            let now = self.clock.now();
            let mut next = st.clone();
            let commit::Applied { log, mut cmds, unchanged, took: applied } =
                commit::apply(&plan, &mut next, events.iter().cloned(), now);
            let keys: Vec<String> = owed.iter().cloned().chain(unchanged).collect();
            commit::owed(&plan, &next, &keys, &again, &mut cmds);
            let tick = tick_due(&plan, &events, &next, now);
            if log.is_empty() {
                self.send(&plan, &next, cmds, keep).await?;
                self.arm(run_id, tick, now).await?;
                self.defer(&deferred).await?;
                return Ok(Outcome::Replayed);
            }
            if deposit && let Some(fold) = &self.fold {
                // What earlier transitions owe is sent from here; what these events cause, by
                // the step that folds them (which applies them to the state it reads then).
                let mut owed_now: Vec<Command> = Vec::new();
                commit::owed(&plan, &st, &keys, &again, &mut owed_now);
                // One message: a fold reads many deposits per receive.
                let events: Vec<Event> = log.iter().map(|t| t.event.clone()).collect();
                let n = events.len();
                fold.send(&Message::Events { run_id: run_id.to_string(), events }, 0).await?;
                crate::meter::deposited(n);
                self.send(&plan, &st, owed_now, keep).await?;
                self.defer(&deferred).await?;
                return Ok(Outcome::Deposited(n));
            }
            match self.store.append(expected, &log, &next).await {
                Ok(true) => {
                    crate::meter::applied(workflow, st.status, &next, &cmds);
                    let version = next.version;
                    self.remember_snapshotting(&plan, &next, applied).await?;
                    self.send(&plan, &next, cmds, keep).await?;
                    self.arm(run_id, tick, now).await?;
                    self.defer(&deferred).await?;
                    return Ok(Outcome::Applied(version));
                }
                Ok(false) => {
                    lost += 1;
                    crate::meter::cas_lost(1);
                    if !folding && self.fold.is_some() {
                        // Someone else moved the run: hand the events to the fold queue
                        // rather than race again.
                        deposit = true;
                    } else if lost >= self.cas.max_lost {
                        return Err(Error::Step(
                            run_id.to_string(),
                            format!("lost {lost} compare-and-set writes in a row; handed back to the queue"),
                        ));
                    } else {
                        tokio::time::sleep(self.cas.delay(run_id, now, lost)).await;
                    }
                    st = self.load(run_id).await?.1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Resolves when the run has ended (cancelled, aborted, timed out) since `version`,
    /// looking every `every`; never otherwise.
    async fn ended_meanwhile(&self, run_id: &str, version: u64, every: std::time::Duration) -> String {
        loop {
            tokio::time::sleep(every).await;
            let Ok(Some(tail)) = self.store.load_since(run_id, version).await else { continue };
            for t in tail {
                match t.event {
                    Event::Cancel => return "cancelled".into(),
                    Event::Abort { reason } => return format!("aborted: {reason}"),
                    Event::Tick => return "timed out".into(),
                    _ => {}
                }
            }
        }
    }

    /// Takes a place under the concurrency key `key` for `holder`; when it is full, first
    /// drops the holders that ended without leaving (a worker died between the two), then
    /// tries once more. The shared state unreachable (or refusing the key) keeps the holder
    /// out (logged): a limit that cannot be checked is not passed, the attempt or run comes
    /// back later.
    async fn enter_key(&self, key: &str, holder: &str, limit: u32, rank: u8) -> bool {
        match self.flow.enter(key, holder, limit, rank).await {
            Ok(true) => return true,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(key, error = %e, "concurrency key not checked: held back");
                return false;
            }
        }
        let mut freed = false;
        for h in self.flow.holders(key).await {
            if h != holder && !self.still_holds(&h).await {
                tracing::info!(key, holder = %h, "dropping a concurrency key holder that has ended");
                self.flow.leave(key, &h).await;
                freed = true;
            }
        }
        freed && self.flow.enter(key, holder, limit, rank).await.unwrap_or(false)
    }

    /// Whether a key's holder is still live: a run not ended, or an attempt its run still
    /// has running. When in doubt (the store cannot answer), it is.
    async fn still_holds(&self, holder: &str) -> bool {
        let mut parts = holder.split('/');
        let run = parts.next().unwrap_or_default();
        let (plan, st) = match self.load(run).await {
            Ok(x) => x,
            // A run that no longer loads (its workflow does not validate, its log does not
            // replay) is aborted, never running: it holds nothing.
            Err(Error::NoSuchRun(_) | Error::BadWorkflow { .. } | Error::Store(store::Error::Corrupt { .. })) => {
                return false;
            }
            Err(_) => return true,
        };
        let (Some(task), Some(item), Some(attempt)) = (parts.next(), parts.next(), parts.next()) else {
            return !st.status.is_terminal();
        };
        let (Ok(task), Ok(attempt)) = (task.parse::<usize>(), attempt.parse::<u32>()) else { return false };
        let id = AttemptId { task, item: item.parse().ok(), attempt };
        plan.is_running(&st, id)
    }

    /// Sends the attempts that were deferred back to the queue, each with its delay.
    async fn defer(&self, deferred: &[(Message, Millis)]) -> Result<(), Error> {
        if !deferred.is_empty() {
            crate::meter::deferred(deferred.len());
            self.queue.send_batch(deferred).await?;
        }
        Ok(())
    }

    /// Sends the `Tick` that checks the deadline `at` (the queue carries delays past SQS's
    /// 15-minute limit).
    async fn arm(&self, run_id: &str, at: Option<Millis>, now: Millis) -> Result<(), Error> {
        if let Some(at) = at {
            let tick = Message::Event { run_id: run_id.to_string(), event: Event::Tick };
            self.queue.send(&tick, at.saturating_sub(now)).await?;
        }
        Ok(())
    }

    /// Fails a run whose messages cannot be processed (the dead-letter handler's verdict).
    /// Through the engine when the run still loads, so its `on.failure` hooks run; when it
    /// does not (its stored workflow no longer validates, its log no longer replays), by
    /// appending the `Abort` transition with a head state marked `failed` without the engine,
    /// so that listings and status show the run ended and why. `Ok(Outcome::Replayed)` when
    /// the run had already ended.
    pub async fn abort(&self, run_id: &str, reason: String) -> Result<Outcome, Error> {
        let event = Event::Abort { reason: reason.clone() };
        let d = Delivery {
            receipt: String::new(),
            message: Message::Event { run_id: run_id.to_string(), event: event.clone() },
            receive_count: 1,
            trace: crate::telemetry::traceparent(),
        };
        match self.handle(&d).await {
            Err(Error::BadWorkflow { why, .. }) => {
                tracing::warn!(run = run_id, %why, "aborting a run that does not load")
            }
            Err(Error::Store(store::Error::Corrupt { why, .. })) => {
                tracing::warn!(run = run_id, %why, "aborting a run whose log does not replay")
            }
            other => return other,
        }
        for _ in 0..5 {
            let stored = self.store.load(run_id).await?.ok_or_else(|| Error::NoSuchRun(run_id.to_string()))?;
            let version = stored.tail.last().map_or(stored.snapshot.version, |t| t.version);
            if stored.snapshot.status.is_terminal() && stored.tail.is_empty() {
                return Ok(Outcome::Replayed);
            }
            let now = self.clock.now();
            let mut head = stored.snapshot;
            head.status = RunStatus::Failed;
            head.error = Some(reason.clone());
            head.ended_at = Some(now);
            head.version = version + 1;
            let t = Transition::new(version + 1, now, event.clone());
            if self.store.append(version, &[t], &head).await? {
                self.runs.lock().expect("worker cache").remove(run_id);
                return Ok(Outcome::Applied(head.version));
            }
        }
        Err(Error::Step(run_id.to_string(), "the run kept changing while it was being aborted".into()))
    }

    /// The plan and current state of a run: the cached state brought up to date, or loaded.
    async fn load(&self, run_id: &str) -> Result<(Arc<Plan>, RunState), Error> {
        let cached = {
            let runs = self.runs.lock().expect("worker cache");
            runs.get(run_id).map(|c| (c.plan.clone(), c.state.clone()))
        };
        if let Some((plan, mut st)) = cached {
            let tail = self.store.load_since(run_id, st.version).await?;
            let tail = tail.ok_or_else(|| Error::NoSuchRun(run_id.to_string()))?;
            if !tail.is_empty() {
                let started = std::time::Instant::now();
                st = rebuild(&plan, store::StoredRun::tail_only(st, tail))?;
                self.remember_snapshotting(&plan, &st, started.elapsed()).await?;
            }
            return Ok((plan, st));
        }
        let stored = self.store.load(run_id).await?.ok_or_else(|| Error::NoSuchRun(run_id.to_string()))?;
        let plan = match (self.plan)(run_id) {
            Some(p) => p,
            None => self.plan_of(run_id, &stored.source_name, &stored.source)?,
        };
        let started = std::time::Instant::now();
        let st = rebuild(&plan, stored)?;
        self.remember_snapshotting(&plan, &st, started.elapsed()).await?;
        Ok((plan, st))
    }

    /// [`Worker::remember`], and a snapshot of `st` when the transitions since the last one
    /// have become dear to replay.
    async fn remember_snapshotting(
        &self,
        plan: &Arc<Plan>,
        st: &RunState,
        dear: std::time::Duration,
    ) -> Result<(), Error> {
        if self.remember(plan, st, dear) {
            self.store.snapshot(st).await?;
            crate::meter::dear_snapshot();
        }
        Ok(())
    }

    /// The plan of a workflow text (compiled once per distinct text).
    fn plan_of(&self, run_id: &str, name: &str, source: &str) -> Result<Arc<Plan>, Error> {
        let key: [u8; 32] = Sha256::digest(source.as_bytes()).into();
        if let Some(p) = self.plans.lock().expect("plan cache").get(&key) {
            return Ok(p.clone());
        }
        let outcome = Validator::shared().validate(&SourceFile::new(name.to_string(), source.to_string()));
        let checked = outcome.checked.ok_or_else(|| Error::BadWorkflow {
            run: run_id.to_string(),
            why: outcome
                .report
                .records()
                .iter()
                .map(|r| format!("{}: {}", r.code, r.message))
                .collect::<Vec<_>>()
                .join("; "),
        })?;
        let plan = Arc::new(Plan::new(checked));
        self.plans.lock().expect("plan cache").insert(key, plan.clone());
        Ok(plan)
    }

    /// Keeps `st` for the run's next step. `dear` is what reaching it from the kept state
    /// cost (replaying or applying transitions); `true` when the cost since the last snapshot
    /// reached [`store::SNAPSHOT_AFTER`]: the caller snapshots `st` (an ended run's last
    /// step snapshots it anyway).
    fn remember(&self, plan: &Arc<Plan>, st: &RunState, dear: std::time::Duration) -> bool {
        let mut runs = self.runs.lock().expect("worker cache");
        if st.status.is_terminal() {
            runs.remove(&st.run_id);
            return false;
        }
        if runs.len() >= CACHED_RUNS && !runs.contains_key(&st.run_id) {
            runs.clear();
        }
        let dear = runs.get(&st.run_id).map_or(dear, |c| c.dear + dear);
        let due = dear >= store::SNAPSHOT_AFTER;
        let dear = if due { std::time::Duration::ZERO } else { dear };
        runs.insert(st.run_id.clone(), Cached { plan: plan.clone(), state: st.clone(), dear });
        due
    }

    /// Carries out a step's commands; with `keep`, the attempts to run now are put there
    /// instead of on the queue (see [`Worker::handle_batch_continuing`]).
    async fn send(
        &self,
        plan: &Arc<Plan>,
        st: &RunState,
        cmds: Vec<Command>,
        keep: Option<&Mutex<Vec<Kept>>>,
    ) -> Result<(), Error> {
        let run_id = &st.run_id;
        let mut out = Vec::new();
        let mut finished = None;
        for c in cmds {
            match c {
                Command::Execute { task, item, attempt } => {
                    let m = Message::Execute { run_id: run_id.clone(), task, item, attempt, admitted: false };
                    match keep {
                        Some(k) => k.lock().expect("kept messages").push((m, crate::telemetry::traceparent())),
                        None => out.push((m, 0)),
                    }
                }
                Command::ScheduleRetry { task, item, attempt, at } => {
                    let delay = at.saturating_sub(self.clock.now());
                    let event = Event::RetryDue { task, item, attempt };
                    out.push((Message::Event { run_id: run_id.clone(), event }, delay));
                }
                // A delayed message (re-sent every 15 minutes past SQS's delay limit): nothing
                // runs or polls while the unit waits.
                Command::ScheduleWake { task, item, attempt, at } => {
                    let delay = at.saturating_sub(self.clock.now());
                    let event = Event::WakeDue { task, item, attempt };
                    out.push((Message::Event { run_id: run_id.clone(), event }, delay));
                }
                // Findable by `POST /events` and the lists of waiting tasks.
                Command::Await { task, item, attempt } => {
                    if let Some(w) = crate::store::Waiter::of(st, AttemptId { task, item, attempt }) {
                        self.store.put_waiter(&w).await?;
                    }
                }
                // Attempts already running finish and their results are ignored.
                Command::CancelRunning { .. } => {}
                Command::Finished { status } => {
                    finished = Some(status);
                    // A child run's end ends its parent's attempt (applied once there).
                    if let Some((parent, event)) = st.report_to_parent() {
                        out.push((Message::Event { run_id: parent, event }, 0));
                    }
                }
                // A child whose parent attempt was cut off.
                Command::CancelRun { run_id } => out.push((Message::Event { run_id, event: Event::Cancel }, 0)),
            }
        }
        if !out.is_empty() {
            self.queue.send_batch(&crate::queue::pack(out, self.pack)).await?;
        }
        if let Some(status) = finished {
            if let Some((key, _)) = run_key_of(plan, st) {
                self.flow.leave(&key, run_id).await;
            }
            self.store.snapshot(st).await?;
            run_hooks(plan, &self.executors, st, status, &mut () as &mut dyn Observer).await;
        }
        Ok(())
    }
}

mod dead;
pub use dead::dead_letter_verdict;

#[cfg(test)]
mod tests;
