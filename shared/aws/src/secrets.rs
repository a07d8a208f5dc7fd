//! Provider keys and workflow secrets from AWS Secrets Manager: one secret (`LLMO_SECRETS_ARN`)
//! whose value is a JSON object of names to values, e.g.
//! `{"OPENAI_API_KEY": "sk-...", "LLMO_SECRET_TICKETS_TOKEN": {"value": "...", "tenants": ["acme"],
//! "hosts": ["tickets.example.com"]}}` (a workflow secret is a grant: see
//! `llmo_runtime::secrets::Grant`; an object entry is kept as its JSON text). It is read the first time
//! a value is needed in a container and again once `LLMO_SECRETS_TTL_SECS` (300 by default) have
//! passed, so a rotated key reaches every container within the TTL; a failed refresh keeps the
//! values it had (and says so in the log) rather than failing every call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use llmo_runtime::secrets::{Secrets, SecretsError};

/// The values and when they were read.
type Cached = Option<(Instant, Arc<HashMap<String, String>>)>;

pub struct SecretsManager {
    client: aws_sdk_secretsmanager::Client,
    arn: String,
    ttl: Duration,
    cache: tokio::sync::Mutex<Cached>,
}

impl SecretsManager {
    pub fn new(client: aws_sdk_secretsmanager::Client, arn: impl Into<String>, ttl: Duration) -> Self {
        SecretsManager { client, arn: arn.into(), ttl, cache: tokio::sync::Mutex::new(None) }
    }

    async fn fetch(&self) -> Result<HashMap<String, String>, String> {
        let out = self.client.get_secret_value().secret_id(&self.arn).send().await.map_err(|e| {
            tracing::warn!(error = %aws_sdk_secretsmanager::error::DisplayErrorContext(&e), "reading the secrets failed");
            "the secrets could not be read (see the function's log)".to_string()
        })?;
        let text = out.secret_string().ok_or("the secret holds no string")?;
        let map: HashMap<String, serde_json::Value> =
            serde_json::from_str(text).map_err(|_| "the secret is not a JSON object".to_string())?;
        Ok(map
            .into_iter()
            .filter_map(|(k, v)| match v {
                serde_json::Value::String(s) => Some((k, s)),
                // A workflow secret's grant: read by `Grant::parse` when it is used.
                o @ serde_json::Value::Object(_) => Some((k, o.to_string())),
                _ => None,
            })
            .collect())
    }
}

#[async_trait]
impl Secrets for SecretsManager {
    async fn get(&self, name: &str) -> Result<Option<String>, SecretsError> {
        let mut cache = self.cache.lock().await;
        let fresh = cache.as_ref().is_some_and(|(at, _)| at.elapsed() < self.ttl);
        if !fresh {
            match self.fetch().await {
                Ok(values) => *cache = Some((Instant::now(), Arc::new(values))),
                Err(e) if cache.is_some() => {
                    tracing::warn!(error = %e, "keeping the secrets read before");
                    if let Some((at, _)) = cache.as_mut() {
                        *at = Instant::now();
                    }
                }
                Err(e) => return Err(SecretsError(e)),
            }
        }
        Ok(cache.as_ref().and_then(|(_, v)| v.get(name).cloned()))
    }
}
