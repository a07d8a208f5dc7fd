//! The embedded runtime end to end: 10,000-task runs through the driver with a no-op
//! executor, every transition stored (in memory, or in SQLite at either durability), every
//! attempt's `with` rendered from its dependencies' outputs as in a real run.
//!
//! `cargo bench -p llmo-runtime --bench driver`. Figures go to BENCHMARKS.md.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use llmo_core::engine::{Plan, RunStatus};
use llmo_core::source::SourceFile;
use llmo_core::synth::{Shape, workflow_yaml};
use llmo_core::validate::Validator;
use llmo_runtime::driver::{Driver, Options};
use llmo_runtime::executor::{Noop, Registry};
use llmo_runtime::ports::SystemClock;
use llmo_runtime::store::{Durability, MemoryStore, RunStore, SqliteStore};

static RUN: AtomicU64 = AtomicU64::new(0);

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let validator = Validator::default();
    let dir = std::env::temp_dir().join(format!("llmo-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut reg = Registry::new();
    // The synthetic tasks are `llm` tasks whose prompts read their dependencies' `text`.
    reg.register("llm", Arc::new(Noop(serde_json::json!({ "text": "ok" }))));
    let reg = Arc::new(reg);
    let n = 10_000;
    // A fresh in-memory store per run (the CLI keeps one run per process); SQLite files grow.
    let stores: Vec<(&str, Option<Arc<dyn RunStore>>)> = vec![
        ("memory", None),
        ("sqlite", Some(Arc::new(SqliteStore::open(&dir.join("process.db"), Durability::Process).unwrap()))),
        ("sqlite-fsync", Some(Arc::new(SqliteStore::open(&dir.join("power.db"), Durability::Power).unwrap()))),
    ];
    for (store_name, store) in stores {
        let mut group = c.benchmark_group(format!("driver/{store_name}"));
        group.sample_size(10);
        group.throughput(Throughput::Elements(n as u64));
        for shape in [Shape::Chain, Shape::FanOutFanIn, Shape::Layered { width: 100 }] {
            let text = workflow_yaml(shape, n);
            let checked = validator.validate(&SourceFile::new("bench.yaml", text.clone())).checked.expect("valid");
            let inputs = llmo_core::inputs::resolve_inputs(&checked.workflow.spec.inputs, &Default::default()).unwrap();
            let mut d = Driver {
                plan: Arc::new(Plan::new(checked)),
                store: store.clone().unwrap_or_else(|| Arc::new(MemoryStore::default())),
                executors: reg.clone(),
                clock: Arc::new(SystemClock::default()),
                blobs: None,
                options: Options::default(),
            };
            group.bench_function(BenchmarkId::new(shape.name(), n), |b| {
                b.iter(|| {
                    if store.is_none() {
                        d.store = Arc::new(MemoryStore::default());
                    }
                    let id = format!("bench-{}", RUN.fetch_add(1, Ordering::Relaxed));
                    let end = rt.block_on(d.start(&id, inputs.clone(), "bench.yaml", &text, &mut ())).unwrap();
                    assert_eq!(end.state.status, RunStatus::Succeeded, "{:?}", end.state.error);
                })
            });
        }
        group.finish();
    }
    std::fs::remove_dir_all(&dir).ok();
}

criterion_group!(benches, bench);
criterion_main!(benches);
