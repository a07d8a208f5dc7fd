//! The Anthropic Messages API.

use async_trait::async_trait;
use llmo_core::tasks::Role;
use serde_json::{Value, json};

use super::{CallError, ChatRequest, ChatResponse, Provider, ProviderConfig, send};

pub const VERSION: &str = "2023-06-01";

pub struct Anthropic {
    client: reqwest::Client,
    name: String,
    config: ProviderConfig,
    secrets: std::sync::Arc<dyn crate::secrets::Secrets>,
}

impl Anthropic {
    pub fn new(client: reqwest::Client, name: &str, config: &ProviderConfig) -> Self {
        Anthropic {
            client,
            name: name.to_string(),
            config: config.clone(),
            secrets: std::sync::Arc::new(crate::secrets::EnvSecrets),
        }
    }

    /// Reads the key from `secrets` when the config holds none.
    pub fn with_secrets(mut self, secrets: std::sync::Arc<dyn crate::secrets::Secrets>) -> Self {
        self.secrets = secrets;
        self
    }
}

/// The request body. Messages has no JSON mode: a JSON answer (and its schema) is asked for
/// in the system prompt, and the answer is checked like any other.
pub fn body(req: &ChatRequest) -> Value {
    let mut messages: Vec<Value> = req
        .messages
        .iter()
        .enumerate()
        .map(|(i, (role, content))| {
            let role = if *role == Role::Assistant { "assistant" } else { "user" };
            let images: Vec<Value> = req
                .images_of(i)
                .map(|img| match img {
                    super::Image::Url(u) => json!({"type": "image", "source": {"type": "url", "url": u}}),
                    super::Image::Data { media_type, data } => {
                        json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}})
                    }
                })
                .collect();
            if images.is_empty() {
                return json!({ "role": role, "content": content });
            }
            let mut parts = vec![json!({"type": "text", "text": content})];
            parts.extend(images);
            json!({ "role": role, "content": parts })
        })
        .collect();
    messages.extend(super::tools::anthropic_turns(&req.turns));
    let system = req.system_asking_json();
    let mut b = json!({ "model": req.model, "max_tokens": req.max_tokens.unwrap_or(1024), "messages": messages });
    if !system.is_empty() {
        b["system"] = json!(system);
    }
    if let Some(t) = req.temperature {
        b["temperature"] = json!(t.min(1.0));
    }
    if let Some(t) = req.top_p {
        b["top_p"] = json!(t);
    }
    if !req.stop.is_empty() {
        b["stop_sequences"] = json!(req.stop);
    }
    super::tools::anthropic_tools(&mut b, &req.tools, req.tool_choice.as_ref(), req.parallel_tool_calls);
    b
}

pub fn parse(body: &str, requested_model: &str) -> Result<ChatResponse, CallError> {
    let v: Value = serde_json::from_str(body).map_err(|e| CallError::Malformed(format!("not JSON: {e}")))?;
    let content =
        v.get("content").and_then(Value::as_array).ok_or_else(|| CallError::Malformed("no content".into()))?;
    let text: String = content
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect();
    let tool_calls = super::tools::anthropic_calls(content).map_err(CallError::Malformed)?;
    let n = |p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    Ok(ChatResponse {
        text,
        tool_calls,
        model: v.get("model").and_then(Value::as_str).unwrap_or(requested_model).to_string(),
        prompt_tokens: n("/usage/input_tokens")
            + n("/usage/cache_creation_input_tokens")
            + n("/usage/cache_read_input_tokens"),
        completion_tokens: n("/usage/output_tokens"),
        cache_read_tokens: n("/usage/cache_read_input_tokens"),
        cache_write_tokens: n("/usage/cache_creation_input_tokens"),
    })
}

#[async_trait]
impl Provider for Anthropic {
    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, CallError> {
        let key = super::api_key(&self.config, self.secrets.as_ref()).await?;
        let Some(key) = &key else {
            return Err(CallError::Config(format!(
                "provider `{}` needs an API key: set {}",
                self.name,
                self.config.api_key_env.as_deref().unwrap_or("its api_key_env")
            )));
        };
        let url = format!("{}/v1/messages", self.config.base_url.trim_end_matches('/'));
        let rb = self
            .client
            .post(&url)
            .timeout(self.config.timeout)
            .header("x-api-key", key)
            .header("anthropic-version", VERSION)
            .json(&body(req));
        // 529 (Anthropic's "overloaded") counts as a server error.
        let text = send(rb, self.config.timeout).await?;
        parse(&text, &req.model)
    }
}
