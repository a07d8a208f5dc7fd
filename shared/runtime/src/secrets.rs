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

/// What workflows may read of a source that also holds provider keys: only names under
/// `LLMO_SECRET_` (`secrets.TICKETS_TOKEN` in a header is `LLMO_SECRET_TICKETS_TOKEN`). A
/// workflow can then never put `OPENAI_API_KEY`, or anything else the source holds for the
/// runtime, in a request it sends.
pub struct WorkflowSecrets(pub std::sync::Arc<dyn Secrets>);

/// The prefix of the names workflows may read.
pub const WORKFLOW_PREFIX: &str = "LLMO_SECRET_";

#[async_trait]
impl Secrets for WorkflowSecrets {
    async fn get(&self, name: &str) -> Result<Option<String>, String> {
        if !name.starts_with(WORKFLOW_PREFIX) {
            return Ok(None);
        }
        self.0.get(name).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn workflows_read_only_their_prefixed_names() {
        let all = MapSecrets(
            [("OPENAI_API_KEY", "sk-x"), ("LLMO_SECRET_TICKETS_TOKEN", "tok")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        let w = WorkflowSecrets(std::sync::Arc::new(all));
        assert_eq!(w.get("LLMO_SECRET_TICKETS_TOKEN").await.unwrap().as_deref(), Some("tok"));
        assert_eq!(w.get("OPENAI_API_KEY").await.unwrap(), None);
    }
}
