//! The work queue in the run store's SQLite file (feature `sqlite`): what `llmo serve`'s step
//! workers consume. Messages survive the process (a `kill -9` loses none): a message is a row
//! until it is acknowledged, a delivery makes it invisible for the visibility timeout, and one
//! not acknowledged by then is delivered again, as SQS does. A delay is the row's
//! `visible_at`, so timers (retries, sleeps, deadlines) survive restarts too.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use llmo_core::engine::Millis;
use rusqlite::params;
use tokio::sync::Notify;

use crate::ports::Clock;
use crate::queue::{Delivery, Envelope, Message, Queue, QueueError};
use crate::store::SqliteStore;

pub struct SqliteQueue {
    store: Arc<SqliteStore>,
    clock: Arc<dyn Clock>,
    visibility_ms: Millis,
    /// Wakes idle consumers when a message is sent.
    sent: Notify,
}

fn io(e: impl std::fmt::Display) -> QueueError {
    QueueError::Io(e.to_string())
}

impl SqliteQueue {
    pub fn new(store: Arc<SqliteStore>, clock: Arc<dyn Clock>, visibility_ms: Millis) -> Self {
        SqliteQueue { store, clock, visibility_ms, sent: Notify::new() }
    }

    /// Messages in the queue (visible or not).
    pub fn len(&self) -> Result<u64, QueueError> {
        let n: i64 = self.store.lock().query_row("SELECT count(*) FROM queue", [], |r| r.get(0)).map_err(io)?;
        Ok(n as u64)
    }

    /// Makes every message in flight visible now, and says how many there were: for the one
    /// process that owns the file, at its start (what was in flight died with the process
    /// before it; no other consumer can be holding it).
    pub fn release_in_flight(&self) -> Result<u64, QueueError> {
        let now = self.clock.now() as i64;
        let n = self
            .store
            .lock()
            .execute(
                "UPDATE queue SET visible_at = ?1, receipt = NULL WHERE receipt IS NOT NULL AND visible_at > ?1",
                params![now],
            )
            .map_err(io)?;
        Ok(n as u64)
    }

    pub fn is_empty(&self) -> Result<bool, QueueError> {
        Ok(self.len()? == 0)
    }

    /// Waits until a message may be visible: one is sent, the earliest invisible one comes
    /// due, or `at_most` passes (what an idle consumer does between receives).
    pub async fn idle(&self, at_most: Duration) {
        let next: Option<i64> =
            self.store.lock().query_row("SELECT min(visible_at) FROM queue", [], |r| r.get(0)).unwrap_or(None);
        let now = self.clock.now();
        let wait = match next {
            Some(t) if (t as u64) <= now => return,
            Some(t) => Duration::from_millis(t as u64 - now).min(at_most),
            None => at_most,
        };
        let _ = tokio::time::timeout(wait, self.sent.notified()).await;
    }
}

#[async_trait]
impl Queue for SqliteQueue {
    async fn send(&self, message: &Message, delay_ms: Millis) -> Result<(), QueueError> {
        self.send_batch(&[(message.clone(), delay_ms)]).await
    }

    async fn send_batch(&self, messages: &[(Message, Millis)]) -> Result<(), QueueError> {
        let now = self.clock.now();
        let trace = crate::telemetry::traceparent();
        {
            let mut conn = self.store.lock();
            let tx = conn.transaction().map_err(io)?;
            {
                let mut ins = tx
                    .prepare_cached("INSERT INTO queue (run_id, body, visible_at, trace) VALUES (?1, ?2, ?3, ?4)")
                    .map_err(io)?;
                for (m, delay) in messages {
                    ins.execute(params![m.run_id(), Envelope::encode(m), (now + delay) as i64, trace]).map_err(io)?;
                }
            }
            tx.commit().map_err(io)?;
        }
        self.sent.notify_waiters();
        Ok(())
    }

    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, QueueError> {
        let now = self.clock.now();
        let mut conn = self.store.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(io)?;
        let rows: Vec<(i64, String, i64, Option<String>)> = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT id, body, receives, trace FROM queue WHERE visible_at <= ?1 ORDER BY visible_at, id LIMIT ?2",
                )
                .map_err(io)?;
            stmt.query_map(params![now as i64, max as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .map_err(io)?
                .collect::<Result<_, _>>()
                .map_err(io)?
        };
        let mut out = Vec::with_capacity(rows.len());
        for (id, body, receives, trace) in rows {
            let message = match Envelope::decode(&body) {
                Ok(m) => m,
                Err(e) => {
                    // Nothing can act on it: dropped, loudly, rather than redelivered forever.
                    tracing::error!(error = %e, id, "malformed message dropped from the queue");
                    tx.execute("DELETE FROM queue WHERE id = ?1", params![id]).map_err(io)?;
                    continue;
                }
            };
            let receives = receives as u32 + 1;
            let receipt = format!("{id}-{receives}");
            tx.execute(
                "UPDATE queue SET receives = ?2, visible_at = ?3, receipt = ?4 WHERE id = ?1",
                params![id, receives as i64, (now + self.visibility_ms) as i64, receipt],
            )
            .map_err(io)?;
            out.push(Delivery { receipt, message, receive_count: receives, trace });
        }
        tx.commit().map_err(io)?;
        Ok(out)
    }

    async fn ack(&self, receipt: &str) -> Result<(), QueueError> {
        self.store.lock().execute("DELETE FROM queue WHERE receipt = ?1", params![receipt]).map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::ManualClock;
    use llmo_core::engine::Event;

    fn msg(run: &str) -> Message {
        Message::Event { run_id: run.into(), event: Event::Tick }
    }

    /// Delays, visibility, redelivery after the timeout, acknowledgement, and messages that
    /// outlive the process (the file opened again).
    #[tokio::test]
    async fn messages_are_delayed_redelivered_until_acked_and_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("llmo-q-{}-{}", std::process::id(), crate::ports::now_ms()));
        let path = dir.join("state.db");
        let clock = Arc::new(ManualClock::default());
        clock.set(1_000);
        {
            let store = Arc::new(SqliteStore::open(&path, Default::default()).unwrap());
            let q = SqliteQueue::new(store, clock.clone(), 30_000);
            q.send_batch(&[(msg("a"), 0), (msg("b"), 5_000)]).await.unwrap();
            let got = q.receive(10).await.unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].message, msg("a"));
            assert_eq!(got[0].receive_count, 1);
            assert!(q.receive(10).await.unwrap().is_empty(), "a is in flight, b delayed");
            clock.advance(5_000);
            let b = q.receive(10).await.unwrap();
            assert_eq!(b.len(), 1);
            q.ack(&b[0].receipt).await.unwrap();
            assert_eq!(q.len().unwrap(), 1);
        }
        // A new process: `a` was never acknowledged, so it comes back after its timeout.
        let store = Arc::new(SqliteStore::open(&path, Default::default()).unwrap());
        let q = SqliteQueue::new(store, clock.clone(), 30_000);
        assert!(q.receive(10).await.unwrap().is_empty());
        clock.advance(30_000);
        let again = q.receive(10).await.unwrap();
        assert_eq!((again.len(), again[0].receive_count), (1, 2));
        q.ack("1-1").await.unwrap();
        assert_eq!(q.len().unwrap(), 1, "a stale receipt acknowledges nothing");
        q.ack(&again[0].receipt).await.unwrap();
        assert!(q.is_empty().unwrap());
        let _ = std::fs::remove_dir_all(dir);
    }
}
