#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::Instant;
fn main() {
    let text = llmo_core::synth::workflow_yaml(llmo_core::synth::Shape::Chain, 10_000);
    let mut best = [std::time::Duration::MAX; 4];
    for _ in 0..15 {
        let t = Instant::now();
        for e in saphyr_parser::Parser::new_from_str(&text) { e.unwrap(); }
        best[0] = best[0].min(t.elapsed());
        let t = Instant::now();
        let l = llmo_core::yaml::load(&text, Default::default()).unwrap();
        best[1] = best[1].min(t.elapsed());
        let t = Instant::now();
        drop(l);
        best[2] = best[2].min(t.elapsed());
        let v = llmo_core::validate::Validator::default();
        let src = llmo_core::source::SourceFile::new("x", text.clone());
        let t = Instant::now();
        let o = v.validate(&src);
        best[3] = best[3].min(t.elapsed());
        assert!(o.checked.is_some());
    }
    println!("parse {:?} load {:?} drop-loaded {:?} validate {:?}", best[0], best[1], best[2], best[3]);
}
