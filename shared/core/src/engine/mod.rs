//! The execution engine's pure core: run and task states, events, commands, and the
//! transition function every runtime drives. See ARCHITECTURE.md ("The runtime protocol").
pub mod budget;
pub mod builtin;
pub mod callbacks;
pub(crate) mod interp;
pub mod limits;
pub mod machine;
pub mod moves;
mod replay;
pub mod state;
pub mod time;
pub mod waits;

pub use machine::{Ctx, Ignored, Plan, RunParts};
pub use state::*;

#[cfg(test)]
mod tests;
