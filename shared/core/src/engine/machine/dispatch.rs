//! Starting pending units in task order within `max_parallel`, `max_concurrency` and the
//! budget (holds reserved per attempt).

use super::*;

impl Transition<'_, '_> {
    pub(super) fn dispatchable_index(&self, i: usize) -> Result<usize, usize> {
        let pos = self.plan.topo_pos[i];
        self.st.dispatchable.binary_search_by_key(&pos, |&t| self.plan.topo_pos[t])
    }

    pub(super) fn make_dispatchable(&mut self, i: usize) {
        if let Err(k) = self.dispatchable_index(i) {
            self.st.dispatchable.insert(k, i);
        }
    }

    /// Starts pending units, in task order, within `max_parallel` and `max_concurrency`,
    /// while the budget lasts.
    pub(super) fn dispatch(&mut self) {
        let spec = &self.plan.checked.workflow.spec;
        let cap = spec.concurrency.as_ref().and_then(|c| c.max_parallel).unwrap_or(u32::MAX);
        // Compacts the list in place as it goes (read at `r`, keep at `w`): removing entries one
        // by one would be quadratic when thousands become dispatchable at once.
        let n = self.st.dispatchable.len();
        let (mut r, mut w) = (0, 0);
        // Units a budget stop refuses: failed once the list is compacted.
        let mut over: Vec<(usize, usize)> = Vec::new();
        while r < n && self.st.running < cap {
            let i = self.st.dispatchable[r];
            r += 1;
            let task_cap = spec.tasks[i].max_concurrency.map_or(usize::MAX, |m| m as usize);
            let counts = self.counts(i);
            let mut task_running = counts.get(TaskStatus::Running) as usize;
            let for_each = spec.tasks[i].for_each.is_some();
            let mut pending_left = false;
            // Units before `first_pending` are not pending: a wide `for_each` is not rescanned
            // from its first item each time one more may start.
            let mut first_pending = self.st.tasks[i].units.len();
            for k in counts.first_pending..self.st.tasks[i].units.len() {
                if self.st.tasks[i].units[k].status != TaskStatus::Pending {
                    continue;
                }
                if self.st.running >= cap || task_running >= task_cap {
                    pending_left = true;
                    first_pending = k;
                    break;
                }
                let item = for_each.then_some(k as u32);
                // After a budget stop nothing that spends starts.
                if self.st.budget_stop.is_some() && !crate::engine::budget::spends_nothing(&spec.tasks[i].ty) {
                    over.push((i, k));
                    pending_left = true;
                    first_pending = k;
                    break;
                }
                let free = crate::engine::budget::spends_nothing(&spec.tasks[i].ty);
                let hold = if free { Estimate::default() } else { self.reservation(i, item) };
                // A built-in task that spends nothing is not the budget's concern.
                match if free { Room::Fits } else { self.room(i, hold) } {
                    Room::Fits => {}
                    Room::Wait => {
                        // Attempts in flight hold the rest: this one starts when they settle.
                        pending_left = true;
                        first_pending = k;
                        break;
                    }
                    Room::Over(reason) => {
                        // Spending stops here; the rest of the run goes on without it.
                        self.st.budget_stop.get_or_insert(reason);
                        over.push((i, k));
                        pending_left = true;
                        first_pending = k;
                        break;
                    }
                }
                if spec.tasks[i].ty == WAIT {
                    // Nothing runs: the unit waits for a delayed `WakeDue` (a render error is
                    // reported when it wakes, at once).
                    let (waits, at, error) = match self.plan.start_wait(self.st, i, item, self.now) {
                        Ok((w, at)) => (Some(w), at, None),
                        Err(e) => (None, Some(self.now), Some(e)),
                    };
                    self.move_unit(i, k, TaskStatus::Waiting);
                    let u = &mut self.st.tasks[i].units[k];
                    u.wake_at = at;
                    u.error = error.map(|e| format!("`wait`: {e}"));
                    let attempt = u.attempt;
                    if waits.as_ref().is_some_and(|w| w.kind != WaitKind::Sleep) {
                        self.cmds.push(Command::Await { task: i, item, attempt });
                    }
                    u.waits = waits;
                    if let Some(at) = at {
                        self.cmds.push(Command::ScheduleWake { task: i, item, attempt, at });
                    }
                    continue;
                }
                self.move_unit(i, k, TaskStatus::Running);
                if self.plan.is_agent(i) {
                    self.agent_turn_started(i, k);
                }
                self.st.tasks[i].units[k].held = Some(hold);
                self.st.reserved.add(hold);
                let attempt = self.st.tasks[i].units[k].attempt;
                task_running += 1;
                self.cmds.push(Command::Execute { task: i, item, attempt });
            }
            if let Some(c) = &mut self.st.tasks[i].tally.0 {
                // Every unit before `first_pending` was looked at and is not pending now (a
                // unit made pending since lowers it again, in `move_unit`).
                c.first_pending = first_pending;
            }
            self.derive_task(i);
            if pending_left {
                self.st.dispatchable[w] = i;
                w += 1;
            }
        }
        self.st.dispatchable.copy_within(r..n, w);
        self.st.dispatchable.truncate(w + n - r);
        let reason = self.st.budget_stop.clone().unwrap_or_default();
        for (i, k) in over {
            if self.st.tasks[i].status.is_terminal() || self.st.tasks[i].units[k].status != TaskStatus::Pending {
                continue;
            }
            self.move_unit(i, k, TaskStatus::Failed);
            self.st.tasks[i].units[k].error = Some(reason.clone());
            self.settle(i);
        }
    }

    /// What a child run started by task `i` may spend, held while it runs: its `max_cost_usd`,
    /// else everything left of the run's budget (the tokens likewise: what is left).
    fn child_hold(&mut self, i: usize, item: Option<u32>, budget: crate::model::Budget) -> Estimate {
        let st = &*self.st;
        let (cut, reserved) = (st.unsettled, st.reserved);
        let money_left = budget.max_cost_usd.map(|m| (m - st.cost_usd - cut.cost_usd - reserved.cost_usd).max(0.0));
        let tokens_left = budget.max_tokens.map(|m| m.saturating_sub(st.tokens + cut.tokens + reserved.tokens));
        let parts = self.parts.get_or_insert_with(|| self.plan.run_parts(self.st, false));
        let ctx = self.plan.context_in(self.st, Some(i), item, parts);
        let asked = match self.plan.render_task_with(i, &ctx, &[]) {
            Ok(with) => with.get("max_cost_usd").and_then(Value::as_f64),
            Err(_) => None,
        };
        Estimate {
            cost_usd: match (asked, money_left) {
                (Some(a), _) => a,
                (None, Some(left)) => left,
                (None, None) => 0.0,
            },
            tokens: tokens_left.unwrap_or(0),
        }
    }

    /// What an attempt of task `i` (item `item`) holds of the run's budget while it runs: its
    /// worst case from the run's prices on its rendered `with` ([`super::budget`]); for a run
    /// stored before prices were kept, the task's estimate then. Zero without a budget.
    pub(super) fn reservation(&mut self, i: usize, item: Option<u32>) -> Estimate {
        let Some(budget) = self.plan.budget_of(self.st) else {
            return Estimate::default();
        };
        if self.plan.checked.workflow.spec.tasks[i].ty == crate::child::WORKFLOW {
            // A child run's spending is held whether or not prices are known.
            return self.child_hold(i, item, budget);
        }
        let Some(book) = &self.st.prices else {
            return self.st.estimates.get(i).copied().unwrap_or_default();
        };
        let ty = self.plan.checked.workflow.spec.tasks[i].ty.as_str();
        if !crate::engine::budget::spends(ty) {
            return Estimate::default();
        }
        let parts = self.parts.get_or_insert_with(|| self.plan.run_parts(self.st, false));
        let ctx = self.plan.context_in(self.st, Some(i), item, parts);
        match self.plan.render_task_with(i, &ctx, &[]) {
            Ok(mut with) if self.plan.is_agent(i) => {
                // The next turn: everything so far is sent again (the tools as written).
                if let Some(tools) = self.plan.checked.workflow.spec.tasks[i].with.get("tools") {
                    with.insert("tools".into(), tools.clone());
                }
                let k = item.unwrap_or(0) as usize;
                let turns = self.st.tasks[i].units[k].agent.as_deref().map_or(&[][..], |l| l.turns.as_slice());
                book.agent_turn(&Value::Object(with), turns)
            }
            Ok(with) => book.attempt(ty, &Value::Object(with)),
            // The attempt fails when it renders the same way: it calls nothing.
            Err(_) => Estimate::default(),
        }
    }

    /// Whether an attempt of task `i` that holds `hold` may start. What is committed (spent,
    /// plus what attempts cut off still hold) plus `hold` must fit in the budget, else the
    /// run is over it; and with what running attempts hold on top, else it waits for them
    /// to settle. Money and tokens alike ([`room_in`]).
    pub(super) fn room(&self, i: usize, hold: Estimate) -> Room {
        let Some(b) = self.plan.budget_of(self.st) else { return Room::Fits };
        let id = self.plan.checked.dag.id(i);
        let st = &*self.st;
        let (cut, reserved) = (st.unsettled, st.reserved);
        let money = b.max_cost_usd.map(|max| {
            let cut_off = if cut.cost_usd > 0.0 {
                format!(" (${:.4} of it held by attempts cut off)", cut.cost_usd)
            } else {
                String::new()
            };
            let committed = st.cost_usd + cut.cost_usd;
            room_in(committed, reserved.cost_usd, hold.cost_usd, max, |over_by_hold| {
                if over_by_hold {
                    format!(
                        "budget exceeded: `{id}` (may cost ${:.4}) would take spending from ${committed:.4}{cut_off} over ${max}",
                        hold.cost_usd
                    )
                } else {
                    format!("budget exceeded: spent ${committed:.4}{cut_off} of ${max}")
                }
            })
        });
        let tokens = b.max_tokens.map(|max| {
            let committed = st.tokens + cut.tokens;
            room_in(committed as f64, reserved.tokens as f64, hold.tokens as f64, max as f64, |over_by_hold| {
                if over_by_hold {
                    format!(
                        "budget exceeded: `{id}` (may use {} tokens) would take usage from {committed} over {max} tokens",
                        hold.tokens
                    )
                } else {
                    format!("budget exceeded: used {committed} of {max} tokens")
                }
            })
        });
        match (money.unwrap_or(Room::Fits), tokens.unwrap_or(Room::Fits)) {
            (over @ Room::Over(_), _) | (_, over @ Room::Over(_)) => over,
            (Room::Wait, _) | (_, Room::Wait) => Room::Wait,
            _ => Room::Fits,
        }
    }
}
