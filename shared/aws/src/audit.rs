//! The audit trail: who did what, to what, with what result, and when; append-only.
//!
//! Every API request that authenticated (allowed or refused) is one record, and every change of
//! a run's status is one record written in the same transaction as the change
//! ([`crate::dynamo::DynamoStore`]'s appends). Items (in the run table):
//!
//! | `pk` | `sk` | `audit_run` |
//! | --- | --- | --- |
//! | `AUDIT#<tenant>#<day since the epoch>` | `<ms, 13 digits>#<16 random hex digits>` | the run the record is about, if any |
//!
//! Records are read by tenant and time range (a query per day partition) or by run (the
//! `audit_by_run` index). They are only ever put under `attribute_not_exists(pk)` and expire
//! after `LLMO_AUDIT_RETENTION_DAYS` (400 by default).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, Put};
use serde::Serialize;

use crate::config::Aws;

const DAY_MS: u64 = 86_400_000;
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

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn random_hex() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the operating system's random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn item(r: &Record, retention_secs: u64) -> HashMap<String, AttributeValue> {
    let mut item: HashMap<String, AttributeValue> = [
        ("pk".to_string(), s(format!("AUDIT#{}#{}", r.tenant, r.at / DAY_MS))),
        ("sk".to_string(), s(format!("{:013}#{}", r.at, random_hex()))),
        ("at".to_string(), AttributeValue::N(r.at.to_string())),
        ("tenant".to_string(), s(&r.tenant)),
        ("actor".to_string(), s(&r.actor)),
        ("role".to_string(), s(&r.role)),
        ("action".to_string(), s(&r.action)),
        ("result".to_string(), s(&r.result)),
        ("expires_at".to_string(), AttributeValue::N((r.at / 1000 + retention_secs).to_string())),
    ]
    .into();
    if let Some(t) = &r.target {
        item.insert("target".into(), s(t));
    }
    if let Some(run) = &r.run_id {
        item.insert("audit_run".into(), s(run));
    }
    item
}

fn record(i: &HashMap<String, AttributeValue>) -> Record {
    let g = |k: &str| i.get(k).and_then(|v| v.as_s().ok()).cloned();
    Record {
        at: i.get("at").and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok()).unwrap_or(0),
        tenant: g("tenant").unwrap_or_default(),
        actor: g("actor").unwrap_or_default(),
        role: g("role").unwrap_or_default(),
        action: g("action").unwrap_or_default(),
        target: g("target"),
        result: g("result").unwrap_or_default(),
        run_id: g("audit_run"),
    }
}

/// Reads and writes audit records.
#[derive(Clone)]
pub struct Audit {
    aws: Aws,
    retention_secs: u64,
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

impl Audit {
    pub fn new(aws: &Aws) -> Self {
        Audit { aws: aws.clone(), retention_secs: aws.lifetime.audit_days * 86_400 }
    }

    /// The `Put` of a record, for a transaction.
    pub fn put(&self, r: &Record) -> Put {
        Put::builder()
            .table_name(&self.aws.table)
            .set_item(Some(item(r, self.retention_secs)))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .expect("table, item and condition are set")
    }

    /// Appends one record.
    pub async fn write(&self, r: &Record) -> Result<(), String> {
        let p = self.put(r);
        self.aws
            .dynamodb
            .put_item()
            .table_name(&self.aws.table)
            .set_item(Some(p.item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map(|_| self.aws.meter.add_wru(1.0))
            .map_err(|e| format!("audit: {}", aws_sdk_dynamodb::error::DisplayErrorContext(e)))
    }

    /// Records oldest first: a run's (within the tenant), or the tenant's in `since..=until`
    /// (at most [`MAX_RANGE_DAYS`] days).
    pub async fn read(&self, q: &Query) -> Result<Vec<Record>, String> {
        let limit = q.limit.clamp(1, 1000);
        let mut out = Vec::new();
        if let Some(run) = &q.run_id {
            let query = || {
                self.range(q)
                    .index_name("audit_by_run")
                    .key_condition_expression("audit_run = :k AND sk BETWEEN :a AND :b")
                    .expression_attribute_values(":k", s(run))
            };
            self.pages(query, limit, &mut out).await?;
            out.retain(|r| r.tenant == q.tenant);
        } else {
            for day in q.since / DAY_MS..=q.until / DAY_MS {
                let query = || {
                    self.range(q)
                        .key_condition_expression("pk = :k AND sk BETWEEN :a AND :b")
                        .expression_attribute_values(":k", s(format!("AUDIT#{}#{day}", q.tenant)))
                };
                self.pages(query, limit, &mut out).await?;
                if out.len() >= limit {
                    break;
                }
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// A query of the table with `:a`/`:b` bounding `sk` to the query's time range.
    fn range(&self, q: &Query) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder {
        self.aws
            .dynamodb
            .query()
            .table_name(&self.aws.table)
            .expression_attribute_values(":a", s(format!("{:013}", q.since)))
            .expression_attribute_values(":b", s(format!("{:013}~", q.until)))
    }

    /// Follows a query's pages into `out` until it ends or `out` holds `limit` records.
    async fn pages(
        &self,
        query: impl Fn() -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
        limit: usize,
        out: &mut Vec<Record>,
    ) -> Result<(), String> {
        let mut start = None;
        loop {
            let page = query()
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| format!("audit: {}", aws_sdk_dynamodb::error::DisplayErrorContext(e)))?;
            out.extend(page.items().iter().map(record));
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() && out.len() < limit => start = Some(k),
                _ => return Ok(()),
            }
        }
    }
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
