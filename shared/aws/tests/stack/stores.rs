//! The store contract (`llmo_runtime::store::contract`, which memory and SQLite pass too)
//! against DynamoDB and S3 on the local stack, and the API registering a definition past
//! DynamoDB's 400 KB item limit.

use crate::support;

use llmo_aws::dynamo::DynamoStore;
use serde_json::json;
use support::*;

#[tokio::test]
async fn dynamodb_keeps_the_run_store_and_workflow_store_contracts() {
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 30, 5).await;
    let store = DynamoStore::new(aws.clone());
    llmo_runtime::store::contract::run_store(&store, &unique("c")).await;
    llmo_runtime::store::contract::workflows(&store, &unique("tenant")).await;
    llmo_runtime::store::contract::run_index(&store, &store, &unique("i")).await;
}

/// A 6,000-task workflow (about 540 KB) registers with `POST /workflows` (its source goes to
/// S3 by claim check; it answered 500 when the item passed 400 KB) and starts by name.
#[tokio::test]
async fn a_workflow_past_the_item_limit_registers_and_starts_by_name() {
    let Some(aws) = aws().await else { return };
    let aws = stack(&aws, 30, 5).await;
    let api = api(&aws);
    let mut source =
        String::from("apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: huge }\nspec:\n  tasks:\n");
    for i in 0..6000 {
        source.push_str(&format!(
            "    - {{ id: t{i:05}, type: transform, description: \"step {i} of a very long generated pipeline\", with: {{ output: \"{{{{ {i} }}}}\" }} }}\n"
        ));
    }
    assert!(source.len() > 450 * 1024, "{} bytes", source.len());
    let (code, v) = call(&api, "POST", "/workflows", Some(json!({ "source": source }))).await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["tasks"], 6000);
    let (code, v) = call(&api, "GET", "/workflows", None).await;
    assert_eq!(code, 200, "{v}");
    assert!(v["workflows"].as_array().unwrap().iter().any(|w| w["workflow"] == "huge"), "{v}");
    let (code, v) = call(&api, "POST", "/runs", Some(json!({ "workflow": "huge" }))).await;
    assert_eq!(code, 201, "{v}");
    let run_id = v["run_id"].as_str().unwrap();
    let (code, v) = call(&api, "GET", &format!("/runs/{run_id}"), None).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["workflow"], "huge");
}
