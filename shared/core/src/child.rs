//! `type: workflow`: a child run as a task. The pure part: the `with` block, the grammar of a
//! workflow reference, the child's run id (derived from the parent's attempt, so a start that
//! is delivered or replayed twice names the same run), the link a child keeps to its parent,
//! the budget passed down, and the one event a child's end sends its parent.
//!
//! How it runs: the parent's attempt starts the child (or finds it started) and holds no
//! compute while the child runs; the child's end applies `AttemptFinished` for that attempt to
//! the parent, once (a duplicate is ignored like any other). A retry of the parent task is a new
//! attempt, so a new child. The parent's `CancelRun` commands cancel children whose attempt was
//! cut off (the parent cancelled, failed or timed out, or the task failed).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::engine::{AttemptResult, Event, Output, RunState, RunStatus, Usage};
use crate::model::Budget;

/// `type: workflow`: starts a child run of a workflow and waits for its end, holding nothing.
/// Output: `{ outputs, run_id, status }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowWith {
    /// The child's workflow: `NAME` or `NAME@VERSION` of a registered workflow (the API,
    /// `llmo serve`), or in an embedded run a file path relative to this workflow's file
    /// (ending in `.yaml` or `.yml`). A template.
    #[schemars(length(min = 1, max = 512))]
    pub workflow: String,
    /// The child's inputs, a JSON object whose strings are templates; checked against the
    /// child's declared inputs when it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Map<String, Value>>,
    /// The most the child may spend, in US dollars, when this run has a cost budget: this much
    /// of the parent's budget is held while the child runs (without it the child may take all
    /// that is left, and siblings wait for it). The child's own budget, if tighter, applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_cost_usd: Option<f64>,
}

/// The task type.
pub const WORKFLOW: &str = "workflow";

/// How deep children may nest: a run at this depth may not start a child.
pub const MAX_DEPTH: u32 = 8;

/// A reference to a child's workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkflowRef {
    /// A registered workflow, by name and maybe version.
    Registered { name: String, version: Option<String> },
    /// A file, relative to the parent's file (embedded runs only).
    File(String),
}

impl WorkflowRef {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s.len() > 512 {
            return Err("a workflow reference is 1 to 512 characters".into());
        }
        if s.ends_with(".yaml") || s.ends_with(".yml") {
            return Ok(WorkflowRef::File(s.to_string()));
        }
        let (name, version) = match s.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (s, None),
        };
        let word = |w: &str, extra: &[char]| {
            !w.is_empty()
                && w.len() <= 128
                && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || extra.contains(&c))
        };
        if !word(name, &[]) {
            return Err(format!(
                "`{s}` is not a workflow: `NAME` or `NAME@VERSION` of a registered workflow (letters, digits, `-`, `_`), or a `.yaml` file"
            ));
        }
        if let Some(v) = version
            && !word(v, &['.', '+'])
        {
            return Err(format!("`{s}`: a version is letters, digits, `.`, `-`, `_` and `+`"));
        }
        Ok(WorkflowRef::Registered { name: name.to_string(), version: version.map(str::to_string) })
    }
}

/// What a child run keeps of its parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parent {
    pub run_id: String,
    /// The parent's `workflow` task (its index in the parent's plan, and its id).
    pub task: usize,
    pub task_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<u32>,
    pub attempt: u32,
    /// This child's depth: 1 for a child of a top-level run.
    pub depth: u32,
}

/// The run id of the child that attempt `attempt` of `task_id` (item `item`) of `parent`
/// starts: `run-<the parent's time>-<24 hex digits of a hash of the attempt>`. The same for
/// every delivery of that attempt; unguessable as the parent's own id is.
pub fn child_run_id(parent: &str, task_id: &str, item: Option<u32>, attempt: u32) -> String {
    let mut h = Sha256::new();
    for part in ["child", parent, task_id, &item.map_or("-".into(), |i| i.to_string()), &attempt.to_string()] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    let time = parent
        .strip_prefix("run-")
        .and_then(|r| r.split('-').next())
        .filter(|t| t.len() == 13 && t.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or("0000000000000");
    format!("run-{time}-{hex}")
}

/// The tighter of two budgets, field by field (a limit either sets applies).
pub fn tighter(a: Option<Budget>, b: Option<Budget>) -> Option<Budget> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Budget {
            max_cost_usd: min_of(a.max_cost_usd, b.max_cost_usd, f64::min),
            max_tokens: min_of(a.max_tokens, b.max_tokens, u64::min),
        }),
        (a, b) => a.or(b),
    }
}

fn min_of<T>(a: Option<T>, b: Option<T>, min: fn(T, T) -> T) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(min(a, b)),
        (a, b) => a.or(b),
    }
}

impl RunState {
    /// For an ended child run: its parent's run id and the event that ends the parent's
    /// attempt. A success gives `{ outputs, run_id, status }`; a failure or a time-out is a
    /// retryable failure of the attempt (it follows the parent task's `retry`), a
    /// cancellation is not. Either way the child's spending is the attempt's usage.
    pub fn report_to_parent(&self) -> Option<(String, Event)> {
        let p = self.parent.as_ref()?;
        if !self.status.is_terminal() {
            return None;
        }
        let usage = Usage { tokens: self.tokens, cost_usd: self.cost_usd };
        let result = match self.status {
            RunStatus::Succeeded => AttemptResult::Succeeded {
                output: Output::new(json!({
                    "outputs": self.outputs.clone().unwrap_or(Value::Object(Map::new())),
                    "run_id": self.run_id,
                    "status": self.status.as_str(),
                })),
                usage,
            },
            status => AttemptResult::Failed {
                error: format!(
                    "child run {} {}: {}",
                    self.run_id,
                    status.as_str(),
                    self.error.as_deref().unwrap_or("no error recorded")
                ),
                retryable: self.worth_retrying(),
                usage,
            },
        };
        Some((p.run_id.clone(), Event::finished(p.task, p.item, p.attempt, result)))
    }

    /// Whether another run of the same child could end otherwise: it timed out, was aborted
    /// (a message it could not process), or a task failed it on an error another attempt
    /// could help with once its retries ran out. Not a cancellation, a budget stop, or a
    /// task failing for good (bad input, a refusal, a child that could not start): retrying
    /// those would make the same child fail again, and nested children multiply it.
    fn worth_retrying(&self) -> bool {
        match self.status {
            RunStatus::TimedOut => true,
            RunStatus::Failed if self.budget_stop.is_some() => false,
            RunStatus::Failed => {
                let units = || self.tasks.iter().flat_map(|t| &t.units);
                let failed: Vec<_> = units().filter(|u| u.status == crate::engine::TaskStatus::Failed).collect();
                failed.is_empty() || failed.iter().any(|u| u.transient)
            }
            _ => false,
        }
    }

    /// This run's depth among nested runs (0 for a run nobody started).
    pub fn depth(&self) -> u32 {
        self.parent.as_ref().map_or(0, |p| p.depth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_as_names_versions_or_files() {
        assert_eq!(
            WorkflowRef::parse("summarise").unwrap(),
            WorkflowRef::Registered { name: "summarise".into(), version: None }
        );
        assert_eq!(
            WorkflowRef::parse("summarise@1.2.0").unwrap(),
            WorkflowRef::Registered { name: "summarise".into(), version: Some("1.2.0".into()) }
        );
        assert_eq!(WorkflowRef::parse("children/one.yaml").unwrap(), WorkflowRef::File("children/one.yaml".into()));
        for bad in ["", "a b", "x@", "@1", "a/b", "x@1 2"] {
            assert!(WorkflowRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_childs_id_is_the_attempts_and_keeps_the_parents_time() {
        let p = "run-1796642779881-e0626f2708e5b78d29036330";
        let a = child_run_id(p, "fan", Some(3), 1);
        assert!(a.starts_with("run-1796642779881-"), "{a}");
        assert_eq!(a.len(), p.len());
        assert_eq!(a, child_run_id(p, "fan", Some(3), 1), "the same on every delivery");
        assert_ne!(a, child_run_id(p, "fan", Some(3), 2), "a retry is another child");
        assert_ne!(a, child_run_id(p, "fan", Some(4), 1));
        assert_ne!(a, child_run_id(p, "fan", None, 1));
        assert_ne!(a, child_run_id("run-1796642779881-x", "fan", Some(3), 1));
        assert!(child_run_id("embedded", "t", None, 1).starts_with("run-0000000000000-"));
    }

    #[test]
    fn the_tighter_budget_wins_field_by_field() {
        let a = Budget { max_cost_usd: Some(1.0), max_tokens: None };
        let b = Budget { max_cost_usd: Some(0.25), max_tokens: Some(100) };
        assert_eq!(tighter(Some(a), Some(b)), Some(Budget { max_cost_usd: Some(0.25), max_tokens: Some(100) }));
        assert_eq!(tighter(None, Some(a)), Some(a));
        assert_eq!(tighter(None, None), None);
    }

    use crate::engine::{Command, Plan, TaskStatus};
    use crate::source::SourceFile;
    use crate::validate::Validator;

    const PARENT: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: parent }
spec:
  budget: { max_cost_usd: 1.0 }
  tasks:
    - id: kids
      type: workflow
      for_each: "[1, 2]"
      retry: { max_attempts: 2 }
      with: { workflow: child, inputs: { n: "{{ item }}" }, max_cost_usd: 0.25 }
"#;

    fn plan() -> Plan {
        let outcome = Validator::default().validate(&SourceFile::new("p.yaml", PARENT));
        Plan::new(outcome.checked.unwrap_or_else(|| panic!("{:#?}", outcome.report.records())))
    }

    fn child_of(parent: &RunState, item: u32, attempt: u32) -> RunState {
        let p = plan();
        let mut child = p.new_run(child_run_id(&parent.run_id, "kids", Some(item), attempt), Map::new());
        let link = Parent {
            run_id: parent.run_id.clone(),
            task: 0,
            task_id: "kids".into(),
            item: Some(item),
            attempt,
            depth: 1,
        };
        p.adopt(&mut child, link, Some(Budget { max_cost_usd: Some(0.25), max_tokens: None }));
        child
    }

    fn ended(mut child: RunState, status: RunStatus, cost: f64) -> RunState {
        child.status = status;
        child.cost_usd = cost;
        child.tokens = 10;
        child.outputs = Some(json!({"n": 1}));
        child.error = (status != RunStatus::Succeeded).then(|| "it broke".to_string());
        child
    }

    #[test]
    fn a_childs_end_ends_the_parents_attempt_once_and_its_cost_counts() {
        let p = plan();
        let mut st = p.new_run("run-1796642779881-e0626f2708e5b78d29036330", Map::new());
        let cmds = p.apply(&mut st, &Event::Start, 1).unwrap();
        let executes = cmds.iter().filter(|c| matches!(c, Command::Execute { .. })).count();
        assert_eq!(executes, 2, "one attempt per child: {cmds:?}");
        assert!((st.reserved.cost_usd - 0.5).abs() < 1e-9, "each holds its max_cost_usd: {:?}", st.reserved);
        for item in 0..2 {
            let (to, event) = ended(child_of(&st, item, 1), RunStatus::Succeeded, 0.1).report_to_parent().unwrap();
            assert_eq!(to, st.run_id);
            p.apply(&mut st, &event, 2).unwrap();
            assert!(p.apply(&mut st, &event, 3).is_err(), "a second report is ignored");
        }
        assert_eq!(st.status, RunStatus::Succeeded);
        assert!((st.cost_usd - 0.2).abs() < 1e-9, "the children's cost is the parent's: {}", st.cost_usd);
        assert_eq!(st.tokens, 20);
        let out = st.tasks[0].output.clone().unwrap();
        assert_eq!(out[0]["outputs"]["n"], 1);
        assert_eq!(out[0]["status"], "succeeded");
        assert_eq!(out[1]["run_id"], child_run_id(&st.run_id, "kids", Some(1), 1));
    }

    #[test]
    fn a_failed_child_is_retried_as_a_new_child_and_a_cancelled_one_is_not() {
        let p = plan();
        let mut st = p.new_run("run-1796642779881-e0626f2708e5b78d29036330", Map::new());
        p.apply(&mut st, &Event::Start, 1).unwrap();
        let (_, failed) = ended(child_of(&st, 0, 1), RunStatus::Failed, 0.05).report_to_parent().unwrap();
        p.apply(&mut st, &failed, 2).unwrap();
        assert_eq!(st.tasks[0].units[0].status, TaskStatus::RetryWait);
        assert!(st.tasks[0].units[0].error.as_deref().unwrap().contains("it broke"));
        let due = Event::RetryDue { task: 0, item: Some(0), attempt: 1 };
        let cmds = p.apply(&mut st, &due, 10_000).unwrap();
        assert!(cmds.contains(&Command::Execute { task: 0, item: Some(0), attempt: 2 }), "{cmds:?}");
        // A child failed by a task that failed for good is not worth retrying; one whose task
        // ran out of retries on transient errors is.
        let mut refused = ended(child_of(&st, 0, 2), RunStatus::Failed, 0.0);
        refused.tasks[0].units.push(crate::engine::Unit::new(None));
        refused.tasks[0].units[0].status = TaskStatus::Failed;
        let retryable = |c: &RunState| match c.report_to_parent() {
            Some((_, Event::AttemptFinished { result: AttemptResult::Failed { retryable, .. }, .. })) => retryable,
            other => panic!("{other:?}"),
        };
        assert!(!retryable(&refused));
        refused.tasks[0].units[0].transient = true;
        assert!(retryable(&refused));
        refused.status = RunStatus::TimedOut;
        refused.tasks[0].units[0].transient = false;
        assert!(retryable(&refused), "a time-out is");
        let (_, cancelled) = ended(child_of(&st, 0, 2), RunStatus::Cancelled, 0.0).report_to_parent().unwrap();
        p.apply(&mut st, &cancelled, 10_001).unwrap();
        assert_eq!(st.tasks[0].units[0].status, TaskStatus::Failed, "a cancelled child is not retried");
    }

    #[test]
    fn cancelling_the_parent_cancels_its_running_children() {
        let p = plan();
        let mut st = p.new_run("run-1796642779881-e0626f2708e5b78d29036330", Map::new());
        p.apply(&mut st, &Event::Start, 1).unwrap();
        let (_, done) = ended(child_of(&st, 1, 1), RunStatus::Succeeded, 0.0).report_to_parent().unwrap();
        p.apply(&mut st, &done, 2).unwrap();
        let cmds = p.apply(&mut st, &Event::Cancel, 3).unwrap();
        let cancels: Vec<_> = cmds
            .iter()
            .filter_map(|c| if let Command::CancelRun { run_id } = c { Some(run_id.clone()) } else { None })
            .collect();
        assert_eq!(cancels, vec![child_run_id(&st.run_id, "kids", Some(0), 1)], "only the one still running");
        // Its end still reports what it spent, once, to the ended parent.
        let (_, late) = ended(child_of(&st, 0, 1), RunStatus::Cancelled, 0.03).report_to_parent().unwrap();
        p.apply(&mut st, &late, 4).unwrap();
        assert!((st.cost_usd - 0.03).abs() < 1e-9);
    }

    #[test]
    fn a_child_spends_within_the_tighter_of_its_budget_and_its_parents_hold() {
        let p = plan();
        let parent = p.new_run("run-1", Map::new());
        let child = child_of(&parent, 0, 1);
        assert_eq!(p.budget_of(&child), Some(Budget { max_cost_usd: Some(0.25), max_tokens: None }));
        assert_eq!(child.depth(), 1);
        assert!(ended(child_of(&parent, 0, 1), RunStatus::Running, 0.0).report_to_parent().is_none(), "not ended");
    }
}
