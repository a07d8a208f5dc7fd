//! A run's events as a stream (`GET /runs/{id}/events` as server-sent events, `llmo watch`):
//! every transition of its log, in order, each with the run's status and the tasks whose
//! status it changed, then the run's end with its outputs.
//!
//! **Ids.** Each event's id is `{tag}-{version}-{seq}`: `tag` names the run (the first 8 hex
//! digits of the SHA-256 of its id), `version` the transition, `seq` an event within it (0:
//! the transition itself). Ids increase within a run. A client that reconnects with
//! `Last-Event-ID` gets exactly the events after it: the log is the run's, kept for the run's
//! retention. An id that does not parse, or names another run, is refused.
//!
//! **Following.** The follower replays the run from its initial state (so that every event,
//! missed or live, says what it changed; a log longer than [`MAX_REPLAY`] is followed from its
//! head, and the events before it say only what happened), then reads the log for new transitions every
//! [`Follow::poll`] (one read of the run's version; the transitions only when it moved). It
//! never holds a worker: a client that reads slowly only slows its own reads. It sends a
//! comment every [`Follow::heartbeat`] so that proxies keep the connection, and ends the
//! stream after the run ended, after [`Follow::idle`] without an event, or after
//! [`Follow::total`] (the client reconnects with `Last-Event-ID` and misses nothing).

use std::sync::Arc;
use std::time::Duration;

use llmo_core::engine::{Plan, RunState};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::store::{RunStore, Transition};

/// Where a stream is in a run: after transition `version`, event `seq` of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct EventId {
    pub version: u64,
    pub seq: u32,
}

/// The run's part of its events' ids.
pub fn tag(run_id: &str) -> String {
    let d = Sha256::digest(run_id.as_bytes());
    d[..4].iter().map(|b| format!("{b:02x}")).collect()
}

impl EventId {
    /// The id as sent: `{tag}-{version}-{seq}`.
    pub fn format(&self, tag: &str) -> String {
        format!("{tag}-{}-{}", self.version, self.seq)
    }

    /// A `Last-Event-ID` of run `run_id`: `Err` says why it is refused (malformed, or another
    /// run's).
    pub fn parse(run_id: &str, s: &str) -> Result<EventId, String> {
        let bad = || {
            format!("`Last-Event-ID` {:?} is not an event id of this stream ({{tag}}-{{version}}-{{seq}})", short(s))
        };
        let mut parts = s.trim().splitn(3, '-');
        let (Some(t), Some(v), Some(q)) = (parts.next(), parts.next(), parts.next()) else { return Err(bad()) };
        let version = v.parse::<u64>().map_err(|_| bad())?;
        let seq = q.parse::<u32>().map_err(|_| bad())?;
        if t.len() != 8 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        if t != tag(run_id) {
            return Err(format!("`Last-Event-ID` {:?} is an event of another run", short(s)));
        }
        Ok(EventId { version, seq })
    }
}

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

/// The longest log a follower replays from the run's initial state to say what each event
/// changed (a longer one is followed from its head: what each later event changed is said).
pub const MAX_REPLAY: u64 = 10_000;

/// How a follower reads and when it stops.
#[derive(Debug, Clone)]
pub struct Follow {
    /// How often the run's version is read for new transitions (default 250 ms: on DynamoDB
    /// one strongly consistent read of an item, 4 a second per stream; `llmo serve` reads its
    /// SQLite file every 50 ms).
    pub poll: Duration,
    /// A comment is sent after this long without an event.
    pub heartbeat: Duration,
    /// The stream ends after this long without an event (a waiting run: reconnect).
    pub idle: Duration,
    /// The stream ends after this long in all.
    pub total: Duration,
}

impl Default for Follow {
    fn default() -> Self {
        Follow {
            poll: Duration::from_millis(250),
            heartbeat: Duration::from_secs(15),
            idle: Duration::from_secs(15 * 60),
            total: Duration::from_secs(3600),
        }
    }
}

/// One event of a stream: its id (none for comments), its name and its data.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub id: Option<String>,
    pub event: &'static str,
    pub data: Value,
}

impl Frame {
    /// The frame as `text/event-stream` (a comment for a heartbeat).
    pub fn sse(&self) -> String {
        if self.event == "heartbeat" {
            return ": heartbeat\n\n".to_string();
        }
        let mut out = String::new();
        if let Some(id) = &self.id {
            out.push_str(&format!("id: {id}\n"));
        }
        out.push_str(&format!("event: {}\ndata: {}\n\n", self.event, self.data));
        out
    }
}

/// A transition as the log's readers show it (`GET /runs/{id}/history`, the stream): larger
/// than [`crate::view::VALUE_BYTES`], its event is replaced by a `truncated` marker.
pub fn transition_value(t: &Transition) -> (Value, usize) {
    let v = serde_json::to_value(t).unwrap_or(Value::Null);
    let max = crate::view::VALUE_BYTES;
    let size = llmo_core::engine::limits::json_size(&v, max);
    if size > max {
        let kind = v.pointer("/event/event").cloned().unwrap_or(Value::Null);
        let bytes = serde_json::to_string(&v).map_or(size, |s| s.len());
        (json!({"version": t.version, "at": t.at, "event": {"event": kind, "truncated": true, "bytes": bytes}}), 256)
    } else {
        (v, size)
    }
}

/// The follower of one run.
pub struct Follower {
    store: Arc<dyn RunStore>,
    plan: Arc<Plan>,
    st: RunState,
    tag: String,
    /// The last event sent (or the client's `Last-Event-ID`).
    after: EventId,
    pending: std::collections::VecDeque<Frame>,
    ended: bool,
}

/// Why a stream could not start.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("no run `{0}`")]
    NoSuchRun(String),
    #[error("`Last-Event-ID` names version {0}, past the run's last ({1})")]
    Ahead(u64, u64),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

impl Follower {
    /// A follower of run `run_id` after `after` (the client's `Last-Event-ID`; default: from
    /// the start). The run is replayed from its initial state up to `after` (without events).
    pub async fn start(
        store: Arc<dyn RunStore>,
        plan: Arc<Plan>,
        run_id: &str,
        after: EventId,
    ) -> Result<Follower, FollowError> {
        let head = store.version(run_id).await?.ok_or_else(|| FollowError::NoSuchRun(run_id.to_string()))?;
        if after.version > head {
            return Err(FollowError::Ahead(after.version, head));
        }
        // Replayed from the start when the log is short enough; else (or from a store without
        // initial states) the run's state is followed from its head, as a read gets it (its
        // snapshot and the transitions after it), and the events before the head carry no
        // changes.
        let initial = if head <= MAX_REPLAY { store.initial_state(run_id).await? } else { None };
        let st = match initial {
            Some(st) => st,
            None => {
                let stored = store.load(run_id).await?.ok_or_else(|| FollowError::NoSuchRun(run_id.to_string()))?;
                crate::store::rebuild(&plan, stored)?
            }
        };
        let mut f = Follower { store, plan, st, tag: tag(run_id), after, pending: Default::default(), ended: false };
        if f.st.version > after.version {
            // Followed from its head: the transitions the client missed before it are sent
            // as they are (what they changed is not known without the initial state).
            for t in f.store.load_since(run_id, after.version).await?.unwrap_or_default() {
                if t.version > f.st.version {
                    break;
                }
                let id = EventId { version: t.version, seq: 0 };
                f.after = id;
                f.pending.push_back(Frame {
                    id: Some(id.format(&f.tag)),
                    event: "transition",
                    data: transition_value(&t).0,
                });
            }
        }
        // Replays what the client has seen, silently.
        let seen: Vec<Transition> = f
            .store
            .load_since(run_id, f.st.version)
            .await?
            .unwrap_or_default()
            .into_iter()
            .take_while(|t| t.version <= after.version)
            .collect();
        for t in &seen {
            crate::store::apply_stored(&f.plan, &mut f.st, t)?;
        }
        Ok(f)
    }

    /// The run ended and its end was sent before (the client's `Last-Event-ID` is the end's):
    /// nothing more will come.
    pub fn seen_all(&self) -> bool {
        self.st.status.is_terminal() && self.after >= EventId { version: self.st.version, seq: 1 }
    }

    /// The run's state as of the last event sent.
    pub fn state(&self) -> &RunState {
        &self.st
    }

    /// Reads the log once: the events of the transitions after the last one sent (and the
    /// run's end, once it ended). Empty when nothing happened.
    pub async fn poll(&mut self) -> Result<Vec<Frame>, crate::store::Error> {
        if self.ended {
            return Ok(Vec::new());
        }
        let mut out: Vec<Frame> = self.pending.drain(..).collect();
        let run_id = self.st.run_id.clone();
        if self.store.version(&run_id).await? != Some(self.st.version) {
            let tail = self.store.load_since(&run_id, self.st.version).await?.unwrap_or_default();
            for t in tail {
                let before: Vec<_> = self.st.tasks.iter().map(|t| t.status).collect();
                let (value, _) = transition_value(&t);
                let version = t.version;
                crate::store::apply_stored(&self.plan, &mut self.st, &t)?;
                if version <= self.after.version {
                    continue;
                }
                let mut changed = serde_json::Map::new();
                for (i, (was, ts)) in before.iter().zip(&self.st.tasks).enumerate() {
                    if *was != ts.status {
                        changed.insert(self.plan.checked.dag.id(i).to_string(), json!(ts.status.as_str()));
                    }
                }
                let mut data = value;
                data["run"] = json!(self.st.status.as_str());
                data["tasks"] = Value::Object(changed);
                let id = EventId { version, seq: 0 };
                self.after = id;
                out.push(Frame { id: Some(id.format(&self.tag)), event: "transition", data });
            }
        }
        if self.st.status.is_terminal() {
            self.ended = true;
            let id = EventId { version: self.st.version, seq: 1 };
            if id > self.after {
                let data = json!({
                    "run_id": self.st.run_id,
                    "status": self.st.status.as_str(),
                    "error": self.st.error,
                    "outputs": self.st.outputs,
                    "cost_usd": self.st.cost_usd,
                    "tokens": self.st.tokens,
                });
                out.push(Frame { id: Some(id.format(&self.tag)), event: "end", data });
            }
        }
        Ok(out)
    }

    /// Whether the run ended and its end was sent.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The frames of the run until it ends, `follow` ends the stream, or the client goes: as
    /// a stream of `text/event-stream` chunks.
    pub fn into_sse(mut self, follow: Follow) -> impl futures::Stream<Item = String> + Send + 'static {
        let started = tokio::time::Instant::now();
        let appended = self.store.appended();
        let mut last_event = started;
        let mut last_sent = started;
        async_stream(move |tx| async move {
            loop {
                if tx.is_closed() {
                    return;
                }
                // Listening for this process's appends before reading: one that lands during
                // the read wakes the next read at once.
                let mut wake = appended.as_deref().map(|n| Box::pin(n.notified()));
                if let Some(w) = wake.as_mut() {
                    w.as_mut().enable();
                }
                let frames = match self.poll().await {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!(run = %self.st.run_id, error = %e, "the run's log could not be read: the stream ends");
                        let f = Frame { id: None, event: "error", data: json!({"error": e.to_string()}) };
                        let _ = tx.send(f.sse()).await;
                        return;
                    }
                };
                let now = tokio::time::Instant::now();
                if !frames.is_empty() {
                    last_event = now;
                    last_sent = now;
                }
                for f in frames {
                    if tx.send(f.sse()).await.is_err() {
                        return;
                    }
                }
                if self.ended
                    || now.duration_since(last_event) >= follow.idle
                    || now.duration_since(started) >= follow.total
                {
                    return;
                }
                if now.duration_since(last_sent) >= follow.heartbeat {
                    last_sent = now;
                    if tx.send(Frame { id: None, event: "heartbeat", data: Value::Null }.sse()).await.is_err() {
                        return;
                    }
                }
                // The next read: after the poll interval, or at once when this process
                // appended to the store meanwhile.
                match wake {
                    Some(w) => {
                        let _ = tokio::time::timeout(follow.poll, w).await;
                    }
                    None => tokio::time::sleep(follow.poll).await,
                }
            }
        })
    }
}

/// A stream fed by `body` through a channel of one chunk: `body` waits while the reader has
/// not taken the last chunk (a slow reader slows its own follower, nothing else), and stops
/// when the reader is gone.
fn async_stream<F, Fut>(body: F) -> impl futures::Stream<Item = String> + Send + 'static
where
    F: FnOnce(tokio::sync::mpsc::Sender<String>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(body(tx));
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_run_and_order() {
        let t = tag("run-1");
        assert_eq!(t.len(), 8);
        let id = EventId { version: 12, seq: 0 };
        assert_eq!(EventId::parse("run-1", &id.format(&t)), Ok(id));
        assert!(
            EventId { version: 12, seq: 1 } > id && EventId { version: 13, seq: 0 } > EventId { version: 12, seq: 1 }
        );
        for bad in ["", "12", "x-1-0", "abcdefgh-1", "abcdefgh-x-0", "abcdefgh--1-0", &format!("{t}-1-0-0")] {
            let e = EventId::parse("run-1", bad).unwrap_err();
            assert!(e.contains("is not an event id"), "{bad}: {e}");
        }
        let other = EventId::parse("run-1", &id.format(&tag("run-2"))).unwrap_err();
        assert!(other.contains("another run"), "{other}");
    }

    /// A store without initial states (the memory store): the run is followed from its head;
    /// the transitions before it are sent as they are, the later ones with what they changed,
    /// then the end; a follower after the last id sent gets nothing again.
    #[tokio::test]
    async fn a_run_followed_from_its_head_sends_every_event_once() {
        use llmo_core::engine::{AttemptResult, Event, Output, Usage};
        use llmo_core::source::SourceFile;
        use llmo_core::validate::Validator;
        let wf = "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: w }\nspec:\n  tasks:\n    - { id: a, type: transform, with: { output: 1 } }\n    - { id: b, type: transform, depends_on: [a], with: { output: 2 } }\n";
        let plan = Arc::new(Plan::new(Validator::default().validate(&SourceFile::new("w.yaml", wf)).checked.unwrap()));
        let store = Arc::new(crate::store::MemoryStore::default());
        let mut st = plan.new_run("run-f", Default::default());
        store.create("w", "w.yaml", wf, &st).await.unwrap();
        let ok = |v: i64| AttemptResult::Succeeded { output: Output::new(json!(v)), usage: Usage::default() };
        let step = |st: &mut RunState, e: Event| {
            plan.apply(st, &e, 5).unwrap();
            Transition::new(st.version, 5, e)
        };
        let t1 = step(&mut st, Event::Start);
        let t2 = step(&mut st, Event::finished(0, None, 1, ok(1)));
        assert!(store.append(0, &[t1, t2], &st).await.unwrap());
        let mut f = Follower::start(store.clone(), plan.clone(), "run-f", EventId::default()).await.unwrap();
        let first = f.poll().await.unwrap();
        assert_eq!(first.len(), 2, "{first:?}");
        assert_eq!(first[0].id.as_deref(), Some(format!("{}-1-0", tag("run-f")).as_str()));
        assert!(first[1].data.get("run").is_none(), "before the head: what changed is not known");
        assert!(f.poll().await.unwrap().is_empty(), "nothing new");
        let t3 = step(&mut st, Event::finished(1, None, 1, ok(2)));
        assert!(store.append(2, &[t3], &st).await.unwrap());
        let last = f.poll().await.unwrap();
        assert_eq!(last.iter().map(|f| f.event).collect::<Vec<_>>(), ["transition", "end"]);
        assert_eq!((&last[0].data["run"], &last[0].data["tasks"]), (&json!("succeeded"), &json!({"b": "succeeded"})));
        assert_eq!(last[1].data["status"], "succeeded");
        assert!(f.ended() && f.poll().await.unwrap().is_empty());
        // From the end's id: nothing more; from the first: the rest, once.
        let end = EventId::parse("run-f", last[1].id.as_deref().unwrap()).unwrap();
        let mut g = Follower::start(store.clone(), plan.clone(), "run-f", end).await.unwrap();
        assert!(g.poll().await.unwrap().is_empty());
        let one = EventId { version: 1, seq: 0 };
        let mut g = Follower::start(store, plan, "run-f", one).await.unwrap();
        let rest: Vec<_> = g.poll().await.unwrap().into_iter().map(|f| f.id.unwrap()).collect();
        let t = tag("run-f");
        assert_eq!(rest, [format!("{t}-2-0"), format!("{t}-3-0"), format!("{t}-3-1")]);
    }

    #[test]
    fn frames_are_server_sent_events() {
        let f = Frame { id: Some("a-1-0".into()), event: "transition", data: json!({"version": 1}) };
        assert_eq!(f.sse(), "id: a-1-0\nevent: transition\ndata: {\"version\":1}\n\n");
        assert_eq!(Frame { id: None, event: "heartbeat", data: Value::Null }.sse(), ": heartbeat\n\n");
    }
}
