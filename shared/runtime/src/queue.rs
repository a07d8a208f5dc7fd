//! The work queue port: at-least-once delivery with a visibility timeout, as SQS gives.
//!
//! Messages carry a schema version (`v`), so workers can refuse (and dead-letter) messages
//! from a newer producer instead of misreading them. [`MemoryQueue`] is the embedded
//! adapter; it redelivers a message whose receiver did not acknowledge it within the
//! visibility timeout, exactly as a worker that died mid-step sees on SQS.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use llmo_core::engine::{AttemptId, Event, Millis};
use serde::{Deserialize, Serialize};

use crate::ports::Clock;

/// The newest message schema version this build reads. Each message is written with the
/// oldest version that has its kind ([`Message::version`]), so a worker of the previous
/// release still reads every kind it knows during a deployment and refuses (dead-letters)
/// only the new ones.
pub const SCHEMA_VERSION: u32 = 3;

/// At most this many attempts in one [`Message::Attempts`] (a message naming more is refused
/// as malformed: the queue is ours, but what it carries is read as untrusted).
pub const MAX_ATTEMPTS_PER_MESSAGE: usize = 100;

/// What a queue carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Message {
    /// Apply this event to the run.
    Event { run_id: String, event: Event },
    /// Run this attempt, then apply its result. `admitted`: it was deferred until the
    /// capacity it reserved under the fleet's rate limits was due (`crate::flow`).
    Execute {
        run_id: String,
        task: usize,
        item: Option<u32>,
        attempt: u32,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        admitted: bool,
    },
    /// Apply these events to the run, in one step (what a step deposits on the fold queue;
    /// schema v2).
    Events { run_id: String, events: Vec<Event> },
    /// Run these attempts of one run (concurrently, in one step), then apply their results:
    /// several `Execute`s in one message, so that a wide layer costs fewer queue requests and
    /// invocations ([`pack`]; schema v3).
    Attempts { run_id: String, attempts: Vec<AttemptId> },
}

impl Message {
    pub fn run_id(&self) -> &str {
        match self {
            Message::Event { run_id, .. }
            | Message::Execute { run_id, .. }
            | Message::Events { run_id, .. }
            | Message::Attempts { run_id, .. } => run_id,
        }
    }

    /// The schema version that introduced this message's kind.
    pub fn version(&self) -> u32 {
        match self {
            Message::Event { .. } | Message::Execute { .. } => 1,
            Message::Events { .. } => 2,
            Message::Attempts { .. } => 3,
        }
    }
}

/// Puts the attempts of each run that are to run now (undelayed `Execute`s, not ones admitted
/// under a rate limit) into `Attempts` messages of at most `per` attempts, as evenly as that
/// allows (23 attempts at 10 per message: 8, 8 and 7), after every other message, which is
/// left as it is and in its order (a standard queue keeps no order anyway). A group of one
/// stays an `Execute` (which every schema version reads). `per` <= 1 packs nothing.
pub fn pack(messages: Vec<(Message, Millis)>, per: usize) -> Vec<(Message, Millis)> {
    let per = per.min(MAX_ATTEMPTS_PER_MESSAGE);
    let packable = |m: &(Message, Millis)| matches!(m, (Message::Execute { admitted: false, .. }, 0));
    if per <= 1 || messages.iter().filter(|m| packable(m)).count() < 2 {
        return messages;
    }
    // Each run's attempts, in the order of its first one.
    let mut runs: Vec<(String, Vec<AttemptId>)> = Vec::new();
    let mut out = Vec::with_capacity(messages.len());
    for m in messages {
        match m {
            (Message::Execute { run_id, task, item, attempt, admitted: false }, 0) => {
                let a = AttemptId { task, item, attempt };
                match runs.iter_mut().find(|(r, _)| *r == run_id) {
                    Some((_, v)) => v.push(a),
                    None => runs.push((run_id, vec![a])),
                }
            }
            other => out.push(other),
        }
    }
    for (run_id, attempts) in runs {
        let chunks = attempts.len().div_ceil(per);
        let (base, extra) = (attempts.len() / chunks, attempts.len() % chunks);
        let mut rest = attempts.as_slice();
        for c in 0..chunks {
            let (these, next) = rest.split_at(base + usize::from(c < extra));
            rest = next;
            let m = match these {
                [one] => Message::Execute {
                    run_id: run_id.clone(),
                    task: one.task,
                    item: one.item,
                    attempt: one.attempt,
                    admitted: false,
                },
                _ => Message::Attempts { run_id: run_id.clone(), attempts: these.to_vec() },
            };
            out.push((m, 0));
        }
    }
    out
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
        serde_json::to_string(&Envelope { v: message.version(), message: message.clone() }).expect("messages serialize")
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
        if let Message::Attempts { attempts, .. } = &e.message
            && (attempts.is_empty() || attempts.len() > MAX_ATTEMPTS_PER_MESSAGE)
        {
            return Err(QueueError::Malformed(format!(
                "{} attempts in one message (1 to {MAX_ATTEMPTS_PER_MESSAGE})",
                attempts.len()
            )));
        }
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
    /// A message this deployment did not make (its signature is missing or wrong): dropped,
    /// never acted on nor dead-lettered.
    #[error("queue: {0}")]
    Forged(String),
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
    /// The run the message is about (a grouped queue's message group).
    group: String,
    body: String,
    visible_at: Millis,
    receives: u32,
    receipt: Option<String>,
    trace: Option<String>,
}

/// Picks which of `n` visible messages is delivered next (FIFO when absent).
pub type Picker = Box<dyn FnMut(usize) -> usize + Send>;

/// An in-memory queue. Messages are stored encoded, so what a worker reads went through the
/// wire format. A grouped queue ([`MemoryQueue::grouped`]) is what an SQS FIFO queue with one
/// message group per run gives: while any message of a run is in flight (delivered, neither
/// acknowledged nor back after its visibility timeout), no other message of that run is
/// delivered, so one consumer at a time handles a run's messages.
pub struct MemoryQueue {
    clock: Arc<dyn Clock>,
    visibility_ms: Millis,
    grouped: bool,
    entries: Mutex<Vec<Entry>>,
    picker: Mutex<Option<Picker>>,
    next: AtomicU64,
}

impl MemoryQueue {
    pub fn new(clock: Arc<dyn Clock>, visibility_ms: Millis) -> Self {
        MemoryQueue {
            clock,
            visibility_ms,
            grouped: false,
            entries: Mutex::new(Vec::new()),
            picker: Mutex::new(None),
            next: AtomicU64::new(1),
        }
    }

    /// A queue that hands one run's messages to one consumer at a time (see the type).
    pub fn grouped(clock: Arc<dyn Clock>, visibility_ms: Millis) -> Self {
        MemoryQueue { grouped: true, ..Self::new(clock, visibility_ms) }
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

    /// When the first message that is invisible at `t` becomes visible (a grouped queue may
    /// hold visible messages back: they wait for this too).
    pub fn next_visible_after(&self, t: Millis) -> Option<Millis> {
        self.entries.lock().expect("queue lock").iter().map(|e| e.visible_at).filter(|v| *v > t).min()
    }

    /// Puts a copy of a delivered message back, as SQS sometimes delivers one twice.
    pub fn duplicate(&self, receipt: &str) {
        let mut entries = self.entries.lock().expect("queue lock");
        if let Some(e) = entries.iter().find(|e| e.receipt.as_deref() == Some(receipt)) {
            let copy = Entry {
                id: self.next.fetch_add(1, Ordering::Relaxed),
                group: e.group.clone(),
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
            group: message.run_id().to_string(),
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
        // Groups another receiver holds (a grouped queue delivers none of their messages); a
        // batch may hold several messages of one group.
        let busy: std::collections::HashSet<String> = if self.grouped {
            entries.iter().filter(|e| e.receipt.is_some() && e.visible_at > now).map(|e| e.group.clone()).collect()
        } else {
            Default::default()
        };
        while out.len() < max {
            let visible: Vec<usize> = (0..entries.len())
                .filter(|&i| entries[i].visible_at <= now && !busy.contains(&entries[i].group))
                .collect();
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

    #[tokio::test]
    async fn a_grouped_queue_hands_a_runs_messages_to_one_receiver_at_a_time() {
        let clock = Arc::new(ManualClock::default());
        let q = MemoryQueue::grouped(clock.clone(), 30_000);
        let ev = |run: &str| Message::Event { run_id: run.into(), event: Event::Tick };
        for run in ["a", "a", "b", "a"] {
            q.send(&ev(run), 0).await.unwrap();
        }
        let first = q.receive(2).await.unwrap();
        assert_eq!(first.len(), 2, "a batch may hold two messages of one run");
        assert!(first.iter().all(|d| d.message.run_id() == "a"));
        let second = q.receive(10).await.unwrap();
        assert_eq!(second.iter().map(|d| d.message.run_id()).collect::<Vec<_>>(), vec!["b"], "run a is held");
        q.ack(&first[0].receipt).await.unwrap();
        assert!(q.receive(10).await.unwrap().is_empty(), "run a is still held by its second message");
        q.ack(&first[1].receipt).await.unwrap();
        let third = q.receive(10).await.unwrap();
        assert_eq!(third.len(), 1);
        clock.advance(30_000);
        let again = q.receive(10).await.unwrap();
        assert_eq!(again.len(), 2, "an unacknowledged group is released after the visibility timeout");
    }

    #[test]
    fn the_wire_format_is_versioned() {
        let m = Message::Execute { run_id: "r".into(), task: 2, item: Some(1), attempt: 3, admitted: false };
        let body = Envelope::encode(&m);
        assert_eq!(body, r#"{"v":1,"kind":"execute","run_id":"r","task":2,"item":1,"attempt":3}"#);
        assert_eq!(Envelope::decode(&body).unwrap(), m);
        let newer = body.replace("\"v\":1", "\"v\":4");
        assert!(Envelope::decode(&newer).unwrap_err().to_string().contains("newer than this worker's v3"));
        let deposit = Message::Events { run_id: "r".into(), events: vec![Event::Tick, Event::Cancel] };
        let body = Envelope::encode(&deposit);
        assert!(body.starts_with(r#"{"v":2,"kind":"events""#), "{body}");
        assert_eq!(Envelope::decode(&body).unwrap(), deposit);
        let a = |task, item| AttemptId { task, item, attempt: 1 };
        let packed = Message::Attempts { run_id: "r".into(), attempts: vec![a(2, None), a(3, Some(7))] };
        let body = Envelope::encode(&packed);
        assert_eq!(
            body,
            r#"{"v":3,"kind":"attempts","run_id":"r","attempts":[{"task":2,"attempt":1},{"task":3,"item":7,"attempt":1}]}"#
        );
        assert_eq!(Envelope::decode(&body).unwrap(), packed);
        let none = body.replace(r#"[{"task":2,"attempt":1},{"task":3,"item":7,"attempt":1}]"#, "[]");
        assert!(Envelope::decode(&none).unwrap_err().to_string().contains("0 attempts in one message"));
        let many = Message::Attempts { run_id: "r".into(), attempts: vec![a(1, None); MAX_ATTEMPTS_PER_MESSAGE + 1] };
        assert!(Envelope::decode(&Envelope::encode(&many)).is_err(), "more than a message may name");
    }

    fn execute(run: &str, task: usize, admitted: bool) -> Message {
        Message::Execute { run_id: run.into(), task, item: None, attempt: 1, admitted }
    }

    fn named(m: &Message) -> Vec<(String, usize)> {
        match m {
            Message::Execute { run_id, task, .. } => vec![(run_id.clone(), *task)],
            Message::Attempts { run_id, attempts } => attempts.iter().map(|a| (run_id.clone(), a.task)).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn packing_puts_each_runs_attempts_into_even_messages_and_leaves_the_rest() {
        let tick = Message::Event { run_id: "a".into(), event: Event::Tick };
        let mut ms: Vec<(Message, Millis)> = (0..23).map(|t| (execute("a", t, false), 0)).collect();
        ms.insert(5, (tick.clone(), 0));
        ms.push((execute("b", 0, false), 0));
        ms.push((execute("a", 99, false), 500)); // delayed: left alone
        ms.push((execute("a", 98, true), 0)); // admitted under a rate limit: left alone
        let packed = pack(ms.clone(), 10);
        // Nothing lost, nothing repeated.
        let mut before: Vec<(String, usize)> = ms.iter().flat_map(|(m, _)| named(m)).collect();
        let mut after: Vec<(String, usize)> = packed.iter().flat_map(|(m, _)| named(m)).collect();
        before.sort();
        after.sort();
        assert_eq!(before, after);
        let sizes: Vec<usize> = packed
            .iter()
            .filter_map(|(m, _)| match m {
                Message::Attempts { run_id, attempts } if run_id == "a" => Some(attempts.len()),
                _ => None,
            })
            .collect();
        assert_eq!(sizes, vec![8, 8, 7], "23 attempts at up to 10 a message");
        assert!(packed.contains(&(tick, 0)));
        assert!(packed.contains(&(execute("b", 0, false), 0)), "a run's only attempt stays an Execute");
        assert!(packed.contains(&(execute("a", 99, false), 500)));
        assert!(packed.contains(&(execute("a", 98, true), 0)));
        assert_eq!(packed.len(), 1 + 3 + 1 + 1 + 1);
        assert_eq!(pack(ms.clone(), 1), ms, "one per message: unchanged");
        let two = pack(vec![(execute("a", 1, false), 0), (execute("a", 2, false), 0)], 1000);
        assert_eq!(two.len(), 1, "capped at the most a message may name, not refused");
    }
}
