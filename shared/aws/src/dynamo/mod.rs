//! The run store on DynamoDB (one table) with S3 for snapshots and oversized items.
//!
//! Items (partition key `pk`, sort key `sk`, both strings):
//!
//! | item | `pk` | `sk` | holds |
//! | --- | --- | --- | --- |
//! | run | `RUN#<id>` | `META` | workflow, status, cost, `created`, GSI keys, `expires_at` (small: its summary is updated when the status changes, and an update is billed by the item's whole size) |
//! | source | `RUN#<id>` | `SOURCE` | the workflow text (`source`) and the initial state (`init`) (written once; runs stored before it existed keep them in `META`) |
//!
//! Payloads (`t`, `source`, `init`) over [`DEFLATE_BYTES`] are stored deflated as binary
//! `<name>z`; over the item limit, in S3 with the key in `<name>_ref`.
//! | log | `RUN#<id>` | `LOG#<first version, 20 digits>` | `last` version, the transitions (`t`) |
//! | snapshot | `RUN#<id>` | `SNAP` | `version`, S3 key of the state at that version |
//! | start key | `IDEM#<key>` | `IDEM` | the run a start request with that idempotency key created |
//! | waiter | `WAIT#<tenant>` | `<kind>#<event>#<key>#<since>#<run>#<task>#<item>#<attempt>` | a unit waiting for an approval or an event (`w`) |
//!
//! An append is one `PutItem` of a log item under `attribute_not_exists(sk)`: two workers that
//! computed transitions from the same version write the same key and exactly one succeeds.
//! Log items always start right after the end of another (a writer only extends a state it
//! read whole), so "no item starts at `expected + 1`" is "the stored version is `expected`".
//! When a run's status changes the log item and the run item move together in one
//! `TransactWriteItems`.
//!
//! GSIs (keys projected with the summary fields): `by_time` (`all` = `RUNS#<shard>`),
//! `by_workflow` (`wf_key` = `<workflow>#<shard>`), `by_status` (`status_key` =
//! `<status>#<shard>`), each sorted by `created` = `<start ms, 13 digits>#<run id>`, newest
//! first. The shard (0–7, from a hash of the run id) spreads each listing over eight partition
//! keys, so no GSI partition takes every run's writes; a listing queries the eight and merges
//! them (see [`DynamoStore::list_page`]). `expires_at` is the TTL attribute: every item of a
//! run (run, start key, log, snapshot) carries the same one, its creation plus the retention
//! ([`crate::config::Lifetime`]); runs time out before that (`RunState::max_age_ms`), so no
//! item of a live run expires, and the bucket's lifecycle keeps its objects as long.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConsumedCapacity, Put, ReturnConsumedCapacity, TransactWriteItem, Update,
};
use llmo_core::engine::{RunState, RunStatus};
use llmo_runtime::store::{Created, Error, RunStore, RunSummary, StartKey, StoredRun, Transition, Waiter};
use sha2::{Digest, Sha256};

use llmo_runtime::ports::BlobStore;

use crate::audit::{Audit, Record};
use crate::blobs::S3Blobs;
use crate::config::Aws;

mod listing;
mod run_store;

use listing::tenant_key;
pub use listing::{ListFilter, LiveRun, Page};

/// Items larger than this keep their payload in S3 (DynamoDB's item limit is 400 KB).
pub const ITEM_SPILL_BYTES: usize = 300 * 1024;
/// A snapshot is written every this many versions (and when a run ends).
pub const SNAPSHOT_EVERY: u64 = 500;

pub(crate) type Item = HashMap<String, AttributeValue>;

/// Payloads (transitions, workflow text, initial state) longer than this are stored deflated:
/// a write is billed per KB, and such JSON (the same keys over and over) shrinks several times.
pub const DEFLATE_BYTES: usize = 700;
/// The most a stored log item inflates to (a corrupt or hostile item cannot exhaust memory).
const INFLATED_MAX: u64 = 64 * 1024 * 1024;

fn deflate(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(bytes).expect("writing to memory");
    z.finish().expect("writing to memory")
}

fn inflate(bytes: &[u8]) -> Result<String, Error> {
    use std::io::Read;
    let mut out = String::new();
    flate2::read::DeflateDecoder::new(bytes)
        .take(INFLATED_MAX + 1)
        .read_to_string(&mut out)
        .map_err(|e| other(format!("a deflated log item does not inflate: {e}")))?;
    if out.len() as u64 > INFLATED_MAX {
        return Err(other("a deflated log item inflates past 64 MiB"));
    }
    Ok(out)
}

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}
pub(crate) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}
pub(crate) fn get_s<'a>(item: &'a Item, k: &str) -> Option<&'a str> {
    item.get(k).and_then(|v| v.as_s().ok()).map(String::as_str)
}
pub(crate) fn get_n(item: &Item, k: &str) -> Option<f64> {
    item.get(k).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok())
}
fn run_pk(run_id: &str) -> String {
    format!("RUN#{run_id}")
}
fn log_sk(first: u64) -> String {
    format!("LOG#{first:020}")
}
fn other(e: impl std::fmt::Display) -> Error {
    Error::Other(e.to_string())
}
pub(crate) fn err<E>(e: aws_sdk_dynamodb::error::SdkError<E>) -> Error
where
    E: std::error::Error + std::fmt::Debug + 'static,
{
    Error::Other(format!("dynamodb: {}", aws_sdk_dynamodb::error::DisplayErrorContext(e)))
}

/// The size AWS bills an item by: attribute names plus values (close enough for strings and
/// numbers, which is all this store writes).
fn item_bytes(item: &Item) -> usize {
    item.iter()
        .map(|(k, v)| {
            k.len()
                + match v {
                    AttributeValue::S(x) => x.len(),
                    AttributeValue::N(x) => x.len().div_ceil(2) + 1,
                    AttributeValue::B(x) => x.as_ref().len(),
                    _ => 8,
                }
        })
        .sum()
}
fn wru_of(item: &Item) -> f64 {
    item_bytes(item).div_ceil(1024).max(1) as f64
}

/// Partition keys each listing GSI spreads runs over (see the module's documentation).
const LIST_SHARDS: u32 = 8;

/// A run's listing shard, from its id.
fn list_shard(run_id: &str) -> u32 {
    let h = Sha256::digest(run_id.as_bytes());
    u32::from_be_bytes([h[0], h[1], h[2], h[3]]) % LIST_SHARDS
}

pub struct DynamoStore {
    pub(crate) aws: Aws,
    blobs: S3Blobs,
    audit: Audit,
    lifetime: crate::config::Lifetime,
}

impl DynamoStore {
    pub fn new(aws: Aws) -> Self {
        DynamoStore { blobs: S3Blobs { aws: aws.clone() }, audit: Audit::new(&aws), lifetime: aws.lifetime, aws }
    }

    /// Charges a write what the service reported or what the item's size bills on AWS,
    /// whichever is more (emulators report one unit per write whatever its size).
    fn charge(&self, reported: f64, by_size: f64) {
        self.aws.meter.add_wru(reported.max(by_size));
    }

    fn meter_capacity(&self, c: Option<&ConsumedCapacity>, write: bool) {
        if let Some(units) = c.and_then(|c| c.capacity_units()) {
            if write { self.aws.meter.add_wru(units) } else { self.aws.meter.add_rru(units) }
        }
    }

    async fn put_blob(&self, key: &str, body: Vec<u8>) -> Result<(), Error> {
        self.blobs.put(key, body).await.map_err(|e| Error::Other(e.0))
    }

    async fn get_blob(&self, key: &str) -> Result<Vec<u8>, Error> {
        self.blobs
            .get(key)
            .await
            .map_err(|e| Error::Other(e.0))?
            .ok_or_else(|| Error::Other(format!("s3: no object {key}")))
    }

    /// JSON payloads inline (deflated, as binary `<inline>z`, when longer than
    /// [`DEFLATE_BYTES`]: writes are billed per KB), or in S3 (content-addressed) when the item
    /// would be too big: the whole item is measured, and the largest payloads move to S3 until
    /// it fits in [`ITEM_SPILL_BYTES`] (DynamoDB's limit is 400 KB for the item as a whole, not
    /// per attribute). Each payload is `(what, json, inline attribute, spilled attribute)`.
    pub(crate) async fn payloads(
        &self,
        dir: &str,
        item: &mut Item,
        parts: Vec<(&str, String, &str, &str)>,
    ) -> Result<(), Error> {
        let packed: Vec<Option<Vec<u8>>> =
            parts.iter().map(|p| (p.1.len() > DEFLATE_BYTES).then(|| deflate(p.1.as_bytes()))).collect();
        let sizes: Vec<(usize, usize)> =
            parts.iter().zip(&packed).map(|(p, z)| (p.2.len() + 1, z.as_ref().map_or(p.1.len(), Vec::len))).collect();
        let spilled = spill_plan(item_bytes(item), &sizes);
        for (((what, json, inline, spilled_attr), spill), z) in parts.into_iter().zip(spilled).zip(packed) {
            if spill {
                let hash = hex(&Sha256::digest(json.as_bytes()));
                let key = format!("{dir}/{what}-{hash}.json");
                item.insert(spilled_attr.into(), s(&key));
                self.put_blob(&key, json.into_bytes()).await?;
            } else if let Some(z) = z {
                item.insert(format!("{inline}z"), AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(z)));
            } else {
                item.insert(inline.into(), s(json));
            }
        }
        Ok(())
    }

    pub(crate) async fn read_payload(&self, item: &Item, inline: &str, spilled: &str) -> Result<String, Error> {
        if let Some(AttributeValue::B(z)) = item.get(&format!("{inline}z")) {
            return inflate(z.as_ref());
        }
        if let Some(v) = get_s(item, inline) {
            return Ok(v.to_string());
        }
        let key =
            get_s(item, spilled).ok_or_else(|| Error::Other(format!("item has neither `{inline}` nor `{spilled}`")))?;
        String::from_utf8(self.get_blob(key).await?).map_err(other)
    }

    async fn get(&self, pk: String, sk: &str) -> Result<Option<Item>, Error> {
        let out = self
            .aws
            .dynamodb
            .get_item()
            .table_name(&self.aws.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(err)?;
        self.meter_capacity(out.consumed_capacity(), false);
        Ok(out.item)
    }

    /// Every item `q` gives, page after page (each page's capacity metered), stopping once
    /// more than `limit` have been read.
    async fn query_items(&self, q: QueryFluentBuilder, limit: usize) -> Result<Vec<Item>, Error> {
        let mut pages = q.return_consumed_capacity(ReturnConsumedCapacity::Total).into_paginator().send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(err)?;
            self.meter_capacity(page.consumed_capacity(), false);
            out.extend(page.items.unwrap_or_default());
            if out.len() > limit {
                break;
            }
        }
        Ok(out)
    }

    /// Log items of a run with `sk` after `after`, oldest first.
    async fn log_items(&self, run_id: &str, after_version: u64) -> Result<Vec<Transition>, Error> {
        let q = self
            .aws
            .dynamodb
            .query()
            .table_name(&self.aws.table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
            .expression_attribute_values(":pk", s(run_pk(run_id)))
            .expression_attribute_values(":from", s(log_sk(after_version + 1)))
            .expression_attribute_values(":to", s("LOG#~"))
            .consistent_read(true);
        let mut out = Vec::new();
        for item in self.query_items(q, usize::MAX).await? {
            let json = self.read_payload(&item, "t", "t_ref").await?;
            let ts: Vec<Transition> = serde_json::from_str(&json)?;
            // A snapshot may fall inside an item: keep only what follows it.
            out.extend(ts.into_iter().filter(|t| t.version > after_version));
        }
        Ok(out)
    }

    fn summary(item: &Item) -> RunSummary {
        RunSummary {
            run_id: get_s(item, "run_id").unwrap_or_default().to_string(),
            workflow: get_s(item, "workflow").unwrap_or_default().to_string(),
            status: get_s(item, "status").unwrap_or_default().to_string(),
            version: get_n(item, "version").unwrap_or(0.0) as u64,
            started_at: get_n(item, "started_at").map(|v| v as u64),
            cost_usd: get_n(item, "cost_usd").unwrap_or(0.0),
            tokens: get_n(item, "tokens").unwrap_or(0.0) as u64,
        }
    }

    /// The state a run was created with (version 0), for audits that replay its whole log.
    pub async fn initial_state(&self, run_id: &str) -> Result<Option<RunState>, Error> {
        let items = self.head_items(run_id).await?;
        let Some(src) = Self::source_item(&items) else { return Ok(None) };
        Ok(Some(serde_json::from_str(&self.read_payload(src, "init", "init_ref").await?)?))
    }

    /// Stores a new run and, with a key, the key's item in the same transaction (both
    /// conditional). A taken key writes nothing and returns the run it started.
    pub async fn create_once(
        &self,
        key: Option<&StartKey>,
        workflow: &str,
        source_name: &str,
        source: &str,
        initial: &RunState,
    ) -> Result<Created, Error> {
        let (meta, src) = self.meta_item(workflow, source_name, source, initial).await?;
        let mut wru = wru_of(&meta) + wru_of(&src);
        // A new item: its key must not exist yet.
        let put_new = |item: Item| -> Result<TransactWriteItem, Error> {
            let put = Put::builder()
                .table_name(&self.aws.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(other)?;
            Ok(TransactWriteItem::builder().put(put).build())
        };
        let mut tx = vec![
            put_new(meta)?,
            TransactWriteItem::builder()
                .put(Put::builder().table_name(&self.aws.table).set_item(Some(src)).build().map_err(other)?)
                .build(),
        ];
        if let Some(k) = key {
            let idem: Item = [
                ("pk".to_string(), s(format!("IDEM#{}", k.id))),
                ("sk".to_string(), s("IDEM")),
                ("run_id".to_string(), s(initial.run_id.clone())),
                ("fingerprint".to_string(), s(k.fingerprint.clone())),
                ("expires_at".to_string(), n(self.expires_at(initial))),
            ]
            .into();
            wru += wru_of(&idem);
            tx.push(put_new(idem)?);
        }
        let r = self
            .aws
            .dynamodb
            .transact_write_items()
            .set_transact_items(Some(tx))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        match r {
            Ok(out) => {
                self.charge(out.consumed_capacity().iter().filter_map(|c| c.capacity_units()).sum(), 2.0 * wru);
                Ok(Created::New)
            }
            Err(e) => {
                let cancelled = e.as_service_error().is_some_and(|e| e.is_transaction_canceled_exception());
                if !cancelled {
                    return Err(err(e));
                }
                // Transactions bill twice the item size, also when cancelled.
                self.aws.meter.add_wru(2.0 * wru);
                self.aws.meter.lost_writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(k) = key
                    && let Some(item) = self.get(format!("IDEM#{}", k.id), "IDEM").await?
                {
                    return Ok(Created::Existing {
                        run_id: get_s(&item, "run_id").unwrap_or_default().to_string(),
                        fingerprint: get_s(&item, "fingerprint").unwrap_or_default().to_string(),
                    });
                }
                Err(Error::Exists(initial.run_id.clone()))
            }
        }
    }

    /// The tenant a run belongs to (`Some("-")` for a run without one), `None` if there is
    /// no such run.
    pub async fn tenant_of(&self, run_id: &str) -> Result<Option<String>, Error> {
        let out = self
            .aws
            .dynamodb
            .get_item()
            .table_name(&self.aws.table)
            .key("pk", s(run_pk(run_id)))
            .key("sk", s("META"))
            .projection_expression("tenant")
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(err)?;
        self.meter_capacity(out.consumed_capacity(), false);
        Ok(out.item.map(|i| get_s(&i, "tenant").unwrap_or("-").to_string()))
    }

    /// The run item and the source item of a new run.
    async fn meta_item(
        &self,
        workflow: &str,
        source_name: &str,
        source: &str,
        initial: &RunState,
    ) -> Result<(Item, Item), Error> {
        let id = &initial.run_id;
        // When the run was created: the time its id carries (every id `Starter` makes has it),
        // as every run index lists by.
        let created = format!("{:013}#{id}", created_ms(id).unwrap_or_else(llmo_runtime::ports::now_ms));
        let shard = list_shard(id);
        let t = tenant_key(initial.tenant.as_deref());
        let item: Item = [
            ("pk".to_string(), s(run_pk(id))),
            ("sk".to_string(), s("META")),
            ("run_id".to_string(), s(id.clone())),
            ("workflow".to_string(), s(workflow)),
            ("source_name".to_string(), s(source_name)),
            ("status".to_string(), s(initial.status.as_str())),
            ("version".to_string(), n(0)),
            ("cost_usd".to_string(), n(0)),
            ("created".to_string(), s(created)),
            ("tenant".to_string(), s(t)),
            ("expires_at".to_string(), n(self.expires_at(initial))),
            ("live_key".to_string(), s(format!("LIVE#{shard}"))),
            ("all".to_string(), s(format!("{t}#RUNS#{shard}"))),
            ("wf_key".to_string(), s(format!("{t}#{workflow}#{shard}"))),
            ("status_key".to_string(), s(format!("{t}#{}#{shard}", initial.status.as_str()))),
        ]
        .into();
        let mut src: Item = [
            ("pk".to_string(), s(run_pk(id))),
            ("sk".to_string(), s("SOURCE")),
            ("expires_at".to_string(), n(self.expires_at(initial))),
        ]
        .into();
        let parts = vec![
            ("source", source.to_string(), "source", "source_ref"),
            ("initial", serde_json::to_string(initial)?, "init", "init_ref"),
        ];
        self.payloads(&format!("runs/{id}"), &mut src, parts).await?;
        Ok((item, src))
    }

    /// A run's `META`, `SNAP` and `SOURCE` items (whichever exist), in one query: they are
    /// the sort keys from `META` on.
    async fn head_items(&self, run_id: &str) -> Result<HashMap<String, Item>, Error> {
        let q = self
            .aws
            .dynamodb
            .query()
            .table_name(&self.aws.table)
            .key_condition_expression("pk = :pk AND sk >= :meta")
            .expression_attribute_values(":pk", s(run_pk(run_id)))
            .expression_attribute_values(":meta", s("META"))
            .consistent_read(true);
        Ok(self
            .query_items(q, 8)
            .await?
            .into_iter()
            .filter_map(|i| Some((get_s(&i, "sk")?.to_string(), i.clone())))
            .collect())
    }

    /// The item holding a run's source and initial state: `SOURCE`, or `META` for runs
    /// stored before `SOURCE` items existed.
    fn source_item(items: &HashMap<String, Item>) -> Option<&Item> {
        items
            .get("SOURCE")
            .or_else(|| items.get("META").filter(|m| m.contains_key("source") || m.contains_key("source_ref")))
    }

    /// When every item of the run expires (epoch seconds): its creation (the time in its id,
    /// else its start, else now) plus the lifetime's horizon.
    fn expires_at(&self, st: &RunState) -> u64 {
        let created_ms = created_ms(&st.run_id).or(st.started_at).unwrap_or_else(llmo_runtime::ports::now_ms);
        created_ms / 1000 + self.lifetime.horizon_secs()
    }

    /// The `Update` that brings the run item's summary to `head`.
    fn summary_update(&self, head: &RunState) -> Result<Update, Error> {
        let mut expr = "SET #s = :s, status_key = :sk, version = :v, cost_usd = :c, tokens = :tk".to_string();
        let mut u = Update::builder()
            .table_name(&self.aws.table)
            .key("pk", s(run_pk(&head.run_id)))
            .key("sk", s("META"))
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":s", s(head.status.as_str()))
            .expression_attribute_values(
                ":sk",
                s(format!(
                    "{}#{}#{}",
                    tenant_key(head.tenant.as_deref()),
                    head.status.as_str(),
                    list_shard(&head.run_id)
                )),
            )
            .expression_attribute_values(":v", n(head.version))
            .expression_attribute_values(":c", n(head.cost_usd))
            .expression_attribute_values(":tk", n(head.tokens));
        if let Some(t) = head.started_at {
            expr.push_str(", started_at = :t");
            u = u.expression_attribute_values(":t", n(t));
        }
        if let Some(d) = head.deadline {
            expr.push_str(", deadline = :d");
            u = u.expression_attribute_values(":d", n(d));
        }
        if head.status.is_terminal() {
            // Out of the sweeper's index.
            expr.push_str(" REMOVE live_key");
        } else {
            // In it (again, after a redrive).
            expr.push_str(", live_key = :lk");
            u = u.expression_attribute_values(":lk", s(format!("LIVE#{}", list_shard(&head.run_id))));
        }
        u.update_expression(expr).build().map_err(other)
    }

    /// Writes the final outputs (and error) of an ended run to S3: `runs/<id>/result.json`.
    async fn write_result(&self, st: &RunState) -> Result<(), Error> {
        let body = serde_json::json!({
            "run_id": st.run_id, "status": st.status.as_str(), "outputs": st.outputs,
            "error": st.error, "cost_usd": st.cost_usd, "tokens": st.tokens,
        });
        self.put_blob(&format!("runs/{}/result.json", st.run_id), serde_json::to_vec(&body)?).await
    }
}

/// The creation time a run id carries (`run-<13-digit ms>-<random>`, see
/// `llmo_runtime::start::new_run_id`).
fn created_ms(run_id: &str) -> Option<u64> {
    let ms = run_id.strip_prefix("run-")?.split('-').next()?;
    (ms.len() == 13).then(|| ms.parse().ok()).flatten()
}

/// Which payloads go to S3 so that an item of `fixed` bytes plus the payloads left inline fits
/// in [`ITEM_SPILL_BYTES`]: the largest first, each spilled one leaving a key of about 100
/// bytes.
/// Which payloads (each `(attribute name length, stored size)`) go to S3 so that the item fits.
fn spill_plan(fixed: usize, parts: &[(usize, usize)]) -> Vec<bool> {
    let mut spill = vec![false; parts.len()];
    let mut total = fixed + parts.iter().map(|p| p.0 + p.1).sum::<usize>();
    while total > ITEM_SPILL_BYTES {
        let Some(k) = (0..parts.len()).filter(|&k| !spill[k]).max_by_key(|&k| parts[k].1) else { break };
        spill[k] = true;
        total = total - parts[k].1 + 100;
    }
    spill
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether an append must also update the run item (its status or start time changed).
fn changes_summary(ts: &[Transition], head: &RunState) -> bool {
    use llmo_core::engine::Event;
    head.status != RunStatus::Running || ts.iter().any(|t| matches!(t.event, Event::Start | Event::Redrive { .. }))
}

/// The store as a shared port.
pub fn store(aws: &Aws) -> Arc<dyn RunStore> {
    Arc::new(DynamoStore::new(aws.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_items_deflate_and_inflate_within_bounds() {
        let json =
            serde_json::to_string(&vec![serde_json::json!({"kind": "attempt_finished", "task": 1}); 50]).unwrap();
        let z = deflate(json.as_bytes());
        assert!(z.len() * 5 < json.len(), "{} -> {}", json.len(), z.len());
        assert_eq!(inflate(&z).unwrap(), json);
        assert!(inflate(b"not deflate").is_err());
        let bomb = deflate(&vec![b' '; INFLATED_MAX as usize + 10]);
        assert!(inflate(&bomb).unwrap_err().to_string().contains("64 MiB"));
    }

    #[test]
    fn the_largest_payloads_spill_until_the_whole_item_fits() {
        let p = |n: usize| (1, n);
        // Each fits alone, together they do not: the larger one goes.
        assert_eq!(spill_plan(200, &[p(250 * 1024), p(260 * 1024)]), vec![false, true]);
        assert_eq!(spill_plan(200, &[p(100), p(1000)]), vec![false, false]);
        // One over the limit by itself, and what is left still too big: both go.
        assert_eq!(spill_plan(200, &[p(400 * 1024), p(301 * 1024), p(10)]), vec![true, true, false]);
        // Fixed attributes count too.
        assert_eq!(spill_plan(100 * 1024, &[p(250 * 1024)]), vec![true]);
    }
}
