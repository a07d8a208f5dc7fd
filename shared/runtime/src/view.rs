//! A run as people read it: `GET /runs/{id}` and the run page (served by the API and by
//! `llmo run --ui`) show this JSON. Values over [`VALUE_BYTES`] are replaced by a `truncated`
//! marker so that no answer grows with what a task produced.

use llmo_core::dag::EdgeKind;
use llmo_core::engine::{Plan, RunState};
use serde_json::{Value, json};

/// Largest output (of a task or the run) returned whole; larger ones come back as a marker.
pub const VALUE_BYTES: usize = 256 * 1024;

/// `v`, or the marker that stands for it when it is over [`VALUE_BYTES`].
pub fn bounded(v: Option<&Value>) -> Value {
    let Some(v) = v else { return Value::Null };
    let size = llmo_core::engine::limits::json_size(v, VALUE_BYTES);
    if size > VALUE_BYTES {
        json!({"truncated": true, "bytes": serde_json::to_string(v).map_or(size, |s| s.len()), "limit": VALUE_BYTES})
    } else {
        v.clone()
    }
}

/// The run: status, times, cost, outputs, and per task its state, attempts, times, cost,
/// error and output, with what the run page draws the DAG from (`type`, `needs`, `fallback_for`,
/// `level`: 0 for tasks without dependencies, else one more than the deepest).
pub fn run(plan: &Plan, workflow: &str, st: &RunState) -> Value {
    let spec = &plan.checked.workflow.spec;
    let dag = &plan.checked.dag;
    let tasks: Vec<Value> = st
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut needs = Vec::new();
            let mut fallback_for = Vec::new();
            for (p, kind) in dag.parents(i) {
                match kind {
                    EdgeKind::Fallback => fallback_for.push(dag.id(p)),
                    EdgeKind::DependsOn => needs.push(dag.id(p)),
                }
            }
            let items = spec.tasks[i].for_each.is_some().then_some(t.units.len());
            let children =
                (spec.tasks[i].ty == llmo_core::child::WORKFLOW).then(|| children(st, i, dag.id(i), items.is_some()));
            // An agent's turns and calls, live (of its first item, for a `for_each` of agents).
            let turns = t.units.first().and_then(|u| u.agent.as_deref()).map(|l| bounded(Some(&l.timeline())));
            json!({
                "id": dag.id(i),
                "type": spec.tasks[i].ty,
                "needs": needs,
                "fallback_for": fallback_for,
                "level": dag.level(i),
                "status": t.status.as_str(),
                "attempts": t.attempts,
                "items": items,
                "started_at": t.started_at,
                "ended_at": t.ended_at,
                "output": bounded(t.output.as_deref()),
                "error": t.error,
                "reason": t.reason,
                "cost_usd": t.cost_usd,
                "tokens": t.tokens,
                "children": children,
                "turns": turns,
            })
        })
        .collect();
    json!({
        "run_id": st.run_id, "workflow": workflow, "status": st.status.as_str(), "version": st.version,
        "inputs": st.inputs,
        "started_at": st.started_at, "ended_at": st.ended_at, "cost_usd": st.cost_usd, "tokens": st.tokens,
        "outputs": bounded(st.outputs.as_ref()), "error": st.error, "tasks": tasks,
        "rerun_of": st.rerun_of,
        "parent": st.parent,
    })
}

/// The most children listed per task (a wide `for_each` lists its first ones and a count).
pub const MAX_CHILDREN_LISTED: usize = 1000;

/// The child runs task `i` (a `workflow` task) started: one per attempt of each unit, the
/// last one's status the unit's (earlier ones were retried).
fn children(st: &RunState, i: usize, task_id: &str, for_each: bool) -> Value {
    let units = &st.tasks[i].units;
    let mut listed = Vec::new();
    let mut total = 0usize;
    for (k, u) in units.iter().enumerate() {
        let item = for_each.then_some(k as u32);
        for attempt in (u.base + 1)..=u.attempt {
            total += 1;
            if listed.len() < MAX_CHILDREN_LISTED {
                let status = if attempt == u.attempt { u.status.as_str() } else { "retried" };
                listed.push(json!({
                    "run_id": llmo_core::child::child_run_id(&st.run_id, task_id, item, attempt),
                    "item": item,
                    "attempt": attempt,
                    "status": status,
                }));
            }
        }
    }
    json!({ "runs": listed, "total": total })
}
