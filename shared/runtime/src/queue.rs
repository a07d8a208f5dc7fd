//! The work queue port: at-least-once delivery with a visibility timeout, as SQS gives.
//!
//! Messages carry a schema version (`v`), so workers can refuse (and dead-letter) messages
//! from a newer producer instead of misreading them. [`MemoryQueue`] is the embedded
//! adapter; it redelivers a message whose receiver did not acknowledge it within the
//! visibility timeout, exactly as a worker that died mid-step sees on SQS.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use llmo_core::engine::{Event, Millis};
use serde::{Deserialize, Serialize};

use crate::ports::Clock;

/// The message schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// What a queue carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Message {
    /// Apply this event to the run.
    Event { run_id: String, event: Event },
    /// Run this attempt, then apply its result.
    Execute { run_id: String, task: usize, item: Option<u32>, attempt: u32 },
}

impl Message {
    pub fn run_id(&self) -> &str {
        match self {
            Message::Event { run_id, .. } | Message::Execute { run_id, .. } => run_id,
        }
    }
}

/// A message as written on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    #[serde(flatten)]
    pub message: Message,
}

impl Envelope {
    pub fn encode(message: &Message) -> String {
        serde_json::to_string(&Envelope { v: SCHEMA_VERSION, message: message.clone() }).expect("messages serialize")
    }

    pub fn decode(body: &str) -> Result<Message, QueueError> {
        // The version first: a newer producer's message may have any shape.
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let v: Version = serde_json::from_str(body).map_err(|e| QueueError::Malformed(e.to_string()))?;
        if v.v > SCHEMA_VERSION {
            return Err(QueueError::Malformed(format!(
                "message schema v{} is newer than this worker's v{SCHEMA_VERSION}",
                v.v
            )));
        }
        let e: Envelope = serde_json::from_str(body).map_err(|e| QueueError::Malformed(e.to_string()))?;
        Ok(e.message)
    }
}

/// One delivery of a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Names this delivery, for [`Queue::ack`].
    pub receipt: String,
    pub message: Message,
    /// How many times the message has been delivered, this one included.
    pub receive_count: u32,
    /// The W3C `traceparent` the message was sent under, if it carried one.
    pub trace: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("queue: {0}")]
    Io(String),
    #[error("queue: malformed message: {0}")]
    Malformed(String),
}

#[async_trait]
pub trait Queue: Send + Sync {
    /// Sends a message, visible after `delay_ms`.
    async fn send(&self, message: &Message, delay_ms: Millis) -> Result<(), QueueError>;
    /// Sends several messages (adapters batch them into as few requests as they can).
    async fn send_batch(&self, messages: &[(Message, Millis)]) -> Result<(), QueueError> {
        for (m, delay) in messages {
            self.send(m, *delay).await?;
        }
        Ok(())
    }
    /// Up to `max` visible messages; each stays invisible for the visibility timeout.
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, QueueError>;
    /// Deletes a delivered message (a stale receipt is ignored).
    async fn ack(&self, receipt: &str) -> Result<(), QueueError>;
}

struct Entry {
    id: u64,
    body: String,
    visible_at: Millis,
    receives: u32,
    receipt: Option<String>,
    trace: Option<String>,
}

/// Picks which of `n` visible messages is delivered next (FIFO when absent).
pub type Picker = Box<dyn FnMut(usize) -> usize + Send>;

/// An in-memory queue. Messages are stored encoded, so what a worker reads went through the
/// wire format.
pub struct MemoryQueue {
    clock: Arc<dyn Clock>,
    visibility_ms: Millis,
    entries: Mutex<Vec<Entry>>,
    picker: Mutex<Option<Picker>>,
    next: AtomicU64,
}

impl MemoryQueue {
    pub fn new(clock: Arc<dyn Clock>, visibility_ms: Millis) -> Self {
        MemoryQueue {
            clock,
            visibility_ms,
            entries: Mutex::new(Vec::new()),
            picker: Mutex::new(None),
            next: AtomicU64::new(1),
        }
    }

    /// Delivers visible messages in the order `picker` chooses (simulations reorder with it).
    pub fn with_picker(self, picker: Picker) -> Self {
        *self.picker.lock().expect("queue lock") = Some(picker);
        self
    }

    /// Messages not yet acknowledged.
    pub fn len(&self) -> usize {
        self.entries.lock().expect("queue lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// When the next invisible message becomes visible.
    pub fn next_visible_at(&self) -> Option<Millis> {
        self.entries.lock().expect("queue lock").iter().map(|e| e.visible_at).min()
    }

    /// Puts a copy of a delivered message back, as SQS sometimes delivers one twice.
    pub fn duplicate(&self, receipt: &str) {
        let mut entries = self.entries.lock().expect("queue lock");
        if let Some(e) = entries.iter().find(|e| e.receipt.as_deref() == Some(receipt)) {
            let copy = Entry {
                id: self.next.fetch_add(1, Ordering::Relaxed),
                body: e.body.clone(),
                visible_at: self.clock.now(),
                receives: 0,
                receipt: None,
                trace: e.trace.clone(),
            };
            entries.push(copy);
        }
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    async fn send(&self, message: &Message, delay_ms: Millis) -> Result<(), QueueError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let body = Envelope::encode(message);
        let visible_at = self.clock.now() + delay_ms;
        let trace = crate::telemetry::traceparent();
        self.entries.lock().expect("queue lock").push(Entry {
            id,
            body,
            visible_at,
            receives: 0,
            receipt: None,
            trace,
        });
        Ok(())
    }

    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, QueueError> {
        let now = self.clock.now();
        let mut entries = self.entries.lock().expect("queue lock");
        let mut picker = self.picker.lock().expect("queue lock");
        let mut out = Vec::new();
        while out.len() < max {
            let visible: Vec<usize> = (0..entries.len()).filter(|&i| entries[i].visible_at <= now).collect();
            if visible.is_empty() {
                break;
            }
            let k = picker.as_mut().map_or(0, |p| p(visible.len()) % visible.len());
            let e = &mut entries[visible[k]];
            e.receives += 1;
            e.visible_at = now + self.visibility_ms;
            let receipt = format!("{}-{}", e.id, e.receives);
            e.receipt = Some(receipt.clone());
            let message = Envelope::decode(&e.body)?;
            out.push(Delivery { receipt, message, receive_count: e.receives, trace: e.trace.clone() });
        }
        Ok(out)
    }

    async fn ack(&self, receipt: &str) -> Result<(), QueueError> {
        self.entries.lock().expect("queue lock").retain(|e| e.receipt.as_deref() != Some(receipt));
        Ok(())
    }
}

/// A clock moved by hand, for simulations.
#[derive(Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn set(&self, t: Millis) {
        self.0.fetch_max(t, Ordering::SeqCst);
    }

    pub fn advance(&self, ms: Millis) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unacknowledged_messages_come_back_after_the_visibility_timeout() {
        let clock = Arc::new(ManualClock::default());
        let q = MemoryQueue::new(clock.clone(), 30_000);
        let m = Message::Event { run_id: "r".into(), event: Event::Start };
        q.send(&m, 0).await.unwrap();
        q.send(&Message::Event { run_id: "r".into(), event: Event::Tick }, 5_000).await.unwrap();
        let d = q.receive(10).await.unwrap();
        assert_eq!(d.len(), 1, "the delayed message is not visible yet");
        assert_eq!(d[0].message, m);
        assert!(q.receive(10).await.unwrap().is_empty(), "in flight: invisible");
        clock.advance(30_000);
        let again = q.receive(10).await.unwrap();
        assert_eq!(again.len(), 2, "redelivered, and the delayed one is due");
        let first = again.iter().find(|d| d.message == m).unwrap();
        assert_eq!(first.receive_count, 2);
        q.ack(&d[0].receipt).await.unwrap();
        assert_eq!(q.len(), 2, "a stale receipt deletes nothing");
        for d in &again {
            q.ack(&d.receipt).await.unwrap();
        }
        assert!(q.is_empty());
    }

    #[test]
    fn the_wire_format_is_versioned() {
        let m = Message::Execute { run_id: "r".into(), task: 2, item: Some(1), attempt: 3 };
        let body = Envelope::encode(&m);
        assert_eq!(body, r#"{"v":1,"kind":"execute","run_id":"r","task":2,"item":1,"attempt":3}"#);
        assert_eq!(Envelope::decode(&body).unwrap(), m);
        let newer = body.replace("\"v\":1", "\"v\":2");
        assert!(Envelope::decode(&newer).unwrap_err().to_string().contains("newer than this worker's v1"));
    }
}
