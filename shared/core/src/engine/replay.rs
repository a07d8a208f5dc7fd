//! What a run still owes the world: the commands a stored transition asked for, found again
//! from the state alone. A worker that died after storing a transition and before sending
//! its commands leaves them unsent; the redelivery of the event (or `llmo resume`) finds
//! them here, so no attempt, retry, wake or waiter is lost.

use super::machine::Plan;
use super::state::*;

impl Plan {
    /// The commands that applying `event` asked for and whose effect has not been seen yet.
    ///
    /// A worker that stored a transition and died before sending its commands leaves them
    /// unsent; its message comes back, `apply` ignores the event as already applied, and the
    /// runtime sends these instead. Sending one twice is harmless: an attempt reports once
    /// per run of it, and reports for an attempt that is no longer running are ignored.
    pub fn replay(&self, st: &RunState, key: &str) -> Vec<Command> {
        let mut cmds = self.owed(st, Some(key), |u| u.cause.as_deref() == Some(key));
        if st.status.is_terminal() && st.ended_by.as_deref() == Some(key) {
            cmds.push(Command::Finished { status: st.status });
        }
        cmds
    }

    /// [`Plan::replay`] followed through the attempts `key`'s transition started that have
    /// finished in place since: what `key` still owes, and what each of those attempts'
    /// transitions still owes, transitively. A worker that stepped a chain in place under one
    /// message (its lease: see the runtime's `Worker::handle_batch_continuing`) and died
    /// leaves the chain's last commands unsent; the lease's next delivery finds them here.
    /// An attempt that went through the queue is not followed: its own message is the lease
    /// on what its transition owes.
    pub fn replay_chain(&self, st: &RunState, key: &str) -> Vec<Command> {
        let mut cmds = Vec::new();
        let mut keys = vec![key.to_string()];
        let mut seen = std::collections::HashSet::new();
        while let Some(k) = keys.pop() {
            if !seen.insert(k.clone()) {
                continue;
            }
            cmds.extend(self.replay(st, &k));
            // Attempts `k`'s transition started that have finished in place since: their
            // results' transitions may owe commands too.
            for (i, ts) in st.tasks.iter().enumerate() {
                let for_each = self.checked.workflow.spec.tasks[i].for_each.is_some();
                for (n, u) in ts.units.iter().enumerate() {
                    for &attempt in &u.in_place {
                        if u.started_by.get(u.nth(attempt) as usize - 1) == Some(&k) {
                            keys.push(finished_key(i, for_each.then_some(n as u32), attempt));
                        }
                    }
                }
            }
        }
        cmds
    }

    /// Every command whose effect the state still waits for: an `Execute` per running unit
    /// and a `ScheduleRetry` per unit waiting to retry. A runtime resuming a run after a
    /// crash sends these (running attempts run again: delivery is at least once).
    pub fn in_flight(&self, st: &RunState) -> Vec<Command> {
        if st.status != RunStatus::Running {
            return Vec::new();
        }
        // Units waiting to start (caps full) start when a running one ends: nothing is owed.
        self.owed(st, None, |_| true)
    }

    /// An `Execute` per running unit and a `ScheduleRetry` per unit waiting to retry, among
    /// the units `pick` selects. A running agent's unit runs several attempts, started by
    /// different events: with `key`, only those `key` started (or whose retry it scheduled).
    fn owed(&self, st: &RunState, key: Option<&str>, pick: impl Fn(&Unit) -> bool) -> Vec<Command> {
        let mut cmds = Vec::new();
        for (i, ts) in st.tasks.iter().enumerate() {
            let for_each = self.checked.workflow.spec.tasks[i].for_each.is_some();
            for (k, u) in ts.units.iter().enumerate() {
                let item = for_each.then_some(k as u32);
                if let Some(owed) = self.agent_owed(i, item, u, key) {
                    cmds.extend(owed);
                    continue;
                }
                if !pick(u) {
                    continue;
                }
                match u.status {
                    TaskStatus::Running => cmds.push(Command::Execute { task: i, item, attempt: u.attempt }),
                    TaskStatus::RetryWait => cmds.push(Command::ScheduleRetry {
                        task: i,
                        item,
                        attempt: u.attempt,
                        at: u.retry_at.unwrap_or_default(),
                    }),
                    TaskStatus::Waiting => {
                        if u.waits.as_ref().is_some_and(|w| w.kind != WaitKind::Sleep) {
                            cmds.push(Command::Await { task: i, item, attempt: u.attempt });
                        }
                        if let Some(at) = u.wake_at {
                            cmds.push(Command::ScheduleWake { task: i, item, attempt: u.attempt, at });
                        }
                    }
                    _ => {}
                }
            }
        }
        cmds
    }
}
