//! A task type of our own, `sentiment`, for an application that embeds LLM-Orchestrator
//! (walked through in `docs/embedding.md`).
//!
//! ```yaml
//! - id: mood
//!   type: sentiment
//!   with: { text: "{{ tasks.reply.output.text }}", threshold: 0.2 }
//! ```
//!
//! Output: `{ score, label, matched }`: `score` in [-1, 1] from a word lexicon (the share of
//! positive minus negative words among those it knows), `label` `positive`, `negative` or
//! `neutral` by `threshold`, and the words it counted.

use std::sync::Arc;

use async_trait::async_trait;
use llmo_core::engine::AttemptResult;
use llmo_core::engine::builtin::TaskError;
use llmo_core::tasks::TaskType;
use llmo_runtime::embed::Engine;
use llmo_runtime::executor::{Attempt, Executor, failed, succeeded};
use llmo_runtime::store::RunStore;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

/// The `with` block of `type: sentiment`: its JSON Schema is derived from this struct, so
/// validation (and the editor schema) refuse a missing `text` or a misspelt field.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SentimentWith {
    /// The text to score (a template).
    pub text: String,
    /// How far from 0 a score must be to be `positive` or `negative` (default 0.1).
    #[serde(default)]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub threshold: Option<f64>,
}

const POSITIVE: &[&str] = &[
    "good",
    "great",
    "excellent",
    "love",
    "happy",
    "thanks",
    "thank",
    "helpful",
    "fast",
    "perfect",
    "resolved",
    "glad",
];
const NEGATIVE: &[&str] = &[
    "bad",
    "terrible",
    "awful",
    "hate",
    "angry",
    "slow",
    "broken",
    "refund",
    "wrong",
    "worst",
    "useless",
    "disappointed",
];

/// The executor: pure and fast, so it runs in place ([`Executor::inline`]).
pub struct Sentiment;

impl Sentiment {
    pub fn task_type() -> TaskType {
        TaskType::of::<SentimentWith>("sentiment", "Score a text's sentiment from a word lexicon.")
    }

    pub fn score(w: &SentimentWith) -> serde_json::Value {
        let (mut pos, mut neg, mut matched) = (0usize, 0usize, Vec::new());
        for word in w.text.split(|c: char| !c.is_alphanumeric()).filter(|t| !t.is_empty()) {
            let word = word.to_lowercase();
            if POSITIVE.contains(&word.as_str()) {
                pos += 1;
                matched.push(word);
            } else if NEGATIVE.contains(&word.as_str()) {
                neg += 1;
                matched.push(word);
            }
        }
        let score = if pos + neg == 0 { 0.0 } else { (pos as f64 - neg as f64) / (pos + neg) as f64 };
        let t = w.threshold.unwrap_or(0.1);
        let label = if score > t {
            "positive"
        } else if score < -t {
            "negative"
        } else {
            "neutral"
        };
        json!({ "score": score, "label": label, "matched": matched })
    }
}

#[async_trait]
impl Executor for Sentiment {
    async fn execute(&self, a: &Attempt) -> AttemptResult {
        match serde_json::from_value::<SentimentWith>(a.with.clone()) {
            Ok(w) => succeeded(Self::score(&w)),
            Err(e) => failed(TaskError::fatal(format!("sentiment: {e}"))),
        }
    }

    fn inline(&self) -> bool {
        true
    }
}

/// The engine this application runs: the built-in task types (models answered by the mock
/// provider when `mock`), `sentiment`, and runs kept in `store`.
pub fn engine(store: Arc<dyn RunStore>, mock: bool) -> Engine {
    let setup = llmo_runtime::Setup::new(llmo_runtime::providers::Config::builtin(), mock);
    Engine::builder().standard(setup).task_type(Sentiment::task_type(), Arc::new(Sentiment)).store(store).build()
}
