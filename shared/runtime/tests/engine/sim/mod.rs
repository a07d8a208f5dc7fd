//! What the runtime's simulations share: a seeded generator and the check of a run's log.

use std::collections::HashMap;

use llmo_core::engine::{Event, Plan, RunState, TaskStatus};
use llmo_runtime::store::Transition;

/// splitmix64.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// Replays `log` from `st`: every task reaches a terminal state exactly once (a redrive lets
/// the tasks it decides again end once more), no terminal state is rewritten, and every event
/// but `Tick` is applied once.
pub fn check_log(plan: &Plan, mut st: RunState, log: &[Transition]) -> Result<(), String> {
    let mut terminal = vec![0; plan.task_count()];
    let mut keys: HashMap<String, usize> = HashMap::new();
    for t in log {
        let redrive = matches!(t.event, Event::Redrive { .. });
        if redrive {
            for (n, x) in terminal.iter_mut().zip(&st.tasks) {
                if x.status != TaskStatus::Succeeded {
                    *n = 0;
                }
            }
        }
        let before: Vec<TaskStatus> = st.tasks.iter().map(|t| t.status).collect();
        plan.apply(&mut st, &t.event, t.at).map_err(|e| format!("log does not replay at {}: {}", t.version, e.0))?;
        for (i, (b, a)) in before.iter().zip(&st.tasks).enumerate() {
            if b.is_terminal() && a.status != *b && !(redrive && *b != TaskStatus::Succeeded) {
                return Err(format!("task {i}'s terminal state was rewritten at version {}", t.version));
            }
            if !b.is_terminal() && a.status.is_terminal() {
                terminal[i] += 1;
            }
        }
        if !matches!(t.event, Event::Tick) {
            *keys.entry(t.event.key()).or_default() += 1;
        }
    }
    if let Some((i, n)) = terminal.iter().enumerate().find(|(_, n)| **n != 1) {
        return Err(format!("task {i} reached a terminal state {n} times"));
    }
    if let Some((k, n)) = keys.iter().find(|(_, n)| **n > 1) {
        return Err(format!("event {k} was applied {n} times"));
    }
    Ok(())
}
