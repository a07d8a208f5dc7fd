//! Scenario tests of the transition function, driven by a tiny deterministic loop: commands
//! are executed in order by a closure standing in for the executors, retries jump a virtual
//! clock. Each test asserts on states and on the commands the machine asked for.

use std::collections::VecDeque;

use serde_json::{Value, json};

use super::*;
use crate::source::SourceFile;
use crate::validate::Validator;

/// A checked plan of a workflow whose `spec` is `yaml` (the engine's tests share it).
pub(super) fn plan(yaml: &str) -> Plan {
    let text = format!("apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: {{ name: t }}\n{yaml}");
    let outcome = Validator::default().validate(&SourceFile::new("t.yaml", text));
    let checked = outcome.checked.unwrap_or_else(|| panic!("{:#?}", outcome.report.records()));
    Plan::new(checked)
}

struct Driver<'p> {
    plan: &'p Plan,
    st: RunState,
    now: Millis,
    queue: VecDeque<Command>,
    retries: Vec<(Millis, Event)>,
    executed: Vec<(String, Option<u32>, u32)>,
}

impl<'p> Driver<'p> {
    fn new(plan: &'p Plan, inputs: Value) -> Self {
        let st = plan.new_run("run-1", inputs.as_object().cloned().unwrap_or_default());
        Driver { plan, st, now: 1_000, queue: VecDeque::new(), retries: Vec::new(), executed: Vec::new() }
    }

    fn apply(&mut self, e: Event) -> Result<(), Ignored> {
        let before = self.st.version;
        let cmds = self.plan.apply(&mut self.st, &e, self.now)?;
        assert_eq!(self.st.version, before + 1);
        self.queue.extend(cmds);
        Ok(())
    }

    /// Runs to the end: `exec(task id, item, attempt, rendered with)` plays the executor.
    fn run(&mut self, exec: impl FnMut(&str, Option<u32>, u32, &Value) -> AttemptResult) {
        self.apply(Event::Start).unwrap();
        self.settle_all(exec);
    }

    /// Carries out every command (and retry) until none is left.
    fn settle_all(&mut self, mut exec: impl FnMut(&str, Option<u32>, u32, &Value) -> AttemptResult) {
        loop {
            while let Some(c) = self.queue.pop_front() {
                match c {
                    Command::Execute { task, item, attempt } => {
                        let with = self.plan.render_with(&self.st, task, item).unwrap();
                        let id = self.plan.checked.dag.id(task).to_string();
                        self.executed.push((id.clone(), item, attempt));
                        let result = exec(&id, item, attempt, &with);
                        let _ = self.apply(Event::finished(task, item, attempt, result));
                    }
                    Command::ScheduleRetry { task, item, attempt, at } => {
                        self.retries.push((at, Event::RetryDue { task, item, attempt }));
                    }
                    Command::ScheduleWake { task, item, attempt, at } => {
                        self.retries.push((at, Event::WakeDue { task, item, attempt }));
                    }
                    Command::CancelRunning { .. }
                    | Command::Finished { .. }
                    | Command::Await { .. }
                    | Command::CancelRun { .. } => {}
                }
            }
            if self.retries.is_empty() {
                break;
            }
            self.retries.sort_by_key(|(at, _)| *at);
            let (at, e) = self.retries.remove(0);
            self.now = self.now.max(at);
            let _ = self.apply(e);
        }
    }

    fn status(&self, id: &str) -> TaskStatus {
        self.st.tasks[self.plan.checked.dag.index_of(id).unwrap()].status
    }

    fn output(&self, id: &str) -> Option<&Value> {
        self.st.tasks[self.plan.checked.dag.index_of(id).unwrap()].output.as_deref()
    }
}

fn ok(v: Value) -> AttemptResult {
    AttemptResult::Succeeded { output: v.into(), usage: Usage::default() }
}

fn fail(retryable: bool) -> AttemptResult {
    AttemptResult::Failed { error: "boom".into(), retryable, usage: Usage::default() }
}

/// Echoes the rendered `with` as output.
fn echo(_: &str, _: Option<u32>, _: u32, with: &Value) -> AttemptResult {
    ok(with.clone())
}

const PIPELINE: &str = r#"
spec:
  inputs: { topic: { type: string, default: rust } }
  tasks:
    - { id: a, type: transform, with: { output: "{{ inputs.topic }}" } }
    - { id: b, type: transform, depends_on: [a], with: { output: "{{ tasks.a.output.output }}!" } }
  outputs:
    result: "{{ tasks.b.output.output }}"
    status: "{{ run.status }}"
"#;

#[test]
fn a_pipeline_runs_in_order_and_renders_outputs() {
    let p = plan(PIPELINE);
    let mut d = Driver::new(&p, json!({"topic": "rust"}));
    d.run(echo);
    assert_eq!(d.st.status, RunStatus::Succeeded);
    assert_eq!(d.executed, vec![("a".to_string(), None, 1), ("b".to_string(), None, 1)]);
    assert_eq!(d.st.outputs, Some(json!({"result": "rust!", "status": "running"})));
    assert!(d.st.ended_at.is_some());
}

#[test]
fn duplicate_and_late_events_change_nothing() {
    let p = plan(PIPELINE);
    let mut st = p.new_run("r", serde_json::Map::new());
    let cmds = p.apply(&mut st, &Event::Start, 0).unwrap();
    assert_eq!(cmds, vec![Command::Execute { task: 0, item: None, attempt: 1 }]);
    assert_eq!(p.apply(&mut st, &Event::Start, 0), Err(Ignored("run already started")));
    let done = Event::finished(0, None, 1, ok(json!(1)));
    p.apply(&mut st, &done, 1).unwrap();
    let snapshot = st.clone();
    assert!(p.apply(&mut st, &done, 2).is_err(), "second delivery must be ignored");
    let wrong_attempt = Event::finished(1, None, 7, ok(json!(1)));
    assert!(p.apply(&mut st, &wrong_attempt, 2).is_err());
    assert_eq!(st, snapshot);
}

#[test]
fn retryable_failures_back_off_then_succeed() {
    let p = plan(
        r#"
spec:
  tasks:
    - id: a
      type: transform
      retry: { max_attempts: 3, backoff: { initial: 1s, max: 10s, multiplier: 2, jitter: none } }
      with: { output: 1 }
"#,
    );
    let mut d = Driver::new(&p, json!({}));
    let start = d.now;
    d.run(|_, _, attempt, _| if attempt < 3 { fail(true) } else { ok(json!("done")) });
    assert_eq!(d.st.status, RunStatus::Succeeded);
    assert_eq!(d.st.tasks[0].attempts, 3);
    // 1s then 2s of backoff, exactly (jitter: none).
    assert_eq!(d.now - start, 3_000);
}

#[test]
fn retries_stop_at_max_attempts_and_non_retryable_errors_are_not_retried() {
    let p = plan(
        r#"
spec:
  defaults: { retry: { max_attempts: 2, backoff: { initial: 10ms } } }
  tasks:
    - { id: a, type: transform, with: { output: 1 } }
"#,
    );
    let mut d = Driver::new(&p, json!({}));
    d.run(|_, _, _, _| fail(true));
    assert_eq!(d.st.status, RunStatus::Failed);
    assert_eq!(d.st.tasks[0].attempts, 2);
    assert!(d.st.error.as_deref().unwrap().contains("task `a` failed: boom"));
    let mut d = Driver::new(&p, json!({}));
    d.run(|_, _, _, _| fail(false));
    assert_eq!(d.st.tasks[0].attempts, 1);
}

#[test]
fn skips_propagate_by_trigger_rule() {
    let p = plan(
        r#"
spec:
  tasks:
    - { id: a, type: transform, with: { output: 1 } }
    - { id: b, type: transform, depends_on: [a], when: "tasks.a.output.output > 5", with: { output: 2 } }
    - { id: c, type: transform, depends_on: [b], with: { output: 3 } }
    - { id: d, type: transform, depends_on: [a, b], trigger: none_failed, with: { output: 4 } }
    - { id: e, type: transform, depends_on: [c], trigger: all_done, with: { output: 5 } }
    - { id: f, type: transform, depends_on: [b, d], trigger: any_succeeded, with: { output: 6 } }
"#,
    );
    let mut d = Driver::new(&p, json!({}));
    d.run(echo);
    assert_eq!(d.st.status, RunStatus::Succeeded);
    assert_eq!(d.status("b"), TaskStatus::Skipped);
    assert_eq!(d.status("c"), TaskStatus::Skipped);
    assert_eq!(d.status("d"), TaskStatus::Succeeded);
    assert_eq!(d.status("e"), TaskStatus::Succeeded);
    assert_eq!(d.status("f"), TaskStatus::Succeeded);
}

#[test]
fn on_failure_continue_keeps_the_run_going() {
    let p = plan(
        r#"
spec:
  tasks:
    - { id: a, type: transform, on_failure: continue, retry: { max_attempts: 1 }, with: { output: 1 } }
    - { id: b, type: transform, depends_on: [a], with: { output: 2 } }
    - { id: c, type: transform, depends_on: [a], trigger: all_done, with: { output: "{{ tasks.a.status }}" } }
"#,
    );
    let mut d = Driver::new(&p, json!({}));
    d.run(|id, _, _, w| if id == "a" { fail(false) } else { ok(w.clone()) });
    assert_eq!(d.st.status, RunStatus::Succeeded);
    assert_eq!(d.status("a"), TaskStatus::Failed);
    assert_eq!(d.status("b"), TaskStatus::Skipped);
    assert_eq!(d.output("c"), Some(&json!({"output": "failed"})));
}

const FALLBACK: &str = r#"
spec:
  tasks:
    - { id: a, type: transform, retry: { max_attempts: 1 }, on_failure: { fallback: a2 }, with: { output: primary } }
    - { id: a2, type: transform, with: { output: backup } }
    - { id: b, type: transform, depends_on: [a], with: { output: "{{ tasks.a.output.output }}" } }
"#;

#[test]
fn a_fallback_stands_in_for_a_failed_task() {
    let p = plan(FALLBACK);
    let mut d = Driver::new(&p, json!({}));
    d.run(|id, _, _, w| if id == "a" { fail(false) } else { ok(w.clone()) });
    assert_eq!(d.st.status, RunStatus::Succeeded, "{:?}", d.st.error);
    assert_eq!(d.status("a"), TaskStatus::Failed);
    assert_eq!(d.status("a2"), TaskStatus::Succeeded);
    assert_eq!(d.output("b"), Some(&json!({"output": "backup"})));

    let mut d = Driver::new(&p, json!({}));
    d.run(echo);
    assert_eq!(d.status("a2"), TaskStatus::Skipped);
    assert_eq!(d.output("b"), Some(&json!({"output": "primary"})));

    let mut d = Driver::new(&p, json!({}));
    d.run(|_, _, _, _| fail(false));
    assert_eq!(d.st.status, RunStatus::Failed);
    assert_eq!(d.status("b"), TaskStatus::Cancelled);
}

#[test]
fn for_each_collects_outputs_in_item_order_within_max_concurrency() {
    let p = plan(
        r#"
spec:
  inputs: { xs: { type: array, default: [a, b, c, d, e] } }
  tasks:
    - { id: t, type: transform, for_each: inputs.xs, max_concurrency: 2, with: { output: "{{ item_index }}:{{ item }}" } }
"#,
    );
    let mut st = p.new_run("r", json!({"xs": ["a", "b", "c", "d", "e"]}).as_object().cloned().unwrap());
    let cmds = p.apply(&mut st, &Event::Start, 0).unwrap();
    assert_eq!(cmds.len(), 2, "max_concurrency 2: {cmds:?}");
    // Finish items in reverse order of start, feeding new starts.
    let mut running: Vec<u32> = vec![0, 1];
    let mut finished = 0;
    while let Some(k) = running.pop() {
        let with = p.render_with(&st, 0, Some(k)).unwrap();
        let cmds = p.apply(&mut st, &Event::finished(0, Some(k), 1, ok(with["output"].clone())), 1).unwrap();
        finished += 1;
        for c in cmds {
            if let Command::Execute { item: Some(i), .. } = c {
                running.insert(0, i);
            }
        }
        let now_running = st.tasks[0].units.iter().filter(|u| u.status == TaskStatus::Running).count();
        assert!(now_running <= 2);
    }
    assert_eq!(finished, 5);
    assert_eq!(st.status, RunStatus::Succeeded);
    assert_eq!(st.tasks[0].output.as_deref(), Some(&json!(["0:a", "1:b", "2:c", "3:d", "4:e"])));
}

#[test]
fn a_failed_item_fails_the_task_and_an_empty_list_succeeds() {
    let p = plan(
        r#"
spec:
  inputs: { xs: { type: array, default: [1, 2, 3] } }
  tasks:
    - { id: t, type: transform, for_each: inputs.xs, retry: { max_attempts: 1 }, with: { output: "{{ item }}" } }
"#,
    );
    let mut d = Driver::new(&p, json!({"xs": [1, 2, 3]}));
    d.run(|_, item, _, w| if item == Some(1) { fail(false) } else { ok(w.clone()) });
    assert_eq!(d.st.status, RunStatus::Failed);
    assert_eq!(d.st.tasks[0].error.as_deref(), Some("item 1: boom"));
    let mut d = Driver::new(&p, json!({"xs": []}));
    d.run(echo);
    assert_eq!(d.st.status, RunStatus::Succeeded);
    assert_eq!(d.output("t"), Some(&json!([])));
}

#[test]
fn max_parallel_caps_running_units() {
    let p = plan(
        r#"
spec:
  concurrency: { max_parallel: 2 }
  tasks:
    - { id: a, type: transform, with: { output: 1 } }
    - { id: b, type: transform, with: { output: 1 } }
    - { id: c, type: transform, with: { output: 1 } }
"#,
    );
    let mut st = p.new_run("r", serde_json::Map::new());
    let cmds = p.apply(&mut st, &Event::Start, 0).unwrap();
    assert_eq!(cmds.len(), 2);
    let Command::Execute { task, .. } = cmds[0] else { panic!() };
    let cmds = p.apply(&mut st, &Event::finished(task, None, 1, ok(json!(1))), 1).unwrap();
    assert_eq!(cmds.len(), 1, "one slot freed, one task started: {cmds:?}");
}

#[test]
fn replay_chain_follows_work_run_in_place_and_stops_at_work_sent_through_the_queue() {
    // a → (b, c); b → d. `start` and `a` are stepped in place under the start message (its
    // lease); b and c go through the queue; b's result arrives through the queue and starts d.
    let p = plan(
        r#"spec:
  tasks:
    - { id: a, type: transform, with: { output: 1 } }
    - { id: b, type: transform, depends_on: [a], with: { output: 1 } }
    - { id: c, type: transform, depends_on: [a], with: { output: 1 } }
    - { id: d, type: transform, depends_on: [b], with: { output: 1 } }
"#,
    );
    let exec = |t: usize| Command::Execute { task: t, item: None, attempt: 1 };
    let sorted = |mut cs: Vec<Command>| {
        cs.sort_by_key(|c| format!("{c:?}"));
        cs
    };
    let mut st = p.new_run("r", serde_json::Map::new());
    assert_eq!(p.apply(&mut st, &Event::Start, 0).unwrap(), vec![exec(0)]);
    let in_place = Event::AttemptFinished { task: 0, item: None, attempt: 1, result: ok(json!(1)), in_place: true };
    assert_eq!(sorted(p.apply(&mut st, &in_place, 1).unwrap()), vec![exec(1), exec(2)]);
    assert_eq!(st.tasks[0].units[0].in_place, vec![1]);
    // The worker died before sending b and c: the start message's next delivery finds them.
    assert_eq!(p.replay(&st, "start"), vec![]);
    assert_eq!(sorted(p.replay_chain(&st, "start")), vec![exec(1), exec(2)]);
    // They were sent; b ran from its message and started d. A late redelivery of the start
    // message re-sends c (its transition's commands may have been lost, as far as it can
    // tell) but not d: b's message is the lease on what b's transition owes.
    assert_eq!(p.apply(&mut st, &Event::finished(1, None, 1, ok(json!(1))), 2).unwrap(), vec![exec(3)]);
    assert_eq!(p.replay_chain(&st, "start"), vec![exec(2)]);
    assert_eq!(p.replay(&st, &finished_key(1, None, 1)), vec![exec(3)]);
    // The flag is stored with the event and survives a round trip through JSON.
    let text = serde_json::to_string(&in_place).unwrap();
    assert!(text.contains("\"in_place\":true"), "{text}");
    assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), in_place);
    let queued = serde_json::to_string(&Event::finished(0, None, 1, ok(json!(1)))).unwrap();
    assert!(!queued.contains("in_place"), "{queued}");
}

#[test]
fn cancel_stops_the_run_and_later_results_are_ignored() {
    let p = plan(PIPELINE);
    let mut st = p.new_run("r", serde_json::Map::new());
    p.apply(&mut st, &Event::Start, 0).unwrap();
    let cmds = p.apply(&mut st, &Event::Cancel, 1).unwrap();
    assert_eq!(
        cmds,
        vec![Command::CancelRunning { tasks: vec![0] }, Command::Finished { status: RunStatus::Cancelled }]
    );
    assert!(st.tasks.iter().all(|t| t.status == TaskStatus::Cancelled));
    let late = Event::finished(0, None, 1, ok(json!(1)));
    assert_eq!(p.apply(&mut st, &late, 2), Err(Ignored("run is not running")));
}

#[test]
fn abort_fails_the_run_with_its_reason_once() {
    let p = plan(PIPELINE);
    let mut st = p.new_run("r", serde_json::Map::new());
    p.apply(&mut st, &Event::Start, 0).unwrap();
    let abort = Event::Abort { reason: "message dead-lettered".into() };
    let cmds = p.apply(&mut st, &abort, 1).unwrap();
    assert_eq!(cmds, vec![Command::CancelRunning { tasks: vec![0] }, Command::Finished { status: RunStatus::Failed }]);
    assert_eq!(st.status, RunStatus::Failed);
    assert_eq!(st.error.as_deref(), Some("message dead-lettered"));
    assert_eq!(p.apply(&mut st, &abort, 2), Err(Ignored("run already ended")));
}

#[test]
fn no_task_that_spends_starts_once_the_budget_is_spent() {
    let p = priced(
        r#"
spec:
  budget: { max_cost_usd: 0.01 }
  tasks:
    - { id: a, type: llm, with: { model: m, prompt: hi, max_tokens: 10 } }
    - { id: b, type: llm, depends_on: [a], with: { model: m, prompt: hi, max_tokens: 10 } }
"#,
    );
    let mut d = Driver::new(&p, json!({}));
    d.run(|_, _, _, w| AttemptResult::Succeeded {
        output: w.clone().into(),
        usage: Usage { tokens: 100, cost_usd: 0.02 },
    });
    assert_eq!(d.st.status, RunStatus::Failed);
    assert_eq!(d.executed.len(), 1, "b must not start");
    assert!(d.st.error.as_deref().unwrap().starts_with("budget exceeded"));
    assert!(d.st.tasks[1].error.as_deref().unwrap().starts_with("budget exceeded"));
}

pub(super) fn priced(yaml: &str) -> Plan {
    let mut p = plan(yaml);
    p.set_prices(budget::PriceBook {
        // $1 per million tokens in, $2 out.
        models: [("m".to_string(), [1.0, 2.0])].into(),
        default_provider: "openai".into(),
        ..Default::default()
    });
    p
}

/// The worst case of one call of model `m` with a prompt of `bytes` and `max` tokens of answer.
fn worst(bytes: u64, max: u64) -> f64 {
    ((bytes + 8 + 16) as f64 * 1.0 + max as f64 * 2.0) / 1e6
}

fn ids(cmds: &[Command]) -> Vec<AttemptId> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Execute { task, item, attempt } => Some(AttemptId { task: *task, item: *item, attempt: *attempt }),
            _ => None,
        })
        .collect()
}

#[test]
fn a_task_whose_worst_case_would_overspend_the_budget_does_not_start() {
    let p = priced(
        r#"
spec:
  budget: { max_cost_usd: 0.003 }
  tasks:
    - { id: a, type: llm, with: { model: m, prompt: hi, max_tokens: 100 } }
    - { id: b, type: llm, depends_on: [a], with: { model: m, prompt: "{{ tasks.a.output.text }}", max_tokens: 1000 } }
"#,
    );
    let mut d = Driver::new(&p, json!({}));
    d.run(|_, _, _, _| AttemptResult::Succeeded {
        output: json!({ "text": "x".repeat(500) }).into(),
        usage: Usage { tokens: 10, cost_usd: 0.001 },
    });
    // b's prompt renders to 500 bytes: $0.000524 + $0.002 of answer on top of $0.001 spent.
    assert_eq!(d.executed.len(), 1, "b must not start");
    assert_eq!(
        d.st.error.as_deref(),
        Some(
            "budget exceeded: `b` (may cost $0.0025) would take spending from $0.0010 over $0.003 (spending stopped; what finished is kept)"
        )
    );
    assert_eq!(
        (d.st.status, d.st.tasks[0].status, d.st.tasks[1].status),
        (RunStatus::Failed, TaskStatus::Succeeded, TaskStatus::Failed)
    );
    assert!(d.st.reserved.is_zero() && d.st.unsettled.is_zero());
}

/// A budget stop refuses further spending but keeps what finished: the items that ran keep
/// their outputs, a `trigger: all_done` join that spends nothing still runs and reads them,
/// and the run ends `failed` with outputs that say what was kept.
#[test]
fn a_budget_stop_keeps_what_finished_and_lets_joins_run() {
    let p = priced(
        r#"
spec:
  budget: { max_cost_usd: 0.01 }
  concurrency: { max_parallel: 1 }
  tasks:
    - id: each
      type: llm
      for_each: "[1, 2, 3, 4, 5, 6, 7, 8]"
      with: { model: m, prompt: "item {{ item }}", max_tokens: 100 }
    - id: tally
      type: transform
      depends_on: [each]
      trigger: all_done
      with: { output: "{{ tasks.each.output | select | list | length }} of {{ tasks.each.output | length }} done" }
  outputs:
    tally: "{{ tasks.tally.output }}"
    texts: "{{ tasks.each.output }}"
"#,
    );
    let mut d = Driver::new(&p, json!({}));
    d.run(|id, item, _, with| match item {
        Some(k) => AttemptResult::Succeeded {
            output: json!(format!("answer {k}")).into(),
            usage: Usage { tokens: 10, cost_usd: 0.003 },
        },
        // The join: a transform's output as the builtin gives it.
        None => {
            assert_eq!(id, "tally");
            ok(with["output"].clone())
        }
    });
    let ran = d.executed.iter().filter(|(id, _, _)| id == "each").count();
    assert!((1..8).contains(&ran), "the budget stopped the items: {ran} ran");
    assert_eq!(
        d.st.status,
        RunStatus::Failed,
        "{:?} {:?}",
        d.st.error,
        d.st.tasks.iter().map(|t| (t.status, t.error.clone())).collect::<Vec<_>>()
    );
    assert!(
        d.st.error.as_deref().unwrap_or_default().ends_with("(spending stopped; what finished is kept)"),
        "{:?}",
        d.st.error
    );
    assert_eq!(d.st.tasks[1].status, TaskStatus::Succeeded, "the all_done join ran: {:?}", d.st.tasks[1].error);
    let out = d.st.outputs.clone().unwrap();
    assert_eq!(out["tally"], json!(format!("{ran} of 8 done")));
    assert_eq!(out["texts"][0], json!("answer 0"));
    assert!(out["texts"][7].is_null());
}

/// A wide `for_each` under a budget: each item holds its worst case while it runs, so no
/// more start than the budget covers; as answers settle (for less than held) more start, and
/// the run fails only when nothing is in flight and the next item does not fit. At every
/// step, spent + held stays within the budget; at the end, what the run counts is what the
/// "provider" answered.
#[test]
fn attempts_in_flight_hold_their_worst_case_and_the_budget_is_never_overspent() {
    let p = priced(
        r#"
spec:
  budget: { max_cost_usd: 0.001 }
  tasks:
    - id: each
      type: llm
      for_each: "range(200) | list"
      with: { model: m, prompt: "item {{ item }}", max_tokens: 200 }
"#,
    );
    let hold = worst("item 0".len() as u64, 200);
    let mut st = p.new_run("r", Default::default());
    let mut in_flight = ids(&p.apply(&mut st, &Event::Start, 1).unwrap());
    assert_eq!(in_flight.len(), (0.001 / hold) as usize, "as many start as their worst cases fit");
    let (mut answered, mut spent) = (0u32, 0.0f64);
    // The "provider" answers the oldest call in flight each time, for a third of its worst case.
    while let Some(id) = (!in_flight.is_empty()).then(|| in_flight.remove(0)) {
        let cost = hold / 3.0;
        answered += 1;
        spent += cost;
        let r = AttemptResult::Succeeded { output: json!({}).into(), usage: Usage { tokens: 50, cost_usd: cost } };
        in_flight.extend(ids(&p.apply(&mut st, &id.finished(r), 2).unwrap()));
        assert!(
            st.cost_usd + st.reserved.cost_usd + st.unsettled.cost_usd <= 0.001 + 1e-12,
            "spent {} + held {} over the budget",
            st.cost_usd,
            st.reserved.cost_usd
        );
    }
    assert_eq!(st.status, RunStatus::Failed);
    assert!(st.error.as_deref().unwrap().starts_with("budget exceeded"), "{:?}", st.error);
    assert!((st.cost_usd - spent).abs() < 1e-12 && st.tokens == 50 * u64::from(answered));
    assert!(spent <= 0.001 && spent + hold > 0.001, "it used the budget up: {spent} of 0.001 after {answered} calls");
    assert!(st.reserved.is_zero() && st.unsettled.is_zero());
}

/// When the run ends while attempts run (a sibling failed the task, the run failed), their
/// answers still count, once, in the ended run; until they come, what they held stays
/// committed.
#[test]
fn answers_of_attempts_cut_off_are_counted_once_even_after_the_run_ended() {
    let p = priced(
        r#"
spec:
  budget: { max_cost_usd: 1.0 }
  tasks:
    - id: each
      type: llm
      for_each: "[1, 2, 3]"
      with: { model: m, prompt: "p", max_tokens: 100 }
"#,
    );
    let mut st = p.new_run("r", Default::default());
    let started = ids(&p.apply(&mut st, &Event::Start, 1).unwrap());
    assert_eq!(started.len(), 3);
    let paid = |c: f64| Usage { tokens: 7, cost_usd: c };
    let fail = AttemptResult::Failed { error: "bad".into(), retryable: false, usage: paid(0.01) };
    p.apply(&mut st, &started[0].finished(fail), 2).unwrap();
    assert_eq!(st.status, RunStatus::Failed);
    assert!(st.reserved.is_zero());
    let held = st.unsettled.cost_usd;
    assert!((held - 2.0 * worst(1, 100)).abs() < 1e-12, "the two cut off still hold their worst case: {held}");
    let late = started[1].finished(AttemptResult::Succeeded { output: json!({}).into(), usage: paid(0.02) });
    p.apply(&mut st, &late, 3).unwrap();
    assert!((st.cost_usd - 0.03).abs() < 1e-12 && st.tokens == 14);
    assert_eq!(st.tasks[0].cost_usd, st.cost_usd);
    assert_eq!(p.apply(&mut st, &late, 4), Err(Ignored("run is not running")), "counted once");
    assert!((st.unsettled.cost_usd - worst(1, 100)).abs() < 1e-12);
    assert_eq!(st.status, RunStatus::Failed, "nothing else changes");
}

#[test]
fn the_run_times_out_on_tick_after_its_deadline() {
    let p = plan(
        r#"
spec:
  timeout: 1m
  tasks:
    - { id: a, type: transform, with: { output: 1 } }
"#,
    );
    let mut st = p.new_run("r", serde_json::Map::new());
    p.apply(&mut st, &Event::Start, 0).unwrap();
    assert_eq!(p.apply(&mut st, &Event::Tick, 59_999), Err(Ignored("nothing due")));
    p.apply(&mut st, &Event::Tick, 60_000).unwrap();
    assert_eq!(st.status, RunStatus::TimedOut);
}

#[test]
fn the_deployment_s_longest_run_caps_the_deadline() {
    let p = plan("spec:\n  timeout: 1m\n  tasks:\n    - { id: a, type: transform, with: { output: 1 } }\n");
    let no_timeout = plan("spec:\n  tasks:\n    - { id: a, type: transform, with: { output: 1 } }\n");
    for (plan, max_age, deadline) in [(&p, 30_000, 30_000), (&p, 90_000, 60_000), (&no_timeout, 5_000, 5_000)] {
        let mut st = plan.new_run("r", serde_json::Map::new());
        st.max_age_ms = Some(max_age);
        plan.apply(&mut st, &Event::Start, 0).unwrap();
        assert_eq!(st.deadline, Some(deadline));
        plan.apply(&mut st, &Event::Tick, deadline).unwrap();
        assert_eq!(st.status, RunStatus::TimedOut);
    }
    let mut st = no_timeout.new_run("r", serde_json::Map::new());
    no_timeout.apply(&mut st, &Event::Start, 0).unwrap();
    assert_eq!(st.deadline, None, "no timeout, no cap: no deadline");
}

#[test]
fn a_when_that_cannot_be_evaluated_fails_the_task() {
    let p = plan(
        r#"
spec:
  tasks:
    - { id: a, type: transform, with: { output: 1 } }
    - { id: b, type: transform, depends_on: [a], when: "tasks.a.output.missing.deeper", with: { output: 2 } }
"#,
    );
    let mut d = Driver::new(&p, json!({}));
    d.run(echo);
    assert_eq!(d.st.status, RunStatus::Failed);
    assert!(d.st.tasks[1].error.as_deref().unwrap().starts_with("`when` failed"), "{:?}", d.st.tasks[1].error);
}

#[test]
fn states_round_trip_through_json() {
    let p = plan(FALLBACK);
    let mut d = Driver::new(&p, json!({}));
    d.run(|id, _, _, w| if id == "a" { fail(false) } else { ok(w.clone()) });
    let text = serde_json::to_string(&d.st).unwrap();
    let back: RunState = serde_json::from_str(&text).unwrap();
    assert_eq!(back, d.st);
}

#[test]
fn transform_tasks_compute_their_outputs_with_the_builtin() {
    let p = plan(
        r#"
spec:
  inputs: { xs: { type: array, default: [3, 1, 2] } }
  tasks:
    - { id: sorted, type: transform, with: { expression: "inputs.xs | sort" } }
    - { id: shaped, type: transform, depends_on: [sorted], with: { output: { first: "{{ tasks.sorted.output[0] }}", all: "{{ tasks.sorted.output }}" } } }
  outputs: { result: "{{ tasks.shaped.output }}" }
"#,
    );
    let mut d = Driver::new(&p, json!({"xs": [3, 1, 2]}));
    let plan_ref = &p;
    let mut contexts = Vec::new();
    d.run(|id, _, _, with| {
        contexts.push(with.clone());
        // `sorted` answers what the builtin computes; the others echo their rendered `with`.
        if id == "sorted" { ok(json!([1, 2, 3])) } else { ok(with.clone()) }
    });
    assert_eq!(contexts[1]["output"]["first"], json!(1), "read from the sorted list");
    // Run the builtin on what it was given.
    let ctx = plan_ref.context_value(&d.st, Some(0), None);
    assert_eq!(builtin::transform(plan_ref, &contexts[0], &ctx).unwrap(), json!([1, 2, 3]));
    let shaped = builtin::transform(plan_ref, &json!({"output": {"first": 1}}), &ctx).unwrap();
    assert_eq!(shaped, json!({"first": 1}));
}

#[test]
fn contexts_show_each_read_task_as_it_is_and_serialize_as_maps() {
    let p = plan(
        r#"
spec:
  tasks:
    - { id: a, type: transform, with: { output: 1 } }
    - { id: b, type: transform, with: { output: 2 } }
    - { id: c, type: transform, depends_on: [a, b], trigger: any_succeeded, with: { output: "{{ tasks.a.status }}/{{ tasks.b.status }}" } }
"#,
    );
    let (a, b, c) = (0, 1, 2);
    let mut st = p.new_run("run-1", Default::default());
    p.apply(&mut st, &Event::Start, 1).unwrap();
    // One set of run parts for the whole run, as the runtimes keep it.
    let parts = p.run_parts(&st, false);
    let seen = |st: &RunState| {
        let ctx = p.context_in(st, Some(c), None, &parts);
        p.render_in(&json!("{{ tasks.a.status }}/{{ tasks.b.status }}"), &ctx).unwrap()
    };
    assert_eq!(seen(&st), json!("pending/pending"));
    p.apply(&mut st, &Event::finished(a, None, 1, ok(json!({"n": 1}))), 2).unwrap();
    assert_eq!(seen(&st), json!("succeeded/pending"), "b is read while it runs: not frozen as pending");
    p.apply(&mut st, &Event::finished(b, None, 1, fail(false)), 3).unwrap();
    assert_eq!(seen(&st), json!("succeeded/failed"));
    let ctx = p.context_in(&st, Some(c), None, &parts);
    // The objects behave as maps: iteration, filters, serialization.
    let keys = p.render_in(&json!("{% for k in tasks %}{{ k }},{% endfor %}"), &ctx).unwrap();
    assert_eq!(keys, json!("a,b,"));
    assert_eq!(p.render_in(&json!("{{ tasks.a.output.n + tasks.a.usage.tokens }}"), &ctx).unwrap(), json!(1));
    let as_json = serde_json::to_value(&ctx).unwrap();
    assert_eq!(as_json["tasks"]["a"]["output"], json!({"n": 1}));
    assert_eq!(as_json["tasks"]["b"]["error"], json!("boom"));
    assert_eq!(as_json["tasks"]["b"]["attempts"], json!(1));
    assert!(as_json["run"]["id"] == json!("run-1") && as_json["inputs"].is_object(), "{as_json}");
}

/// `outputs` are rendered with only the tasks they name; one that reads `tasks` as a whole
/// sees every task, as before.
#[test]
fn outputs_see_the_tasks_they_read() {
    const TASKS: &str = r#"
  tasks:
    - { id: a, type: transform, with: { output: 1 } }
    - { id: b, type: transform, depends_on: [a], with: { output: 2 } }
    - { id: c, type: transform, depends_on: [b], with: { output: 3 } }
"#;
    let named = plan(&format!(
        "spec:{TASKS}  outputs:\n    sum: \"{{{{ tasks.a.output.output + tasks.c.output.output }}}}\"\n    b: \"{{{{ tasks.b.status }}}}\"\n"
    ));
    assert_eq!(named.output_reads, Some(vec![0, 1, 2]));
    let mut d = Driver::new(&named, json!({}));
    d.run(echo);
    assert_eq!(d.st.outputs, Some(json!({"sum": 4, "b": "succeeded"})));

    let whole = plan(&format!(
        "spec:{TASKS}  outputs:\n    ids: \"{{% for k in tasks|sort %}}{{{{ k }}}},{{% endfor %}}\"\n    n: \"{{{{ tasks|length }}}}\"\n"
    ));
    assert_eq!(whole.output_reads, None);
    let mut d = Driver::new(&whole, json!({}));
    d.run(echo);
    assert_eq!(d.st.outputs, Some(json!({"ids": "a,b,c,", "n": 3})));

    let one = plan(&format!("spec:{TASKS}  outputs:\n    last: \"{{{{ tasks.c.output }}}}\"\n"));
    assert_eq!(one.output_reads, Some(vec![2]));
    // A subscript is a dynamic read: every task is visible.
    let subscript = plan(&format!("spec:{TASKS}  outputs:\n    c: \"{{{{ tasks['c'].output.output }}}}\"\n"));
    assert_eq!(subscript.output_reads, None);
    let mut d = Driver::new(&subscript, json!({}));
    d.run(echo);
    assert_eq!(d.st.outputs, Some(json!({"c": 3})));
}

/// A prepared `with` renders exactly as rendering the block as written: literals, a single
/// expression, plain `{{ path }}` text, a compiled template, nested templates; raw fields
/// stay as written; an error names its field.
#[test]
fn a_prepared_with_renders_as_the_block_as_written() {
    let p = plan(
        r#"
spec:
  inputs: { topic: { type: string, default: rust } }
  tasks:
    - { id: a, type: transform, with: { output: { text: "hi", n: 2 } } }
    - id: b
      type: http
      depends_on: [a]
      with:
        method: POST
        url: "https://{{ inputs.topic }}.example/{{ tasks.a.output.output.text }}"
        headers: { x-topic: "{{ inputs.topic | upper }}" }
        query: { q: "{{ inputs.topic | upper }}!", plain: "no template" }
        body: "{{ tasks.a.output.output }}"
        expect_status: [200, 201]
    - id: c
      type: http
      depends_on: [a]
      with:
        url: "https://example/"
        query: { q: "{{ tasks.a.output.output.missing.deeper }}" }
        body: { list: ["{{ inputs.topic }}", 1, { deep: "{{ tasks.a.status }}" }], keep: x }
"#,
    );
    let mut d = Driver::new(&p, json!({"topic": "rust"}));
    d.apply(Event::Start).unwrap();
    d.apply(Event::finished(0, None, 1, ok(json!({"output": {"text": "hi", "n": 2}})))).unwrap();
    let written = |t: usize| Value::Object(p.checked.workflow.spec.tasks[t].with.clone());

    let ctx = p.context_value(&d.st, Some(1), None);
    let with = Value::Object(p.render_task_with(1, &ctx, &["headers"]).unwrap());
    let mut want = p.render_in(&written(1), &ctx).unwrap();
    want["headers"] = written(1)["headers"].clone();
    assert_eq!(with, want);
    assert_eq!(
        with,
        json!({
            "method": "POST", "url": "https://rust.example/hi", "headers": {"x-topic": "{{ inputs.topic | upper }}"},
            "query": {"q": "RUST!", "plain": "no template"}, "body": {"text": "hi", "n": 2}, "expect_status": [200, 201],
        })
    );
    assert_eq!(p.render_with(&d.st, 1, None).unwrap()["headers"], json!({"x-topic": "RUST"}));

    let ctx = p.context_value(&d.st, Some(2), None);
    assert!(p.render_in(&written(2), &ctx).is_err());
    assert_eq!(p.render_task_with(2, &ctx, &[]).unwrap_err().0, "query");
    let with = Value::Object(p.render_task_with(2, &ctx, &["query"]).unwrap());
    assert_eq!(with["body"], json!({"list": ["rust", 1, {"deep": "succeeded"}], "keep": "x"}));
    assert_eq!(with["query"], written(2)["query"]);
}

/// Hostile templates: each stops with an error naming the limit, quickly, and the run fails
/// (the task, or the outputs) instead of running for ever or filling memory.
#[test]
fn fuel_bombs_and_oversized_values_stop_at_the_limits() {
    let bomb =
        "range(100000) | map('string') | join | length > 0 and range(100000) | map('string') | join | length > 0";
    let loops = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
    let cases = [
        (format!("when: \"{bomb}\"\n      with: {{ output: 1 }}"), "`when` failed: stopped: out of fuel (500000)"),
        (
            format!("for_each: \"{bomb}\"\n      with: {{ output: 1 }}"),
            "`for_each` failed: stopped: out of fuel (500000)",
        ),
        (
            "for_each: \"range(10001)\"\n      with: { output: 1 }".to_string(),
            "`for_each` gave 10001 items, over the limit of 10000",
        ),
        (format!("with: {{ output: \"{loops}\" }}"), "stopped: out of fuel (500000)"),
        (
            "with: { output: \"{{ inputs.s ~ inputs.s }}\" }".to_string(),
            "the value is larger than the limit of 8388608 bytes",
        ),
    ];
    for (task, want) in cases {
        let p = plan(&format!(
            "spec:\n  inputs: {{ s: {{ type: string, default: '' }} }}\n  tasks:\n    - id: a\n      type: transform\n      {task}\n"
        ));
        let mut d = Driver::new(&p, json!({ "s": "x".repeat(5 << 20) }));
        let start = std::time::Instant::now();
        d.apply(Event::Start).unwrap();
        // `when` and `for_each` fail the task as the run starts; a `with` that does not render
        // fails its attempt in the runtime, which renders it.
        let error = match d.st.tasks[0].error.clone() {
            Some(e) => e,
            None => p.render_with(&d.st, 0, None).unwrap_err(),
        };
        assert!(error.contains(want), "{task}: {error}");
        assert!(start.elapsed() < std::time::Duration::from_secs(1), "{task}: {:?}", start.elapsed());
    }
    let p = plan(&format!(
        "spec:\n  tasks:\n    - {{ id: a, type: transform, with: {{ output: 1 }} }}\n  outputs:\n    big: \"{loops}\"\n"
    ));
    let mut d = Driver::new(&p, json!({}));
    let start = std::time::Instant::now();
    d.run(echo);
    assert_eq!(d.st.status, RunStatus::Failed);
    assert!(d.st.error.as_deref().unwrap().starts_with("outputs: stopped: out of fuel (500000)"), "{:?}", d.st.error);
    assert!(start.elapsed() < std::time::Duration::from_secs(1));
}

#[test]
fn a_redrive_runs_the_failed_tasks_again_and_keeps_what_succeeded() {
    let p = plan(
        r#"
spec:
  tasks:
    - { id: a, type: transform, with: { output: "A" } }
    - { id: b, type: transform, depends_on: [a], retry: { max_attempts: 2, backoff: { initial: 1s } }, with: { output: "B" } }
    - { id: c, type: transform, depends_on: [b], with: { output: "C" } }
    - { id: side, type: transform, with: { output: "S" } }
  outputs:
    c: "{{ tasks.c.output.output }}"
"#,
    );
    let mut d = Driver::new(&p, json!({}));
    // `b` fails twice (its retries are used up): the run fails, `c` is cancelled.
    d.run(|id, _, _, with| if id == "b" { fail(true) } else { ok(with.clone()) });
    assert_eq!(d.st.status, RunStatus::Failed);
    assert_eq!(
        (d.status("a"), d.status("b"), d.status("c")),
        (TaskStatus::Succeeded, TaskStatus::Failed, TaskStatus::Cancelled)
    );
    let ended = d.st.version;
    assert_eq!(
        p.apply(&mut d.st.clone(), &Event::Redrive { after: ended - 1, inputs: None }, d.now),
        Err(Ignored("the run changed since this redrive was asked for"))
    );
    d.executed.clear();
    d.apply(Event::Redrive { after: ended, inputs: None }).unwrap();
    assert_eq!(d.st.status, RunStatus::Running);
    assert_eq!((d.st.error.as_ref(), d.st.ended_at, d.st.ended_tasks), (None, None, 2), "a and side stay ended");
    // Fresh retries: `b` fails once more and then succeeds; its attempts go on from 3.
    let mut calls = 0;
    d.settle_all(|id, _, _, with| {
        if id == "b" {
            calls += 1;
            if calls == 1 {
                return fail(true);
            }
        }
        ok(with.clone())
    });
    assert_eq!(d.st.status, RunStatus::Succeeded, "{:?}", d.st.error);
    assert_eq!(d.executed, vec![("b".to_string(), None, 3), ("b".to_string(), None, 4), ("c".to_string(), None, 1)]);
    assert_eq!(d.output("a"), Some(&json!({"output": "A"})), "kept, not run again");
    assert_eq!(d.st.outputs, Some(json!({"c": "C"})));
    assert_eq!(d.st.tasks[1].attempts, 4);
    // A late duplicate of the redrive, and a redrive of a succeeded run, change nothing.
    let before = d.st.clone();
    assert!(p.apply(&mut d.st, &Event::Redrive { after: ended, inputs: None }, d.now).is_err());
    let now_version = d.st.version;
    assert!(p.apply(&mut d.st, &Event::Redrive { after: now_version, inputs: None }, d.now).is_err());
    assert_eq!(d.st, before);
}

#[test]
fn a_rerun_reuses_what_is_upstream_and_runs_the_task_and_its_downstream_again() {
    let p = plan(
        r#"
spec:
  inputs: { x: { type: integer, default: 2 } }
  tasks:
    - { id: a, type: transform, with: { output: "{{ inputs.x }}" } }
    - { id: b, type: transform, depends_on: [a], with: { output: "{{ tasks.a.output.output * 10 }}" } }
    - { id: c, type: transform, depends_on: [b], with: { output: "{{ tasks.b.output.output + 1 }}" } }
    - { id: side, type: transform, depends_on: [a], with: { output: "S" } }
  outputs:
    c: "{{ tasks.c.output.output }}"
"#,
    );
    let mut d = Driver::new(&p, json!({"x": 3}));
    d.run(echo);
    assert_eq!(d.st.status, RunStatus::Succeeded);
    let b = p.checked.dag.index_of("b").unwrap();
    let st = p.rerun("run-2", &d.st, b);
    assert_eq!(st.rerun_of, Some(RerunOf { run_id: "run-1".into(), from: "b".into() }));
    assert_eq!(st.inputs, d.st.inputs);
    assert_eq!(st.ended_tasks, 2, "a and side are reused");
    let mut again = Driver { st, ..Driver::new(&p, json!({})) };
    again.run(echo);
    assert_eq!(again.st.status, RunStatus::Succeeded);
    let ran: Vec<&str> = again.executed.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ran, vec!["b", "c"], "only b and what is downstream of it");
    assert_eq!(again.st.outputs, d.st.outputs);
    assert_eq!(again.output("a"), d.output("a"));
    assert_eq!(again.st.tasks[0].attempts, 0, "nothing spent on reused tasks");
}

#[test]
fn a_wait_task_waits_without_running_and_wakes_once() {
    let p = plan(
        r#"
spec:
  inputs: { at: { type: string, default: "1970-01-01T00:00:05Z" } }
  tasks:
    - { id: nap, type: wait, with: { sleep: { for: 2h } } }
    - { id: until, type: wait, with: { sleep: { until: "{{ inputs.at }}" } } }
    - { id: after, type: transform, depends_on: [nap, until], with: { output: "{{ tasks.nap.output.waited_until }}" } }
"#,
    );
    let mut st = p.new_run("r", json!({"at": "1970-01-01T00:00:05Z"}).as_object().cloned().unwrap());
    let mut cmds = p.apply(&mut st, &Event::Start, 1_000).unwrap();
    cmds.sort_by_key(|c| format!("{c:?}"));
    let two_hours = 1_000 + 2 * 3_600_000;
    assert_eq!(
        cmds,
        vec![
            Command::ScheduleWake { task: 0, item: None, attempt: 1, at: two_hours },
            Command::ScheduleWake { task: 1, item: None, attempt: 1, at: 5_000 },
        ]
    );
    assert_eq!((st.tasks[0].status, st.running), (TaskStatus::Waiting, 0), "nothing runs while it waits");
    let mut again = p.in_flight(&st);
    again.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(again, cmds, "a resumed run re-arms its waits");
    assert!(p.apply(&mut st, &Event::WakeDue { task: 0, item: None, attempt: 2 }, 5).is_err());
    p.apply(&mut st, &Event::WakeDue { task: 1, item: None, attempt: 1 }, 5_000).unwrap();
    let wake = Event::WakeDue { task: 0, item: None, attempt: 1 };
    let cmds = p.apply(&mut st, &wake, two_hours).unwrap();
    assert_eq!(cmds, vec![Command::Execute { task: 2, item: None, attempt: 1 }]);
    assert_eq!(st.tasks[0].output.as_deref(), Some(&json!({"waited_until": two_hours})));
    assert!(p.apply(&mut st, &wake, two_hours + 1).is_err(), "a duplicate wake changes nothing");

    // A bad `until` fails the task when it wakes (at once); a cancel stops a waiting run.
    let mut st = p.new_run("r2", json!({"at": "tomorrow"}).as_object().cloned().unwrap());
    p.apply(&mut st, &Event::Start, 1_000).unwrap();
    p.apply(&mut st, &Event::WakeDue { task: 1, item: None, attempt: 1 }, 1_000).unwrap();
    assert_eq!(st.status, RunStatus::Failed);
    assert!(st.error.as_deref().unwrap().contains("`wait`: `tomorrow` is not an RFC 3339 time"), "{:?}", st.error);
    assert_eq!(st.tasks[0].status, TaskStatus::Cancelled);
}

/// An undefined value in a template or an expression is an error naming the expression, the
/// missing key, the task it was read from and the likeliest key meant; `default` opts out.
/// (A typo of `text` used to render an empty prompt, and `null` in outputs.)
#[test]
fn undefined_values_fail_loudly_naming_what_was_missing() {
    let p = plan(
        r#"
spec:
  tasks:
    - { id: a, type: transform, with: { output: 1 } }
"#,
    );
    let st = p.new_run("r", serde_json::Map::new());
    let mut st = st;
    st.tasks[0].status = TaskStatus::Succeeded;
    st.tasks[0].output = Some(json!({"text": "hello", "model": "m"}).into());
    let ctx = p.context_value(&st, None, None);
    for (template, missing) in [
        (
            "{{ tasks.a.output.txt }}",
            "`tasks.a.output.txt` is undefined: `tasks.a.output` (task `a`) has no `txt`; did you mean `text`?",
        ),
        (
            "About {{ tasks.a.output.txt }}",
            "`tasks.a.output.txt` is undefined: `tasks.a.output` (task `a`) has no `txt`; did you mean `text`?",
        ),
        ("{{ inputs.topic }}", "`inputs.topic` is undefined: `inputs` has no `topic`"),
    ] {
        let e = p.render_in(&json!(template), &ctx).unwrap_err();
        assert!(e.starts_with(missing), "{template}: {e}");
        assert!(e.ends_with("| default(...)` to allow it missing)"), "{e}");
    }
    assert_eq!(p.render_in(&json!("{{ tasks.a.output.txt | default('none') }}"), &ctx).unwrap(), json!("none"));
    assert_eq!(p.render_in(&json!("{{ tasks.a.output.txt is defined }}"), &ctx).unwrap(), json!(false));
    assert_eq!(p.render_in(&json!("{{ tasks.a.output.text }}"), &ctx).unwrap(), json!("hello"));
}

/// A `for_each` keeps its work: with `tolerate_failures`, every item runs and the task
/// succeeds when the failures stay within it, its output each item's result (`null` for the
/// failed ones) and `items` each one's status and error; past it, the task fails with the same
/// output. Without it, the first failure still fails the task, but the items that finished keep
/// their outputs (the output was `null`).
#[test]
fn for_each_items_keep_their_results_and_failures_can_be_tolerated() {
    let wf = |tolerate: &str| {
        format!(
            r#"
spec:
  tasks:
    - id: each
      type: transform
      for_each: "[1, 2, 3, 4, 5]"
      {tolerate}
      with: {{ output: "{{{{ item }}}}" }}
      on_failure: continue
    - id: tally
      type: transform
      depends_on: [each]
      trigger: all_done
      with: {{ output: "{{{{ tasks.each.items | selectattr('status', 'equalto', 'failed') | list | length }}}} failed" }}
  outputs:
    kept: "{{{{ tasks.each.output }}}}"
    tally: "{{{{ tasks.tally.output }}}}"
"#
        )
    };
    let fail_even = |id: &str, item: Option<u32>, _: u32, with: &Value| match (id, item) {
        ("each", Some(k)) if k % 2 == 1 => {
            AttemptResult::Failed { error: format!("item {k} broke"), retryable: false, usage: Usage::default() }
        }
        _ => ok(with["output"].clone()),
    };
    // Within the tolerance: the task succeeds, every item ran.
    let p = plan(&wf("tolerate_failures: { count: 2 }"));
    let mut d = Driver::new(&p, json!({}));
    d.run(fail_even);
    assert_eq!(d.st.tasks[0].status, TaskStatus::Succeeded);
    assert_eq!(d.executed.iter().filter(|(id, _, _)| id == "each").count(), 5, "every item ran");
    let out = d.st.outputs.clone().unwrap();
    assert_eq!(out["kept"], json!([1, null, 3, null, 5]));
    assert_eq!(out["tally"], json!("2 failed"));
    // Past it: the task fails, its items' results kept all the same.
    let p = plan(&wf("tolerate_failures: { percent: 20 }"));
    let mut d = Driver::new(&p, json!({}));
    d.run(fail_even);
    assert_eq!(d.st.tasks[0].status, TaskStatus::Failed);
    let err = d.st.tasks[0].error.clone().unwrap();
    assert!(
        err.starts_with("2 of 5 items failed, more than `tolerate_failures` allows; the first, item 1: item 1 broke"),
        "{err}"
    );
    assert_eq!(d.st.outputs.clone().unwrap()["kept"], json!([1, null, 3, null, 5]));
    // Without it: the first failure stops the rest, and what finished is kept.
    let p = plan(&wf(""));
    let mut d = Driver::new(&p, json!({}));
    d.run(fail_even);
    assert_eq!(d.st.tasks[0].status, TaskStatus::Failed);
    let kept = d.st.outputs.clone().unwrap()["kept"].clone();
    assert_eq!(kept[0], json!(1), "item 0 finished before item 1 failed: {kept}");
    assert!(kept.as_array().unwrap().len() == 5 && kept[1].is_null(), "{kept}");
}

/// A task type an application registered may report what it spends, so it stays under the
/// budget: once spending is over, it is refused like a model call (only the built-ins known
/// to spend nothing run regardless of the budget).
#[test]
fn a_registered_task_type_stays_under_the_budget() {
    let mut registry = crate::tasks::Registry::default();
    registry.register(crate::tasks::TaskType::of::<serde_json::Map<String, Value>>("scrape", "a paid scraper"));
    let text = "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: t }\nspec:\n  budget: { max_cost_usd: 0.01 }\n  tasks:\n    - { id: a, type: scrape, with: {} }\n    - { id: b, type: scrape, depends_on: [a], with: {} }\n    - { id: c, type: transform, depends_on: [b], trigger: all_done, with: { output: done } }\n";
    let outcome = Validator::new(registry).validate(&SourceFile::new("t.yaml", text));
    let p = Plan::new(outcome.checked.unwrap_or_else(|| panic!("{:#?}", outcome.report.records())));
    let mut d = Driver::new(&p, json!({}));
    d.run(|_, _, _, w| AttemptResult::Succeeded {
        output: w.clone().into(),
        usage: Usage { tokens: 100, cost_usd: 0.02 },
    });
    assert_eq!(d.executed.iter().map(|(id, _, _)| id.as_str()).collect::<Vec<_>>(), ["a", "c"], "b was refused, c ran");
    assert!(d.st.tasks[1].error.as_deref().unwrap().starts_with("budget exceeded"), "{:?}", d.st.tasks[1].error);
    assert_eq!(d.st.status, RunStatus::Failed);
}
