//! Where provider keys and workflow secrets come from: a [`Secrets`] source, asked at the
//! moment a key is needed (never stored in a run's state).
//!
//! [`EnvSecrets`] reads environment variables (the CLI, local runs). The serverless functions
//! use AWS Secrets Manager instead (`llmo_aws::secrets`): one secret whose JSON object maps
//! names to values, read once per container and again after a TTL.

use async_trait::async_trait;

/// A secret source that could not be read (a value it holds is never in the message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secrets: {0}")]
pub struct SecretsError(pub String);

#[async_trait]
pub trait Secrets: Send + Sync {
    /// The value of `name`, if the source has one.
    async fn get(&self, name: &str) -> Result<Option<String>, SecretsError>;
}

/// Environment variables (empty counts as unset).
pub struct EnvSecrets;

#[async_trait]
impl Secrets for EnvSecrets {
    async fn get(&self, name: &str) -> Result<Option<String>, SecretsError> {
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
    async fn get(&self, name: &str) -> Result<Option<String>, SecretsError> {
        if !name.starts_with(WORKFLOW_PREFIX) {
            return Ok(None);
        }
        self.0.get(name).await
    }
}

/// A workflow secret as the operator keeps it in the secret source: its value and, beside it,
/// which tenants may use it and towards which hosts. Written as a JSON object,
/// `{"value": "...", "tenants": ["acme"], "hosts": ["api.tickets.example"]}` (`"*"` in
/// `tenants`: every tenant); a plain string is a value with no grant, which only single-user
/// (embedded) runs may use. A workflow's `spec.secrets.NAME.hosts` can only narrow the
/// operator's hosts.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub value: String,
    #[serde(default)]
    pub tenants: Option<Vec<String>>,
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
}

impl Grant {
    /// Reads what the source holds: a grant (a JSON object with a `value`), or a plain value
    /// (anything else: a JSON credential stays a value). A malformed grant is refused without
    /// quoting it: it holds the secret.
    pub fn parse(raw: String) -> Result<Grant, String> {
        let object = raw.trim_start().starts_with('{');
        match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&raw) {
            Ok(m) if object && m.contains_key("value") => {
                serde_json::from_value(serde_json::Value::Object(m)).map_err(|_| {
                    "is not a grant: expected {\"value\": string, \"tenants\": [names or \"*\"], \"hosts\": [hosts]}"
                        .to_string()
                })
            }
            _ => Ok(Grant { value: raw, tenants: None, hosts: None }),
        }
    }

    /// Whether a run of `tenant` (`None`: a single-user run) may send it to `host`. The
    /// operator's hosts, when given, must cover `host`; in a tenant's run the grant must name
    /// both the tenants (the run's among them) and the hosts.
    pub fn allows(&self, tenant: Option<&str>, host: &str) -> Result<(), String> {
        if let Some(t) = tenant {
            let (Some(tenants), Some(_)) = (&self.tenants, &self.hosts) else {
                return Err(
                    "the operator has not said which tenants and hosts may use it (in the secret source, as {\"value\", \"tenants\", \"hosts\"})".into(),
                );
            };
            if !tenants.iter().any(|x| x == "*" || x == t) {
                return Err(format!("it is not granted to tenant `{t}`"));
            }
        }
        if let Some(hosts) = &self.hosts
            && !hosts.iter().any(|p| llmo_core::model::host_matches(p, host))
        {
            return Err(format!("the operator allows it only towards {}, not `{host}`", hosts.join(", ")));
        }
        Ok(())
    }
}

/// A fixed map (tests, and sources that read everything at once).
#[derive(Default)]
pub struct MapSecrets(pub std::collections::HashMap<String, String>);

#[async_trait]
impl Secrets for MapSecrets {
    async fn get(&self, name: &str) -> Result<Option<String>, SecretsError> {
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

    #[test]
    fn a_grant_names_the_tenants_and_hosts_a_secret_may_serve() {
        let g = Grant::parse(r#"{"value": "v", "tenants": ["t1"], "hosts": ["*.tickets.example"]}"#.into()).unwrap();
        assert_eq!(g.value, "v");
        assert!(g.allows(Some("t1"), "api.tickets.example").is_ok());
        assert!(g.allows(Some("t2"), "api.tickets.example").unwrap_err().contains("not granted to tenant `t2`"));
        assert!(g.allows(Some("t1"), "attacker.example").unwrap_err().contains("only towards *.tickets.example"));
        assert!(g.allows(None, "attacker.example").is_err(), "the operator's hosts bind single-user runs too");
        let every = Grant::parse(r#"{"value": "v", "tenants": ["*"], "hosts": ["h.example"]}"#.into()).unwrap();
        assert!(every.allows(Some("anyone"), "h.example").is_ok());
        // A plain value: single-user runs only.
        let plain = Grant::parse("v".into()).unwrap();
        assert!(plain.allows(None, "anywhere.example").is_ok());
        assert!(plain.allows(Some("t1"), "anywhere.example").unwrap_err().contains("has not said which tenants"));
        // A grant with a mistake is refused, without quoting what it holds.
        let bad = Grant::parse(r#"{"value": "sk-secret", "tenant": ["t1"]}"#.into()).unwrap_err();
        assert!(bad.contains("is not a grant") && !bad.contains("sk-secret"), "{bad}");
        let bad = Grant::parse(r#"{"value": "sk-secret", "tenants": "sk-secret"}"#.into()).unwrap_err();
        assert!(!bad.contains("sk-secret"), "{bad}");
        // A JSON credential without `value` is a plain value.
        let json_key = r#"{"type": "service_account", "private_key": "k"}"#;
        assert_eq!(Grant::parse(json_key.into()).unwrap().value, json_key);
    }
}
