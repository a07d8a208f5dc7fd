#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::Instant;
fn main() {
    for shape in [
        llmo_core::synth::Shape::Chain,
        llmo_core::synth::Shape::FanOutFanIn,
        llmo_core::synth::Shape::Layered { width: 100 },
    ] {
        let text = llmo_core::synth::workflow_yaml(shape, 10_000);
        let v = llmo_core::validate::Validator::default();
        let src = llmo_core::source::SourceFile::new("x", text.clone());
        let mut best = std::time::Duration::MAX;
        for _ in 0..10 {
            let t = Instant::now();
            let l = llmo_core::yaml::load(&text, Default::default()).unwrap();
            let t1 = t.elapsed();
            drop(l);
            let t7 = Instant::now();
            let out = v.validate(&src);
            let t8 = t7.elapsed();
            best = best.min(t8);
            assert!(out.checked.is_some());
            if best == t8 {
                print!("load {t1:?} full {t8:?}; ");
            }
        }
        println!("\n{:?} best {best:?}", shape);
    }
}
