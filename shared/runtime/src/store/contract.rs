//! What every run store and workflow store must do, as checks any adapter's tests call:
//! memory and SQLite here, DynamoDB in `llmo-aws` against the local stack. (The `contract`
//! feature; panics on a violation.)

use llmo_core::engine::{AttemptResult, Event, Plan, RunState, RunStatus, Usage};
use llmo_core::source::SourceFile;
use llmo_core::validate::Validator;
use serde_json::{Map, json};

use super::{Error, RunStore, Transition, rebuild};
use crate::workflows::Workflows;

const WF: &str = "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: w }\nspec:\n  tasks:\n    - { id: a, type: transform, with: { output: 1 } }\n    - { id: b, type: transform, depends_on: [a], with: { output: 2 } }\n";

fn plan() -> Plan {
    Plan::new(Validator::default().validate(&SourceFile::new("w.yaml", WF)).checked.expect("valid"))
}

fn done(task: usize) -> Event {
    Event::finished(task, None, 1, AttemptResult::Succeeded { output: json!(task).into(), usage: Usage::default() })
}

/// Applies `events` to `st`, returning the transitions to store.
fn advance(plan: &Plan, st: &mut RunState, events: &[Event]) -> Vec<Transition> {
    events
        .iter()
        .map(|e| {
            plan.apply(st, e, 7).expect("applies");
            Transition::new(st.version, 7, e.clone())
        })
        .collect()
}

/// Create once, compare-and-set appends (exactly one of two from the same version), load =
/// snapshot + tail replaying to the same state, history, listing. Runs are named
/// `{prefix}a` and `{prefix}b` (a store shared with other tests: pick a fresh prefix).
pub async fn run_store(store: &dyn RunStore, prefix: &str) {
    let (a, b) = (format!("{prefix}a"), format!("{prefix}b"));
    let plan = plan();
    let mut st = plan.new_run(a.clone(), Map::new());
    store.create("w", "w.yaml", WF, &st).await.unwrap();
    assert!(matches!(store.create("w", "w.yaml", WF, &st).await, Err(Error::Exists(_))));
    let batch = advance(&plan, &mut st, &[Event::Start]);
    assert!(store.append(0, &batch, &st).await.unwrap(), "expected version matches");
    assert!(!store.append(0, &batch, &st).await.unwrap(), "a second append from version 0 loses");
    let mid = st.clone();
    let batch = advance(&plan, &mut st, &[done(0), done(1)]);
    assert!(store.append(1, &batch, &st).await.unwrap());
    assert_eq!(st.status, RunStatus::Succeeded);
    assert_eq!(store.version(&a).await.unwrap(), Some(3));

    let loaded = store.load(&a).await.unwrap().unwrap();
    assert_eq!(loaded.source, WF);
    assert_eq!(loaded.tail.len(), 3, "no snapshot yet: the whole log");
    assert_eq!(rebuild(&plan, loaded).unwrap(), st, "replaying the log gives the same state");
    store.snapshot(&mid).await.unwrap();
    let loaded = store.load(&a).await.unwrap().unwrap();
    assert!(loaded.tail.len() <= 3, "from the snapshot on, if the store keeps snapshots");
    assert_eq!(rebuild(&plan, loaded).unwrap(), st);
    assert_eq!(store.history(&a).await.unwrap().len(), 3);
    assert!(store.load(&format!("{prefix}nope")).await.unwrap().is_none());

    // The state it was created with, where the store keeps it, replays with the log.
    if let Some(initial) = store.initial_state(&a).await.unwrap() {
        let mut replayed = initial;
        for t in store.history(&a).await.unwrap() {
            plan.apply(&mut replayed, &t.event, t.at).unwrap();
        }
        assert_eq!(replayed.status, RunStatus::Succeeded);
    }

    // Keyed: the key and the run together; the key again stores nothing and names the run.
    let key = super::StartKey { id: format!("{prefix}key"), fingerprint: "f1".into() };
    let keyed = plan.new_run(format!("{prefix}k1"), Map::new());
    match store.create_keyed(Some(&key), "w", "w.yaml", WF, &keyed).await {
        Ok(super::Created::New) => {
            let again = plan.new_run(format!("{prefix}k2"), Map::new());
            let got = store.create_keyed(Some(&key), "w", "w.yaml", WF, &again).await.unwrap();
            assert_eq!(got, super::Created::Existing { run_id: format!("{prefix}k1"), fingerprint: "f1".into() });
            assert!(store.load(&format!("{prefix}k2")).await.unwrap().is_none(), "nothing stored");
        }
        Err(Error::Other(why)) => assert!(why.contains("does not keep idempotency keys"), "{why}"),
        other => panic!("{other:?}"),
    }

    store.create("w", "w.yaml", WF, &plan.new_run(b.clone(), Map::new())).await.unwrap();
    let list = store.list().await.unwrap();
    let listed = |id: &str| list.iter().find(|r| r.run_id == id).cloned();
    assert_eq!(listed(&a).expect("a listed").status, "succeeded");
    assert!(listed(&b).is_some(), "b listed");
}

/// Register, read, list and replace per tenant; another tenant sees none of it; a definition
/// of 600 KB (past DynamoDB's 400 KB item) is kept whole. `tenant` should be fresh.
pub async fn workflows(store: &dyn Workflows, tenant: &str) {
    let other = format!("{tenant}-other");
    assert_eq!(store.get(tenant, "w").await.unwrap(), None);
    store.put(tenant, "w", WF, 10).await.unwrap();
    store.put(tenant, "v", "v1", 11).await.unwrap();
    assert_eq!(store.get(tenant, "w").await.unwrap().as_deref(), Some(WF));
    assert_eq!(store.get(&other, "w").await.unwrap(), None, "tenants are apart");
    assert!(store.list(&other).await.unwrap().is_empty());
    store.put(tenant, "v", "v2", 12).await.unwrap();
    assert_eq!(store.get(tenant, "v").await.unwrap().as_deref(), Some("v2"), "a new registration replaces");
    let big = format!("{WF}# {}\n", "x".repeat(600 * 1024));
    store.put(tenant, "big", &big, 13).await.unwrap();
    assert_eq!(store.get(tenant, "big").await.unwrap().as_deref(), Some(big.as_str()));
    let names: Vec<(String, u64)> =
        store.list(tenant).await.unwrap().into_iter().map(|r| (r.name, r.registered_at)).collect();
    assert_eq!(names, vec![("big".into(), 13), ("v".into(), 12), ("w".into(), 10)], "by name");
}

/// Listings by tenant, workflow and status, newest first, paged without loss or repeat; a
/// cursor the index did not give is refused; a run's tenant; the runs since a time. Tenants
/// are `{prefix}t1` and `{prefix}t2` (pick a fresh prefix).
pub async fn run_index(store: &dyn RunStore, index: &dyn super::RunIndex, prefix: &str) {
    use super::ListFilter;
    let plan = plan();
    let (t1, t2) = (format!("{prefix}t1"), format!("{prefix}t2"));
    let base = 1_790_000_000_000u64;
    let mut ids = Vec::new();
    for i in 0..6u64 {
        let id = format!("run-{:013}-{prefix}{i}", base + i * 1000);
        let mut st = plan.new_run(id.clone(), Map::new());
        st.tenant = Some(if i == 5 { t2.clone() } else { t1.clone() });
        let workflow = if i % 2 == 0 { "w" } else { "v" };
        store.create(workflow, "w.yaml", WF, &st).await.unwrap();
        if i < 2 {
            let batch = advance(&plan, &mut st, &[Event::Start]);
            assert!(store.append(0, &batch, &st).await.unwrap());
        }
        ids.push(id);
    }
    let list = |workflow: Option<&str>, status: Option<&str>, limit: i32, cursor: Option<String>| ListFilter {
        tenant: t1.clone(),
        workflow: workflow.map(str::to_string),
        status: status.map(str::to_string),
        limit: Some(limit),
        cursor,
    };
    let names = |p: &super::Page| p.runs.iter().map(|r| r.run_id.clone()).collect::<Vec<_>>();
    let newest_first: Vec<String> = ids[..5].iter().rev().cloned().collect();
    assert_eq!(names(&index.list_page(&list(None, None, 50, None)).await.unwrap()), newest_first);
    let v = index.list_page(&list(Some("v"), None, 50, None)).await.unwrap();
    assert_eq!(names(&v), vec![ids[3].clone(), ids[1].clone()], "by workflow");
    let running = index.list_page(&list(None, Some("running"), 50, None)).await.unwrap();
    assert_eq!(names(&running), vec![ids[1].clone(), ids[0].clone()], "by status");
    // Pages of two: every run once, in order.
    let mut paged = Vec::new();
    let mut cursor = None;
    for _ in 0..5 {
        let p = index.list_page(&list(None, None, 2, cursor.clone())).await.unwrap();
        paged.extend(names(&p));
        cursor = p.next;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(paged, newest_first, "paged");
    assert!(matches!(index.list_page(&list(None, None, 2, Some("x".into()))).await, Err(Error::Invalid(_))));
    // A cursor belongs to its listing: another filter or tenant refuses it.
    let first = index.list_page(&list(None, None, 2, None)).await.unwrap().next.expect("a second page");
    let refused = |f: ListFilter| async move { matches!(index.list_page(&f).await, Err(Error::Invalid(_))) };
    assert!(refused(list(None, Some("running"), 2, Some(first.clone()))).await, "another filter");
    assert!(refused(ListFilter { tenant: t2.clone(), cursor: Some(first.clone()), ..Default::default() }).await);
    let other = ListFilter { tenant: t2.clone(), ..Default::default() };
    assert_eq!(names(&index.list_page(&other).await.unwrap()), vec![ids[5].clone()], "tenants are apart");
    assert_eq!(index.tenant_of(&ids[0]).await.unwrap().as_deref(), Some(t1.as_str()));
    assert_eq!(index.tenant_of(&format!("run-{:013}-{prefix}none", base)).await.unwrap(), None);
    let (since, more) = index.runs_since(&t1, base + 2000, 10).await.unwrap();
    assert_eq!(since.iter().map(|r| r.run_id.clone()).collect::<Vec<_>>(), newest_first[..3].to_vec());
    assert!(!more);
    let (since, more) = index.runs_since(&t1, base + 2000, 2).await.unwrap();
    assert_eq!(since.len(), 2);
    assert!(more, "one more than the limit");
}
