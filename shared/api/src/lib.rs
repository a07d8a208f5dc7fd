//! The HTTP API of LLM-Orchestrator, over the runtime's ports only.
//!
//! [`api::Api`] answers every route (`docs/openapi.json`) with a run store, a run index, a
//! workflow registry, a queue, an audit trail and a sweeper, all behind traits
//! (`llmo_runtime`): the serverless deployment builds it on DynamoDB, SQS and S3
//! (`llmo_aws::api::build`), `llmo serve` on one SQLite file ([`local`], feature `local`).
//! The same handlers, the same authentication ([`auth`]) and the same tests run on both.
//!
//! Requests and replies are `http` types with a [`Body`] that the Lambda glue converts from
//! and to `lambda_http`'s and [`server::serve`] from and to hyper's.

pub mod answers;
pub mod api;
pub mod auth;
pub mod callbacks;
pub mod server;
pub mod sweep;

#[cfg(feature = "local")]
pub mod local;
#[cfg(feature = "local")]
pub mod schedules;

pub use api::Api;

/// A request or reply body: what API Gateway gives a handler (none, text, or bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Body {
    #[default]
    Empty,
    Text(String),
    Binary(Vec<u8>),
}

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        match self {
            Body::Empty => &[],
            Body::Text(s) => s.as_bytes(),
            Body::Binary(b) => b,
        }
    }
}

impl Body {
    pub fn to_vec(&self) -> Vec<u8> {
        self.as_ref().to_vec()
    }
}

/// A request to the API.
pub type Request = http::Request<Body>;
/// A reply of the API.
pub type Response = http::Response<Body>;
