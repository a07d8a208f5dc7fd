//! The runtime protocol both runtimes drive: read the run, apply what arrived
//! (`llmo_core::engine::Plan::apply`), append the transitions with compare-and-set on the
//! run's version, **then** carry out what they ask for (run attempts, arm timers, list
//! waiters) and acknowledge. The embedded [`crate::driver`] keeps the run in memory between
//! turns; the serverless [`crate::worker`] reads it per message. Both build attempts, hold
//! concurrency keys, commit and run hooks through this module, so the two differ only in their
//! ports (in-process channel and timers vs a queue and delayed messages).

pub mod attempt;
pub mod commit;
pub mod hooks;
pub mod keys;
