#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
fn main() {
    let text = llmo_core::synth::workflow_yaml(llmo_core::synth::Shape::Chain, 10_000);
    let v = llmo_core::validate::Validator::default();
    let src = llmo_core::source::SourceFile::new("x", text.clone());
    for _ in 0..20 { assert!(v.validate(&src).checked.is_some()); }
}
