//! Pure core of LLM-Orchestrator. See ARCHITECTURE.md.
pub mod dag;
pub mod diagnostic;
pub mod expr;
pub mod model;
pub mod schedule;
pub mod source;
pub mod tasks;
pub mod yaml;
