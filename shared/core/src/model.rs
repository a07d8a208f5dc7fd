//! The workflow format (v1) as Rust types.
//!
//! These types are the single source of truth for the format: the JSON Schema in
//! `schema/workflow.schema.json` is generated from them (`llmo schema`), and the validator
//! checks documents against that schema before deserializing into them. Field names are part
//! of the public format; see `docs/workflow-spec.md` for their meaning.

use std::fmt;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const API_VERSION: &str = "llm-orchestrator/v1";

/// Identifier pattern for task ids, input names and output names: usable as
/// `tasks.<id>` in templates without quoting.
pub const IDENT_PATTERN: &str = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$";
/// Duration pattern: one or more `<number><unit>` parts, units ms, s, m, h, d.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$";
/// Workflow names end up in queue, table and schedule names: keep them DNS-like.
pub const NAME_PATTERN: &str = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";

/// A workflow document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "LLM-Orchestrator workflow")]
pub struct Workflow {
    /// Format version. Always `llm-orchestrator/v1` for this format.
    #[serde(rename = "apiVersion")]
    pub api_version: ApiVersion,
    /// Always `Workflow`.
    pub kind: Kind,
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ApiVersion {
    #[serde(rename = "llm-orchestrator/v1")]
    V1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Kind {
    Workflow,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Workflow name: lower-case letters, digits and `-`, at most 63 characters.
    #[schemars(pattern(NAME_PATTERN))]
    pub name: String,
    /// Version of this workflow definition (free text; semantic versions recommended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub labels: IndexMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Typed run inputs, read in templates as `inputs.<name>`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub inputs: IndexMap<String, InputSpec>,
    /// Defaults applied to every task (a task's own fields win, field by field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<Defaults>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    /// Who takes shared capacity first when there is not enough (the fleet's rate limits):
    /// `high` runs reserve a provider's next free slots however far ahead, `normal` runs (the
    /// default) only slots due within two seconds, `low` runs only what is free now, so that
    /// urgent runs are never queued behind others' reservations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// A run never starts a task once the budget is spent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Whole-run timeout; the run is marked timed out and its running tasks cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Start runs on a schedule (EventBridge `cron(...)` or `rate(...)` syntax).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// Start runs when a matching EventBridge event arrives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventTrigger>,
    /// The secrets the workflow's `http` headers may read (`secrets.<NAME>`), each with the
    /// hosts it may be sent to. Nothing else resolves; a secret never goes to another host.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    #[schemars(extend("propertyNames" = { "pattern": IDENT_PATTERN }))]
    pub secrets: IndexMap<String, SecretDecl>,
    /// The tasks of the DAG.
    #[schemars(length(min = 1))]
    pub tasks: Vec<Task>,
    /// Run outputs: any JSON value; strings are templates over `inputs`, `run` and `tasks`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub outputs: IndexMap<String, Value>,
    /// Hooks run once the run has ended.
    #[serde(default, rename = "on", skip_serializing_if = "Option::is_none")]
    pub on: Option<Hooks>,
}

/// JSON types an input may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    String,
    Number,
    Integer,
    Boolean,
    Array,
    Object,
}

impl fmt::Display for InputType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            InputType::String => "string",
            InputType::Number => "number",
            InputType::Integer => "integer",
            InputType::Boolean => "boolean",
            InputType::Array => "array",
            InputType::Object => "object",
        };
        f.write_str(s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    #[serde(rename = "type")]
    pub ty: InputType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A run without this input is refused. An input with a `default` is never missing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// The only values allowed.
    #[serde(default, rename = "enum", skip_serializing_if = "Option::is_none")]
    pub enum_values: Option<Vec<Value>>,
    /// Element type, for `type: array`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Box<InputSpec>>,
    /// Inclusive bounds, for numbers and integers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum: Option<f64>,
    /// Length bounds, for strings (characters) and arrays (items).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_length: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// Retry policy. Every field is optional: unset fields come from `spec.defaults.retry`, then
/// from the built-in policy (3 attempts, 1s initial, 30s max, x2, full jitter).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// Delay before the first retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<Duration>,
    /// Upper bound of any delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Duration>,
    /// Each delay is the previous one times this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 10.0))]
    pub multiplier: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Jitter>,
}

/// Randomisation of retry delays: `none` (exact), `full` (uniform in [0, d]),
/// `equal` (d/2 + uniform in [0, d/2]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Jitter {
    None,
    Full,
    Equal,
}

/// The fully resolved retry policy of one task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EffectiveRetry {
    pub max_attempts: u32,
    pub initial: std::time::Duration,
    pub max: std::time::Duration,
    pub multiplier: f64,
    pub jitter: Jitter,
}

impl Default for EffectiveRetry {
    fn default() -> Self {
        EffectiveRetry {
            max_attempts: 3,
            initial: std::time::Duration::from_secs(1),
            max: std::time::Duration::from_secs(30),
            multiplier: 2.0,
            jitter: Jitter::Full,
        }
    }
}

impl EffectiveRetry {
    /// Applies the set fields of `p` over `self`.
    pub fn overlay(mut self, p: Option<&RetryPolicy>) -> Self {
        let Some(p) = p else { return self };
        if let Some(n) = p.max_attempts {
            self.max_attempts = n;
        }
        if let Some(b) = &p.backoff {
            if let Some(d) = b.initial {
                self.initial = d.0;
            }
            if let Some(d) = b.max {
                self.max = d.0;
            }
            if let Some(m) = b.multiplier {
                self.multiplier = m;
            }
            if let Some(j) = b.jitter {
                self.jitter = j;
            }
        }
        self
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Concurrency {
    /// Most tasks (counting each `for_each` item) running at once in one run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_parallel: Option<u32>,
    /// Template (it may read `inputs` and `run`): runs of this workflow with the same key
    /// run at most `limit` at once across the fleet; the others wait, pending. Needs `limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// How many runs with the same `key` may run at once (at most 1,000: the holders of a key
    /// are one stored item).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
}

/// A task's concurrency key: attempts of this task with the same rendered `key` run at most
/// `limit` at once across the fleet (whatever run they belong to); the others wait.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyLimit {
    /// Template, read like the task's `with` (inputs, the tasks it depends on, `item`).
    pub key: String,
    /// At most 1,000 (the holders of a key are one stored item).
    #[schemars(range(min = 1, max = 1000))]
    pub limit: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Most money one run may spend on model calls, in US dollars (> 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_cost_usd: Option<f64>,
    /// Most tokens (prompt + completion) one run may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_tokens: Option<u64>,
}

/// Exactly one of `cron` and `rate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// EventBridge cron: six fields `minutes hours day-of-month month day-of-week year`,
    /// with `?` in one of the two day fields, e.g. `0 6 * * ? *`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// A fixed rate in whole minutes or more, e.g. `15m`, `1h`, `1d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Duration>,
    /// IANA time zone for `cron` (EventBridge Scheduler), e.g. `Europe/Paris`. Default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Inputs of the scheduled runs.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub inputs: IndexMap<String, Value>,
    #[serde(default = "yes", skip_serializing_if = "Clone::clone")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// A secret a workflow may read, and where it may be sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretDecl {
    /// Hosts the secret may be sent to: `api.example.com`, or `*.example.com` for any
    /// subdomain (not `example.com` itself). Ports and schemes are not part of the match.
    #[schemars(length(min = 1, max = 32), inner(pattern(HOST_PATTERN)))]
    pub hosts: Vec<String>,
}

/// A host in [`SecretDecl::hosts`]: a DNS name, optionally `*.`-prefixed, or an IP literal
/// (IPv6 in brackets).
pub const HOST_PATTERN: &str =
    r"^((\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*|\[[0-9A-Fa-f:.]+\])$";

impl SecretDecl {
    /// May the secret be sent to `host` (as a URL gives it: IPv6 in brackets)?
    pub fn allows(&self, host: &str) -> bool {
        self.hosts.iter().any(|p| host_matches(p, host))
    }
}

/// Why a host pattern reaches further than one registered domain, if it does: `*.com`,
/// `*.co.uk` or `*.github.io` (anyone can register a name under a public suffix, so a secret
/// sent there could go to anyone). `*.example.com` and exact names are fine.
pub fn host_pattern_too_broad(pattern: &str) -> Option<String> {
    let suffix = pattern.strip_prefix("*.")?.trim_end_matches('.').to_ascii_lowercase();
    if suffix.starts_with('[') {
        return None;
    }
    match psl::domain(suffix.as_bytes()) {
        Some(_) => None,
        None => Some(format!(
            "`{pattern}` covers every domain registered under `{suffix}`, a public suffix: name the domain, as `*.example.{suffix}`"
        )),
    }
}

/// `api.example.com` matches itself (case-insensitively, ignoring a trailing dot);
/// `*.example.com` matches `a.example.com` and `a.b.example.com`, not `example.com`.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
        None => host == pattern,
    }
}

/// Starts a run for each EventBridge event matching `pattern`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventTrigger {
    /// Name of the trigger (unique in the workflow).
    #[schemars(pattern(IDENT_PATTERN))]
    pub name: String,
    /// An EventBridge event pattern, e.g. `{source: [aws.s3], detail-type: [Object Created]}`.
    pub pattern: Map<String, Value>,
    /// Run inputs, as templates over the event (`event.detail.object.key`).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub inputs: IndexMap<String, String>,
}

/// One node of the DAG.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// Unique id; other tasks read its result as `tasks.<id>`.
    #[schemars(pattern(IDENT_PATTERN))]
    pub id: String,
    /// Executor: `llm`, `transform`, `http`, `evaluate`, `policy`, or a registered one.
    #[serde(rename = "type")]
    #[schemars(pattern(IDENT_PATTERN))]
    pub ty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Tasks that must end before this one starts (see `trigger`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// What the dependencies' outcomes must be for this task to run; otherwise it is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<TriggerRule>,
    /// Expression; when false the task is skipped. Evaluated once, before any `for_each`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Expression giving a list; the task runs once per item, with `item` and `item_index`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<String>,
    /// Most items of this task's `for_each` running at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_concurrency: Option<u32>,
    /// How many of this task's `for_each` items may fail (after their retries) with the task
    /// still succeeding. Without it the first failed item fails the task and stops the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerate_failures: Option<Tolerance>,
    /// At most `limit` attempts of this task with the same rendered `key` run at once across
    /// the fleet, in whatever run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<KeyLimit>,
    /// Executor settings; strings are templates.
    #[serde(default, rename = "with", skip_serializing_if = "Map::is_empty")]
    pub with: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Limit of one attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// What a failure (after retries) does to the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<OnFailure>,
}

/// Failed `for_each` items a task tolerates (like Step Functions Map's tolerated failure count
/// and percentage): every item runs, and the task succeeds when the failures stay within both
/// bounds given.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tolerance {
    /// At most this many failed items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// At most this percentage of the items failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percent: Option<f64>,
}

impl Tolerance {
    /// Whether `failed` of `total` items is within the tolerance.
    pub fn allows(&self, failed: usize, total: usize) -> bool {
        self.count.is_none_or(|c| failed <= c as usize)
            && self.percent.is_none_or(|p| total == 0 || (failed as f64) * 100.0 <= p * total as f64)
    }
}

/// A run's claim on shared capacity (see `Spec::priority`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    /// Precedence for a concurrency key's free places: a run refused a place holds back runs of
    /// lower rank for a moment (see `Flow::enter`). Low 0, normal 1, high 2.
    pub fn rank(self) -> u8 {
        match self {
            Priority::High => 2,
            Priority::Normal => 1,
            Priority::Low => 0,
        }
    }

    /// How far ahead a call of such a run may reserve rate-limited capacity (`None`: any).
    pub fn horizon(self) -> Option<std::time::Duration> {
        match self {
            Priority::High => None,
            Priority::Normal => Some(std::time::Duration::from_secs(2)),
            Priority::Low => Some(std::time::Duration::ZERO),
        }
    }
}

/// When a task with dependencies runs. Every rule waits for all dependencies to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TriggerRule {
    /// Run if every dependency succeeded; otherwise skip. The default.
    #[default]
    AllSucceeded,
    /// Run whatever the dependencies' outcomes.
    AllDone,
    /// Run if at least one dependency succeeded.
    AnySucceeded,
    /// Run if no dependency failed (succeeded or skipped).
    NoneFailed,
}

impl TriggerRule {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerRule::AllSucceeded => "all_succeeded",
            TriggerRule::AllDone => "all_done",
            TriggerRule::AnySucceeded => "any_succeeded",
            TriggerRule::NoneFailed => "none_failed",
        }
    }
}

/// `fail` (default), `continue`, or `{ fallback: <task id> }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OnFailure {
    Action(FailureAction),
    Fallback(Fallback),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    /// The run fails; tasks not started are cancelled.
    Fail,
    /// The task stays failed; the run goes on (dependents follow their trigger rule).
    Continue,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    /// A task that runs only if this one fails, and whose result stands in for it.
    pub fallback: String,
}

impl OnFailure {
    pub fn fallback(&self) -> Option<&str> {
        match self {
            OnFailure::Fallback(f) => Some(&f.fallback),
            OnFailure::Action(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Run after the run succeeded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub success: Vec<Hook>,
    /// Run after the run failed, timed out or was cancelled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failure: Vec<Hook>,
}

/// A task run after the run ended: no id, no dependencies; reads any task's result and `run.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    #[serde(rename = "type")]
    #[schemars(pattern(IDENT_PATTERN))]
    pub ty: String,
    #[serde(default, rename = "with", skip_serializing_if = "Map::is_empty")]
    pub with: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// A duration written as `<number><unit>` parts: `500ms`, `30s`, `5m`, `1h30m`, `1.5h`, `2d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// Parses the duration syntax. Returns `None` for anything else.
    pub fn parse(s: &str) -> Option<Duration> {
        let mut total = 0f64;
        let mut rest = s;
        if rest.is_empty() {
            return None;
        }
        while !rest.is_empty() {
            let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
            let num = &rest[..num_len];
            if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1 {
                return None;
            }
            let n: f64 = num.parse().ok()?;
            rest = &rest[num_len..];
            let (secs, len) = if rest.starts_with("ms") {
                (0.001, 2)
            } else if rest.starts_with('s') {
                (1.0, 1)
            } else if rest.starts_with('m') {
                (60.0, 1)
            } else if rest.starts_with('h') {
                (3600.0, 1)
            } else if rest.starts_with('d') {
                (86400.0, 1)
            } else {
                return None;
            };
            total += n * secs;
            rest = &rest[len..];
        }
        if !total.is_finite() || total > 1e12 {
            return None;
        }
        Some(Duration(std::time::Duration::from_secs_f64(total)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 86_400_000 == 0 && ms > 0 {
            write!(f, "{}d", ms / 86_400_000)
        } else if ms % 3_600_000 == 0 && ms > 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms % 60_000 == 0 && ms > 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Duration::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("invalid duration `{s}` (expected e.g. 30s, 5m, 1h30m, 500ms)"))
        })
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A duration: one or more <number><unit> parts with units ms, s, m, h, d (e.g. 500ms, 30s, 1h30m).",
            "examples": ["30s", "5m", "1h30m"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let d = |s| Duration::parse(s).map(|d| d.0.as_millis());
        assert_eq!(d("30s"), Some(30_000));
        assert_eq!(d("1h30m"), Some(5_400_000));
        assert_eq!(d("500ms"), Some(500));
        assert_eq!(d("1.5s"), Some(1500));
        assert_eq!(d("2d"), Some(172_800_000));
        for bad in ["", "30", "s", "1x", "1.s", ".5s", "1 s", "-1s", "1h 30m", "1..5s"] {
            assert_eq!(d(bad), None, "{bad}");
        }
        let re = regex::Regex::new(DURATION_PATTERN).unwrap();
        for ok in ["30s", "1h30m", "500ms", "1.5s"] {
            assert!(re.is_match(ok));
            assert!(Duration::parse(ok).is_some());
        }
        assert_eq!(Duration::parse("90m").unwrap().to_string(), "90m");
        assert_eq!(Duration::parse("1h").unwrap().to_string(), "1h");
        assert_eq!(Duration::parse("1500ms").unwrap().to_string(), "1500ms");
    }
}
