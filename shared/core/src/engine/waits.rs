//! The `wait` task: when a waiting unit wakes, what it waits for, and how an answer (an
//! approval, a rejection, a posted event) is checked and turned into the one
//! `Event::Complete` that ends the wait. Pure: the runtimes and the API call these.
//!
//! Exactly once: a unit leaves `Waiting` once (by `Complete` or by `WakeDue`); every later
//! completion or wake of the same attempt is ignored by the transition function, so two
//! racing approvals, a replayed request or an answer after the timeout leave one outcome.

use serde_json::{Map, Value, json};

use super::machine::Plan;
use super::state::*;
use crate::tasks::{ApprovalWith, Approvers, OnTimeout, WaitWith};

/// Why an answer to a waiting task was not accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AnswerError {
    /// No such task (or item) in the run's workflow.
    #[error("{0}")]
    NoSuchTask(String),
    /// The unit is not waiting for an answer (any more): answered already, timed out, not
    /// started, or the run ended. The API answers 409.
    #[error("{0}")]
    NotWaiting(String),
    /// The answer does not fit the wait (a form field missing or of the wrong type, an
    /// approval sent to an event wait). The API answers 400.
    #[error("{0}")]
    Invalid(String),
}

/// An answer to an `approval` wait.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Approval {
    pub approved: bool,
    pub fields: Map<String, Value>,
    pub comment: Option<String>,
    /// For an agent's call waiting for approval: the call's id (needed only when several of
    /// its calls wait at once).
    pub call: Option<String>,
}

/// The most a completion's answer may hold (fields, comment, event payload), as JSON.
pub const ANSWER_BYTES: usize = 64 * 1024;

impl Plan {
    /// The `with` block of task `task` when it is a `wait` task.
    pub fn wait_of(&self, task: usize) -> Option<&WaitWith> {
        self.waits.get(task).and_then(Option::as_ref)
    }

    /// What unit (`task`, `item`) waits for when it starts waiting at `now`, and when it
    /// wakes: the end of its sleep or its timeout, whichever comes first (`None`: only an
    /// answer ends it). Templates (`sleep.until`, `event.key`, `approval.prompt`) are
    /// rendered in the task's context.
    pub fn start_wait(
        &self,
        st: &RunState,
        task: usize,
        item: Option<u32>,
        now: Millis,
    ) -> Result<(Waits, Option<Millis>), String> {
        let spec = self.wait_of(task).ok_or("not a wait task")?;
        let with = self.render_with(st, task, item)?;
        let timeout_at = spec.timeout.map(|d| now.saturating_add(d.0.as_millis() as Millis));
        let mut waits = Waits {
            kind: WaitKind::Sleep,
            since: now,
            event: None,
            key: None,
            prompt: None,
            timeout_at,
            times_out: false,
            heartbeat: None,
            beat_at: None,
        };
        let mut wake = None;
        if spec.sleep.is_some() {
            let at = sleep_end(&with["sleep"], now)?.max(now);
            wake = Some(at);
        } else if spec.approval.is_some() {
            waits.kind = WaitKind::Approval;
            waits.prompt = with["approval"]["prompt"].as_str().map(str::to_string);
        } else {
            waits.kind = WaitKind::Event;
            waits.event = with["event"]["name"].as_str().map(str::to_string);
            let key = match &with["event"]["key"] {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if key.len() > 512 {
                return Err("`event.key` is longer than 512 bytes".into());
            }
            waits.key = Some(key);
        }
        if let Some(t) = timeout_at
            && wake.is_none_or(|w| t < w)
        {
            wake = Some(t);
            waits.times_out = true;
        }
        Ok((waits, wake))
    }

    /// The output (or the error) of a unit whose wake came: the end of its sleep, or its
    /// timeout with `on_timeout`.
    pub(super) fn woke(&self, task: usize, unit: &Unit) -> Result<Value, String> {
        let at = unit.wake_at.unwrap_or_default();
        let Some(w) = unit.waits.as_ref().filter(|w| w.times_out) else {
            return Ok(json!({"waited_until": at}));
        };
        let spec = self.wait_of(task);
        let waited = at.saturating_sub(w.since);
        if spec.and_then(|s| s.on_timeout) != Some(OnTimeout::Succeed) {
            let what = match w.kind {
                WaitKind::Sleep => "its sleep ended".to_string(),
                WaitKind::Approval => "an answer came".to_string(),
                WaitKind::Event => format!("event `{}` came", w.event.as_deref().unwrap_or_default()),
                WaitKind::Callback => "its callback came".to_string(),
            };
            return Err(format!("`wait` timed out after {} before {what}", human(waited)));
        }
        Ok(match w.kind {
            WaitKind::Sleep => json!({"timed_out": true, "waited_until": at}),
            WaitKind::Approval => json!({"timed_out": true, "approved": false, "fields": {}, "by": null}),
            WaitKind::Event => {
                json!({"timed_out": true, "event": w.event, "key": w.key, "payload": null, "by": null})
            }
            WaitKind::Callback => json!({"timed_out": true}),
        })
    }

    /// The unit an answer is for: task id `task`, `item` for a `for_each` task's item. It
    /// must be waiting for an answer of `kind`.
    pub fn waiting_unit(
        &self,
        st: &RunState,
        task: &str,
        item: Option<u32>,
        kind: WaitKind,
    ) -> Result<AttemptId, AnswerError> {
        let i = self
            .checked
            .workflow
            .spec
            .tasks
            .iter()
            .position(|t| t.id == task)
            .ok_or_else(|| AnswerError::NoSuchTask(format!("the workflow has no task `{task}`")))?;
        let for_each = self.checked.workflow.spec.tasks[i].for_each.is_some();
        let Some(spec) = self.wait_of(i) else {
            return Err(AnswerError::Invalid(format!("`{task}` is not a wait task")));
        };
        let expected = if spec.approval.is_some() {
            WaitKind::Approval
        } else if spec.event.is_some() {
            WaitKind::Event
        } else {
            WaitKind::Sleep
        };
        if expected != kind {
            return Err(AnswerError::Invalid(format!(
                "`{task}` waits for {}, not for {}",
                article(expected),
                article(kind)
            )));
        }
        let item = match (for_each, item) {
            (true, None) => return Err(AnswerError::Invalid(format!("`{task}` waits per item: say which `item`"))),
            (false, Some(_)) => return Err(AnswerError::Invalid(format!("`{task}` has no items"))),
            (_, i) => i,
        };
        let ts = &st.tasks[i];
        let unit = ts.units.get(item.unwrap_or(0) as usize).ok_or_else(|| match item {
            Some(k) if ts.status.is_terminal() || !ts.units.is_empty() => {
                AnswerError::NoSuchTask(format!("`{task}` has no item {k}"))
            }
            _ => AnswerError::NotWaiting(format!("`{task}` is {}: not waiting for an answer", ts.status.as_str())),
        })?;
        if st.status != RunStatus::Running || unit.status != TaskStatus::Waiting {
            let why = match (&unit.output, unit.status) {
                _ if st.status.is_terminal() && !unit.status.is_terminal() => {
                    format!("the run is {}", st.status.as_str())
                }
                (Some(o), TaskStatus::Succeeded) if o.get("timed_out") == Some(&Value::Bool(true)) => {
                    "it timed out".to_string()
                }
                (Some(o), TaskStatus::Succeeded) => match o.get("by").and_then(Value::as_str) {
                    Some(by) => format!("it was answered already (by {by})"),
                    None => "it was answered already".to_string(),
                },
                (_, s) => format!("it is {}", s.as_str()),
            };
            return Err(AnswerError::NotWaiting(format!("`{task}` is not waiting for an answer: {why}")));
        }
        Ok(AttemptId { task: i, item, attempt: unit.attempt })
    }

    /// Checks an approval (or rejection) by `by` of the waiting `task` (or of the agent
    /// `task`'s call waiting for approval) and returns the event that records it:
    /// `{approved, fields, by, comment}` (and `call` for an agent's call).
    pub fn approve(
        &self,
        st: &RunState,
        task: &str,
        item: Option<u32>,
        answer: &Approval,
        by: &str,
    ) -> Result<Event, AnswerError> {
        let id = self.answering(st, task, item, answer.call.as_deref())?;
        self.approve_at(st, id, answer, by)
    }

    /// The attempt an approval of `task` answers: its waiting unit's; for an agent, the
    /// attempt of its call waiting for approval (`call` names it when several wait).
    pub fn answering(
        &self,
        st: &RunState,
        task: &str,
        item: Option<u32>,
        call: Option<&str>,
    ) -> Result<AttemptId, AnswerError> {
        let Some(i) = self.checked.dag.index_of(task).filter(|&i| self.is_agent(i)) else {
            return self.waiting_unit(st, task, item, WaitKind::Approval);
        };
        let item = match (self.checked.workflow.spec.tasks[i].for_each.is_some(), item) {
            (true, None) => return Err(AnswerError::Invalid(format!("`{task}` runs per item: say which `item`"))),
            (false, Some(_)) => return Err(AnswerError::Invalid(format!("`{task}` has no items"))),
            (_, k) => k,
        };
        let unit = st.tasks[i].units.get(item.unwrap_or(0) as usize);
        let awaiting: Vec<&crate::agent::CallRec> = unit
            .filter(|u| u.status == TaskStatus::Running && st.status == RunStatus::Running)
            .and_then(|u| u.agent.as_deref())
            .map(|l| l.awaiting().collect())
            .unwrap_or_default();
        let found = match call {
            Some(c) => awaiting
                .iter()
                .find(|x| x.id == c)
                .ok_or_else(|| AnswerError::NotWaiting(format!("`{task}` has no call `{c}` waiting for approval")))?,
            None => match awaiting.as_slice() {
                [one] => one,
                [] => {
                    return Err(AnswerError::NotWaiting(format!("`{task}` has no call waiting for approval")));
                }
                many => {
                    let ids: Vec<&str> = many.iter().map(|c| c.id.as_str()).collect();
                    return Err(AnswerError::Invalid(format!(
                        "{} calls of `{task}` wait for approval: say which `call` ({})",
                        many.len(),
                        ids.join(", ")
                    )));
                }
            },
        };
        Ok(AttemptId { task: i, item, attempt: found.attempt })
    }

    /// The approval form attempt `id` waits for an answer to, if it waits for one now: a
    /// `wait` task's, or the tool's of an agent's call waiting for approval.
    pub fn form_at(&self, st: &RunState, id: AttemptId) -> Option<&ApprovalWith> {
        let u = st.tasks.get(id.task)?.units.get(id.unit())?;
        if st.status != RunStatus::Running {
            return None;
        }
        if u.status == TaskStatus::Waiting && u.attempt == id.attempt {
            return self.wait_of(id.task)?.approval.as_ref();
        }
        let l = u.agent.as_deref().filter(|_| u.status == TaskStatus::Running)?;
        let (t, c) = l.awaiting_call(id.attempt)?;
        self.tool_form(id.task, &l.turns[t].calls[c].name)
    }

    /// [`Plan::approve`] of the attempt `id` (found by [`Plan::answering`], or named by an
    /// answer link).
    pub fn approve_at(&self, st: &RunState, id: AttemptId, answer: &Approval, by: &str) -> Result<Event, AnswerError> {
        let task = self.checked.dag.id(id.task);
        let form = self
            .form_at(st, id)
            .ok_or_else(|| AnswerError::NotWaiting(format!("`{task}` is not waiting for this approval (any more)")))?;
        check_fields(form, answer)?;
        let mut output = json!({"approved": answer.approved, "fields": answer.fields, "by": by});
        if let Some(c) = &answer.comment {
            output["comment"] = Value::String(c.clone());
        }
        if let Some(c) = st.waiting_call(id) {
            output["call"] = json!(c.id);
        }
        bounded(&output)?;
        Ok(Event::Complete { task: id.task, item: id.item, attempt: id.attempt, output: Output::new(output) })
    }

    /// The completion of an event wait of `task` by a posted event.
    pub fn deliver(&self, st: &RunState, id: AttemptId, payload: &Value, by: &str) -> Result<Event, AnswerError> {
        let unit = st.tasks.get(id.task).and_then(|t| t.units.get(id.unit()));
        let w = unit.and_then(|u| u.waits.as_ref()).filter(|w| w.kind == WaitKind::Event);
        let (Some(unit), Some(w)) = (unit, w) else {
            return Err(AnswerError::NotWaiting("not an event wait".into()));
        };
        if st.status != RunStatus::Running || unit.status != TaskStatus::Waiting || unit.attempt != id.attempt {
            return Err(AnswerError::NotWaiting("no longer waiting".into()));
        }
        let output = json!({"event": w.event, "key": w.key, "payload": payload, "by": by});
        bounded(&output)?;
        Ok(Event::Complete { task: id.task, item: id.item, attempt: id.attempt, output: Output::new(output) })
    }

    /// Whether a completion `output` of `task` fails it: a rejection under `on_reject: fail`.
    pub(super) fn rejection(&self, task: usize, output: &Value) -> Option<String> {
        let form = self.wait_of(task)?.approval.as_ref()?;
        (form.on_reject == Some(OnTimeout::Fail) && output.get("approved") == Some(&Value::Bool(false))).then(|| {
            match output.get("by").and_then(Value::as_str) {
                Some(by) => format!("rejected by {by}"),
                None => "rejected".to_string(),
            }
        })
    }
}

/// Whether a caller may answer an approval: anyone when it names no approvers; else a
/// caller whose subject is listed or who `holds` one of the listed roles.
pub fn may_answer(approvers: Option<&Approvers>, subject: &str, holds: impl Fn(&str) -> bool) -> bool {
    match approvers {
        None => true,
        Some(a) if a.roles.is_empty() && a.subjects.is_empty() => true,
        Some(a) => a.subjects.iter().any(|s| s == subject) || a.roles.iter().any(|r| holds(r)),
    }
}

fn check_fields(form: &ApprovalWith, answer: &Approval) -> Result<(), AnswerError> {
    let bad = |m: String| Err(AnswerError::Invalid(m));
    for (name, v) in &answer.fields {
        let Some(f) = form.fields.get(name) else {
            let known: Vec<&str> = form.fields.keys().map(String::as_str).collect();
            return bad(format!("the form has no field `{name}` (fields: {})", list(&known)));
        };
        if !f.ty.admits(v) {
            return bad(format!("field `{name}` must be a {} (got {v})", f.ty.as_str()));
        }
        if let Some(allowed) = &f.enum_
            && !allowed.contains(v)
        {
            let allowed: Vec<String> = allowed.iter().map(Value::to_string).collect();
            return bad(format!("field `{name}` must be one of {} (got {v})", allowed.join(", ")));
        }
    }
    if answer.approved {
        for (name, f) in &form.fields {
            if f.required && !answer.fields.contains_key(name) {
                return bad(format!("field `{name}` ({}) is required to approve", f.ty.as_str()));
            }
        }
    }
    Ok(())
}

fn bounded(output: &Value) -> Result<(), AnswerError> {
    let n = output.to_string().len();
    if n > ANSWER_BYTES {
        return Err(AnswerError::Invalid(format!("the answer is {n} bytes; at most {ANSWER_BYTES} are accepted")));
    }
    Ok(())
}

fn list(xs: &[&str]) -> String {
    if xs.is_empty() { "none".into() } else { xs.join(", ") }
}

fn article(k: WaitKind) -> &'static str {
    match k {
        WaitKind::Sleep => "a time",
        WaitKind::Approval => "an approval",
        WaitKind::Event => "an event",
        WaitKind::Callback => "a callback",
    }
}

/// `sleep.for` after `now`, or `sleep.until` (an RFC 3339 time, or milliseconds since the
/// epoch), from a rendered `sleep` block.
fn sleep_end(sleep: &Value, now: Millis) -> Result<Millis, String> {
    if let Some(d) = sleep.get("for") {
        let text = d.as_str().unwrap_or_default();
        let d = crate::model::Duration::parse(text).ok_or_else(|| format!("`sleep.for` `{text}` is not a duration"))?;
        return Ok(now.saturating_add(d.0.as_millis() as Millis));
    }
    match sleep.get("until") {
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| format!("`sleep.until` {n} is not a time")),
        Some(Value::String(s)) => match s.trim().parse::<u64>() {
            Ok(ms) => Ok(ms),
            Err(_) => super::time::parse_rfc3339(s.trim()),
        },
        other => Err(format!("`sleep` needs `for` or `until` (got {})", other.unwrap_or(&Value::Null))),
    }
}

/// `1h 5m`, `40s`, `250ms`.
pub(crate) fn human(ms: Millis) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{}", s / 60, if s % 60 > 0 { format!(" {}s", s % 60) } else { String::new() }),
        _ => format!("{}h{}", s / 3600, if s % 3600 >= 60 { format!(" {}m", s % 3600 / 60) } else { String::new() }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::engine::tests::plan;

    const REVIEW: &str = r#"
spec:
  inputs: { order: { type: string, default: A-1 } }
  tasks:
    - id: review
      type: wait
      with:
        approval:
          prompt: "Ship {{ inputs.order }}?"
          fields:
            tone: { type: string, enum: [formal, friendly] }
            pct: { type: integer, required: false }
          on_reject: fail
        timeout: 1h
    - { id: after, type: transform, depends_on: [review], with: { output: "{{ tasks.review.output.fields.tone }} by {{ tasks.review.output.by }}" } }
"#;

    fn order() -> Map<String, Value> {
        json!({"order": "A-1"}).as_object().cloned().unwrap()
    }

    fn answer(approved: bool, fields: Value) -> Approval {
        Approval { approved, fields: fields.as_object().cloned().unwrap_or_default(), ..Default::default() }
    }

    #[test]
    fn an_approval_is_checked_against_its_form_and_recorded_once() {
        let p = plan(REVIEW);
        let mut st = p.new_run("r", order());
        let cmds = p.apply(&mut st, &Event::Start, 1_000).unwrap();
        let hour = 1_000 + 3_600_000;
        assert_eq!(st.tasks[0].units[0].error, None);
        assert_eq!(
            cmds,
            vec![
                Command::Await { task: 0, item: None, attempt: 1 },
                Command::ScheduleWake { task: 0, item: None, attempt: 1, at: hour },
            ]
        );
        let w = st.tasks[0].units[0].waits.clone().unwrap();
        assert_eq!((w.kind, w.prompt.as_deref(), w.times_out), (WaitKind::Approval, Some("Ship A-1?"), true));

        let bad = |f: Value| p.approve(&st, "review", None, &answer(true, f), "ann").unwrap_err();
        assert!(
            matches!(bad(json!({"tone": "rude"})), AnswerError::Invalid(m) if m.contains("one of \"formal\", \"friendly\""))
        );
        assert!(matches!(bad(json!({})), AnswerError::Invalid(m) if m.contains("`tone` (string) is required")));
        assert!(matches!(bad(json!({"tone": "formal", "pct": 1.5})), AnswerError::Invalid(m) if m.contains("integer")));
        assert!(
            matches!(bad(json!({"tone": "formal", "x": 1})), AnswerError::Invalid(m) if m.contains("no field `x`"))
        );
        assert!(matches!(
            p.approve(&st, "nope", None, &answer(true, json!({})), "ann"),
            Err(AnswerError::NoSuchTask(_))
        ));
        assert!(matches!(
            p.approve(&st, "review", Some(0), &answer(true, json!({})), "ann"),
            Err(AnswerError::Invalid(_))
        ));

        let ok = p.approve(&st, "review", None, &answer(true, json!({"tone": "friendly", "pct": 10})), "ann").unwrap();
        let racing = p.approve(&st, "review", None, &answer(true, json!({"tone": "formal"})), "bob").unwrap();
        assert_eq!(ok.key(), racing.key(), "two answers of one attempt are one event");
        let cmds = p.apply(&mut st, &ok, 2_000).unwrap();
        assert_eq!(cmds, vec![Command::Execute { task: 1, item: None, attempt: 1 }]);
        assert!(p.apply(&mut st, &racing, 2_001).is_err(), "the loser of a race changes nothing");
        assert!(p.apply(&mut st, &ok, 2_002).is_err(), "a replayed answer changes nothing");
        let wake = Event::WakeDue { task: 0, item: None, attempt: 1 };
        assert!(p.apply(&mut st, &wake, hour).is_err(), "the timeout after the answer changes nothing");
        let out = st.tasks[0].output.as_deref().unwrap();
        assert_eq!(out, &json!({"approved": true, "fields": {"tone": "friendly", "pct": 10}, "by": "ann"}));
        let late = p.approve(&st, "review", None, &answer(true, json!({"tone": "formal"})), "bob").unwrap_err();
        assert_eq!(
            late,
            AnswerError::NotWaiting("`review` is not waiting for an answer: it was answered already (by ann)".into())
        );
    }

    #[test]
    fn a_rejection_under_on_reject_fail_fails_and_a_timeout_follows_on_timeout() {
        let p = plan(REVIEW);
        let mut st = p.new_run("r", order());
        p.apply(&mut st, &Event::Start, 0).unwrap();
        let no = p.approve(&st, "review", None, &answer(false, json!({})), "ann").unwrap();
        p.apply(&mut st, &no, 10).unwrap();
        assert_eq!(st.status, RunStatus::Failed);
        assert_eq!(st.tasks[0].error.as_deref(), Some("rejected by ann"));

        // No answer within the hour: the task fails with a clear error; a late answer is refused.
        let mut st = p.new_run("r2", order());
        p.apply(&mut st, &Event::Start, 0).unwrap();
        p.apply(&mut st, &Event::WakeDue { task: 0, item: None, attempt: 1 }, 3_600_000).unwrap();
        assert_eq!(st.tasks[0].error.as_deref(), Some("`wait` timed out after 1h before an answer came"));
        let late = p.approve(&st, "review", None, &answer(true, json!({"tone": "formal"})), "ann");
        assert!(matches!(late, Err(AnswerError::NotWaiting(_))));

        // `on_timeout: succeed`: the task succeeds, not approved, and the run goes on.
        let p = plan(&REVIEW.replace("timeout: 1h", "timeout: 1h\n        on_timeout: succeed"));
        let mut st = p.new_run("r3", order());
        p.apply(&mut st, &Event::Start, 0).unwrap();
        let cmds = p.apply(&mut st, &Event::WakeDue { task: 0, item: None, attempt: 1 }, 3_600_000).unwrap();
        assert_eq!(cmds.len(), 1, "`after` runs: {cmds:?}");
        assert_eq!(st.tasks[0].output.as_deref().unwrap()["timed_out"], json!(true));
        assert_eq!(st.tasks[0].output.as_deref().unwrap()["approved"], json!(false));
    }

    #[test]
    fn event_waits_carry_their_rendered_key_per_item() {
        let p = plan(
            r#"
spec:
  tasks:
    - id: paid
      type: wait
      for_each: '["a", "b"]'
      with: { event: { name: payment.settled, key: "order-{{ item }}" } }
"#,
        );
        let mut st = p.new_run("r", order());
        let cmds = p.apply(&mut st, &Event::Start, 5).unwrap();
        assert_eq!(cmds.len(), 2, "one waiter each, no timer: {cmds:?}");
        assert!(cmds.iter().all(|c| matches!(c, Command::Await { .. })));
        let keys: Vec<_> = st.tasks[0].units.iter().map(|u| u.waits.as_ref().unwrap().key.clone().unwrap()).collect();
        assert_eq!(keys, ["order-a", "order-b"]);
        assert!(matches!(p.waiting_unit(&st, "paid", None, WaitKind::Event), Err(AnswerError::Invalid(_))));
        let id = p.waiting_unit(&st, "paid", Some(1), WaitKind::Event).unwrap();
        let e = p.deliver(&st, id, &json!({"amount": 3}), "shop").unwrap();
        p.apply(&mut st, &e, 6).unwrap();
        assert_eq!(
            st.tasks[0].units[1].output.as_deref(),
            Some(&json!({"event": "payment.settled", "key": "order-b", "payload": {"amount": 3}, "by": "shop"}))
        );
        assert!(p.deliver(&st, id, &json!(1), "shop").is_err(), "delivered once");
        assert_eq!(st.tasks[0].status, TaskStatus::Waiting, "item 0 still waits");
        assert_eq!(p.in_flight(&st), vec![Command::Await { task: 0, item: Some(0), attempt: 1 }]);
        let too_big = json!("x".repeat(ANSWER_BYTES));
        let id0 = p.waiting_unit(&st, "paid", Some(0), WaitKind::Event).unwrap();
        assert!(matches!(p.deliver(&st, id0, &too_big, "shop"), Err(AnswerError::Invalid(_))));
    }

    #[test]
    fn who_may_answer() {
        let a = Approvers { roles: vec!["admin".into()], subjects: vec!["ann".into()] };
        assert!(may_answer(None, "x", |_| false));
        assert!(may_answer(Some(&a), "ann", |_| false));
        assert!(!may_answer(Some(&a), "bob", |r| r == "developer"));
        assert!(may_answer(Some(&a), "bob", |r| r == "admin"));
    }
}
