//! The `agent` executor: one model turn of an agent ([`llmo_core::agent::Step::Turn`]). The
//! engine keeps the loop (which turn, which calls, their results); this asks the model for the
//! next turn with everything so far, through the same path as an `llm` task: fallbacks,
//! policies, the budget's allowance, rate limits, circuit breakers, fixtures and traces.

use std::sync::Arc;

use async_trait::async_trait;
use llmo_core::agent::{AgentWith, Step, TurnRec};
use llmo_core::engine::{AttemptResult, Usage};
use llmo_core::tasks::{LlmWith, ResponseFormat, Role};
use serde_json::Value;

use super::tools::{Tool, ToolCall, ToolChoice, ToolResult, Turn};
use super::{ChatRequest, LlmExecutor, MAX_IMAGES, parts_of, request_of};
use crate::executor::{Attempt, Deferred, Executor};

/// Runs an agent's model turns on an [`LlmExecutor`].
pub struct AgentExecutor(pub Arc<LlmExecutor>);

/// The `llm` settings of an agent's turns (its model, fallbacks, sampling, output schema).
fn llm_of(w: &AgentWith) -> LlmWith {
    LlmWith {
        provider: w.provider.clone(),
        model: w.model.clone(),
        fallback_models: w.fallback_models.clone(),
        system: w.system.clone(),
        prompt: w.prompt.clone(),
        messages: None,
        temperature: w.temperature,
        top_p: w.top_p,
        max_tokens: w.max_tokens,
        stop: w.stop.clone(),
        seed: w.seed,
        response_format: w.output_schema.as_ref().map(|_| ResponseFormat::Json),
        output_schema: w.output_schema.clone(),
    }
}

/// The request of turn `history.len() + 1`: the task's messages, its tools, and every turn so
/// far with the results of its calls.
pub fn turn_request(w: &AgentWith, history: &[TurnRec]) -> Result<ChatRequest, String> {
    let mut req = request_of(&llm_of(w))?;
    if let Some(messages) = &w.messages {
        let Value::Array(list) = messages else {
            return Err(format!("`messages` must be a list of {{role, content}}, not {}", kind(messages)));
        };
        for (i, m) in list.iter().enumerate() {
            let role = match m.get("role").and_then(Value::as_str) {
                Some("user") => Role::User,
                Some("assistant") => Role::Assistant,
                Some("system") => Role::System,
                other => return Err(format!("`messages[{i}].role` is {other:?}: user, assistant or system")),
            };
            let (content, images) = match m.get("content") {
                Some(Value::String(s)) => (s.clone(), Vec::new()),
                Some(Value::Array(parts)) => parts_of(i, parts)?,
                Some(v @ Value::Object(_)) => (v.to_string(), Vec::new()),
                other => return Err(format!("`messages[{i}].content` is {other:?}: a string or a list of parts")),
            };
            match role {
                Role::System if images.is_empty() => {
                    req.system = Some(match req.system.take() {
                        Some(s) => format!("{s}\n\n{content}"),
                        None => content,
                    })
                }
                Role::System => return Err(format!("`messages[{i}]`: a system message has no images")),
                r => {
                    let k = req.messages.len();
                    req.images.extend(images.into_iter().map(|img| (k, img)));
                    req.messages.push((r, content));
                }
            }
        }
    }
    req.tools = w
        .tools
        .iter()
        .map(|t| Tool { name: t.name.clone(), description: t.description.clone(), parameters: t.parameters.clone() })
        .collect();
    req.tool_choice = w.tool_choice.as_deref().map(|c| match c {
        "auto" => ToolChoice::Auto,
        "none" => ToolChoice::None,
        "required" => ToolChoice::Required,
        name => ToolChoice::Tool(name.to_string()),
    });
    req.parallel_tool_calls = w.parallel_tool_calls;
    if req.images.len() > MAX_IMAGES {
        return Err(format!("the messages carry {} images; at most {MAX_IMAGES} are sent", req.images.len()));
    }
    for t in history {
        let calls = t
            .calls
            .iter()
            .map(|c| ToolCall { id: c.id.clone(), name: c.name.clone(), arguments: c.arguments.clone() })
            .collect();
        req.turns.push(Turn::Assistant { text: t.text.clone(), calls });
        if !t.calls.is_empty() {
            let results = t
                .calls
                .iter()
                .map(|c| {
                    let (content, is_error) = c.content();
                    ToolResult { call_id: c.id.clone(), name: c.name.clone(), content, is_error }
                })
                .collect();
            req.turns.push(Turn::Results { results });
        }
    }
    Ok(req)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn fatal(error: String) -> AttemptResult {
    AttemptResult::Failed { error, retryable: false, usage: Usage::default() }
}

#[async_trait]
impl Executor for AgentExecutor {
    async fn execute(&self, a: &Attempt) -> AttemptResult {
        loop {
            match self.execute_or_defer(a).await {
                Ok(r) => return r,
                Err(d) => tokio::time::sleep(d.after).await,
            }
        }
    }

    async fn execute_or_defer(&self, a: &Attempt) -> Result<AttemptResult, Deferred> {
        let w: AgentWith = match serde_json::from_value(a.with.clone()) {
            Ok(w) => w,
            Err(e) => return Ok(fatal(format!("agent: {e}"))),
        };
        let Some(Step::Turn { history, .. }) = a.step.as_deref() else {
            return Ok(fatal("agent: this attempt is not one of the agent's turns".into()));
        };
        let req = match turn_request(&w, history) {
            Ok(r) => r,
            Err(e) => return Ok(fatal(format!("agent: {e}"))),
        };
        let (r, usage) = self.0.complete(a, Usage::default(), &llm_of(&w), &req).await?;
        Ok(match r {
            Ok(output) => AttemptResult::Succeeded { output: output.into(), usage },
            Err((error, retryable)) => AttemptResult::Failed { error, retryable, usage },
        })
    }
}

#[cfg(test)]
mod tests {
    use llmo_core::agent::{CallRec, CallStatus};
    use llmo_core::engine::Output;
    use serde_json::json;

    use super::super::Image;
    use super::*;

    fn agent(v: Value) -> AgentWith {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_turn_carries_the_messages_the_tools_and_every_turn_so_far() {
        let w = agent(json!({
            "model": "m", "system": "Be brief.", "tool_choice": "required", "parallel_tool_calls": false,
            "messages": [
                {"role": "system", "content": "Answer in French."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Bonjour"},
                {"role": "user", "content": "Weather in Paris?"}
            ],
            "tools": [{"name": "weather", "description": "d", "parameters": {"type": "object"}, "run": {"type": "http"}}]
        }));
        let call = |id: &str, status, result: Option<Value>, error: Option<&str>| CallRec {
            status,
            result: result.map(Output::new),
            ..CallRec::asked(id.into(), "weather".into(), json!({"city": "Paris"}), error.map(str::to_string))
        };
        let history = vec![TurnRec {
            attempt: 1,
            text: "Checking.".into(),
            model: None,
            tokens: 0,
            cost_usd: 0.0,
            started_at: None,
            ended_at: 0,
            calls: vec![
                call("a", CallStatus::Succeeded, Some(json!("sunny")), None),
                call("b", CallStatus::Failed, None, Some("HTTP 503")),
            ],
        }];
        let req = turn_request(&w, &history).unwrap();
        assert_eq!(req.system.as_deref(), Some("Be brief.\n\nAnswer in French."));
        assert_eq!(req.messages.len(), 3);
        assert_eq!(req.messages[1], (Role::Assistant, "Bonjour".to_string()));
        assert_eq!(req.tools[0].name, "weather");
        assert_eq!(req.tool_choice, Some(ToolChoice::Required));
        assert_eq!(req.parallel_tool_calls, Some(false));
        assert_eq!(req.turns.len(), 2);
        let Turn::Results { results } = &req.turns[1] else { panic!("{:?}", req.turns) };
        assert_eq!((results[0].content.as_str(), results[0].is_error), ("sunny", false));
        assert_eq!((results[1].content.as_str(), results[1].is_error), ("error: HTTP 503", true));
        // What a budget's bound counts is what the request carries.
        assert!(super::super::tools::request_texts(&req).iter().any(|t| t == "error: HTTP 503"));
    }

    #[test]
    fn message_parts_carry_images_to_each_wire_and_count_at_their_bound() {
        let png = "iVBORw0KGgo=";
        let w = agent(json!({"model": "m", "messages": [
            {"role": "user", "content": "Hello"},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image", "url": "https://img.example.com/a.jpg"},
                {"type": "image", "data": png, "media_type": "image/png"}
            ]}
        ]}));
        let req = turn_request(&w, &[]).unwrap();
        assert_eq!(req.messages[1].1, "What is in these?");
        assert_eq!(
            req.images,
            vec![
                (1, Image::Url("https://img.example.com/a.jpg".into())),
                (1, Image::Data { media_type: "image/png".into(), data: png.into() })
            ]
        );
        let o = super::super::openai::body(&req);
        assert_eq!(o["messages"][0]["content"], "Hello");
        assert_eq!(
            o["messages"][1]["content"][1],
            json!({"type": "image_url", "image_url": {"url": "https://img.example.com/a.jpg"}})
        );
        assert_eq!(o["messages"][1]["content"][2]["image_url"]["url"], format!("data:image/png;base64,{png}"));
        let a = super::super::anthropic::body(&req);
        assert_eq!(a["messages"][1]["content"][0], json!({"type": "text", "text": "What is in these?"}));
        assert_eq!(
            a["messages"][1]["content"][1]["source"],
            json!({"type": "url", "url": "https://img.example.com/a.jpg"})
        );
        assert_eq!(
            a["messages"][1]["content"][2]["source"],
            json!({"type": "base64", "media_type": "image/png", "data": png})
        );
        // Each image counts at its bound, in the executor's and in the engine's reckoning.
        let bound = llmo_core::engine::budget::IMAGE_TOKENS;
        assert_eq!(super::super::tools::request_texts(&req).iter().filter(|t| t.len() == bound).count(), 2);
        let engine = llmo_core::agent::run::turn_texts(&serde_json::to_value(&w).unwrap(), &[]);
        assert_eq!(engine.iter().filter(|t| t.len() == bound).count(), 2);
    }

    #[test]
    fn an_llm_tasks_messages_take_parts_too() {
        let src = r#"apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: vision }
spec:
  inputs: { photo: { type: string } }
  tasks:
    - id: look
      type: llm
      with:
        model: gpt-4o-mini
        messages:
          - role: user
            content:
              - { type: text, text: "What is in the photo?" }
              - { type: image, data: "{{ inputs.photo }}", media_type: image/jpeg }
"#;
        let outcome = llmo_core::validate::Validator::default()
            .validate(&llmo_core::source::SourceFile::new("vision.yaml", src.to_string()));
        assert!(outcome.checked.is_some(), "{:?}", outcome.report.records());
        let w: LlmWith = serde_json::from_value(json!({"model": "m", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What?"}, {"type": "image", "data": "aGk=", "media_type": "image/jpeg"}]}
        ]}))
        .unwrap();
        let req = request_of(&w).unwrap();
        assert_eq!(req.messages, vec![(Role::User, "What?".to_string())]);
        assert_eq!(req.images, vec![(0, Image::Data { media_type: "image/jpeg".into(), data: "aGk=".into() })]);
        let bad: LlmWith = serde_json::from_value(json!({"model": "m", "messages": [
            {"role": "user", "content": [{"type": "image", "url": "http://plain.example/a.png"}]}
        ]}))
        .unwrap();
        assert!(request_of(&bad).unwrap_err().contains("https:// or s3://"));
        assert!(
            serde_json::from_value::<LlmWith>(
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "audio"}]}]})
            )
            .is_err()
        );
    }

    #[test]
    fn bad_parts_are_refused_saying_where() {
        let bad = |part: Value| {
            let w = agent(json!({"model": "m", "messages": [{"role": "user", "content": [part]}]}));
            turn_request(&w, &[]).unwrap_err()
        };
        assert!(bad(json!({"type": "image", "url": "http://x/a.png"})).contains("messages[0].content[0]"));
        assert!(bad(json!({"type": "image", "url": "file:///etc/passwd"})).contains("https:// or s3://"));
        assert!(bad(json!({"type": "image", "data": "aGk=", "media_type": "text/html"})).contains("media_type"));
        assert!(bad(json!({"type": "image", "data": "not base64!", "media_type": "image/png"})).contains("not base64"));
        assert!(bad(json!({"type": "image"})).contains("exactly one of"));
        assert!(bad(json!({"type": "audio"})).contains("text or image"));
        let many: Vec<Value> = (0..21).map(|_| json!({"type": "image", "url": "https://x.example/a.png"})).collect();
        let w = agent(json!({"model": "m", "messages": [{"role": "user", "content": many}]}));
        assert!(turn_request(&w, &[]).unwrap_err().contains("at most 20"));
    }

    #[test]
    fn messages_that_are_not_a_conversation_are_refused_with_where() {
        let e = turn_request(&agent(json!({"model": "m", "messages": "hi"})), &[]).unwrap_err();
        assert!(e.contains("must be a list"), "{e}");
        let e = turn_request(&agent(json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]})), &[])
            .unwrap_err();
        assert!(e.contains("messages[0].role"), "{e}");
    }
}
