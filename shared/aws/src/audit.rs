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
pub use llmo_runtime::audit::{AuditError, AuditLog, DAY_MS, MAX_RANGE_DAYS, Query, Record, check_range};

use crate::config::Aws;

/// Reads and writes audit records (the [`AuditLog`] port on DynamoDB).
#[derive(Clone)]
pub struct Audit {
    aws: Aws,
    retention_secs: u64,
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
    pub async fn write(&self, r: &Record) -> Result<(), AuditError> {
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
            .map_err(|e| AuditError(aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string()))
    }

    /// Records oldest first: a run's (within the tenant), or the tenant's in `since..=until`
    /// (at most [`MAX_RANGE_DAYS`] days).
    pub async fn read(&self, q: &Query) -> Result<Vec<Record>, AuditError> {
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
    ) -> Result<(), AuditError> {
        let mut start = None;
        loop {
            let page = query()
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| AuditError(aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string()))?;
            out.extend(page.items().iter().map(record));
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() && out.len() < limit => start = Some(k),
                _ => return Ok(()),
            }
        }
    }
}

#[async_trait::async_trait]
impl AuditLog for Audit {
    async fn write(&self, r: &Record) -> Result<(), AuditError> {
        Audit::write(self, r).await
    }

    async fn read(&self, q: &Query) -> Result<Vec<Record>, AuditError> {
        Audit::read(self, q).await
    }
}
