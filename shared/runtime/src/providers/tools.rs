//! Tool calling on the wire (the first part of durable agents, issue 28): the tools a model may
//! call, the calls it answers with, and the turns of a tool-using conversation, in the
//! provider-neutral form [`super::ChatRequest`] and [`super::ChatResponse`] carry, and their
//! OpenAI (`tools`, `tool_calls`, `role: tool`) and Anthropic (`tools`, `tool_use`,
//! `tool_result`) encodings.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A tool the model may call: its name, what it does, and the JSON Schema of its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub description: String,
    pub parameters: Value,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// No tool: answer with text.
    None,
    /// Some tool.
    Required,
    /// This tool.
    Tool(String),
}

/// A call the model asked for. `arguments` is what it sent: a JSON value, or the raw text
/// when that was not JSON (the caller checks it against the tool's schema either way).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: Value,
}

/// The result of one call, as the model is told it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolResult {
    pub call_id: String,
    pub name: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_error: bool,
}

/// A turn after the request's `messages`: the model's answer with its calls, the calls'
/// results, or a person's message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "turn", rename_all = "snake_case")]
pub enum Turn {
    Assistant { text: String, calls: Vec<ToolCall> },
    Results { results: Vec<ToolResult> },
    User { text: String },
}

/// What a request's images, tools and turns add to its prompt, piece by piece (as
/// [`llmo_core::agent::run::turn_texts`] counts them for the budget's hold): each tool's name,
/// description and parameters; each turn's text, each call's name and arguments, each result.
pub fn request_texts(req: &super::ChatRequest) -> Vec<String> {
    let mut out = Vec::new();
    // Each image at its bound ([`llmo_core::engine::budget::IMAGE_TOKENS`]).
    out.extend(req.images.iter().map(|_| llmo_core::engine::budget::image_stand_in()));
    for t in &req.tools {
        out.extend([t.name.clone(), t.description.clone(), t.parameters.to_string()]);
    }
    for t in &req.turns {
        match t {
            Turn::Assistant { text, calls } => {
                out.push(text.clone());
                for c in calls {
                    out.push(c.name.clone());
                    out.push(match &c.arguments {
                        Value::String(raw) => raw.clone(),
                        v => v.to_string(),
                    });
                }
            }
            Turn::Results { results } => out.extend(results.iter().map(|r| r.content.clone())),
            Turn::User { text } => out.push(text.clone()),
        }
    }
    out
}

/// OpenAI Chat Completions: `tools`, `tool_choice`, `parallel_tool_calls` of a request.
pub(crate) fn openai_tools(b: &mut Value, tools: &[Tool], choice: Option<&ToolChoice>, parallel: Option<bool>) {
    if tools.is_empty() {
        return;
    }
    b["tools"] = Value::Array(
        tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}})
            })
            .collect(),
    );
    if let Some(c) = choice {
        b["tool_choice"] = match c {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
        };
    }
    if let Some(p) = parallel {
        b["parallel_tool_calls"] = json!(p);
    }
}

/// OpenAI Chat Completions: the messages of `turns`.
pub(crate) fn openai_turns(turns: &[Turn]) -> Vec<Value> {
    let mut out = Vec::new();
    for t in turns {
        match t {
            Turn::Assistant { text, calls } => {
                let mut m =
                    json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { json!(text) }});
                if !calls.is_empty() {
                    m["tool_calls"] = Value::Array(
                        calls
                            .iter()
                            .map(|c| {
                                let args = match &c.arguments {
                                    Value::String(raw) => raw.clone(),
                                    v => v.to_string(),
                                };
                                json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": args}})
                            })
                            .collect(),
                    );
                }
                out.push(m);
            }
            Turn::Results { results } => {
                for r in results {
                    out.push(json!({"role": "tool", "tool_call_id": r.call_id, "content": r.content}));
                }
            }
            Turn::User { text } => out.push(json!({"role": "user", "content": text})),
        }
    }
    out
}

/// OpenAI Chat Completions: the calls of a response's `choices[0].message`.
pub(crate) fn openai_calls(message: &Value) -> Result<Vec<ToolCall>, String> {
    let Some(calls) = message.get("tool_calls") else { return Ok(Vec::new()) };
    let Some(calls) = calls.as_array() else {
        return if calls.is_null() { Ok(Vec::new()) } else { Err("tool_calls is not a list".into()) };
    };
    calls
        .iter()
        .map(|c| {
            let id = c.get("id").and_then(Value::as_str).ok_or("a tool call without an id")?;
            let name = c.pointer("/function/name").and_then(Value::as_str).ok_or("a tool call without a name")?;
            let raw = c.pointer("/function/arguments").and_then(Value::as_str).unwrap_or("{}");
            let arguments = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
            Ok(ToolCall { id: id.to_string(), name: name.to_string(), arguments })
        })
        .collect()
}

/// Anthropic Messages: `tools` and `tool_choice` of a request.
pub(crate) fn anthropic_tools(b: &mut Value, tools: &[Tool], choice: Option<&ToolChoice>, parallel: Option<bool>) {
    if tools.is_empty() {
        return;
    }
    b["tools"] = Value::Array(
        tools
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "input_schema": t.parameters}))
            .collect(),
    );
    let mut c = match choice {
        None | Some(ToolChoice::Auto) => json!({"type": "auto"}),
        Some(ToolChoice::None) => json!({"type": "none"}),
        Some(ToolChoice::Required) => json!({"type": "any"}),
        Some(ToolChoice::Tool(name)) => json!({"type": "tool", "name": name}),
    };
    if parallel == Some(false) && c["type"] != "none" {
        c["disable_parallel_tool_use"] = json!(true);
    }
    if choice.is_some() || parallel == Some(false) {
        b["tool_choice"] = c;
    }
}

/// Anthropic Messages: the messages of `turns` (results go back as a user message of
/// `tool_result` blocks).
pub(crate) fn anthropic_turns(turns: &[Turn]) -> Vec<Value> {
    turns
        .iter()
        .map(|t| match t {
            Turn::Assistant { text, calls } => {
                let mut blocks = Vec::new();
                if !text.is_empty() {
                    blocks.push(json!({"type": "text", "text": text}));
                }
                for c in calls {
                    let input = match &c.arguments {
                        Value::Object(_) => c.arguments.clone(),
                        // What the model sent that was no object goes back as it was sent.
                        other => json!({"_raw": other}),
                    };
                    blocks.push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input}));
                }
                json!({"role": "assistant", "content": blocks})
            }
            Turn::Results { results } => json!({
                "role": "user",
                "content": results
                    .iter()
                    .map(|r| json!({"type": "tool_result", "tool_use_id": r.call_id, "content": r.content, "is_error": r.is_error}))
                    .collect::<Vec<_>>(),
            }),
            Turn::User { text } => json!({"role": "user", "content": text}),
        })
        .collect()
}

/// Anthropic Messages: the `tool_use` blocks of a response's `content`.
pub(crate) fn anthropic_calls(content: &[Value]) -> Result<Vec<ToolCall>, String> {
    content
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
        .map(|b| {
            let id = b.get("id").and_then(Value::as_str).ok_or("a tool_use block without an id")?;
            let name = b.get("name").and_then(Value::as_str).ok_or("a tool_use block without a name")?;
            Ok(ToolCall {
                id: id.to_string(),
                name: name.to_string(),
                arguments: b.get("input").cloned().unwrap_or(json!({})),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{ChatRequest, anthropic, openai};
    use super::*;
    use llmo_core::tasks::Role;

    fn weather() -> Tool {
        Tool {
            name: "weather".into(),
            description: "Current weather for a city".into(),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
        }
    }

    /// A second turn: the model asked for two calls, one failed.
    fn request(choice: Option<ToolChoice>, parallel: Option<bool>) -> ChatRequest {
        ChatRequest {
            model: "m".into(),
            system: Some("Be brief.".into()),
            messages: vec![(Role::User, "Weather in Paris and Oslo?".into())],
            tools: vec![weather()],
            tool_choice: choice,
            parallel_tool_calls: parallel,
            turns: vec![
                Turn::Assistant {
                    text: String::new(),
                    calls: vec![
                        ToolCall { id: "c1".into(), name: "weather".into(), arguments: json!({"city": "Paris"}) },
                        ToolCall { id: "c2".into(), name: "weather".into(), arguments: json!("{city: Oslo") },
                    ],
                },
                Turn::Results {
                    results: vec![
                        ToolResult {
                            call_id: "c1".into(),
                            name: "weather".into(),
                            content: "12°C".into(),
                            is_error: false,
                        },
                        ToolResult {
                            call_id: "c2".into(),
                            name: "weather".into(),
                            content: "arguments are not JSON".into(),
                            is_error: true,
                        },
                    ],
                },
            ],
            ..ChatRequest::default()
        }
    }

    #[test]
    fn openai_requests_carry_tools_calls_and_results() {
        let b = openai::body(&request(Some(ToolChoice::Tool("weather".into())), Some(false)));
        assert_eq!(b["tools"][0]["type"], "function");
        assert_eq!(b["tools"][0]["function"]["name"], "weather");
        assert_eq!(b["tools"][0]["function"]["parameters"]["required"], json!(["city"]));
        assert_eq!(b["tool_choice"], json!({"type": "function", "function": {"name": "weather"}}));
        assert_eq!(b["parallel_tool_calls"], json!(false));
        let m = b["messages"].as_array().unwrap();
        assert_eq!(m.len(), 5, "system, user, the calls, two results: {m:?}");
        assert_eq!(m[2]["role"], "assistant");
        assert_eq!(m[2]["content"], Value::Null);
        assert_eq!(m[2]["tool_calls"][0]["function"]["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(m[2]["tool_calls"][1]["function"]["arguments"], "{city: Oslo", "sent back as the model sent it");
        assert_eq!(m[3], json!({"role": "tool", "tool_call_id": "c1", "content": "12°C"}));
        assert_eq!(m[4]["tool_call_id"], "c2");
        // No tools: none of the fields.
        let plain = openai::body(&ChatRequest { model: "m".into(), ..ChatRequest::default() });
        assert!(plain.get("tools").is_none() && plain.get("tool_choice").is_none());
    }

    #[test]
    fn openai_responses_give_their_calls() {
        let body = json!({
            "model": "gpt-4o",
            "choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": "not json"}}
            ]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 20}
        });
        let r = openai::parse(&body.to_string(), "gpt-4o").unwrap();
        assert_eq!(r.text, "");
        assert_eq!(r.tool_calls.len(), 2);
        assert_eq!(
            r.tool_calls[0],
            ToolCall { id: "call_1".into(), name: "weather".into(), arguments: json!({"city": "Paris"}) }
        );
        assert_eq!(r.tool_calls[1].arguments, json!("not json"));
        let bad = json!({"choices": [{"message": {"content": null, "tool_calls": [{"type": "function"}]}}]});
        assert!(openai::parse(&bad.to_string(), "m").is_err(), "a call without an id is malformed");
    }

    #[test]
    fn anthropic_requests_carry_tools_uses_and_results() {
        let b = anthropic::body(&request(Some(ToolChoice::Required), Some(false)));
        assert_eq!(
            b["tools"][0],
            json!({"name": "weather", "description": "Current weather for a city", "input_schema": weather().parameters})
        );
        assert_eq!(b["tool_choice"], json!({"type": "any", "disable_parallel_tool_use": true}));
        let m = b["messages"].as_array().unwrap();
        assert_eq!(m.len(), 3, "user, the calls, the results: {m:?}");
        assert_eq!(m[1]["role"], "assistant");
        assert_eq!(
            m[1]["content"][0],
            json!({"type": "tool_use", "id": "c1", "name": "weather", "input": {"city": "Paris"}})
        );
        assert_eq!(m[1]["content"][1]["input"], json!({"_raw": "{city: Oslo"}));
        assert_eq!(m[2]["role"], "user");
        assert_eq!(
            m[2]["content"][1],
            json!({"type": "tool_result", "tool_use_id": "c2", "content": "arguments are not JSON", "is_error": true})
        );
        let auto = anthropic::body(&request(None, None));
        assert!(auto.get("tool_choice").is_none(), "the provider's default (auto)");
    }

    #[test]
    fn anthropic_responses_give_their_uses() {
        let body = json!({
            "model": "claude-sonnet-4-5",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}}
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 40, "output_tokens": 12}
        });
        let r = anthropic::parse(&body.to_string(), "claude").unwrap();
        assert_eq!(r.text, "Let me check.");
        assert_eq!(
            r.tool_calls,
            vec![ToolCall { id: "toolu_1".into(), name: "weather".into(), arguments: json!({"city": "Oslo"}) }]
        );
        let bad = json!({"content": [{"type": "tool_use", "name": "weather"}]});
        assert!(anthropic::parse(&bad.to_string(), "m").is_err());
    }

    /// Through the providers, against scripted servers: the request as sent, the calls as read.
    #[tokio::test]
    async fn both_providers_round_trip_a_tool_call() {
        use super::super::{Anthropic, OpenAi, Provider, ProviderConfig};
        use wiremock::matchers::{body_partial_json, method, path};
        let server = wiremock::MockServer::start().await;
        wiremock::Mock::given(method("POST"))
            .and(path("/chat/completions"))
            .and(body_partial_json(json!({"tools": [{"function": {"name": "weather"}}], "tool_choice": "auto"})))
            .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(json!({
                "choices": [{"message": {"content": null, "tool_calls": [
                    {"id": "a", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}]}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1}
            })))
            .expect(1)
            .mount(&server)
            .await;
        wiremock::Mock::given(method("POST"))
            .and(path("/v1/messages"))
            .and(body_partial_json(json!({"tools": [{"name": "weather"}]})))
            .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(json!({
                "content": [{"type": "tool_use", "id": "b", "name": "weather", "input": {"city": "Rome"}}],
                "usage": {"input_tokens": 1, "output_tokens": 1}
            })))
            .expect(1)
            .mount(&server)
            .await;
        let config = |kind| ProviderConfig {
            kind,
            base_url: server.uri(),
            api_key: Some("k".into()),
            api_key_env: None,
            timeout: std::time::Duration::from_secs(10),
            free: false,
            set_by: None,
            region: None,
            models: Vec::new(),
        };
        let req = ChatRequest {
            model: "m".into(),
            messages: vec![(Role::User, "Rome?".into())],
            tools: vec![weather()],
            tool_choice: Some(ToolChoice::Auto),
            ..ChatRequest::default()
        };
        let client = reqwest::Client::new();
        let a = OpenAi::new(client.clone(), "openai", &config(super::super::Kind::Openai)).chat(&req).await.unwrap();
        let b = Anthropic::new(client, "anthropic", &config(super::super::Kind::Anthropic)).chat(&req).await.unwrap();
        for (r, id) in [(a, "a"), (b, "b")] {
            assert_eq!(
                r.tool_calls,
                vec![ToolCall { id: id.into(), name: "weather".into(), arguments: json!({"city": "Rome"}) }]
            );
        }
    }
}
