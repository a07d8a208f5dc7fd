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
/// first by `(created, run id)`; the cursor seals the last one given ([`seal_bound`]).
pub fn page_of(mut runs: Vec<(String, RunSummary)>, f: &ListFilter) -> Result<Page, Error> {
    let after = open_bound(f)?;
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
        seal_bound(f, created_ms(&last.run_id), &last.run_id)
    });
    Ok(Page { runs: out, next })
}

/// Where the page `f.cursor` continues a one-shard listing (memory, SQLite): after
/// `(created, run id)`. A cursor another listing (tenant, filters) gave, or none gave, is
/// `Error::Invalid`.
pub fn open_bound(f: &ListFilter) -> Result<Option<(u64, String)>, Error> {
    let Some(c) = &f.cursor else { return Ok(None) };
    let bounds = cursor::decode(c, &f.tenant, f.workflow.as_deref(), f.status.as_deref(), 1).map_err(Error::Invalid)?;
    let bad = || Error::Invalid("the cursor is not one this listing gave".into());
    let (_, b) = bounds.into_iter().next().ok_or_else(bad)?;
    let (ms, id) = b.split_once('#').ok_or_else(bad)?;
    Ok(Some((ms.parse().map_err(|_| bad())?, id.to_string())))
}

/// The cursor of the page after `(created, run id)` in listing `f`.
pub fn seal_bound(f: &ListFilter, created: u64, run_id: &str) -> String {
    let bounds = [(0u32, format!("{created:013}#{run_id}"))].into_iter().collect();
    cursor::encode(&f.tenant, f.workflow.as_deref(), f.status.as_deref(), &bounds)
}

/// A listing cursor (every index's: DynamoDB's has a bound per shard, memory and SQLite one): base64url of `{"l": <listing hash>, "s": {shard: created bound}}`. It is
/// checked on the way back in: it must decode, name this very listing (tenant and filters),
/// and hold only shard numbers and `<13 digits>#<run id>` bounds. Queries are keyed by the
/// caller's tenant whatever the cursor says, so even a forged cursor reads nothing else.
pub mod cursor {
    use std::collections::HashMap;

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use sha2::{Digest, Sha256};

    fn listing(tenant: &str, workflow: Option<&str>, status: Option<&str>) -> String {
        let h = Sha256::digest(format!("{tenant}\0{}\0{}", workflow.unwrap_or(""), status.unwrap_or("")).as_bytes());
        h.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    pub fn encode(tenant: &str, workflow: Option<&str>, status: Option<&str>, bounds: &HashMap<u32, String>) -> String {
        let v = serde_json::json!({"l": listing(tenant, workflow, status), "s": bounds});
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn bound_ok(b: &str) -> bool {
        if b.is_empty() {
            return true;
        }
        let Some((ms, id)) = b.split_once('#') else { return false };
        ms.len() == 13
            && ms.bytes().all(|c| c.is_ascii_digit())
            && (1..=128).contains(&id.len())
            && id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
    }

    pub fn decode(
        c: &str,
        tenant: &str,
        workflow: Option<&str>,
        status: Option<&str>,
        shards: u32,
    ) -> Result<Vec<(u32, String)>, String> {
        let bad = || "the cursor is not one this listing gave".to_string();
        if c.len() > 4096 {
            return Err(bad());
        }
        let bytes = URL_SAFE_NO_PAD.decode(c).map_err(|_| bad())?;
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            l: String,
            s: HashMap<u32, String>,
        }
        let raw: Raw = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        if raw.l != listing(tenant, workflow, status) || raw.s.is_empty() {
            return Err(bad());
        }
        let mut v = Vec::new();
        for (k, b) in raw.s {
            if k >= shards || !bound_ok(&b) {
                return Err(bad());
            }
            v.push((k, b));
        }
        v.sort();
        Ok(v)
    }
}
