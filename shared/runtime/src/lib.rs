//! Embedded runtime: where runs are kept ([`store`]) and the loop that drives the engine
//! ([`runner`]). Executors are passed in by the caller (the CLI today).
pub mod runner;
pub mod store;
