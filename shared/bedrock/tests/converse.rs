//! The `bedrock` provider against a local fake Converse server, reached through the SDK's
//! endpoint override (the provider's `base_url`): the real SDK signs and sends each request
//! (`POST /model/{id}/converse`) and parses each answer; the fake checks what it was sent and
//! answers in Converse's wire format: text, tool use, usage with the prompt cache, throttling.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use llmo_bedrock::Bedrock;
use llmo_core::tasks::Role;
use llmo_runtime::providers::tools::{Tool, ToolCall, ToolChoice, ToolResult, Turn};
use llmo_runtime::providers::{CallError, ChatRequest, Kind, Provider, ProviderConfig};
use serde_json::{Value, json};

#[derive(Default)]
struct Seen {
    requests: Vec<(String, Value, bool)>,
}

type Shared = Arc<Mutex<Seen>>;

async fn converse(
    State(seen): State<Shared>,
    Path(model): Path<String>,
    h: HeaderMap,
    body: String,
) -> impl IntoResponse {
    let body: Value = serde_json::from_str(&body).unwrap();
    let signed =
        h.get("authorization").and_then(|v| v.to_str().ok()).is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256"));
    seen.lock().unwrap().requests.push((model.clone(), body.clone(), signed));
    let json_of = |v: Value| (StatusCode::OK, [("content-type", "application/json")], v.to_string()).into_response();
    if model.contains("busy") {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [
                ("content-type", "application/json"),
                ("x-amzn-errortype", "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"),
            ],
            json!({"message": "Too many requests, please wait before trying again."}).to_string(),
        )
            .into_response();
    }
    if model.contains("denied") {
        return (
            StatusCode::FORBIDDEN,
            [("content-type", "application/json"), ("x-amzn-errortype", "AccessDeniedException")],
            json!({"message": "You don't have access to the model with the specified model ID."}).to_string(),
        )
            .into_response();
    }
    let has_results = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["content"].as_array().unwrap().iter().any(|b| b.get("toolResult").is_some()));
    if body.get("toolConfig").is_some() && !has_results {
        return json_of(json!({
            "output": {"message": {"role": "assistant", "content": [
                {"text": "Let me check."},
                {"toolUse": {"toolUseId": "tooluse_1", "name": "weather", "input": {"city": "Oslo", "days": 2}}}
            ]}},
            "stopReason": "tool_use",
            "usage": {"inputTokens": 50, "outputTokens": 12, "totalTokens": 62},
            "metrics": {"latencyMs": 80}
        }));
    }
    json_of(json!({
        "output": {"message": {"role": "assistant", "content": [{"text": "Snow in Oslo."}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 30, "outputTokens": 5, "totalTokens": 35, "cacheReadInputTokens": 100, "cacheWriteInputTokens": 20},
        "metrics": {"latencyMs": 80}
    }))
}

async fn fake() -> (String, Shared) {
    let seen: Shared = Arc::default();
    let app = Router::new().route("/model/{model}/converse", post(converse)).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

fn config(base: &str) -> ProviderConfig {
    ProviderConfig {
        kind: Kind::Bedrock,
        base_url: base.to_string(),
        api_key: None,
        api_key_env: None,
        timeout: Duration::from_secs(10),
        free: false,
        set_by: None,
        region: Some("us-east-1".into()),
        models: Vec::new(),
    }
}

/// Static test credentials (the SDK still signs with them).
fn sdk() -> aws_config::SdkConfig {
    use aws_config::{BehaviorVersion, Region};
    let creds = aws_sdk_bedrockruntime::config::Credentials::new("AKIDTEST", "secret", None, None, "test");
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_bedrockruntime::config::SharedCredentialsProvider::new(creds))
        .build()
}

fn provider(base: &str) -> Bedrock {
    Bedrock::new("bedrock", &config(base)).with_sdk(sdk())
}

fn weather() -> Tool {
    Tool {
        name: "weather".into(),
        description: "Weather for a city".into(),
        parameters: json!({"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}),
    }
}

#[tokio::test]
async fn converse_text_tools_usage_and_errors_through_the_sdk() {
    let (base, seen) = fake().await;
    let p = provider(&base);
    let model = "us.anthropic.claude-3-5-haiku-20241022-v1:0";

    // A plain answer: the system prompt, sampling and the cache's tokens.
    let req = ChatRequest {
        model: model.into(),
        system: Some("Be brief.".into()),
        messages: vec![(Role::User, "Weather in Oslo?".into())],
        temperature: Some(0.2),
        max_tokens: Some(300),
        stop: vec!["END".into()],
        ..Default::default()
    };
    let r = p.chat(&req).await.unwrap();
    assert_eq!(r.text, "Snow in Oslo.");
    assert_eq!((r.prompt_tokens, r.completion_tokens, r.cache_read_tokens, r.cache_write_tokens), (150, 5, 100, 20));
    assert_eq!(r.model, model);
    {
        let s = seen.lock().unwrap();
        let (m, body, signed) = &s.requests[0];
        assert_eq!(m, model, "the model id is the path's");
        assert!(*signed, "the SDK signed the request (SigV4)");
        assert_eq!(body["system"], json!([{"text": "Be brief."}]));
        assert_eq!(body["messages"], json!([{"role": "user", "content": [{"text": "Weather in Oslo?"}]}]));
        assert_eq!(body["inferenceConfig"]["maxTokens"], 300);
        assert_eq!(body["inferenceConfig"]["stopSequences"], json!(["END"]));
        assert!((body["inferenceConfig"]["temperature"].as_f64().unwrap() - 0.2).abs() < 1e-6);
        assert!(body.get("toolConfig").is_none());
    }

    // A turn with tools: the model asks for a call.
    let mut req = ChatRequest {
        model: model.into(),
        messages: vec![(Role::User, "Weather in Oslo?".into())],
        tools: vec![weather()],
        tool_choice: Some(ToolChoice::Required),
        ..Default::default()
    };
    let r = p.chat(&req).await.unwrap();
    assert_eq!(r.text, "Let me check.");
    assert_eq!(
        r.tool_calls,
        vec![ToolCall {
            id: "tooluse_1".into(),
            name: "weather".into(),
            arguments: json!({"city": "Oslo", "days": 2})
        }]
    );
    {
        let s = seen.lock().unwrap();
        let body = &s.requests[1].1;
        assert_eq!(body["toolConfig"]["tools"][0]["toolSpec"]["name"], "weather");
        assert_eq!(body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"], weather().parameters);
        assert_eq!(body["toolConfig"]["toolChoice"], json!({"any": {}}));
    }

    // The next turn carries the call and its results (one an error), as Converse wants them.
    req.tool_choice = None;
    req.turns = vec![
        Turn::Assistant { text: "Let me check.".into(), calls: r.tool_calls.clone() },
        Turn::Results {
            results: vec![ToolResult {
                call_id: "tooluse_1".into(),
                name: "weather".into(),
                content: "snow".into(),
                is_error: false,
            }],
        },
        Turn::Assistant {
            text: String::new(),
            calls: vec![ToolCall { id: "tooluse_2".into(), name: "weather".into(), arguments: json!("{bad") }],
        },
        Turn::Results {
            results: vec![ToolResult {
                call_id: "tooluse_2".into(),
                name: "weather".into(),
                content: "error: not JSON".into(),
                is_error: true,
            }],
        },
    ];
    let r = p.chat(&req).await.unwrap();
    assert_eq!(r.text, "Snow in Oslo.");
    assert!(r.tool_calls.is_empty());
    {
        let s = seen.lock().unwrap();
        let m = s.requests[2].1["messages"].as_array().unwrap().clone();
        assert_eq!(m.len(), 5, "user, assistant, user (results), assistant, user: {m:?}");
        assert_eq!(
            m[1]["content"][1]["toolUse"],
            json!({"toolUseId": "tooluse_1", "name": "weather", "input": {"city": "Oslo", "days": 2}})
        );
        assert_eq!(m[2]["content"][0]["toolResult"], json!({"toolUseId": "tooluse_1", "content": [{"text": "snow"}]}));
        assert_eq!(m[3]["content"][0]["toolUse"]["input"], json!({"_raw": "{bad"}));
        assert_eq!(m[4]["content"][0]["toolResult"]["status"], "error");
    }

    // Images: inline bytes and S3 objects go as Converse image blocks; an https URL is refused.
    use llmo_runtime::providers::Image;
    let mut pic = ChatRequest {
        model: model.into(),
        messages: vec![(Role::User, "What is this?".into())],
        images: vec![
            (0, Image::Data { media_type: "image/png".into(), data: "iVBORw0KGgo=".into() }),
            (0, Image::Url("s3://photos/cat.jpg".into())),
        ],
        ..Default::default()
    };
    p.chat(&pic).await.unwrap();
    {
        let s = seen.lock().unwrap();
        let content = &s.requests[3].1["messages"][0]["content"];
        assert_eq!(content[1]["image"], json!({"format": "png", "source": {"bytes": "iVBORw0KGgo="}}));
        assert_eq!(
            content[2]["image"],
            json!({"format": "jpeg", "source": {"s3Location": {"uri": "s3://photos/cat.jpg"}}})
        );
    }
    pic.images = vec![(0, Image::Url("https://img.example.com/cat.jpg".into()))];
    let e = p.chat(&pic).await.unwrap_err();
    assert!(matches!(&e, CallError::Config(m) if m.contains("not by URL")), "{e:?}");

    // A deployment's list of models: any other is refused before anything is sent.
    let sent = seen.lock().unwrap().requests.len();
    let listed =
        Bedrock::new("bedrock", &ProviderConfig { models: vec![model.to_string()], ..config(&base) }).with_sdk(sdk());
    let p = listed;
    let other = ChatRequest {
        model: "amazon.nova-pro-v1:0".into(),
        messages: vec![(Role::User, "hi".into())],
        ..Default::default()
    };
    let e = p.chat(&other).await.unwrap_err();
    assert!(matches!(&e, CallError::Config(m) if m.contains("not one this deployment may call")), "{e:?}");
    assert_eq!(seen.lock().unwrap().requests.len(), sent, "nothing was sent");
    p.chat(&ChatRequest { model: model.into(), ..other }).await.unwrap();
    let p = provider(&base);

    // Throttling is a rate limit (retried by the executor); access denied is the caller's.
    let busy = ChatRequest {
        model: "busy.model-v1:0".into(),
        messages: vec![(Role::User, "hi".into())],
        ..Default::default()
    };
    let e = p.chat(&busy).await.unwrap_err();
    assert!(matches!(&e, CallError::RateLimited { message, .. } if message.contains("Too many requests")), "{e:?}");
    assert!(e.retryable());
    let denied = ChatRequest { model: "denied.model-v1:0".into(), ..busy };
    let e = p.chat(&denied).await.unwrap_err();
    assert!(matches!(&e, CallError::Client { status: 403, message } if message.contains("don't have access")), "{e:?}");
    assert!(!e.retryable());
}
