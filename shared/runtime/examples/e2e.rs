//! One 10,000-task run through the embedded driver with a no-op executor, reporting its
//! throughput and the process's peak memory (VmHWM): what `BENCHMARKS.md` quotes for memory.
//!
//! `cargo run --release -p llmo-runtime --example e2e -- <chain|fan|layered> <memory|sqlite|sqlite-fsync> [tasks]`

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::Instant;

use llmo_core::engine::{Plan, RunStatus};
use llmo_core::source::SourceFile;
use llmo_core::synth::{Shape, workflow_yaml};
use llmo_core::validate::Validator;
use llmo_runtime::driver::{Driver, Options};
use llmo_runtime::executor::{Noop, Registry};
use llmo_runtime::ports::SystemClock;
use llmo_runtime::store::{Durability, MemoryStore, RunStore, SqliteStore};

mod common;
use common::peak_rss_mb;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let shape = match args.get(1).map(String::as_str).unwrap_or("chain") {
        "chain" => Shape::Chain,
        "fan" => Shape::FanOutFanIn,
        "layered" => Shape::Layered { width: 100 },
        s => panic!("unknown shape {s}"),
    };
    let store_kind = args.get(2).cloned().unwrap_or_else(|| "memory".into());
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let dir = std::env::temp_dir().join(format!("llmo-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store: Arc<dyn RunStore> = match store_kind.as_str() {
        "memory" => Arc::new(MemoryStore::default()),
        "sqlite" => Arc::new(SqliteStore::open(&dir.join("runs.db"), Durability::Process).unwrap()),
        "sqlite-fsync" => Arc::new(SqliteStore::open(&dir.join("runs.db"), Durability::Power).unwrap()),
        s => panic!("unknown store {s}"),
    };
    let text = workflow_yaml(shape, n);
    let checked = Validator::default().validate(&SourceFile::new("e2e.yaml", text.clone())).checked.expect("valid");
    let inputs = llmo_core::inputs::resolve_inputs(&checked.workflow.spec.inputs, &Default::default()).unwrap();
    let mut reg = Registry::new();
    reg.register("llm", Arc::new(Noop(serde_json::json!({ "text": "ok" }))));
    let d = Driver {
        plan: Arc::new(Plan::new(checked)),
        store,
        executors: Arc::new(reg),
        clock: Arc::new(SystemClock::default()),
        blobs: None,
        options: Options::default(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let rss_before = peak_rss_mb();
    let t = Instant::now();
    let end = rt.block_on(d.start("e2e", inputs, "e2e.yaml", &text, &mut ())).unwrap();
    let took = t.elapsed();
    assert_eq!(end.state.status, RunStatus::Succeeded, "{:?}", end.state.error);
    println!(
        "{} {store_kind} {n} tasks: {:.1} ms, {:.0} tasks/s, peak RSS {:.0} MB (after setup {:.0} MB)",
        shape.name(),
        took.as_secs_f64() * 1e3,
        n as f64 / took.as_secs_f64(),
        peak_rss_mb(),
        rss_before
    );
    std::fs::remove_dir_all(&dir).ok();
}
