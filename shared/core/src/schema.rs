//! The JSON Schema of the workflow format, generated from the Rust types.
//!
//! The committed copy (`schema/workflow.schema.json`) is what editors use
//! (`# yaml-language-server: $schema=...`); a test keeps it equal to this output. Task `with`
//! blocks are tied to their type with `if/then`, one branch per registered task type, so a
//! registry with custom types yields a schema that knows them too.

use serde_json::{Value, json};

use crate::model::Workflow;
use crate::tasks::Registry;

/// The schema's `$id`.
pub const SCHEMA_ID: &str = "https://llm-orchestrator.dev/schema/v1/workflow.schema.json";

/// Generates the workflow schema for the task types in `registry`.
pub fn workflow_schema(registry: &Registry) -> Value {
    let mut root = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<Workflow>()
        .to_value();
    root["$id"] = json!(SCHEMA_ID);
    strip_null(&mut root);
    let names: Vec<&str> = registry.names().collect();
    let mut branches = Vec::new();
    for t in registry.iter() {
        let mut with = t.with_schema.clone();
        strip_null(&mut with);
        if let Some(obj) = with.as_object_mut() {
            obj.remove("$schema");
            if let Some(Value::Object(defs)) = obj.remove("$defs") {
                let root_defs = root["$defs"].as_object_mut().expect("root schema has $defs");
                for (k, v) in defs {
                    root_defs.entry(k).or_insert(v);
                }
            }
        }
        let def = format!("with_{}", t.name);
        if let Some(obj) = with.as_object_mut() {
            obj.insert("title".into(), json!(format!("with ({})", t.name)));
            obj.entry("description").or_insert(json!(t.description));
        }
        root["$defs"][&def] = with;
        branches.push(json!({
            "if": { "properties": { "type": { "const": t.name } }, "required": ["type"] },
            "then": { "properties": { "with": { "$ref": format!("#/$defs/{def}") } } }
        }));
    }
    for owner in ["Task", "Hook"] {
        let node = &mut root["$defs"][owner];
        node["allOf"] = Value::Array(branches.clone());
        node["properties"]["type"]["examples"] = json!(names);
    }
    root
}

/// Optional fields are written as absent, never as `null`: drop the `null` alternative
/// schemars adds for `Option<T>`, which gives editors and error messages one schema to follow.
fn strip_null(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let null = json!({"type": "null"});
            if let Some(Value::Array(any)) = m.get("anyOf")
                && any.len() == 2
                && any.contains(&null)
            {
                let other = any.iter().find(|x| **x != null).cloned();
                m.remove("anyOf");
                if let Some(Value::Object(o)) = other {
                    for (k, val) in o {
                        m.entry(k).or_insert(val);
                    }
                }
            }
            if let Some(Value::Array(types)) = m.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let t = types[0].clone();
                    m.insert("type".into(), t);
                }
            }
            if m.get("default") == Some(&Value::Null) {
                m.remove("default");
            }
            m.values_mut().for_each(strip_null);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_null),
        _ => {}
    }
}

/// The schema as committed: pretty JSON with a trailing newline.
pub fn workflow_schema_text(registry: &Registry) -> String {
    let mut s = serde_json::to_string_pretty(&workflow_schema(registry)).expect("schema serializes");
    s.push('\n');
    s
}
