//! The small ports the runtime needs from the world besides the run store
//! ([`crate::store::RunStore`]) and executors ([`crate::executor::Executor`]): a clock and a
//! blob store. The work queue port lives in [`crate::queue`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use llmo_core::engine::Millis;

/// Wall-clock milliseconds, as transitions record them.
pub trait Clock: Send + Sync {
    fn now(&self) -> Millis;
}

/// The system clock, advanced through tokio's clock so tests with paused time see it move.
pub struct SystemClock {
    base_ms: Millis,
    base: tokio::time::Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        let base_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as Millis);
        SystemClock { base_ms, base: tokio::time::Instant::now() }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        self.base_ms + self.base.elapsed().as_millis() as Millis
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as Millis)
}

#[derive(Debug, thiserror::Error)]
#[error("blob store: {0}")]
pub struct BlobError(pub String);

/// Checkpoints and payloads too large to keep in a run's state (S3 in the serverless runtime).
#[async_trait]
pub trait BlobStore: Send + Sync {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError>;
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError>;
}

#[derive(Default)]
pub struct MemoryBlobs(Mutex<HashMap<String, Vec<u8>>>);

#[async_trait]
impl BlobStore for MemoryBlobs {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        self.0.lock().expect("blob lock").insert(key.to_string(), bytes);
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        Ok(self.0.lock().expect("blob lock").get(key).cloned())
    }
}

/// Blobs as files under a directory; a write goes to a temporary file renamed into place, so
/// a reader never sees half a blob.
pub struct DirBlobs(pub PathBuf);

impl DirBlobs {
    fn path(&self, key: &str) -> Result<PathBuf, BlobError> {
        if key.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
            return Err(BlobError(format!("bad key `{key}`")));
        }
        Ok(self.0.join(key))
    }
}

#[async_trait]
impl BlobStore for DirBlobs {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), BlobError> {
        let path = self.path(key)?;
        let err = |e: std::io::Error| BlobError(format!("{}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(err)?;
        }
        let tmp = path.with_extension("tmp");
        tokio::fs::write(&tmp, bytes).await.map_err(err)?;
        tokio::fs::rename(&tmp, &path).await.map_err(err)
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        let path = self.path(key)?;
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BlobError(format!("{}: {e}", path.display()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blobs_round_trip() {
        let dir = std::env::temp_dir().join(format!("llmo-blobs-{}", std::process::id()));
        for store in [Box::new(MemoryBlobs::default()) as Box<dyn BlobStore>, Box::new(DirBlobs(dir.clone()))] {
            store.put("runs/r1/outputs.json", b"{}".to_vec()).await.unwrap();
            assert_eq!(store.get("runs/r1/outputs.json").await.unwrap().as_deref(), Some(&b"{}"[..]));
            assert_eq!(store.get("runs/r2/outputs.json").await.unwrap(), None);
        }
        assert!(DirBlobs(dir.clone()).put("../x", vec![]).await.is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_follows_tokio_time() {
        let c = SystemClock::default();
        let t0 = c.now();
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        assert_eq!(c.now() - t0, 5000);
    }
}
