//! Registered workflow definitions on DynamoDB ([`llmo_runtime::workflows::Workflows`]): one
//! item per tenant and name (`pk` = `WORKFLOWS#<tenant>`, `sk` = the name, `registered_at`),
//! the YAML text inline (deflated past 700 bytes) or, when the item would pass DynamoDB's 400 KB
//! limit, in S3 (`workflows/<tenant>/source-<sha256>.json`, the text itself, the key in `source_ref`), as run
//! payloads are.

use async_trait::async_trait;
use llmo_core::engine::Millis;
use llmo_runtime::store::Error;
use llmo_runtime::workflows::{Registered, Workflows};

use crate::dynamo::{DynamoStore, Item, err, get_n, get_s, n, s};

fn pk(tenant: &str) -> String {
    format!("WORKFLOWS#{tenant}")
}

#[async_trait]
impl Workflows for DynamoStore {
    async fn put(&self, tenant: &str, name: &str, source: &str, now: Millis) -> Result<(), Error> {
        let mut item: Item =
            [("pk".to_string(), s(pk(tenant))), ("sk".to_string(), s(name)), ("registered_at".to_string(), n(now))]
                .into();
        // The S3 key is the text's hash, so a replaced definition never overwrites the object
        // a reader of the old item is about to fetch.
        let text = source.to_string();
        self.payloads(&format!("workflows/{tenant}"), &mut item, vec![("source", text, "source", "source_ref")])
            .await?;
        self.aws.dynamodb.put_item().table_name(&self.aws.table).set_item(Some(item)).send().await.map_err(err)?;
        Ok(())
    }

    async fn get(&self, tenant: &str, name: &str) -> Result<Option<String>, Error> {
        // DynamoDB refuses an empty key; no definition has an empty name.
        if name.is_empty() {
            return Ok(None);
        }
        let out = self
            .aws
            .dynamodb
            .get_item()
            .table_name(&self.aws.table)
            .key("pk", s(pk(tenant)))
            .key("sk", s(name))
            .consistent_read(true)
            .send()
            .await
            .map_err(err)?;
        let Some(item) = out.item else { return Ok(None) };
        // Definitions registered before this adapter hold the text in `source` as well.
        Ok(Some(self.read_payload(&item, "source", "source_ref").await?))
    }

    async fn list(&self, tenant: &str) -> Result<Vec<Registered>, Error> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .aws
                .dynamodb
                .query()
                .table_name(&self.aws.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(pk(tenant)))
                .projection_expression("sk, registered_at")
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(err)?;
            for i in page.items() {
                if let Some(name) = get_s(i, "sk") {
                    out.push(Registered {
                        name: name.to_string(),
                        registered_at: get_n(i, "registered_at").unwrap_or(0.0) as Millis,
                    });
                }
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                return Ok(out);
            }
        }
    }
}
