//! Fleet-wide flow control: rate limits shared by every worker of a deployment (requests and
//! tokens per minute, per provider, model and key) and circuit breakers opened by one worker
//! and seen by all.
//!
//! The limits are GCRA ("generic cell rate algorithm", a token bucket kept as one number: the
//! theoretical arrival time, TAT, of the next free cell). A bucket of `per_minute` cells with
//! `burst` of them available at once spaces the rest `60 s / (per_minute - burst)` apart, so no
//! window of 60 seconds ever holds more than `per_minute` cells: a provider's "requests per
//! minute" is kept whatever window it counts in. One number per bucket is what makes it cheap to
//! share: the serverless runtime keeps it in a DynamoDB item moved by conditional writes
//! (`llmo-aws`'s `flow` module), the embedded runtime in memory ([`Local`]).
//!
//! A call that finds no room is not made and not failed: the embedded runtime waits in place;
//! a serverless step hands the attempt back to the queue with a delay (the executor returns
//! [`crate::executor::Deferred`]), so no Lambda sleeps and nothing is retried at full speed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use llmo_core::engine::Millis;

/// A bucket's rate: at most `per_minute` cells in any 60 seconds, `burst` of them at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: u64,
    pub burst: u64,
}

impl Rate {
    /// A rate of `per_minute` with the default burst: a tenth of it (at least one).
    pub fn per_minute(per_minute: u64) -> Self {
        Rate { per_minute: per_minute.max(1), burst: (per_minute / 10).max(1) }
    }

    /// Microseconds between cells past the burst.
    pub fn interval_us(&self) -> u64 {
        60_000_000 / self.per_minute.saturating_sub(self.burst).max(1)
    }
}

/// GCRA with reservations: given the bucket's TAT (microseconds; `None` for an unused
/// bucket), the time `now_us` and a cost in cells, the bucket's new TAT once the cells are
/// taken and how long until they may be used (zero: now). Taking cells that are due later
/// reserves them: a caller that waits that long before its call keeps to the rate, and callers
/// that come later queue behind it instead of all retrying at the same moment. A cost larger
/// than the burst is due when the bucket is idle (its TAT not ahead of now), so a single
/// large request is never refused for ever.
pub fn reserve(tat: Option<u64>, now_us: u64, rate: Rate, cost: u64) -> (u64, Duration) {
    let interval = rate.interval_us();
    let start = tat.unwrap_or(0).max(now_us);
    let next = start.saturating_add(cost.saturating_mul(interval));
    let due = if cost > rate.burst {
        start - now_us
    } else {
        (next - now_us).saturating_sub(rate.burst.saturating_mul(interval))
    };
    (next, Duration::from_micros(due))
}

/// Why a cell could not be had.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FlowError {
    /// Nothing was taken: try again after this long (too many workers at once on the shared
    /// state, or the cells are due beyond the caller's horizon).
    #[error("no capacity taken; try again in {wait:?}")]
    Wait { wait: Duration },
    /// The shared state could not be read or written (the caller goes on without it).
    #[error("flow control: {0}")]
    Io(String),
}

/// Rate limits and breakers shared by every worker that holds the same implementation.
#[async_trait]
pub trait Flow: Send + Sync {
    /// Takes `cost` cells from the bucket `key` ([`reserve`]): `Ok(due)`, they may be used
    /// after `due` (zero: now). With a `horizon`, cells due later than that are not taken:
    /// `Err(Wait { wait: due })` (how a lower priority leaves later slots to higher ones).
    async fn take(&self, key: &str, rate: Rate, cost: u64, horizon: Option<Duration>) -> Result<Duration, FlowError>;
    /// Corrects a bucket after the fact by `delta` cells (a call used fewer or more tokens
    /// than were taken for it). Never refused; best effort.
    async fn adjust(&self, key: &str, rate: Rate, delta: i64);
    /// Until when (ms since the epoch) the circuit `key` is open, if it is.
    async fn open_until(&self, key: &str) -> Option<Millis>;
    /// Opens the circuit `key` until `until` for every worker.
    async fn open(&self, key: &str, until: Millis);
    /// Joins the holders of the concurrency key `key` if fewer than `limit` hold it (or
    /// `holder` already does): `Ok(true)` when `holder` holds it now.
    ///
    /// Priority: a holder refused with `rank` (see `Priority::rank`) above 0 claims precedence
    /// on the key for [`PRECEDENCE`]; until then, holders of a lower rank are refused the free
    /// places too, so the waiting urgent run takes the next one when it comes back.
    async fn enter(&self, key: &str, holder: &str, limit: u32, rank: u8) -> Result<bool, FlowError>;
    /// Leaves the holders of `key` (nothing if `holder` is not one).
    async fn leave(&self, key: &str, holder: &str);
    /// Who holds `key` (to find holders that ended without leaving).
    async fn holders(&self, key: &str) -> Vec<String>;
    /// Whether a refusal for `wait` is waited out where it happened (embedded: one process,
    /// sleeping is free) rather than handed back to the queue (serverless: a sleeping Lambda is
    /// billed, though less than a queue round trip for a short wait).
    fn waits_in_place(&self, wait: Duration) -> bool;
}

/// The embedded runtime's flow control: buckets, circuits and concurrency keys in this
/// process's memory.
#[derive(Default)]
pub struct Local {
    tats: Mutex<HashMap<String, u64>>,
    open: Mutex<HashMap<String, Millis>>,
    keys: Mutex<HashMap<String, std::collections::BTreeSet<String>>>,
    /// Per key, the rank of the most urgent holder refused lately, and until when it holds
    /// precedence.
    waiting: Mutex<HashMap<String, (u8, Millis)>>,
}

/// How long a refused holder's precedence on a concurrency key lasts: a few of the waits between
/// its attempts (a serverless worker comes back after about a second, an embedded one after
/// 20 ms), so a place freed meanwhile is kept for it, and a run that gave up stops holding
/// others back soon.
pub const PRECEDENCE: Duration = Duration::from_secs(3);

/// Precedence claims kept in memory before the expired ones are dropped.
const CLAIMS_KEPT: usize = 1024;

/// Whether a precedence claim `(rank, until)` on a key refuses a holder of `rank` at `now`.
pub fn yields_to(claim: Option<(u8, Millis)>, rank: u8, now: Millis) -> bool {
    claim.is_some_and(|(r, until)| until > now && r > rank)
}

impl Local {
    /// [`Flow::leave`], without waiting (it never does).
    pub fn leave_now(&self, key: &str, holder: &str) {
        let mut keys = self.keys.lock().expect("flow lock");
        if let Some(h) = keys.get_mut(key) {
            h.remove(holder);
            if h.is_empty() {
                keys.remove(key);
            }
        }
    }
}

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

#[async_trait]
impl Flow for Local {
    async fn take(&self, key: &str, rate: Rate, cost: u64, horizon: Option<Duration>) -> Result<Duration, FlowError> {
        let mut tats = self.tats.lock().expect("flow lock");
        let (tat, due) = reserve(tats.get(key).copied(), now_us(), rate, cost);
        if horizon.is_some_and(|h| due > h) {
            return Err(FlowError::Wait { wait: due });
        }
        tats.insert(key.to_string(), tat);
        Ok(due)
    }

    async fn adjust(&self, key: &str, rate: Rate, delta: i64) {
        let mut tats = self.tats.lock().expect("flow lock");
        let shift = delta.saturating_mul(rate.interval_us() as i64);
        if let Some(t) = tats.get_mut(key) {
            *t = t.saturating_add_signed(shift);
        }
    }

    async fn open_until(&self, key: &str) -> Option<Millis> {
        let now = crate::ports::now_ms();
        self.open.lock().expect("flow lock").get(key).copied().filter(|u| *u > now)
    }

    async fn open(&self, key: &str, until: Millis) {
        self.open.lock().expect("flow lock").insert(key.to_string(), until);
    }

    async fn enter(&self, key: &str, holder: &str, limit: u32, rank: u8) -> Result<bool, FlowError> {
        let now = crate::ports::now_ms();
        let mut keys = self.keys.lock().expect("flow lock");
        let mut waiting = self.waiting.lock().expect("flow lock");
        let h = keys.entry(key.to_string()).or_default();
        if h.contains(holder) || (h.len() < limit as usize && !yields_to(waiting.get(key).copied(), rank, now)) {
            h.insert(holder.to_string());
            return Ok(true);
        }
        if rank > 0 && !yields_to(waiting.get(key).copied(), rank, now) {
            // Claims outlive their keys' use: drop the expired ones before the map grows past
            // what the live keys need (a long-lived process meets many keys).
            if waiting.len() >= CLAIMS_KEPT {
                waiting.retain(|_, (_, until)| *until > now);
            }
            waiting.insert(key.to_string(), (rank, now + PRECEDENCE.as_millis() as Millis));
        }
        Ok(false)
    }

    async fn leave(&self, key: &str, holder: &str) {
        self.leave_now(key, holder);
    }

    async fn holders(&self, key: &str) -> Vec<String> {
        self.keys.lock().expect("flow lock").get(key).map(|h| h.iter().cloned().collect()).unwrap_or_default()
    }

    fn waits_in_place(&self, _wait: Duration) -> bool {
        true
    }
}

/// The flow control of this process (embedded runs, and workers without a shared one): one
/// per process, so every run and worker in it shares its concurrency keys.
pub fn process_local() -> std::sync::Arc<Local> {
    static LOCAL: std::sync::OnceLock<std::sync::Arc<Local>> = std::sync::OnceLock::new();
    LOCAL.get_or_init(Default::default).clone()
}

/// Holds a concurrency key of a [`Local`] flow until dropped (an attempt aborted while it
/// runs leaves its key too).
pub struct KeyGuard {
    pub flow: std::sync::Arc<Local>,
    pub key: String,
    pub holder: String,
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        self.flow.leave_now(&self.key, &self.holder);
    }
}

/// Requests and tokens per minute of one provider, model or key (`limits:` in the config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens (prompt and answer) per minute.
    pub tpm: Option<u64>,
    /// Requests (and a tenth of `tpm` tokens) that may go at once; default a tenth of `rpm`.
    pub burst: Option<u64>,
}

impl Limit {
    pub fn requests(&self) -> Option<Rate> {
        self.rpm.map(|n| match self.burst {
            Some(b) => Rate { per_minute: n.max(1), burst: b.clamp(1, n.max(1)) },
            None => Rate::per_minute(n),
        })
    }

    pub fn tokens(&self) -> Option<Rate> {
        self.tpm.map(Rate::per_minute)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// When calls are made by callers that ask every `every_us` for `secs` seconds and, once
    /// they hold a reservation, call when it is due (then ask again).
    fn calls(rate: Rate, every_us: u64, secs: u64) -> Vec<u64> {
        let (mut tat, mut held, mut at) = (None, None::<u64>, Vec::new());
        let mut now = 1_000_000_000;
        let end = now + secs * 1_000_000;
        while now < end {
            match held {
                Some(due) if due <= now => {
                    at.push(now);
                    held = None;
                }
                Some(_) => {}
                None => {
                    let (t, due) = reserve(tat, now, rate, 1);
                    tat = Some(t);
                    if due.is_zero() {
                        at.push(now);
                    } else {
                        held = Some(now + due.as_micros() as u64);
                    }
                }
            }
            now += every_us;
        }
        at
    }

    #[test]
    fn no_sixty_second_window_holds_more_than_the_rate() {
        for rate in [Rate::per_minute(60), Rate { per_minute: 60, burst: 20 }, Rate::per_minute(1000)] {
            let at = calls(rate, 7_000, 300);
            let most = at.iter().map(|t| at.iter().filter(|u| **u >= *t && **u < t + 60_000_000).count()).max();
            assert!(most.unwrap() as u64 <= rate.per_minute, "{rate:?}: {most:?}");
            // And the rate is used: over five minutes, at least 4x the per-minute figure.
            assert!(at.len() as u64 >= 4 * (rate.per_minute - rate.burst), "{rate:?}: {}", at.len());
        }
    }

    #[test]
    fn reservations_queue_callers_behind_each_other() {
        let rate = Rate { per_minute: 60, burst: 2 };
        let now = 5_000_000;
        let mut tat = None;
        let mut dues = Vec::new();
        for _ in 0..6 {
            let (t, due) = reserve(tat, now, rate, 1);
            tat = Some(t);
            dues.push(due.as_micros() as u64);
        }
        let i = rate.interval_us();
        assert_eq!(dues, vec![0, 0, i, 2 * i, 3 * i, 4 * i], "the burst now, then one interval apart");
        // 10 cells at once, over the burst of 2: due when the bucket is idle.
        assert_eq!(reserve(None, now, rate, 10).1, Duration::ZERO);
        let busy = reserve(tat, now, rate, 10).1;
        assert_eq!(busy, Duration::from_micros(tat.unwrap() - now));
    }

    #[tokio::test]
    async fn the_local_flow_shares_buckets_and_circuits_in_the_process() {
        let f = Local::default();
        let rate = Rate { per_minute: 60, burst: 3 };
        for _ in 0..3 {
            assert_eq!(f.take("openai/gpt", rate, 1, None).await, Ok(Duration::ZERO));
        }
        // Priorities: a low one takes only what is free now, a normal one what is due within
        // two seconds, a high one reserves however far ahead; refusals take nothing.
        let fast = Rate { per_minute: 600, burst: 3 };
        for _ in 0..3 {
            assert_eq!(f.take("fast", fast, 1, None).await, Ok(Duration::ZERO));
        }
        let low = llmo_core::model::Priority::Low.horizon();
        assert!(matches!(f.take("fast", fast, 1, low).await, Err(FlowError::Wait { .. })));
        let high = f.take("fast", fast, 1, None).await.unwrap();
        assert!(high > Duration::ZERO && high <= Duration::from_micros(fast.interval_us()), "{high:?}");
        let normal = llmo_core::model::Priority::Normal.horizon();
        assert!(f.take("fast", fast, 1, normal).await.is_ok(), "due in two intervals (< 2 s)");
        for _ in 0..25 {
            f.take("fast", fast, 1, None).await.unwrap();
        }
        let Err(FlowError::Wait { wait }) = f.take("fast", fast, 1, normal).await else {
            panic!("a normal call does not reserve beyond two seconds")
        };
        assert!(wait > Duration::from_secs(2), "{wait:?}");
        assert!(f.take("fast", fast, 1, None).await.unwrap() > Duration::from_secs(2), "a high one does");
        assert_eq!(f.take("other", rate, 1, None).await, Ok(Duration::ZERO));
        // Giving back cells makes room now again.
        f.adjust("openai/gpt", rate, -3).await;
        assert_eq!(f.take("openai/gpt", rate, 1, low).await, Ok(Duration::ZERO));
        assert_eq!(f.open_until("openai").await, None);
        f.open("openai", crate::ports::now_ms() + 10_000).await;
        assert!(f.open_until("openai").await.is_some());
        f.open("openai", crate::ports::now_ms() - 1).await;
        assert_eq!(f.open_until("openai").await, None, "expired");
        // Concurrency keys: two holders at most, re-entering is idempotent.
        assert_eq!(f.enter("acme", "r1", 2, 0).await, Ok(true));
        assert_eq!(f.enter("acme", "r1", 2, 0).await, Ok(true));
        assert_eq!(f.enter("acme", "r2", 2, 0).await, Ok(true));
        assert_eq!(f.enter("acme", "r3", 2, 0).await, Ok(false));
        assert_eq!(f.enter("other", "r3", 2, 0).await, Ok(true));
        f.leave("acme", "r1").await;
        assert_eq!(f.enter("acme", "r3", 2, 0).await, Ok(true));
        assert_eq!(f.holders("acme").await, vec!["r2".to_string(), "r3".to_string()]);
        // Priority: a high run refused claims the next free place; a normal run is refused it
        // while the claim lasts, the high one takes it, a claim never holds back its own rank.
        assert_eq!(f.enter("acme", "urgent", 2, 2).await, Ok(false));
        f.leave("acme", "r2").await;
        assert_eq!(f.enter("acme", "later", 2, 1).await, Ok(false), "yields to the waiting high run");
        assert_eq!(f.enter("acme", "urgent", 2, 2).await, Ok(true));
        f.leave("acme", "r3").await;
        assert_eq!(f.enter("acme", "urgent-2", 2, 2).await, Ok(true), "same rank: not held back");
        f.leave("acme", "urgent-2").await;
        assert_eq!(f.enter("acme", "later", 2, 1).await, Ok(false), "still within the claim");
        // Expired claims are dropped once many keys have had one; live ones stay.
        let g = Local::default();
        g.waiting.lock().unwrap().extend((0..super::CLAIMS_KEPT).map(|i| (format!("old{i}"), (2, 1))));
        g.waiting.lock().unwrap().insert("live".into(), (2, u64::MAX));
        assert_eq!(g.enter("k", "a", 0, 1).await, Ok(false));
        let kept = g.waiting.lock().unwrap();
        assert_eq!((kept.len(), kept.contains_key("live"), kept.contains_key("k")), (2, true, true));
        drop(kept);
        assert!(super::yields_to(Some((2, 1_000)), 1, 999));
        assert!(!super::yields_to(Some((2, 1_000)), 1, 1_000), "expired");
        assert!(!super::yields_to(Some((1, 1_000)), 1, 0));
    }
}
