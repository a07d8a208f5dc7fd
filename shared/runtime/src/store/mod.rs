//! The run store port and its embedded adapters.
//!
//! A run is stored as an **append-only log of transitions** (the event each one applied, and
//! the clock reading it was applied at) plus occasional snapshots of the whole state. The
//! engine's transition function is deterministic, so the state at any version is the last
//! snapshot with the later transitions applied again ([`rebuild`]). A transition costs one
//! small append however large the run is, and the log is the run's audit history.
//!
//! Appends are compare-and-set on the run's version: a batch of transitions computed from
//! version `v` is stored only if the stored version is still `v`. Two processes driving one
//! run (or `llmo cancel` racing a running driver) can never both extend the log from the
//! same version; the loser reloads and re-applies.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use async_trait::async_trait;
use llmo_core::engine::{Event, Millis, Plan, RunState};
use serde::{Deserialize, Serialize};

#[cfg(any(test, feature = "contract"))]
pub mod contract;
pub(crate) mod index;
#[cfg(feature = "sqlite")]
mod sqlite;
pub use index::{ListFilter, LiveRun, LiveRuns, Page, RunIndex, created_ms, cursor, page_of};
#[cfg(feature = "sqlite")]
pub use sqlite::{Durability, SqliteStore};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[cfg(feature = "sqlite")]
    #[error("run store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("run store: stored data is not readable: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("run store: run `{0}` already exists")]
    Exists(String),
    #[error("run store: the log of run `{run}` does not replay: {why}")]
    Corrupt { run: String, why: String },
    /// A request the store refuses as malformed (a listing cursor it did not give).
    #[error("{0}")]
    Invalid(String),
    #[error("run store: {0}")]
    Other(String),
}

/// One stored transition: `event`, applied at clock reading `at`, took the run from
/// `version - 1` to `version`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Transition {
    pub version: u64,
    pub at: Millis,
    pub event: Event,
    /// What applying it took its writer, in milliseconds, when that was 1 ms or more (else
    /// 0, not stored): what replaying it will cost a reader, known before replaying it
    /// ([`crate::reads`]). Not part of the transition's identity (`==` ignores it). The
    /// SQLite store does not keep it (its runs have no remote readers).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub took_ms: u64,
}

impl Transition {
    /// A transition whose cost is not recorded.
    pub fn new(version: u64, at: Millis, event: Event) -> Self {
        Transition { version, at, event, took_ms: 0 }
    }

    /// The same, recording that applying it took `took` (from 1 ms).
    pub fn took(mut self, took: std::time::Duration) -> Self {
        self.took_ms = took.as_millis() as u64;
        self
    }
}

impl PartialEq for Transition {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version && self.at == other.at && self.event == other.event
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What listings show of a run, kept current with every append.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub run_id: String,
    pub workflow: String,
    pub status: String,
    pub version: u64,
    pub started_at: Option<u64>,
    pub cost_usd: f64,
    pub tokens: u64,
}

impl RunSummary {
    pub fn of(workflow: &str, st: &RunState) -> Self {
        RunSummary {
            run_id: st.run_id.clone(),
            workflow: workflow.to_string(),
            status: st.status.as_str().to_string(),
            version: st.version,
            started_at: st.started_at,
            cost_usd: st.cost_usd,
            tokens: st.tokens,
        }
    }
}

/// An idempotency key as a store keeps it: `id` is unique per tenant and key space (see
/// [`crate::start::IdempotencyKey`]), `fingerprint` identifies the request that used it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartKey {
    pub id: String,
    pub fingerprint: String,
}

/// What [`RunStore::create_keyed`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The run was stored.
    New,
    /// The key had already started `run_id`, by a request with `fingerprint`; nothing was
    /// written.
    Existing { run_id: String, fingerprint: String },
}

/// A run as stored: where it was started from, its last snapshot, and the transitions after.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRun {
    pub workflow: String,
    /// Where the workflow was read from, and its text (to rebuild the plan on `resume`).
    pub source_name: String,
    pub source: String,
    pub snapshot: RunState,
    pub tail: Vec<Transition>,
}

impl StoredRun {
    /// A state and the transitions after it (what [`RunStore::load_since`] gives a worker
    /// that kept the state), in the shape [`rebuild`] takes.
    pub fn tail_only(state: RunState, tail: Vec<Transition>) -> Self {
        StoredRun { workflow: String::new(), source_name: String::new(), source: String::new(), snapshot: state, tail }
    }
}

/// Applies `run.tail` to its snapshot: the run's current state.
pub fn rebuild(plan: &Plan, run: StoredRun) -> Result<RunState, Error> {
    match rebuild_until(plan, run.snapshot, run.tail, None)? {
        Rebuilt::Done(st) => Ok(st),
        Rebuilt::Stopped { .. } => unreachable!("a rebuild without a deadline finishes"),
    }
}

/// A rebuild (or the transitions applied since a state was loaded) that took at least this
/// long is worth a snapshot: whoever paid for it writes the state it reached, so the next
/// reader replays only what follows. Replaying a transition costs what its templates cost
/// to render (each bounded by fuel, but a transition renders as many as it starts units),
/// so without this a log of cheap-to-store, dear-to-replay transitions would be paid for by
/// every reader; with it a rebuild costs the transitions since the last dear stretch.
pub const SNAPSHOT_AFTER: std::time::Duration = std::time::Duration::from_millis(50);

/// Where [`rebuild_until`] got to.
#[derive(Debug)]
pub enum Rebuilt {
    /// Every transition was applied: the run's current state.
    Done(RunState),
    /// The deadline passed between two transitions: the state so far (a state the log
    /// reached, which may be stored as a snapshot) and the transitions still to apply.
    Stopped { state: RunState, rest: Vec<Transition> },
}

/// Applies `tail` to `state`, stopping between transitions once `deadline` has passed (one
/// transition is never interrupted: its cost is bounded by fuel per template and the
/// units it starts). A reader that stops keeps its progress by storing the state reached as
/// a snapshot ([`RunStore::snapshot`]).
pub fn rebuild_until(
    plan: &Plan,
    mut st: RunState,
    tail: Vec<Transition>,
    deadline: Option<std::time::Instant>,
) -> Result<Rebuilt, Error> {
    let mut rest = tail.into_iter();
    while let Some(t) = rest.next() {
        apply_stored(plan, &mut st, &t)?;
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) && rest.len() > 0 {
            return Ok(Rebuilt::Stopped { state: st, rest: rest.collect() });
        }
    }
    Ok(Rebuilt::Done(st))
}

/// Applies stored transition `t` to `st`, the state it follows: `Corrupt` when it does not
/// follow it or is refused (the log does not replay).
pub fn apply_stored(plan: &Plan, st: &mut RunState, t: &Transition) -> Result<(), Error> {
    if t.version != st.version + 1 {
        return Err(Error::Corrupt {
            run: st.run_id.clone(),
            why: format!("transition {} follows version {}", t.version, st.version),
        });
    }
    plan.apply(st, &t.event, t.at).map_err(|e| Error::Corrupt {
        run: st.run_id.clone(),
        why: format!("transition {} ({}) was refused: {}", t.version, t.event.key(), e.0),
    })?;
    Ok(())
}

/// The run store port. Implementations: [`MemoryStore`], `SqliteStore` (feature `sqlite`) here, DynamoDB in the
/// serverless runtime.
#[async_trait]
pub trait RunStore: Send + Sync {
    /// Stores a new run at version 0 (`Exists` if the id is taken).
    async fn create(&self, workflow: &str, source_name: &str, source: &str, initial: &RunState) -> Result<(), Error>;
    /// [`RunStore::create`], once per idempotency key: the run and the key are stored
    /// together, or, when the key is taken, nothing is and the run it started is returned.
    /// Stores that keep no keys refuse a key.
    async fn create_keyed(
        &self,
        key: Option<&StartKey>,
        workflow: &str,
        source_name: &str,
        source: &str,
        initial: &RunState,
    ) -> Result<Created, Error> {
        if key.is_some() {
            return Err(Error::Other("this run store does not keep idempotency keys".into()));
        }
        self.create(workflow, source_name, source, initial).await.map(|()| Created::New)
    }
    async fn load(&self, run_id: &str) -> Result<Option<StoredRun>, Error>;
    /// Appends `transitions` (versions `expected + 1 ..`) if the stored version is still
    /// `expected`; `Ok(false)` if another writer got there first. `head` is the state after
    /// the last of them (for listings; implementations may snapshot it).
    async fn append(&self, expected: u64, transitions: &[Transition], head: &RunState) -> Result<bool, Error>;
    /// The transitions after `version` (`None` if there is no such run). A worker that kept
    /// the state at `version` reads only these.
    async fn load_since(&self, run_id: &str, version: u64) -> Result<Option<Vec<Transition>>, Error> {
        if self.version(run_id).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(self.history(run_id).await?.into_iter().filter(|t| t.version > version).collect()))
    }
    /// Records `state` as a snapshot, so loading replays only later transitions.
    async fn snapshot(&self, state: &RunState) -> Result<(), Error>;
    /// Woken after each append this process makes, for stores that can say so: followers of
    /// a run's events ([`crate::stream`]) wait on it between reads instead of the whole poll
    /// interval. `None`: followers only poll.
    fn appended(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
    /// The stored version of a run (cheap; lets a driver notice another writer).
    async fn version(&self, run_id: &str) -> Result<Option<u64>, Error>;
    /// The whole transition log of a run, oldest first (audit; may be long).
    async fn history(&self, run_id: &str) -> Result<Vec<Transition>, Error>;
    /// The state the run was created with (version 0), from which [`RunStore::history`]
    /// replays to its current state (audits). `None`: no such run, or a store that keeps only
    /// its latest snapshot (memory).
    async fn initial_state(&self, _run_id: &str) -> Result<Option<RunState>, Error> {
        Ok(None)
    }
    /// Runs, newest first.
    async fn list(&self) -> Result<Vec<RunSummary>, Error>;
    /// Records that a unit waits for an approval or an event (`Command::Await`), so that
    /// [`RunStore::waiters`] finds it. Idempotent (one entry per attempt).
    async fn put_waiter(&self, w: &Waiter) -> Result<(), Error>;
    /// Waiters of `tenant` (`""`: runs without a tenant), only those for event `event` with
    /// key `key` when given, oldest first, at most `limit`. Entries may be stale (the unit
    /// was answered or timed out since): callers check the run and drop them.
    async fn waiters(&self, tenant: &str, event: Option<(&str, &str)>, limit: usize) -> Result<Vec<Waiter>, Error>;
    /// Forgets a waiter (answered, timed out, or found stale).
    async fn drop_waiter(&self, w: &Waiter) -> Result<(), Error>;
    /// Takes or renews the lease on executing `run_id` for `owner` until `now + ttl_ms`:
    /// `Ok(None)` when `owner` holds it now, `Ok(Some(other))` when another owner's lease has
    /// not lapsed (nothing changed). One executor per run: the embedded driver holds it while
    /// it drives. Stores whose runs have no single owner (serverless: every step is a
    /// compare-and-set) grant every request.
    async fn lease(&self, _run_id: &str, _owner: &str, _ttl_ms: u64, _now: Millis) -> Result<Option<Owner>, Error> {
        Ok(None)
    }
    /// Gives the lease up (nothing if `owner` does not hold it).
    async fn release(&self, _run_id: &str, _owner: &str) -> Result<(), Error> {
        Ok(())
    }
    /// The run's current lease, lapsed or not (`None`: no owner ever, or released).
    async fn owner(&self, _run_id: &str) -> Result<Option<Owner>, Error> {
        Ok(None)
    }
}

/// Who executes a run in the embedded runtime: its owner's lease ([`RunStore::lease`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// `PID@HOST#RANDOM`: the process holding the run.
    pub owner: String,
    /// When the lease lapses unless renewed (ms since the epoch).
    pub expires_at: Millis,
}

impl Owner {
    /// A name for this process's drivers: its pid, host and 48 random bits.
    pub fn this_process() -> String {
        let host = this_host();
        let mut b = [0u8; 6];
        getrandom::fill(&mut b).expect("the operating system's random source");
        let r: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!("{}@{host}#{r}", std::process::id())
    }

    /// The process id in the owner's name, if it has one.
    pub fn pid(&self) -> Option<u32> {
        self.owner.split('@').next().and_then(|p| p.parse().ok())
    }

    /// Whether the owner is a process of this host that no longer exists (killed, crashed):
    /// its lease need not be waited out. `false` when that cannot be known (another host, no
    /// `/proc`); a pid reused since only makes a resume wait for the lease to lapse.
    pub fn dead_here(&self) -> bool {
        let host = self.owner.split_once('@').and_then(|(_, rest)| rest.rsplit_once('#')).map(|(h, _)| h);
        match (host, self.pid()) {
            (Some(h), Some(pid)) if h == this_host() && Path::new("/proc/self").exists() => {
                !Path::new(&format!("/proc/{pid}")).exists()
            }
            _ => false,
        }
    }
}

/// This machine's name, as leases record it.
fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "localhost".into())
}

/// A unit waiting for an approval or an event: what [`RunStore::waiters`] lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Waiter {
    /// `""` for runs without a tenant.
    pub tenant: String,
    pub kind: llmo_core::engine::WaitKind,
    /// An event wait's name and key (`""` for approvals).
    pub event: String,
    pub key: String,
    pub run_id: String,
    pub task: usize,
    pub item: Option<u32>,
    pub attempt: u32,
    pub since: Millis,
}

impl Waiter {
    /// The waiter of a unit that waits for an approval or event, from the run's state.
    pub fn of(st: &RunState, id: llmo_core::engine::AttemptId) -> Option<Waiter> {
        let w = st.waits_at(id).filter(|w| w.kind != llmo_core::engine::WaitKind::Sleep)?;
        Some(Waiter {
            tenant: st.tenant.clone().unwrap_or_default(),
            kind: w.kind,
            event: w.event.clone().unwrap_or_default(),
            key: w.key.clone().unwrap_or_default(),
            run_id: st.run_id.clone(),
            task: id.task,
            item: id.item,
            attempt: id.attempt,
            since: w.since,
        })
    }

    pub fn attempt_id(&self) -> llmo_core::engine::AttemptId {
        llmo_core::engine::AttemptId { task: self.task, item: self.item, attempt: self.attempt }
    }

    fn matches(&self, tenant: &str, event: Option<(&str, &str)>) -> bool {
        self.tenant == tenant
            && event.is_none_or(|(name, key)| {
                self.kind == llmo_core::engine::WaitKind::Event && self.event == name && self.key == key
            })
    }

    fn same_unit(&self, o: &Waiter) -> bool {
        (self.run_id.as_str(), self.task, self.item, self.attempt) == (o.run_id.as_str(), o.task, o.item, o.attempt)
    }
}

struct MemRun {
    workflow: String,
    source_name: String,
    source: String,
    snapshot: RunState,
    log: Vec<Transition>,
    summary: RunSummary,
}

/// Runs in memory: for tests, simulations and one-shot runs.
#[derive(Default)]
pub struct MemoryStore {
    runs: Mutex<HashMap<String, MemRun>>,
    waiters: Mutex<Vec<Waiter>>,
    /// Idempotency key id -> (run id, request fingerprint).
    keys: Mutex<HashMap<String, (String, String)>>,
    leases: Mutex<HashMap<String, Owner>>,
}

impl MemoryStore {
    fn insert(&self, workflow: &str, source_name: &str, source: &str, initial: &RunState) -> Result<(), Error> {
        let mut runs = self.runs.lock().expect("store lock");
        if runs.contains_key(&initial.run_id) {
            return Err(Error::Exists(initial.run_id.clone()));
        }
        runs.insert(
            initial.run_id.clone(),
            MemRun {
                workflow: workflow.into(),
                source_name: source_name.into(),
                source: source.into(),
                snapshot: initial.clone(),
                log: Vec::new(),
                summary: RunSummary::of(workflow, initial),
            },
        );
        Ok(())
    }
}

#[async_trait]
impl RunStore for MemoryStore {
    async fn create_keyed(
        &self,
        key: Option<&StartKey>,
        workflow: &str,
        source_name: &str,
        source: &str,
        initial: &RunState,
    ) -> Result<Created, Error> {
        let Some(key) = key else { return self.insert(workflow, source_name, source, initial).map(|()| Created::New) };
        let mut keys = self.keys.lock().expect("store lock");
        if let Some((run_id, fingerprint)) = keys.get(&key.id) {
            return Ok(Created::Existing { run_id: run_id.clone(), fingerprint: fingerprint.clone() });
        }
        self.insert(workflow, source_name, source, initial)?;
        keys.insert(key.id.clone(), (initial.run_id.clone(), key.fingerprint.clone()));
        Ok(Created::New)
    }

    async fn create(&self, workflow: &str, source_name: &str, source: &str, initial: &RunState) -> Result<(), Error> {
        self.insert(workflow, source_name, source, initial)
    }

    async fn load(&self, run_id: &str) -> Result<Option<StoredRun>, Error> {
        let runs = self.runs.lock().expect("store lock");
        Ok(runs.get(run_id).map(|r| StoredRun {
            workflow: r.workflow.clone(),
            source_name: r.source_name.clone(),
            source: r.source.clone(),
            snapshot: r.snapshot.clone(),
            tail: r.log.iter().filter(|t| t.version > r.snapshot.version).cloned().collect(),
        }))
    }

    async fn append(&self, expected: u64, transitions: &[Transition], head: &RunState) -> Result<bool, Error> {
        let mut runs = self.runs.lock().expect("store lock");
        let Some(r) = runs.get_mut(&head.run_id) else { return Ok(false) };
        if r.summary.version != expected {
            return Ok(false);
        }
        r.log.extend_from_slice(transitions);
        let s = &mut r.summary;
        s.version = head.version;
        if s.status != head.status.as_str() {
            s.status = head.status.as_str().to_string();
        }
        s.started_at = head.started_at;
        s.cost_usd = head.cost_usd;
        s.tokens = head.tokens;
        Ok(true)
    }

    /// Keeps a copy of the state (only one the log has reached, and newer than the kept
    /// one), so that loading replays only what follows it.
    async fn snapshot(&self, state: &RunState) -> Result<(), Error> {
        let mut runs = self.runs.lock().expect("store lock");
        if let Some(r) = runs.get_mut(&state.run_id)
            && state.version > r.snapshot.version
            && state.version <= r.summary.version
        {
            r.snapshot = state.clone();
        }
        Ok(())
    }

    async fn version(&self, run_id: &str) -> Result<Option<u64>, Error> {
        Ok(self.runs.lock().expect("store lock").get(run_id).map(|r| r.summary.version))
    }

    async fn history(&self, run_id: &str) -> Result<Vec<Transition>, Error> {
        Ok(self.runs.lock().expect("store lock").get(run_id).map(|r| r.log.clone()).unwrap_or_default())
    }

    async fn load_since(&self, run_id: &str, version: u64) -> Result<Option<Vec<Transition>>, Error> {
        let runs = self.runs.lock().expect("store lock");
        // Versions start at 1 and the log is contiguous: version v is at index v - 1.
        Ok(runs.get(run_id).map(|r| r.log.get(version as usize..).map(<[_]>::to_vec).unwrap_or_default()))
    }

    async fn list(&self) -> Result<Vec<RunSummary>, Error> {
        let mut v: Vec<RunSummary> =
            self.runs.lock().expect("store lock").values().map(|r| r.summary.clone()).collect();
        v.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(b.run_id.cmp(&a.run_id)));
        Ok(v)
    }

    async fn put_waiter(&self, w: &Waiter) -> Result<(), Error> {
        let mut ws = self.waiters.lock().expect("store lock");
        if !ws.iter().any(|x| x.same_unit(w)) {
            ws.push(w.clone());
        }
        Ok(())
    }

    async fn waiters(&self, tenant: &str, event: Option<(&str, &str)>, limit: usize) -> Result<Vec<Waiter>, Error> {
        let ws = self.waiters.lock().expect("store lock");
        let mut v: Vec<Waiter> = ws.iter().filter(|w| w.matches(tenant, event)).cloned().collect();
        v.sort_by_key(|w| w.since);
        v.truncate(limit);
        Ok(v)
    }

    async fn drop_waiter(&self, w: &Waiter) -> Result<(), Error> {
        self.waiters.lock().expect("store lock").retain(|x| !x.same_unit(w));
        Ok(())
    }

    async fn lease(&self, run_id: &str, owner: &str, ttl_ms: u64, now: Millis) -> Result<Option<Owner>, Error> {
        let mut leases = self.leases.lock().expect("store lock");
        match leases.get(run_id) {
            Some(o) if o.owner != owner && o.expires_at > now => Ok(Some(o.clone())),
            _ => {
                leases.insert(run_id.to_string(), Owner { owner: owner.to_string(), expires_at: now + ttl_ms });
                Ok(None)
            }
        }
    }

    async fn release(&self, run_id: &str, owner: &str) -> Result<(), Error> {
        let mut leases = self.leases.lock().expect("store lock");
        if leases.get(run_id).is_some_and(|o| o.owner == owner) {
            leases.remove(run_id);
        }
        Ok(())
    }

    async fn owner(&self, run_id: &str) -> Result<Option<Owner>, Error> {
        Ok(self.leases.lock().expect("store lock").get(run_id).cloned())
    }
}

#[async_trait]
impl RunIndex for MemoryStore {
    async fn list_page(&self, f: &ListFilter) -> Result<Page, Error> {
        let runs = self.runs.lock().expect("store lock");
        let all = runs
            .values()
            .map(|r| (r.snapshot.tenant.clone().unwrap_or_else(|| "-".into()), r.summary.clone()))
            .collect();
        drop(runs);
        page_of(all, f)
    }

    async fn tenant_of(&self, run_id: &str) -> Result<Option<String>, Error> {
        let runs = self.runs.lock().expect("store lock");
        Ok(runs.get(run_id).map(|r| r.snapshot.tenant.clone().unwrap_or_else(|| "-".into())))
    }

    async fn runs_since(&self, tenant: &str, since_ms: u64, limit: usize) -> Result<(Vec<RunSummary>, bool), Error> {
        let f = ListFilter { tenant: tenant.into(), limit: Some(i32::MAX), ..Default::default() };
        let page = self.list_page(&f).await?;
        let mut runs: Vec<RunSummary> = page.runs.into_iter().filter(|r| created_ms(&r.run_id) >= since_ms).collect();
        let more = runs.len() > limit;
        runs.truncate(limit);
        Ok((runs, more))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmo_core::engine::RunStatus;
    use llmo_core::source::SourceFile;
    use llmo_core::validate::Validator;
    use serde_json::Map;

    const WF: &str = "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: w }\nspec:\n  tasks:\n    - { id: a, type: transform, with: { output: 1 } }\n    - { id: b, type: transform, depends_on: [a], with: { output: 2 } }\n";

    fn plan() -> Plan {
        Plan::new(Validator::default().validate(&SourceFile::new("w.yaml", WF)).checked.unwrap())
    }

    /// Applies `events` to `st`, returning the transitions to store.
    fn advance(plan: &Plan, st: &mut RunState, events: &[Event]) -> Vec<Transition> {
        events
            .iter()
            .map(|e| {
                plan.apply(st, e, 7).unwrap();
                Transition::new(st.version, 7, e.clone())
            })
            .collect()
    }

    #[tokio::test]
    async fn memory_store_appends_with_compare_and_set() {
        contract::run_store(&MemoryStore::default(), "m").await;
        let index = MemoryStore::default();
        contract::run_index(&index, &index, "m").await;
        contract::workflows(&crate::workflows::MemoryWorkflows::default(), "m").await;
    }

    /// Processes that open one new state file at the same moment (two `llmo run --state F`)
    /// wait for each other instead of failing with "database is locked".
    #[cfg(feature = "sqlite")]
    #[test]
    fn a_new_sqlite_file_opened_at_once_by_many_opens_for_all() {
        for round in 0..10 {
            let dir = std::env::temp_dir().join(format!("llmo-open-{}-{round}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("runs.db");
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
            let opened: Vec<_> = (0..8)
                .map(|_| {
                    let (path, barrier) = (path.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        SqliteStore::open(&path, Durability::Process).map(|_| ()).map_err(|e| e.to_string())
                    })
                })
                .collect();
            for o in opened {
                assert_eq!(o.join().unwrap(), Ok(()), "round {round}");
            }
            std::fs::remove_dir_all(&dir).ok();
        }
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn sqlite_store_appends_with_compare_and_set_and_persists() {
        let dir = std::env::temp_dir().join(format!("llmo-store-{}", std::process::id()));
        let path = dir.join("runs.db");
        let _ = std::fs::remove_file(&path);
        let store = SqliteStore::open(&path, Durability::Process).unwrap();
        contract::run_store(&store, "").await;
        contract::workflows(&store, "s").await;
        contract::run_index(&store, &store, "s").await;
        assert_eq!(store.load("a").await.unwrap().unwrap().tail.len(), 2, "SQLite keeps the snapshot");
        // Another connection (another process) sees what the first wrote.
        let again = SqliteStore::open(&path, Durability::Power).unwrap();
        let plan = plan();
        let st = rebuild(&plan, again.load("a").await.unwrap().unwrap()).unwrap();
        assert_eq!(st.status, RunStatus::Succeeded);
        // Two processes extending the same version: exactly one wins.
        let first = SqliteStore::open(&path, Durability::Process).unwrap();
        let mut c = plan.new_run("c", Map::new());
        first.create("w", "w.yaml", WF, &c).await.unwrap();
        let batch = advance(&plan, &mut c, &[Event::Start]);
        let (a, b) = tokio::join!(first.append(0, &batch, &c), again.append(0, &batch, &c));
        assert!(a.unwrap() ^ b.unwrap(), "one append from version 0 wins");
        assert_eq!(again.version("c").await.unwrap(), Some(1));
        std::fs::remove_dir_all(&dir).ok();
    }
}
