//! Applying one event: what each kind of event does to the run.

use super::*;

impl Transition<'_, '_> {
    pub(super) fn event(&mut self, event: &Event) -> Result<(), Ignored> {
        match event {
            Event::Start => {
                if self.st.status != RunStatus::Pending {
                    return Err(Ignored("run already started"));
                }
                self.move_run(RunStatus::Running);
                self.arm_deadline();
                self.work = if self.st.ended_tasks > 0 {
                    // A rerun: tasks it reuses have ended already; every other task is decided.
                    (0..self.plan.task_count()).filter(|&i| self.st.tasks[i].status == TaskStatus::Pending).collect()
                } else {
                    (0..self.plan.task_count()).filter(|&i| self.plan.deps[i].is_empty()).collect()
                };
                self.advance();
            }
            Event::Redrive { after, inputs } => {
                if !matches!(self.st.status, RunStatus::Failed | RunStatus::TimedOut) {
                    return Err(Ignored("only a failed or timed-out run is redriven"));
                }
                if self.st.version != *after {
                    return Err(Ignored("the run changed since this redrive was asked for"));
                }
                self.move_run(RunStatus::Running);
                self.st.error = None;
                self.st.outputs = None;
                for (k, v) in inputs.iter().flatten() {
                    self.st.inputs.insert(k.clone(), v.clone());
                }
                self.arm_deadline();
                for i in 0..self.st.tasks.len() {
                    if self.st.tasks[i].status == TaskStatus::Succeeded {
                        continue;
                    }
                    let ts = &mut self.st.tasks[i];
                    ts.attempt_base = ts.units.iter().map(|u| u.attempt).max().unwrap_or(0).max(ts.attempt_base);
                    // The run ended, so no unit runs: holds of attempts cut off then are dropped
                    // with their units (an answer that comes later is not counted).
                    for h in ts.units.iter().filter_map(|u| u.held) {
                        self.st.unsettled.sub(h);
                    }
                    let ts = &mut self.st.tasks[i];
                    ts.units.clear();
                    ts.tally = Default::default();
                    ts.output = None;
                    ts.error = None;
                    ts.reason = None;
                    ts.deps_settled = 0;
                    self.move_task(i, TaskStatus::Pending);
                    self.work.push(i);
                }
                self.advance();
            }
            Event::AttemptFinished { task, item, attempt, result, in_place } => {
                let id = AttemptId { task: *task, item: *item, attempt: *attempt };
                let usage = match result {
                    AttemptResult::Succeeded { usage, .. } | AttemptResult::Failed { usage, .. } => *usage,
                };
                let unit = self.unit(id)?;
                if unit.status == TaskStatus::Cancelled
                    && unit.attempt == id.attempt
                    && unit.held.is_some_and(|h| !h.is_zero() || usage.tokens > 0 || usage.cost_usd > 0.0)
                {
                    // Its task or run ended while it ran: what it spent is counted (once: the
                    // hold goes with it), nothing else changes. Even in an ended run.
                    self.settle_usage(id, usage);
                    if self.st.status == RunStatus::Running {
                        // What it held may let attempts waiting for the budget start.
                        self.advance();
                    }
                    return Ok(());
                }
                self.running()?;
                let agent = unit.agent.is_some();
                if agent && !self.agent_runs(id)
                    || !agent && (unit.status != TaskStatus::Running || unit.attempt != id.attempt)
                {
                    return Err(Ignored("not the running attempt (duplicate or late)"));
                }
                if *in_place {
                    self.unit_mut(id).in_place.push(id.attempt);
                }
                self.settle_usage(id, usage);
                match result {
                    _ if agent => self.agent_finished(id, result, usage),
                    AttemptResult::Succeeded { .. } if self.plan.callbacks[*task].is_some() => self.await_callback(id),
                    AttemptResult::Succeeded { output, .. } => {
                        self.move_unit(id.task, id.unit(), TaskStatus::Succeeded);
                        let u = self.unit_mut(id);
                        u.output = Some(Output::clone(output));
                        u.error = None;
                    }
                    AttemptResult::Failed { error, retryable, .. } => self.fail_attempt(id, error, *retryable),
                }
                self.settle(*task);
                self.advance();
            }
            Event::RetryDue { task, item, attempt } => {
                self.running()?;
                let id = AttemptId { task: *task, item: *item, attempt: *attempt };
                let unit = self.unit(id)?;
                if unit.status == TaskStatus::Running && unit.agent.is_some() {
                    // A tool call of an agent: its next attempt starts, the others run on.
                    self.agent_retry_due(id)?;
                    self.advance();
                    return Ok(());
                }
                if unit.status != TaskStatus::RetryWait || unit.attempt != id.attempt {
                    return Err(Ignored("no retry due for this attempt"));
                }
                self.move_unit(id.task, id.unit(), TaskStatus::Pending);
                self.unit_mut(id).retry_at = None;
                self.make_dispatchable(*task);
                self.advance();
            }
            Event::WakeDue { task, item, attempt } => {
                self.running()?;
                let id = AttemptId { task: *task, item: *item, attempt: *attempt };
                let unit = self.unit(id)?;
                if unit.status == TaskStatus::Running && unit.agent.is_some() {
                    // An agent's call waiting for its approval timed out, or for its callback.
                    self.agent_wake(id)?;
                    self.settle(id.task);
                    self.advance();
                    return Ok(());
                }
                if unit.status != TaskStatus::Waiting || unit.attempt != id.attempt {
                    return Err(Ignored("no wait due for this attempt"));
                }
                if unit.wake_at.is_none() {
                    return Err(Ignored("this wait has no time to wake"));
                }
                if unit.waits.as_ref().is_some_and(|w| w.kind == WaitKind::Callback) {
                    return self.callback_wake(id);
                }
                let woke = if unit.error.is_some() { Err(None) } else { self.plan.woke(id.task, unit).map_err(Some) };
                match woke {
                    Ok(output) => {
                        self.move_unit(id.task, id.unit(), TaskStatus::Succeeded);
                        self.unit_mut(id).output = Some(Output::new(output));
                    }
                    Err(error) => {
                        self.move_unit(id.task, id.unit(), TaskStatus::Failed);
                        if let Some(e) = error {
                            self.unit_mut(id).error = Some(e);
                        }
                    }
                }
                self.settle(id.task);
                self.advance();
            }
            Event::Complete { task, item, attempt, output } => {
                self.running()?;
                let id = AttemptId { task: *task, item: *item, attempt: *attempt };
                let unit = self.unit(id)?;
                if unit.status == TaskStatus::Running && unit.agent.is_some() {
                    // The answer to the callback of an agent's call, or to its approval.
                    if self.agent_callback_answered(id, output).is_err() {
                        self.agent_answered(id, output)?;
                    }
                    self.settle(id.task);
                    self.advance();
                    return Ok(());
                }
                if unit.status != TaskStatus::Waiting
                    || unit.attempt != id.attempt
                    || unit.waits.as_ref().is_none_or(|w| w.kind == WaitKind::Sleep)
                {
                    return Err(Ignored("not waiting for an answer (answered, timed out, or late)"));
                }
                match self.plan.rejection(id.task, output) {
                    None => {
                        self.move_unit(id.task, id.unit(), TaskStatus::Succeeded);
                        self.unit_mut(id).output = Some(output.clone());
                    }
                    Some(error) => {
                        self.move_unit(id.task, id.unit(), TaskStatus::Failed);
                        let u = self.unit_mut(id);
                        u.output = Some(output.clone());
                        u.error = Some(error);
                    }
                }
                self.settle(id.task);
                self.advance();
            }
            Event::CallbackFailed { task, item, attempt, error, retryable } => {
                self.running()?;
                let id = AttemptId { task: *task, item: *item, attempt: *attempt };
                if self.unit(id)?.agent.is_some() {
                    self.agent_callback_failed(id, error, *retryable)?;
                    self.settle(id.task);
                    self.advance();
                    return Ok(());
                }
                self.waiting_callback(id)?;
                self.fail_attempt(id, error, *retryable);
                self.settle(id.task);
                self.advance();
            }
            Event::Heartbeat { task, item, attempt, .. } => {
                self.running()?;
                let id = AttemptId { task: *task, item: *item, attempt: *attempt };
                if self.unit(id)?.agent.is_some() {
                    return self.agent_heartbeat(id);
                }
                self.heartbeat(id)?;
            }
            Event::Cancel => {
                self.running_or_pending()?;
                self.end(RunStatus::Cancelled, "cancelled".to_string());
            }
            Event::Abort { reason } => {
                self.running_or_pending()?;
                self.end(RunStatus::Failed, reason.clone());
            }
            Event::Tick => {
                self.running()?;
                match self.st.deadline {
                    Some(d) if self.now >= d => self.end(RunStatus::TimedOut, "run timed out".to_string()),
                    _ => return Err(Ignored("nothing due")),
                }
            }
        }
        Ok(())
    }

    /// Attempt `id` failed: it waits for its retry when `retryable` and attempts are left,
    /// else it fails for good. The caller settles its task.
    pub(super) fn fail_attempt(&mut self, id: AttemptId, error: &str, retryable: bool) {
        let u = &self.st.tasks[id.task].units[id.unit()];
        // An agent's retries count per turn, not per attempt of its unit.
        let nth = u.agent.as_deref().map_or_else(|| u.nth(id.attempt), |l| l.tries);
        if retryable && nth < self.plan.retry[id.task].max_attempts {
            let at = self.now + self.plan.backoff(self.st, id.task, id.item, id.attempt, nth);
            let cause = self.cause.clone();
            self.move_unit(id.task, id.unit(), TaskStatus::RetryWait);
            let u = self.unit_mut(id);
            u.error = Some(error.to_string());
            u.retry_at = Some(at);
            u.wake_at = None;
            u.cause = Some(cause);
            self.cmds.push(Command::ScheduleRetry { task: id.task, item: id.item, attempt: id.attempt, at });
        } else {
            self.move_unit(id.task, id.unit(), TaskStatus::Failed);
            let u = self.unit_mut(id);
            u.error = Some(error.to_string());
            u.wake_at = None;
            u.transient = retryable;
        }
    }

    pub(super) fn running(&self) -> Result<(), Ignored> {
        if self.st.status == RunStatus::Running { Ok(()) } else { Err(Ignored("run is not running")) }
    }

    pub(super) fn running_or_pending(&self) -> Result<(), Ignored> {
        if self.st.status.is_terminal() { Err(Ignored("run already ended")) } else { Ok(()) }
    }

    pub(super) fn unit(&self, id: AttemptId) -> Result<&Unit, Ignored> {
        self.st.tasks.get(id.task).and_then(|t| t.units.get(id.unit())).ok_or(Ignored("no such task or item"))
    }

    pub(super) fn unit_mut(&mut self, id: AttemptId) -> &mut Unit {
        &mut self.st.tasks[id.task].units[id.unit()]
    }

    /// Tests (debug builds) check the kept sums of holds against a recount of the units.
    pub(super) fn check_holds(&self) {
        let (mut reserved, mut unsettled) = (Estimate::default(), Estimate::default());
        for u in self.st.tasks.iter().flat_map(|t| &t.units) {
            match (u.held, u.status) {
                (Some(h), TaskStatus::Running) => reserved.add(h),
                (Some(h), TaskStatus::Cancelled) => unsettled.add(h),
                (Some(h), s) => panic!("a {s:?} unit holds {h:?}"),
                (None, _) => {}
            }
        }
        for (kept, fresh, what) in
            [(self.st.reserved, reserved, "reserved"), (self.st.unsettled, unsettled, "unsettled")]
        {
            debug_assert_eq!(kept.tokens, fresh.tokens, "{what} tokens");
            debug_assert!((kept.cost_usd - fresh.cost_usd).abs() < 1e-9, "{what}: {kept:?} against {fresh:?}");
        }
    }

    /// Counts what attempt `id` spent and releases what it held of the budget.
    pub(super) fn settle_usage(&mut self, id: AttemptId, usage: Usage) {
        let u = self.unit_mut(id);
        let cut_off = u.status == TaskStatus::Cancelled;
        if let Some(h) = u.held.take() {
            if cut_off { &mut self.st.unsettled } else { &mut self.st.reserved }.sub(h);
        }
        let ts = &mut self.st.tasks[id.task];
        ts.tokens += usage.tokens;
        ts.cost_usd += usage.cost_usd;
        self.st.tokens += usage.tokens;
        self.st.cost_usd += usage.cost_usd;
    }

    /// The run's deadline from now: its `timeout`, and at most its `max_age_ms`.
    pub(super) fn arm_deadline(&mut self) {
        let timeout = self.plan.checked.workflow.spec.timeout.map(|d| self.now + d.0.as_millis() as Millis);
        let max_age = self.st.max_age_ms.map(|m| self.now.saturating_add(m));
        self.st.deadline = match (timeout, max_age) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}
