//! The `mock` provider: deterministic, offline answers for examples and tests. Its text names
//! itself (`[mock gpt-4o-mini] ...`); with a schema it answers the smallest JSON the schema
//! accepts (a grading schema with a `score` gets 0.8). Tokens are counted as words.

use std::time::Duration;

use async_trait::async_trait;
use llmo_core::engine::builtin::{example_for_schema, mock_text};
use serde_json::json;

use super::{CallError, ChatRequest, ChatResponse, Provider};

pub struct Mock {
    /// How long each answer takes ([`super::Config::mock_delay`]).
    delay: Option<Duration>,
}

impl Mock {
    /// The mock provider, answering after `delay`.
    pub fn new(delay: Option<Duration>) -> Self {
        Mock { delay }
    }
}

#[async_trait]
impl Provider for Mock {
    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, CallError> {
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
        let prompt: Vec<&str> = req.messages.iter().map(|(_, c)| c.as_str()).collect();
        let text = match &req.schema {
            Some(s) if s.pointer("/properties/score").is_some() => {
                json!({"score": 0.8, "reason": "mock judge"}).to_string()
            }
            Some(s) => example_for_schema(s).to_string(),
            None if req.json => "{}".to_string(),
            None => mock_text(&req.model, &prompt.join("\n")),
        };
        let (prompt_tokens, completion_tokens) = word_usage(req, &text);
        Ok(ChatResponse {
            prompt_tokens,
            completion_tokens,
            text,
            model: req.model.clone(),
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            tool_calls: Vec::new(),
        })
    }
}

/// Tokens as the mock counts them: the words of the prompt (system and messages) and of the
/// answer.
pub(crate) fn word_usage(req: &ChatRequest, answer: &str) -> (u64, u64) {
    let words = |s: &str| s.split_whitespace().count() as u64;
    let prompt = req.messages.iter().map(|(_, c)| words(c)).sum::<u64>() + req.system.as_deref().map_or(0, words);
    (prompt, words(answer))
}
