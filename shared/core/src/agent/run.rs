//! An agent's loop as the run's state keeps it: every model turn with the tool calls it asked
//! for, each call's status, attempts, result and times. The state machine
//! (`engine::machine::agent`) moves it; runtimes read it to build the next model request
//! ([`AgentLoop::history`]) and to run a call ([`Step`]). Pure data and rules, no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::engine::{Millis, Output, Waits};

/// A tool's result is cut to this many bytes (of its JSON text) before the model sees it or
/// the run's state keeps it, with a marker saying so.
pub const MAX_RESULT_BYTES: usize = 32 << 10;
/// The transcript is kept under this many bytes: past it, the oldest tool results are
/// replaced by a marker, oldest first, until it fits (the model's own words are kept).
pub const MAX_TRANSCRIPT_BYTES: usize = 256 << 10;
/// The most tool calls one turn may ask for: the calls past it are answered with an error.
pub const MAX_CALLS_PER_TURN: usize = 16;
/// Calls that could not run (unknown tool, arguments not matching the tool's schema, too many
/// in a turn) an agent may make in all; one more fails the task.
pub const MAX_REFUSED_CALLS: u32 = 8;
/// Times one tool may fail (for good, its retries spent) in one agent; the next failure fails
/// the task instead of going back to the model.
pub const MAX_TOOL_FAILURES: u32 = 3;

/// The loop of one agent unit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentLoop {
    /// The turns the model answered, in order, each with the calls it asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub turns: Vec<TurnRec>,
    /// The attempt asking the model for the next turn, while one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asking: Option<u32>,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked_at: Option<Millis>,
    /// Attempts made at the turn being asked (its retries count from here).
    #[serde(default)]
    pub tries: u32,
    /// Calls that could not run, in all.
    #[serde(default)]
    pub refused: u32,
    /// Calls that failed for good, by tool.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failures: BTreeMap<String, u32>,
    /// Tokens and money spent over every turn and call.
    #[serde(default)]
    pub tokens: u64,
    #[serde(default)]
    pub cost_usd: f64,
}

/// One answer of the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TurnRec {
    /// The attempt that asked.
    pub attempt: u32,
    #[serde(default)]
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default)]
    pub tokens: u64,
    #[serde(default)]
    pub cost_usd: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Millis>,
    pub ended_at: Millis,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<CallRec>,
}

/// Where a tool call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    Running,
    RetryWait,
    Succeeded,
    Failed,
    /// Never run: an unknown tool, arguments that do not match its schema, too many calls, or
    /// its approval was refused (or timed out).
    Refused,
    /// Waiting for a person to approve it (its tool has an `approval`).
    Awaiting,
    /// Its call went out and it waits for the answer to the task token it sent (its tool is
    /// an `http` or `function` task with a `callback`).
    AwaitingCallback,
}

impl CallStatus {
    pub fn settled(self) -> bool {
        matches!(self, CallStatus::Succeeded | CallStatus::Failed | CallStatus::Refused)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Running => "running",
            CallStatus::RetryWait => "retry_wait",
            CallStatus::Succeeded => "succeeded",
            CallStatus::Failed => "failed",
            CallStatus::Refused => "refused",
            CallStatus::Awaiting => "awaiting_approval",
            CallStatus::AwaitingCallback => "awaiting_callback",
        }
    }
}

/// One tool call the model asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRec {
    /// The model's id for it (its result is sent back under this id).
    pub id: String,
    pub name: String,
    pub arguments: Value,
    pub status: CallStatus,
    /// Its latest attempt (0: refused, never run).
    #[serde(default)]
    pub attempt: u32,
    /// Attempts made.
    #[serde(default)]
    pub tries: u32,
    /// Its result (cut to [`MAX_RESULT_BYTES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Output>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The transcript's bound replaced its result by a marker ([`MAX_TRANSCRIPT_BYTES`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cut: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Millis>,
    #[serde(default)]
    pub tokens: u64,
    #[serde(default)]
    pub cost_usd: f64,
    /// What its approval waits for (when its tool has one): since when, the question, the
    /// timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waits: Option<Waits>,
    /// The answer to its approval: `{approved, fields, by, comment}` (or `timed_out`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Value>,
    /// The key of the event that started its callback's wait or last moved its wake (what
    /// that event owes: the wait's listing and its wake).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

impl CallRec {
    /// A call as the model asked for it: not run yet (`Running` until its attempt starts), or
    /// refused with `error`.
    pub fn asked(id: String, name: String, arguments: Value, error: Option<String>) -> CallRec {
        CallRec {
            id,
            name,
            arguments,
            status: if error.is_some() { CallStatus::Refused } else { CallStatus::Running },
            attempt: 0,
            tries: 0,
            result: None,
            error,
            cut: false,
            started_at: None,
            ended_at: None,
            retry_at: None,
            tokens: 0,
            cost_usd: 0.0,
            waits: None,
            approval: None,
            cause: None,
        }
    }

    /// What the model is told of it: its result as text (a string as it is, other JSON as
    /// JSON), or its error; and whether it is an error.
    pub fn content(&self) -> (String, bool) {
        if self.cut {
            return (
                format!("[cut: this result was dropped to keep the transcript under {MAX_TRANSCRIPT_BYTES} bytes]"),
                false,
            );
        }
        match (&self.result, &self.error) {
            (Some(r), _) if self.status == CallStatus::Succeeded => match &**r {
                Value::String(s) => (s.clone(), false),
                v => (v.to_string(), false),
            },
            (_, Some(e)) => (format!("error: {e}"), true),
            _ => (format!("error: the call did not finish ({})", self.status.as_str()), true),
        }
    }

    fn bytes(&self) -> usize {
        self.name.len() + self.arguments.to_string().len() + self.content().0.len()
    }

    /// The call as the task's output lists it.
    pub fn view(&self, turn: usize) -> Value {
        let mut v = json!({
            "turn": turn,
            "id": self.id,
            "name": self.name,
            "arguments": self.arguments,
            "status": self.status.as_str(),
            "attempts": self.tries,
        });
        if let Some(r) = &self.result {
            v["result"] = Value::clone(r);
        }
        if let Some(e) = &self.error {
            v["error"] = json!(e);
        }
        if let (Some(s), Some(e)) = (self.started_at, self.ended_at) {
            v["duration_ms"] = json!(e.saturating_sub(s));
        }
        if self.tokens > 0 || self.cost_usd > 0.0 {
            v["tokens"] = json!(self.tokens);
            v["cost_usd"] = json!(self.cost_usd);
        }
        if self.cut {
            v["cut"] = json!(true);
        }
        if let Some(a) = &self.approval {
            v["approval"] = a.clone();
        }
        v
    }
}

/// A tool's result as kept: its JSON, or when that is over [`MAX_RESULT_BYTES`], the start of
/// its text with a marker saying how much was cut.
pub fn bounded_result(v: &Value) -> Value {
    let text = match v {
        Value::String(s) if s.len() <= MAX_RESULT_BYTES => return v.clone(),
        Value::String(s) => s.clone(),
        v => {
            let t = v.to_string();
            if t.len() <= MAX_RESULT_BYTES {
                return v.clone();
            }
            t
        }
    };
    let mut end = MAX_RESULT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Value::String(format!(
        "{}\n[truncated: the result was {} bytes, over the limit of {MAX_RESULT_BYTES}]",
        &text[..end],
        text.len()
    ))
}

impl AgentLoop {
    /// The turn being worked on: the last one, while its calls run.
    pub fn last_calls(&self) -> &[CallRec] {
        self.turns.last().map_or(&[], |t| t.calls.as_slice())
    }

    /// `(turn, call)` of the call whose running attempt is `attempt`.
    pub fn running_call(&self, attempt: u32) -> Option<(usize, usize)> {
        let t = self.turns.len().checked_sub(1)?;
        let c = self.turns[t].calls.iter().position(|c| c.attempt == attempt && c.status == CallStatus::Running)?;
        Some((t, c))
    }

    /// `(turn, call)` of the call waiting to retry attempt `attempt`.
    pub fn waiting_call(&self, attempt: u32) -> Option<(usize, usize)> {
        let t = self.turns.len().checked_sub(1)?;
        let c = self.turns[t].calls.iter().position(|c| c.attempt == attempt && c.status == CallStatus::RetryWait)?;
        Some((t, c))
    }

    /// `(turn, call)` of the call whose approval attempt `attempt` waits for an answer.
    pub fn awaiting_call(&self, attempt: u32) -> Option<(usize, usize)> {
        let t = self.turns.len().checked_sub(1)?;
        let c = self.turns[t].calls.iter().position(|c| c.attempt == attempt && c.status == CallStatus::Awaiting)?;
        Some((t, c))
    }

    /// The calls waiting for a person's approval.
    pub fn awaiting(&self) -> impl Iterator<Item = &CallRec> + '_ {
        self.last_calls().iter().filter(|c| c.status == CallStatus::Awaiting)
    }

    /// `(turn, call)` of the call whose attempt `attempt` waits for its callback.
    pub fn callback_call(&self, attempt: u32) -> Option<(usize, usize)> {
        let t = self.turns.len().checked_sub(1)?;
        let c = self.turns[t]
            .calls
            .iter()
            .position(|c| c.attempt == attempt && c.status == CallStatus::AwaitingCallback)?;
        Some((t, c))
    }

    /// `(turn, call)` of the call whose attempt `attempt` waits for an answer from outside:
    /// its approval or its callback.
    pub fn answer_call(&self, attempt: u32) -> Option<(usize, usize)> {
        self.awaiting_call(attempt).or_else(|| self.callback_call(attempt))
    }

    /// The calls waiting for an answer from outside: an approval or a callback.
    pub fn answer_owed(&self) -> impl Iterator<Item = &CallRec> + '_ {
        self.last_calls().iter().filter(|c| matches!(c.status, CallStatus::Awaiting | CallStatus::AwaitingCallback))
    }

    /// Every call of the last turn has settled.
    pub fn calls_settled(&self) -> bool {
        self.last_calls().iter().all(|c| c.status.settled())
    }

    /// The attempts running now: the model's turn, or the calls.
    pub fn running(&self) -> impl Iterator<Item = u32> + '_ {
        self.asking
            .into_iter()
            .chain(self.last_calls().iter().filter(|c| c.status == CallStatus::Running).map(|c| c.attempt))
    }

    /// The calls waiting for their retry: `(attempt, when)`.
    pub fn retrying(&self) -> impl Iterator<Item = (u32, Millis)> + '_ {
        self.last_calls()
            .iter()
            .filter(|c| c.status == CallStatus::RetryWait)
            .map(|c| (c.attempt, c.retry_at.unwrap_or_default()))
    }

    /// Keeps the transcript under [`MAX_TRANSCRIPT_BYTES`]: the oldest results that are not
    /// cut yet are replaced by a marker until it fits.
    pub fn bound(&mut self) {
        let mut total: usize =
            self.turns.iter().map(|t| t.text.len() + t.calls.iter().map(CallRec::bytes).sum::<usize>()).sum();
        for c in self.turns.iter_mut().flat_map(|t| t.calls.iter_mut()) {
            if total <= MAX_TRANSCRIPT_BYTES {
                break;
            }
            if c.cut || c.result.is_none() {
                continue;
            }
            let before = c.bytes();
            c.cut = true;
            c.result = None;
            total = total - before + c.bytes();
        }
    }

    /// The transcript as the output shows it: the model's turns and the results it was sent.
    pub fn transcript(&self) -> Value {
        let mut out = Vec::new();
        for t in &self.turns {
            let mut m = json!({"role": "assistant", "content": t.text});
            if !t.calls.is_empty() {
                m["tool_calls"] =
                    t.calls.iter().map(|c| json!({"id": c.id, "name": c.name, "arguments": c.arguments})).collect();
            }
            out.push(m);
            for c in &t.calls {
                let (content, is_error) = c.content();
                let mut r = json!({"role": "tool", "tool_call_id": c.id, "name": c.name, "content": content});
                if is_error {
                    r["is_error"] = json!(true);
                }
                out.push(r);
            }
        }
        Value::Array(out)
    }

    /// The loop as the run page shows it, while it runs too: each turn (its attempt, model,
    /// tokens, cost, times, the start of its text) with its calls (arguments, status, attempts,
    /// duration, the start of their result or error), and the turn being asked, if one is.
    /// Texts and results are cut to 500 characters here (the output keeps them whole).
    pub fn timeline(&self) -> Value {
        fn preview(s: &str) -> String {
            match s.char_indices().nth(500) {
                Some((i, _)) => format!("{}…", &s[..i]),
                None => s.to_string(),
            }
        }
        let mut out: Vec<Value> = self
            .turns
            .iter()
            .enumerate()
            .map(|(i, t)| {
                json!({
                    "turn": i + 1,
                    "attempt": t.attempt,
                    "model": t.model,
                    "tokens": t.tokens,
                    "cost_usd": t.cost_usd,
                    "started_at": t.started_at,
                    "ended_at": t.ended_at,
                    "text": preview(&t.text),
                    "calls": t.calls.iter().map(|c| {
                        let (content, is_error) = c.content();
                        let mut v = json!({
                            "id": c.id, "name": c.name, "arguments": preview(&c.arguments.to_string()),
                            "status": c.status.as_str(), "attempts": c.tries,
                            "started_at": c.started_at, "ended_at": c.ended_at,
                            "tokens": c.tokens, "cost_usd": c.cost_usd,
                        });
                        if c.status == CallStatus::Awaiting {
                            let w = c.waits.as_ref();
                            v["attempt"] = json!(c.attempt);
                            v["prompt"] = json!(w.and_then(|w| w.prompt.as_deref()));
                            v["since"] = json!(w.map(|w| w.since));
                            v["timeout_at"] = json!(w.and_then(|w| w.timeout_at));
                        } else if c.status == CallStatus::AwaitingCallback {
                            let w = c.waits.as_ref();
                            v["attempt"] = json!(c.attempt);
                            v["since"] = json!(w.map(|w| w.since));
                            v["timeout_at"] = json!(w.and_then(Waits::callback_due).map(|(at, _)| at));
                            v["beat_at"] = json!(w.and_then(|w| w.beat_at));
                        } else {
                            v[if is_error { "error" } else { "result" }] = json!(preview(&content));
                        }
                        if let Some(a) = &c.approval {
                            v["approval"] = a.clone();
                        }
                        v
                    }).collect::<Vec<_>>(),
                })
            })
            .collect();
        if let Some(attempt) = self.asking {
            out.push(
                json!({"turn": self.turns.len() + 1, "attempt": attempt, "asking": true, "started_at": self.asked_at}),
            );
        }
        Value::Array(out)
    }

    /// The task's output once the model answered without calling a tool: its last text (and
    /// `json`), the transcript, every call, the turns and what they spent in all.
    pub fn output(&self, json: Option<&Value>, stopped: Option<&str>) -> Value {
        let last = self.turns.last();
        let mut out = json!({
            "text": last.map_or("", |t| t.text.as_str()),
            "turns": self.turns.len(),
            "tool_calls": self
                .turns
                .iter()
                .enumerate()
                .flat_map(|(i, t)| t.calls.iter().map(move |c| c.view(i + 1)))
                .collect::<Vec<_>>(),
            "transcript": self.transcript(),
            "usage": { "tokens": self.tokens, "cost_usd": self.cost_usd },
        });
        if let Some(m) = last.and_then(|t| t.model.as_deref()) {
            out["model"] = json!(m);
        }
        if let Some(j) = json {
            out["json"] = j.clone();
        }
        if let Some(why) = stopped {
            out["stopped"] = json!(why);
        }
        out
    }
}

/// Everything a turn's request carries that counts as prompt, piece by piece: the system
/// prompt, the task's messages, the output schema, each tool (name, description, parameters)
/// and every turn so far (the model's text, each call's name and arguments, each result). A
/// budget's bound of the turn counts these ([`crate::engine::budget::PriceBook::agent_turn`]).
pub fn turn_texts(with: &Value, turns: &[TurnRec]) -> Vec<String> {
    let mut out = Vec::new();
    for k in ["system", "prompt"] {
        if let Some(s) = with.get(k).and_then(Value::as_str) {
            out.push(s.to_string());
        }
    }
    crate::engine::budget::message_texts(with, &mut out);
    if let Some(s) = with.get("output_schema") {
        out.push(s.to_string());
    }
    for t in with.get("tools").and_then(Value::as_array).into_iter().flatten() {
        for k in ["name", "description"] {
            out.push(t.get(k).and_then(Value::as_str).unwrap_or_default().to_string());
        }
        out.push(t.get("parameters").map_or_else(String::new, Value::to_string));
    }
    for t in turns {
        out.push(t.text.clone());
        for c in &t.calls {
            out.push(c.name.clone());
            out.push(match &c.arguments {
                Value::String(raw) => raw.clone(),
                v => v.to_string(),
            });
            out.push(c.content().0);
        }
    }
    out
}

/// What one attempt of an agent unit does: ask the model for turn `turn` (1 for the first)
/// after `history`, or run one tool call.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Turn { turn: u32, history: Vec<TurnRec> },
    Tool { turn: u32, call: Box<CallRec>, tool: usize },
}

impl Step {
    /// A key naming the step: the same on every attempt and redelivery of it (`t3` is the
    /// third turn, `t3c2` its second call). Tool calls send it in their idempotency key.
    pub fn key(&self) -> String {
        match self {
            Step::Turn { turn, .. } => format!("t{turn}"),
            Step::Tool { turn, call, .. } => format!("t{turn}c{}", call.id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, result: Value) -> CallRec {
        CallRec {
            id: format!("id-{name}"),
            name: name.into(),
            arguments: json!({}),
            status: CallStatus::Succeeded,
            attempt: 2,
            tries: 1,
            result: Some(Output::new(result)),
            error: None,
            cut: false,
            started_at: Some(10),
            ended_at: Some(15),
            retry_at: None,
            tokens: 0,
            cost_usd: 0.0,
            waits: None,
            approval: None,
            cause: None,
        }
    }

    #[test]
    fn results_are_bounded_with_a_marker() {
        let small = json!({"a": 1});
        assert_eq!(bounded_result(&small), small);
        let big = Value::String("é".repeat(MAX_RESULT_BYTES));
        let Value::String(cut) = bounded_result(&big) else { panic!() };
        assert!(cut.len() < MAX_RESULT_BYTES + 100);
        assert!(cut.ends_with(&format!(
            "[truncated: the result was {} bytes, over the limit of {MAX_RESULT_BYTES}]",
            2 * MAX_RESULT_BYTES
        )));
    }

    #[test]
    fn the_transcript_drops_the_oldest_results_first() {
        let mut l = AgentLoop::default();
        for i in 0..12 {
            l.turns.push(TurnRec {
                attempt: 1,
                text: format!("turn {i}"),
                model: None,
                tokens: 0,
                cost_usd: 0.0,
                started_at: None,
                ended_at: 0,
                calls: vec![call(&format!("c{i}"), Value::String("x".repeat(30_000)))],
            });
        }
        l.bound();
        let cut: Vec<bool> = l.turns.iter().map(|t| t.calls[0].cut).collect();
        // 12 results of 30,000 bytes: four go for the rest to fit in 256 KiB.
        assert_eq!(cut, [true, true, true, true, false, false, false, false, false, false, false, false]);
        assert!(l.turns[0].calls[0].content().0.starts_with("[cut:"));
        assert_eq!(l.turns[0].text, "turn 0", "the model's words stay");
        let out = l.output(None, None);
        assert_eq!(out["turns"], 12);
        assert_eq!(out["tool_calls"][0]["cut"], true);
        assert_eq!(out["tool_calls"][5]["duration_ms"], 5);
        assert_eq!(out["transcript"].as_array().unwrap().len(), 24);
    }

    #[test]
    fn errors_reach_the_model_as_errors() {
        let mut c = call("w", json!(null));
        c.status = CallStatus::Failed;
        c.result = None;
        c.error = Some("HTTP 500".into());
        assert_eq!(c.content(), ("error: HTTP 500".to_string(), true));
        assert_eq!(call("s", json!("sunny")).content(), ("sunny".to_string(), false));
        assert_eq!(call("j", json!({"t": 3})).content(), ("{\"t\":3}".to_string(), false));
    }
}
