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
    let cases = [
        (Shape::Chain, 10_000),
        (Shape::FanOutFanIn, 10_000),
        (Shape::Layered { width: 100 }, 10_000),
        // The design's original target: 1,000 tasks in 100 ms.
        (Shape::Layered { width: 32 }, 1_000),
    ];
    for (shape, n) in cases {
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

    // One validation at a time, the machine idle in between (untimed): what a cold container
    // or one `llmo` command sees. Back to back (above), the thread that frees one validation's
    // tree still runs when the next validation starts and takes one of its cores.
    let mut group = c.benchmark_group("parse+validate, one at a time");
    group.sample_size(20);
    for (shape, n) in [(Shape::Layered { width: 100 }, 10_000), (Shape::Layered { width: 32 }, 1_000)] {
        let source = SourceFile::new(format!("{}.yaml", shape.name()), workflow_yaml(shape, n));
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new(shape.name(), n), &source, |b, src| {
            b.iter_custom(|iters| {
                let mut took = std::time::Duration::ZERO;
                for _ in 0..iters {
                    std::thread::sleep(std::time::Duration::from_millis(25));
                    let start = std::time::Instant::now();
                    let out = validator.validate(src);
                    took += start.elapsed();
                    assert!(out.checked.is_some());
                    drop(out);
                }
                took
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
