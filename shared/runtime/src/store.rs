//! Run stores. Each transition is written with compare-and-set on the run's version, so two
//! processes driving one run cannot both apply a transition.
//!
//! The SQLite store keeps one row per run: the workflow source it was started from (to
//! rebuild its plan on `resume`) and the run state as JSON. In WAL mode with
//! `synchronous=NORMAL`, a committed transition survives the process being killed; a power
//! loss may lose the last transitions, which are then re-applied from the queue.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use llmo_core::engine::RunState;
use rusqlite::{Connection, OptionalExtension, params};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("run store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("run store: stored state is not readable: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("run store: run `{0}` already exists")]
    Exists(String),
}

/// A run as stored: its state and the workflow it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub state: RunState,
    pub workflow: String,
    /// Where the workflow was read from, and its text.
    pub source_name: String,
    pub source: String,
}

/// One line of a run listing.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub run_id: String,
    pub workflow: String,
    pub status: String,
    pub started_at: Option<u64>,
    pub cost_usd: f64,
}

pub trait Store {
    fn create(&self, run: &RunRecord) -> Result<(), Error>;
    fn load(&self, run_id: &str) -> Result<Option<RunRecord>, Error>;
    /// Writes `state` if the stored version is still `expected`; `Ok(false)` if it is not.
    fn save(&self, state: &RunState, expected: u64) -> Result<bool, Error>;
    /// Runs, newest first.
    fn list(&self) -> Result<Vec<RunSummary>, Error>;
}

fn summary(r: &RunRecord) -> RunSummary {
    RunSummary {
        run_id: r.state.run_id.clone(),
        workflow: r.workflow.clone(),
        status: r.state.status.as_str().to_string(),
        started_at: r.state.started_at,
        cost_usd: r.state.cost_usd,
    }
}

/// Runs in memory, for tests and one-shot runs.
#[derive(Default)]
pub struct MemoryStore {
    runs: Mutex<HashMap<String, RunRecord>>,
}

impl Store for MemoryStore {
    fn create(&self, run: &RunRecord) -> Result<(), Error> {
        let mut runs = self.runs.lock().expect("store lock");
        if runs.contains_key(&run.state.run_id) {
            return Err(Error::Exists(run.state.run_id.clone()));
        }
        runs.insert(run.state.run_id.clone(), run.clone());
        Ok(())
    }

    fn load(&self, run_id: &str) -> Result<Option<RunRecord>, Error> {
        Ok(self.runs.lock().expect("store lock").get(run_id).cloned())
    }

    fn save(&self, state: &RunState, expected: u64) -> Result<bool, Error> {
        let mut runs = self.runs.lock().expect("store lock");
        match runs.get_mut(&state.run_id) {
            Some(r) if r.state.version == expected => {
                r.state = state.clone();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn list(&self) -> Result<Vec<RunSummary>, Error> {
        let mut v: Vec<RunSummary> = self.runs.lock().expect("store lock").values().map(summary).collect();
        v.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(b.run_id.cmp(&a.run_id)));
        Ok(v)
    }
}

/// Runs in a SQLite file.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS runs (
                run_id TEXT PRIMARY KEY,
                workflow TEXT NOT NULL,
                status TEXT NOT NULL,
                version INTEGER NOT NULL,
                started_at INTEGER,
                cost_usd REAL NOT NULL DEFAULT 0,
                source_name TEXT NOT NULL,
                source TEXT NOT NULL,
                state TEXT NOT NULL
            );
            CREATE INDEX IF NOT EXISTS runs_by_start ON runs (started_at DESC);",
        )?;
        Ok(SqliteStore { conn: Mutex::new(conn) })
    }
}

impl Store for SqliteStore {
    fn create(&self, run: &RunRecord) -> Result<(), Error> {
        let s = &run.state;
        let conn = self.conn.lock().expect("store lock");
        let n = conn.execute(
            "INSERT OR IGNORE INTO runs (run_id, workflow, status, version, started_at, cost_usd, source_name, source, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                s.run_id,
                run.workflow,
                s.status.as_str(),
                s.version as i64,
                s.started_at.map(|t| t as i64),
                s.cost_usd,
                run.source_name,
                run.source,
                serde_json::to_string(s)?
            ],
        )?;
        if n == 0 {
            return Err(Error::Exists(s.run_id.clone()));
        }
        Ok(())
    }

    fn load(&self, run_id: &str) -> Result<Option<RunRecord>, Error> {
        let conn = self.conn.lock().expect("store lock");
        let row = conn
            .query_row(
                "SELECT workflow, source_name, source, state FROM runs WHERE run_id = ?1",
                params![run_id],
                |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
                },
            )
            .optional()?;
        match row {
            None => Ok(None),
            Some((workflow, source_name, source, state)) => {
                Ok(Some(RunRecord { state: serde_json::from_str(&state)?, workflow, source_name, source }))
            }
        }
    }

    fn save(&self, state: &RunState, expected: u64) -> Result<bool, Error> {
        let conn = self.conn.lock().expect("store lock");
        let n = conn.execute(
            "UPDATE runs SET state = ?1, version = ?2, status = ?3, started_at = ?4, cost_usd = ?5
             WHERE run_id = ?6 AND version = ?7",
            params![
                serde_json::to_string(state)?,
                state.version as i64,
                state.status.as_str(),
                state.started_at.map(|t| t as i64),
                state.cost_usd,
                state.run_id,
                expected as i64
            ],
        )?;
        Ok(n == 1)
    }

    fn list(&self) -> Result<Vec<RunSummary>, Error> {
        let conn = self.conn.lock().expect("store lock");
        let mut stmt = conn.prepare(
            "SELECT run_id, workflow, status, started_at, cost_usd FROM runs ORDER BY started_at DESC, run_id DESC",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(RunSummary {
                run_id: r.get(0)?,
                workflow: r.get(1)?,
                status: r.get(2)?,
                started_at: r.get::<_, Option<i64>>(3)?.map(|t| t as u64),
                cost_usd: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmo_core::engine::RunStatus;

    fn state(id: &str, version: u64) -> RunState {
        serde_json::from_value(serde_json::json!({
            "run_id": id, "version": version, "status": "running", "inputs": {}, "tasks": [], "started_at": version
        }))
        .unwrap()
    }

    fn record(id: &str) -> RunRecord {
        RunRecord { state: state(id, 0), workflow: "w".into(), source_name: "w.yaml".into(), source: "x".into() }
    }

    fn exercise(store: &dyn Store) {
        store.create(&record("a")).unwrap();
        assert!(matches!(store.create(&record("a")), Err(Error::Exists(_))));
        let mut s = state("a", 1);
        assert!(store.save(&s, 0).unwrap(), "expected version matches");
        assert!(!store.save(&s, 0).unwrap(), "a second write from version 0 loses");
        s.version = 2;
        s.status = RunStatus::Succeeded;
        assert!(store.save(&s, 1).unwrap());
        let back = store.load("a").unwrap().unwrap();
        assert_eq!(back.state, s);
        assert_eq!(back.source, "x");
        assert!(store.load("nope").unwrap().is_none());
        store.create(&record("b")).unwrap();
        let list = store.list().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].run_id, "a", "newest (latest start) first");
        assert_eq!(list[0].status, "succeeded");
    }

    #[test]
    fn memory_store_compares_and_sets() {
        exercise(&MemoryStore::default());
    }

    #[test]
    fn sqlite_store_compares_and_sets_and_persists() {
        let dir = std::env::temp_dir().join(format!("llmo-store-{}", std::process::id()));
        let path = dir.join("runs.db");
        let _ = std::fs::remove_file(&path);
        exercise(&SqliteStore::open(&path).unwrap());
        // A new connection sees what the first wrote.
        let again = SqliteStore::open(&path).unwrap();
        assert_eq!(again.load("a").unwrap().unwrap().state.status, RunStatus::Succeeded);
        std::fs::remove_dir_all(&dir).ok();
    }
}
