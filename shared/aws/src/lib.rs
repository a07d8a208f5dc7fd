//! The serverless runtime of LLM-Orchestrator: the engine's ports on AWS (DynamoDB run store,
//! SQS queue, S3 blobs), request accounting, the handlers the Lambda functions run, and the
//! local modes that run those same handlers against LocalStack/moto. The API's handlers are
//! `llmo-api`'s, built here on these adapters ([`api::build`]).
pub mod api;
pub mod audit;
pub mod blobs;
pub mod config;
pub mod dynamo;
pub mod env;
pub mod flow;
pub mod local;
pub mod mac;
pub mod metrics;
pub mod provision;
pub mod secrets;
pub mod sqs;
pub mod step;
pub mod workflows;

pub use config::Aws;
