//! Listings: runs by time, workflow or status (the sharded GSIs, merged a page at a time
//! behind a checked cursor), runs since a time (costs), and the live runs the sweeper reads.

use super::*;

pub use llmo_runtime::store::{ListFilter, LiveRun, Page};

#[async_trait]
impl llmo_runtime::store::RunIndex for DynamoStore {
    async fn list_page(&self, f: &ListFilter) -> Result<Page, Error> {
        DynamoStore::list_page(self, f).await
    }

    async fn tenant_of(&self, run_id: &str) -> Result<Option<String>, Error> {
        DynamoStore::tenant_of(self, run_id).await
    }

    async fn runs_since(&self, tenant: &str, since_ms: u64, limit: usize) -> Result<(Vec<RunSummary>, bool), Error> {
        DynamoStore::runs_since(self, tenant, since_ms, limit).await
    }
}

/// The tenant part of keys: `-` for runs without a tenant (embedded, tests).
pub(super) fn tenant_key(t: Option<&str>) -> &str {
    t.unwrap_or("-")
}

use llmo_runtime::store::cursor;

impl DynamoStore {
    /// A page of runs, newest first, by workflow or status (or all).
    ///
    /// Each listing GSI spreads runs over `LIST_SHARDS` partition keys: the shards are queried
    /// at once, `limit` runs each (older than the cursor's bound for that shard), and merged by
    /// `created`. The cursor records, per shard not yet exhausted, the `created` of the last run
    /// it gave ("" for none yet), so the next page starts right after it in every shard.
    pub async fn list_page(&self, f: &ListFilter) -> Result<Page, Error> {
        let (index, key, prefix) = match (&f.workflow, &f.status) {
            (Some(w), _) => ("by_workflow", "wf_key", format!("{}#{w}", f.tenant)),
            (None, Some(st)) => ("by_status", "status_key", format!("{}#{st}", f.tenant)),
            (None, None) => ("by_time", "all", format!("{}#RUNS", f.tenant)),
        };
        let limit = f.limit.unwrap_or(50).clamp(1, 1000);
        let open: Vec<(u32, String)> = match &f.cursor {
            None => (0..LIST_SHARDS).map(|k| (k, String::new())).collect(),
            Some(c) => cursor::decode(c, &f.tenant, f.workflow.as_deref(), f.status.as_deref(), LIST_SHARDS)
                .map_err(Error::Invalid)?,
        };
        let queries = open.iter().map(|(k, bound)| {
            let mut cond = "#k = :v".to_string();
            let mut q = self
                .aws
                .dynamodb
                .query()
                .table_name(&self.aws.table)
                .index_name(index)
                .expression_attribute_names("#k", key)
                .expression_attribute_values(":v", s(format!("{prefix}#{k}")))
                .scan_index_forward(false)
                .limit(limit)
                .return_consumed_capacity(ReturnConsumedCapacity::Total);
            if !bound.is_empty() {
                cond.push_str(" AND created < :c");
                q = q.expression_attribute_values(":c", s(bound.clone()));
            }
            if let (Some(_), Some(st)) = (&f.workflow, &f.status) {
                q = q
                    .filter_expression("#s = :s")
                    .expression_attribute_names("#s", "status")
                    .expression_attribute_values(":s", s(st.clone()));
            }
            q.key_condition_expression(cond).send()
        });
        let outs = futures::future::join_all(queries).await;
        // (shard, its bound, its runs newest first, the `created` its query stopped at if it has more)
        let mut shards = Vec::with_capacity(outs.len());
        for ((k, bound), out) in open.into_iter().zip(outs) {
            let out = out.map_err(err)?;
            self.meter_capacity(out.consumed_capacity(), false);
            let more = out.last_evaluated_key().and_then(|lek| get_s(lek, "created")).map(str::to_string);
            shards.push((k, bound, out.items.unwrap_or_default(), more));
        }
        let mut all: Vec<(&str, u32, &Item)> = shards
            .iter()
            .flat_map(|(k, _, items, _)| items.iter().map(move |i| (get_s(i, "created").unwrap_or(""), *k, i)))
            .collect();
        all.sort_by(|a, b| b.0.cmp(a.0));
        all.truncate(limit as usize);
        let runs = all.iter().map(|(_, _, i)| Self::summary(i)).collect();
        let mut next: HashMap<u32, String> = HashMap::new();
        for (k, bound, items, more) in &shards {
            let taken = all.iter().filter(|(_, s, _)| s == k).count();
            let last_taken = all.iter().rev().find(|(_, s, _)| s == k).map(|(c, _, _)| c.to_string());
            if taken < items.len() {
                next.insert(*k, last_taken.unwrap_or_else(|| bound.clone()));
            } else if let Some(m) = more {
                next.insert(*k, m.clone());
            }
        }
        let next =
            (!next.is_empty()).then(|| cursor::encode(&f.tenant, f.workflow.as_deref(), f.status.as_deref(), &next));
        Ok(Page { runs, next })
    }

    /// Summaries of `tenant`'s runs created at or after `since_ms` (the `by_time` index, eight
    /// shards queried at once), at most `limit`; `true` when there were more.
    pub async fn runs_since(
        &self,
        tenant: &str,
        since_ms: u64,
        limit: usize,
    ) -> Result<(Vec<RunSummary>, bool), Error> {
        let shards = (0..LIST_SHARDS).map(|k| {
            let q = self
                .aws
                .dynamodb
                .query()
                .table_name(&self.aws.table)
                .index_name("by_time")
                .key_condition_expression("#k = :v AND created >= :c")
                .expression_attribute_names("#k", "all")
                .expression_attribute_values(":v", s(format!("{tenant}#RUNS#{k}")))
                .expression_attribute_values(":c", s(format!("{since_ms:013}")))
                .scan_index_forward(false);
            self.query_items(q, limit)
        });
        let mut all: Vec<Item> = Vec::new();
        for r in futures::future::join_all(shards).await {
            all.extend(r?);
        }
        // The newest `limit` runs, when there are more.
        let more = all.len() > limit;
        all.sort_by(|a, b| get_s(b, "created").cmp(&get_s(a, "created")));
        all.truncate(limit);
        let all: Vec<RunSummary> = all.iter().map(Self::summary).collect();
        Ok((all, more))
    }
}

#[async_trait::async_trait]
impl llmo_runtime::store::LiveRuns for DynamoStore {
    /// Runs not ended, created before `before_ms`, that a sweep must act on: `pending` ones,
    /// and those whose deadline is `due_ms` or earlier. Oldest first, at most `limit`, and
    /// how many live runs were read to find them. The whole sparse `by_live` index (eight
    /// shards) is paged through, the condition applied by DynamoDB (a filter: every live
    /// run is read, only those to act on come back), so runs that only wait (a tenant's
    /// thousands of long sleeps) never hide the ones that need the sweep.
    async fn live_runs(&self, before_ms: u64, due_ms: u64, limit: usize) -> Result<(Vec<LiveRun>, u64), Error> {
        let mut all: Vec<Item> = Vec::new();
        let mut scanned = 0u64;
        for shard in 0..LIST_SHARDS {
            let q = self
                .aws
                .dynamodb
                .query()
                .table_name(&self.aws.table)
                .index_name("by_live")
                .key_condition_expression("live_key = :k AND created < :c")
                .filter_expression("#s = :pending OR deadline <= :due")
                .expression_attribute_names("#s", "status")
                .expression_attribute_values(":k", s(format!("LIVE#{shard}")))
                .expression_attribute_values(":c", s(format!("{before_ms:013}")))
                .expression_attribute_values(":pending", s("pending"))
                .expression_attribute_values(":due", n(due_ms))
                .return_consumed_capacity(ReturnConsumedCapacity::Total);
            let mut pages = q.into_paginator().send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(err)?;
                self.meter_capacity(page.consumed_capacity(), false);
                scanned += page.scanned_count().max(0) as u64;
                all.extend(page.items.unwrap_or_default());
                if all.len() > limit {
                    break;
                }
            }
        }
        all.sort_by(|a, b| get_s(a, "created").cmp(&get_s(b, "created")));
        all.truncate(limit);
        Ok((
            all.iter()
                .map(|item| LiveRun {
                    run_id: get_s(item, "run_id").unwrap_or_default().to_string(),
                    status: get_s(item, "status").unwrap_or_default().to_string(),
                    deadline: get_n(item, "deadline").map(|d| d as u64),
                })
                .collect(),
            scanned,
        ))
    }
}
