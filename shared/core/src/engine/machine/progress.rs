//! How runs, tasks and units move between states, and what follows: skips, failures,
//! the next tasks considered, the run finished or ended.

use super::*;

impl Transition<'_, '_> {
    /// Moves the run to `to` (checked against [`crate::engine::moves::RUN_MOVES`]), with its times.
    pub(super) fn move_run(&mut self, to: RunStatus) {
        let from = self.st.status;
        debug_assert!(crate::engine::moves::run_move(from, to), "run {from:?} -> {to:?}");
        self.st.status = to;
        if from == RunStatus::Pending && to == RunStatus::Running {
            self.st.started_at = Some(self.now);
        }
        if from.is_terminal() {
            self.st.ended_at = None;
            self.st.ended_by = None;
        }
        if to.is_terminal() {
            self.st.ended_at = Some(self.now);
            self.st.ended_by = Some(self.cause.clone());
        }
    }

    /// Moves task `i` to `to` (checked against [`crate::engine::moves::TASK_MOVES`]; staying put is
    /// no move), counting it in `ended_tasks` and stamping `ended_at` when it ends.
    pub(super) fn move_task(&mut self, i: usize, to: TaskStatus) {
        let ts = &mut self.st.tasks[i];
        let from = ts.status;
        if from == to {
            return;
        }
        debug_assert!(crate::engine::moves::task_move(from, to), "task {i} {from:?} -> {to:?}");
        ts.status = to;
        if from.is_terminal() {
            ts.ended_at = None;
            self.st.ended_tasks -= 1;
        }
        if to.is_terminal() {
            ts.ended_at = Some(self.now);
            self.st.ended_tasks += 1;
        }
    }

    /// Moves unit `k` of task `i` to `to` (checked against [`crate::engine::moves::UNIT_MOVES`]),
    /// keeping `running` right; a unit that starts (runs, or waits) begins its next attempt,
    /// recorded as started by the event being applied.
    pub(super) fn move_unit(&mut self, i: usize, k: usize, to: TaskStatus) {
        let cause = &self.cause;
        let ts = &mut self.st.tasks[i];
        let u = &mut ts.units[k];
        let from = u.status;
        debug_assert!(crate::engine::moves::unit_move(from, to), "task {i} unit {k} {from:?} -> {to:?}");
        u.status = to;
        if let Some(c) = &mut ts.tally.0 {
            c.by_status[from as usize] -= 1;
            c.by_status[to as usize] += 1;
            if to == TaskStatus::Pending {
                c.first_pending = c.first_pending.min(k);
            }
        }
        if from == TaskStatus::Running {
            self.st.running -= 1;
            if to == TaskStatus::Cancelled
                && let Some(h) = u.held
            {
                // Cut off: its answer may still come (and be counted), or never.
                self.st.reserved.sub(h);
                self.st.unsettled.add(h);
            }
            if to == TaskStatus::Cancelled && self.plan.checked.workflow.spec.tasks[i].ty == crate::child::WORKFLOW {
                // A child run is that attempt: it is cancelled too (its end still reports
                // what it spent).
                let item = self.plan.checked.workflow.spec.tasks[i].for_each.is_some().then_some(k as u32);
                let run_id = crate::child::child_run_id(&self.st.run_id, self.plan.checked.dag.id(i), item, u.attempt);
                self.cmds.push(Command::CancelRun { run_id });
            }
            if to == TaskStatus::Cancelled
                && let (Some(a), Some(l)) = (self.plan.agent_with(i), u.agent.as_deref())
            {
                // An agent's calls that are child runs are cancelled with it.
                let item = self.plan.checked.workflow.spec.tasks[i].for_each.is_some().then_some(k as u32);
                for c in l.last_calls().iter().filter(|c| c.status == crate::agent::CallStatus::Running) {
                    if a.tools.iter().any(|t| t.name == c.name && t.run.ty == crate::child::WORKFLOW) {
                        let task_id = self.plan.checked.dag.id(i);
                        let run_id = crate::child::child_run_id(&self.st.run_id, task_id, item, c.attempt);
                        self.cmds.push(Command::CancelRun { run_id });
                    }
                }
            }
        }
        if from == TaskStatus::Pending && matches!(to, TaskStatus::Running | TaskStatus::Waiting) {
            u.attempt += 1;
            u.cause = Some(cause.clone());
            u.started_by.push(cause.clone());
            ts.attempts += 1;
            ts.started_at.get_or_insert(self.now);
        }
        if to == TaskStatus::Running {
            self.st.running += 1;
        }
    }

    /// A task's derived status while it runs: some unit running, else one waiting for its
    /// retry, else ready (units left to start).
    pub(super) fn derive_task(&mut self, i: usize) {
        let c = self.counts(i);
        let to = if c.get(TaskStatus::Running) > 0 {
            TaskStatus::Running
        } else if c.get(TaskStatus::Waiting) > 0 {
            TaskStatus::Waiting
        } else if c.get(TaskStatus::RetryWait) > 0 {
            TaskStatus::RetryWait
        } else {
            TaskStatus::Ready
        };
        self.move_task(i, to);
    }

    /// Task `i`'s unit tally, counted from its units if the state has none yet.
    pub(super) fn counts(&mut self, i: usize) -> Counts {
        let ts = &mut self.st.tasks[i];
        let c = *ts.tally.0.get_or_insert_with(|| Counts::of(&ts.units));
        // Tests (debug builds) check the kept tally against a recount, where that is cheap.
        if cfg!(debug_assertions) && ts.units.len() <= 256 {
            let fresh = Counts::of(&ts.units);
            debug_assert_eq!(c.by_status, fresh.by_status, "task {i}'s unit tally");
            debug_assert!(c.first_pending <= fresh.first_pending, "task {i}'s first pending unit");
        }
        c
    }

    /// Derives a task's status from its units once one changed.
    pub(super) fn settle(&mut self, i: usize) {
        let spec_task = &self.plan.checked.workflow.spec.tasks[i];
        let is_for_each = spec_task.for_each.is_some();
        let tolerance = spec_task.tolerate_failures.filter(|_| is_for_each);
        let c = self.counts(i);
        if let Some(tol) = tolerance {
            // Every item runs; the task decides once none is left to run.
            let ended = [TaskStatus::Succeeded, TaskStatus::Failed, TaskStatus::Cancelled, TaskStatus::Skipped]
                .iter()
                .map(|s| c.get(*s) as usize)
                .sum::<usize>();
            let ts = &mut self.st.tasks[i];
            if ended < ts.units.len() {
                self.derive_task(i);
                return;
            }
            let (failed, total) = (c.get(TaskStatus::Failed) as usize, ts.units.len());
            ts.output = Some(item_outputs(&ts.units));
            if tol.allows(failed, total) {
                self.move_task(i, TaskStatus::Succeeded);
            } else {
                let (k, u) =
                    ts.units.iter().enumerate().find(|(_, u)| u.status == TaskStatus::Failed).expect("a failure");
                ts.error = Some(format!(
                    "{failed} of {total} items failed, more than `tolerate_failures` allows; the first, item {k}: {}",
                    u.error.as_deref().unwrap_or_default()
                ));
                self.move_task(i, TaskStatus::Failed);
            }
            self.task_ended(i);
            return;
        }
        let ts = &mut self.st.tasks[i];
        // Only a task with a failed unit is searched for it.
        let first_failed = if c.get(TaskStatus::Failed) > 0 {
            ts.units.iter().enumerate().find(|(_, u)| u.status == TaskStatus::Failed)
        } else {
            None
        };
        if let Some((k, u)) = first_failed {
            let error = u.error.clone().unwrap_or_default();
            ts.error = Some(if is_for_each { format!("item {k}: {error}") } else { error });
            let mut stopped = false;
            for k in 0..self.st.tasks[i].units.len() {
                let status = self.st.tasks[i].units[k].status;
                if !status.is_terminal() {
                    stopped |= status == TaskStatus::Running;
                    self.move_unit(i, k, TaskStatus::Cancelled);
                }
            }
            // What the items that finished gave is kept (`null` for the others).
            if is_for_each {
                self.st.tasks[i].output = Some(item_outputs(&self.st.tasks[i].units));
            }
            self.move_task(i, TaskStatus::Failed);
            if stopped {
                self.cmds.push(Command::CancelRunning { tasks: vec![i] });
            }
            self.task_ended(i);
            return;
        }
        if c.get(TaskStatus::Succeeded) as usize == ts.units.len() {
            ts.output = Some(if is_for_each {
                item_outputs(&ts.units)
            } else {
                ts.units[0].output.clone().unwrap_or_else(|| Output::new(Value::Null))
            });
            self.move_task(i, TaskStatus::Succeeded);
            self.task_ended(i);
        } else {
            self.derive_task(i);
        }
    }

    /// A task reached a terminal state: wake its dependents, fail the run if it must.
    pub(super) fn task_ended(&mut self, i: usize) {
        if let Ok(k) = self.dispatchable_index(i) {
            self.st.dispatchable.remove(k);
        }
        self.work.extend(self.plan.children[i].iter().copied());
        let failed = self.st.tasks[i].status == TaskStatus::Failed;
        // The task a fallback stands in for is settled by the fallback's outcome.
        let owner = self.plan.fallback_of[i];
        if let Some(o) = owner {
            self.work.extend(self.plan.children[o].iter().copied());
        }
        let subject = owner.unwrap_or(i);
        let effective_failure = match owner {
            Some(o) => {
                self.st.tasks[o].status == TaskStatus::Failed && self.st.tasks[i].status != TaskStatus::Succeeded
            }
            None => failed && self.plan.fallback[i].is_none(),
        };
        // After a budget stop, failures (attempts refused for want of budget among them) do not
        // end the run: what may still run without spending does, and the run ends then.
        if effective_failure
            && self.plan.fails_run(subject)
            && self.st.status == RunStatus::Running
            && self.st.budget_stop.is_none()
        {
            let id = self.plan.checked.dag.id(i);
            let error = self.st.tasks[i].error.clone().unwrap_or_else(|| "not run".to_string());
            self.end(RunStatus::Failed, format!("task `{id}` failed: {error}"));
        }
    }

    /// Makes pending tasks ready (or skips them), dispatches units, and ends the run when
    /// every task has ended.
    pub(super) fn advance(&mut self) {
        while let Some(i) = self.work.pop() {
            if self.st.status != RunStatus::Running {
                return;
            }
            if self.st.tasks[i].status == TaskStatus::Pending {
                self.consider(i);
            }
        }
        if self.st.status != RunStatus::Running {
            return;
        }
        self.dispatch();
        if self.st.status != RunStatus::Running {
            return;
        }
        // Attempts refused by a budget stop ended their tasks: their dependents are next.
        if !self.work.is_empty() {
            return self.advance();
        }
        if self.st.ended_tasks as usize == self.st.tasks.len() {
            self.finish();
        }
    }

    pub(super) fn skip(&mut self, i: usize, reason: String) {
        self.st.tasks[i].reason = Some(reason);
        self.move_task(i, TaskStatus::Skipped);
        self.task_ended(i);
    }

    pub(super) fn fail_task(&mut self, i: usize, error: String) {
        self.st.tasks[i].error = Some(error);
        self.move_task(i, TaskStatus::Failed);
        self.task_ended(i);
    }

    /// Decides a pending task whose dependencies may have ended.
    pub(super) fn consider(&mut self, i: usize) {
        let plan = self.plan;
        if let Some(owner) = plan.fallback_of[i] {
            match self.st.tasks[owner].status {
                TaskStatus::Failed => {}
                s if s.is_terminal() => {
                    return self.skip(i, format!("not needed: `{}` {}", plan.checked.dag.id(owner), s.as_str()));
                }
                _ => return,
            }
        }
        let deps = &plan.deps[i];
        let mut k = self.st.tasks[i].deps_settled as usize;
        while k < deps.len() {
            if plan.view(self.st, deps[k]).0.is_none() {
                self.st.tasks[i].deps_settled = k as u32;
                return;
            }
            k += 1;
        }
        self.st.tasks[i].deps_settled = k as u32;
        let outcomes: Vec<TaskStatus> = deps.iter().filter_map(|&d| plan.view(self.st, d).0).collect();
        let task = &plan.checked.workflow.spec.tasks[i];
        let rule = task.trigger.unwrap_or_default();
        let ok = |s: &TaskStatus| *s == TaskStatus::Succeeded;
        let pass = outcomes.is_empty()
            || match rule {
                TriggerRule::AllSucceeded => outcomes.iter().all(ok),
                TriggerRule::AllDone => true,
                TriggerRule::AnySucceeded => outcomes.iter().any(ok),
                TriggerRule::NoneFailed => !outcomes.contains(&TaskStatus::Failed),
            };
        if !pass {
            return self.skip(i, format!("trigger rule {} not met", rule.as_str()));
        }
        let needs_ctx = task.when.is_some() || task.for_each.is_some();
        let ctx = if needs_ctx { plan.context_value(self.st, Some(i), None) } else { Ctx::from(()) };
        if let Some(w) = &task.when {
            match plan.eval_in(w, &ctx) {
                Ok(v) if truthy(&v) => {}
                Ok(_) => return self.skip(i, format!("`when` is false: {w}")),
                Err(e) => return self.fail_task(i, format!("`when` failed: {e}")),
            }
        }
        let base = self.st.tasks[i].attempt_base;
        let fresh = |item: Option<Value>| Unit { attempt: base, base, ..Unit::new(item) };
        let units: Vec<Unit> = match &task.for_each {
            None => vec![fresh(None)],
            Some(fe) => match plan.eval_in(fe, &ctx) {
                Ok(Value::Array(items)) if items.len() > crate::engine::limits::MAX_FOR_EACH_ITEMS => {
                    return self.fail_task(i, too_many(items.len()));
                }
                Ok(Value::Object(m)) if m.len() > crate::engine::limits::MAX_FOR_EACH_ITEMS => {
                    return self.fail_task(i, too_many(m.len()));
                }
                Ok(Value::Array(items)) => items.into_iter().map(|v| fresh(Some(v))).collect(),
                Ok(Value::Object(m)) => m.into_iter().map(|(k, _)| fresh(Some(Value::String(k)))).collect(),
                Ok(other) => return self.fail_task(i, format!("`for_each` gave {other}, not a list")),
                Err(e) => return self.fail_task(i, format!("`for_each` failed: {e}")),
            },
        };
        let ts = &mut self.st.tasks[i];
        if units.is_empty() {
            ts.output = Some(Output::new(Value::Array(Vec::new())));
            self.move_task(i, TaskStatus::Succeeded);
            return self.task_ended(i);
        }
        ts.units = units;
        ts.tally = Default::default();
        self.move_task(i, TaskStatus::Ready);
        self.make_dispatchable(i);
    }

    /// Every task ended and none failed the run: render the outputs.
    pub(super) fn finish(&mut self) {
        let ctx = self.plan.outputs_context(self.st);
        let outputs = Value::Object(self.plan.checked.workflow.spec.outputs.clone().into_iter().collect());
        if let Some(reason) = self.st.budget_stop.clone() {
            // The outputs say what was kept (each rendered on its own: one that reads what
            // did not finish is `null`).
            let kept: Map<String, Value> = self
                .plan
                .checked
                .workflow
                .spec
                .outputs
                .iter()
                .map(|(k, v)| (k.clone(), self.plan.render_in(v, &ctx).unwrap_or(Value::Null)))
                .collect();
            self.st.outputs = Some(Value::Object(kept));
            self.st.error = Some(format!("{reason} (spending stopped; what finished is kept)"));
            self.move_run(RunStatus::Failed);
            self.cmds.push(Command::Finished { status: RunStatus::Failed });
            return;
        }
        match self.plan.render_in(&outputs, &ctx) {
            Ok(v) => {
                self.st.outputs = Some(v);
                self.move_run(RunStatus::Succeeded);
                self.cmds.push(Command::Finished { status: RunStatus::Succeeded });
            }
            Err(e) => self.end(RunStatus::Failed, format!("outputs: {e}")),
        }
    }

    /// Ends the run early: tasks not ended are cancelled.
    pub(super) fn end(&mut self, status: RunStatus, error: String) {
        let mut running = Vec::new();
        for i in 0..self.st.tasks.len() {
            if self.st.tasks[i].status.is_terminal() {
                continue;
            }
            if self.st.tasks[i].units.iter().any(|u| u.status == TaskStatus::Running) {
                running.push(i);
            }
            for k in 0..self.st.tasks[i].units.len() {
                if !self.st.tasks[i].units[k].status.is_terminal() {
                    self.move_unit(i, k, TaskStatus::Cancelled);
                }
            }
            self.st.tasks[i].reason = Some(format!("run {}", status.as_str()));
            self.move_task(i, TaskStatus::Cancelled);
        }
        self.st.error = Some(error);
        self.move_run(status);
        self.st.dispatchable.clear();
        debug_assert_eq!(self.st.running, 0, "every unit has stopped");
        debug_assert_eq!(self.st.ended_tasks as usize, self.st.tasks.len(), "every task has ended");
        if !running.is_empty() {
            self.cmds.push(Command::CancelRunning { tasks: running });
        }
        self.cmds.push(Command::Finished { status });
    }
}
