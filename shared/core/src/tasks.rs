//! Built-in task types and the registry of task types.
//!
//! A task's `with` block is free-form in the document model; each task type supplies the
//! JSON Schema of its `with` block, which the validator applies (and which the generated
//! editor schema includes through `if type == X then with: ...`). Users who register their
//! own executors register a [`TaskType`] with its schema the same way.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A task type the validator knows.
#[derive(Debug, Clone)]
pub struct TaskType {
    pub name: String,
    pub description: String,
    /// JSON Schema of the `with` block (draft 2020-12).
    pub with_schema: Value,
    /// Paths in `with` whose strings are data, not templates (`/output_schema`,
    /// `/checks/*/pattern`). `*` stands for one path segment; a path covers what is below it.
    pub literal_paths: Vec<String>,
    /// Paths whose strings are expressions rather than templates.
    pub expression_paths: Vec<String>,
    /// Paths whose templates may read `secrets.<NAME>` (`/headers/*`).
    pub secret_paths: Vec<String>,
}

impl TaskType {
    pub fn of<T: JsonSchema>(name: &str, description: &str) -> Self {
        let schema = schemars::generate::SchemaSettings::draft2020_12().into_generator().into_root_schema_for::<T>();
        TaskType {
            name: name.to_string(),
            description: description.to_string(),
            with_schema: schema.to_value(),
            literal_paths: Vec::new(),
            expression_paths: Vec::new(),
            secret_paths: Vec::new(),
        }
    }

    /// A task type whose `with` block `schema` describes (a JSON Schema, draft 2020-12, of an
    /// object), for those who write the schema rather than derive it ([`TaskType::of`]).
    pub fn with_schema(name: &str, description: &str, schema: Value) -> Self {
        TaskType {
            name: name.to_string(),
            description: description.to_string(),
            with_schema: schema,
            literal_paths: Vec::new(),
            expression_paths: Vec::new(),
            secret_paths: Vec::new(),
        }
    }

    pub fn literal(mut self, paths: &[&str]) -> Self {
        self.literal_paths.extend(paths.iter().map(|p| p.to_string()));
        self
    }

    pub fn expressions(mut self, paths: &[&str]) -> Self {
        self.expression_paths.extend(paths.iter().map(|p| p.to_string()));
        self
    }

    pub fn secrets(mut self, paths: &[&str]) -> Self {
        self.secret_paths.extend(paths.iter().map(|p| p.to_string()));
        self
    }
}

/// Does `pointer` lie at or below `pattern` (`*` matching one segment)?
pub fn path_covers(pattern: &str, pointer: &str) -> bool {
    let mut ps = pattern.split('/');
    let mut xs = pointer.split('/');
    loop {
        match (ps.next(), xs.next()) {
            (None, _) => return true,
            (Some(_), None) => return false,
            (Some(p), Some(x)) if p == "*" || p == x => continue,
            _ => return false,
        }
    }
}

/// The task types a document may use.
#[derive(Debug, Clone)]
pub struct Registry {
    types: IndexMap<String, TaskType>,
}

impl Default for Registry {
    fn default() -> Self {
        let mut r = Registry { types: IndexMap::new() };
        r.register(
            TaskType::of::<LlmWith>("llm", "Call a language model (chat completion).").literal(&["/output_schema"]),
        );
        r.register(
            TaskType::of::<TransformWith>("transform", "Build JSON from templates or an expression.")
                .expressions(&["/expression"]),
        );
        r.register(TaskType::of::<HttpWith>("http", "Call an HTTP tool or webhook.").secrets(&["/headers/*"]));
        r.register(TaskType::of::<crate::function::FunctionWith>(
            "function",
            "Invoke an AWS Lambda function (synchronously); output: its JSON answer.",
        ));
        r.register(TaskType::of::<crate::child::WorkflowWith>(
            "workflow",
            "Start a child run of a workflow and wait for its end (holding nothing); output: { outputs, run_id, status }.",
        ));
        r.register(
            TaskType::of::<crate::agent::AgentWith>(
                crate::agent::AGENT,
                "A model that calls tools turn after turn until it answers; each turn and each call is a step. Output: { text, json, turns, tool_calls, transcript, usage }.",
            )
            .literal(&["/output_schema", "/tools/*/parameters"])
            .secrets(&["/tools/*/run/with/headers/*"]),
        );
        r.register(
            TaskType::of::<EvaluateWith>("evaluate", "Score a text with checks; yields score and passed.")
                .literal(&["/checks/*/schema", "/checks/*/pattern"]),
        );
        r.register(
            TaskType::of::<WaitWith>(
                "wait",
                "Wait without running anything: for a time (`sleep`), a person (`approval`) or an event (`event`).",
            )
            .literal(&["/approval/fields", "/approval/approvers", "/event/name"]),
        );
        r.register(TaskType::of::<PolicyWith>("policy", "Allow or deny on models, inputs and budget.").literal(&[
            "/deny_patterns",
            "/allow_models",
            "/deny_models",
        ]));
        r
    }
}

impl Registry {
    /// Adds (or replaces) a task type.
    pub fn register(&mut self, t: TaskType) {
        self.types.insert(t.name.clone(), t);
    }

    pub fn get(&self, name: &str) -> Option<&TaskType> {
        self.types.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = &TaskType> {
        self.types.values()
    }
}

/// `type: llm`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmWith {
    /// `openai`, `anthropic`, `mock`, or a provider named in config; default from config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    pub model: String,
    /// Tried in order when the model fails: `model` or `provider/model`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_models: Vec<String>,
    /// System prompt (template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// User prompt (template). Exactly one of `prompt` and `messages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 2.0))]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// `text` (default) or `json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// JSON Schema the model's JSON output must match (implies `response_format: json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: Role,
    /// A template, or parts (text and images).
    pub content: Content,
}

/// A message's content: text (a template), or a list of parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// A part of a message: text, or an image by URL (`https://`; `s3://` on Bedrock) or inline
/// (`data`: base64 of a PNG, JPEG, GIF or WebP image, with its `media_type`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Part {
    Text {
        text: String,
    },
    Image {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        media_type: Option<String>,
    },
}

impl From<&str> for Content {
    fn from(s: &str) -> Self {
        Content::Text(s.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResponseFormat {
    Text,
    Json,
}

/// `type: wait`: the task waits, running nothing and polling nothing, for one of three
/// things: a time (`sleep`), a person (`approval`) or a posted event (`event`). Outputs:
/// `{waited_until}` for a sleep, `{approved, fields, by, comment}` for an approval,
/// `{event, key, payload, by}` for an event; `{timed_out: true, ...}` after a timeout whose
/// `on_timeout` is `succeed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitWith {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep: Option<SleepWith>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalWith>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<EventWith>,
    /// The longest the task waits, from when it starts waiting (`30m`, `2d`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<crate::model::Duration>,
    /// What a timeout does: `fail` the task (the default) or `succeed` with
    /// `{timed_out: true}` (an approval's `approved` is then `false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<OnTimeout>,
}

/// `on_timeout` of a `wait` task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    Fail,
    Succeed,
}

/// `sleep`: exactly one of `for` and `until`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SleepWith {
    /// How long, from when the task starts: `30s`, `6h`, `2d`.
    #[serde(rename = "for", default, skip_serializing_if = "Option::is_none")]
    pub for_: Option<crate::model::Duration>,
    /// Until when: a template giving an RFC 3339 time (`2026-12-24T09:00:00Z`) or
    /// milliseconds since the epoch. A time already past wakes at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

/// `approval`: a person approves or rejects, through the API (`POST
/// /runs/{id}/tasks/{task}/complete`), the CLI (`llmo approve` / `llmo reject`) or a
/// single-use link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalWith {
    /// What the approver is asked (a template), shown with the waiting task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// A typed form: the answer's `fields` must match it (types, enums, required fields,
    /// no others). Later tasks read them as `tasks.<id>.output.fields.<name>`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub fields: IndexMap<String, FormField>,
    /// Who may answer (a caller with any of these roles, or one of these subjects); anyone
    /// who may start runs in the run's tenant when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvers: Option<Approvers>,
    /// Offer a single-use link that answers without an account (for people outside the
    /// system; the link itself is the credential, valid while the task waits).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub link: bool,
    /// What a rejection does: `succeed` with `approved: false` (the default; later tasks
    /// decide with `when`) or `fail` the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_reject: Option<OnTimeout>,
}

/// One field of an approval form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FormField {
    #[serde(rename = "type")]
    pub ty: FieldType,
    /// The values allowed (of the field's type).
    #[serde(rename = "enum", default, skip_serializing_if = "Option::is_none")]
    pub enum_: Option<Vec<Value>>,
    /// Whether an approval must give it (default `true`; a rejection needs no fields).
    #[serde(default = "yes", skip_serializing_if = "Clone::clone")]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn yes() -> bool {
    true
}

/// The type of an approval form's field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    String,
    Number,
    Integer,
    Boolean,
}

impl FieldType {
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Number => "number",
            FieldType::Integer => "integer",
            FieldType::Boolean => "boolean",
        }
    }

    pub fn admits(self, v: &Value) -> bool {
        match self {
            FieldType::String => v.is_string(),
            FieldType::Number => v.is_number(),
            FieldType::Integer => v.is_i64() || v.is_u64(),
            FieldType::Boolean => v.is_boolean(),
        }
    }
}

/// `approvers`: roles (`viewer`, `developer`, `admin`) and subjects (the `sub` of API tokens).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Approvers {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
}

/// `event`: resumes when an event of this name with this correlation key is posted
/// (`POST /events`, `llmo send-event`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventWith {
    /// The event's name, e.g. `payment.settled`.
    pub name: String,
    /// The correlation key (a template, e.g. `"{{ inputs.order_id }}"`): only an event
    /// with this key resumes the task. Empty when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `type: transform`: exactly one of `output` and `expression`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransformWith {
    /// Any JSON value; its strings are templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// An expression whose value is the output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
}

/// `type: http`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpWith {
    #[serde(default = "HttpMethod::default")]
    pub method: HttpMethod,
    /// Template.
    pub url: String,
    /// Header values are templates and may read `secrets.<NAME>`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub headers: IndexMap<String, String>,
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub query: IndexMap<String, String>,
    /// JSON body; its strings are templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// Status codes counted as success (default: any 2xx).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect_status: Vec<u16>,
    /// Wait for a callback after the request succeeded: the request carries the
    /// `Llmo-Callback-Token` (and, where the API's address is known, `Llmo-Callback-Url`)
    /// headers, and the task ends when the token is answered (see
    /// [`crate::callback::CallbackWith`]). Its output is then the answer's `output`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<crate::callback::CallbackWith>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    #[default]
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Head,
}

/// `type: evaluate`: output `{ score, passed, checks: [...] }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateWith {
    /// The text to evaluate (template).
    pub input: String,
    #[schemars(length(min = 1))]
    pub checks: Vec<Check>,
    /// Fraction of checks that must pass (default 1.0: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub pass_threshold: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Check {
    Contains {
        value: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        case_sensitive: Option<bool>,
    },
    NotContains {
        value: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        case_sensitive: Option<bool>,
    },
    Regex {
        pattern: String,
    },
    JsonSchema {
        schema: Value,
    },
    MinLength {
        #[schemars(range(min = 0))]
        value: u64,
    },
    MaxLength {
        #[schemars(range(min = 0))]
        value: u64,
    },
    Equals {
        value: Value,
    },
    /// The input read as a number lies within [min, max].
    Range {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
    },
    /// A model grades the input against `criteria` with a score in [0, 1].
    LlmJudge {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        provider: Option<String>,
        model: String,
        criteria: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(range(min = 0.0, max = 1.0))]
        threshold: Option<f64>,
    },
}

/// `type: policy`: output `{ allowed, reasons }`; a denial fails the task (not retried).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyWith {
    /// Text to check (template), e.g. a user-supplied input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// Regular expressions the input must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_patterns: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_chars: Option<u64>,
    /// Globs (`gpt-4o*`, `anthropic/*`): every model of the workflow's `llm` tasks must match one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_models: Vec<String>,
    /// Globs no model of the workflow may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_models: Vec<String>,
    /// The run must have at least this much budget left (USD) when the task runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub min_remaining_usd: Option<f64>,
}

/// The models an `llm` task may call, as `provider/model` (bare `model` when neither the task
/// nor the model names a provider), each with its pointer relative to `with`: the model first,
/// then the fallbacks. Policy allow/deny lists are checked against these.
pub fn llm_models(with: &serde_json::Map<String, Value>) -> Vec<(String, String)> {
    let provider = with.get("provider").and_then(Value::as_str).unwrap_or("");
    let full = |m: &str| if m.contains('/') || provider.is_empty() { m.to_string() } else { format!("{provider}/{m}") };
    let mut out = Vec::new();
    if let Some(m) = with.get("model").and_then(Value::as_str) {
        out.push(("/model".to_string(), full(m)));
    }
    for (k, m) in with.get("fallback_models").and_then(Value::as_array).into_iter().flatten().enumerate() {
        if let Some(m) = m.as_str() {
            out.push((format!("/fallback_models/{k}"), full(m)));
        }
    }
    out
}

/// Glob match with `*` (any run of characters) and `?` (one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert!(path_covers("/headers/*", "/headers/Authorization"));
        assert!(path_covers("/checks/*/schema", "/checks/0/schema/properties/x"));
        assert!(!path_covers("/checks/*/schema", "/checks/0/value"));
        assert!(!path_covers("/headers/*", "/headers"));
    }

    #[test]
    fn globs() {
        assert!(glob_match("gpt-4o*", "gpt-4o-mini"));
        assert!(glob_match("anthropic/*", "anthropic/claude-haiku"));
        assert!(!glob_match("gpt-4o", "gpt-4o-mini"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
    }

    #[test]
    fn registry_has_builtins_with_object_schemas() {
        let r = Registry::default();
        for name in ["llm", "agent", "transform", "http", "function", "workflow", "evaluate", "policy", "wait"] {
            assert_eq!(r.get(name).unwrap().with_schema["type"], "object", "{name}");
        }
    }
}
