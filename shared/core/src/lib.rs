//! Pure core of LLM-Orchestrator. See ARCHITECTURE.md.
pub mod source;
pub mod yaml;
