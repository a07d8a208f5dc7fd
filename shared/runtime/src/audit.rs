//! The audit trail port: who did what, to what, with what result, and when; append-only.
//!
//! Every API request that authenticated (allowed or refused) is one record, and every change of
//! a run's status is one record written with the change (in the same transaction where the
//! store has them: DynamoDB in `llmo-aws`, SQLite here). Records are read by tenant and time
//! range, or by run, oldest first. [`MemoryAudit`] keeps them in the process; the SQLite
//! adapter is `store::SqliteStore` (feature `sqlite`).

use std::sync::Mutex;

use async_trait::async_trait;
use serde::Serialize;

pub const DAY_MS: u64 = 86_400_000;
/// The longest time range one audit read covers.
pub const MAX_RANGE_DAYS: u64 = 31;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// Milliseconds since the epoch.
    pub at: u64,
    pub tenant: String,
    /// The token's subject, or `system` for the runtime's own changes.
    pub actor: String,
    /// The actor's role (`system` for the runtime).
    pub role: String,
    /// `METHOD /route` for API requests, `run.status` for status changes.
    pub action: String,
    /// What it acted on (a run id, a workflow name), if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The HTTP status, or the run's new status.
    pub result: String,
    /// The run the record is about, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

impl Record {
    /// The record of a run's status change to `status` (the runtime's own).
    pub fn status_change(at: u64, tenant: &str, run_id: &str, status: &str) -> Self {
        Record {
            at,
            tenant: tenant.to_string(),
            actor: "system".into(),
            role: "system".into(),
            action: "run.status".into(),
            target: Some(run_id.to_string()),
            result: status.to_string(),
            run_id: Some(run_id.to_string()),
        }
    }
}

/// Which records to read.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub tenant: String,
    /// One run's records (within the tenant).
    pub run_id: Option<String>,
    /// Milliseconds since the epoch, inclusive.
    pub since: u64,
    pub until: u64,
    pub limit: usize,
}

impl Query {
    /// Whether `r` is one of the records this query reads.
    pub fn matches(&self, r: &Record) -> bool {
        r.tenant == self.tenant
            && (self.since..=self.until).contains(&r.at)
            && self.run_id.as_ref().is_none_or(|id| r.run_id.as_ref() == Some(id))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("audit: {0}")]
pub struct AuditError(pub String);

#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Appends one record.
    async fn write(&self, r: &Record) -> Result<(), AuditError>;
    /// Records oldest first: a run's (within the tenant), or the tenant's in `since..=until`
    /// (at most [`MAX_RANGE_DAYS`] days), at most `limit` (1 to 1000).
    async fn read(&self, q: &Query) -> Result<Vec<Record>, AuditError>;
}

/// The day range of a read, checked.
pub fn check_range(since: u64, until: u64) -> Result<(), String> {
    if since > until {
        return Err("`since` is after `until`".into());
    }
    if (until - since) / DAY_MS >= MAX_RANGE_DAYS {
        return Err(format!("an audit read covers at most {MAX_RANGE_DAYS} days"));
    }
    Ok(())
}

/// The audit trail in the process (tests, and an API without a store of its own).
#[derive(Default)]
pub struct MemoryAudit(Mutex<Vec<Record>>);

#[async_trait]
impl AuditLog for MemoryAudit {
    async fn write(&self, r: &Record) -> Result<(), AuditError> {
        self.0.lock().expect("audit lock").push(r.clone());
        Ok(())
    }

    async fn read(&self, q: &Query) -> Result<Vec<Record>, AuditError> {
        let mut out: Vec<Record> =
            self.0.lock().expect("audit lock").iter().filter(|r| q.matches(r)).cloned().collect();
        out.sort_by_key(|r| (r.at, r.role == "system"));
        out.truncate(q.limit.clamp(1, 1000));
        Ok(out)
    }
}
