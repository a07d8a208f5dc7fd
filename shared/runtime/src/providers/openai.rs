//! OpenAI-compatible Chat Completions: OpenAI, vLLM, Ollama, llama.cpp server, LiteLLM, ...

use async_trait::async_trait;
use llmo_core::tasks::Role;
use serde_json::{Value, json};

use super::{CallError, ChatRequest, ChatResponse, Provider, ProviderConfig, send};

pub struct OpenAi {
    client: reqwest::Client,
    name: String,
    config: ProviderConfig,
    secrets: std::sync::Arc<dyn crate::secrets::Secrets>,
}

impl OpenAi {
    pub fn new(client: reqwest::Client, name: &str, config: &ProviderConfig) -> Self {
        OpenAi {
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

/// The request body.
pub fn body(req: &ChatRequest) -> Value {
    let mut messages = Vec::new();
    if let Some(s) = &req.system {
        messages.push(json!({ "role": "system", "content": s }));
    }
    for (i, (role, content)) in req.messages.iter().enumerate() {
        let role = match role {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        let images: Vec<Value> = req
            .images_of(i)
            .map(|img| {
                let url = match img {
                    super::Image::Url(u) => u.clone(),
                    super::Image::Data { media_type, data } => format!("data:{media_type};base64,{data}"),
                };
                json!({"type": "image_url", "image_url": {"url": url}})
            })
            .collect();
        if images.is_empty() {
            messages.push(json!({ "role": role, "content": content }));
        } else {
            let mut parts = vec![json!({"type": "text", "text": content})];
            parts.extend(images);
            messages.push(json!({ "role": role, "content": parts }));
        }
    }
    messages.extend(super::tools::openai_turns(&req.turns));
    let mut b = json!({ "model": req.model, "messages": messages });
    super::tools::openai_tools(&mut b, &req.tools, req.tool_choice.as_ref(), req.parallel_tool_calls);
    let set = |b: &mut Value, k: &str, v: Value| {
        b[k] = v;
    };
    if let Some(t) = req.temperature {
        set(&mut b, "temperature", json!(t));
    }
    if let Some(t) = req.top_p {
        set(&mut b, "top_p", json!(t));
    }
    if let Some(t) = req.max_tokens {
        set(&mut b, "max_tokens", json!(t));
    }
    if !req.stop.is_empty() {
        set(&mut b, "stop", json!(req.stop));
    }
    if let Some(s) = req.seed {
        set(&mut b, "seed", json!(s));
    }
    match (&req.schema, req.json) {
        (Some(schema), _) => set(
            &mut b,
            "response_format",
            json!({ "type": "json_schema", "json_schema": { "name": "output", "schema": schema } }),
        ),
        (None, true) => set(&mut b, "response_format", json!({ "type": "json_object" })),
        _ => {}
    }
    b
}

/// Reads a Chat Completions response body.
pub fn parse(body: &str, requested_model: &str) -> Result<ChatResponse, CallError> {
    let v: Value = serde_json::from_str(body).map_err(|e| CallError::Malformed(format!("not JSON: {e}")))?;
    let choice = v.pointer("/choices/0").ok_or_else(|| CallError::Malformed("no choices".into()))?;
    if choice.pointer("/message/refusal").and_then(Value::as_str).is_some_and(|r| !r.is_empty()) {
        let r = choice.pointer("/message/refusal").and_then(Value::as_str).unwrap_or_default();
        return Err(CallError::Client { status: 200, message: format!("the model refused: {r}") });
    }
    let text = match choice.pointer("/message/content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => return Err(CallError::Malformed(format!("message.content is {other}"))),
    };
    let tool_calls =
        super::tools::openai_calls(choice.get("message").unwrap_or(&Value::Null)).map_err(CallError::Malformed)?;
    let n = |p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    Ok(ChatResponse {
        text,
        tool_calls,
        model: v.get("model").and_then(Value::as_str).unwrap_or(requested_model).to_string(),
        prompt_tokens: n("/usage/prompt_tokens"),
        completion_tokens: n("/usage/completion_tokens"),
        // Part of `prompt_tokens`, billed at the cached rate.
        cache_read_tokens: n("/usage/prompt_tokens_details/cached_tokens"),
        cache_write_tokens: 0,
    })
}

#[async_trait]
impl Provider for OpenAi {
    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, CallError> {
        let url = format!("{}/chat/completions", self.config.base_url.trim_end_matches('/'));
        let mut rb = self.client.post(&url).timeout(self.config.timeout).json(&body(req));
        match &super::api_key(&self.config, self.secrets.as_ref()).await? {
            Some(k) => rb = rb.bearer_auth(k),
            None if !self.config.free => {
                return Err(CallError::Config(format!(
                    "provider `{}` needs an API key: set {}",
                    self.name,
                    self.config.api_key_env.as_deref().unwrap_or("its api_key_env")
                )));
            }
            None => {}
        }
        let text = send(rb, self.config.timeout).await?;
        parse(&text, &req.model)
    }
}
