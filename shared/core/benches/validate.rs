//! Parse + validate generated 10,000-task workflows of three shapes.
//!
//! `cargo bench -p llmo-core --bench validate`. Figures go to BENCHMARKS.md.

// The same allocator as the `llmo` binary, so the figures are what users see.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use llmo_core::source::SourceFile;
use llmo_core::synth::{Shape, workflow_yaml};
use llmo_core::validate::Validator;

fn bench(c: &mut Criterion) {
    let validator = Validator::default();
    let mut group = c.benchmark_group("parse+validate");
    group.sample_size(20);
    for shape in [Shape::Chain, Shape::FanOutFanIn, Shape::Layered { width: 100 }] {
        let n = 10_000;
        let text = workflow_yaml(shape, n);
        let source = SourceFile::new(format!("{}.yaml", shape.name()), text.clone());
        // Make sure we measure a successful validation, not an early error.
        let outcome = validator.validate(&source);
        assert!(outcome.checked.is_some(), "{:?}", outcome.report.diagnostics.first());
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new(shape.name(), n), &source, |b, src| {
            b.iter(|| {
                let out = validator.validate(src);
                assert!(out.checked.is_some());
                out
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
