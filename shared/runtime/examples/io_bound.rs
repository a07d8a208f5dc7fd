//! The embedded runtime on I/O-bound work: one run of a `for_each` of ITEMS model calls against
//! a local OpenAI-compatible server (`model_server`, another process, started here) that
//! answers after LATENCY ms, with IN_FLIGHT attempts at once. Reports the wall time beside the
//! concurrency-bound ideal (ITEMS / IN_FLIGHT x LATENCY) and this process's peak RSS.
//!
//!   cargo build --release -p llmo-runtime --examples
//!   target/release/examples/io_bound [ITEMS] [IN_FLIGHT] [LATENCY_MS] [--check]
//!
//! `--check` fails unless the wall time is within 10% of the ideal and the peak RSS is under
//! 150 MB (the targets of issue 15).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::Instant;

use llmo_core::engine::{Plan, RunStatus};
use llmo_core::source::SourceFile;
use llmo_core::validate::Validator;
use llmo_runtime::driver::{Driver, Options};
use llmo_runtime::ports::SystemClock;
use llmo_runtime::store::MemoryStore;

mod common;
use common::peak_rss_mb;
#[path = "common/local_model.rs"]
mod local_model;
use local_model::ModelServer;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let check = args.iter().any(|a| a == "--check");
    let nums: Vec<u64> = args.iter().skip(1).filter_map(|a| a.parse().ok()).collect();
    let items = nums.first().copied().unwrap_or(5_000);
    let in_flight = nums.get(1).copied().unwrap_or(100) as usize;
    let latency_ms = nums.get(2).copied().unwrap_or(200);
    let server = ModelServer::start(latency_ms);
    let config = server.config();
    let text = format!(
        "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: {{ name: io-bound }}\nspec:\n  tasks:\n    - id: ask\n      type: llm\n      for_each: \"range({items})\"\n      with: {{ provider: local, model: m, prompt: \"Item {{{{ item }}}}\", max_tokens: 5 }}\n"
    );
    let checked = Validator::default().validate(&SourceFile::new("io.yaml", text.clone())).checked.expect("valid");
    let inputs = llmo_core::inputs::resolve_inputs(&checked.workflow.spec.inputs, &Default::default()).unwrap();
    let d = Driver {
        plan: Arc::new(Plan::new(checked)),
        store: Arc::new(MemoryStore::default()),
        // The model server the config names listens on loopback.
        executors: Arc::new(
            llmo_runtime::Setup {
                egress: llmo_runtime::egress::Egress::loopback(),
                ..llmo_runtime::Setup::new(config, false)
            }
            .registry(),
        ),
        clock: Arc::new(SystemClock::default()),
        blobs: None,
        options: Options { concurrency: in_flight, ..Options::default() },
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let t = Instant::now();
    let end = rt.block_on(d.start("io", inputs, "io.yaml", &text, &mut ())).unwrap();
    let took = t.elapsed().as_secs_f64();
    drop(server);
    assert_eq!(end.state.status, RunStatus::Succeeded, "{:?}", end.state.error);
    let ideal = (items as f64 / in_flight as f64).ceil() * latency_ms as f64 / 1000.0;
    let rss = peak_rss_mb();
    println!(
        "io_bound: {items} model calls, {in_flight} in flight, {latency_ms} ms each: {took:.2} s (ideal {ideal:.2} s, {:+.1}%), peak RSS {rss:.0} MB",
        (took / ideal - 1.0) * 100.0
    );
    if check {
        assert!(took <= ideal * 1.10, "{took:.2} s is more than 10% over the ideal {ideal:.2} s");
        assert!(rss < 150.0, "peak RSS {rss:.0} MB is not under 150 MB");
        println!("check: within 10% of the ideal and under 150 MB");
    }
}
