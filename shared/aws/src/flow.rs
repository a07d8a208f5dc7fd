//! Fleet-wide flow control on DynamoDB ([`llmo_runtime::flow::Flow`]): every worker of a
//! deployment shares its rate limits and open circuits through items of the run table.
//!
//! | item | `pk` | `sk` | holds |
//! | --- | --- | --- | --- |
//! | bucket | `FLOW#<provider[/model]@key>#requests` (or `#tokens`) | `GCRA` | `tat`: the bucket's theoretical arrival time (µs since the epoch) |
//! | circuit | `FLOW#<provider>` | `OPEN` | `until`: when the circuit closes (ms since the epoch) |
//! | concurrency key | `FLOW#<key>` | `HOLDERS` | `h`: the set of holders (runs or attempts) |
//!
//! Entering a key is one conditional `UpdateItem` (`ADD h :me` if the set has fewer than the
//! limit, or already holds `:me`), leaving one `DELETE h :me`: no read first, and two workers
//! entering at once cannot both take the last place.
//!
//! Taking cells (reserving them, maybe for later) reads the bucket (consistent) and writes its
//! new TAT under the condition that it is still the one read; a lost write reads again (each
//! is counted as a lost write). Both
//! items expire a day after their last write. A circuit is read at most once a second per
//! process, so a circuit one worker opens is seen by every other within a second.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity};
use llmo_core::engine::Millis;
use llmo_runtime::flow::{Flow, FlowError, Rate, reserve};

use crate::config::Aws;
use crate::dynamo::{n, s};

/// Waits shorter than this are slept through in the worker (cheaper than a queue round trip).
pub const WAIT_IN_PLACE: Duration = Duration::from_millis(250);
/// How long a circuit's state is trusted before it is read again.
const CIRCUIT_FRESH: Duration = Duration::from_secs(1);
/// Lost writes on one bucket before the call is deferred instead.
const MAX_LOST: u32 = 6;

pub struct DynamoFlow {
    aws: Aws,
    circuits: Mutex<HashMap<String, (Instant, Option<Millis>)>>,
}

fn io(e: impl std::fmt::Display) -> FlowError {
    FlowError::Io(e.to_string())
}

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

impl DynamoFlow {
    /// An update of the flow item `FLOW#<key>` / `sk`.
    fn update(
        &self,
        key: &str,
        sk: &str,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.aws.dynamodb.update_item().table_name(&self.aws.table).key("pk", s(format!("FLOW#{key}"))).key("sk", s(sk))
    }

    /// A refused holder of `rank` claims precedence on `key` for `PRECEDENCE`, unless a more
    /// urgent claim stands (best effort: a lost claim only loses the precedence).
    async fn claim(&self, key: &str, rank: u8, now: Millis) {
        let until = now + llmo_runtime::flow::PRECEDENCE.as_millis() as Millis;
        let r = self
            .update(key, "HOLDERS")
            .update_expression("SET wr = :rank, wu = :until")
            .condition_expression("attribute_not_exists(wu) OR wu <= :now OR wr <= :rank")
            .expression_attribute_values(":rank", n(rank))
            .expression_attribute_values(":until", n(until))
            .expression_attribute_values(":now", n(now))
            .send()
            .await;
        self.aws.meter.add_wru(1.0);
        if let Err(e) = r
            && !e.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception())
        {
            tracing::warn!(key, error = %aws_sdk_dynamodb::error::DisplayErrorContext(e), "concurrency key precedence not claimed");
        }
    }
    pub fn new(aws: Aws) -> Self {
        DynamoFlow { aws, circuits: Mutex::default() }
    }

    fn expires(&self) -> u64 {
        llmo_runtime::ports::now_ms() / 1000 + 86_400
    }

    /// One item of the flow (`FLOW#<key>`, `sk`), read consistently (one RRU, metered).
    async fn get(&self, key: &str, sk: &str) -> Result<Option<HashMap<String, AttributeValue>>, FlowError> {
        let out = self
            .aws
            .dynamodb
            .get_item()
            .table_name(&self.aws.table)
            .key("pk", s(format!("FLOW#{key}")))
            .key("sk", s(sk))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(|e| io(aws_sdk_dynamodb::error::DisplayErrorContext(e)))?;
        self.aws.meter.add_rru(out.consumed_capacity().and_then(|c| c.capacity_units()).unwrap_or(1.0));
        Ok(out.item)
    }

    /// A number attribute of an item.
    fn number<T: std::str::FromStr>(item: &HashMap<String, AttributeValue>, name: &str) -> Option<T> {
        item.get(name).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok())
    }
}

#[async_trait]
impl Flow for DynamoFlow {
    async fn take(&self, key: &str, rate: Rate, cost: u64, horizon: Option<Duration>) -> Result<Duration, FlowError> {
        let pk = format!("FLOW#{key}");
        for _ in 0..MAX_LOST {
            let old = self.get(key, "GCRA").await?.and_then(|i| Self::number(&i, "tat"));
            let (new, due) = reserve(old, now_us(), rate, cost);
            if horizon.is_some_and(|h| due > h) {
                return Err(FlowError::Wait { wait: due });
            }
            let mut put = self
                .aws
                .dynamodb
                .put_item()
                .table_name(&self.aws.table)
                .item("pk", s(&pk))
                .item("sk", s("GCRA"))
                .item("tat", n(new))
                .item("expires_at", n(self.expires()))
                .return_consumed_capacity(ReturnConsumedCapacity::Total);
            put = match old {
                Some(t) => put.condition_expression("tat = :old").expression_attribute_values(":old", n(t)),
                None => put.condition_expression("attribute_not_exists(tat)"),
            };
            self.aws.meter.add_wru(1.0);
            match put.send().await {
                Ok(_) => return Ok(due),
                Err(e) if e.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => {
                    self.aws.meter.lost_writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => return Err(io(aws_sdk_dynamodb::error::DisplayErrorContext(e))),
            }
        }
        // Many workers at once on this bucket: come back a little later.
        Err(FlowError::Wait { wait: Duration::from_millis(100) })
    }

    async fn adjust(&self, key: &str, rate: Rate, delta: i64) {
        if delta == 0 {
            return;
        }
        let shift = delta.saturating_mul(rate.interval_us() as i64);
        let r = self
            .update(key, "GCRA")
            .update_expression("ADD tat :shift")
            .condition_expression("attribute_exists(tat)")
            .expression_attribute_values(":shift", n(shift))
            .send()
            .await;
        self.aws.meter.add_wru(1.0);
        if let Err(e) = r
            && !e.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception())
        {
            tracing::warn!(bucket = key, error = %aws_sdk_dynamodb::error::DisplayErrorContext(e), "rate limit not adjusted");
        }
    }

    async fn open_until(&self, key: &str) -> Option<Millis> {
        let now = llmo_runtime::ports::now_ms();
        if let Some((at, until)) = self.circuits.lock().expect("circuits").get(key).copied()
            && at.elapsed() < CIRCUIT_FRESH
        {
            return until.filter(|u| *u > now);
        }
        let until = match self.get(key, "OPEN").await {
            Ok(item) => item.and_then(|i| Self::number(&i, "until")),
            Err(e) => {
                tracing::warn!(circuit = key, error = %e, "shared circuit not read");
                None
            }
        };
        self.circuits.lock().expect("circuits").insert(key.to_string(), (Instant::now(), until));
        until.filter(|u| *u > now)
    }

    async fn open(&self, key: &str, until: Millis) {
        let r = self
            .aws
            .dynamodb
            .put_item()
            .table_name(&self.aws.table)
            .item("pk", s(format!("FLOW#{key}")))
            .item("sk", s("OPEN"))
            .item("until", n(until))
            .item("expires_at", n(self.expires()))
            .send()
            .await;
        self.aws.meter.add_wru(1.0);
        if let Err(e) = r {
            tracing::warn!(circuit = key, error = %aws_sdk_dynamodb::error::DisplayErrorContext(e), "shared circuit not opened");
        }
        self.circuits.lock().expect("circuits").insert(key.to_string(), (Instant::now(), Some(until)));
    }

    async fn enter(&self, key: &str, holder: &str, limit: u32, rank: u8) -> Result<bool, FlowError> {
        // `wr`/`wu`: the rank of the most urgent holder refused lately and until when (ms) its
        // precedence lasts (`Flow::enter`).
        let now = llmo_runtime::ports::now_ms();
        let r = self
            .update(key, "HOLDERS")
            .update_expression("ADD h :me SET expires_at = :exp")
            .condition_expression(
                "contains(h, :holder) OR ((attribute_not_exists(h) OR size(h) < :limit) \
                 AND (attribute_not_exists(wu) OR wu <= :now OR wr <= :rank))",
            )
            .expression_attribute_values(":me", AttributeValue::Ss(vec![holder.to_string()]))
            .expression_attribute_values(":holder", s(holder))
            .expression_attribute_values(":limit", n(limit))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":rank", n(rank))
            .expression_attribute_values(":exp", n(self.expires()))
            .send()
            .await;
        self.aws.meter.add_wru(1.0);
        match r {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => {
                self.aws.meter.lost_writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if rank > 0 {
                    self.claim(key, rank, now).await;
                }
                Ok(false)
            }
            Err(e) => Err(io(aws_sdk_dynamodb::error::DisplayErrorContext(e))),
        }
    }

    async fn leave(&self, key: &str, holder: &str) {
        let r = self
            .update(key, "HOLDERS")
            .update_expression("DELETE h :me")
            .expression_attribute_values(":me", AttributeValue::Ss(vec![holder.to_string()]))
            .send()
            .await;
        self.aws.meter.add_wru(1.0);
        if let Err(e) = r {
            tracing::warn!(key, holder, error = %aws_sdk_dynamodb::error::DisplayErrorContext(e), "concurrency key not left (it is cleared when found stale)");
        }
    }

    async fn holders(&self, key: &str) -> Vec<String> {
        match self.get(key, "HOLDERS").await {
            Ok(item) => item.and_then(|i| i.get("h").and_then(|v| v.as_ss().ok()).cloned()).unwrap_or_default(),
            Err(e) => {
                tracing::warn!(key, error = %e, "concurrency key not read");
                Vec::new()
            }
        }
    }

    fn waits_in_place(&self, wait: Duration) -> bool {
        wait <= WAIT_IN_PLACE
    }
}
