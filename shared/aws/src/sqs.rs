//! The work queue on SQS.
//!
//! Bodies are the runtime's versioned envelope (`queue::Envelope`). Two cases SQS cannot
//! carry as-is:
//! - a body over [`CLAIM_CHECK_BYTES`] (SQS's limit is 256 KiB on LocalStack, 1 MiB on AWS)
//!   goes to S3 and the message carries `{"v":1,"claim":"<key>"}`;
//! - a delay over SQS's 15 minutes is an EventBridge Scheduler one-shot that sends the message
//!   when it is due ([`crate::config::OneShots`], deployed); without one, it is sent as 15
//!   minutes with a `llmo-not-before` attribute and a receiver that gets it early sends it
//!   again with the rest of the delay.
//!
//! A FIFO queue (its URL ends in `.fifo`: the fold queue) gets each message in the message
//! group of its run and a deduplication id from its body, and no delays (FIFO queues take
//! none per message; nothing is sent there delayed).

use std::collections::HashMap;

use async_trait::async_trait;
use aws_lambda_events::event::sqs::SqsMessage;
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName, SendMessageBatchRequestEntry};
use llmo_core::engine::Millis;
use llmo_runtime::ports::now_ms;
use llmo_runtime::queue::{Delivery, Envelope, Message, Queue, QueueError};
use sha2::{Digest, Sha256};

use crate::config::Aws;

/// Bodies larger than this travel through S3.
pub const CLAIM_CHECK_BYTES: usize = 200 * 1024;
/// SQS's longest `DelaySeconds`.
pub const MAX_DELAY_MS: Millis = 900_000;
/// Most bytes of bodies in one `SendMessageBatch` (SQS allows 1 MiB for the whole request,
/// attributes included; the rest is margin for them).
pub const BATCH_BYTES: usize = 900 * 1024;
pub const NOT_BEFORE: &str = "llmo-not-before";

fn io(e: impl std::fmt::Display) -> QueueError {
    QueueError::Io(e.to_string())
}

/// A received record, decoded.
#[derive(Debug)]
pub enum Decoded {
    Ready(Message),
    /// Not due yet: send again with this much delay left.
    Early {
        body: String,
        left_ms: Millis,
    },
}

pub struct SqsQueue {
    pub aws: Aws,
    pub url: String,
    /// Long-poll wait of `receive`.
    pub wait_secs: i32,
    /// The longest delay SQS holds a message for (`DelaySeconds`, 15 minutes); a longer one is
    /// sent with this delay and an `llmo-not-before` time, and sent again when it arrives early.
    pub max_delay_ms: Millis,
    /// A FIFO queue: messages are grouped by run (see the module).
    pub fifo: bool,
    /// The event source mapping's `MaximumBatchingWindowInSeconds`, as [`crate::local::poll`]
    /// emulates it: after a receive that did not fill the batch, receive again for up to this
    /// long before handing the batch over (0: hand over what one receive gave; Lambda allows
    /// no window on a FIFO queue).
    pub batch_window_secs: i32,
}

impl SqsQueue {
    fn at(aws: Aws, url: String) -> Self {
        let fifo = url.ends_with(".fifo");
        SqsQueue { aws, url, wait_secs: 1, max_delay_ms: MAX_DELAY_MS, fifo, batch_window_secs: 0 }
    }

    pub fn new(aws: Aws) -> Self {
        let url = aws.queue_url.clone();
        Self::at(aws, url)
    }

    pub fn dead_letters(aws: Aws) -> Self {
        let url = aws.dlq_url.clone();
        Self::at(aws, url)
    }

    /// The fold queue, when the deployment has one.
    pub fn folds(aws: Aws) -> Option<Self> {
        let url = aws.fold_url.clone()?;
        Some(Self::at(aws, url))
    }

    /// What the step function consumes: the step queue and the fold queue.
    pub fn step_queues(aws: &Aws) -> Vec<Self> {
        std::iter::once(Self::new(aws.clone())).chain(Self::folds(aws.clone())).collect()
    }

    /// What the dead-letter function consumes: both queues' dead letters.
    pub fn dead_letter_queues(aws: &Aws) -> Vec<Self> {
        let fold = aws.fold_dlq_url.clone().map(|url| Self::at(aws.clone(), url));
        std::iter::once(Self::dead_letters(aws.clone())).chain(fold).collect()
    }

    /// A FIFO send's message group (the run) and deduplication id (a hash of the body).
    fn fifo_ids(&self, body: &str, group: Option<&str>) -> Option<(String, String)> {
        if !self.fifo {
            return None;
        }
        let dedup: String = Sha256::digest(body.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        Some((group.unwrap_or("-").to_string(), dedup))
    }

    /// `body` as this deployment sends it: signed with its queue key ([`crate::mac`]), unless
    /// it already is (a body received and sent on, checked when it was received).
    pub fn signed(&self, body: String) -> String {
        match &self.aws.queue_keys {
            Some(k) if !k.is_signed(&body) => k.sign(&body),
            _ => body,
        }
    }

    /// The body a received message carries once its signature is checked (no keys: as it is).
    async fn verified(&self, body: &str) -> Result<String, QueueError> {
        match &self.aws.queue_keys {
            Some(k) => k.verify(body).await.map_err(|e| QueueError::Forged(e.to_string())),
            None => Ok(body.to_string()),
        }
    }

    /// The body to send for a message: inline, or a claim check (the S3 object signed too).
    pub async fn body(&self, m: &Message) -> Result<String, QueueError> {
        let body = self.signed(Envelope::encode(m));
        if body.len() <= CLAIM_CHECK_BYTES {
            return Ok(body);
        }
        let hash: String = Sha256::digest(body.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        let key = format!("runs/{}/messages/{hash}.json", m.run_id());
        self.aws
            .s3
            .put_object()
            .bucket(&self.aws.bucket)
            .key(&key)
            .body(body.into_bytes().into())
            .send()
            .await
            .map_err(|e| QueueError::Io(format!("s3 put {key}: {}", aws_sdk_s3::error::DisplayErrorContext(e))))?;
        Ok(serde_json::json!({"v": llmo_runtime::queue::SCHEMA_VERSION, "claim": key}).to_string())
    }

    /// Reads a body: checks its signature, follows a claim check (and checks the object's).
    pub async fn open(&self, body: &str) -> Result<Message, QueueError> {
        #[derive(serde::Deserialize)]
        struct Claim {
            claim: String,
        }
        let body = self.verified(body).await?;
        if let Ok(c) = serde_json::from_str::<Claim>(&body) {
            let out = self.aws.s3.get_object().bucket(&self.aws.bucket).key(&c.claim).send().await.map_err(|e| {
                QueueError::Io(format!("s3 get {}: {}", c.claim, aws_sdk_s3::error::DisplayErrorContext(e)))
            })?;
            let bytes = out.body.collect().await.map_err(io)?.into_bytes();
            let text = std::str::from_utf8(&bytes).map_err(|e| QueueError::Malformed(e.to_string()))?;
            return Envelope::decode(&self.verified(text).await?);
        }
        Envelope::decode(&body)
    }

    /// The body of a dead letter as it was sent (its signature checked): what
    /// [`crate::step::DeadLetters`] reads the run it names from.
    pub async fn unsigned(&self, body: &str) -> Result<String, QueueError> {
        self.verified(body).await
    }

    /// Decodes a record as Lambda hands it (or as the local poller builds it).
    pub async fn decode(&self, r: &SqsMessage) -> Result<Decoded, QueueError> {
        let body = r.body.as_deref().ok_or_else(|| QueueError::Malformed("message without a body".into()))?;
        // Checked first: an early message is sent on (and signed) as it is.
        self.verified(body).await?;
        if let Some(at) = r.message_attributes.get(NOT_BEFORE).and_then(|a| a.string_value.as_deref())
            && let Ok(at) = at.parse::<Millis>()
        {
            let now = now_ms();
            if at > now {
                return Ok(Decoded::Early { body: body.to_string(), left_ms: at - now });
            }
        }
        Ok(Decoded::Ready(self.open(body).await?))
    }

    /// Sends an encoded body with a delay of any length, in the current span's trace.
    pub async fn send_body(&self, body: String, delay_ms: Millis) -> Result<(), QueueError> {
        self.send_traced(body, delay_ms, llmo_runtime::telemetry::traceparent()).await
    }

    /// Sends an encoded body with a delay of any length, carrying `trace` (a W3C
    /// `traceparent`) as the message attribute [`TRACEPARENT`].
    pub async fn send_traced(&self, body: String, delay_ms: Millis, trace: Option<String>) -> Result<(), QueueError> {
        self.send_one(body, delay_ms, trace, None).await
    }

    /// [`SqsQueue::send_traced`] in the message group `group` when the queue is FIFO.
    async fn send_one(
        &self,
        body: String,
        delay_ms: Millis,
        trace: Option<String>,
        group: Option<&str>,
    ) -> Result<(), QueueError> {
        let body = self.signed(body);
        if delay_ms > self.max_delay_ms
            && self.url == self.aws.queue_url
            && let Some(o) = &self.aws.one_shots
        {
            return one_shot(o, &body, now_ms() + delay_ms).await;
        }
        let ids = self.fifo_ids(&body, group);
        let mut req = self.aws.sqs.send_message().queue_url(&self.url).message_body(body);
        if let Some((group, dedup)) = ids {
            req = req.message_group_id(group).message_deduplication_id(dedup);
        } else {
            let (secs, attr) = self.delay(delay_ms);
            req = req.delay_seconds(secs);
            if let Some(a) = attr {
                req = req.message_attributes(NOT_BEFORE, a);
            }
        }
        if let Some(t) = trace {
            req = req.message_attributes(TRACEPARENT, string_attribute(t));
        }
        req.send()
            .await
            .map_err(|e| QueueError::Io(format!("sqs send: {}", aws_sdk_sqs::error::DisplayErrorContext(e))))?;
        Ok(())
    }

    fn delay(&self, delay_ms: Millis) -> (i32, Option<MessageAttributeValue>) {
        let secs = delay_ms.min(self.max_delay_ms).div_ceil(1000) as i32;
        let attr = (delay_ms > self.max_delay_ms).then(|| {
            MessageAttributeValue::builder()
                .data_type("Number")
                .string_value((now_ms() + delay_ms).to_string())
                .build()
                .expect("data type is set")
        });
        (secs, attr)
    }

    /// Receives raw records (as Lambda's event source mapping would hand them).
    pub async fn receive_records(&self, max: usize) -> Result<Vec<SqsMessage>, QueueError> {
        self.receive_records_waiting(max, self.wait_secs).await
    }

    /// [`Self::receive_records`] with a long poll of `wait_secs`.
    pub async fn receive_records_waiting(&self, max: usize, wait_secs: i32) -> Result<Vec<SqsMessage>, QueueError> {
        let out = self
            .aws
            .sqs
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(wait_secs)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| QueueError::Io(format!("sqs receive: {}", aws_sdk_sqs::error::DisplayErrorContext(e))))?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                let mut r = SqsMessage::default();
                r.message_id = m.message_id;
                r.receipt_handle = m.receipt_handle;
                r.body = m.body;
                r.attributes = m
                    .attributes
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k.as_str().to_string(), v))
                    .collect::<HashMap<_, _>>();
                for (k, v) in m.message_attributes.unwrap_or_default() {
                    let mut a = aws_lambda_events::event::sqs::SqsMessageAttribute::default();
                    a.string_value = v.string_value;
                    a.data_type = Some(v.data_type);
                    r.message_attributes.insert(k, a);
                }
                r.event_source = Some("aws:sqs".into());
                r.event_source_arn = Some(arn_of(&self.url));
                r
            })
            .collect())
    }

    /// Deletes handled records (one request per ten).
    pub async fn delete_batch(&self, receipts: &[String]) -> Result<(), QueueError> {
        for chunk in receipts.chunks(10) {
            let mut req = self.aws.sqs.delete_message_batch().queue_url(&self.url);
            for (i, r) in chunk.iter().enumerate() {
                req = req.entries(
                    aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .build()
                        .map_err(io)?,
                );
            }
            req.send()
                .await
                .map_err(|e| QueueError::Io(format!("sqs delete: {}", aws_sdk_sqs::error::DisplayErrorContext(e))))?;
        }
        Ok(())
    }

    /// Keeps records invisible for `secs` more (the heartbeat of a long step).
    pub async fn extend(&self, receipts: &[String], secs: i32) -> Result<(), QueueError> {
        for chunk in receipts.chunks(10) {
            let mut req = self.aws.sqs.change_message_visibility_batch().queue_url(&self.url);
            for (i, r) in chunk.iter().enumerate() {
                req = req.entries(
                    aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .visibility_timeout(secs)
                        .build()
                        .map_err(io)?,
                );
            }
            req.send().await.map_err(|e| {
                QueueError::Io(format!("sqs change visibility: {}", aws_sdk_sqs::error::DisplayErrorContext(e)))
            })?;
        }
        Ok(())
    }
}

/// The one-shot schedule that sends `body` to the step queue at `at` (ms since the epoch,
/// rounded up to the second). Its name is a hash of the body and the time, so sending the
/// same message for the same time twice (a redelivered step) makes one schedule.
pub async fn one_shot(o: &crate::config::OneShots, body: &str, at: Millis) -> Result<(), QueueError> {
    use aws_sdk_scheduler::types::{ActionAfterCompletion, FlexibleTimeWindow, FlexibleTimeWindowMode, Target};
    let secs = at.div_ceil(1000);
    let when = at_expression(secs);
    let hash: String =
        Sha256::digest(format!("{secs}\0{body}").as_bytes()).iter().take(16).map(|b| format!("{b:02x}")).collect();
    let name = format!("llmo-{hash}");
    let target = Target::builder().arn(&o.queue_arn).role_arn(&o.role_arn).input(body).build().map_err(io)?;
    let window = FlexibleTimeWindow::builder().mode(FlexibleTimeWindowMode::Off).build().map_err(io)?;
    let r = o
        .scheduler
        .create_schedule()
        .name(&name)
        .group_name(&o.group)
        .schedule_expression(&when)
        .schedule_expression_timezone("UTC")
        .flexible_time_window(window)
        .action_after_completion(ActionAfterCompletion::Delete)
        .target(target)
        .send()
        .await;
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_conflict_exception()) => Ok(()),
        Err(e) => Err(QueueError::Io(format!(
            "scheduler create {name}: {}",
            aws_sdk_scheduler::error::DisplayErrorContext(e)
        ))),
    }
}

/// `at(yyyy-mm-ddThh:mm:ss)` for `secs` since the epoch (UTC).
pub fn at_expression(secs: u64) -> String {
    let day = llmo_runtime::costs::day_of(secs * 1000);
    format!("at({day}T{:02}:{:02}:{:02})", secs / 3600 % 24, secs / 60 % 60, secs % 60)
}

/// The ARN Lambda would report for a queue URL (`.../<account>/<name>`).
fn arn_of(url: &str) -> String {
    let mut parts = url.rsplit('/');
    let name = parts.next().unwrap_or_default();
    let account = parts.next().unwrap_or("000000000000");
    format!("arn:aws:sqs:us-east-1:{account}:{name}")
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, message: &Message, delay_ms: Millis) -> Result<(), QueueError> {
        let body = self.body(message).await?;
        self.send_one(body, delay_ms, llmo_runtime::telemetry::traceparent(), Some(message.run_id())).await
    }

    /// Ten messages per `SendMessageBatch`; entries the batch refused are sent one by one.
    async fn send_batch(&self, messages: &[(Message, Millis)]) -> Result<(), QueueError> {
        let trace = llmo_runtime::telemetry::traceparent();
        let mut bodies = Vec::with_capacity(messages.len());
        let mut groups = Vec::with_capacity(messages.len());
        let scheduled = self.aws.one_shots.is_some() && self.url == self.aws.queue_url;
        for (m, delay) in messages {
            let body = self.signed(self.body(m).await?);
            if scheduled && *delay > self.max_delay_ms {
                // A one-shot schedule each (see `send_traced`).
                self.send_traced(body, *delay, trace.clone()).await?;
            } else {
                bodies.push((body, *delay));
                groups.push(m.run_id());
            }
        }
        let mut first = 0;
        for chunk in batches(&bodies) {
            let chunk_groups = &groups[first..first + chunk.len()];
            first += chunk.len();
            if chunk.len() == 1 {
                let (body, delay) = chunk[0].clone();
                self.send_one(body, delay, trace.clone(), Some(chunk_groups[0])).await?;
                continue;
            }
            let mut entries = Vec::with_capacity(chunk.len());
            for (i, (body, delay)) in chunk.iter().enumerate() {
                let mut e = SendMessageBatchRequestEntry::builder().id(i.to_string()).message_body(body);
                if let Some((group, dedup)) = self.fifo_ids(body, Some(chunk_groups[i])) {
                    e = e.message_group_id(group).message_deduplication_id(dedup);
                } else {
                    let (secs, attr) = self.delay(*delay);
                    e = e.delay_seconds(secs);
                    if let Some(a) = attr {
                        e = e.message_attributes(NOT_BEFORE, a);
                    }
                }
                if let Some(t) = &trace {
                    e = e.message_attributes(TRACEPARENT, string_attribute(t.clone()));
                }
                entries.push(e.build().map_err(io)?);
            }
            let out = self
                .aws
                .sqs
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| {
                    QueueError::Io(format!("sqs send batch: {}", aws_sdk_sqs::error::DisplayErrorContext(e)))
                })?;
            for f in out.failed() {
                let i: usize = f.id().parse().map_err(io)?;
                let (body, delay) = chunk[i].clone();
                self.send_one(body, delay, trace.clone(), Some(chunk_groups[i])).await?;
            }
        }
        Ok(())
    }

    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, QueueError> {
        let mut out = Vec::new();
        for r in self.receive_records(max).await? {
            let receipt = r.receipt_handle.clone().unwrap_or_default();
            let decoded = match self.decode(&r).await {
                Err(QueueError::Forged(why)) => {
                    tracing::error!(message = ?r.message_id, %why, "forged message dropped");
                    llmo_runtime::meter::forged_message();
                    self.delete_batch(&[receipt]).await?;
                    continue;
                }
                other => other?,
            };
            match decoded {
                Decoded::Ready(message) => {
                    let receive_count =
                        r.attributes.get("ApproximateReceiveCount").and_then(|c| c.parse().ok()).unwrap_or(1);
                    out.push(Delivery { receipt, message, receive_count, trace: trace_of(&r) });
                }
                Decoded::Early { body, left_ms } => {
                    self.send_traced(body, left_ms, trace_of(&r)).await?;
                    self.delete_batch(&[receipt]).await?;
                }
            }
        }
        Ok(out)
    }

    async fn ack(&self, receipt: &str) -> Result<(), QueueError> {
        self.delete_batch(&[receipt.to_string()]).await
    }
}

/// The message attribute carrying the W3C trace context of the span that sent a message.
pub const TRACEPARENT: &str = "traceparent";

fn string_attribute(v: String) -> MessageAttributeValue {
    MessageAttributeValue::builder().data_type("String").string_value(v).build().expect("data type is set")
}

/// The trace context a received record carries.
pub fn trace_of(r: &SqsMessage) -> Option<String> {
    r.message_attributes.get(TRACEPARENT).and_then(|a| a.string_value.clone())
}

/// How long ago a record was sent (SQS's `SentTimestamp`), in seconds.
pub fn age_secs(r: &SqsMessage) -> Option<f64> {
    let sent: u64 = r.attributes.get("SentTimestamp")?.parse().ok()?;
    Some(now_ms().saturating_sub(sent) as f64 / 1000.0)
}

/// Messages packed into `SendMessageBatch` requests: at most 10 each and at most
/// [`BATCH_BYTES`] of bodies (ten 200 KB bodies are over SQS's 1 MiB for a request).
fn batches(bodies: &[(String, Millis)]) -> Vec<&[(String, Millis)]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (body, _)) in bodies.iter().enumerate() {
        if i > start && (i - start == 10 || bytes + body.len() > BATCH_BYTES) {
            out.push(&bodies[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += body.len();
    }
    if start < bodies.len() {
        out.push(&bodies[start..]);
    }
    out
}

#[cfg(test)]
mod batch_tests {
    use super::*;

    #[test]
    fn batches_hold_at_most_ten_messages_and_stay_under_the_request_limit() {
        let b = |n: usize| ("x".repeat(n), 0);
        let small: Vec<_> = (0..23).map(|_| b(100)).collect();
        assert_eq!(batches(&small).iter().map(|c| c.len()).collect::<Vec<_>>(), vec![10, 10, 3]);
        let big: Vec<_> = (0..10).map(|_| b(CLAIM_CHECK_BYTES)).collect();
        let packed = batches(&big);
        assert!(packed.iter().all(|c| c.iter().map(|(s, _)| s.len()).sum::<usize>() <= BATCH_BYTES));
        assert_eq!(packed.iter().map(|c| c.len()).sum::<usize>(), 10);
        assert_eq!(packed.len(), 3, "four 200 KB bodies per request");
        assert!(batches(&[]).is_empty());
    }
}
