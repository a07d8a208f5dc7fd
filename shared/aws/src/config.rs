//! The AWS clients and resource names a process uses, from the environment.
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `LLMO_TABLE` | DynamoDB table | `llmo` |
//! | `LLMO_QUEUE_URL` | step queue | `<endpoint>/000000000000/llmo-steps` |
//! | `LLMO_DLQ_URL` | dead-letter queue | `<endpoint>/000000000000/llmo-dead` |
//! | `LLMO_BUCKET` | checkpoints and large payloads | `llmo` |
//!
//! Endpoints, region and credentials come from the SDK's own variables (`AWS_ENDPOINT_URL`,
//! `AWS_ENDPOINT_URL_DYNAMODB`, `AWS_REGION`, ...), so the same binaries run against AWS,
//! LocalStack and moto.

use std::sync::Arc;

use aws_config::BehaviorVersion;

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
    pub bucket: String,
    pub meter: Arc<Meter>,
}

impl Aws {
    /// Clients and names from the environment.
    pub async fn from_env() -> Self {
        let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
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
        let endpoint = var("AWS_ENDPOINT_URL_SQS").or_else(|| var("AWS_ENDPOINT_URL")).unwrap_or_else(|| {
            format!("https://sqs.{}.amazonaws.com", sdk.region().map_or("us-east-1", |r| r.as_ref()))
        });
        let endpoint = endpoint.trim_end_matches('/').to_string();
        Aws {
            dynamodb,
            sqs,
            s3,
            secretsmanager,
            table: var("LLMO_TABLE").unwrap_or_else(|| "llmo".into()),
            queue_url: var("LLMO_QUEUE_URL").unwrap_or_else(|| format!("{endpoint}/000000000000/llmo-steps")),
            dlq_url: var("LLMO_DLQ_URL").unwrap_or_else(|| format!("{endpoint}/000000000000/llmo-dead")),
            bucket: var("LLMO_BUCKET").unwrap_or_else(|| "llmo".into()),
            meter,
        }
    }

    /// The same clients over other resource names (tests give each their own table/queues).
    pub fn named(&self, table: &str, queue_url: &str, dlq_url: &str, bucket: &str) -> Self {
        Aws {
            table: table.into(),
            queue_url: queue_url.into(),
            dlq_url: dlq_url.into(),
            bucket: bucket.into(),
            ..self.clone()
        }
    }
}
