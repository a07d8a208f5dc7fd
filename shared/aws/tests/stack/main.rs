//! The serverless runtime's tests against the local stack (LocalStack for SQS and S3, moto for
//! DynamoDB, started by `localstack/with-stack.sh`; each test is skipped without one unless
//! `LLMO_REQUIRE_AWS=1`), the API suites also on `llmo serve`'s composition. One test binary
//! for them all: each of these links the AWS SDK, and a binary per file cost CI 100 MB of disk
//! and a link of its own each. `traces.rs` keeps its own binary: it installs the global
//! tracing subscriber.
//!
//! One suite: `cargo test -p llmo-aws --test stack waits::`.

#[macro_use]
#[path = "../support/mod.rs"]
mod support;

mod agents;
mod api_auth;
mod callbacks;
mod children;
mod events;
mod flow;
mod functions;
mod local_stack;
mod secrets;
mod stores;
mod waits;
