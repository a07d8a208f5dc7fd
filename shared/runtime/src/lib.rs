//! The runtime of LLM-Orchestrator: the ports the engine needs (run store, blobs, clock,
//! executors), their embedded adapters (in-memory, SQLite, files), the executors of the
//! built-in task types with the model providers, and the embedded driver.
pub mod driver;
pub mod executor;
pub mod http;
pub mod providers;
pub mod ports;
pub mod store;
