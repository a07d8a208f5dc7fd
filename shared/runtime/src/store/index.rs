//! The run index port: what the API lists and looks up beside a run's log (a tenant's runs,
//! newest first, by workflow or status, a page at a time; a run's tenant; the runs since a
//! time, for costs). DynamoDB answers from its listing indexes (`llmo-aws`), memory and SQLite
//! here.

use async_trait::async_trait;

use super::{Error, RunSummary};

/// Which runs a listing returns.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// The tenant whose runs are listed (a listing never leaves it).
    pub tenant: String,
    pub workflow: Option<String>,
    pub status: Option<String>,
    pub limit: Option<i32>,
    /// The `next` of the previous page.
    pub cursor: Option<String>,
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Page {
    pub runs: Vec<RunSummary>,
    /// Pass as `cursor` for the next page (opaque; valid only for the same listing).
    pub next: Option<String>,
}

#[async_trait]
pub trait RunIndex: Send + Sync {
    /// A page of `f.tenant`'s runs, newest first (by creation), filtered by workflow or status.
    /// A cursor this index did not give is `Error::Invalid`.
    async fn list_page(&self, f: &ListFilter) -> Result<Page, Error>;
    /// The tenant a run belongs to (`-` for a run without one), `None` if there is no such run.
    async fn tenant_of(&self, run_id: &str) -> Result<Option<String>, Error>;
    /// `tenant`'s runs created at or after `since_ms`, newest first, at most `limit`, and
    /// whether there were more.
    async fn runs_since(&self, tenant: &str, since_ms: u64, limit: usize) -> Result<(Vec<RunSummary>, bool), Error>;
}

/// A run the sweeper looks at: not ended, with its deadline once it has started.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveRun {
    pub run_id: String,
    pub status: String,
    pub deadline: Option<u64>,
}

/// The runs not ended yet, for the sweeper (`llmo_api::sweep`): DynamoDB's sparse `by_live`
/// index, SQLite's `runs` table.
#[async_trait]
pub trait LiveRuns: Send + Sync {
    /// Runs created before `before_ms` that are `pending`, or whose deadline is at or before
    /// `due_ms`, oldest first, at most `limit`; and how many live runs were looked at.
    async fn live_runs(&self, before_ms: u64, due_ms: u64, limit: usize) -> Result<(Vec<LiveRun>, u64), Error>;
}

/// When a run was created: the time in its id (`run-<13-digit ms>-<random>`), else 0.
pub fn created_ms(run_id: &str) -> u64 {
    run_id
        .strip_prefix("run-")
        .and_then(|r| r.split('-').next())
        .filter(|ms| ms.len() == 13)
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0)
}

/// A page of `runs` (each with its tenant), as memory lists them (SQLite the same, in SQL): newest
/// first by `(created, run id)`; the cursor is the last one given, `<created>#<run id>`.
pub fn page_of(mut runs: Vec<(String, RunSummary)>, f: &ListFilter) -> Result<Page, Error> {
    let after = match &f.cursor {
        None => None,
        Some(c) => {
            let (ms, id) = c.split_once('#').ok_or_else(|| Error::Invalid("not a cursor of this listing".into()))?;
            let ms: u64 = ms.parse().map_err(|_| Error::Invalid("not a cursor of this listing".into()))?;
            Some((ms, id.to_string()))
        }
    };
    runs.retain(|(t, r)| {
        *t == f.tenant
            && f.workflow.as_ref().is_none_or(|w| *w == r.workflow)
            && f.status.as_ref().is_none_or(|s| *s == r.status)
    });
    let key = |r: &RunSummary| (created_ms(&r.run_id), r.run_id.clone());
    runs.sort_by_key(|r| std::cmp::Reverse(key(&r.1)));
    let limit = f.limit.unwrap_or(50).max(1) as usize;
    let mut out: Vec<RunSummary> = runs
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| after.as_ref().is_none_or(|a| key(r) < *a))
        .take(limit + 1)
        .collect();
    let next = (out.len() > limit).then(|| {
        out.truncate(limit);
        let last = out.last().expect("a full page");
        format!("{}#{}", created_ms(&last.run_id), last.run_id)
    });
    Ok(Page { runs: out, next })
}
