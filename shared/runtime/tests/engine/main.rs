//! The runtime's tests over its in-process ports: budgets, concurrency keys and waits in the
//! embedded runtime, and the deterministic simulations of the protocol under both shells. One
//! test binary for them all (a binary per file cost CI 60 MB of disk and a link each).
//!
//! One suite: `cargo test -p llmo-runtime --test engine simulation::`.

mod sim;

mod budgets;
mod driver_simulation;
mod keys;
mod simulation;
mod waits;
