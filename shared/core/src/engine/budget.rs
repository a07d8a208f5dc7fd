//! Budgets that fail closed: what an attempt may spend at most, worked out before it starts.
//!
//! A run with a `budget` reserves, for each attempt it dispatches, the attempt's worst case:
//! every model call it may make (an `llm` task's model or the dearest of its fallbacks, each
//! `llm_judge` check of an `evaluate` task) priced at its rendered prompt plus the answer's
//! `max_tokens`. The engine starts an attempt only while the money spent plus the reservations
//! of attempts in flight plus this one stay within the budget, and settles a reservation with
//! the attempt's real usage when its result comes back. The executors never spend more than
//! their attempt's reservation ([`Allowance`]): so spent + reserved never exceeds the limit, in
//! one process or across a fleet (the reservations live in the run's state, written by the
//! same compare-and-set as everything else).
//!
//! Prices are the runtime's (its config); a run freezes the ones it needs into its state when
//! it is created ([`PriceBook`]), so a rebuild from the log reaches the same decisions
//! whatever the prices say later.
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Estimate;

/// `max_tokens` of an answer when a task sets none: a run under a budget sends it, so the
/// worst case is a real bound.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

/// The most a model judge may answer (its answer is a small JSON object).
pub const JUDGE_MAX_TOKENS: u32 = 300;

/// Whether attempts of a task type may make model calls, and so spend: they hold part of a
/// budget while they run, and a runtime lets them answer when their run ends meanwhile.
pub fn spends(ty: &str) -> bool {
    matches!(ty, "llm" | "evaluate" | crate::agent::AGENT)
}

/// Whether a task type is known to spend nothing (the built-ins without model calls): only
/// these run after a budget stop and regardless of the budget. A type an application
/// registered may report usage, so it stays under the budget (fail closed).
pub fn spends_nothing(ty: &str) -> bool {
    matches!(ty, "transform" | "policy" | "http" | "wait")
}

/// The model judge's system prompt (the runtime sends exactly this).
pub const JUDGE_SYSTEM: &str =
    "You grade texts against criteria. Answer only with JSON: {\"score\": <0..1>, \"reason\": \"...\"}.";

/// The JSON Schema a judge's answer must match (sent with its request).
pub fn judge_schema() -> Value {
    serde_json::json!({
        "type": "object", "required": ["score"],
        "properties": { "score": { "type": "number", "minimum": 0, "maximum": 1 }, "reason": { "type": "string" } }
    })
}

/// The judge's user prompt for `criteria` and `text`.
pub fn judge_prompt(criteria: &str, text: &str) -> String {
    format!("Criteria:\n{criteria}\n\nText:\n{text}")
}

/// Prices a run needs, frozen when it is created: USD per million tokens, input then output,
/// by model; providers that cost nothing; the default provider and the providers known by
/// name (to read `provider/model` fallbacks as the runtime does).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PriceBook {
    #[serde(default)]
    pub models: BTreeMap<String, [f64; 2]>,
    #[serde(default)]
    pub free: BTreeSet<String>,
    #[serde(default)]
    pub providers: BTreeSet<String>,
    #[serde(default)]
    pub default_provider: String,
    /// Every call is free (offline runs with the mock provider).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_free: bool,
}

/// What one attempt may spend: its reservation, in each dimension the budget limits
/// (`None`: not limited). The executors call a model only when the call's worst case fits in
/// what is left of it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Allowance {
    pub cost_usd: Option<f64>,
    pub tokens: Option<u64>,
}

impl Allowance {
    /// Whether a call of worst case `call` fits after `used` was spent.
    pub fn fits(&self, used: Estimate, call: Estimate) -> bool {
        // A hair of slack for float sums: the reservation was the same sum.
        self.cost_usd.is_none_or(|c| used.cost_usd + call.cost_usd <= c * (1.0 + 1e-9) + 1e-15)
            && self.tokens.is_none_or(|t| used.tokens + call.tokens <= t)
    }

    /// What is left of it after `used`, for messages.
    pub fn left(&self, used: Estimate) -> String {
        let mut parts = Vec::new();
        if let Some(c) = self.cost_usd {
            parts.push(format!("${:.6}", (c - used.cost_usd).max(0.0)));
        }
        if let Some(t) = self.tokens {
            parts.push(format!("{} tokens", t.saturating_sub(used.tokens)));
        }
        parts.join(" and ")
    }
}

/// An upper bound of the tokens a prompt counts as: one per UTF-8 byte (a byte-level BPE
/// token is at least one byte), plus the chat format's few tokens per message.
pub fn prompt_tokens_bound<'a>(texts: impl IntoIterator<Item = &'a str>) -> u64 {
    texts.into_iter().map(|t| t.len() as u64 + 8).sum::<u64>() + 16
}

/// What one image of a message counts as in a prompt's bound: its tokens at most (a large image
/// is ~1,600 tokens on Claude, up to ~2,500 on OpenAI's high detail; this is above both), as
/// bytes of a stand-in text, since [`prompt_tokens_bound`] counts texts by their bytes.
pub const IMAGE_TOKENS: usize = 4_800;

/// The stand-in text an image counts as in a prompt's bound ([`IMAGE_TOKENS`] bytes).
pub fn image_stand_in() -> String {
    " ".repeat(IMAGE_TOKENS)
}

/// What the `messages` of a rendered `with` count as prompt, piece by piece: each message's
/// text, or for parts each text and each image at its bound ([`image_stand_in`], not its bytes).
pub fn message_texts(with: &Value, out: &mut Vec<String>) {
    for m in with.get("messages").and_then(Value::as_array).into_iter().flatten() {
        match m.get("content") {
            Some(Value::String(c)) => out.push(c.clone()),
            Some(Value::Array(parts)) => {
                for p in parts {
                    match p.get("type").and_then(Value::as_str) {
                        Some("image") => out.push(image_stand_in()),
                        _ => out
                            .push(p.get("text").and_then(Value::as_str).map_or_else(|| p.to_string(), str::to_string)),
                    }
                }
            }
            Some(other) => out.push(other.to_string()),
            None => {}
        }
    }
}

/// The price listed for `model` among `listed` (name, price): its own name; else the longest
/// listed name it extends at a `-` with a date or version only (`gpt-4o-mini-2024-07-18` is
/// `gpt-4o-mini`'s; `gpt-4o-mini-audio-preview` is not). A Bedrock
/// model id is looked up without its region prefix and vendor (`us.anthropic.claude-3-5-haiku-
/// 20241022-v1:0` and `anthropic.claude-3-5-haiku-...` are `claude-3-5-haiku`'s, `amazon.nova-
/// lite-v1:0` is `nova-lite`'s): Bedrock's list prices are the vendors' own.
pub fn listed_price<'a, V>(listed: impl Iterator<Item = (&'a String, &'a V)> + Clone, model: &str) -> Option<&'a V> {
    let find = |m: &str| {
        listed
            .clone()
            .filter(|(name, _)| {
                name.as_str() == m
                    || m.len() > name.len()
                        && m.starts_with(name.as_str())
                        && m.as_bytes()[name.len()] == b'-'
                        && a_version(&m[name.len() + 1..])
            })
            .max_by_key(|(name, _)| name.len())
            .map(|(_, p)| p)
    };
    find(model).or_else(|| {
        let mut m = model;
        for geo in ["us.", "eu.", "apac.", "global.", "us-gov.", "jp.", "au.", "ca."] {
            if let Some(rest) = m.strip_prefix(geo) {
                m = rest;
                break;
            }
        }
        let vendor = ["anthropic.", "amazon.", "meta.", "mistral.", "cohere.", "ai21.", "deepseek.", "openai."];
        let m = vendor.iter().find_map(|v| m.strip_prefix(v)).unwrap_or(m);
        (m != model).then(|| find(m)).flatten()
    })
}

/// Whether `suffix` (after a listed name and a `-`) only dates or versions the model
/// (`2024-07-18`, `20241022-v1:0`, `v1:0`, `latest`): another suffix names another model
/// (`gpt-4o-mini-audio-preview`, priced differently), which stays unpriced (fail closed).
fn a_version(suffix: &str) -> bool {
    suffix.split('-').all(|seg| {
        let v = seg.strip_prefix('v').map(|r| r.split_once(':').map_or((r, "0"), |(a, b)| (a, b)));
        !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit())
            || seg == "latest"
            || v.is_some_and(|(a, b)| {
                !a.is_empty()
                    && a.bytes().all(|c| c.is_ascii_digit())
                    && !b.is_empty()
                    && b.bytes().all(|c| c.is_ascii_digit())
            })
    })
}

/// The most one model call may spend: its tokens (always bounded), and its money, `None` when
/// the model has no price (and the provider is not free): such a call is never made under a
/// cost budget, and counts by its tokens under a token budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallBound {
    pub tokens: u64,
    pub cost_usd: Option<f64>,
}

impl PriceBook {
    /// The worst case of one call of `model` on `provider` (the default when `None`) with a
    /// prompt of at most `prompt_tokens` and an answer of at most `max_tokens`.
    pub fn call(&self, provider: Option<&str>, model: &str, prompt_tokens: u64, max_tokens: u32) -> CallBound {
        let provider = provider.unwrap_or(&self.default_provider);
        let tokens = prompt_tokens + u64::from(max_tokens);
        let cost_usd = if self.all_free || self.free.contains(provider) {
            Some(0.0)
        } else {
            listed_price(self.models.iter(), model)
                .map(|[input, output]| (prompt_tokens as f64 * input + f64::from(max_tokens) * output) / 1_000_000.0)
        };
        CallBound { tokens, cost_usd }
    }

    /// `(provider, model)` of an `llm` task's candidates, as the runtime reads them: its
    /// model, then each fallback (`p/m` names provider `p` when `p` is a known provider).
    fn candidates<'a>(&self, with: &'a Value) -> Vec<(Option<&'a str>, &'a str)> {
        let provider = with.get("provider").and_then(Value::as_str);
        let mut out = Vec::new();
        if let Some(m) = with.get("model").and_then(Value::as_str) {
            out.push((provider, m));
        }
        for f in with.get("fallback_models").and_then(Value::as_array).into_iter().flatten() {
            let Some(f) = f.as_str() else { continue };
            match f.split_once('/') {
                Some((p, m)) if self.providers.contains(p) => out.push((Some(p), m)),
                _ => out.push((provider, f)),
            }
        }
        out
    }

    /// The most one model turn of `with` (an `llm` task's or an agent's) may spend, on a prompt
    /// of at most `prompt` tokens: its dearest candidate (the most tokens of any, the most
    /// money of those with a price: the others are not called under a cost budget).
    pub fn turn(&self, with: &Value, prompt: u64) -> Estimate {
        let max_tokens = with
            .get("max_tokens")
            .and_then(Value::as_u64)
            .map_or(DEFAULT_MAX_TOKENS, |m| m.min(u64::from(u32::MAX)) as u32);
        self.candidates(with).into_iter().map(|(p, m)| self.call(p, m, prompt, max_tokens)).fold(
            Estimate::default(),
            |a, b| Estimate { cost_usd: a.cost_usd.max(b.cost_usd.unwrap_or(0.0)), tokens: a.tokens.max(b.tokens) },
        )
    }

    /// An agent's next turn after `turns`: [`PriceBook::turn`] on everything the request
    /// carries ([`crate::agent::run::turn_texts`]).
    pub fn agent_turn(&self, with: &Value, turns: &[crate::agent::TurnRec]) -> Estimate {
        let texts = crate::agent::run::turn_texts(with, turns);
        self.turn(with, prompt_tokens_bound(texts.iter().map(String::as_str)))
    }

    /// The most one attempt of a task of type `ty` with the rendered `with` may spend: an
    /// `llm` task's dearest candidate, the sum of an `evaluate` task's model judges. Zero for
    /// every type that makes no model call ([`spends`]).
    pub fn attempt(&self, ty: &str, with: &Value) -> Estimate {
        match ty {
            "llm" => {
                let mut texts: Vec<String> = Vec::new();
                for k in ["system", "prompt"] {
                    if let Some(s) = with.get(k).and_then(Value::as_str) {
                        texts.push(s.to_string());
                    }
                }
                message_texts(with, &mut texts);
                // A schema is sent with the request (and counted by providers as prompt).
                texts.extend(with.get("output_schema").map(|s| s.to_string()));
                self.turn(with, prompt_tokens_bound(texts.iter().map(String::as_str)))
            }
            crate::agent::AGENT => self.agent_turn(with, &[]),
            "evaluate" => {
                let input = with.get("input").and_then(Value::as_str).unwrap_or_default();
                let mut sum = Estimate::default();
                for c in with.get("checks").and_then(Value::as_array).into_iter().flatten() {
                    if c.get("kind").and_then(Value::as_str) != Some("llm_judge") {
                        continue;
                    }
                    let criteria = c.get("criteria").and_then(Value::as_str).unwrap_or_default();
                    let model = c.get("model").and_then(Value::as_str).unwrap_or_default();
                    let provider = c.get("provider").and_then(Value::as_str);
                    let schema = judge_schema().to_string();
                    let prompt = prompt_tokens_bound([JUDGE_SYSTEM, &judge_prompt(criteria, input), &schema]);
                    let b = self.call(provider, model, prompt, JUDGE_MAX_TOKENS);
                    sum.add(Estimate { cost_usd: b.cost_usd.unwrap_or(0.0), tokens: b.tokens });
                }
                sum
            }
            _ => Estimate::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn dated_names_and_bedrock_ids_take_their_models_price() {
        let listed: BTreeMap<String, u32> =
            [("gpt-4o", 1), ("gpt-4o-mini", 2), ("claude-3-5-haiku", 3), ("nova-lite", 4)]
                .map(|(k, v)| (k.to_string(), v))
                .into();
        let price = |m: &str| listed_price(listed.iter(), m).copied();
        assert_eq!(price("gpt-4o-mini-2024-07-18"), Some(2));
        assert_eq!(price("gpt-4o"), Some(1));
        assert_eq!(price("gpt-4oo"), None, "only at a `-`");
        assert_eq!(price("anthropic.claude-3-5-haiku-20241022-v1:0"), Some(3));
        assert_eq!(price("us.anthropic.claude-3-5-haiku-20241022-v1:0"), Some(3));
        assert_eq!(price("amazon.nova-lite-v1:0"), Some(4));
        assert_eq!(price("amazon.nova-reel-v1:0"), None);
        assert_eq!(price("gpt-4o-mini-latest"), Some(2));
        // Another model under a listed name's prefix is not priced as it (fail closed).
        assert_eq!(price("gpt-4o-mini-audio-preview"), None);
        assert_eq!(price("claude-3-5-haiku-20241022-vision"), None);
        let mut b = book();
        b.models.insert("claude-3-5-haiku".into(), [0.8, 4.0]);
        let bound = b.call(None, "eu.anthropic.claude-3-5-haiku-20241022-v1:0", 1_000_000, 0);
        assert_eq!(bound.cost_usd, Some(0.8), "a budget prices Bedrock ids too");
    }

    fn book() -> PriceBook {
        PriceBook {
            models: [("cheap".to_string(), [1.0, 2.0]), ("dear".to_string(), [10.0, 20.0])].into(),
            free: ["mock".to_string()].into(),
            providers: ["openai".to_string(), "mock".to_string()].into(),
            default_provider: "openai".into(),
            all_free: false,
        }
    }

    #[test]
    fn an_llm_attempt_reserves_its_dearest_callable_candidate_on_the_rendered_prompt() {
        let b = book();
        let with = json!({ "model": "cheap", "prompt": "x".repeat(1000), "max_tokens": 100,
                           "fallback_models": ["dear", "unpriced", "mock/anything"] });
        let e = b.attempt("llm", &with);
        // 1000 bytes + 8 + 16 of prompt at $10/M, 100 tokens of answer at $20/M.
        let prompt = 1024.0;
        assert!((e.cost_usd - (prompt * 10.0 + 100.0 * 20.0) / 1e6).abs() < 1e-12, "{e:?}");
        assert_eq!(e.tokens, 1024 + 100);
        // Without max_tokens the default bounds the answer.
        let e = b.attempt("llm", &json!({ "model": "cheap", "prompt": "" }));
        assert_eq!(e.tokens, 24 + u64::from(DEFAULT_MAX_TOKENS));
        // An unpriced candidate bounds the tokens (a token budget still holds them), not money.
        let e = b.attempt(
            "llm",
            &json!({ "model": "cheap", "prompt": "", "max_tokens": 10, "fallback_models": ["unpriced"] }),
        );
        assert_eq!(b.call(None, "unpriced", 24, 10), CallBound { tokens: 34, cost_usd: None });
        assert_eq!(e.tokens, 34);
        // Multi-byte text counts by bytes, never fewer tokens than a tokenizer could make.
        let e = b.attempt("llm", &json!({ "model": "cheap", "prompt": "日本語", "max_tokens": 1 }));
        assert_eq!(e.tokens, 9 + 8 + 16 + 1);
    }

    #[test]
    fn an_evaluate_attempt_reserves_every_judge() {
        let b = book();
        let with = json!({ "input": "abc", "checks": [
            { "kind": "llm_judge", "model": "cheap", "criteria": "good" },
            { "kind": "llm_judge", "model": "cheap", "criteria": "good" },
            { "kind": "regex", "pattern": "a" }
        ]});
        let schema = judge_schema().to_string();
        let one =
            b.call(None, "cheap", prompt_tokens_bound([JUDGE_SYSTEM, &judge_prompt("good", "abc"), &schema]), 300);
        let e = b.attempt("evaluate", &with);
        assert_eq!(e.tokens, 2 * one.tokens);
        assert!((e.cost_usd - 2.0 * one.cost_usd.unwrap()).abs() < 1e-15);
        assert_eq!(b.attempt("transform", &with), Estimate::default());
    }

    #[test]
    fn an_allowance_admits_only_what_fits() {
        let a = Allowance { cost_usd: Some(1.0), tokens: Some(100) };
        let used = Estimate { cost_usd: 0.5, tokens: 50 };
        assert!(a.fits(used, Estimate { cost_usd: 0.5, tokens: 50 }));
        assert!(!a.fits(used, Estimate { cost_usd: 0.6, tokens: 1 }));
        assert!(!a.fits(used, Estimate { cost_usd: 0.0, tokens: 51 }));
        assert!(Allowance::default().fits(used, Estimate { cost_usd: 1e9, tokens: u64::MAX / 2 }));
    }
}
