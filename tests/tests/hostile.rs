//! Hostile input is refused with a clear message, fast, without exhausting memory.
//!
//! The time bounds here are generous guards against hangs (debug builds, shared CI
//! machines); the release-build figures are in BENCHMARKS.md.

use std::time::{Duration, Instant};

use llmo_core::source::SourceFile;
use llmo_core::synth::{Shape, workflow_yaml};
use llmo_core::validate::{Outcome, Validator};

fn check(text: String) -> (Outcome, Duration) {
    let validator = Validator::default();
    let start = Instant::now();
    let outcome = validator.validate(&SourceFile::new("hostile.yaml", text));
    (outcome, start.elapsed())
}

fn only_error(o: &Outcome) -> (&'static str, String) {
    assert_eq!(o.report.errors(), 1, "{:#?}", o.report.records());
    let d = &o.report.diagnostics[0];
    (d.code, d.message.clone())
}

const GUARD: Duration = Duration::from_secs(10);

#[test]
fn billion_laughs_is_refused() {
    let mut doc = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let p = i - 1;
        let refs = vec![format!("*a{p}"); 10].join(", ");
        doc.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    let (o, t) = check(doc);
    let (code, msg) = only_error(&o);
    assert_eq!(code, "WF002");
    assert!(msg.contains("aliases expand to more than"), "{msg}");
    assert!(t < GUARD, "{t:?}");
}

/// 801 aliases of a 1 MB anchored string: 801 nodes, 800 MB once expanded (it took
/// `llmo validate` to 907 MB). Refused by the bytes the aliases copy, in a file of 1 MB.
#[test]
fn aliases_of_a_long_string_are_refused_by_their_bytes() {
    let mut doc = format!(
        "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: {{ name: w, description: &d \"{}\" }}\nspec:\n  tasks:\n",
        "x".repeat(1_000_000)
    );
    for i in 0..801 {
        doc.push_str(&format!("    - {{ id: t{i}, type: transform, with: {{ output: *d }} }}\n"));
    }
    let (o, t) = check(doc);
    let (code, msg) = only_error(&o);
    assert_eq!(code, "WF002");
    assert!(msg.contains("aliases expand to more than 4194304 bytes"), "{msg}");
    assert!(t < GUARD, "{t:?}");
}

#[test]
fn deep_nesting_is_refused() {
    for doc in
        ["[".repeat(1_000_000), "{a: ".repeat(200_000), (0..1_000).map(|i| format!("{}k:\n", " ".repeat(i))).collect()]
    {
        let (o, t) = check(doc);
        let (code, msg) = only_error(&o);
        assert_eq!(code, "WF002", "{msg}");
        assert!(msg.contains("nesting is deeper than 64 levels"), "{msg}");
        assert!(t < GUARD, "{t:?}");
    }
}

#[test]
fn oversized_files_are_refused_before_parsing() {
    let doc = format!("# {}\n", "x".repeat(11 * 1024 * 1024));
    let (o, t) = check(doc);
    let (code, msg) = only_error(&o);
    assert_eq!(code, "WF002");
    assert!(msg.contains("limit is 10485760 bytes"), "{msg}");
    assert!(t < Duration::from_secs(1), "{t:?}");
}

#[test]
fn more_than_ten_thousand_tasks_are_refused_and_ten_thousand_accepted() {
    let (o, t) = check(workflow_yaml(Shape::Chain, 10_001));
    let (code, msg) = only_error(&o);
    assert_eq!(code, "WF002");
    assert!(msg.contains("10001 tasks; the limit is 10000"), "{msg}");
    assert!(t < GUARD, "{t:?}");
    let (o, _) = check(workflow_yaml(Shape::Layered { width: 100 }, 10_000));
    assert!(o.checked.is_some(), "{:?}", o.report.records().first());
}

#[test]
fn a_file_full_of_errors_is_reported_in_full_and_fast() {
    // 10,000 tasks, each with an unknown field and a reference to a task it does not depend on.
    let text = workflow_yaml(Shape::Chain, 10_000)
        .replace("      type: llm\n", "      type: llm\n      colour: red\n")
        .replace("depends_on: [t", "depends_on: [x");
    let (o, t) = check(text);
    assert!(o.report.errors() >= 20_000, "{}", o.report.errors());
    assert!(t < GUARD, "{t:?}");
}

#[test]
fn odd_but_valid_yaml_does_not_break_the_validator() {
    for doc in [
        String::new(),
        "~".to_string(),
        "- a\n- b\n".to_string(),
        "\"just a string\"".to_string(),
        "? [complex, key]\n: value\n".to_string(),
        "a: !!binary aGVsbG8=\n".to_string(),
        "\u{feff}apiVersion: llm-orchestrator/v1\n".to_string(),
        format!("spec: {{ tasks: [{}] }}", "{id: a, type: llm}, ".repeat(50)),
        format!("x: \"{}\"\n", "é".repeat(100_000)),
    ] {
        let (o, t) = check(doc.clone());
        assert!(o.report.has_errors(), "{doc:.60}");
        assert!(t < GUARD);
    }
}
