//! Reading a run for a client (the API's `GET /runs/{id}`, answers, redrives, reruns) at a
//! bounded cost.
//!
//! A run is read by replaying its log from the last snapshot, and replaying a transition
//! costs what its templates cost to render. Writers snapshot after dear stretches
//! ([`crate::store::SNAPSHOT_AFTER`]), so a read normally replays little; but a writer can die
//! before its snapshot, and one tenant's run should never hold the API's threads or its
//! reserved concurrency for everyone. So a read:
//!
//! 1. replays off the async threads (`spawn_blocking`) for at most [`Reads::slice`]; most
//!    reads end here;
//! 2. when its log's transitions took their writers [`Reads::slice`] or more to apply (each
//!    records it: [`Transition::took_ms`]), or it ran past the slice, it is *expensive*: it takes one of [`Reads::per_tenant`] places of its tenant
//!    (fleet-wide, on the [`Flow`]'s concurrency keys; refused: [`ReadError::Busy`], the API's
//!    429) and replays on for at most [`Reads::deadline`];
//! 3. whatever it reached is stored as a snapshot, so its work is never paid for again: a read
//!    that ran out of time ([`ReadError::Slow`], the API's 503) leaves the next one less to do.
//!
//! The deadline is checked between transitions; one transition is never interrupted (its
//! cost is bounded by fuel per template times the units it starts).

use std::sync::Arc;
use std::time::{Duration, Instant};

use llmo_core::engine::{Plan, RunState};

use crate::flow::Flow;
use crate::store::{self, Rebuilt, RunStore, StoredRun, Transition};

/// How reads replay: see the module's documentation.
#[derive(Clone)]
pub struct Reads {
    /// Where the tenants' places are kept (the deployment's shared flow control).
    pub flow: Arc<dyn Flow>,
    /// Expensive reads one tenant may have in progress at once, across the fleet.
    pub per_tenant: u32,
    /// A read that replays within this needs no place.
    pub slice: Duration,
    /// The longest an expensive read replays before it answers [`ReadError::Slow`].
    pub deadline: Duration,
}

/// Expensive reads per tenant at once (the deployed API has 10 reserved executions).
pub const PER_TENANT: u32 = 2;

/// Why a read gave no state.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The tenant's places for expensive reads are taken: try again after `retry_after`.
    #[error(
        "too many expensive reads of this tenant's runs are in progress (at most {limit} at once); try again in {}s",
        retry_after.as_secs().max(1)
    )]
    Busy { limit: u32, retry_after: Duration },
    /// The replay ran out of time at version `reached` of `version`; its progress was kept,
    /// so the same read again goes further.
    #[error(
        "replaying this run's log took longer than {}s (version {reached} of {version} reached and kept): try again",
        deadline.as_secs()
    )]
    Slow { reached: u64, version: u64, deadline: Duration },
    #[error(transparent)]
    Store(#[from] store::Error),
}

impl Reads {
    /// The defaults: [`PER_TENANT`] places, a 250 ms slice, a 10 s deadline (within the
    /// deployed API's 29 s timeout).
    pub fn new(flow: Arc<dyn Flow>) -> Self {
        Reads { flow, per_tenant: PER_TENANT, slice: Duration::from_millis(250), deadline: Duration::from_secs(10) }
    }

    /// The current state of `stored` (a run of `tenant`, `""` for none), replayed with
    /// `plan` at a bounded cost; a replay that took [`store::SNAPSHOT_AFTER`] or more leaves a
    /// snapshot in `store`.
    pub async fn state(
        &self,
        store: &dyn RunStore,
        tenant: &str,
        plan: Arc<Plan>,
        stored: StoredRun,
    ) -> Result<RunState, ReadError> {
        let version = stored.tail.last().map_or(stored.snapshot.version, |t| t.version);
        // What the writers took to apply the tail: a read knows it is expensive before it
        // replays (one transition that starts a thousand units may take seconds).
        let recorded = Duration::from_millis(stored.tail.iter().map(|t| t.took_ms).sum());
        let (st, rest) = if recorded < self.slice {
            let started = Instant::now();
            match replay(plan.clone(), stored.snapshot, stored.tail, self.slice).await? {
                Rebuilt::Done(st) => {
                    if started.elapsed() >= store::SNAPSHOT_AFTER {
                        keep(store, &st).await;
                    }
                    return Ok(st);
                }
                // Dearer than recorded (transitions from before costs were recorded).
                Rebuilt::Stopped { state, rest } => (state, rest),
            }
        } else {
            (stored.snapshot, stored.tail)
        };
        crate::meter::expensive_read();
        let key = format!("reads#{tenant}");
        let expires = crate::ports::now_ms() + (self.deadline + Duration::from_secs(30)).as_millis() as u64;
        let holder = format!("{}@{expires}", crate::start::new_run_id());
        if !self.enter(&key, &holder).await? {
            keep(store, &st).await;
            return Err(ReadError::Busy { limit: self.per_tenant, retry_after: Duration::from_secs(1) });
        }
        let r = replay(plan, st, rest, self.deadline).await;
        self.flow.leave(&key, &holder).await;
        match r? {
            Rebuilt::Done(st) => {
                keep(store, &st).await;
                Ok(st)
            }
            Rebuilt::Stopped { state, .. } => {
                keep(store, &state).await;
                Err(ReadError::Slow { reached: state.version, version, deadline: self.deadline })
            }
        }
    }

    /// Takes a place on `key`; places whose holder's time is up (a read that died holding
    /// one: a holder is `ID@EXPIRES_MS`) are cleared once on the way.
    async fn enter(&self, key: &str, holder: &str) -> Result<bool, ReadError> {
        for _ in 0..2 {
            match self.flow.enter(key, holder, self.per_tenant, 0).await {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(e) => return Err(store::Error::Other(format!("expensive reads are not admitted: {e}")).into()),
            }
            let now = crate::ports::now_ms();
            let mut cleared = false;
            for h in self.flow.holders(key).await {
                let expired = h.rsplit_once('@').and_then(|(_, at)| at.parse::<u64>().ok()).is_none_or(|at| at < now);
                if expired {
                    self.flow.leave(key, &h).await;
                    cleared = true;
                }
            }
            if !cleared {
                return Ok(false);
            }
        }
        Ok(false)
    }
}

/// [`store::rebuild_until`] on a blocking thread, for at most `budget`.
async fn replay(plan: Arc<Plan>, st: RunState, tail: Vec<Transition>, budget: Duration) -> Result<Rebuilt, ReadError> {
    tokio::task::spawn_blocking(move || store::rebuild_until(&plan, st, tail, Some(Instant::now() + budget)))
        .await
        .map_err(|e| store::Error::Other(format!("replay: {e}")))?
        .map_err(ReadError::from)
}

/// Stores a replayed state as a snapshot (best effort: the read answers either way).
async fn keep(store: &dyn RunStore, st: &RunState) {
    if let Err(e) = store.snapshot(st).await {
        tracing::warn!(run = %st.run_id, version = st.version, error = %e, "replayed state not kept as a snapshot");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Local;
    use crate::store::MemoryStore;
    use llmo_core::engine::{Event, Millis};

    const WF: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: reads }
spec:
  inputs: { items: { type: array, default: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39] } }
  tasks:
    - id: hold
      type: wait
      for_each: inputs.items
      with:
        approval:
          prompt: "{% for i in range(300) %}{{ item }}-{{ i }} {% endfor %}"
"#;

    /// A run whose one transition (Start: 40 approvals, each a 300-step loop to render) is
    /// dear to replay, stored as a log without a snapshot (a writer that died before it).
    async fn stored(store: &MemoryStore, id: &str, tenant: &str) -> (Arc<Plan>, StoredRun) {
        let outcome = llmo_core::validate::Validator::shared()
            .validate(&llmo_core::source::SourceFile::new("r.yaml".to_string(), WF.to_string()));
        let plan = Arc::new(Plan::new(outcome.checked.expect("valid")));
        let inputs = llmo_core::inputs::resolve_inputs(&plan.checked.workflow.spec.inputs, &serde_json::Map::new())
            .expect("inputs");
        let mut st = plan.new_run(id, inputs);
        st.tenant = Some(tenant.to_string());
        store.create("reads", "r.yaml", WF, &st).await.unwrap();
        let expected = st.version;
        let mut head = st.clone();
        let mut log = Vec::new();
        let at: Millis = 1_000;
        // A second, cheap transition: a read that runs out of time after the first stops.
        for e in [Event::Start, Event::Cancel] {
            let one = Instant::now();
            plan.apply(&mut head, &e, at).unwrap();
            log.push(Transition::new(head.version, at, e).took(one.elapsed()));
        }
        assert!(store.append(expected, &log, &head).await.unwrap());
        (plan, store.load(id).await.unwrap().unwrap())
    }

    fn reads(flow: Arc<Local>, slice: Duration, deadline: Duration) -> Reads {
        Reads { flow, per_tenant: 1, slice, deadline }
    }

    #[tokio::test]
    async fn a_read_that_replays_past_its_slice_keeps_its_work_as_a_snapshot() {
        let store = MemoryStore::default();
        let (plan, run) = stored(&store, "r1", "t1").await;
        assert_eq!(run.tail.len(), 2, "the dear transition is in the log, not in a snapshot");
        let r = reads(Arc::new(Local::default()), Duration::ZERO, Duration::from_secs(60));
        let st = r.state(&store, "t1", plan.clone(), run).await.unwrap();
        assert_eq!(st.version, 2);
        // Every later read starts from the state this one reached: nothing to replay.
        let again = store.load("r1").await.unwrap().unwrap();
        assert!(again.tail.is_empty(), "the expensive read left a snapshot at version {}", again.snapshot.version);
        assert_eq!(again.snapshot.version, 2);
    }

    #[tokio::test]
    async fn expensive_reads_of_one_tenant_wait_for_a_place_and_other_tenants_do_not() {
        let store = MemoryStore::default();
        let flow = Arc::new(Local::default());
        let (plan, run) = stored(&store, "r1", "t1").await;
        let (_, other) = stored(&store, "r2", "t2").await;
        // t1's only place is held by a read in progress (its time is not up).
        let holder = format!("someone@{}", crate::ports::now_ms() + 60_000);
        assert!(flow.enter("reads#t1", &holder, 1, 0).await.unwrap());
        let r = reads(flow.clone(), Duration::ZERO, Duration::from_secs(60));
        match r.state(&store, "t1", plan.clone(), run.clone()).await {
            Err(ReadError::Busy { limit: 1, .. }) => {}
            other => panic!("expected Busy, got {other:?}"),
        }
        // Another tenant's expensive read has places of its own.
        assert_eq!(r.state(&store, "t2", plan.clone(), other).await.unwrap().version, 2);
        // A place whose holder's time is up is taken over.
        flow.leave("reads#t1", &holder).await;
        assert!(flow.enter("reads#t1", "dead@1", 1, 0).await.unwrap());
        assert_eq!(r.state(&store, "t1", plan, run).await.unwrap().version, 2);
        assert!(flow.holders("reads#t1").await.is_empty(), "the read left its place");
    }

    #[test]
    fn a_rebuild_stops_between_transitions_at_its_deadline_and_goes_on_from_there() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let store = MemoryStore::default();
        let (plan, run) = rt.block_on(stored(&store, "r1", "t1"));
        let log = run.tail.clone();
        let past = Some(Instant::now() - Duration::from_secs(1));
        let Rebuilt::Stopped { state, rest } =
            store::rebuild_until(&plan, run.snapshot.clone(), log.clone(), past).unwrap()
        else {
            panic!("a deadline already passed stops after the first transition");
        };
        assert_eq!((state.version, rest.len()), (1, log.len() - 1));
        let Rebuilt::Done(done) = store::rebuild_until(&plan, state, rest, None).unwrap() else { unreachable!() };
        assert_eq!(done, store::rebuild(&plan, StoredRun::tail_only(run.snapshot, log)).unwrap());
    }
}
