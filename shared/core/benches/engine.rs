//! The engine's transition function alone: 10,000-task runs with a no-op executor and no
//! store, i.e. the ceiling any runtime built on it can reach.
//!
//! `cargo bench -p llmo-core --bench engine`. Figures go to BENCHMARKS.md.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::VecDeque;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use llmo_core::engine::{AttemptResult, Command, Event, Plan, RunStatus, Usage};
use llmo_core::source::SourceFile;
use llmo_core::synth::{Shape, workflow_yaml};
use llmo_core::validate::Validator;
use serde_json::Value;

/// Runs one workflow to the end; returns the number of attempts executed.
fn run(plan: &Plan) -> usize {
    let mut st = plan.new_run("bench", serde_json::Map::new());
    let mut queue: VecDeque<Command> = plan.apply(&mut st, &Event::Start, 0).unwrap().into();
    let mut executed = 0;
    while let Some(c) = queue.pop_front() {
        if let Command::Execute { task, item, attempt } = c {
            executed += 1;
            let result = AttemptResult::Succeeded { output: Value::Null.into(), usage: Usage::default() };
            let event = Event::finished(task, item, attempt, result);
            queue.extend(plan.apply(&mut st, &event, 0).unwrap());
        }
    }
    assert_eq!(st.status, RunStatus::Succeeded);
    executed
}

fn bench(c: &mut Criterion) {
    let validator = Validator::default();
    let mut group = c.benchmark_group("engine");
    group.sample_size(20);
    for shape in [Shape::Chain, Shape::FanOutFanIn, Shape::Layered { width: 100 }] {
        let n = 10_000;
        let checked =
            validator.validate(&SourceFile::new("bench.yaml", workflow_yaml(shape, n))).checked.expect("valid");
        let plan = Plan::new(checked);
        assert_eq!(run(&plan), n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new(shape.name(), n), &plan, |b, plan| b.iter(|| run(plan)));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
