//! Provider configuration: which providers exist, where they are, where their keys come
//! from, what tokens cost. Built-in defaults, then the config file, then the environment.
//!
//! ```yaml
//! # .llmo/config.yaml (or --config FILE, or $LLMO_CONFIG)
//! default_provider: openai
//! providers:
//!   ollama: { kind: openai, base_url: "http://localhost:11434/v1", free: true }
//!   openrouter: { kind: openai, base_url: "https://openrouter.ai/api/v1", api_key_env: OPENROUTER_API_KEY }
//! prices:            # USD per million tokens; overrides the built-in table
//!   my-finetune: { input: 0.30, output: 1.20 }
//! limits:            # shared by every worker (see `crate::flow`); none unless set
//!   openai: { rpm: 500, tpm: 200000 }           # the provider's key, all models
//!   openai/gpt-4o: { rpm: 500, tpm: 30000 }     # one model (checked as well)
//! ```
//!
//! Providers publish their limits per account tier and model; at the time of writing,
//! OpenAI's first paid tier allows 500 requests and 200,000 tokens a minute on gpt-4o-mini
//! (30,000 tokens on gpt-4o), Anthropic's first tier 50 requests a minute with 50,000 input
//! and 10,000 output tokens on Sonnet models. Set what your account's limits page says: the
//! runtime does not guess, and a limit it does not know is not enforced.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::CallRetry;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// OpenAI-compatible Chat Completions (`POST {base_url}/chat/completions`).
    Openai,
    /// Anthropic Messages (`POST {base_url}/v1/messages`).
    Anthropic,
    /// Offline, deterministic answers.
    Mock,
    /// Amazon Bedrock's Converse API through the AWS SDK (the `llmo-bedrock` crate plugs it in):
    /// credentials from IAM (the SDK's chain), never a key; `base_url` overrides the endpoint.
    Bedrock,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    pub kind: Kind,
    pub base_url: String,
    /// The key, read from `api_key_env` when the config was loaded.
    pub api_key: Option<String>,
    pub api_key_env: Option<String>,
    /// Limit of one HTTP call.
    pub timeout: Duration,
    /// Local models: usage is free whatever the price table says.
    pub free: bool,
    /// The config file that set `base_url` to something other than the built-in's, if one
    /// did: the provider's calls then go under the egress policy (a file in a repository is
    /// not the operator), and `llmo run` shows where they go.
    pub set_by: Option<String>,
    /// Bedrock: the AWS region (else the SDK's: `AWS_REGION`, the profile).
    pub region: Option<String>,
    /// Bedrock: the model ids a call may name (`LLMO_BEDROCK_MODELS`, the deployment's
    /// `BedrockModels`); empty: any the role may invoke.
    pub models: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// USD per million input (prompt) tokens.
    pub input: f64,
    /// USD per million output (completion) tokens.
    pub output: f64,
    /// USD per million input tokens read from the provider's prompt cache (OpenAI's
    /// `cached_tokens`, Anthropic's `cache_read_input_tokens`). Unset: the provider's published
    /// ratio to `input` ([`Price::cache_read`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
    /// USD per million input tokens written to the prompt cache (Anthropic's
    /// `cache_creation_input_tokens`). Unset: 1.25 x `input` for Claude models (the 5-minute
    /// cache), else `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
}

impl Price {
    pub fn new(input: f64, output: f64) -> Self {
        Price { input, output, cached_input: None, cache_write: None }
    }

    /// The price of a cached input token for `model`: as set, else as the provider publishes
    /// it relative to input: Claude 0.1x; GPT-5 0.1x; GPT-4.1 and o3/o4 0.25x; GPT-4o and
    /// o1/o3-mini 0.5x; anything else no discount.
    pub fn cache_read(&self, model: &str) -> f64 {
        self.cached_input.unwrap_or_else(|| {
            let ratio = if model.starts_with("claude") || model.starts_with("gpt-5") {
                0.1
            } else if model.starts_with("gpt-4.1")
                || model.starts_with("o4")
                || model == "o3"
                || model.starts_with("o3-2")
            {
                0.25
            } else if model.starts_with("gpt-4o") || model.starts_with("o1") || model.starts_with("o3-mini") {
                0.5
            } else {
                1.0
            };
            self.input * ratio
        })
    }

    /// The price of an input token written to the cache for `model` (see the field).
    pub fn cache_writing(&self, model: &str) -> f64 {
        self.cache_write.unwrap_or(if model.starts_with("claude") { self.input * 1.25 } else { self.input })
    }

    /// What a call costs (USD): `prompt` input tokens of which `read` came from the cache and
    /// `written` went to it, and `completion` output tokens.
    pub fn cost(&self, model: &str, prompt: u64, read: u64, written: u64, completion: u64) -> f64 {
        let plain = prompt.saturating_sub(read).saturating_sub(written);
        (plain as f64 * self.input
            + read as f64 * self.cache_read(model)
            + written as f64 * self.cache_writing(model)
            + completion as f64 * self.output)
            / 1_000_000.0
    }
}

/// Prices by model name. A dated or suffixed name (`gpt-4o-mini-2024-07-18`) takes the price
/// of the longest listed name it extends at a `-` boundary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceTable(pub HashMap<String, Price>);

impl PriceTable {
    /// List prices (USD per million tokens) of common models, as published by their
    /// providers in 2025. Override or extend them under `prices:` in the config.
    pub fn builtin() -> Self {
        let rows: &[(&str, f64, f64)] = &[
            ("gpt-4o", 2.50, 10.00),
            ("gpt-4o-mini", 0.15, 0.60),
            ("gpt-4.1", 2.00, 8.00),
            ("gpt-4.1-mini", 0.40, 1.60),
            ("gpt-4.1-nano", 0.10, 0.40),
            ("gpt-5", 1.25, 10.00),
            ("gpt-5-mini", 0.25, 2.00),
            ("gpt-5-nano", 0.05, 0.40),
            ("o3", 2.00, 8.00),
            ("o3-mini", 1.10, 4.40),
            ("o4-mini", 1.10, 4.40),
            ("claude-3-haiku", 0.25, 1.25),
            ("claude-3-5-haiku", 0.80, 4.00),
            ("claude-haiku-4-5", 1.00, 5.00),
            ("claude-3-5-sonnet", 3.00, 15.00),
            ("claude-3-7-sonnet", 3.00, 15.00),
            ("claude-sonnet-4", 3.00, 15.00),
            ("claude-sonnet-4-5", 3.00, 15.00),
            ("claude-opus-4", 15.00, 75.00),
            ("claude-opus-4-1", 15.00, 75.00),
            // On Bedrock (ids like `amazon.nova-lite-v1:0`, `us.meta.llama3-3-70b-instruct-v1:0`;
            // Claude on Bedrock takes the rows above), us-east-1 on-demand prices.
            ("nova-micro", 0.035, 0.14),
            ("nova-lite", 0.06, 0.24),
            ("nova-pro", 0.80, 3.20),
            ("nova-premier", 2.50, 12.50),
            ("llama3-1-8b-instruct", 0.22, 0.22),
            ("llama3-1-70b-instruct", 0.72, 0.72),
            ("llama3-3-70b-instruct", 0.72, 0.72),
            ("mistral-large-2407", 2.00, 6.00),
        ];
        PriceTable(rows.iter().map(|(m, i, o)| (m.to_string(), Price::new(*i, *o))).collect())
    }

    /// The price of `model` ([`llmo_core::engine::budget::listed_price`]: dated names and
    /// Bedrock ids take their model's).
    pub fn get(&self, model: &str) -> Option<&Price> {
        self.0.get(model).or_else(|| llmo_core::engine::budget::listed_price(self.0.iter(), model))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failed calls (429, 5xx, timeouts, network) that open a provider's circuit.
    pub failures: u32,
    /// How long it stays open before one probe call.
    pub cooldown: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub default_provider: String,
    pub providers: BTreeMap<String, ProviderConfig>,
    pub prices: PriceTable,
    pub breaker: BreakerConfig,
    pub retry: CallRetry,
    /// Fleet-wide limits by `provider` or `provider/model`.
    pub limits: BTreeMap<String, crate::flow::Limit>,
    /// How long each answer of the `mock` provider takes (`LLMO_MOCK_DELAY_MS`): lets tests
    /// interrupt a run while a model call is in flight.
    pub mock_delay: Option<Duration>,
}

impl Config {
    /// The prices a run under a budget keeps ([`llmo_core::engine::budget`]): every priced
    /// model, the providers that cost nothing, everything free under `mock`.
    pub fn price_book(&self, mock: bool) -> llmo_core::engine::budget::PriceBook {
        llmo_core::engine::budget::PriceBook {
            // The worst case of an input token: a cache write may cost more than plain input.
            models: self
                .prices
                .0
                .iter()
                .map(|(m, p)| (m.clone(), [p.input.max(p.cache_writing(m)), p.output]))
                .collect(),
            free: self
                .providers
                .iter()
                .filter(|(_, p)| p.free || p.kind == Kind::Mock)
                .map(|(n, _)| n.clone())
                .collect(),
            providers: self.providers.keys().cloned().collect(),
            default_provider: self.default_provider.clone(),
            all_free: mock,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("{file}: {source}")]
    Io { file: String, source: std::io::Error },
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    default_provider: Option<String>,
    #[serde(default)]
    providers: BTreeMap<String, FileProvider>,
    #[serde(default)]
    prices: HashMap<String, Price>,
    breaker_failures: Option<u32>,
    breaker_cooldown: Option<llmo_core::model::Duration>,
    call_retries: Option<u32>,
    #[serde(default)]
    limits: BTreeMap<String, crate::flow::Limit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProvider {
    kind: Kind,
    base_url: Option<String>,
    api_key_env: Option<String>,
    timeout: Option<llmo_core::model::Duration>,
    #[serde(default)]
    free: bool,
    region: Option<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Whether a config file may name `var` as a provider's `api_key_env`: a provider key's name
/// (`*_API_KEY`, `*_API_TOKEN`, not `AWS_*` or `LLMO_*`), or one the user allowed outside
/// the file, in `$LLMO_KEY_ENVS` (comma-separated). A file in a working directory must not
/// be able to send any variable (`AWS_SECRET_ACCESS_KEY`) to a server as a bearer token.
pub fn key_env_allowed(var: &str) -> bool {
    let listed = env("LLMO_KEY_ENVS").is_some_and(|l| l.split(',').any(|v| v.trim() == var));
    let named = (var.ends_with("_API_KEY") || var.ends_with("_API_TOKEN"))
        && !var.starts_with("AWS_")
        && !var.starts_with("LLMO_")
        && var.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    listed || named
}

impl Config {
    /// The built-in providers: `openai` (`OPENAI_API_KEY`, `OPENAI_BASE_URL`), `anthropic`
    /// (`ANTHROPIC_API_KEY`, `ANTHROPIC_BASE_URL`), `ollama` (local, free; `OLLAMA_BASE_URL`),
    /// `bedrock` (IAM; `LLMO_BEDROCK_REGION`, `LLMO_BEDROCK_ENDPOINT`) and `mock`. Default provider: `$LLMO_DEFAULT_PROVIDER`, else `openai`.
    pub fn builtin() -> Self {
        let mut providers = BTreeMap::new();
        let timeout = Duration::from_secs(120);
        providers.insert(
            "openai".into(),
            ProviderConfig {
                kind: Kind::Openai,
                base_url: env("OPENAI_BASE_URL").unwrap_or_else(|| "https://api.openai.com/v1".into()),
                api_key: env("OPENAI_API_KEY"),
                api_key_env: Some("OPENAI_API_KEY".into()),
                timeout,
                free: false,
                set_by: None,
                region: None,
                models: Vec::new(),
            },
        );
        providers.insert(
            "anthropic".into(),
            ProviderConfig {
                kind: Kind::Anthropic,
                base_url: env("ANTHROPIC_BASE_URL").unwrap_or_else(|| "https://api.anthropic.com".into()),
                api_key: env("ANTHROPIC_API_KEY"),
                api_key_env: Some("ANTHROPIC_API_KEY".into()),
                timeout,
                free: false,
                set_by: None,
                region: None,
                models: Vec::new(),
            },
        );
        providers.insert(
            "ollama".into(),
            ProviderConfig {
                kind: Kind::Openai,
                base_url: env("OLLAMA_BASE_URL").unwrap_or_else(|| "http://localhost:11434/v1".into()),
                api_key: None,
                api_key_env: None,
                timeout,
                free: true,
                set_by: None,
                region: None,
                models: Vec::new(),
            },
        );
        // Bedrock: IAM credentials and the region from the SDK's chain; the endpoint from
        // `LLMO_BEDROCK_ENDPOINT` (a local fake Converse server, a VPC endpoint) or the SDK's.
        providers.insert(
            "bedrock".into(),
            ProviderConfig {
                kind: Kind::Bedrock,
                base_url: env("LLMO_BEDROCK_ENDPOINT").unwrap_or_default(),
                api_key: None,
                api_key_env: None,
                timeout,
                free: false,
                set_by: None,
                region: env("LLMO_BEDROCK_REGION"),
                models: env("LLMO_BEDROCK_MODELS")
                    .map(|l| l.split(',').map(str::trim).filter(|m| !m.is_empty()).map(str::to_string).collect())
                    .unwrap_or_default(),
            },
        );
        providers.insert(
            "mock".into(),
            ProviderConfig {
                kind: Kind::Mock,
                base_url: String::new(),
                api_key: None,
                api_key_env: None,
                timeout,
                free: true,
                set_by: None,
                region: None,
                models: Vec::new(),
            },
        );
        Config {
            default_provider: env("LLMO_DEFAULT_PROVIDER").unwrap_or_else(|| "openai".into()),
            providers,
            prices: PriceTable::builtin(),
            breaker: BreakerConfig { failures: 5, cooldown: Duration::from_secs(30) },
            retry: CallRetry::default(),
            limits: BTreeMap::new(),
            mock_delay: env("LLMO_MOCK_DELAY_MS").and_then(|v| v.parse().ok()).map(Duration::from_millis),
        }
    }

    /// Providers whose base URL a config file set: `(name, base_url, file)`, for `llmo run`
    /// to show where their calls (and keys) go.
    pub fn file_endpoints(&self) -> Vec<(&str, &str, &str)> {
        self.providers
            .iter()
            .filter_map(|(n, p)| p.set_by.as_deref().map(|f| (n.as_str(), p.base_url.as_str(), f)))
            .collect()
    }

    /// The built-ins overlaid with a config file (if `path` is given and exists, or
    /// `required` says it must).
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(Self::builtin()),
            Err(source) => return Err(ConfigError::Io { file, source }),
        };
        Self::from_yaml(&file, &text)
    }

    pub fn from_yaml(file: &str, text: &str) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid { file: file.to_string(), message };
        let loaded = llmo_core::yaml::load(text, Default::default()).map_err(|e| invalid(e.to_string()))?;
        let json = if loaded.json.is_null() { serde_json::json!({}) } else { loaded.json };
        let fc: FileConfig = serde_json::from_value(json).map_err(|e| invalid(e.to_string()))?;
        let mut c = Self::builtin();
        for (name, p) in fc.providers {
            let base = c.providers.get(&name);
            let (base_url, set_by) = match (p.base_url, base) {
                (Some(u), Some(b)) if b.kind == p.kind && u == b.base_url => (u, b.set_by.clone()),
                (Some(u), _) => (u, Some(file.to_string())),
                (None, Some(b)) if b.kind == p.kind => (b.base_url.clone(), b.set_by.clone()),
                // Bedrock's endpoint is the SDK's for the region unless overridden.
                (None, _) if p.kind == Kind::Bedrock => (String::new(), None),
                (None, _) => return Err(invalid(format!("providers.{name}.base_url: required"))),
            };
            if let Some(var) = &p.api_key_env
                && !key_env_allowed(var)
            {
                return Err(invalid(format!(
                    "providers.{name}.api_key_env: `{var}` is not a provider key's name (`*_API_KEY` or `*_API_TOKEN`); \
                     to use it anyway, list it in LLMO_KEY_ENVS (set outside this file)"
                )));
            }
            let api_key_env = p.api_key_env.or_else(|| base.and_then(|b| b.api_key_env.clone()));
            c.providers.insert(
                name,
                ProviderConfig {
                    kind: p.kind,
                    base_url,
                    api_key: api_key_env.as_deref().and_then(env),
                    api_key_env,
                    timeout: p.timeout.map_or(Duration::from_secs(120), |d| d.0),
                    free: p.free,
                    set_by,
                    region: p.region.or_else(|| base.and_then(|b| b.region.clone())),
                    // The operator's list (the environment), never a file's.
                    models: base.map(|b| b.models.clone()).unwrap_or_default(),
                },
            );
        }
        if let Some(d) = fc.default_provider {
            if !c.providers.contains_key(&d) {
                return Err(invalid(format!("default_provider: `{d}` is not a provider")));
            }
            if env("LLMO_DEFAULT_PROVIDER").is_none() {
                c.default_provider = d;
            }
        }
        c.prices.0.extend(fc.prices);
        if let Some(n) = fc.breaker_failures {
            c.breaker.failures = n.max(1);
        }
        if let Some(d) = fc.breaker_cooldown {
            c.breaker.cooldown = d.0;
        }
        if let Some(n) = fc.call_retries {
            c.retry.max_calls = n + 1;
        }
        for (name, limit) in fc.limits {
            let provider = name.split('/').next().unwrap_or_default();
            if !c.providers.contains_key(provider) {
                return Err(invalid(format!("limits.{name}: `{provider}` is not a provider")));
            }
            if limit.rpm == Some(0) || limit.tpm == Some(0) {
                return Err(invalid(format!("limits.{name}: a limit of 0 would stop every call")));
            }
            c.limits.insert(name, limit);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every model the example workflows may call under a budget has a price: a fallback
    /// without one is refused by the budget (as `anthropic/claude-haiku` was).
    #[test]
    fn the_examples_models_have_prices() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workflows");
        let table = PriceTable::builtin();
        let mut checked = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_none_or(|x| x != "yaml") || path.to_string_lossy().ends_with(".test.yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let outcome = llmo_core::validate::Validator::default()
                .validate(&llmo_core::source::SourceFile::new(path.display().to_string(), text));
            let wf = outcome.checked.expect("examples validate").workflow;
            if wf.spec.budget.is_none() {
                continue;
            }
            for t in wf.spec.tasks.iter().filter(|t| t.ty == "llm") {
                for (_, m) in llmo_core::tasks::llm_models(&t.with) {
                    // Local providers are free whatever the table says.
                    let provider = m.split_once('/').map(|(p, _)| p);
                    if provider.is_some_and(|p| Config::builtin().providers.get(p).is_some_and(|c| c.free)) {
                        continue;
                    }
                    let bare = m.rsplit('/').next().unwrap();
                    assert!(
                        table.get(bare).is_some(),
                        "{}: task `{}` may call `{m}`, which has no price",
                        path.display(),
                        t.id
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 2, "the examples under a budget were found");
    }

    #[test]
    fn prices_match_dated_model_names_at_dash_boundaries() {
        let t = PriceTable::builtin();
        assert_eq!(t.get("gpt-4o-mini").unwrap().input, 0.15);
        assert_eq!(t.get("gpt-4o-mini-2024-07-18").unwrap().input, 0.15, "longest listed prefix");
        assert_eq!(t.get("gpt-4o-2024-08-06").unwrap().input, 2.50);
        assert_eq!(t.get("claude-3-5-haiku-latest").unwrap().output, 4.00);
        assert!(t.get("gpt-4oo").is_none());
        assert!(t.get("llama3.1:8b").is_none());
    }

    /// A config file names a provider's key by a provider key's name only: the one in a
    /// working directory that said `api_key_env: AWS_SECRET_ACCESS_KEY` would have sent the
    /// AWS secret key to its `base_url` as a bearer token.
    #[test]
    fn a_config_file_may_name_only_provider_keys_and_its_base_urls_are_marked() {
        for var in ["AWS_SECRET_ACCESS_KEY", "HOME", "LLMO_LINK_SECRET", "AWS_X_API_KEY", "my_api_key"] {
            let yaml =
                format!("providers:\n  x: {{ kind: openai, base_url: 'https://x.example/v1', api_key_env: {var} }}\n");
            let e = Config::from_yaml(".llmo/config.yaml", &yaml).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!(
                    ".llmo/config.yaml: providers.x.api_key_env: `{var}` is not a provider key's name"
                )),
                "{e}"
            );
        }
        let c = Config::from_yaml(
            "c.yaml",
            "providers:\n  openrouter: { kind: openai, base_url: 'https://openrouter.ai/api/v1', api_key_env: OPENROUTER_API_KEY }\n  openai: { kind: openai, base_url: 'https://api.openai.com/v1' }\n  anthropic: { kind: anthropic, base_url: 'https://proxy.example' }\n",
        )
        .unwrap();
        // Where a file sent calls is shown; a built-in left where it was is not.
        assert_eq!(
            c.file_endpoints(),
            vec![
                ("anthropic", "https://proxy.example", "c.yaml"),
                ("openrouter", "https://openrouter.ai/api/v1", "c.yaml")
            ]
        );
    }

    #[test]
    fn a_config_file_adds_providers_and_prices() {
        let c = Config::from_yaml(
            "c.yaml",
            "default_provider: local\nproviders:\n  local: { kind: openai, base_url: 'http://127.0.0.1:8000/v1', free: true }\nprices:\n  gpt-4o: { input: 1, output: 2 }\n",
        )
        .unwrap();
        assert_eq!(c.providers["local"].base_url, "http://127.0.0.1:8000/v1");
        assert!(c.providers.contains_key("openai"), "built-ins stay");
        assert_eq!(c.prices.get("gpt-4o").unwrap().output, 2.0);
        if std::env::var("LLMO_DEFAULT_PROVIDER").is_err() {
            assert_eq!(c.default_provider, "local");
        }
        let e = Config::from_yaml("c.yaml", "providers:\n  x: { kind: grpc }\n").unwrap_err().to_string();
        assert!(e.starts_with("c.yaml: ") && e.contains("grpc"), "{e}");
        let e = Config::from_yaml("c.yaml", "providers:\n  x: { kind: openai }\n").unwrap_err().to_string();
        assert_eq!(e, "c.yaml: providers.x.base_url: required");
    }

    #[test]
    fn limits_name_known_providers() {
        let c = Config::from_yaml("c.yaml", "limits:\n  openai/gpt-4o: { rpm: 60, tpm: 1000 }\n  mock: { rpm: 5 }\n")
            .unwrap();
        assert_eq!(c.limits["openai/gpt-4o"].rpm, Some(60));
        assert_eq!(c.limits["mock"].requests().unwrap().burst, 1);
        let e = Config::from_yaml("c.yaml", "limits:\n  nope/x: { rpm: 5 }\n").unwrap_err().to_string();
        assert_eq!(e, "c.yaml: limits.nope/x: `nope` is not a provider");
        let e = Config::from_yaml("c.yaml", "limits:\n  openai: { rpm: 0 }\n").unwrap_err().to_string();
        assert!(e.contains("a limit of 0"), "{e}");
        assert!(Config::from_yaml("c.yaml", "limits:\n  openai: { rps: 5 }\n").is_err(), "unknown field");
    }
}
