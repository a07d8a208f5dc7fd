//! The workflow definitions port: what `POST /workflows` registers per tenant (by the
//! workflow's `metadata.name`) and `POST /runs {"workflow": name}` starts. Adapters: memory
//! (here), SQLite ([`crate::store::SqliteStore`]), DynamoDB with S3 for large sources
//! (`llmo-aws`). A definition is as large as the API lets a request be; no store may refuse
//! one for its size.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use llmo_core::engine::Millis;

use crate::store::Error;

/// A registered definition, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub name: String,
    pub registered_at: Millis,
}

#[async_trait]
pub trait Workflows: Send + Sync {
    /// Registers (or replaces) `tenant`'s definition `name`.
    async fn put(&self, tenant: &str, name: &str, source: &str, now: Millis) -> Result<(), Error>;
    /// The source of `tenant`'s definition `name`.
    async fn get(&self, tenant: &str, name: &str) -> Result<Option<String>, Error>;
    /// `tenant`'s definitions, by name.
    async fn list(&self, tenant: &str) -> Result<Vec<Registered>, Error>;
}

/// Definitions in memory.
#[derive(Default)]
pub struct MemoryWorkflows(Mutex<BTreeMap<(String, String), (String, Millis)>>);

#[async_trait]
impl Workflows for MemoryWorkflows {
    async fn put(&self, tenant: &str, name: &str, source: &str, now: Millis) -> Result<(), Error> {
        self.0.lock().expect("workflows").insert((tenant.into(), name.into()), (source.into(), now));
        Ok(())
    }

    async fn get(&self, tenant: &str, name: &str) -> Result<Option<String>, Error> {
        Ok(self.0.lock().expect("workflows").get(&(tenant.into(), name.into())).map(|(s, _)| s.clone()))
    }

    async fn list(&self, tenant: &str) -> Result<Vec<Registered>, Error> {
        Ok(self
            .0
            .lock()
            .expect("workflows")
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|((_, name), (_, at))| Registered { name: name.clone(), registered_at: *at })
            .collect())
    }
}
