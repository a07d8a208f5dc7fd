//! Provider keys from AWS Secrets Manager (moto's, on the local stack): a model call is made with
//! the key the secret holds, read once and kept for the TTL; a rotated key is used once the TTL
//! has passed; `http` header secrets come from the same secret.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use llmo_aws::secrets::SecretsManager;
use llmo_core::tasks::Role;
use llmo_runtime::providers::{ChatRequest, Kind, OpenAi, Provider, ProviderConfig};
use llmo_runtime::secrets::Secrets;
use serde_json::json;
use support::*;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The bearer of the last request the server received.
async fn bearer(server: &MockServer) -> String {
    let reqs = server.received_requests().await.unwrap();
    reqs.last().unwrap().headers.get("authorization").unwrap().to_str().unwrap().to_string()
}

fn answer() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "x", "object": "chat.completion", "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_calls_use_the_key_the_secret_holds_and_see_a_rotation_after_the_ttl() {
    let Some(aws) = aws().await else { return };
    let name = unique("llmo-secrets");
    let created = aws
        .secretsmanager
        .create_secret()
        .name(&name)
        .secret_string(
            json!({
                "OPENAI_API_KEY": "sk-one",
                "LLMO_SECRET_TICKETS_TOKEN": "tok",
                "LLMO_SECRET_CRM_KEY": {"value": "crm", "tenants": ["t1"], "hosts": ["crm.example.com"]}
            })
            .to_string(),
        )
        .send()
        .await
        .expect("creating the secret on the local stack");
    let arn = created.arn().unwrap().to_string();
    let server = MockServer::start().await;
    for key in ["sk-one", "sk-two"] {
        Mock::given(method("POST"))
            .and(path("/chat/completions"))
            .and(header("authorization", format!("Bearer {key}").as_str()))
            .respond_with(answer())
            .mount(&server)
            .await;
    }
    let secrets = Arc::new(SecretsManager::new(aws.secretsmanager.clone(), &arn, Duration::from_secs(2)));
    // No key in the config (none in the environment, as deployed): the provider asks the secret.
    let config = ProviderConfig {
        kind: Kind::Openai,
        base_url: server.uri(),
        api_key: None,
        api_key_env: Some("OPENAI_API_KEY".into()),
        timeout: Duration::from_secs(10),
        free: false,
        set_by: None,
        region: None,
        models: Vec::new(),
    };
    let p = OpenAi::new(reqwest::Client::new(), "openai", &config).with_secrets(secrets.clone());
    let req = ChatRequest {
        model: "gpt-4o-mini".into(),
        messages: vec![(Role::User, "hello".into())],
        ..ChatRequest::default()
    };
    p.chat(&req).await.expect("a call with the secret's key");
    assert_eq!(bearer(&server).await, "Bearer sk-one");
    assert_eq!(secrets.get("LLMO_SECRET_TICKETS_TOKEN").await.unwrap().as_deref(), Some("tok"));
    assert_eq!(secrets.get("NOT_THERE").await.unwrap(), None);
    // A grant kept beside its value reaches the http executor whole.
    let grant =
        llmo_runtime::secrets::Grant::parse(secrets.get("LLMO_SECRET_CRM_KEY").await.unwrap().unwrap()).unwrap();
    assert_eq!(grant.value, "crm");
    assert!(
        grant.allows(Some("t1"), "crm.example.com").is_ok() && grant.allows(Some("t2"), "crm.example.com").is_err()
    );
    // Rotated: the cached key is used until the TTL passes, then the new one.
    aws.secretsmanager
        .put_secret_value()
        .secret_id(&arn)
        .secret_string(json!({"OPENAI_API_KEY": "sk-two"}).to_string())
        .send()
        .await
        .unwrap();
    p.chat(&req).await.unwrap();
    assert_eq!(bearer(&server).await, "Bearer sk-one", "read once, kept for the TTL");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    p.chat(&req).await.unwrap();
    assert_eq!(bearer(&server).await, "Bearer sk-two", "read again after the TTL");
    // A source that cannot be read is an error that names no AWS resource.
    let missing = SecretsManager::new(
        aws.secretsmanager.clone(),
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:nope",
        Duration::from_secs(1),
    );
    let e = missing.get("OPENAI_API_KEY").await.unwrap_err();
    assert!(!e.to_string().contains("nope"), "{e}");
}
