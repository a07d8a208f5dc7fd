//! Runs in a SQLite file (the `sqlite` feature: the CLI and embedded runs; the Lambda
//! functions are built without it).

use std::path::Path;
use std::sync::Mutex;

use async_trait::async_trait;
use llmo_core::engine::{Event, Millis, RunState};
use rusqlite::{Connection, OptionalExtension, params};

use super::{Error, Owner, RunStore, RunSummary, StoredRun, Transition, Waiter};

/// How far a committed transition survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Survives the process being killed at any point (SQLite WAL, `synchronous=NORMAL`); an
    /// operating-system crash or power loss may lose the last transitions.
    #[default]
    Process,
    /// Survives power loss too: every commit waits for `fsync` (`synchronous=FULL`).
    Power,
}

/// Runs in a SQLite file (WAL). Tables: `runs` (one row per run: listing columns and the
/// current version, the compare-and-set target), `sources` (workflow text), `transitions`
/// (the log, keyed by run and version), `snapshots` (latest state per run).
pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// Woken by every append of this process (followers of a run's events wait on it; other
    /// processes' appends are seen by reading).
    appended: std::sync::Arc<tokio::sync::Notify>,
}

impl SqliteStore {
    pub fn open(path: &Path, durability: Durability) -> Result<Self, Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut conn = Connection::open(path)?;
        // First: two processes opening a new file at once (two `llmo run --state F`) wait for
        // each other's switch to WAL and schema set-up instead of failing with "locked".
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Switching to WAL needs the file to itself, and SQLite answers "busy" at once (no busy
        // wait) when two connections would deadlock on it: try again for up to 5 s.
        let started = std::time::Instant::now();
        loop {
            match conn.pragma_update(None, "journal_mode", "WAL") {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy
                        && started.elapsed() < std::time::Duration::from_secs(5) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                r => break r?,
            }
        }
        let sync = match durability {
            Durability::Process => "NORMAL",
            Durability::Power => "FULL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        // A server's file grows to hundreds of MB (`llmo serve` with 10,000 runs waiting:
        // 130 MB): keep up to 64 MiB of its pages in SQLite's cache rather than reading a page
        // with a system call at every miss (SQLite's default cache is 2 MB).
        conn.pragma_update(None, "cache_size", -65_536)?;
        // The schema and its migration in one write transaction: a second process opening the
        // file meanwhile sees all of it or none (two migrations adding one column would clash).
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS runs (
                run_id TEXT PRIMARY KEY,
                workflow TEXT NOT NULL,
                status TEXT NOT NULL,
                version INTEGER NOT NULL,
                started_at INTEGER,
                cost_usd REAL NOT NULL DEFAULT 0
            );
            CREATE INDEX IF NOT EXISTS runs_by_start ON runs (started_at DESC);
            CREATE TABLE IF NOT EXISTS sources (
                run_id TEXT PRIMARY KEY,
                source_name TEXT NOT NULL,
                source TEXT NOT NULL
            );
            CREATE TABLE IF NOT EXISTS transitions (
                run_id TEXT NOT NULL,
                version INTEGER NOT NULL,
                at INTEGER NOT NULL,
                event TEXT NOT NULL,
                PRIMARY KEY (run_id, version)
            ) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS snapshots (
                run_id TEXT PRIMARY KEY,
                version INTEGER NOT NULL,
                state TEXT NOT NULL
            );
            CREATE TABLE IF NOT EXISTS waiters (
                run_id TEXT NOT NULL,
                task INTEGER NOT NULL,
                item INTEGER NOT NULL,
                attempt INTEGER NOT NULL,
                tenant TEXT NOT NULL,
                waiter TEXT NOT NULL,
                event TEXT NOT NULL,
                key TEXT NOT NULL,
                since INTEGER NOT NULL,
                PRIMARY KEY (run_id, task, item, attempt)
            );
            CREATE INDEX IF NOT EXISTS waiters_by_event ON waiters (tenant, event, key, since);
            CREATE TABLE IF NOT EXISTS leases (
                run_id TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                expires_at INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS audit (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                at INTEGER NOT NULL,
                tenant TEXT NOT NULL,
                actor TEXT NOT NULL,
                role TEXT NOT NULL,
                action TEXT NOT NULL,
                target TEXT,
                result TEXT NOT NULL,
                run_id TEXT
            );
            CREATE INDEX IF NOT EXISTS audit_by_tenant ON audit (tenant, at);
            CREATE INDEX IF NOT EXISTS audit_by_run ON audit (run_id, at) WHERE run_id IS NOT NULL;
            CREATE TABLE IF NOT EXISTS start_keys (
                id TEXT PRIMARY KEY,
                run_id TEXT NOT NULL,
                fingerprint TEXT NOT NULL
            );
            CREATE TABLE IF NOT EXISTS queue (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                run_id TEXT NOT NULL,
                body TEXT NOT NULL,
                visible_at INTEGER NOT NULL,
                receives INTEGER NOT NULL DEFAULT 0,
                receipt TEXT,
                trace TEXT
            );
            CREATE INDEX IF NOT EXISTS queue_by_time ON queue (visible_at);
            CREATE TABLE IF NOT EXISTS workflows (
                tenant TEXT NOT NULL,
                name TEXT NOT NULL,
                source TEXT NOT NULL,
                registered_at INTEGER NOT NULL,
                PRIMARY KEY (tenant, name)
            );",
        )?;
        // Files from before `tokens` was listed get the column (their runs count 0 tokens).
        let has_tokens: bool =
            tx.prepare("SELECT 1 FROM pragma_table_info('runs') WHERE name = 'tokens'")?.exists([])?;
        if !has_tokens {
            tx.execute_batch("ALTER TABLE runs ADD COLUMN tokens INTEGER NOT NULL DEFAULT 0")?;
        }
        // Files from before the run index get the tenant (`-`: none) and creation time (from the
        // run id, else 0) of their runs.
        let has_tenant: bool =
            tx.prepare("SELECT 1 FROM pragma_table_info('runs') WHERE name = 'tenant'")?.exists([])?;
        if !has_tenant {
            tx.execute_batch(
                "ALTER TABLE runs ADD COLUMN tenant TEXT NOT NULL DEFAULT '-';
                 ALTER TABLE runs ADD COLUMN created INTEGER NOT NULL DEFAULT 0;
                 CREATE INDEX IF NOT EXISTS runs_by_tenant ON runs (tenant, created DESC, run_id DESC);",
            )?;
            let ids: Vec<String> =
                tx.prepare("SELECT run_id FROM runs")?.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
            for id in ids {
                tx.execute(
                    "UPDATE runs SET created = ?1 WHERE run_id = ?2",
                    params![super::created_ms(&id) as i64, id],
                )?;
            }
        }
        // Files from before the sweeper read them get the runs' deadlines (as their states
        // are next summarised; live runs without one are only restarted when pending).
        // ...and the state each run was created with (older runs have none).
        let has_initial: bool =
            tx.prepare("SELECT 1 FROM pragma_table_info('sources') WHERE name = 'initial'")?.exists([])?;
        if !has_initial {
            tx.execute_batch("ALTER TABLE sources ADD COLUMN initial TEXT")?;
        }
        let has_deadline: bool =
            tx.prepare("SELECT 1 FROM pragma_table_info('runs') WHERE name = 'deadline'")?.exists([])?;
        if !has_deadline {
            tx.execute_batch("ALTER TABLE runs ADD COLUMN deadline INTEGER")?;
        }
        tx.commit()?;
        Ok(SqliteStore { conn: Mutex::new(conn), appended: Default::default() })
    }

    /// Every tenant's registered workflows: `(tenant, name, registered_at)` (what `llmo serve`
    /// fires schedules from).
    pub fn all_registered(&self) -> Result<Vec<(String, String, Millis)>, Error> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare_cached("SELECT tenant, name, registered_at FROM workflows ORDER BY tenant, name")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as Millis)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().expect("store lock")
    }
}

/// The listing columns of a run (its `version` there is the last one summarised; the log's
/// last version is the run's).
fn update_summary(tx: &rusqlite::Transaction<'_>, head: &RunState) -> Result<(), Error> {
    tx.prepare_cached(
        "UPDATE runs SET version = ?1, status = ?2, started_at = ?3, cost_usd = ?4, tokens = ?6, deadline = ?7 WHERE run_id = ?5 AND version <= ?1",
    )?
    .execute(params![
        head.version as i64,
        head.status.as_str(),
        head.started_at.map(|t| t as i64),
        head.cost_usd,
        head.run_id,
        head.tokens as i64,
        head.deadline.map(|d| d as i64)
    ])?;
    Ok(())
}

fn insert_audit(conn: &Connection, r: &crate::audit::Record) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO audit (at, tenant, actor, role, action, target, result, run_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![r.at as i64, r.tenant, r.actor, r.role, r.action, r.target, r.result, r.run_id])?;
    Ok(())
}

fn summary_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunSummary> {
    Ok(RunSummary {
        run_id: r.get(0)?,
        workflow: r.get(1)?,
        status: r.get(2)?,
        version: r.get::<_, i64>(3)? as u64,
        started_at: r.get::<_, Option<i64>>(4)?.map(|t| t as u64),
        cost_usd: r.get(5)?,
        tokens: r.get::<_, i64>(6)? as u64,
    })
}

fn insert_run(
    tx: &rusqlite::Transaction<'_>,
    workflow: &str,
    source_name: &str,
    source: &str,
    initial: &RunState,
) -> Result<(), Error> {
    let n = tx.execute(
        "INSERT OR IGNORE INTO runs (run_id, workflow, status, version, started_at, cost_usd, tenant, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            initial.run_id,
            workflow,
            initial.status.as_str(),
            initial.version as i64,
            initial.started_at.map(|t| t as i64),
            initial.cost_usd,
            initial.tenant.as_deref().unwrap_or("-"),
            super::created_ms(&initial.run_id) as i64
        ],
    )?;
    if n == 0 {
        return Err(Error::Exists(initial.run_id.clone()));
    }
    let state = serde_json::to_string(initial)?;
    tx.execute(
        "INSERT OR REPLACE INTO sources (run_id, source_name, source, initial) VALUES (?1, ?2, ?3, ?4)",
        params![initial.run_id, source_name, source, state],
    )?;
    tx.execute(
        "INSERT OR REPLACE INTO snapshots (run_id, version, state) VALUES (?1, ?2, ?3)",
        params![initial.run_id, initial.version as i64, state],
    )?;
    Ok(())
}

// SQLite calls take microseconds (no network), so they run on the caller's thread.
#[async_trait]
impl RunStore for SqliteStore {
    async fn create(&self, workflow: &str, source_name: &str, source: &str, initial: &RunState) -> Result<(), Error> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        insert_run(&tx, workflow, source_name, source, initial)?;
        tx.commit()?;
        Ok(())
    }

    /// The key and the run in one transaction: a key already taken stores nothing.
    async fn create_keyed(
        &self,
        key: Option<&super::StartKey>,
        workflow: &str,
        source_name: &str,
        source: &str,
        initial: &RunState,
    ) -> Result<super::Created, Error> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if let Some(k) = key {
            let taken: Option<(String, String)> = tx
                .query_row("SELECT run_id, fingerprint FROM start_keys WHERE id = ?1", params![k.id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            if let Some((run_id, fingerprint)) = taken {
                return Ok(super::Created::Existing { run_id, fingerprint });
            }
            tx.execute(
                "INSERT INTO start_keys (id, run_id, fingerprint) VALUES (?1, ?2, ?3)",
                params![k.id, initial.run_id, k.fingerprint],
            )?;
        }
        insert_run(&tx, workflow, source_name, source, initial)?;
        tx.commit()?;
        Ok(super::Created::New)
    }

    async fn load(&self, run_id: &str) -> Result<Option<StoredRun>, Error> {
        let mut conn = self.lock();
        // One read transaction: the snapshot and the tail are seen at the same instant.
        let tx = conn.transaction()?;
        let head = tx
            .query_row(
                "SELECT r.workflow, s.source_name, s.source, p.state FROM runs r
                 JOIN sources s ON s.run_id = r.run_id JOIN snapshots p ON p.run_id = r.run_id
                 WHERE r.run_id = ?1",
                params![run_id],
                |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
                },
            )
            .optional()?;
        let Some((workflow, source_name, source, state)) = head else { return Ok(None) };
        let snapshot: RunState = serde_json::from_str(&state)?;
        let mut stmt = tx.prepare_cached(
            "SELECT version, at, event FROM transitions WHERE run_id = ?1 AND version > ?2 ORDER BY version",
        )?;
        let rows = stmt.query_map(params![run_id, snapshot.version as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?))
        })?;
        let mut tail = Vec::new();
        for row in rows {
            let (version, at, event) = row?;
            tail.push(Transition::new(version as u64, at as Millis, serde_json::from_str(&event)?));
        }
        drop(stmt);
        tx.commit()?;
        Ok(Some(StoredRun { workflow, source_name, source, snapshot, tail }))
    }

    /// The compare-and-set is the log's primary key: version `expected + 1` can be inserted
    /// once, so of two writers extending the same version one fails (and a writer that read
    /// an older version fails too, as that slot is taken). One page write per transition;
    /// the `runs` row (listings) is updated when the status changes and at snapshots.
    async fn append(&self, expected: u64, transitions: &[Transition], head: &RunState) -> Result<bool, Error> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO transitions (run_id, version, at, event) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            )?;
            for (k, t) in transitions.iter().enumerate() {
                if t.version != expected + 1 + k as u64 {
                    return Err(Error::Other(format!("transition {} does not follow version {expected}", t.version)));
                }
                let n =
                    ins.execute(params![head.run_id, t.version as i64, t.at as i64, serde_json::to_string(&t.event)?])?;
                if n == 0 {
                    return Ok(false); // dropping `tx` rolls back
                }
            }
        }
        let status_changed = head.status.is_terminal() || transitions.iter().any(|t| matches!(t.event, Event::Start));
        if status_changed {
            update_summary(&tx, head)?;
            // The status change's audit record, in the same transaction: one per change (an
            // ended run's summary also moves when answers of attempts cut off are counted
            // after it ended: that is no change to audit).
            let ended_here = !head.status.is_terminal()
                || transitions.iter().any(|t| head.ended_by.as_deref() == Some(&*t.event.key()));
            if ended_here {
                let tenant = head.tenant.as_deref().unwrap_or("-");
                let r = crate::audit::Record::status_change(
                    crate::ports::now_ms(),
                    tenant,
                    &head.run_id,
                    head.status.as_str(),
                );
                insert_audit(&tx, &r)?;
            }
        }
        tx.commit()?;
        self.appended.notify_waiters();
        Ok(true)
    }

    fn appended(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        Some(self.appended.clone())
    }

    async fn snapshot(&self, state: &RunState) -> Result<(), Error> {
        let json = serde_json::to_string(state)?;
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        // Only a state the log has reached, and newer than the stored snapshot.
        let logged: Option<i64> =
            tx.query_row("SELECT max(version) FROM transitions WHERE run_id = ?1", params![state.run_id], |r| {
                r.get(0)
            })?;
        if logged.unwrap_or(0) as u64 >= state.version {
            tx.execute(
                "UPDATE snapshots SET version = ?1, state = ?2 WHERE run_id = ?3 AND version < ?1",
                params![state.version as i64, json, state.run_id],
            )?;
            update_summary(&tx, state)?;
        }
        tx.commit()?;
        Ok(())
    }

    async fn version(&self, run_id: &str) -> Result<Option<u64>, Error> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT coalesce((SELECT max(version) FROM transitions WHERE run_id = ?1), version) FROM runs WHERE run_id = ?1",
        )?;
        Ok(stmt.query_row(params![run_id], |r| r.get::<_, i64>(0)).optional()?.map(|v| v as u64))
    }

    async fn load_since(&self, run_id: &str, version: u64) -> Result<Option<Vec<Transition>>, Error> {
        let conn = self.lock();
        let exists: Option<i64> =
            conn.query_row("SELECT version FROM runs WHERE run_id = ?1", params![run_id], |r| r.get(0)).optional()?;
        if exists.is_none() {
            return Ok(None);
        }
        let mut stmt = conn.prepare_cached(
            "SELECT version, at, event FROM transitions WHERE run_id = ?1 AND version > ?2 ORDER BY version",
        )?;
        let rows = stmt.query_map(params![run_id, version as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (version, at, event) = row?;
            out.push(Transition::new(version as u64, at as Millis, serde_json::from_str(&event)?));
        }
        Ok(Some(out))
    }

    async fn initial_state(&self, run_id: &str) -> Result<Option<RunState>, Error> {
        let json: Option<Option<String>> = self
            .lock()
            .query_row("SELECT initial FROM sources WHERE run_id = ?1", params![run_id], |r| r.get(0))
            .optional()?;
        Ok(match json.flatten() {
            Some(j) => Some(serde_json::from_str(&j)?),
            None => None,
        })
    }

    async fn history(&self, run_id: &str) -> Result<Vec<Transition>, Error> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT version, at, event FROM transitions WHERE run_id = ?1 ORDER BY version")?;
        let rows = stmt
            .query_map(params![run_id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (version, at, event) = row?;
            out.push(Transition::new(version as u64, at as Millis, serde_json::from_str(&event)?));
        }
        Ok(out)
    }

    async fn list(&self) -> Result<Vec<RunSummary>, Error> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT run_id, workflow, status, version, started_at, cost_usd, tokens FROM runs ORDER BY started_at DESC, run_id DESC",
        )?;
        let rows = stmt.query_map([], summary_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    async fn put_waiter(&self, w: &Waiter) -> Result<(), Error> {
        self.lock().execute(
            "INSERT OR IGNORE INTO waiters (run_id, task, item, attempt, tenant, waiter, event, key, since) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                w.run_id,
                w.task as i64,
                w.item.map_or(-1, i64::from),
                w.attempt as i64,
                w.tenant,
                w.kind.as_str(),
                w.event,
                w.key,
                w.since as i64
            ],
        )?;
        Ok(())
    }

    async fn waiters(&self, tenant: &str, event: Option<(&str, &str)>, limit: usize) -> Result<Vec<Waiter>, Error> {
        let conn = self.lock();
        let (name, key) = event.unwrap_or(("", ""));
        let mut stmt = conn.prepare_cached(
            "SELECT run_id, task, item, attempt, tenant, waiter, event, key, since FROM waiters
             WHERE tenant = ?1 AND (?2 = 0 OR (waiter = 'event' AND event = ?3 AND key = ?4))
             ORDER BY since, run_id LIMIT ?5",
        )?;
        let rows = stmt.query_map(
            params![tenant, event.is_some() as i64, name, key, limit.min(i64::MAX as usize) as i64],
            |r| {
                let kind: String = r.get(5)?;
                Ok(Waiter {
                    run_id: r.get(0)?,
                    task: r.get::<_, i64>(1)? as usize,
                    item: u32::try_from(r.get::<_, i64>(2)?).ok(),
                    attempt: r.get::<_, i64>(3)? as u32,
                    tenant: r.get(4)?,
                    kind: if kind == "event" {
                        llmo_core::engine::WaitKind::Event
                    } else {
                        llmo_core::engine::WaitKind::Approval
                    },
                    event: r.get(6)?,
                    key: r.get(7)?,
                    since: r.get::<_, i64>(8)? as Millis,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    async fn drop_waiter(&self, w: &Waiter) -> Result<(), Error> {
        self.lock().execute(
            "DELETE FROM waiters WHERE run_id = ?1 AND task = ?2 AND item = ?3 AND attempt = ?4",
            params![w.run_id, w.task as i64, w.item.map_or(-1, i64::from), w.attempt as i64],
        )?;
        Ok(())
    }

    /// One statement: the lease is written only if it is free, lapsed or already `owner`'s,
    /// so two processes taking it at once cannot both hold it (SQLite serialises writers).
    async fn lease(&self, run_id: &str, owner: &str, ttl_ms: u64, now: Millis) -> Result<Option<Owner>, Error> {
        let conn = self.lock();
        let n = conn.execute(
            "INSERT INTO leases (run_id, owner, expires_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (run_id) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
             WHERE leases.owner = excluded.owner OR leases.expires_at <= ?4",
            params![run_id, owner, (now + ttl_ms) as i64, now as i64],
        )?;
        if n == 1 {
            return Ok(None);
        }
        let held = conn
            .query_row("SELECT owner, expires_at FROM leases WHERE run_id = ?1", params![run_id], |r| {
                Ok(Owner { owner: r.get(0)?, expires_at: r.get::<_, i64>(1)? as Millis })
            })
            .optional()?;
        Ok(held)
    }

    async fn release(&self, run_id: &str, owner: &str) -> Result<(), Error> {
        self.lock().execute("DELETE FROM leases WHERE run_id = ?1 AND owner = ?2", params![run_id, owner])?;
        Ok(())
    }

    async fn owner(&self, run_id: &str) -> Result<Option<Owner>, Error> {
        let owner = self
            .lock()
            .query_row("SELECT owner, expires_at FROM leases WHERE run_id = ?1", params![run_id], |r| {
                Ok(Owner { owner: r.get(0)?, expires_at: r.get::<_, i64>(1)? as Millis })
            })
            .optional()?;
        Ok(owner)
    }
}

#[async_trait]
impl crate::workflows::Workflows for SqliteStore {
    async fn put(&self, tenant: &str, name: &str, source: &str, now: Millis) -> Result<(), Error> {
        self.lock().execute(
            "INSERT INTO workflows (tenant, name, source, registered_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (tenant, name) DO UPDATE SET source = ?3, registered_at = ?4",
            params![tenant, name, source, now as i64],
        )?;
        Ok(())
    }

    async fn get(&self, tenant: &str, name: &str) -> Result<Option<String>, Error> {
        Ok(self
            .lock()
            .query_row("SELECT source FROM workflows WHERE tenant = ?1 AND name = ?2", params![tenant, name], |r| {
                r.get(0)
            })
            .optional()?)
    }

    async fn list(&self, tenant: &str) -> Result<Vec<crate::workflows::Registered>, Error> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT name, registered_at FROM workflows WHERE tenant = ?1 ORDER BY name")?;
        let rows = stmt.query_map(params![tenant], |r| {
            Ok(crate::workflows::Registered { name: r.get(0)?, registered_at: r.get::<_, i64>(1)? as Millis })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[async_trait]
impl super::RunIndex for SqliteStore {
    async fn list_page(&self, f: &super::ListFilter) -> Result<super::Page, Error> {
        // One page in SQL (the `runs_by_tenant` index), newest first; the cursor is the last
        // run given, sealed as memory seals it.
        let (after_ms, after_id) = match super::index::open_bound(f)? {
            None => (i64::MAX, String::new()),
            Some((ms, id)) => (ms as i64, id),
        };
        let limit = f.limit.unwrap_or(50).max(1) as usize;
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT run_id, workflow, status, version, started_at, cost_usd, tokens FROM runs
             WHERE tenant = ?1 AND (?2 IS NULL OR workflow = ?2) AND (?3 IS NULL OR status = ?3)
               AND (created < ?4 OR (created = ?4 AND (?5 = '' OR run_id < ?5)))
             ORDER BY created DESC, run_id DESC LIMIT ?6",
        )?;
        let mut runs: Vec<RunSummary> = stmt
            .query_map(params![f.tenant, f.workflow, f.status, after_ms, after_id, limit as i64 + 1], summary_row)?
            .collect::<Result<_, _>>()?;
        let next = (runs.len() > limit).then(|| {
            runs.truncate(limit);
            let last = runs.last().expect("a full page");
            super::index::seal_bound(f, super::created_ms(&last.run_id), &last.run_id)
        });
        Ok(super::Page { runs, next })
    }

    async fn tenant_of(&self, run_id: &str) -> Result<Option<String>, Error> {
        Ok(self
            .lock()
            .query_row("SELECT tenant FROM runs WHERE run_id = ?1", params![run_id], |r| r.get(0))
            .optional()?)
    }

    async fn runs_since(&self, tenant: &str, since_ms: u64, limit: usize) -> Result<(Vec<RunSummary>, bool), Error> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT run_id, workflow, status, version, started_at, cost_usd, tokens FROM runs
             WHERE tenant = ?1 AND created >= ?2 ORDER BY created DESC, run_id DESC LIMIT ?3",
        )?;
        let mut runs: Vec<RunSummary> = stmt
            .query_map(params![tenant, since_ms as i64, limit as i64 + 1], summary_row)?
            .collect::<Result<_, _>>()?;
        let more = runs.len() > limit;
        runs.truncate(limit);
        Ok((runs, more))
    }
}

#[async_trait]
impl super::LiveRuns for SqliteStore {
    async fn live_runs(&self, before_ms: u64, due_ms: u64, limit: usize) -> Result<(Vec<super::LiveRun>, u64), Error> {
        let conn = self.lock();
        let looked: i64 = conn.query_row(
            "SELECT count(*) FROM runs WHERE status IN ('pending', 'running') AND created < ?1",
            params![before_ms as i64],
            |r| r.get(0),
        )?;
        let mut stmt = conn.prepare_cached(
            "SELECT run_id, status, deadline FROM runs
             WHERE status IN ('pending', 'running') AND created < ?1
               AND (status = 'pending' OR deadline <= ?2)
             ORDER BY created, run_id LIMIT ?3",
        )?;
        let runs = stmt
            .query_map(params![before_ms as i64, due_ms as i64, limit as i64], |r| {
                Ok(super::LiveRun {
                    run_id: r.get(0)?,
                    status: r.get(1)?,
                    deadline: r.get::<_, Option<i64>>(2)?.map(|d| d as u64),
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok((runs, looked as u64))
    }
}

#[async_trait]
impl crate::audit::AuditLog for SqliteStore {
    async fn write(&self, r: &crate::audit::Record) -> Result<(), crate::audit::AuditError> {
        insert_audit(&self.lock(), r).map_err(|e| crate::audit::AuditError(e.to_string()))
    }

    /// Oldest first; within one millisecond, requests before the status changes they caused
    /// (a request's record carries its arrival time but is written after it is answered).
    async fn read(&self, q: &crate::audit::Query) -> Result<Vec<crate::audit::Record>, crate::audit::AuditError> {
        let conn = self.lock();
        let read = || -> rusqlite::Result<Vec<crate::audit::Record>> {
            let mut stmt = conn.prepare_cached(
                "SELECT at, tenant, actor, role, action, target, result, run_id FROM audit
                 WHERE tenant = ?1 AND at BETWEEN ?2 AND ?3 AND (?4 IS NULL OR run_id = ?4)
                 ORDER BY at, role = 'system', seq LIMIT ?5",
            )?;
            let rows = stmt.query_map(
                params![q.tenant, q.since as i64, q.until as i64, q.run_id, q.limit.clamp(1, 1000) as i64],
                |r| {
                    Ok(crate::audit::Record {
                        at: r.get::<_, i64>(0)? as u64,
                        tenant: r.get(1)?,
                        actor: r.get(2)?,
                        role: r.get(3)?,
                        action: r.get(4)?,
                        target: r.get(5)?,
                        result: r.get(6)?,
                        run_id: r.get(7)?,
                    })
                },
            )?;
            rows.collect()
        };
        read().map_err(|e| crate::audit::AuditError(e.to_string()))
    }
}
