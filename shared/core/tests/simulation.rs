//! Deterministic simulation of the engine under the failures queues and workers really have.
//!
//! A seeded scheduler plays several workers sharing one compare-and-set store and one
//! at-least-once queue. It delivers messages in random order, delivers some twice, lets
//! workers race (another delivery runs between a worker's read and its write), and crashes
//! workers before the write, after the write but before sending the resulting commands, and
//! after sending but before acknowledging. Over many seeds it checks that:
//! - every task reaches a terminal state exactly once (no terminal state is ever rewritten),
//!   and every attempt's result is applied exactly once;
//! - the run always finishes, with the same statuses and outputs as a fault-free run;
//! - no attempt is started once the run has ended.
//!
//! A failing seed is printed; replay it with `SIM_SEED=<seed> cargo test -p llmo-core --test simulation`.

use llmo_core::engine::*;
use llmo_core::source::SourceFile;
use llmo_core::validate::Validator;
use serde_json::{Value, json};

const WORKFLOW: &str = r#"
apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: sim }
spec:
  inputs: { xs: { type: array, default: [1, 2, 3, 4, 5] } }
  concurrency: { max_parallel: 3 }
  defaults: { retry: { max_attempts: 5, backoff: { initial: 100ms, max: 1s } } }
  tasks:
    - { id: a, type: transform, with: { output: a } }
    - { id: b, type: transform, depends_on: [a], for_each: inputs.xs, max_concurrency: 2, with: { output: "{{ item }}" } }
    - { id: c, type: transform, depends_on: [a], when: "inputs.xs | length > 10", with: { output: c } }
    - { id: d, type: transform, depends_on: [b, c], trigger: none_failed, on_failure: { fallback: e }, with: { output: d } }
    - { id: e, type: transform, depends_on: [a], with: { output: e } }
    - { id: f, type: transform, depends_on: [d], with: { output: "{{ tasks.d.output }}" } }
    - { id: g, type: transform, depends_on: [a], on_failure: continue, with: { output: g } }
    - { id: h, type: transform, depends_on: [f, g], trigger: all_done, with: { output: "{{ tasks.g.status }}" } }
  outputs:
    b: "{{ tasks.b.output }}"
    f: "{{ tasks.f.output }}"
    h: "{{ tasks.h.output }}"
"#;

fn plan() -> Plan {
    let outcome = Validator::default().validate(&SourceFile::new("sim.yaml", WORKFLOW));
    Plan::new(outcome.checked.expect("the simulation workflow is valid"))
}

/// splitmix64: small, seedable, good enough for scheduling choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

#[derive(Clone, Debug)]
enum Msg {
    Event(Event),
    Execute { task: usize, item: Option<u32>, attempt: u32 },
    Due { at: Millis, event: Event },
}

struct Faults {
    reorder: bool,
    duplicate: f64,
    race: f64,
    crash_before_write: f64,
    crash_before_send: f64,
    crash_before_ack: f64,
}

const NONE: Faults = Faults {
    reorder: false,
    duplicate: 0.0,
    race: 0.0,
    crash_before_write: 0.0,
    crash_before_send: 0.0,
    crash_before_ack: 0.0,
};
const MANY: Faults = Faults {
    reorder: true,
    duplicate: 0.15,
    race: 0.2,
    crash_before_write: 0.05,
    crash_before_send: 0.05,
    crash_before_ack: 0.05,
};

struct Sim<'p> {
    plan: &'p Plan,
    rng: Rng,
    faults: &'p Faults,
    store: RunState,
    /// (message id, message): an at-least-once queue.
    queue: Vec<(u64, Msg)>,
    next_id: u64,
    now: Millis,
    /// Terminal states written per task, in order.
    terminal_writes: Vec<Vec<TaskStatus>>,
    /// `Execute` commands issued while the stored run had ended.
    executed_after_end: usize,
    /// Events whose transition was stored; an attempt's result must be applied once.
    applied: std::collections::HashSet<String>,
    applied_twice: Vec<String>,
    steps: usize,
}

impl<'p> Sim<'p> {
    fn new(plan: &'p Plan, seed: u64, faults: &'p Faults) -> Self {
        let store = plan.new_run(format!("run-{seed}"), json!({"xs": [1, 2, 3, 4, 5]}).as_object().cloned().unwrap());
        let n = plan.task_count();
        Sim {
            plan,
            rng: Rng(seed),
            faults,
            store,
            queue: vec![(0, Msg::Event(Event::Start))],
            next_id: 1,
            now: 0,
            terminal_writes: vec![Vec::new(); n],
            executed_after_end: 0,
            applied: Default::default(),
            applied_twice: Vec::new(),
            steps: 0,
        }
    }

    /// The executor: deterministic output per (task, item); early attempts sometimes fail
    /// with a retryable error; `d` and `g` always fail for good.
    fn execute(&mut self, task: usize, item: Option<u32>, attempt: u32) -> AttemptResult {
        let id = self.plan.checked.dag.id(task).to_string();
        if id == "d" || id == "g" {
            return AttemptResult::Failed {
                error: format!("{id} is broken"),
                retryable: false,
                usage: Usage::default(),
            };
        }
        if attempt <= 2 && self.rng.chance(0.25) {
            return AttemptResult::Failed { error: "503".into(), retryable: true, usage: Usage::default() };
        }
        let with = self.plan.render_with(&self.store, task, item).expect("renders");
        AttemptResult::Succeeded { output: with["output"].clone().into(), usage: Usage { tokens: 10, cost_usd: 0.0 } }
    }

    /// Compare-and-set write; records terminal transitions.
    fn write(&mut self, read_version: u64, new: RunState) -> bool {
        if self.store.version != read_version {
            return false;
        }
        for (i, (old, new_t)) in self.store.tasks.iter().zip(&new.tasks).enumerate() {
            if old.status.is_terminal() {
                assert_eq!(old.status, new_t.status, "terminal state of task {i} rewritten");
            } else if new_t.status.is_terminal() {
                self.terminal_writes[i].push(new_t.status);
            }
        }
        self.store = new;
        true
    }

    fn push(&mut self, m: Msg) {
        self.queue.push((self.next_id, m));
        self.next_id += 1;
    }

    fn send(&mut self, cmds: Vec<Command>) {
        for c in cmds {
            if self.store.status.is_terminal() && matches!(c, Command::Execute { .. }) {
                self.executed_after_end += 1;
            }
            match c {
                Command::Execute { task, item, attempt } => self.push(Msg::Execute { task, item, attempt }),
                Command::ScheduleRetry { task, item, attempt, at } => {
                    self.push(Msg::Due { at, event: Event::RetryDue { task, item, attempt } })
                }
                Command::ScheduleWake { task, item, attempt, at } => {
                    self.push(Msg::Due { at, event: Event::WakeDue { task, item, attempt } })
                }
                Command::CancelRunning { .. }
                | Command::Finished { .. }
                | Command::Await { .. }
                | Command::CancelRun { .. } => {}
            }
        }
    }

    /// One delivery of message `id`.
    fn deliver(&mut self, id: u64, depth: u32) {
        let Some(msg) = self.queue.iter().find(|(i, _)| *i == id).map(|(_, m)| m.clone()) else { return };
        if self.rng.chance(self.faults.duplicate) {
            self.push(msg.clone());
        }
        let event = match msg {
            Msg::Event(e) | Msg::Due { event: e, .. } => e,
            Msg::Execute { task, item, attempt } => {
                // A worker only runs an attempt the stored state says is running. If the
                // attempt already finished, its first worker may have died before sending
                // what followed: send that again.
                let unit = &self.store.tasks[task].units[item.unwrap_or(0) as usize];
                if self.store.status.is_terminal() || unit.status != TaskStatus::Running || unit.attempt != attempt {
                    let again = self.plan.replay(&self.store, &finished_key(task, item, attempt));
                    self.send(again);
                    self.ack(id);
                    return;
                }
                let result = self.execute(task, item, attempt);
                Event::finished(task, item, attempt, result)
            }
        };
        loop {
            let mut state = self.store.clone();
            let read_version = state.version;
            let outcome = self.plan.apply(&mut state, &event, self.now);
            // Another worker may act between our read and our write.
            if depth == 0
                && self.rng.chance(self.faults.race)
                && let Some(other) = self.pick()
                && other != id
            {
                self.deliver(other, depth + 1);
            }
            if self.rng.chance(self.faults.crash_before_write) {
                return; // the message stays; it is redelivered later
            }
            match outcome {
                Ok(cmds) => {
                    if !self.write(read_version, state) {
                        continue; // lost the race: read again and re-apply
                    }
                    if !matches!(event, Event::Tick | Event::Cancel) && !self.applied.insert(event.key()) {
                        self.applied_twice.push(event.key());
                    }
                    if self.rng.chance(self.faults.crash_before_send) {
                        return; // written, commands never sent; redelivery must recover them
                    }
                    self.send(cmds);
                }
                Err(_) => {
                    let again = self.plan.replay(&self.store, &event.key());
                    self.send(again);
                }
            }
            break;
        }
        if self.rng.chance(self.faults.crash_before_ack) {
            return;
        }
        self.ack(id);
    }

    fn ack(&mut self, id: u64) {
        self.queue.retain(|(i, _)| *i != id);
    }

    /// A deliverable message: random when reordering, else the oldest; timers only once due.
    fn pick(&mut self) -> Option<u64> {
        let ready: Vec<u64> = self
            .queue
            .iter()
            .filter(|(_, m)| !matches!(m, Msg::Due { at, .. } if *at > self.now))
            .map(|(i, _)| *i)
            .collect();
        if ready.is_empty() {
            return None;
        }
        Some(if self.faults.reorder { ready[self.rng.below(ready.len())] } else { ready[0] })
    }

    fn run(&mut self) {
        while !self.queue.is_empty() {
            self.steps += 1;
            assert!(self.steps < 20_000, "run did not finish");
            match self.pick() {
                Some(i) => self.deliver(i, 0),
                None => {
                    // Only timers left: move the clock to the earliest.
                    let next = self
                        .queue
                        .iter()
                        .filter_map(|(_, m)| if let Msg::Due { at, .. } = m { Some(*at) } else { None })
                        .min()
                        .expect("only timers are left");
                    self.now = next;
                }
            }
            self.now += 1;
        }
    }
}

fn summary(st: &RunState) -> (RunStatus, Vec<TaskStatus>, Option<Value>) {
    (st.status, st.tasks.iter().map(|t| t.status).collect(), st.outputs.clone())
}

fn check_seed(plan: &Plan, seed: u64, expected: &(RunStatus, Vec<TaskStatus>, Option<Value>)) -> Result<(), String> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut sim = Sim::new(plan, seed, &MANY);
        sim.run();
        (summary(&sim.store), sim.terminal_writes.clone(), sim.executed_after_end, sim.applied_twice.clone())
    }));
    let (got, writes, after_end, twice) = result.map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })?;
    if &got != expected {
        return Err(format!("outcome differs from the fault-free run: {got:?} vs {expected:?}"));
    }
    for (i, w) in writes.iter().enumerate() {
        if w.len() != 1 {
            return Err(format!("task {i} reached a terminal state {} times: {w:?}", w.len()));
        }
    }
    if !twice.is_empty() {
        return Err(format!("events applied twice: {twice:?}"));
    }
    if after_end > 0 {
        return Err(format!("{after_end} attempts were started after the run ended"));
    }
    Ok(())
}

#[test]
fn faults_never_change_the_outcome() {
    let plan = plan();
    let mut clean = Sim::new(&plan, 1, &NONE);
    clean.run();
    let expected = summary(&clean.store);
    assert_eq!(expected.0, RunStatus::Succeeded, "{:?}", clean.store.error);
    assert_eq!(
        expected.2,
        Some(json!({"b": [1, 2, 3, 4, 5], "f": "e", "h": "failed"})),
        "fallback e stands in for d; g failed but continued"
    );
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SEED is a number")],
        Err(_) => (0..std::env::var("SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000)).collect(),
    };
    let mut failures = Vec::new();
    for &seed in &seeds {
        if let Err(e) = check_seed(&plan, seed, &expected) {
            failures.push(format!("seed {seed}: {e}"));
            if failures.len() >= 5 {
                break;
            }
        }
    }
    assert!(failures.is_empty(), "failing seeds (replay with SIM_SEED=<seed>):\n{}", failures.join("\n"));
}
