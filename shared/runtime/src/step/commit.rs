//! Applying what arrived to a run's state as one batch of transitions (appended by the caller
//! with compare-and-set on the version it read), and what stored transitions still owe.

use std::time::{Duration, Instant};

use llmo_core::engine::{Command, Event, Millis, Plan, RunState};

use crate::store::Transition;

/// What applying a batch did.
#[derive(Debug, Default)]
pub struct Applied {
    /// The transitions to append, each with what applying it took.
    pub log: Vec<Transition>,
    /// What they ask for, to carry out once they are stored.
    pub cmds: Vec<Command>,
    /// Keys of the events that changed nothing (duplicates, late deliveries): what their first
    /// application asked for may still be owed ([`owed`]).
    pub unchanged: Vec<String>,
    /// What applying the batch took (snapshots follow dear transitions).
    pub took: Duration,
}

/// Applies `events` in order to `st` at `now`.
pub fn apply(plan: &Plan, st: &mut RunState, events: impl IntoIterator<Item = Event>, now: Millis) -> Applied {
    let started = Instant::now();
    let events = events.into_iter();
    let mut out = Applied { log: Vec::with_capacity(events.size_hint().0), ..Applied::default() };
    for e in events {
        let one = Instant::now();
        match plan.apply(st, &e, now) {
            Ok(c) => {
                out.log.push(Transition::new(st.version, now, e).took(one.elapsed()));
                out.cmds.extend(c);
            }
            Err(_) => out.unchanged.push(e.key()),
        }
    }
    out.took = started.elapsed();
    out
}

/// Adds to `into` what the stored transitions of `keys` asked for and `st` still owes (once
/// each); for keys in `again` (messages delivered again) followed through what they stepped
/// in place ([`Plan::replay_chain`]).
pub fn owed(plan: &Plan, st: &RunState, keys: &[String], again: &[String], into: &mut Vec<Command>) {
    for k in keys {
        let o = if again.contains(k) { plan.replay_chain(st, k) } else { plan.replay(st, k) };
        for c in o {
            if !into.contains(&c) {
                into.push(c);
            }
        }
    }
}
