//! The queue-driven step: one message in, one step of one run, its consequences out. This is
//! the serverless runtime's unit of work (one SQS message, one Lambda invocation) and what
//! the deterministic simulation drives over the in-memory ports.
//!
//! Protocol, for a message `m`:
//! 1. Load the run (snapshot + log).
//! 2. `Execute` of an attempt the stored run still has running: run it; its result is the
//!    event. Any other `Execute` (the attempt already finished, or the run ended) re-sends what
//!    its finishing transition asked for (`Plan::replay`): its first worker may have died
//!    between storing that transition and sending its commands.
//! 3. Apply the event and append it with compare-and-set; on a lost race, reload and apply
//!    again. An event already applied is ignored, and its commands are re-sent instead.
//! 4. Send the commands (`Execute` → queue, `ScheduleRetry` → delayed queue message,
//!    `Finished` → hooks). Only then is `m` acknowledged (by the caller, on `Ok`).
//!
//! A crash anywhere leaves `m` unacknowledged; it is delivered again and the steps above
//! make the second delivery finish the work without doing any transition twice.

use std::sync::Arc;

use llmo_core::engine::{Command, Event, Plan, RunState, RunStatus, TaskStatus, finished_key};

use crate::driver::{Observer, build_attempt, run_hooks, run_with_timeout};
use crate::executor::Registry;
use crate::ports::Clock;
use crate::queue::{Delivery, Message, Queue, QueueError};
use crate::store::{self, RunStore, Transition, rebuild};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("no run `{0}`")]
    NoSuchRun(String),
}

/// What a step did, for logs and tests.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Stored a transition (its version) and sent its commands.
    Applied(u64),
    /// Nothing new to store; re-sent what an earlier transition asked for (if anything).
    Replayed,
}

/// Finds the plan of a run by its id.
pub type PlanOf = Arc<dyn Fn(&str) -> Option<Arc<Plan>> + Send + Sync>;

pub struct Worker {
    pub store: Arc<dyn RunStore>,
    pub queue: Arc<dyn Queue>,
    pub executors: Arc<Registry>,
    pub clock: Arc<dyn Clock>,
    /// The plan of a run (workers serve many runs; the caller caches plans).
    pub plan: PlanOf,
}

impl Worker {
    /// Handles one delivery. `Ok` means the message may be acknowledged; on `Err` it must not
    /// be (it is delivered again).
    pub async fn handle(&self, d: &Delivery) -> Result<Outcome, Error> {
        let run_id = d.message.run_id().to_string();
        let plan = (self.plan)(&run_id).ok_or_else(|| Error::NoSuchRun(run_id.clone()))?;
        let mut st = self.load(&plan, &run_id).await?;
        let event = match &d.message {
            Message::Event { event, .. } => event.clone(),
            &Message::Execute { task, item, attempt, .. } => {
                let unit = st.tasks[task].units.get(item.unwrap_or(0) as usize);
                let live = st.status == RunStatus::Running
                    && unit.is_some_and(|u| u.status == TaskStatus::Running && u.attempt == attempt);
                if !live {
                    let again = plan.replay(&st, &finished_key(task, item, attempt));
                    self.send(&plan, &st, again).await?;
                    return Ok(Outcome::Replayed);
                }
                let result = match self.executors.get(&plan.checked.workflow.spec.tasks[task].ty) {
                    None => crate::executor::failed(llmo_core::engine::builtin::TaskError::fatal(format!(
                        "no executor is registered for task type `{}`",
                        plan.checked.workflow.spec.tasks[task].ty
                    ))),
                    Some(exec) => {
                        let t = &plan.checked.workflow.spec.tasks[task];
                        let parts = plan.run_parts(&st, false);
                        let ids = (Arc::from(run_id.as_str()), Arc::from(t.id.as_str()), Arc::from(t.ty.as_str()));
                        match build_attempt(&plan, &st, &parts, ids, task, item, attempt, exec.as_ref()) {
                            Ok(a) => run_with_timeout(exec.as_ref(), &a).await,
                            Err(r) => r,
                        }
                    }
                };
                Event::AttemptFinished { task, item, attempt, result }
            }
        };
        loop {
            let expected = st.version;
            let now = self.clock.now();
            let mut next = st.clone();
            match plan.apply(&mut next, &event, now) {
                Err(_) => {
                    let again = plan.replay(&st, &event.key());
                    self.send(&plan, &st, again).await?;
                    return Ok(Outcome::Replayed);
                }
                Ok(cmds) => {
                    let t = Transition { version: next.version, at: now, event: event.clone() };
                    if self.store.append(expected, &[t], &next).await? {
                        self.send(&plan, &next, cmds).await?;
                        return Ok(Outcome::Applied(next.version));
                    }
                    st = self.load(&plan, &run_id).await?;
                }
            }
        }
    }

    async fn load(&self, plan: &Plan, run_id: &str) -> Result<RunState, Error> {
        let stored = self.store.load(run_id).await?.ok_or_else(|| Error::NoSuchRun(run_id.to_string()))?;
        Ok(rebuild(plan, stored)?)
    }

    async fn send(&self, plan: &Arc<Plan>, st: &RunState, cmds: Vec<Command>) -> Result<(), Error> {
        let run_id = st.run_id.clone();
        for c in cmds {
            match c {
                Command::Execute { task, item, attempt } => {
                    self.queue.send(&Message::Execute { run_id: run_id.clone(), task, item, attempt }, 0).await?;
                }
                Command::ScheduleRetry { task, item, attempt, at } => {
                    let delay = at.saturating_sub(self.clock.now());
                    let event = Event::RetryDue { task, item, attempt };
                    self.queue.send(&Message::Event { run_id: run_id.clone(), event }, delay).await?;
                }
                // Attempts already running finish and their results are ignored.
                Command::CancelRunning { .. } => {}
                Command::Finished { status } => {
                    self.store.snapshot(st).await?;
                    run_hooks(plan, &self.executors, st, status, &mut () as &mut dyn Observer).await;
                }
            }
        }
        Ok(())
    }
}
