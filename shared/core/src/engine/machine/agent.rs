//! `type: agent` in the state machine: a unit whose attempts are the loop's steps. A model turn
//! is an attempt started by dispatch (under the budget and the caps, like any attempt); the
//! calls it asks for are attempts started together, running at once, each with its own
//! retries; when every call has settled the unit goes back to `Pending` and dispatch starts
//! the next turn (the budget is checked again, fail closed). What each turn and call did is
//! kept in [`crate::agent::AgentLoop`] on the unit, so a redelivered or replayed event finds
//! it done, and nothing that finished runs again.

use std::sync::Arc;

use super::*;
use crate::agent::{
    AgentLoop, AgentWith, CallRec, CallStatus, MAX_CALLS_PER_TURN, MAX_REFUSED_CALLS, MAX_TOOL_FAILURES, OnMaxTurns,
    OnReject, Step, TurnRec, run::bounded_result,
};
use crate::callback::CallbackWith;
use crate::tasks::ApprovalWith;

/// An agent task's `with` as written, and each tool's argument schema, compiled once.
pub(crate) struct AgentPlan {
    pub(crate) with: AgentWith,
    validators: Vec<Option<Arc<jsonschema::Validator>>>,
    /// Each tool's approval form, for the tools that have one.
    pub(crate) forms: Vec<Option<ApprovalWith>>,
    /// Each tool's `callback` setting, for the `http` and `function` tools that wait for one.
    callbacks: Vec<Option<CallbackWith>>,
}

impl AgentPlan {
    pub(crate) fn of(t: &crate::model::Task) -> Option<AgentPlan> {
        if t.ty != crate::agent::AGENT {
            return None;
        }
        let with: AgentWith = serde_json::from_value(Value::Object(t.with.clone())).ok()?;
        let validators =
            with.tools.iter().map(|t| jsonschema::validator_for(&t.parameters).ok().map(Arc::new)).collect();
        let forms = with.tools.iter().map(|t| t.approval.as_ref().map(|a| a.form())).collect();
        let callbacks = with
            .tools
            .iter()
            .map(|t| {
                let cb = t.run.with.get("callback").filter(|_| matches!(t.run.ty.as_str(), "http" | "function"))?;
                serde_json::from_value(cb.clone()).ok()
            })
            .collect();
        Some(AgentPlan { with, validators, forms, callbacks })
    }

    /// Why call `c` cannot run, if it cannot: its tool is unknown, or its arguments do not
    /// match the tool's schema.
    fn refusal(&self, name: &str, args: &Value) -> Result<usize, String> {
        let Some(i) = self.with.tools.iter().position(|t| t.name == name) else {
            let names: Vec<&str> = self.with.tools.iter().map(|t| t.name.as_str()).collect();
            return Err(format!("there is no tool `{name}` (the tools are: {})", names.join(", ")));
        };
        if let Value::String(raw) = args {
            let mut shown: String = raw.chars().take(200).collect();
            if shown.len() < raw.len() {
                shown.push('…');
            }
            return Err(format!("the arguments are not a JSON object: {shown}"));
        }
        if let Some(v) = &self.validators[i] {
            let errors: Vec<String> = v
                .iter_errors(args)
                .take(3)
                .map(|e| {
                    let at = e.instance_path().to_string();
                    if at.is_empty() { e.to_string() } else { format!("at `{at}`: {e}") }
                })
                .collect();
            if !errors.is_empty() {
                return Err(format!("the arguments do not match the tool's parameters: {}", errors.join("; ")));
            }
        }
        Ok(i)
    }
}

impl Plan {
    /// Whether task `i` is an agent.
    pub fn is_agent(&self, i: usize) -> bool {
        self.agents.get(i).is_some_and(Option::is_some)
    }

    /// An agent task's `with` as written (its tools, turns and settings).
    pub fn agent_with(&self, i: usize) -> Option<&AgentWith> {
        self.agents.get(i)?.as_ref().map(|a| &a.with)
    }

    /// What attempt `id` of an agent does: ask for a turn, or run a call. `None` when the task
    /// is not an agent or the attempt is neither (a stale or duplicate delivery).
    pub fn agent_step(&self, st: &RunState, id: AttemptId) -> Option<Step> {
        let a = self.agents.get(id.task)?.as_ref()?;
        let u = st.tasks.get(id.task)?.units.get(id.unit())?;
        let l = u.agent.as_deref()?;
        if l.asking == Some(id.attempt) {
            return Some(Step::Turn { turn: l.turns.len() as u32 + 1, history: l.turns.clone() });
        }
        let (t, c) = l.running_call(id.attempt)?;
        let call = Box::new(l.turns[t].calls[c].clone());
        let tool = a.with.tools.iter().position(|x| x.name == call.name)?;
        Some(Step::Tool { turn: t as u32 + 1, call, tool })
    }

    /// Whether attempt `id` is one the run has running now: its unit's running attempt, or for
    /// an agent, its turn or one of its calls (several of an agent's attempts run at once).
    pub fn is_running(&self, st: &RunState, id: AttemptId) -> bool {
        st.status == RunStatus::Running
            && st.tasks.get(id.task).and_then(|t| t.units.get(id.unit())).is_some_and(|u| {
                u.status == TaskStatus::Running
                    && match u.agent.as_deref() {
                        Some(l) => l.running().any(|a| a == id.attempt),
                        None => u.attempt == id.attempt,
                    }
            })
    }

    /// What a running agent's unit owes: each running attempt (the turn, or the calls) and
    /// each call's retry; with `key`, only the attempts the event of that key started and the
    /// retries it scheduled (a call's failure). `None` for any other unit.
    pub(crate) fn agent_owed(
        &self,
        task: usize,
        item: Option<u32>,
        u: &Unit,
        key: Option<&str>,
    ) -> Option<Vec<Command>> {
        let l = u.agent.as_deref().filter(|_| u.status == TaskStatus::Running)?;
        let started_by = |a: u32| u.started_by.get((u.nth(a) as usize).wrapping_sub(1)).map(String::as_str);
        let mut cmds: Vec<Command> = l
            .running()
            .filter(|&a| key.is_none_or(|k| started_by(a) == Some(k)))
            .map(|attempt| Command::Execute { task, item, attempt })
            .collect();
        cmds.extend(
            l.retrying()
                .filter(|&(a, _)| key.is_none_or(|k| finished_key(task, item, a) == k))
                .map(|(attempt, at)| Command::ScheduleRetry { task, item, attempt, at }),
        );
        // A call waiting for its approval: its listing, and its timeout.
        for c in l.awaiting().filter(|c| key.is_none_or(|k| started_by(c.attempt) == Some(k))) {
            let attempt = c.attempt;
            cmds.push(Command::Await { task, item, attempt });
            if let Some(at) = c.waits.as_ref().and_then(|w| w.timeout_at) {
                cmds.push(Command::ScheduleWake { task, item, attempt, at });
            }
        }
        // A call waiting for its callback: its listing and its wake, owed by the event that
        // started the wait or last moved the wake.
        for c in l.last_calls().iter().filter(|c| c.status == CallStatus::AwaitingCallback) {
            if key.is_some_and(|k| c.cause.as_deref() != Some(k)) {
                continue;
            }
            let attempt = c.attempt;
            cmds.push(Command::Await { task, item, attempt });
            if let Some((at, _)) = c.waits.as_ref().and_then(Waits::callback_due) {
                cmds.push(Command::ScheduleWake { task, item, attempt, at });
            }
        }
        Some(cmds)
    }
}

impl Plan {
    /// The approval form of tool `tool` of agent task `task`, if it has one.
    pub fn tool_form(&self, task: usize, tool: &str) -> Option<&ApprovalWith> {
        let a = self.agents.get(task)?.as_ref()?;
        let i = a.with.tools.iter().position(|t| t.name == tool)?;
        a.forms[i].as_ref()
    }

    /// The `callback` setting of tool number `tool` of agent task `task`, if its calls wait
    /// for one.
    pub fn tool_callback(&self, task: usize, tool: usize) -> Option<&CallbackWith> {
        self.agents.get(task)?.as_ref()?.callbacks.get(tool)?.as_ref()
    }

    /// Whether agent task `task` has a tool whose calls wait for a callback.
    pub fn agent_has_callbacks(&self, task: usize) -> bool {
        self.agents.get(task).and_then(Option::as_ref).is_some_and(|a| a.callbacks.iter().any(Option::is_some))
    }

    /// Whether the approval of tool `tool` of agent task `task` fails the task when rejected.
    fn rejection_fails(&self, task: usize, tool: &str) -> bool {
        self.agent_with(task)
            .and_then(|w| w.tools.iter().find(|t| t.name == tool))
            .and_then(|t| t.approval.as_ref())
            .is_some_and(|a| a.on_reject == Some(OnReject::Fail))
    }
}

/// The most bytes of an approval's question kept (it quotes the model's arguments).
const MAX_PROMPT_BYTES: usize = 4096;

/// `text` cut to `max` bytes (at a character boundary), with `…` when cut.
fn bounded_text(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// A call a turn asked for: its id, tool name and arguments.
type Asked = (String, String, Value);

/// The text, model, JSON and calls of a turn's output (as the runtime reports it).
fn answer_of(output: &Value) -> (String, Option<String>, Option<Value>, Vec<Asked>) {
    let text = output.get("text").and_then(Value::as_str).unwrap_or_default().to_string();
    let model = output.get("model").and_then(Value::as_str).map(str::to_string);
    let json = output.get("json").cloned();
    let calls = output
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(k, c)| {
            let id = c.get("id").and_then(Value::as_str).map_or_else(|| format!("call_{k}"), str::to_string);
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            (id, name, c.get("arguments").cloned().unwrap_or(Value::Null))
        })
        .collect();
    (text, model, json, calls)
}

/// The loop of attempt `id`'s unit.
fn lp(st: &mut RunState, id: AttemptId) -> &mut AgentLoop {
    st.tasks[id.task].units[id.unit()].agent.get_or_insert_with(Default::default)
}

impl<'p> Transition<'p, '_> {
    fn agent_loop(&mut self, id: AttemptId) -> &mut AgentLoop {
        lp(self.st, id)
    }

    /// Dispatch started unit `k` of agent task `i`: its new attempt asks for the next turn.
    pub(super) fn agent_turn_started(&mut self, i: usize, k: usize) {
        let now = self.now;
        let u = &mut self.st.tasks[i].units[k];
        let attempt = u.attempt;
        let l = u.agent.get_or_insert_with(Default::default);
        l.asking = Some(attempt);
        l.asked_at = Some(now);
        l.tries += 1;
    }

    /// Whether attempt `id` of an agent unit is one it runs now (its turn or a call).
    pub(super) fn agent_runs(&self, id: AttemptId) -> bool {
        self.unit(id)
            .ok()
            .filter(|u| u.status == TaskStatus::Running)
            .and_then(|u| u.agent.as_deref())
            .is_some_and(|l| l.asking == Some(id.attempt) || l.running_call(id.attempt).is_some())
    }

    /// Attempt `id` of an agent unit (checked by [`Transition::agent_runs`]) ended.
    pub(super) fn agent_finished(&mut self, id: AttemptId, result: &AttemptResult, usage: Usage) {
        let l = lp(self.st, id);
        l.tokens += usage.tokens;
        l.cost_usd += usage.cost_usd;
        if l.asking == Some(id.attempt) {
            return self.turn_finished(id, result, usage);
        }
        let Some((t, c)) = l.running_call(id.attempt) else { return };
        let call = &mut l.turns[t].calls[c];
        call.tokens += usage.tokens;
        call.cost_usd += usage.cost_usd;
        let name = call.name.clone();
        match result {
            AttemptResult::Succeeded { .. } if self.call_callback(id.task, &name).is_some() => {
                self.await_call_callback(id, t, c);
            }
            AttemptResult::Succeeded { output, .. } => self.call_succeeded(id, t, c, output),
            AttemptResult::Failed { error, retryable, .. } => self.call_failed(id, t, c, error, *retryable),
        }
    }

    /// The `callback` setting of the tool named `name` of agent task `task`, if it has one.
    fn call_callback(&self, task: usize, name: &str) -> Option<&'p CallbackWith> {
        let plan: &'p Plan = self.plan;
        let tool = plan.agent_with(task)?.tools.iter().position(|t| t.name == name)?;
        plan.tool_callback(task, tool)
    }

    /// Call `c` of turn `t` succeeded with `output`.
    fn call_succeeded(&mut self, id: AttemptId, t: usize, c: usize, output: &Value) {
        let now = self.now;
        let call = &mut lp(self.st, id).turns[t].calls[c];
        call.ended_at = Some(now);
        call.status = CallStatus::Succeeded;
        call.result = Some(Output::new(bounded_result(output)));
        call.error = None;
        self.after_calls(id);
    }

    /// Call `c` of turn `t` failed at attempt `id`: it waits for its retry when `retryable`
    /// and tries are left, else it failed (the model is told; too many failures of one tool
    /// fail the task).
    fn call_failed(&mut self, id: AttemptId, t: usize, c: usize, error: &str, retryable: bool) {
        let (plan, now) = (self.plan, self.now);
        let l = lp(self.st, id);
        let call = &mut l.turns[t].calls[c];
        call.ended_at = Some(now);
        call.error = Some(error.to_string());
        let nth = call.tries;
        if retryable && nth < plan.retry[id.task].max_attempts {
            let at = now + plan.backoff(self.st, id.task, id.item, id.attempt, nth);
            let call = &mut lp(self.st, id).turns[t].calls[c];
            call.status = CallStatus::RetryWait;
            call.retry_at = Some(at);
            self.unit_mut(id).cause = Some(self.cause.clone());
            self.cmds.push(Command::ScheduleRetry { task: id.task, item: id.item, attempt: id.attempt, at });
            return;
        }
        call.status = CallStatus::Failed;
        let name = call.name.clone();
        let n = l.failures.entry(name.clone()).or_default();
        *n += 1;
        if *n > MAX_TOOL_FAILURES {
            let msg = format!("tool `{name}` failed {n} times (more than {MAX_TOOL_FAILURES}); the last time: {error}");
            return self.agent_fails(id, msg);
        }
        self.after_calls(id);
    }

    /// The call of attempt `id` went out (call `c` of turn `t`): it waits for the answer to
    /// the token it sent, holding nothing, until its timeout or its heartbeat's deadline (as
    /// a task with a `callback` does; the same attempt, named by the token).
    fn await_call_callback(&mut self, id: AttemptId, t: usize, c: usize) {
        let now = self.now;
        let name = lp(self.st, id).turns[t].calls[c].name.clone();
        let cb = self.call_callback(id.task, &name).cloned().unwrap_or_default();
        let waits = Waits::callback(&cb, now);
        let (at, _) = waits.callback_due().expect("a callback wait has a timeout");
        let cause = self.cause.clone();
        let call = &mut lp(self.st, id).turns[t].calls[c];
        call.status = CallStatus::AwaitingCallback;
        call.waits = Some(waits);
        call.cause = Some(cause);
        self.cmds.push(Command::Await { task: id.task, item: id.item, attempt: id.attempt });
        self.cmds.push(Command::ScheduleWake { task: id.task, item: id.item, attempt: id.attempt, at });
    }

    /// `(turn, call)` of the call whose attempt `id` waits for its callback.
    fn callback_call(&self, id: AttemptId) -> Result<(usize, usize), Ignored> {
        self.call_at(id, AgentLoop::callback_call)
            .ok_or(Ignored("no call waits for a callback at this attempt (answered, timed out, or late)"))
    }

    /// `(turn, call)` that `find` finds at attempt `id` of a running agent's unit.
    fn call_at(&self, id: AttemptId, find: fn(&AgentLoop, u32) -> Option<(usize, usize)>) -> Option<(usize, usize)> {
        let u = self.unit(id).ok().filter(|u| u.status == TaskStatus::Running)?;
        find(u.agent.as_deref()?, id.attempt)
    }

    /// The answer to the callback of the call waiting at attempt `id` came: its output is the
    /// call's result. `Err` when no call waits for it.
    pub(super) fn agent_callback_answered(&mut self, id: AttemptId, output: &Value) -> Result<(), Ignored> {
        let (t, c) = self.callback_call(id)?;
        self.call_succeeded(id, t, c, output);
        Ok(())
    }

    /// The holder of the token of the call waiting at attempt `id` reported a failure.
    pub(super) fn agent_callback_failed(&mut self, id: AttemptId, error: &str, retryable: bool) -> Result<(), Ignored> {
        let (t, c) = self.callback_call(id)?;
        self.call_failed(id, t, c, error, retryable);
        Ok(())
    }

    /// A heartbeat of the callback of the call waiting at attempt `id`: as a task's
    /// ([`Transition::heartbeat`]), its deadline moves.
    pub(super) fn agent_heartbeat(&mut self, id: AttemptId) -> Result<(), Ignored> {
        let (t, c) = self.callback_call(id)?;
        let now = self.now;
        let call = &mut lp(self.st, id).turns[t].calls[c];
        let w = call.waits.as_mut().ok_or(Ignored("no wait"))?;
        w.beat(now).map_err(Ignored)
    }

    /// A wake of the callback wait of the call at attempt `id`: past its deadline the call
    /// fails (its retries apply: a new attempt sends again, with a new token); before it (a
    /// heartbeat moved the deadline) the wake is armed again for the deadline.
    fn agent_callback_wake(&mut self, id: AttemptId, t: usize, c: usize) -> Result<(), Ignored> {
        let (now, cause) = (self.now, self.cause.clone());
        let call = &mut lp(self.st, id).turns[t].calls[c];
        let w = call.waits.as_ref().ok_or(Ignored("no wait"))?;
        let (due, beat) = w.callback_due().ok_or(Ignored("this wait has no time to wake"))?;
        if now < due {
            call.cause = Some(cause);
            self.cmds.push(Command::ScheduleWake { task: id.task, item: id.item, attempt: id.attempt, at: due });
            return Ok(());
        }
        let error = w.missed(due, beat);
        self.call_failed(id, t, c, &error, true);
        Ok(())
    }

    /// A call of agent unit `id` waiting for its retry is due: its next attempt starts.
    /// `Err` when no call waits for this attempt.
    pub(super) fn agent_retry_due(&mut self, id: AttemptId) -> Result<(), Ignored> {
        let (t, c) = self.call_at(id, AgentLoop::waiting_call).ok_or(Ignored("no retry due for this attempt"))?;
        self.start_call(id, t, c);
        Ok(())
    }

    /// Gives call `c` of turn `t` the unit's next attempt (started by this event): its call.
    fn next_attempt(&mut self, id: AttemptId, t: usize, c: usize) -> &mut CallRec {
        let cause = self.cause.clone();
        let ts = &mut self.st.tasks[id.task];
        ts.attempts += 1;
        let u = &mut ts.units[id.unit()];
        u.attempt += 1;
        u.started_by.push(cause.clone());
        u.cause = Some(cause);
        let attempt = u.attempt;
        let call = &mut u.agent.as_mut().expect("an agent unit").turns[t].calls[c];
        call.attempt = attempt;
        call
    }

    /// Starts call `c` of turn `t` as a new attempt of the unit.
    fn start_call(&mut self, id: AttemptId, t: usize, c: usize) {
        let now = self.now;
        let call = self.next_attempt(id, t, c);
        let attempt = call.attempt;
        call.tries += 1;
        call.status = CallStatus::Running;
        call.retry_at = None;
        call.started_at.get_or_insert(now);
        self.cmds.push(Command::Execute { task: id.task, item: id.item, attempt });
    }

    fn turn_finished(&mut self, id: AttemptId, result: &AttemptResult, usage: Usage) {
        let (plan, now) = (self.plan, self.now);
        let Some(plan) = plan.agents[id.task].as_ref() else { return };
        let l = lp(self.st, id);
        let started_at = l.asked_at.take();
        l.asking = None;
        let output = match result {
            AttemptResult::Failed { error, retryable, .. } => {
                let turn = l.turns.len() + 1;
                let error = format!("turn {turn}: {error}");
                return self.fail_attempt(id, &error, *retryable);
            }
            AttemptResult::Succeeded { output, .. } => output,
        };
        let (text, model, json, asked) = answer_of(output);
        l.tries = 0;
        let turn = l.turns.len() + 1;
        // Calls past the bound are not kept: one more stands for them all, refused, so what a
        // turn keeps is bounded whatever the model sends.
        let extra = asked.len().saturating_sub(MAX_CALLS_PER_TURN);
        let mut calls = Vec::with_capacity(asked.len().min(MAX_CALLS_PER_TURN + 1));
        let mut refused = Vec::new();
        for (k, (call_id, name, arguments)) in asked.into_iter().take(MAX_CALLS_PER_TURN + 1).enumerate() {
            let why = if k >= MAX_CALLS_PER_TURN {
                Err(format!(
                    "more than {MAX_CALLS_PER_TURN} tool calls in one turn: this one and the {} after it were not run",
                    extra - 1
                ))
            } else {
                plan.refusal(&name, &arguments)
            };
            let error = why.err();
            if let Some(e) = &error {
                refused.push(format!("`{name}`: {e}"));
            }
            calls.push(CallRec::asked(call_id, name, arguments, error));
        }
        let done = calls.is_empty();
        l.turns.push(TurnRec {
            attempt: id.attempt,
            text,
            model,
            tokens: usage.tokens,
            cost_usd: usage.cost_usd,
            started_at,
            ended_at: now,
            calls,
        });
        l.refused += refused.len() as u32;
        if done {
            let out = l.output(json.as_ref(), None);
            return self.agent_succeeds(id, out);
        }
        if turn as u32 >= plan.with.turns() {
            let max = plan.with.turns();
            if plan.with.on_max_turns == Some(OnMaxTurns::Answer) {
                for c in &mut l.turns[turn - 1].calls {
                    c.status = CallStatus::Refused;
                    c.error.get_or_insert_with(|| "not run: the agent reached `max_turns`".into());
                }
                let out = l.output(None, Some("max_turns"));
                return self.agent_succeeds(id, out);
            }
            let msg = format!("the agent reached max_turns ({max}) and the model still called tools");
            return self.agent_fails(id, msg);
        }
        if l.refused > MAX_REFUSED_CALLS {
            let msg = format!(
                "the model made {} tool calls that could not run (more than {MAX_REFUSED_CALLS}); the last: {}",
                l.refused,
                refused.last().map(String::as_str).unwrap_or_default()
            );
            return self.agent_fails(id, msg);
        }
        let to_start: Vec<usize> = l.turns[turn - 1]
            .calls
            .iter()
            .enumerate()
            .filter(|(_, c)| c.status == CallStatus::Running)
            .map(|(k, _)| k)
            .collect();
        for c in to_start {
            let name = &self.st.tasks[id.task].units[id.unit()].agent.as_ref().expect("an agent").turns[turn - 1].calls
                [c]
                .name;
            if self.plan.tool_form(id.task, name).is_some() {
                self.await_call(id, turn - 1, c);
            } else {
                self.start_call(id, turn - 1, c);
            }
        }
        self.after_calls(id);
    }

    /// Call `c` of turn `t` waits for its approval, as a new attempt of the unit that nothing
    /// runs (as a `wait` task's): listed for approvers, with its timeout scheduled.
    fn await_call(&mut self, id: AttemptId, t: usize, c: usize) {
        let now = self.now;
        let call = &self.st.tasks[id.task].units[id.unit()].agent.as_ref().expect("an agent").turns[t].calls[c];
        let tool = self.plan.agent_with(id.task).and_then(|w| w.tools.iter().find(|x| x.name == call.name));
        let approval = tool.and_then(|t| t.approval.as_ref()).expect("a tool with an approval");
        let prompt = approval.prompt.as_ref().map(|p| {
            let ctx = minijinja::context! {
                args => super::context::json_ctx(&call.arguments),
                ..self.plan.context_value(self.st, Some(id.task), id.item)
            };
            let text = match self.plan.render_in(&Value::String(p.clone()), &ctx) {
                Ok(Value::String(s)) => s,
                Ok(v) => v.to_string(),
                Err(e) => format!("Run `{}` with {}? (the prompt did not render: {e})", call.name, call.arguments),
            };
            // The model's arguments are in it: what the run's state keeps of it is bounded.
            bounded_text(text, MAX_PROMPT_BYTES)
        });
        let timeout_at = approval.timeout.map(|d| now.saturating_add(d.0.as_millis() as Millis));
        let call = self.next_attempt(id, t, c);
        let attempt = call.attempt;
        call.status = CallStatus::Awaiting;
        call.waits = Some(Waits {
            kind: WaitKind::Approval,
            since: now,
            event: None,
            key: None,
            prompt,
            timeout_at,
            times_out: timeout_at.is_some(),
            heartbeat: None,
            beat_at: None,
        });
        self.cmds.push(Command::Await { task: id.task, item: id.item, attempt });
        if let Some(at) = timeout_at {
            self.cmds.push(Command::ScheduleWake { task: id.task, item: id.item, attempt, at });
        }
    }

    /// The answer to the approval of the call awaiting at attempt `id` came (`Err` when no
    /// call awaits it: answered, timed out, late). Approved, the call runs (a new attempt);
    /// rejected, the model is told, or the task fails (`on_reject: fail`).
    pub(super) fn agent_answered(&mut self, id: AttemptId, output: &Value) -> Result<(), Ignored> {
        let (t, c) = self.awaiting_call(id)?;
        let approved = output.get("approved") == Some(&Value::Bool(true));
        let call = &mut lp(self.st, id).turns[t].calls[c];
        call.approval = Some(output.clone());
        if approved {
            self.start_call(id, t, c);
            return Ok(());
        }
        let by = output.get("by").and_then(Value::as_str);
        let mut why = match by {
            Some(by) => format!("the call was rejected by {by}"),
            None => "the call was rejected".to_string(),
        };
        if let Some(comment) = output.get("comment").and_then(Value::as_str) {
            why.push_str(&format!(": {comment}"));
        }
        self.call_refused(id, t, c, why);
        Ok(())
    }

    /// A wake of a call waiting at attempt `id`: its approval timed out (a rejection), or its
    /// callback's deadline came.
    pub(super) fn agent_wake(&mut self, id: AttemptId) -> Result<(), Ignored> {
        if let Ok((t, c)) = self.callback_call(id) {
            return self.agent_callback_wake(id, t, c);
        }
        let (t, c) = self.awaiting_call(id)?;
        let call = &mut lp(self.st, id).turns[t].calls[c];
        let w = call.waits.as_ref();
        let Some(at) = w.and_then(|w| w.timeout_at) else {
            return Err(Ignored("this approval has no timeout"));
        };
        let waited = at.saturating_sub(w.map_or(at, |w| w.since));
        call.approval = Some(serde_json::json!({"approved": false, "timed_out": true, "by": null}));
        let why = format!("no one approved the call within {}", crate::engine::waits::human(waited));
        self.call_refused(id, t, c, why);
        Ok(())
    }

    fn awaiting_call(&self, id: AttemptId) -> Result<(usize, usize), Ignored> {
        self.call_at(id, AgentLoop::awaiting_call)
            .ok_or(Ignored("no call awaits an answer at this attempt (answered, timed out, or late)"))
    }

    /// Call `c` of turn `t` will not run: the model is told `why`, or the task fails.
    fn call_refused(&mut self, id: AttemptId, t: usize, c: usize, why: String) {
        let now = self.now;
        let call = &mut lp(self.st, id).turns[t].calls[c];
        call.status = CallStatus::Refused;
        call.ended_at = Some(now);
        call.error = Some(why.clone());
        let name = call.name.clone();
        if self.plan.rejection_fails(id.task, &name) {
            return self.agent_fails(id, format!("tool `{name}`: {why}"));
        }
        self.after_calls(id);
    }

    /// When every call of the last turn has settled, the unit goes back to `Pending`: dispatch
    /// starts the next turn within the budget and the caps.
    fn after_calls(&mut self, id: AttemptId) {
        let l = self.agent_loop(id);
        if !l.calls_settled() {
            return;
        }
        l.bound();
        self.move_unit(id.task, id.unit(), TaskStatus::Pending);
        self.make_dispatchable(id.task);
    }

    fn agent_succeeds(&mut self, id: AttemptId, out: Value) {
        self.move_unit(id.task, id.unit(), TaskStatus::Succeeded);
        let u = self.unit_mut(id);
        u.output = Some(Output::new(out));
        u.error = None;
    }

    /// The agent fails for good (not retried: another attempt would make the same turns).
    fn agent_fails(&mut self, id: AttemptId, error: String) {
        let u = self.unit_mut(id);
        u.output = u.agent.as_deref().map(|l| Output::new(l.output(None, Some("failed"))));
        self.move_unit(id.task, id.unit(), TaskStatus::Failed);
        self.unit_mut(id).error = Some(error);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::engine::tests::{plan, priced};
    use crate::engine::waits::AnswerError;

    const AGENT: &str = r#"
spec:
  inputs: { q: { type: string } }
  tasks:
    - id: support
      type: agent
      retry: { max_attempts: 2, backoff: { initial: 1s, max: 1s, jitter: none } }
      with:
        model: gpt-4o
        prompt: "{{ inputs.q }}"
        max_turns: 3
        tools:
          - name: weather
            description: Current weather for a city
            parameters: { type: object, properties: { city: { type: string } }, required: [city] }
            run: { type: http, with: { url: "https://api.example.com/weather?city={{ args.city }}" } }
    - { id: after, type: transform, depends_on: [support], with: { output: "{{ tasks.support.output.text }}" } }
"#;

    fn turn(text: &str, calls: Value) -> AttemptResult {
        AttemptResult::Succeeded {
            output: Output::new(json!({"text": text, "model": "openai/gpt-4o", "tool_calls": calls})),
            usage: Usage { tokens: 100, cost_usd: 0.001 },
        }
    }

    fn ok(v: Value) -> AttemptResult {
        AttemptResult::Succeeded { output: Output::new(v), usage: Usage::default() }
    }

    fn started(p: &Plan) -> RunState {
        let mut st = p.new_run("r", json!({"q": "weather?"}).as_object().cloned().unwrap());
        let cmds = p.apply(&mut st, &Event::Start, 0).unwrap();
        assert_eq!(cmds, vec![Command::Execute { task: 0, item: None, attempt: 1 }]);
        st
    }

    fn at(attempt: u32) -> AttemptId {
        AttemptId { task: 0, item: None, attempt }
    }

    #[test]
    fn turns_and_calls_are_attempts_and_none_runs_twice() {
        let p = plan(AGENT);
        let mut st = started(&p);
        assert!(matches!(p.agent_step(&st, at(1)), Some(Step::Turn { turn: 1, ref history }) if history.is_empty()));
        let asked = turn(
            "Let me look.",
            json!([{"id": "a", "name": "weather", "arguments": {"city": "Paris"}},
                   {"id": "b", "name": "weather", "arguments": {"city": "Oslo"}}]),
        );
        let first = Event::finished(0, None, 1, asked);
        let cmds = p.apply(&mut st, &first, 1_000).unwrap();
        assert_eq!(
            cmds,
            vec![
                Command::Execute { task: 0, item: None, attempt: 2 },
                Command::Execute { task: 0, item: None, attempt: 3 }
            ]
        );
        // A redelivery changes nothing; its commands are found again.
        assert!(p.apply(&mut st.clone(), &first, 1_001).is_err());
        assert_eq!(p.replay(&st, &first.key()), cmds);
        assert_eq!(p.in_flight(&st), cmds);
        let Some(Step::Tool { turn: 1, call, tool: 0 }) = p.agent_step(&st, at(3)) else { panic!() };
        assert_eq!((call.id.as_str(), &call.arguments), ("b", &json!({"city": "Oslo"})));
        // The calls end in any order; the next turn waits for both.
        assert!(p.apply(&mut st, &Event::finished(0, None, 3, ok(json!("snow"))), 1_500).unwrap().is_empty());
        assert!(p.apply(&mut st, &Event::finished(0, None, 3, ok(json!("rain"))), 1_501).is_err(), "once");
        let cmds = p.apply(&mut st, &Event::finished(0, None, 2, ok(json!({"sky": "clear"}))), 2_000).unwrap();
        assert_eq!(cmds, vec![Command::Execute { task: 0, item: None, attempt: 4 }]);
        let Some(Step::Turn { turn: 2, history }) = p.agent_step(&st, at(4)) else { panic!() };
        assert_eq!(history[0].calls[1].content(), ("snow".to_string(), false));
        assert_eq!(history[0].calls[0].content(), ("{\"sky\":\"clear\"}".to_string(), false));
        assert!(p.agent_step(&st, at(2)).is_none(), "a finished call is not run again");
        let cmds = p
            .apply(&mut st, &Event::finished(0, None, 4, turn("Clear in Paris, snow in Oslo.", json!([]))), 3_000)
            .unwrap();
        assert_eq!(cmds, vec![Command::Execute { task: 1, item: None, attempt: 1 }]);
        let out = st.tasks[0].output.as_deref().unwrap();
        assert_eq!(out["text"], "Clear in Paris, snow in Oslo.");
        assert_eq!(out["turns"], 2);
        assert_eq!(out["tool_calls"][0]["status"], "succeeded");
        assert_eq!(out["tool_calls"][1]["duration_ms"], 500);
        assert_eq!(out["transcript"].as_array().unwrap().len(), 4);
        assert_eq!(out["usage"]["tokens"], 200);
        assert_eq!(st.tasks[0].attempts, 4);
        assert_eq!(st.tasks[0].tokens, 200);
        assert_eq!(p.render_with(&st, 1, None).unwrap()["output"], "Clear in Paris, snow in Oslo.");
    }

    const GATED: &str = r#"
          - name: refund
            parameters: { type: object, properties: { amount: { type: number } }, required: [amount] }
            approval:
              prompt: "Refund {{ args.amount }} for {{ inputs.q }}?"
              fields: { note: { type: string, required: false } }
              timeout: 1h
            run: { type: transform, with: { output: "refunded {{ args.amount }} ({{ approval.fields.note }})" } }
"#;

    fn gated(on_reject: &str) -> Plan {
        let tools = GATED.replace("timeout: 1h", &format!("timeout: 1h{on_reject}"));
        plan(&AGENT.replace("    - { id: after", &format!("{}    - {{ id: after", tools.trim_start_matches('\n'))))
    }

    fn approval(approved: bool, comment: Option<&str>) -> crate::engine::waits::Approval {
        crate::engine::waits::Approval {
            approved,
            fields: json!({"note": "ok by policy"}).as_object().cloned().unwrap(),
            comment: comment.map(str::to_string),
            call: None,
        }
    }

    #[test]
    fn a_gated_call_waits_for_its_approval_holding_nothing_and_runs_once_approved() {
        let p = gated("");
        let mut st = started(&p);
        let asked = turn(
            "Checking and refunding.",
            json!([{"id": "w", "name": "weather", "arguments": {"city": "Paris"}},
                   {"id": "r", "name": "refund", "arguments": {"amount": 20}}]),
        );
        let first = Event::finished(0, None, 1, asked);
        let cmds = p.apply(&mut st, &first, 1_000).unwrap();
        let hour = 3_600_000;
        assert_eq!(
            cmds,
            vec![
                Command::Execute { task: 0, item: None, attempt: 2 },
                Command::Await { task: 0, item: None, attempt: 3 },
                Command::ScheduleWake { task: 0, item: None, attempt: 3, at: 1_000 + hour },
            ]
        );
        assert_eq!(p.replay(&st, &first.key()), cmds, "a redelivery finds the wait again");
        assert_eq!(p.in_flight(&st), cmds);
        assert!(!p.is_running(&st, at(3)), "nothing runs while it waits");
        assert!(p.agent_step(&st, at(3)).is_none());
        assert!(st.awaits_answer());
        let w = st.waits_at(at(3)).unwrap();
        assert_eq!(w.prompt.as_deref(), Some("Refund 20 for weather??"));
        // However long the model's arguments, the question kept is bounded.
        let tools = GATED.replace("Refund {{ args.amount }}", "Refund {{ args }}");
        let quoting =
            plan(&AGENT.replace("    - { id: after", &format!("{}    - {{ id: after", tools.trim_start_matches('\n'))));
        let mut st2 = started(&quoting);
        let huge =
            turn("", json!([{"id": "r", "name": "refund", "arguments": {"amount": 1, "pad": "é".repeat(10_000)}}]));
        quoting.apply(&mut st2, &Event::finished(0, None, 1, huge), 1).unwrap();
        let kept = st2.waits_at(at(2)).and_then(|w| w.prompt.clone()).unwrap();
        assert!(kept.len() <= MAX_PROMPT_BYTES + '…'.len_utf8() && kept.ends_with('…'), "{}", kept.len());
        assert!(p.form_at(&st, at(3)).is_some() && p.form_at(&st, at(2)).is_none());
        // The weather call ends; the turn waits for the refund's approval.
        assert!(p.apply(&mut st, &Event::finished(0, None, 2, ok(json!("sun"))), 1_100).unwrap().is_empty());
        assert_eq!(st.tasks[0].status, TaskStatus::Running);
        // Two answers race: the first is applied, the second is ignored.
        let yes = p.approve(&st, "support", None, &approval(true, None), "ann").unwrap();
        let no = p.approve(&st, "support", None, &approval(false, None), "bob").unwrap();
        assert_eq!(yes.attempt_id(), Some(at(3)));
        let cmds = p.apply(&mut st, &yes, 5_000).unwrap();
        assert_eq!(cmds, vec![Command::Execute { task: 0, item: None, attempt: 4 }]);
        assert!(p.apply(&mut st.clone(), &no, 5_001).is_err(), "the loser changes nothing");
        assert!(p.apply(&mut st.clone(), &Event::WakeDue { task: 0, item: None, attempt: 3 }, hour * 2).is_err());
        assert!(matches!(
            p.approve(&st, "support", None, &approval(false, None), "bob"),
            Err(crate::engine::waits::AnswerError::NotWaiting(_))
        ));
        let Some(Step::Tool { call, .. }) = p.agent_step(&st, at(4)) else { panic!() };
        assert_eq!(call.approval.as_ref().unwrap()["by"], "ann");
        assert_eq!(call.approval.as_ref().unwrap()["call"], "r");
        let cmds = p.apply(&mut st, &Event::finished(0, None, 4, ok(json!("refunded 20"))), 6_000).unwrap();
        assert_eq!(cmds, vec![Command::Execute { task: 0, item: None, attempt: 5 }]);
        p.apply(&mut st, &Event::finished(0, None, 5, turn("Done.", json!([]))), 7_000).unwrap();
        let out = st.tasks[0].output.as_deref().unwrap();
        assert_eq!(out["tool_calls"][1]["status"], "succeeded");
        assert_eq!(out["tool_calls"][1]["approval"]["approved"], true);
    }

    #[test]
    fn a_rejected_or_unanswered_call_goes_back_to_the_model_or_fails_the_task() {
        let refund = |n: u32| turn("", json!([{"id": format!("r{n}"), "name": "refund", "arguments": {"amount": n}}]));
        // Rejected: the model is told who and why, and takes its next turn.
        let p = gated("");
        let mut st = started(&p);
        p.apply(&mut st, &Event::finished(0, None, 1, refund(1)), 1).unwrap();
        let no = p.approve(&st, "support", None, &approval(false, Some("over the limit")), "ann").unwrap();
        let cmds = p.apply(&mut st, &no, 2).unwrap();
        assert_eq!(cmds, vec![Command::Execute { task: 0, item: None, attempt: 3 }]);
        let Some(Step::Turn { turn: 2, history }) = p.agent_step(&st, at(3)) else { panic!() };
        assert_eq!(
            history[0].calls[0].content(),
            ("error: the call was rejected by ann: over the limit".to_string(), true)
        );
        // No answer within the timeout: the same, saying so.
        p.apply(&mut st, &Event::finished(0, None, 3, refund(2)), 10).unwrap();
        let cmds = p.apply(&mut st, &Event::WakeDue { task: 0, item: None, attempt: 4 }, 10 + 3_600_000).unwrap();
        assert_eq!(cmds, vec![Command::Execute { task: 0, item: None, attempt: 5 }]);
        let Some(Step::Turn { turn: 3, history }) = p.agent_step(&st, at(5)) else { panic!() };
        assert_eq!(history[1].calls[0].content().0, "error: no one approved the call within 1h");
        // `on_reject: fail`: the task fails.
        let p = gated("\n              on_reject: fail");
        let mut st = started(&p);
        p.apply(&mut st, &Event::finished(0, None, 1, refund(1)), 1).unwrap();
        let no = p.approve(&st, "support", None, &approval(false, None), "ann").unwrap();
        p.apply(&mut st, &no, 2).unwrap();
        assert_eq!(st.tasks[0].status, TaskStatus::Failed);
        assert_eq!(st.tasks[0].error.as_deref(), Some("tool `refund`: the call was rejected by ann"));
    }

    #[test]
    fn several_waiting_calls_are_answered_by_id() {
        let p = gated("");
        let mut st = started(&p);
        let two = turn(
            "",
            json!([{"id": "r1", "name": "refund", "arguments": {"amount": 1}},
                   {"id": "r2", "name": "refund", "arguments": {"amount": 2}}]),
        );
        p.apply(&mut st, &Event::finished(0, None, 1, two), 1).unwrap();
        let unnamed = p.approve(&st, "support", None, &approval(true, None), "ann");
        assert!(
            matches!(&unnamed, Err(crate::engine::waits::AnswerError::Invalid(m)) if m.contains("say which `call` (r1, r2)")),
            "{unnamed:?}"
        );
        let mut a = approval(true, None);
        a.call = Some("r2".into());
        let e = p.approve(&st, "support", None, &a, "ann").unwrap();
        assert_eq!(e.attempt_id(), Some(at(3)));
        a.call = Some("r9".into());
        assert!(p.approve(&st, "support", None, &a, "ann").is_err());
        // A field the form does not have is refused, as for a `wait`.
        let mut bad = approval(true, None);
        bad.call = Some("r1".into());
        bad.fields.insert("amount".into(), json!(5));
        assert!(matches!(
            p.approve(&st, "support", None, &bad, "ann"),
            Err(crate::engine::waits::AnswerError::Invalid(m)) if m.contains("no field `amount`")
        ));
    }

    #[test]
    fn calls_that_cannot_run_go_back_to_the_model_as_errors() {
        let p = plan(AGENT);
        let mut st = started(&p);
        let bad = turn(
            "",
            json!([{"id": "a", "name": "wether", "arguments": {"city": "Paris"}},
                   {"id": "b", "name": "weather", "arguments": {"town": "Oslo"}},
                   {"id": "c", "name": "weather", "arguments": "{city: Oslo"}]),
        );
        // Nothing runs: the next turn is asked at once.
        let cmds = p.apply(&mut st, &Event::finished(0, None, 1, bad), 1_000).unwrap();
        assert_eq!(cmds, vec![Command::Execute { task: 0, item: None, attempt: 2 }]);
        let Some(Step::Turn { turn: 2, history }) = p.agent_step(&st, at(2)) else { panic!() };
        let errors: Vec<(String, bool)> = history[0].calls.iter().map(CallRec::content).collect();
        assert!(errors[0].0.contains("there is no tool `wether` (the tools are: weather)"), "{errors:?}");
        assert!(
            errors[1].0.contains("do not match the tool's parameters") && errors[1].0.contains("city"),
            "{errors:?}"
        );
        assert!(errors[2].0.contains("not a JSON object: {city: Oslo"), "{errors:?}");
        assert!(errors.iter().all(|(_, e)| *e));
    }

    #[test]
    fn a_turn_keeps_at_most_its_bound_of_calls() {
        let p = plan(AGENT);
        let mut st = started(&p);
        let many: Vec<Value> = (0..1000)
            .map(|k| json!({"id": format!("c{k}"), "name": "weather", "arguments": {"city": "Rome"}}))
            .collect();
        let cmds = p.apply(&mut st, &Event::finished(0, None, 1, turn("", Value::Array(many))), 1).unwrap();
        assert_eq!(cmds.len(), MAX_CALLS_PER_TURN, "the first 16 run");
        let calls = st.tasks[0].units[0].agent.as_ref().unwrap().last_calls();
        assert_eq!(calls.len(), MAX_CALLS_PER_TURN + 1);
        assert!(calls[16].content().0.contains("this one and the 983 after it were not run"), "{:?}", calls[16]);
    }

    #[test]
    fn max_turns_fails_or_answers_as_configured() {
        for (extra, ok) in [("", false), ("\n        on_max_turns: answer", true)] {
            let p = plan(&AGENT.replace("max_turns: 3", &format!("max_turns: 2{extra}")));
            let mut st = started(&p);
            let call = || turn("checking", json!([{"id": "a", "name": "weather", "arguments": {"city": "Rome"}}]));
            p.apply(&mut st, &Event::finished(0, None, 1, call()), 1).unwrap();
            p.apply(&mut st, &Event::finished(0, None, 2, ok_(json!("sun"))), 2).unwrap();
            p.apply(&mut st, &Event::finished(0, None, 3, call()), 3).unwrap();
            let ts = &st.tasks[0];
            if ok {
                assert_eq!(ts.status, TaskStatus::Succeeded);
                let out = ts.output.as_deref().unwrap();
                assert_eq!((out["stopped"].as_str(), out["text"].as_str()), (Some("max_turns"), Some("checking")));
                assert_eq!(out["tool_calls"][1]["status"], "refused");
            } else {
                assert_eq!(ts.status, TaskStatus::Failed);
                assert_eq!(
                    ts.error.as_deref(),
                    Some("the agent reached max_turns (2) and the model still called tools")
                );
                assert_eq!(st.status, RunStatus::Failed);
            }
        }
    }

    fn ok_(v: Value) -> AttemptResult {
        ok(v)
    }

    #[test]
    fn failed_calls_and_turns_retry_on_their_own() {
        let p = plan(AGENT);
        let mut st = started(&p);
        let flaky = AttemptResult::Failed { error: "HTTP 503".into(), retryable: true, usage: Usage::default() };
        let asked = turn("", json!([{"id": "a", "name": "weather", "arguments": {"city": "Lima"}}]));
        p.apply(&mut st, &Event::finished(0, None, 1, asked), 1_000).unwrap();
        let cmds = p.apply(&mut st, &Event::finished(0, None, 2, flaky.clone()), 2_000).unwrap();
        assert_eq!(cmds, vec![Command::ScheduleRetry { task: 0, item: None, attempt: 2, at: 3_000 }]);
        assert_eq!(p.in_flight(&st), cmds);
        let due = Event::RetryDue { task: 0, item: None, attempt: 2 };
        assert_eq!(p.apply(&mut st, &due, 3_000).unwrap(), vec![Command::Execute { task: 0, item: None, attempt: 3 }]);
        assert!(p.apply(&mut st, &due, 3_001).is_err(), "a retry starts once");
        // Its retries spent, the call's error goes to the model.
        let cmds = p.apply(&mut st, &Event::finished(0, None, 3, flaky.clone()), 4_000).unwrap();
        assert_eq!(cmds, vec![Command::Execute { task: 0, item: None, attempt: 4 }]);
        let Some(Step::Turn { history, .. }) = p.agent_step(&st, at(4)) else { panic!() };
        assert_eq!(history[0].calls[0].content(), ("error: HTTP 503".to_string(), true));
        assert_eq!(history[0].calls[0].tries, 2);
        // A turn that fails is asked again, as a new attempt.
        let cmds = p.apply(&mut st, &Event::finished(0, None, 4, flaky), 5_000).unwrap();
        assert_eq!(cmds, vec![Command::ScheduleRetry { task: 0, item: None, attempt: 4, at: 6_000 }]);
        let due = Event::RetryDue { task: 0, item: None, attempt: 4 };
        assert_eq!(p.apply(&mut st, &due, 6_000).unwrap(), vec![Command::Execute { task: 0, item: None, attempt: 5 }]);
        assert!(matches!(p.agent_step(&st, at(5)), Some(Step::Turn { turn: 2, .. })));
        p.apply(&mut st, &Event::finished(0, None, 5, turn("It is unknown.", json!([]))), 7_000).unwrap();
        assert_eq!(st.tasks[0].status, TaskStatus::Succeeded);
    }

    #[test]
    fn each_turn_is_held_against_the_budget_with_everything_it_sends() {
        let yaml = AGENT.replace("spec:\n", "spec:\n  budget: { max_tokens: 3000 }\n");
        let p = priced(&yaml);
        let mut st = started(&p);
        let first = st.tasks[0].units[0].held.unwrap().tokens;
        assert!(first > 1024, "the tools and the prompt count: {first}");
        let asked = turn("", json!([{"id": "a", "name": "weather", "arguments": {"city": "Lima"}}]));
        p.apply(&mut st, &Event::finished(0, None, 1, asked), 1).unwrap();
        // A big result makes the next turn's worst case pass the budget: it is not asked.
        p.apply(&mut st, &Event::finished(0, None, 2, ok(json!("x".repeat(2_000)))), 2).unwrap();
        assert_eq!(st.tasks[0].status, TaskStatus::Failed);
        assert!(st.budget_stop.as_deref().unwrap().contains("budget exceeded"), "{:?}", st.budget_stop);
    }

    const CALLBACK_TOOL: &str = r#"
          - name: job
            parameters: { type: object, properties: { doc: { type: string } } }
            run:
              type: http
              with:
                method: POST
                url: "https://jobs.example.com/start?doc={{ args.doc }}"
                callback: { timeout: 1h, heartbeat: 5m }
"#;

    fn sent() -> AttemptResult {
        ok(json!({"status": 202}))
    }

    #[test]
    fn a_call_waits_for_its_callback_holding_nothing_and_one_answer_is_its_result() {
        let p = plan(&AGENT.replace("        tools:\n", &format!("        tools:\n{CALLBACK_TOOL}")));
        let mut st = started(&p);
        let asked = turn(
            "",
            json!([{"id": "j", "name": "job", "arguments": {"doc": "a.pdf"}},
                   {"id": "w", "name": "weather", "arguments": {"city": "Oslo"}}]),
        );
        p.apply(&mut st, &Event::finished(0, None, 1, asked), 1_000).unwrap();
        assert!(
            matches!(p.callback_unit(&st, "support", None, 2), Err(AnswerError::NotWaiting(m)) if m.contains("not returned"))
        );
        // The call went out: it waits, as the same attempt (its token names it), running nothing.
        let out = Event::finished(0, None, 2, sent());
        let cmds = p.apply(&mut st, &out, 2_000).unwrap();
        assert_eq!(
            cmds,
            vec![
                Command::Await { task: 0, item: None, attempt: 2 },
                Command::ScheduleWake { task: 0, item: None, attempt: 2, at: 302_000 },
            ]
        );
        assert_eq!(p.replay(&st, &out.key()), cmds, "a redelivered result sends what it asked for again");
        assert!(p.agent_step(&st, at(2)).is_none(), "nothing runs it");
        assert!(!p.is_running(&st, at(2)));
        assert!(st.awaits_answer());
        let id = p.callback_unit(&st, "support", None, 2).unwrap();
        assert_eq!(id, at(2));
        assert_eq!(st.waits_at(id).map(|w| w.kind), Some(WaitKind::Callback));
        assert_eq!(st.waiting_call(id).map(|c| c.id.as_str()), Some("j"));
        assert!(p.callback_unit(&st, "support", None, 3).is_err(), "the other call is not waiting");
        assert!(p.callback_unit(&st, "after", None, 2).is_err());
        // A heartbeat moves the deadline: the first wake re-arms itself (and is owed again).
        let beat = p.callback_heartbeat(&st, id, 200_000).unwrap();
        assert!(p.apply(&mut st, &beat, 200_000).unwrap().is_empty());
        let wake = Event::WakeDue { task: 0, item: None, attempt: 2 };
        let cmds = p.apply(&mut st, &wake, 302_000).unwrap();
        assert_eq!(cmds, vec![Command::ScheduleWake { task: 0, item: None, attempt: 2, at: 500_000 }]);
        assert_eq!(
            p.replay(&st, &wake.key()),
            [vec![Command::Await { task: 0, item: None, attempt: 2 }], cmds].concat()
        );
        // The other call ends; the next turn waits for the callback.
        assert!(p.apply(&mut st, &Event::finished(0, None, 3, ok(json!("snow"))), 303_000).unwrap().is_empty());
        let answer = p.callback_succeeded(&st, id, json!({"pages": 12})).unwrap();
        let racing = p.callback_failed(&st, id, "lost", false).unwrap();
        let cmds = p.apply(&mut st, &answer, 400_000).unwrap();
        assert_eq!(cmds, vec![Command::Execute { task: 0, item: None, attempt: 4 }]);
        assert!(p.apply(&mut st, &racing, 400_001).is_err(), "the loser of a race changes nothing");
        assert!(p.apply(&mut st, &answer, 400_002).is_err(), "a replayed answer changes nothing");
        assert!(p.apply(&mut st, &wake, 500_000).is_err(), "the timer after the answer changes nothing");
        assert!(
            matches!(p.callback_unit(&st, "support", None, 2), Err(AnswerError::NotWaiting(m)) if m.contains("answered already"))
        );
        let Some(Step::Turn { turn: 2, history }) = p.agent_step(&st, at(4)) else { panic!() };
        let job = &history[0].calls[0];
        assert_eq!(job.content(), ("{\"pages\":12}".to_string(), false));
        assert_eq!((job.started_at, job.ended_at), (Some(1_000), Some(400_000)), "its duration is the callback's");
        p.apply(&mut st, &Event::finished(0, None, 4, turn("12 pages; snow.", json!([]))), 401_000).unwrap();
        assert_eq!(st.tasks[0].status, TaskStatus::Succeeded);
        assert_eq!(st.tasks[0].output.as_deref().unwrap()["tool_calls"][0]["result"], json!({"pages": 12}));
    }

    #[test]
    fn a_missed_callback_fails_the_call_which_sends_again_then_the_model_is_told() {
        let p = plan(&AGENT.replace("        tools:\n", &format!("        tools:\n{CALLBACK_TOOL}")));
        let mut st = started(&p);
        let asked = turn("", json!([{"id": "j", "name": "job", "arguments": {"doc": "a.pdf"}}]));
        p.apply(&mut st, &Event::finished(0, None, 1, asked), 0).unwrap();
        p.apply(&mut st, &Event::finished(0, None, 2, sent()), 0).unwrap();
        // No heartbeat: at its deadline the call fails, and retries as a new attempt (a new token).
        let wake = Event::WakeDue { task: 0, item: None, attempt: 2 };
        let cmds = p.apply(&mut st, &wake, 300_000).unwrap();
        assert_eq!(cmds, vec![Command::ScheduleRetry { task: 0, item: None, attempt: 2, at: 301_000 }]);
        let call = &st.tasks[0].units[0].agent.as_ref().unwrap().turns[0].calls[0];
        assert_eq!(call.error.as_deref(), Some("no heartbeat came for 5m (the callback's `heartbeat`)"));
        assert!(p.callback_succeeded(&st, at(2), json!(1)).is_err(), "a token of an ended attempt is useless");
        let due = Event::RetryDue { task: 0, item: None, attempt: 2 };
        assert_eq!(
            p.apply(&mut st, &due, 301_000).unwrap(),
            vec![Command::Execute { task: 0, item: None, attempt: 3 }]
        );
        p.apply(&mut st, &Event::finished(0, None, 3, sent()), 302_000).unwrap();
        assert!(
            matches!(p.callback_unit(&st, "support", None, 2), Err(AnswerError::NotWaiting(m)) if m.contains("no call")),
        );
        // Its holder reports a failure, not to be retried: the model gets the error.
        let fail = p.callback_failed(&st, at(3), "the document is encrypted", false).unwrap();
        let cmds = p.apply(&mut st, &fail, 303_000).unwrap();
        assert_eq!(cmds, vec![Command::Execute { task: 0, item: None, attempt: 4 }]);
        let Some(Step::Turn { history, .. }) = p.agent_step(&st, at(4)) else { panic!() };
        assert_eq!(history[0].calls[0].content(), ("error: callback: the document is encrypted".to_string(), true));
        assert_eq!(history[0].calls[0].tries, 2);
        // A cancel ends the run while a call waits: its token is refused.
        let mut st = started(&p);
        let asked = turn("", json!([{"id": "j", "name": "job", "arguments": {"doc": "b.pdf"}}]));
        p.apply(&mut st, &Event::finished(0, None, 1, asked), 0).unwrap();
        p.apply(&mut st, &Event::finished(0, None, 2, sent()), 0).unwrap();
        p.apply(&mut st, &Event::Cancel, 10).unwrap();
        assert!(
            matches!(p.callback_unit(&st, "support", None, 2), Err(AnswerError::NotWaiting(m)) if m.contains("cancelled"))
        );
    }
}
