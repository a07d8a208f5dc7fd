//! `type: agent`: a tool-calling loop whose every model turn and every tool call is a step of
//! the run (an attempt in its log). This module holds the pure part: the `with` block and the
//! rules a schema cannot say; [`run`] holds the loop's state. The state machine moves it
//! (`engine::machine::agent`); runtimes run its steps.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::tasks::{ApprovalWith, Approvers, FormField};

pub mod run;
pub use run::{
    AgentLoop, CallRec, CallStatus, MAX_CALLS_PER_TURN, MAX_REFUSED_CALLS, MAX_RESULT_BYTES, MAX_TOOL_FAILURES,
    MAX_TRANSCRIPT_BYTES, Step, TurnRec,
};

/// The task type.
pub const AGENT: &str = "agent";

/// The most turns an agent may take (`max_turns` is at most this).
pub const MAX_TURNS: u32 = 50;
/// `max_turns` when it is not set.
pub const DEFAULT_TURNS: u32 = 8;
/// The most tools one agent may have.
pub const MAX_TOOLS: usize = 64;

/// `type: agent`: the model answers or calls tools, turn after turn, until it answers or
/// `max_turns` is reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentWith {
    pub model: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_models: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The user's message (a template); or `messages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The conversation so far: a list of `{role, content}`, or a template whose value is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolDef>,
    /// Turns at most (default 8, at most 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<u32>,
    /// `auto` (default), `none`, `required`, or a tool's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// The JSON Schema the final answer must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    /// What reaching `max_turns` with the model still calling tools does: `fail` the task (the
    /// default), or `answer` with the last turn's text (`stopped: max_turns` in the output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_max_turns: Option<OnMaxTurns>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 2.0))]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub top_p: Option<f64>,
    /// The most tokens of each turn's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
}

/// `on_max_turns` of an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnMaxTurns {
    Fail,
    Answer,
}

/// A tool of an agent: what the model is told, and the task that runs a call (with the call's
/// arguments as `args`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolDef {
    /// What the model calls it: 1 to 64 letters, digits, `_` and `-`.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The JSON Schema of the arguments (an object schema).
    #[serde(default = "empty_object")]
    pub parameters: Value,
    /// The task a call runs: `{type, with}` of any task type but `agent`.
    pub run: ToolRun,
    /// A person approves each call before it runs (the form of a `wait` approval: prompt,
    /// fields, approvers, single-use link); the agent holds nothing while it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ToolApproval>,
}

/// `approval` of a tool: every call of it waits for a person's answer before it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolApproval {
    /// What the approver is asked (a template; the call's arguments are `args`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// A typed form the answer fills (as a `wait` approval's); the tool's `with` reads the
    /// answer as `approval` (`{{ approval.fields.amount }}`).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub fields: IndexMap<String, FormField>,
    /// Who may answer (roles or subjects); anyone who may start runs in the tenant when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvers: Option<Approvers>,
    /// Offer a single-use link that answers without an account.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub link: bool,
    /// What a rejection (or no answer within `timeout`) does: `return` it to the model as
    /// the tool's result (an error it can act on; the default), or `fail` the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_reject: Option<OnReject>,
    /// How long a call waits for its answer; past it, the call is rejected (`on_reject`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<crate::model::Duration>,
}

/// `on_reject` of a tool's approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnReject {
    Return,
    Fail,
}

impl ToolApproval {
    /// The form as a `wait` approval's (answers to both are checked alike).
    pub fn form(&self) -> ApprovalWith {
        ApprovalWith {
            prompt: self.prompt.clone(),
            fields: self.fields.clone(),
            approvers: self.approvers.clone(),
            link: self.link,
            on_reject: None,
        }
    }
}

fn empty_object() -> Value {
    serde_json::json!({"type": "object", "properties": {}})
}

/// The task a tool call runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolRun {
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default)]
    pub with: Map<String, Value>,
}

impl AgentWith {
    /// The turns it may take.
    pub fn turns(&self) -> u32 {
        self.max_turns.unwrap_or(DEFAULT_TURNS)
    }

    /// The rules a schema cannot say: `(field under with, message)` for each broken one.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.prompt.is_some() == self.messages.is_some() {
            out.push((String::new(), "an agent needs exactly one of `prompt` and `messages`".to_string()));
        }
        if let Some(n) = self.max_turns
            && !(1..=MAX_TURNS).contains(&n)
        {
            out.push(("max_turns".into(), format!("`max_turns` is 1 to {MAX_TURNS} (got {n})")));
        }
        if self.tools.len() > MAX_TOOLS {
            out.push(("tools".into(), format!("at most {MAX_TOOLS} tools (got {})", self.tools.len())));
        }
        let mut seen: IndexMap<&str, usize> = IndexMap::new();
        for (i, t) in self.tools.iter().enumerate() {
            let at = |f: &str| format!("tools/{i}{f}");
            let ok = !t.name.is_empty()
                && t.name.len() <= 64
                && t.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                out.push((at("/name"), format!("`{}` is not a tool name (1 to 64 letters, digits, `_`, `-`)", t.name)));
            }
            if let Some(j) = seen.insert(&t.name, i) {
                out.push((at("/name"), format!("tool `{}` is defined twice (also tools[{j}])", t.name)));
            }
            if t.parameters.get("type").and_then(Value::as_str) != Some("object") {
                out.push((at("/parameters"), "a tool's `parameters` is an object schema (`type: object`)".into()));
            } else if let Err(e) = jsonschema::meta::validate(&t.parameters) {
                out.push((at("/parameters"), format!("not a valid JSON Schema: {e}")));
            }
            match t.run.ty.as_str() {
                "llm" | "evaluate" => out.push((
                    at("/run/type"),
                    "a tool cannot call a model itself: the agent's turns are its model calls (a `workflow` tool's child may make its own)".into(),
                )),
                AGENT => out.push((
                    at("/run/type"),
                    "a tool cannot be an agent (make it a `workflow` whose task is one)".into(),
                )),
                "wait" => out
                    .push((at("/run/type"), "a tool cannot be a `wait` (its call would hold the agent's turn)".into())),
                _ => {}
            }
            if let Some(cb) = t.run.with.get("callback") {
                if !matches!(t.run.ty.as_str(), "http" | "function") {
                    out.push((
                        at("/run/with/callback"),
                        "only an `http` or `function` tool's call can wait for a callback".into(),
                    ));
                } else {
                    match serde_json::from_value::<crate::callback::CallbackWith>(cb.clone()) {
                        Ok(cb) => {
                            if let Err((field, m)) = cb.check() {
                                out.push((at(&format!("/run/with/callback/{field}")), m));
                            }
                        }
                        Err(e) => out.push((at("/run/with/callback"), format!("not a callback setting: {e}"))),
                    }
                }
            }
        }
        if let Some(c) = &self.tool_choice
            && !matches!(c.as_str(), "auto" | "none" | "required")
            && !self.tools.iter().any(|t| &t.name == c)
        {
            out.push(("tool_choice".into(), format!("`{c}` is neither auto, none, required nor a tool's name")));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn agent(v: Value) -> AgentWith {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_issue_example_reads_and_checks() {
        let a = agent(json!({
            "model": "gpt-4o",
            "prompt": "{{ inputs.question }}",
            "max_turns": 8,
            "tools": [{
                "name": "weather",
                "description": "Current weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                "run": {"type": "http", "with": {"url": "https://api.example.com/weather?city={{ args.city }}"}}
            }]
        }));
        assert_eq!(a.check(), vec![]);
        assert_eq!(a.turns(), 8);
        assert_eq!(a.tools[0].run.ty, "http");
    }

    #[test]
    fn broken_agents_say_what_and_where() {
        let a = agent(json!({
            "model": "m",
            "max_turns": 51,
            "tool_choice": "search",
            "tools": [
                {"name": "bad name", "run": {"type": "http"}},
                {"name": "w", "parameters": {"type": "string"}, "run": {"type": "agent"}},
                {"name": "w", "parameters": {"type": "object", "properties": {"x": {"type": 3}}}, "run": {"type": "transform"}},
                {"name": "cb", "run": {"type": "http", "with": {"url": "https://x.example", "callback": {"timeout": "1h"}}}},
                {"name": "cb2", "run": {"type": "http", "with": {"url": "https://x.example", "callback": {"timeout": "1m", "heartbeat": "2m"}}}},
                {"name": "cb3", "run": {"type": "transform", "with": {"output": 1, "callback": {}}}}
            ]
        }));
        let fields: Vec<String> = a.check().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "",
                "max_turns",
                "tools/0/name",
                "tools/1/parameters",
                "tools/1/run/type",
                "tools/2/name",
                "tools/2/parameters",
                "tools/4/run/with/callback/heartbeat",
                "tools/5/run/with/callback",
                "tool_choice"
            ]
        );
        assert!(
            serde_json::from_value::<AgentWith>(json!({"model": "m", "prompt": "p", "tools": [{"name": "x"}]}))
                .is_err(),
            "a tool needs `run`"
        );
    }
}

#[cfg(test)]
mod validation {
    use crate::source::SourceFile;
    use crate::validate::Validator;

    fn errors(yaml: &str) -> Vec<String> {
        let text = format!("apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: {{ name: t }}\nspec:\n{yaml}");
        let outcome = Validator::default().validate(&SourceFile::new("t.yaml", text));
        outcome.report.records().iter().map(|r| format!("{}: {}", r.path, r.message)).collect()
    }

    const TOOLS: &str = r#"
  tasks:
    - id: a
      type: agent
      with:
        model: m
        prompt: "{{ inputs.q }}"
        tools:
          - { name: fetch, run: { type: http, with: { url: "https://x.example.com/?q={{ args.q | urlencode }}" } } }
          - { name: kid, run: { type: workflow, with: { workflow: other } } }
          - { name: ask, run: { type: llm, with: { model: m, prompt: "{{ args.q }}" } } }
          - { name: nope, run: { type: nosuch } }
"#;

    #[test]
    fn tools_read_args_run_known_types_and_spend_nothing_under_a_budget() {
        let plain = errors(&format!("  inputs: {{ q: {{ type: string }} }}{TOOLS}"));
        assert!(
            plain.iter().any(|e| e.contains("tools[2].run.type") && e.contains("cannot call a model")),
            "{plain:?}"
        );
        assert!(
            plain.iter().any(|e| e.contains("tools[3].run.type") && e.contains("unknown task type `nosuch`")),
            "{plain:?}"
        );
        assert!(!plain.iter().any(|e| e.contains("args")), "args is known in a tool's with: {plain:?}");
        assert!(!plain.iter().any(|e| e.contains("tools[1]")), "a workflow tool without a budget: {plain:?}");
        let budget = errors(&format!("  budget: {{ max_cost_usd: 1 }}\n  inputs: {{ q: {{ type: string }} }}{TOOLS}"));
        assert!(budget.iter().any(|e| e.contains("tools[1].run.type") && e.contains("which may spend")), "{budget:?}");
        assert!(!budget.iter().any(|e| e.contains("tools[0]")), "an http tool spends nothing: {budget:?}");
        let outside = errors("  tasks:\n    - { id: t, type: transform, with: { output: \"{{ args.q }}\" } }\n");
        assert!(outside.iter().any(|e| e.contains("unknown variable `args`")), "{outside:?}");
    }
}
