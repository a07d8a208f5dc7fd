//! The loop that drives a run: apply an event with the engine, store the new state with
//! compare-and-set, carry out the commands (execute attempts, wait for retries), repeat.
//!
//! Attempts run one at a time in this process; the executor is the caller's. Every
//! transition is stored before its commands are carried out, so a run interrupted at any
//! point continues with [`Runner::resume`]: tasks that recorded success are not run again,
//! and attempts that were running are run again.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use llmo_core::engine::{AttemptResult, Command, Event, Millis, Plan, RunState};
use serde_json::{Map, Value};

use crate::store::{self, RunRecord, Store};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("no run `{0}` in this store")]
    NoSuchRun(String),
    #[error("run `{0}` stalled with nothing left to do (an engine bug)")]
    Stalled(String),
}

/// Runs one attempt: (plan, state, task, item) → result.
pub type Executor<'e> = dyn FnMut(&Plan, &RunState, usize, Option<u32>) -> AttemptResult + 'e;

pub struct Runner<'a> {
    pub plan: &'a Plan,
    pub store: &'a dyn Store,
}

pub fn now_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as Millis)
}

impl Runner<'_> {
    /// Creates and starts a run, then drives it to its end.
    pub fn start(
        &self,
        run_id: &str,
        inputs: Map<String, Value>,
        source_name: &str,
        source: &str,
        exec: &mut Executor<'_>,
        progress: &mut dyn FnMut(&RunState),
    ) -> Result<RunState, Error> {
        let state = self.plan.new_run(run_id, inputs);
        self.store.create(&RunRecord {
            state: state.clone(),
            workflow: self.plan.checked.workflow.metadata.name.clone(),
            source_name: source_name.to_string(),
            source: source.to_string(),
        })?;
        self.drive(state, Some(Event::Start), VecDeque::new(), exec, progress)
    }

    /// Continues a stored run from what it was waiting for.
    pub fn resume(
        &self,
        run_id: &str,
        exec: &mut Executor<'_>,
        progress: &mut dyn FnMut(&RunState),
    ) -> Result<RunState, Error> {
        let record = self.store.load(run_id)?.ok_or_else(|| Error::NoSuchRun(run_id.to_string()))?;
        let state = record.state;
        // A run created but never started gets its `Start`; others get what they wait for.
        let first = (state.version == 0).then_some(Event::Start);
        let pending = self.plan.in_flight(&state).into();
        self.drive(state, first, pending, exec, progress)
    }

    /// Applies `event`, storing the result with compare-and-set; on a lost race, reloads and
    /// applies again.
    fn step(&self, st: &mut RunState, event: &Event) -> Result<Vec<Command>, Error> {
        loop {
            let expected = st.version;
            let mut next = st.clone();
            match self.plan.apply(&mut next, event, now_ms()) {
                Ok(cmds) => {
                    if self.store.save(&next, expected)? {
                        *st = next;
                        return Ok(cmds);
                    }
                    *st = self.store.load(&st.run_id)?.ok_or_else(|| Error::NoSuchRun(st.run_id.clone()))?.state;
                }
                Err(_) => return Ok(self.plan.replay(st, &event.key())),
            }
        }
    }

    fn drive(
        &self,
        mut st: RunState,
        first: Option<Event>,
        mut queue: VecDeque<Command>,
        exec: &mut Executor<'_>,
        progress: &mut dyn FnMut(&RunState),
    ) -> Result<RunState, Error> {
        let mut timers: Vec<(Millis, Event)> = Vec::new();
        if let Some(e) = first {
            queue.extend(self.step(&mut st, &e)?);
            progress(&st);
        }
        loop {
            if let Some(cmd) = queue.pop_front() {
                match cmd {
                    Command::Execute { task, item, attempt } => {
                        let result = exec(self.plan, &st, task, item);
                        queue.extend(self.step(&mut st, &Event::AttemptFinished { task, item, attempt, result })?);
                    }
                    Command::ScheduleRetry { task, item, attempt, at } => {
                        timers.push((at, Event::RetryDue { task, item, attempt }));
                    }
                    Command::CancelRunning { .. } | Command::Finished { .. } => {}
                }
                progress(&st);
                continue;
            }
            if st.status.is_terminal() {
                return Ok(st);
            }
            let Some(at) = timers.iter().map(|(at, _)| *at).chain(st.deadline).min() else {
                return Err(Error::Stalled(st.run_id.clone()));
            };
            std::thread::sleep(Duration::from_millis(at.saturating_sub(now_ms())));
            let now = now_ms();
            let (due, later): (Vec<_>, Vec<_>) = timers.into_iter().partition(|(t, _)| *t <= now);
            timers = later;
            for (_, e) in due.into_iter().chain(std::iter::once((now, Event::Tick))) {
                queue.extend(self.step(&mut st, &e)?);
            }
            progress(&st);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use llmo_core::engine::{RunStatus, TaskStatus, Usage};
    use llmo_core::source::SourceFile;
    use llmo_core::validate::Validator;
    use serde_json::json;

    const WF: &str = "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: r }\nspec:\n  tasks:\n    - { id: a, type: transform, with: { output: 1 } }\n    - { id: b, type: transform, depends_on: [a], with: { output: 2 } }\n    - { id: c, type: transform, depends_on: [b], retry: { max_attempts: 3, backoff: { initial: 10ms, jitter: none } }, with: { output: 3 } }\n";

    fn plan() -> Plan {
        Plan::new(Validator::default().validate(&SourceFile::new("r.yaml", WF)).checked.unwrap())
    }

    fn ok() -> AttemptResult {
        AttemptResult::Succeeded { output: json!("done"), usage: Usage::default() }
    }

    #[test]
    fn a_run_is_stored_at_every_step_and_finishes() {
        let plan = plan();
        let store = MemoryStore::default();
        let runner = Runner { plan: &plan, store: &store };
        let mut calls = 0;
        let mut exec = |_: &Plan, _: &RunState, t: usize, _: Option<u32>| {
            calls += 1;
            // `c` fails once with a retryable error.
            if t == 2 && calls == 3 {
                AttemptResult::Failed { error: "503".into(), retryable: true, usage: Usage::default() }
            } else {
                ok()
            }
        };
        let st = runner.start("r1", Map::new(), "r.yaml", WF, &mut exec, &mut |_| {}).unwrap();
        assert_eq!(st.status, RunStatus::Succeeded);
        assert_eq!(st.tasks[2].attempts, 2);
        assert_eq!(store.load("r1").unwrap().unwrap().state, st);
    }

    #[test]
    fn resume_skips_what_succeeded_and_reruns_what_was_running() {
        let plan = plan();
        let store = MemoryStore::default();
        let runner = Runner { plan: &plan, store: &store };
        // Simulate a crash while `b` runs: drive by hand up to there.
        let mut st = plan.new_run("r2", Map::new());
        store
            .create(&RunRecord {
                state: st.clone(),
                workflow: "r".into(),
                source_name: "r.yaml".into(),
                source: WF.into(),
            })
            .unwrap();
        let v = st.version;
        plan.apply(&mut st, &Event::Start, 0).unwrap();
        store.save(&st, v).unwrap();
        let v = st.version;
        plan.apply(&mut st, &Event::AttemptFinished { task: 0, item: None, attempt: 1, result: ok() }, 1).unwrap();
        store.save(&st, v).unwrap();
        assert_eq!(st.tasks[1].status, TaskStatus::Running);
        let mut ran = Vec::new();
        let mut exec = |_: &Plan, _: &RunState, t: usize, _: Option<u32>| {
            ran.push(t);
            ok()
        };
        let end = runner.resume("r2", &mut exec, &mut |_| {}).unwrap();
        assert!(matches!(runner.resume("nope", &mut exec, &mut |_| {}), Err(Error::NoSuchRun(_))));
        assert_eq!(end.status, RunStatus::Succeeded);
        assert_eq!(ran, vec![1, 2], "a is not run again; b (running at the crash) and c are");
    }
}
