//! Creates the table, queues and bucket on a local stack (on AWS the SAM template in
//! `infra/` does this). Idempotent: what exists is left as it is.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;

use crate::config::Aws;

/// What to create.
#[derive(Debug, Clone)]
pub struct Resources {
    pub table: String,
    pub queue: String,
    pub dlq: String,
    pub bucket: String,
    pub visibility_secs: u32,
    /// Deliveries before a message goes to the dead-letter queue.
    pub max_receives: u32,
    /// Whether to create the fold queue `<queue>-fold.fifo` (and `<dlq>-fold.fifo`).
    pub folds: bool,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            table: "llmo".into(),
            queue: "llmo-steps".into(),
            dlq: "llmo-dead".into(),
            bucket: "llmo".into(),
            visibility_secs: 60,
            max_receives: 5,
            folds: true,
        }
    }
}

fn fail(what: &str, e: impl std::fmt::Display) -> String {
    format!("provision {what}: {e}")
}

/// Creates everything; returns the clients over the created names (queue URLs included).
pub async fn provision(aws: &Aws, r: &Resources) -> Result<Aws, String> {
    create_table(aws, &r.table).await?;
    let (queue_url, dlq_url) = queue_pair(aws, &r.queue, &r.dlq, r, false).await?;
    let folds = if r.folds {
        let (q, d) =
            queue_pair(aws, &format!("{}-fold.fifo", r.queue), &format!("{}-fold.fifo", r.dlq), r, true).await?;
        (Some(q), Some(d))
    } else {
        (None, None)
    };
    match aws.s3.create_bucket().bucket(&r.bucket).send().await {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_bucket_already_owned_by_you() || e.is_bucket_already_exists()) => {}
        Err(e) => return Err(fail("bucket", aws_sdk_s3::error::DisplayErrorContext(e))),
    }
    Ok(aws.named(&r.table, &queue_url, &dlq_url, &r.bucket).with_folds(folds.0, folds.1))
}

/// A queue and its dead-letter queue (both FIFO with `fifo`): their URLs.
async fn queue_pair(aws: &Aws, queue: &str, dlq: &str, r: &Resources, fifo: bool) -> Result<(String, String), String> {
    let dlq_url = create_queue(aws, dlq, None, r.visibility_secs, fifo).await?;
    let dlq_arn = aws
        .sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| fail("dlq arn", aws_sdk_sqs::error::DisplayErrorContext(e)))?
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .ok_or("provision: the dead-letter queue has no ARN")?;
    let redrive = serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": r.max_receives}).to_string();
    let queue_url = create_queue(aws, queue, Some(redrive), r.visibility_secs, fifo).await?;
    Ok((queue_url, dlq_url))
}

async fn create_queue(
    aws: &Aws,
    name: &str,
    redrive: Option<String>,
    visibility: u32,
    fifo: bool,
) -> Result<String, String> {
    let mut req = aws
        .sqs
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::VisibilityTimeout, visibility.to_string())
        .attributes(QueueAttributeName::ReceiveMessageWaitTimeSeconds, "1");
    if fifo {
        // High-throughput FIFO: deduplication and throughput limits per message group (run).
        req = req
            .attributes(QueueAttributeName::FifoQueue, "true")
            .attributes(QueueAttributeName::DeduplicationScope, "messageGroup")
            .attributes(QueueAttributeName::FifoThroughputLimit, "perMessageGroupId");
    }
    if let Some(r) = redrive {
        req = req.attributes(QueueAttributeName::RedrivePolicy, r);
    }
    let out = req.send().await.map_err(|e| fail(name, aws_sdk_sqs::error::DisplayErrorContext(e)))?;
    out.queue_url.ok_or_else(|| fail(name, "no queue URL"))
}

async fn create_table(aws: &Aws, table: &str) -> Result<(), String> {
    let attr = |n: &str| {
        AttributeDefinition::builder()
            .attribute_name(n)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .expect("complete")
    };
    let key =
        |n: &str, t: KeyType| KeySchemaElement::builder().attribute_name(n).key_type(t).build().expect("complete");
    let summary = ["run_id", "workflow", "status", "version", "started_at", "cost_usd", "tokens", "tenant", "deadline"];
    let gsi = |name: &str, pk: &str| {
        GlobalSecondaryIndex::builder()
            .index_name(name)
            .key_schema(key(pk, KeyType::Hash))
            .key_schema(key(if pk == "audit_run" { "sk" } else { "created" }, KeyType::Range))
            .projection(if pk == "audit_run" {
                // Audit records are read whole from it.
                Projection::builder().projection_type(ProjectionType::All).build()
            } else {
                Projection::builder()
                    .projection_type(ProjectionType::Include)
                    .set_non_key_attributes(Some(summary.iter().map(|s| s.to_string()).filter(|s| s != pk).collect()))
                    .build()
            })
            .build()
            .expect("complete")
    };
    let r = aws
        .dynamodb
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr("pk"))
        .attribute_definitions(attr("sk"))
        .attribute_definitions(attr("all"))
        .attribute_definitions(attr("wf_key"))
        .attribute_definitions(attr("status_key"))
        .attribute_definitions(attr("created"))
        .attribute_definitions(attr("audit_run"))
        .attribute_definitions(attr("live_key"))
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .global_secondary_indexes(gsi("by_time", "all"))
        .global_secondary_indexes(gsi("by_workflow", "wf_key"))
        .global_secondary_indexes(gsi("by_status", "status_key"))
        .global_secondary_indexes(gsi("audit_by_run", "audit_run"))
        .global_secondary_indexes(gsi("by_live", "live_key"))
        .send()
        .await;
    match r {
        Ok(_) => {}
        Err(e) if e.as_service_error().is_some_and(|e| e.is_resource_in_use_exception()) => return Ok(()),
        Err(e) => return Err(fail(table, aws_sdk_dynamodb::error::DisplayErrorContext(e))),
    }
    aws.dynamodb
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder().enabled(true).attribute_name("expires_at").build().expect("complete"),
        )
        .send()
        .await
        .map_err(|e| fail("ttl", aws_sdk_dynamodb::error::DisplayErrorContext(e)))?;
    Ok(())
}
