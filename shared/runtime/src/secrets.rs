//! Where provider keys and workflow secrets come from: a [`Secrets`] source, asked at the
//! moment a key is needed (never stored in a run's state).
//!
//! [`EnvSecrets`] reads environment variables (the CLI, local runs). The serverless functions
//! use AWS Secrets Manager instead (`llmo_aws::secrets`): one secret whose JSON object maps
//! names to values, read once per container and again after a TTL.

use async_trait::async_trait;

#[async_trait]
pub trait Secrets: Send + Sync {
    /// The value of `name`, if the source has one.
    async fn get(&self, name: &str) -> Result<Option<String>, String>;
}

/// Environment variables (empty counts as unset).
pub struct EnvSecrets;

#[async_trait]
impl Secrets for EnvSecrets {
    async fn get(&self, name: &str) -> Result<Option<String>, String> {
        Ok(std::env::var(name).ok().filter(|v| !v.is_empty()))
    }
}

/// A fixed map (tests, and sources that read everything at once).
#[derive(Default)]
pub struct MapSecrets(pub std::collections::HashMap<String, String>);

#[async_trait]
impl Secrets for MapSecrets {
    async fn get(&self, name: &str) -> Result<Option<String>, String> {
        Ok(self.0.get(name).cloned())
    }
}
