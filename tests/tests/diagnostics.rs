//! Data-driven diagnostics tests: every `tests/fixtures/invalid/*.yaml` is validated and its
//! diagnostics (line:column code message) are compared with the `.expected` file beside it.
//!
//! Each fixture holds many mistakes, so these tests also show that one pass reports all of
//! them. After a deliberate change, regenerate with `UPDATE_EXPECT=1 cargo test -p llmo-tests`
//! and review the diff.

use std::path::Path;

use llmo_core::source::SourceFile;
use llmo_core::validate::Validator;

fn render(path: &Path, validator: &Validator) -> String {
    let text = std::fs::read_to_string(path).expect("fixture readable");
    let name = format!("fixtures/invalid/{}", path.file_name().unwrap().to_string_lossy());
    let outcome = validator.validate(&SourceFile::new(name, text));
    assert!(outcome.checked.is_none(), "{} should not validate", path.display());
    let mut out = String::new();
    for r in outcome.report.records() {
        let pos = match (r.line, r.column) {
            (Some(l), Some(c)) => format!("{l}:{c}"),
            _ => "-".to_string(),
        };
        let sev = match r.severity {
            llmo_core::diagnostic::Severity::Error => "error",
            llmo_core::diagnostic::Severity::Warning => "warning",
        };
        out.push_str(&format!("{pos} {sev} {} {}: {}\n", r.code, r.path, r.message));
        if let Some(h) = r.help {
            out.push_str(&format!("    help: {h}\n"));
        }
    }
    out
}

#[test]
fn invalid_fixtures_report_every_error_with_its_position() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/invalid");
    let validator = Validator::default();
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = Vec::new();
    let mut count = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries.into_iter().filter(|p| p.extension().is_some_and(|e| e == "yaml")) {
        count += 1;
        let actual = render(&path, &validator);
        let expected_path = path.with_extension("expected");
        if update {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != actual {
            failures.push(format!("{}:\n--- expected\n{expected}--- actual\n{actual}", path.display()));
        }
    }
    assert!(count >= 5, "fixtures missing");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
