fn main() {
    let shape = match std::env::args().nth(1).as_deref() {
        Some("fan") => llmo_core::synth::Shape::FanOutFanIn,
        Some("layered") => llmo_core::synth::Shape::Layered { width: 100 },
        _ => llmo_core::synth::Shape::Chain,
    };
    let text = llmo_core::synth::workflow_yaml(shape, 10_000);
    let v = llmo_core::validate::Validator::default();
    let src = llmo_core::source::SourceFile::new("x", text);
    for _ in 0..3 {
        assert!(v.validate(&src).checked.is_some());
    }
}
