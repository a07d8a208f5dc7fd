//! Concurrency keys: a run's (`spec.concurrency.key`) and a task's, as stored (scoped by
//! tenant, workflow and task; long keys by their hash), who holds one, and in what rank.

use llmo_core::engine::{AttemptId, Millis, Plan, RunState};
use sha2::{Digest, Sha256};

/// How long a run or attempt that found its concurrency key full waits before trying again
/// (plus up to another second, drawn per holder, so waiters do not all come back together).
pub const KEY_RETRY_MS: Millis = 1_000;

/// The run's concurrency key, scoped by tenant and workflow, and its limit. A key that does
/// not render is no key (logged): the run is not held back by a template error.
pub fn run_key_of(plan: &Plan, st: &RunState) -> Option<(String, u32)> {
    let (key, limit) = plan.run_key(st)?;
    match key {
        Ok(k) => Some((
            format!(
                "run#{}#{}#{}",
                st.tenant.as_deref().unwrap_or("-"),
                plan.checked.workflow.metadata.name,
                bounded_key(k)
            ),
            limit,
        )),
        Err(e) => {
            tracing::warn!(run = %st.run_id, error = %e, "the run's concurrency key does not render; not applied");
            None
        }
    }
}

/// A task's concurrency key for an attempt (rendered in its context), scoped by tenant,
/// workflow and task, and its limit.
pub fn task_key_of(plan: &Plan, st: &RunState, id: AttemptId, ctx: &llmo_core::engine::Ctx) -> Option<(String, u32)> {
    let (key, limit) = plan.task_key(id.task, ctx)?;
    let task = &plan.checked.workflow.spec.tasks[id.task].id;
    match key {
        Ok(k) => Some((
            format!(
                "task#{}#{}#{task}#{}",
                st.tenant.as_deref().unwrap_or("-"),
                plan.checked.workflow.metadata.name,
                bounded_key(k)
            ),
            limit,
        )),
        Err(e) => {
            tracing::warn!(run = %st.run_id, task = %task, error = %e, "the task's concurrency key does not render; not applied");
            None
        }
    }
}

/// A rendered key as stored: as it is up to 200 bytes, else its SHA-256 (a template may render
/// megabytes; DynamoDB's partition keys hold at most 2,048 bytes).
fn bounded_key(k: String) -> String {
    if k.len() <= 200 {
        return k;
    }
    let hash: String = Sha256::digest(k.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hash}")
}

/// A run's precedence for concurrency keys (its `spec.priority`).
pub fn rank_of(plan: &Plan) -> u8 {
    plan.checked.workflow.spec.priority.unwrap_or_default().rank()
}

/// How an attempt holds a key: `run/task/item/attempt` (`-` for no item).
pub fn attempt_holder(run_id: &str, id: AttemptId) -> String {
    let item = id.item.map_or("-".to_string(), |i| i.to_string());
    format!("{run_id}/{}/{item}/{}", id.task, id.attempt)
}

#[cfg(test)]
mod key_tests {
    #[test]
    fn long_keys_are_stored_as_their_hash() {
        assert_eq!(super::bounded_key("acme".into()), "acme");
        let long = super::bounded_key("x".repeat(5_000_000));
        assert!(long.starts_with("sha256:") && long.len() == 71, "{long}");
        assert_ne!(long, super::bounded_key("y".repeat(5_000_000)));
    }

    /// A task's key is bounded like a run's: a long rendered key fits DynamoDB's key limit
    /// instead of failing the write (which let the attempt through unchecked).
    #[test]
    fn a_long_task_key_is_stored_as_its_hash() {
        use llmo_core::engine::{AttemptId, Plan};
        let wf = "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: w }\nspec:\n  inputs: { k: { type: string } }\n  tasks:\n    - { id: a, type: transform, concurrency: { key: \"{{ inputs.k }}\", limit: 1 }, with: { output: 1 } }\n";
        let checked = llmo_core::validate::Validator::default()
            .validate(&llmo_core::source::SourceFile::new("w.yaml", wf))
            .checked
            .unwrap();
        let plan = Plan::new(checked);
        let inputs = serde_json::json!({ "k": "x".repeat(100_000) });
        let st = plan.new_run("r", inputs.as_object().unwrap().clone());
        let ctx = plan.context_value(&st, Some(0), None);
        let (key, limit) = super::task_key_of(&plan, &st, AttemptId { task: 0, item: None, attempt: 1 }, &ctx).unwrap();
        assert_eq!(limit, 1);
        assert!(key.starts_with("task#-#w#a#sha256:") && key.len() < 300, "{}", &key[..80]);
    }
}
