//! Answers to callbacks (see [`crate::callback`]): which attempt a task token names, whether
//! it still waits, and the one event that records its answer or its heartbeat. Pure: the API
//! and `llmo callback` call these after checking the token's signature.

use serde_json::Value;

use super::machine::Plan;
use super::state::*;
use super::waits::AnswerError;
use crate::callback::{ANSWER_BYTES, CallbackWith};

/// Longest error message an answer may carry.
pub const ERROR_BYTES: usize = 4096;

impl Plan {
    /// The `callback` setting of task `task`, when it is a `function` or `http` task with one.
    pub fn callback_of(&self, task: usize) -> Option<&CallbackWith> {
        self.callbacks.get(task).and_then(Option::as_ref)
    }

    /// The attempt a token names (task id, item, attempt), if it waits for its callback now:
    /// else why not (no such task: 404; answered, timed out, another attempt, the run ended:
    /// 409).
    pub fn callback_unit(
        &self,
        st: &RunState,
        task: &str,
        item: Option<u32>,
        attempt: u32,
    ) -> Result<AttemptId, AnswerError> {
        let i = self
            .checked
            .dag
            .index_of(task)
            .filter(|&i| self.callback_of(i).is_some() || self.agent_has_callbacks(i))
            .ok_or_else(|| {
                AnswerError::NoSuchTask(format!("the run has no task `{task}` that waits for a callback"))
            })?;
        let Some(unit) = st.tasks[i].units.get(item.unwrap_or(0) as usize) else {
            return Err(AnswerError::NoSuchTask(format!("`{task}` has no such item")));
        };
        let not =
            |why: String| Err(AnswerError::NotWaiting(format!("`{task}` is not waiting for this callback: {why}")));
        if st.status != RunStatus::Running {
            return not(format!("the run is {}", st.status.as_str()));
        }
        if let Some(l) = unit.agent.as_deref() {
            // An agent's call: the token names the call's attempt (its unit runs several).
            if unit.status == TaskStatus::Running && l.callback_call(attempt).is_some() {
                return Ok(AttemptId { task: i, item, attempt });
            }
            let call = l.turns.iter().rev().flat_map(|t| &t.calls).find(|c| c.attempt == attempt);
            return match call.map(|c| c.status) {
                Some(crate::agent::CallStatus::Running) => not("its call has not returned yet".into()),
                Some(crate::agent::CallStatus::Succeeded) => not("it was answered already".into()),
                Some(s) => not(format!("the call is {}", s.as_str())),
                None => not(format!("no call of the agent is at attempt {attempt}")),
            };
        }
        if unit.attempt != attempt {
            return not(format!("the token is for attempt {attempt}, the task is at attempt {}", unit.attempt));
        }
        let waiting = unit.waits.as_ref().is_some_and(|w| w.kind == WaitKind::Callback);
        match unit.status {
            TaskStatus::Waiting if waiting => Ok(AttemptId { task: i, item, attempt }),
            TaskStatus::Running => not("its call has not returned yet".into()),
            TaskStatus::Succeeded => not("it was answered already".into()),
            s => match &unit.error {
                Some(e) => not(format!("the attempt is {} ({e})", s.as_str())),
                None => not(format!("the attempt is {}", s.as_str())),
            },
        }
    }

    /// The event that records a successful answer: `output` becomes the task's output.
    pub fn callback_succeeded(&self, st: &RunState, id: AttemptId, output: Value) -> Result<Event, AnswerError> {
        self.still_waits(st, id)?;
        let n = output.to_string().len();
        if n > ANSWER_BYTES {
            return Err(AnswerError::Invalid(format!(
                "the output is {n} bytes; at most {ANSWER_BYTES} are accepted (put larger results in storage \
                 and answer with their address)"
            )));
        }
        Ok(Event::Complete { task: id.task, item: id.item, attempt: id.attempt, output: Output::new(output) })
    }

    /// The event that records a failure: the attempt fails with `error` (`retry` applies
    /// when `retryable`).
    pub fn callback_failed(
        &self,
        st: &RunState,
        id: AttemptId,
        error: &str,
        retryable: bool,
    ) -> Result<Event, AnswerError> {
        self.still_waits(st, id)?;
        if error.trim().is_empty() || error.len() > ERROR_BYTES {
            return Err(AnswerError::Invalid(format!("`error` is 1 to {ERROR_BYTES} bytes of text")));
        }
        Ok(Event::CallbackFailed {
            task: id.task,
            item: id.item,
            attempt: id.attempt,
            error: format!("callback: {error}"),
            retryable,
        })
    }

    /// The event that records a heartbeat at `at`.
    pub fn callback_heartbeat(&self, st: &RunState, id: AttemptId, at: Millis) -> Result<Event, AnswerError> {
        self.still_waits(st, id)?;
        Ok(Event::Heartbeat { task: id.task, item: id.item, attempt: id.attempt, at })
    }

    fn still_waits(&self, st: &RunState, id: AttemptId) -> Result<(), AnswerError> {
        let task = self.checked.dag.id(id.task).to_string();
        self.callback_unit(st, &task, id.item, id.attempt).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::engine::tests::plan;

    const JOB: &str = r#"
spec:
  tasks:
    - id: job
      type: http
      retry: { max_attempts: 2, backoff: { initial: 1s, max: 1s } }
      with:
        method: POST
        url: https://jobs.example.com/start
        callback: { timeout: 1h, heartbeat: 5m }
    - { id: after, type: transform, depends_on: [job], with: { output: "{{ tasks.job.output.label }}" } }
"#;

    fn sent(p: &Plan, st: &mut RunState, attempt: u32, at: Millis) -> Vec<Command> {
        let ok = AttemptResult::Succeeded { output: Output::new(json!({"status": 202})), usage: Usage::default() };
        p.apply(st, &Event::finished(0, None, attempt, ok), at).unwrap()
    }

    #[test]
    fn the_call_waits_and_one_answer_ends_it() {
        let p = plan(JOB);
        let mut st = p.new_run("r", Default::default());
        p.apply(&mut st, &Event::Start, 0).unwrap();
        let id = AttemptId { task: 0, item: None, attempt: 1 };
        assert!(
            matches!(p.callback_unit(&st, "job", None, 1), Err(AnswerError::NotWaiting(m)) if m.contains("not returned"))
        );
        let cmds = sent(&p, &mut st, 1, 1_000);
        assert_eq!(
            cmds,
            vec![
                Command::Await { task: 0, item: None, attempt: 1 },
                Command::ScheduleWake { task: 0, item: None, attempt: 1, at: 301_000 },
            ]
        );
        assert_eq!(st.tasks[0].status, TaskStatus::Waiting);
        assert_eq!(p.replay(&st, &id.finished_key()), cmds, "a redelivered result sends what it asked for again");
        assert_eq!(p.callback_unit(&st, "job", None, 1), Ok(id));
        assert!(matches!(p.callback_unit(&st, "job", None, 2), Err(AnswerError::NotWaiting(_))));
        assert!(matches!(p.callback_unit(&st, "nope", None, 1), Err(AnswerError::NoSuchTask(_))));
        assert!(matches!(p.callback_unit(&st, "after", None, 1), Err(AnswerError::NoSuchTask(_))));
        let big = json!("x".repeat(ANSWER_BYTES));
        assert!(matches!(p.callback_succeeded(&st, id, big), Err(AnswerError::Invalid(_))));

        let answer = p.callback_succeeded(&st, id, json!({"label": "spam"})).unwrap();
        let racing = p.callback_failed(&st, id, "nope", false).unwrap();
        let cmds = p.apply(&mut st, &answer, 2_000).unwrap();
        assert_eq!(cmds, vec![Command::Execute { task: 1, item: None, attempt: 1 }]);
        assert!(p.apply(&mut st, &racing, 2_001).is_err(), "the loser of a race changes nothing");
        assert!(p.apply(&mut st, &answer, 2_002).is_err(), "a replayed answer changes nothing");
        let wake = Event::WakeDue { task: 0, item: None, attempt: 1 };
        assert!(p.apply(&mut st, &wake, 301_000).is_err(), "the timer after the answer changes nothing");
        assert_eq!(st.tasks[0].output.as_deref(), Some(&json!({"label": "spam"})));
        assert!(
            matches!(p.callback_unit(&st, "job", None, 1), Err(AnswerError::NotWaiting(m)) if m.contains("answered already"))
        );
    }

    #[test]
    fn heartbeats_move_the_deadline_and_a_missed_one_fails_the_attempt_which_retries() {
        let p = plan(JOB);
        let mut st = p.new_run("r", Default::default());
        p.apply(&mut st, &Event::Start, 0).unwrap();
        sent(&p, &mut st, 1, 0);
        let id = AttemptId { task: 0, item: None, attempt: 1 };
        let beat = |st: &RunState, at| p.callback_heartbeat(st, id, at).unwrap();
        let b = beat(&st, 200_000);
        p.apply(&mut st, &b, 200_000).unwrap();
        let b = beat(&st, 200_500);
        assert!(p.apply(&mut st, &b, 200_500).is_err(), "one beat within a tenth is not stored");
        // The first timer comes before the deadline the heartbeat moved: it re-arms itself.
        let wake = Event::WakeDue { task: 0, item: None, attempt: 1 };
        let cmds = p.apply(&mut st, &wake, 300_000).unwrap();
        assert_eq!(cmds, vec![Command::ScheduleWake { task: 0, item: None, attempt: 1, at: 500_000 }]);
        assert_eq!(st.tasks[0].status, TaskStatus::Waiting);
        // No heartbeat since: the attempt fails, and retries (a new call, a new token).
        let cmds = p.apply(&mut st, &wake, 500_000).unwrap();
        let [Command::ScheduleRetry { attempt: 1, at, .. }] = cmds[..] else { panic!("{cmds:?}") };
        assert!((500_000..=501_000).contains(&at), "{at}");
        assert_eq!(
            st.tasks[0].units[0].error.as_deref(),
            Some("no heartbeat came for 5m (the callback's `heartbeat`)")
        );
        assert!(p.callback_succeeded(&st, id, json!(1)).is_err(), "a token of an ended attempt is useless");
        p.apply(&mut st, &Event::RetryDue { task: 0, item: None, attempt: 1 }, at).unwrap();
        sent(&p, &mut st, 2, 502_000);
        let id2 = AttemptId { attempt: 2, ..id };
        let fail = p.callback_failed(&st, id2, "the job crashed", true).unwrap();
        p.apply(&mut st, &fail, 503_000).unwrap();
        assert_eq!(st.status, RunStatus::Failed, "no attempts left");
        assert_eq!(st.tasks[0].error.as_deref(), Some("callback: the job crashed"));
    }

    #[test]
    fn a_callback_times_out_and_a_cancel_ends_the_wait() {
        let p = plan(&JOB.replace(", heartbeat: 5m", "").replace("max_attempts: 2", "max_attempts: 1"));
        let mut st = p.new_run("r", Default::default());
        p.apply(&mut st, &Event::Start, 0).unwrap();
        let cmds = sent(&p, &mut st, 1, 0);
        assert_eq!(cmds[1], Command::ScheduleWake { task: 0, item: None, attempt: 1, at: 3_600_000 });
        let id = AttemptId { task: 0, item: None, attempt: 1 };
        let b = p.callback_heartbeat(&st, id, 5).unwrap();
        assert!(p.apply(&mut st, &b, 5).is_err(), "no heartbeat setting");
        p.apply(&mut st, &Event::WakeDue { task: 0, item: None, attempt: 1 }, 3_600_000).unwrap();
        assert_eq!(st.status, RunStatus::Failed);
        assert_eq!(st.tasks[0].error.as_deref(), Some("its callback did not come within 1h"));

        let mut st = p.new_run("r2", Default::default());
        p.apply(&mut st, &Event::Start, 0).unwrap();
        sent(&p, &mut st, 1, 0);
        p.apply(&mut st, &Event::Cancel, 10).unwrap();
        assert_eq!(st.tasks[0].status, TaskStatus::Cancelled);
        assert!(
            matches!(p.callback_unit(&st, "job", None, 1), Err(AnswerError::NotWaiting(m)) if m.contains("cancelled"))
        );
    }
}
