//! The `mock` provider: deterministic, offline answers for examples and tests. Its text names
//! itself (`[mock gpt-4o-mini] ...`); with a schema it answers the smallest JSON the schema
//! accepts (a grading schema with a `score` gets 0.8). Tokens are counted as words.

use async_trait::async_trait;
use llmo_core::engine::builtin::{example_for_schema, mock_llm};
use serde_json::json;

use super::{CallError, ChatRequest, ChatResponse, Provider};

pub struct Mock;

#[async_trait]
impl Provider for Mock {
    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, CallError> {
        // Lets tests interrupt a run while a model call is in flight.
        if let Some(ms) = std::env::var("LLMO_MOCK_DELAY_MS").ok().and_then(|v| v.parse().ok()) {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        let prompt: Vec<&str> = req.messages.iter().map(|(_, c)| c.as_str()).collect();
        let with = json!({ "model": req.model, "prompt": prompt.join("\n"), "system": req.system });
        let text = match &req.schema {
            Some(s) if s.pointer("/properties/score").is_some() => {
                json!({"score": 0.8, "reason": "mock judge"}).to_string()
            }
            Some(s) => example_for_schema(s).to_string(),
            None if req.json => "{}".to_string(),
            None => mock_llm(&with)["text"].as_str().unwrap_or_default().to_string(),
        };
        let words = |s: &str| s.split_whitespace().count() as u64;
        Ok(ChatResponse {
            prompt_tokens: prompt.iter().map(|p| words(p)).sum::<u64>() + req.system.as_deref().map_or(0, words),
            completion_tokens: words(&text),
            text,
            model: req.model.clone(),
        })
    }
}
