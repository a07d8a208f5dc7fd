//! Property tests: random and mutated documents never panic the validator, and whatever
//! it reports points inside the file.

use llmo_core::source::SourceFile;
use llmo_core::validate::Validator;
use proptest::prelude::*;

const EXAMPLES: &[&str] = &[
    include_str!("../../../workflows/article-pipeline.yaml"),
    include_str!("../../../workflows/nightly-digest.yaml"),
    include_str!("../../../workflows/document-intake.yaml"),
    include_str!("../../../workflows/simple-inference.yaml"),
];

fn validate(text: &str) {
    thread_local! {
        static V: Validator = Validator::default();
    }
    V.with(|v| {
        let src = SourceFile::new("prop.yaml", text);
        let outcome = v.validate(&src);
        let lines = src.lines() as u32;
        for d in &outcome.report.diagnostics {
            assert!(!d.message.is_empty());
            if let Some(s) = d.span {
                assert!(s.start.line >= 1 && s.start.line <= lines.max(1), "{d:?} in {lines} lines");
            }
        }
        // Rendering must not panic either (miette computes snippets from the spans).
        let _ = outcome.report.miette();
        if outcome.checked.is_some() {
            assert_eq!(outcome.report.errors(), 0);
        }
    });
}

#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, String),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    Truncate(usize),
    Replace(String, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    let yamlish = prop::sample::select(vec![
        ":",
        "- ",
        "{",
        "}",
        "[",
        "]",
        "&a ",
        "*a",
        "\n",
        "  ",
        "\t",
        "#",
        "\"",
        "'",
        "{{",
        "}}",
        "{%",
        "|",
        ">",
        "? ",
        "!!str ",
        "depends_on: [",
        "tasks.",
        "inputs.",
        "item",
        "~",
        "null",
        "0x",
        "1e999",
        "é",
        "\u{0}",
        "---\n",
        "<<: *a\n",
    ])
    .prop_map(str::to_string);
    let words = prop::sample::select(vec![
        "outline",
        "draft",
        "llm",
        "http",
        "60s",
        "fail",
        "continue",
        "for_each",
        "when",
        "id",
        "type",
        "with",
        "spec",
        "tasks",
        "depends_on",
        "fallback",
        "translate",
        "score",
        "publish",
    ])
    .prop_map(str::to_string);
    prop_oneof![
        (any::<usize>(), 0usize..40).prop_map(|(a, n)| Edit::Delete(a, n)),
        (any::<usize>(), yamlish).prop_map(|(a, s)| Edit::Insert(a, s)),
        any::<usize>().prop_map(Edit::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        any::<usize>().prop_map(Edit::Truncate),
        (words.clone(), words).prop_map(|(a, b)| Edit::Replace(a, b)),
    ]
}

fn apply(doc: &str, e: &Edit) -> String {
    let chars: Vec<char> = doc.chars().collect();
    let at = |a: usize| if chars.is_empty() { 0 } else { a % (chars.len() + 1) };
    match e {
        Edit::Delete(a, n) => {
            let s = at(*a);
            let end = (s + n).min(chars.len());
            chars[..s].iter().chain(&chars[end..]).collect()
        }
        Edit::Insert(a, text) => {
            let s = at(*a);
            chars[..s].iter().collect::<String>() + text + &chars[s..].iter().collect::<String>()
        }
        Edit::Truncate(a) => chars[..at(*a)].iter().collect(),
        Edit::Replace(a, b) => doc.replacen(a.as_str(), b, 1),
        Edit::DuplicateLine(a) => {
            let mut lines: Vec<&str> = doc.split('\n').collect();
            let i = a % lines.len();
            lines.insert(i, lines[i]);
            lines.join("\n")
        }
        Edit::SwapLines(a, b) => {
            let mut lines: Vec<&str> = doc.split('\n').collect();
            let (i, j) = (a % lines.len(), b % lines.len());
            lines.swap(i, j);
            lines.join("\n")
        }
    }
}

/// Random JSON trees (JSON is YAML) shaped loosely like workflows.
fn json_tree() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let key = prop::sample::select(vec![
        "apiVersion",
        "kind",
        "metadata",
        "name",
        "spec",
        "tasks",
        "id",
        "type",
        "with",
        "depends_on",
        "inputs",
        "outputs",
        "when",
        "for_each",
        "retry",
        "timeout",
        "on_failure",
        "fallback",
        "schedule",
        "cron",
        "rate",
        "events",
        "pattern",
        "budget",
        "on",
        "failure",
        "prompt",
        "model",
        "checks",
        "kind",
        "max_attempts",
        "backoff",
        "default",
        "enum",
        "items",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(vec![
            "llm-orchestrator/v1",
            "Workflow",
            "llm",
            "http",
            "a",
            "b",
            "60s",
            "1x",
            "{{ tasks.a.output }}",
            "{{ item }}",
            "{{ inputs.x }}",
            "0 6 * * ? *",
            "fail",
            "continue",
            "tasks.a.output.ok",
            "{% for %}",
        ])
        .prop_map(|s| Value::String(s.to_string())),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 128, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}") {
        validate(&text);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        validate(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn mutated_examples_never_panic(which in 0..EXAMPLES.len(), edits in prop::collection::vec(edit(), 1..6)) {
        let mut doc = EXAMPLES[which].to_string();
        for e in &edits {
            doc = apply(&doc, e);
        }
        validate(&doc);
    }

    #[test]
    fn random_structures_never_panic(tree in json_tree()) {
        validate(&tree.to_string());
        validate(&serde_json::to_string_pretty(&tree).unwrap());
    }
}
