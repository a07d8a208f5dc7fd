//! The `bedrock` model provider: Amazon Bedrock's Converse API through the AWS SDK
//! (`aws-sdk-bedrockruntime`), for `llm` and `agent` tasks.
//!
//! - **Credentials** come from IAM through the SDK's chain (the function's role in Lambda; the
//!   environment or a profile elsewhere; [`llmo_lambda::sdk::loader`]): never a key in a
//!   workflow, a config file or Secrets Manager.
//! - **Where:** the region is the provider's `region` (config file, `LLMO_BEDROCK_REGION`) or
//!   the SDK's (`AWS_REGION`). The endpoint is the SDK's for the region unless the provider's
//!   `base_url` (or `LLMO_BEDROCK_ENDPOINT`) overrides it: a VPC endpoint, or a local fake
//!   Converse server in tests (`http://127.0.0.1:PORT`; the SDK then sends
//!   `POST {base_url}/model/{model id}/converse`, signed, to it).
//! - **Models** are Bedrock model ids (`anthropic.claude-3-5-haiku-20241022-v1:0`,
//!   `amazon.nova-lite-v1:0`) or inference profiles (`us.anthropic.claude-...`), as
//!   `provider: bedrock` with `model: ID`, or `model: bedrock/ID`. Prices: the runtime's table
//!   ([`llmo_core::engine::budget::listed_price`] maps ids to their model's price).
//! - **Tools** go as `toolConfig` (`toolSpec` with the JSON Schema), calls come back as
//!   `toolUse` blocks, results go as `toolResult` blocks (`status: error` for errors).
//! - The SDK's own retries are off: the `llm` executor retries (with its breakers, fallbacks
//!   and the fleet's rate limits), as for every provider.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::operation::converse::{ConverseError, ConverseOutput};
use aws_sdk_bedrockruntime::types::{
    AnyToolChoice, AutoToolChoice, ContentBlock, ConversationRole, ImageBlock, ImageFormat, ImageSource,
    InferenceConfiguration, Message, S3Location, SpecificToolChoice, SystemContentBlock, Tool, ToolChoice as BrChoice,
    ToolConfiguration, ToolInputSchema, ToolResultBlock, ToolResultContentBlock, ToolResultStatus, ToolSpecification,
    ToolUseBlock,
};
use aws_smithy_types::{Document, Number};
use llmo_core::tasks::Role;
use llmo_runtime::providers::tools::{ToolCall, ToolChoice, Turn};
use llmo_runtime::providers::{CallError, ChatRequest, ChatResponse, Image, Provider, ProviderConfig, ProviderFactory};
use serde_json::{Map, Value};
use tokio::sync::OnceCell;

/// Makes the `bedrock` providers of a configuration (`Setup { bedrock: Some(factory()), .. }`).
pub fn factory() -> ProviderFactory {
    Arc::new(|name: &str, config: &ProviderConfig| Arc::new(Bedrock::new(name, config)) as Arc<dyn Provider>)
}

/// A Bedrock provider: its client is made on the first call (loading the SDK's settings).
pub struct Bedrock {
    name: String,
    config: ProviderConfig,
    /// The SDK's settings, when given rather than loaded (tests give static credentials).
    sdk: Option<aws_config::SdkConfig>,
    client: OnceCell<Client>,
}

impl Bedrock {
    pub fn new(name: &str, config: &ProviderConfig) -> Self {
        Bedrock { name: name.to_string(), config: config.clone(), sdk: None, client: OnceCell::new() }
    }

    /// With these SDK settings (region, credentials) instead of the loaded ones.
    pub fn with_sdk(mut self, sdk: aws_config::SdkConfig) -> Self {
        self.sdk = Some(sdk);
        self
    }

    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                let sdk = match &self.sdk {
                    Some(s) => s.clone(),
                    None => {
                        let mut loader = llmo_lambda::sdk::loader();
                        if let Some(r) = &self.config.region {
                            loader = loader.region(aws_config::Region::new(r.clone()));
                        }
                        loader.load().await
                    }
                };
                let mut b = aws_sdk_bedrockruntime::config::Builder::from(&sdk)
                    .retry_config(aws_config::retry::RetryConfig::disabled())
                    .timeout_config(
                        aws_config::timeout::TimeoutConfig::builder().operation_timeout(self.config.timeout).build(),
                    );
                if !self.config.base_url.is_empty() {
                    b = b.endpoint_url(self.config.base_url.trim_end_matches('/'));
                }
                Client::from_conf(b.build())
            })
            .await
    }
}

#[async_trait]
impl Provider for Bedrock {
    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, CallError> {
        if !self.config.models.is_empty() && !self.config.models.iter().any(|m| m == &req.model) {
            return Err(CallError::Config(format!(
                "provider `{}`: model `{}` is not one this deployment may call (its BedrockModels: {})",
                self.name,
                req.model,
                self.config.models.join(", ")
            )));
        }
        let client = self.client().await;
        let messages = messages(req).map_err(CallError::Config)?;
        let mut call = client
            .converse()
            .model_id(&req.model)
            .set_messages(Some(messages))
            .set_system(system(req))
            .inference_config(inference(req));
        if let Some(t) = tool_config(req).map_err(CallError::Config)? {
            call = call.tool_config(t);
        }
        let out = call.send().await.map_err(|e| error(&self.name, self.config.timeout, e))?;
        parse(&out, &req.model)
    }
}

/// A JSON value as the SDK's document.
pub fn document(v: &Value) -> Document {
    match v {
        Value::Null => Document::Null,
        Value::Bool(b) => Document::Bool(*b),
        Value::Number(n) => Document::Number(match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Number::PosInt(u),
            (None, Some(i)) => Number::NegInt(i),
            _ => Number::Float(n.as_f64().unwrap_or(0.0)),
        }),
        Value::String(s) => Document::String(s.clone()),
        Value::Array(a) => Document::Array(a.iter().map(document).collect()),
        Value::Object(m) => Document::Object(m.iter().map(|(k, v)| (k.clone(), document(v))).collect()),
    }
}

/// The SDK's document as JSON (object keys sorted: a document's map has no order).
pub fn json(d: &Document) -> Value {
    match d {
        Document::Null => Value::Null,
        Document::Bool(b) => Value::Bool(*b),
        Document::Number(Number::PosInt(u)) => Value::from(*u),
        Document::Number(Number::NegInt(i)) => Value::from(*i),
        Document::Number(Number::Float(f)) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Document::String(s) => Value::String(s.clone()),
        Document::Array(a) => Value::Array(a.iter().map(json).collect()),
        Document::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(keys.into_iter().map(|k| (k.clone(), json(&m[k]))).collect::<Map<_, _>>())
        }
    }
}

fn built<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<T, String> {
    r.map_err(|e| format!("building the Converse request: {e}"))
}

/// The conversation: the task's messages, then the turns (the model's calls as `toolUse`,
/// results as a user message of `toolResult` blocks). Messages of one role in a row are
/// merged (Converse wants them alternating).
pub fn messages(req: &ChatRequest) -> Result<Vec<Message>, String> {
    let mut out: Vec<(ConversationRole, Vec<ContentBlock>)> = Vec::new();
    let mut push = |role: ConversationRole, blocks: Vec<ContentBlock>| {
        if blocks.is_empty() {
            return;
        }
        match out.last_mut() {
            Some((r, b)) if *r == role => b.extend(blocks),
            _ => out.push((role, blocks)),
        }
    };
    for (i, (role, text)) in req.messages.iter().enumerate() {
        let role = if *role == Role::Assistant { ConversationRole::Assistant } else { ConversationRole::User };
        let mut blocks = vec![ContentBlock::Text(text.clone())];
        for img in req.images_of(i) {
            blocks.push(ContentBlock::Image(image(img)?));
        }
        push(role, blocks);
    }
    for t in &req.turns {
        match t {
            Turn::Assistant { text, calls } => {
                let mut blocks = Vec::new();
                if !text.is_empty() {
                    blocks.push(ContentBlock::Text(text.clone()));
                }
                for c in calls {
                    let input = match &c.arguments {
                        Value::Object(_) => document(&c.arguments),
                        // What the model sent that was no object goes back as it was sent.
                        other => document(&serde_json::json!({ "_raw": other })),
                    };
                    let block = ToolUseBlock::builder().tool_use_id(&c.id).name(&c.name).input(input).build();
                    blocks.push(ContentBlock::ToolUse(built(block)?));
                }
                push(ConversationRole::Assistant, blocks);
            }
            Turn::Results { results } => {
                let mut blocks = Vec::new();
                for r in results {
                    let mut b = ToolResultBlock::builder()
                        .tool_use_id(&r.call_id)
                        .content(ToolResultContentBlock::Text(r.content.clone()));
                    if r.is_error {
                        b = b.status(ToolResultStatus::Error);
                    }
                    blocks.push(ContentBlock::ToolResult(built(b.build())?));
                }
                push(ConversationRole::User, blocks);
            }
            Turn::User { text } => push(ConversationRole::User, vec![ContentBlock::Text(text.clone())]),
        }
    }
    out.into_iter()
        .map(|(role, blocks)| built(Message::builder().role(role).set_content(Some(blocks)).build()))
        .collect()
}

/// An image part: inline bytes, or an S3 object (`s3://bucket/key`, read by Bedrock with the
/// caller's role); Converse takes no image by https URL.
fn image(img: &Image) -> Result<ImageBlock, String> {
    let (format, source) = match img {
        Image::Data { media_type, data } => {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|_| "an inline image's data is not base64".to_string())?;
            (media_type.as_str(), ImageSource::Bytes(aws_smithy_types::Blob::new(bytes)))
        }
        Image::Url(u) if u.starts_with("s3://") => {
            let ext = u.rsplit('.').next().unwrap_or_default().to_ascii_lowercase();
            let format = match ext.as_str() {
                "png" => "image/png",
                "jpg" | "jpeg" => "image/jpeg",
                "gif" => "image/gif",
                "webp" => "image/webp",
                _ => {
                    return Err(format!("Bedrock needs an S3 image's format: name it .png, .jpg, .gif or .webp ({u})"));
                }
            };
            (format, ImageSource::S3Location(built(S3Location::builder().uri(u).build())?))
        }
        Image::Url(u) => {
            return Err(format!("Bedrock takes images inline (`data`) or from S3 (`s3://`), not by URL ({u})"));
        }
    };
    let format = match format {
        "image/png" => ImageFormat::Png,
        "image/jpeg" => ImageFormat::Jpeg,
        "image/gif" => ImageFormat::Gif,
        _ => ImageFormat::Webp,
    };
    built(ImageBlock::builder().format(format).source(source).build())
}

/// The system prompt; Converse has no JSON mode, so a JSON answer (and its schema) is asked
/// for there, and the answer is checked like any other.
pub fn system(req: &ChatRequest) -> Option<Vec<SystemContentBlock>> {
    let system = req.system_asking_json();
    (!system.is_empty()).then(|| vec![SystemContentBlock::Text(system)])
}

pub fn inference(req: &ChatRequest) -> InferenceConfiguration {
    InferenceConfiguration::builder()
        .max_tokens(req.max_tokens.unwrap_or(1024).min(i32::MAX as u32) as i32)
        .set_temperature(req.temperature.map(|t| t.min(1.0) as f32))
        .set_top_p(req.top_p.map(|t| t as f32))
        .set_stop_sequences((!req.stop.is_empty()).then(|| req.stop.clone()))
        .build()
}

/// The tools and the choice (`none` has no Converse form: the tools are sent, as a
/// conversation with calls in it must, and the model is not made to call one).
pub fn tool_config(req: &ChatRequest) -> Result<Option<ToolConfiguration>, String> {
    if req.tools.is_empty() {
        return Ok(None);
    }
    let mut tools = Vec::new();
    for t in &req.tools {
        let mut spec =
            ToolSpecification::builder().name(&t.name).input_schema(ToolInputSchema::Json(document(&t.parameters)));
        if !t.description.is_empty() {
            spec = spec.description(&t.description);
        }
        tools.push(Tool::ToolSpec(built(spec.build())?));
    }
    let choice = match &req.tool_choice {
        None | Some(ToolChoice::None) => None,
        Some(ToolChoice::Auto) => Some(BrChoice::Auto(AutoToolChoice::builder().build())),
        Some(ToolChoice::Required) => Some(BrChoice::Any(AnyToolChoice::builder().build())),
        Some(ToolChoice::Tool(n)) => Some(BrChoice::Tool(built(SpecificToolChoice::builder().name(n).build())?)),
    };
    built(ToolConfiguration::builder().set_tools(Some(tools)).set_tool_choice(choice).build()).map(Some)
}

/// The answer: its text, its calls (`toolUse` blocks) and its usage (input tokens with the
/// cache's, as the other providers count them).
pub fn parse(out: &ConverseOutput, requested_model: &str) -> Result<ChatResponse, CallError> {
    let Some(aws_sdk_bedrockruntime::types::ConverseOutput::Message(m)) = out.output() else {
        return Err(CallError::Malformed("the answer has no message".into()));
    };
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for b in m.content() {
        match b {
            ContentBlock::Text(t) => text.push_str(t),
            ContentBlock::ToolUse(u) => tool_calls.push(ToolCall {
                id: u.tool_use_id().to_string(),
                name: u.name().to_string(),
                arguments: json(u.input()),
            }),
            _ => {}
        }
    }
    let n = |v: Option<i32>| v.unwrap_or(0).max(0) as u64;
    let usage = out.usage();
    let read = n(usage.and_then(|u| u.cache_read_input_tokens()));
    let written = n(usage.and_then(|u| u.cache_write_input_tokens()));
    Ok(ChatResponse {
        text,
        tool_calls,
        model: requested_model.to_string(),
        prompt_tokens: n(usage.map(|u| u.input_tokens())) + read + written,
        completion_tokens: n(usage.map(|u| u.output_tokens())),
        cache_read_tokens: read,
        cache_write_tokens: written,
    })
}

/// A failed call as the `llm` executor sorts failures: throttling is a rate limit; the
/// service's own troubles are server errors (retried); a bad request, a model not enabled or
/// not allowed to this role is the caller's (not retried).
fn error(provider: &str, timeout: std::time::Duration, e: SdkError<ConverseError>) -> CallError {
    let status = e.raw_response().map(|r| r.status().as_u16());
    let message = match e.message() {
        Some(m) => format!("{}: {m}", e.code().unwrap_or("error")),
        None => aws_sdk_bedrockruntime::error::DisplayErrorContext(&e).to_string(),
    };
    match &e {
        SdkError::TimeoutError(_) => CallError::Timeout(timeout),
        SdkError::DispatchFailure(d) if d.is_timeout() => CallError::Timeout(timeout),
        SdkError::DispatchFailure(_) => CallError::Network(message),
        SdkError::ConstructionFailure(_) => CallError::Config(format!("provider `{provider}`: {message}")),
        SdkError::ServiceError(s) => match s.err() {
            ConverseError::ThrottlingException(_) => CallError::RateLimited { retry_after: None, message },
            ConverseError::ServiceUnavailableException(_)
            | ConverseError::InternalServerException(_)
            | ConverseError::ModelNotReadyException(_)
            | ConverseError::ModelTimeoutException(_) => CallError::Server { status: status.unwrap_or(503), message },
            _ => match status {
                Some(429) => CallError::RateLimited { retry_after: None, message },
                Some(s @ 500..=599) => CallError::Server { status: s, message },
                s => CallError::Client { status: s.unwrap_or(400), message },
            },
        },
        _ => match status {
            Some(s @ 500..=599) => CallError::Server { status: s, message },
            _ => CallError::Malformed(message),
        },
    }
}
