//! The AWS clients and resource names a process uses, from the environment.
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `LLMO_TABLE` | DynamoDB table | `llmo` |
//! | `LLMO_QUEUE_URL` | step queue | `<endpoint>/000000000000/llmo-steps` |
//! | `LLMO_DLQ_URL` | dead-letter queue | `<endpoint>/000000000000/llmo-dead` |
//! | `LLMO_FOLD_QUEUE_URL` | the fold queue (SQS FIFO, one message group per run): steps of a run whose other attempts run elsewhere send their events there instead of racing for the run's log (`Worker::fold`) | none: every step appends itself |
//! | `LLMO_FOLD_DLQ_URL` | the fold queue's dead-letter queue (FIFO) | none |
//! | `LLMO_BUCKET` | checkpoints and large payloads | `llmo` |
//! | `LLMO_SCHEDULER_ROLE_ARN` | the role EventBridge Scheduler sends to the step queue with; set: delays past SQS's 15 minutes are one-shot schedules ([`OneShots`]) | none: such delays are re-sent every 15 minutes |
//! | `LLMO_QUEUE_ARN` | the step queue's ARN (the schedules' target) | from `LLMO_QUEUE_URL` |
//! | `LLMO_SCHEDULE_GROUP` | the schedule group one-shots are made in | `default` |
//!
//! Endpoints, region and credentials come from the SDK's own variables (`AWS_ENDPOINT_URL`,
//! `AWS_ENDPOINT_URL_DYNAMODB`, `AWS_REGION`, ...), so the same binaries run against AWS,
//! LocalStack and moto.
//!
//! The instance-metadata service (169.254.169.254) is asked for nothing unless the process runs
//! in AWS (Lambda: `AWS_LAMBDA_FUNCTION_NAME`, a container: `AWS_CONTAINER_CREDENTIALS_*`) or is
//! told to (`LLMO_ALLOW_IMDS=1`, for the local modes on an EC2 instance): elsewhere a process
//! without region or credentials fails on its first request instead of probing an address off
//! this machine (the SDK's default chain ends with that probe).

use std::sync::Arc;

pub use llmo_lambda::sdk::{imds_allowed, loader};

use crate::metrics::{CountRequests, Meter, Service};

#[derive(Clone)]
pub struct Aws {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub s3: aws_sdk_s3::Client,
    pub secretsmanager: aws_sdk_secretsmanager::Client,
    pub table: String,
    pub queue_url: String,
    pub dlq_url: String,
    /// The fold queue (FIFO) and its dead-letter queue, when the deployment has them.
    pub fold_url: Option<String>,
    pub fold_dlq_url: Option<String>,
    pub bucket: String,
    pub meter: Arc<Meter>,
    pub lifetime: Lifetime,
    /// One-shot EventBridge schedules for delays longer than SQS holds a message.
    pub one_shots: Option<OneShots>,
    /// The keys queue messages are signed and checked with ([`crate::mac`]); `None`: messages
    /// are neither signed nor checked.
    pub queue_keys: Option<Arc<crate::mac::KeyRing>>,
}

/// Where long delays go: an EventBridge Scheduler one-shot (`at(...)`, deleted after it
/// fires) that sends the message to the step queue when it is due. Nothing is re-sent or
/// received while the delay lasts.
#[derive(Clone)]
pub struct OneShots {
    pub scheduler: aws_sdk_scheduler::Client,
    /// The role the scheduler assumes to send to the queue.
    pub role_arn: String,
    /// The step queue's ARN.
    pub queue_arn: String,
    pub group: String,
}

/// How long runs may last and how long they are kept: one setting drives every item of a run
/// and its S3 objects (`infra/template.yaml`'s `RetentionDays` sets both the functions'
/// environment and the bucket's lifecycle; `MaxRunDays` must be less).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// Days a run's items and objects are kept from the run's creation
    /// (`LLMO_RETENTION_DAYS`, default 45).
    pub retention_days: u64,
    /// The longest a run may last: it times out then (`LLMO_MAX_RUN_DAYS`, default 14; at
    /// most `retention_days - 1`, so a live run never loses its items).
    pub max_run_days: u64,
    /// Days audit records are kept (`LLMO_AUDIT_RETENTION_DAYS`, default 400).
    pub audit_days: u64,
}

impl Default for Lifetime {
    fn default() -> Self {
        Lifetime { retention_days: 45, max_run_days: 14, audit_days: 400 }
    }
}

impl Lifetime {
    /// From the environment; a longest run not shorter than the retention is cut to one day
    /// less than it.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok()).filter(|d| *d > 0);
        let d = Lifetime::default();
        let retention_days = var("LLMO_RETENTION_DAYS").unwrap_or(d.retention_days).max(2);
        let mut max_run_days = var("LLMO_MAX_RUN_DAYS").unwrap_or(d.max_run_days);
        if max_run_days >= retention_days {
            tracing::warn!(
                max_run_days,
                retention_days,
                "LLMO_MAX_RUN_DAYS must be less than LLMO_RETENTION_DAYS; cut"
            );
            max_run_days = retention_days - 1;
        }
        Lifetime { retention_days, max_run_days, audit_days: var("LLMO_AUDIT_RETENTION_DAYS").unwrap_or(d.audit_days) }
    }

    /// Seconds from a run's creation until every item of it expires (DynamoDB TTL).
    pub fn horizon_secs(&self) -> u64 {
        self.retention_days * 86_400
    }

    /// The longest a run may last, in milliseconds.
    pub fn max_run_ms(&self) -> u64 {
        self.max_run_days * 86_400_000
    }
}

impl Aws {
    /// Clients and names from the environment.
    /// Fails when queue keys are configured but cannot be read: a function never runs with
    /// unchecked messages by accident.
    pub async fn from_env() -> Result<Self, String> {
        let sdk = loader().load().await;
        let meter = Arc::new(Meter::default());
        let count = |service| CountRequests { meter: meter.clone(), service };
        let dynamodb = aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&sdk).interceptor(count(Service::DynamoDb)).build(),
        );
        let sqs = aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::config::Builder::from(&sdk).interceptor(count(Service::Sqs)).build(),
        );
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&sdk).force_path_style(true).interceptor(count(Service::S3)).build(),
        );
        let secretsmanager =
            aws_sdk_secretsmanager::Client::from_conf(aws_sdk_secretsmanager::config::Builder::from(&sdk).build());
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let one_shots = var("LLMO_SCHEDULER_ROLE_ARN").map(|role_arn| OneShots {
            scheduler: aws_sdk_scheduler::Client::from_conf(
                aws_sdk_scheduler::config::Builder::from(&sdk).interceptor(count(Service::Scheduler)).build(),
            ),
            role_arn,
            queue_arn: var("LLMO_QUEUE_ARN").unwrap_or_default(),
            group: var("LLMO_SCHEDULE_GROUP").unwrap_or_else(|| "default".into()),
        });
        let endpoint = var("AWS_ENDPOINT_URL_SQS").or_else(|| var("AWS_ENDPOINT_URL")).unwrap_or_else(|| {
            format!("https://sqs.{}.amazonaws.com", sdk.region().map_or("us-east-1", |r| r.as_ref()))
        });
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let queue_keys = crate::mac::KeyRing::load(&secretsmanager).await?.map(Arc::new);
        Ok(Aws {
            dynamodb,
            sqs,
            s3,
            secretsmanager,
            table: var("LLMO_TABLE").unwrap_or_else(|| "llmo".into()),
            queue_url: var("LLMO_QUEUE_URL").unwrap_or_else(|| format!("{endpoint}/000000000000/llmo-steps")),
            dlq_url: var("LLMO_DLQ_URL").unwrap_or_else(|| format!("{endpoint}/000000000000/llmo-dead")),
            fold_url: var("LLMO_FOLD_QUEUE_URL"),
            fold_dlq_url: var("LLMO_FOLD_DLQ_URL"),
            bucket: var("LLMO_BUCKET").unwrap_or_else(|| "llmo".into()),
            meter,
            lifetime: Lifetime::from_env(),
            one_shots,
            queue_keys,
        })
    }

    /// The same clients over other resource names (tests give each their own table/queues),
    /// without a fold queue ([`Aws::with_folds`] adds one).
    pub fn named(&self, table: &str, queue_url: &str, dlq_url: &str, bucket: &str) -> Self {
        Aws {
            table: table.into(),
            queue_url: queue_url.into(),
            dlq_url: dlq_url.into(),
            fold_url: None,
            fold_dlq_url: None,
            bucket: bucket.into(),
            ..self.clone()
        }
    }

    /// The variables that point another process (a function's local mode) at these resources,
    /// as [`Aws::from_env`] reads them.
    pub fn resource_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LLMO_TABLE", self.table.clone()),
            ("LLMO_QUEUE_URL", self.queue_url.clone()),
            ("LLMO_DLQ_URL", self.dlq_url.clone()),
            ("LLMO_FOLD_QUEUE_URL", self.fold_url.clone().unwrap_or_default()),
            ("LLMO_FOLD_DLQ_URL", self.fold_dlq_url.clone().unwrap_or_default()),
            ("LLMO_BUCKET", self.bucket.clone()),
        ]
    }

    /// The same, with a fold queue and its dead-letter queue.
    pub fn with_folds(self, fold_url: Option<String>, fold_dlq_url: Option<String>) -> Self {
        Aws { fold_url, fold_dlq_url, ..self }
    }
}
