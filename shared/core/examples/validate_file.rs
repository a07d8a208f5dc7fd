//! Times the cold path's pieces in one process: building the validator (the schema then
//! compiles on its own thread, so the first validation includes what is left of it), then
//! validating a file N times. Uses the system allocator, so `valgrind --tool=dhat` sees every
//! allocation. `cargo run --release -p llmo-core --example validate_file -- FILE [N]`
use std::time::Instant;
fn main() {
    let t0 = Instant::now();
    let path = std::env::args().nth(1).expect("FILE");
    let n: usize = std::env::args().nth(2).map_or(1, |s| s.parse().expect("N"));
    let text = std::fs::read_to_string(&path).expect("readable");
    let v = llmo_core::validate::Validator::default();
    let t1 = Instant::now();
    let src = llmo_core::source::SourceFile::new(path, text);
    for _ in 0..n {
        let t = Instant::now();
        let out = v.validate(&src);
        assert!(out.checked.is_some(), "{:?}", out.report);
        eprintln!("validate {:.2} ms", t.elapsed().as_secs_f64() * 1e3);
    }
    eprintln!("validator built (schema compile started) in {:.2} ms", (t1 - t0).as_secs_f64() * 1e3);
}
