//! Pure core of LLM-Orchestrator. See ARCHITECTURE.md.
pub mod child;
pub mod dag;
pub mod diagnostic;
pub mod engine;
pub mod expr;
pub mod function;
pub mod inputs;
pub mod model;
pub mod schedule;
pub mod schema;
pub mod source;
pub mod synth;
pub mod tasks;
pub mod tenant;
pub mod triggers;
pub mod validate;
pub mod yaml;
