//! Every example in `workflows/` validates cleanly, draws, and matches the committed JSON
//! Schema the way an editor would check it; the committed schema is the generated one.

use std::path::{Path, PathBuf};

use llmo_core::schema::workflow_schema_text;
use llmo_core::source::SourceFile;
use llmo_core::tasks::Registry;
use llmo_core::validate::Validator;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("workflows"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        // Their test cases (`llmo test`) sit beside them.
        .filter(|p| !p.to_string_lossy().ends_with(".test.yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_example_validates_without_diagnostics_and_draws() {
    let validator = Validator::default();
    let files = examples();
    assert!(files.len() >= 4, "at least four examples expected, found {}", files.len());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let outcome = validator.validate(&SourceFile::new(f.display().to_string(), text));
        assert!(outcome.report.diagnostics.is_empty(), "{}: {:#?}", f.display(), outcome.report.records());
        let checked = outcome.checked.expect("valid");
        let ids: Vec<&str> = checked.workflow.spec.tasks.iter().map(|t| t.id.as_str()).collect();
        let mermaid = checked.dag.mermaid(|i| ids[i].to_string());
        let dot = checked.dag.dot("x", |i| ids[i].to_string());
        for t in &checked.workflow.spec.tasks {
            assert!(mermaid.contains(&format!("    {}[", t.id)), "{} missing from mermaid", t.id);
            assert!(dot.contains(&format!("\"{}\" [label", t.id)), "{} missing from dot", t.id);
            for d in &t.depends_on {
                assert!(mermaid.contains(&format!("{d} --> {}", t.id)));
            }
        }
    }
}

#[test]
fn the_examples_cover_the_four_kinds_of_workflow() {
    let validator = Validator::default();
    let all: Vec<_> = examples()
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            validator.validate(&SourceFile::new("x", text)).checked.unwrap().workflow
        })
        .collect();
    assert!(all.iter().any(|w| w.spec.tasks.len() == 1 && w.spec.tasks[0].ty == "llm"), "simple inference");
    assert!(
        all.iter().any(|w| w.spec.tasks.iter().any(|t| t.ty == "evaluate")
            && w.spec.tasks.iter().any(|t| t.on_failure.as_ref().and_then(|f| f.fallback()).is_some())),
        "pipeline with evaluation and fallback"
    );
    assert!(
        all.iter().any(|w| w.spec.schedule.is_some() && w.spec.tasks.iter().any(|t| t.for_each.is_some())),
        "scheduled batch with for_each"
    );
    assert!(all.iter().any(|w| !w.spec.events.is_empty()), "event-triggered");
}

#[test]
fn committed_schema_is_the_generated_one() {
    let path = root().join("schema/workflow.schema.json");
    let generated = workflow_schema_text(&Registry::default());
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "schema/workflow.schema.json is stale: run `cargo run -p llmo-cli -- schema -o schema/workflow.schema.json`"
    );
}

#[test]
fn examples_match_the_committed_schema_as_an_editor_sees_it() {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("schema/workflow.schema.json")).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    for f in examples() {
        let text = std::fs::read_to_string(&f).unwrap();
        let doc = llmo_core::yaml::load(&text, Default::default()).unwrap().json;
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| format!("{} {e}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", f.display());
    }
    // And the schema rejects what editors should flag.
    let bad = serde_json::json!({"apiVersion": "llm-orchestrator/v1", "kind": "Workflow", "metadata": {"name": "x"},
        "spec": {"tasks": [{"id": "a", "type": "llm", "with": {"prompt": "hi"}}]}});
    assert!(!validator.is_valid(&bad), "llm task without model must be flagged");
}

/// The examples' triggers as `llmo infra workflows/*.yaml --tenant examples` generates them.
fn generated_triggers() -> serde_json::Value {
    let validator = Validator::default();
    let checked: Vec<_> = examples()
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            validator.validate(&SourceFile::new(f.display().to_string(), text)).checked.expect("examples validate")
        })
        .collect();
    let workflows: Vec<_> = checked.iter().map(|c| &c.workflow).collect();
    let opts = llmo_core::triggers::Options { tenant: "examples".into(), flexible_window_minutes: 0 };
    llmo_core::triggers::cloudformation(&workflows, &opts).unwrap()
}

#[test]
fn committed_triggers_are_the_generated_ones() {
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("infra/generated.yaml")).unwrap()).unwrap();
    assert!(
        committed == generated_triggers(),
        "infra/generated.yaml is stale: run `make infra` (llmo infra workflows/*.yaml --tenant examples -o infra/generated.yaml)"
    );
}

#[test]
fn the_examples_schedule_and_event_trigger_deploy_as_written() {
    let t = generated_triggers();
    let r = &t["Resources"];
    // nightly-digest: its cron, time zone and inputs, and the tick's idempotency key.
    let s = &r["NightlyDigestSchedule"];
    assert_eq!(s["Type"], "AWS::Scheduler::Schedule");
    let p = &s["Properties"];
    assert_eq!(p["ScheduleExpression"], "cron(0 6 ? * MON-FRI *)");
    assert_eq!(p["ScheduleExpressionTimezone"], "Europe/Paris");
    assert_eq!(p["State"], "ENABLED");
    assert_eq!(p["FlexibleTimeWindow"], serde_json::json!({"Mode": "OFF"}));
    assert_eq!(p["Target"]["Arn"], serde_json::json!({"Ref": "ScheduleFunctionArn"}));
    let input: serde_json::Value = serde_json::from_str(p["Target"]["Input"].as_str().unwrap()).unwrap();
    assert_eq!(
        input,
        serde_json::json!({
            "tenant": "examples", "workflow": "nightly-digest",
            "inputs": {"queue": "support", "max_tickets": 100},
            "idempotency_key": "<aws.scheduler.schedule-arn>@<aws.scheduler.scheduled-time>",
        })
    );
    // document-intake: its event pattern as written, and an input template that hands the
    // function the trigger's name and the event.
    let rule = &r["DocumentIntakePdfUploadedRule"]["Properties"];
    let text = std::fs::read_to_string(root().join("workflows/document-intake.yaml")).unwrap();
    let wf = Validator::default().validate(&SourceFile::new("d.yaml", text)).checked.unwrap().workflow;
    assert_eq!(rule["EventPattern"], serde_json::Value::Object(wf.spec.events[0].pattern.clone()));
    let target = &rule["Targets"][0];
    assert_eq!(target["InputTransformer"]["InputPathsMap"]["detail"], "$.detail");
    let filled = target["InputTransformer"]["InputTemplate"]
        .as_str()
        .unwrap()
        .replace("<detail>", r#"{"object": {"key": "a.pdf"}}"#)
        .replace(['<', '>'], "");
    let filled: serde_json::Value = serde_json::from_str(&filled).expect("the template is JSON once filled");
    assert_eq!(filled["trigger"], "pdf_uploaded");
    assert_eq!(filled["workflow"], "document-intake");
    assert_eq!(filled["event"]["detail"]["object"]["key"], "a.pdf");
    assert_eq!(r["DocumentIntakePdfUploadedRulePermission"]["Properties"]["Principal"], "events.amazonaws.com");
}
