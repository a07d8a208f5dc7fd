//! Typed run inputs: checking values against their declarations.
//!
//! Used by the validator (defaults, enums, schedule inputs) and by every entry point that
//! starts a run (CLI `--input`, API, schedules, events), so a run never starts with inputs
//! its workflow did not declare or with values of the wrong type.

use indexmap::IndexMap;
use serde_json::{Map, Value};

use crate::model::{InputSpec, InputType};

/// One problem with one input value. `path` is relative to the input (`""`, `/0`, ...).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct InputError {
    pub input: String,
    pub path: String,
    pub message: String,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Checks one value against its declaration; returns every problem found.
pub fn check_value(spec: &InputSpec, v: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    check_into(spec, v, String::new(), &mut out);
    out
}

fn check_into(spec: &InputSpec, v: &Value, path: String, out: &mut Vec<(String, String)>) {
    let ok = match (spec.ty, v) {
        (InputType::String, Value::String(_)) => true,
        (InputType::Number, Value::Number(_)) => true,
        (InputType::Integer, Value::Number(n)) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        (InputType::Boolean, Value::Bool(_)) => true,
        (InputType::Array, Value::Array(_)) => true,
        (InputType::Object, Value::Object(_)) => true,
        _ => false,
    };
    if !ok {
        out.push((path, format!("expected {}, found {} `{}`", spec.ty, type_name(v), short(v))));
        return;
    }
    if let Some(allowed) = &spec.enum_values
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(short).collect();
        out.push((path.clone(), format!("`{}` is not one of: {}", short(v), list.join(", "))));
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = spec.minimum
            && n < min
        {
            out.push((path.clone(), format!("{n} is less than the minimum {min}")));
        }
        if let Some(max) = spec.maximum
            && n > max
        {
            out.push((path.clone(), format!("{n} is more than the maximum {max}")));
        }
    }
    let len = match v {
        Value::String(s) => Some(s.chars().count() as u64),
        Value::Array(a) => Some(a.len() as u64),
        _ => None,
    };
    if let Some(len) = len {
        if let Some(min) = spec.min_length
            && len < min
        {
            out.push((path.clone(), format!("length {len} is less than the minimum {min}")));
        }
        if let Some(max) = spec.max_length
            && len > max
        {
            out.push((path.clone(), format!("length {len} is more than the maximum {max}")));
        }
    }
    if let (Some(items), Value::Array(a)) = (&spec.items, v) {
        for (i, item) in a.iter().enumerate() {
            check_into(items, item, format!("{path}/{i}"), out);
        }
    }
}

/// A value as a message shows it: strings bare, others as JSON, cut at 40 characters.
pub(crate) fn short(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.chars().count() > 40 { format!("{}…", s.chars().take(40).collect::<String>()) } else { s }
}

/// Checks edits to a run's inputs (a redrive with edited inputs): every edited name must be
/// declared, and the inputs with the edits applied must check as a run's inputs would.
pub fn check_edits(
    decl: &IndexMap<String, InputSpec>,
    current: &Map<String, Value>,
    edits: &Map<String, Value>,
) -> Result<(), Vec<InputError>> {
    let mut merged = current.clone();
    for (k, v) in edits {
        merged.insert(k.clone(), v.clone());
    }
    resolve_inputs(decl, &merged).map(|_| ())
}

/// Checks the inputs given to a run and fills in defaults. Unknown inputs, missing required
/// inputs and ill-typed values are all reported at once. Defaults are not checked again
/// here: the validator checks them against their declaration.
pub fn resolve_inputs(
    decl: &IndexMap<String, InputSpec>,
    given: &Map<String, Value>,
) -> Result<Map<String, Value>, Vec<InputError>> {
    let mut errors = Vec::new();
    let mut out = Map::new();
    for name in given.keys() {
        if !decl.contains_key(name) {
            let hint = crate::diagnostic::did_you_mean(name, decl.keys().map(String::as_str))
                .map(|h| format!("; {h}"))
                .unwrap_or_default();
            errors.push(InputError {
                input: name.clone(),
                path: String::new(),
                message: format!("unknown input `{name}`{hint}"),
            });
        }
    }
    for (name, spec) in decl {
        match given.get(name) {
            None if spec.default.is_some() => {
                out.insert(name.clone(), spec.default.clone().unwrap_or_default());
            }
            Some(v) => {
                for (path, message) in check_value(spec, v) {
                    errors.push(InputError { input: name.clone(), path, message });
                }
                out.insert(name.clone(), v.clone());
            }
            None if spec.required => errors.push(InputError {
                input: name.clone(),
                path: String::new(),
                message: format!("missing required input `{name}`"),
            }),
            None => {
                out.insert(name.clone(), Value::Null);
            }
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> InputSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn values_are_checked_deeply() {
        let s = spec(json!({"type": "array", "items": {"type": "string", "enum": ["fr", "de"]}, "max_length": 2}));
        assert!(check_value(&s, &json!(["fr"])).is_empty());
        let errs = check_value(&s, &json!(["fr", "es", 3]));
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert_eq!(errs[1].0, "/1");
        assert!(check_value(&spec(json!({"type": "integer"})), &json!(2.0)).is_empty());
        assert_eq!(check_value(&spec(json!({"type": "integer"})), &json!(2.5)).len(), 1);
    }

    #[test]
    fn resolve_fills_defaults_and_reports_everything() {
        let decl: IndexMap<String, InputSpec> = serde_json::from_value(json!({
            "topic": {"type": "string", "required": true},
            "n": {"type": "integer", "default": 3},
        }))
        .unwrap();
        let ok = resolve_inputs(&decl, json!({"topic": "x"}).as_object().unwrap()).unwrap();
        assert_eq!(Value::Object(ok), json!({"topic": "x", "n": 3}));
        let errs = resolve_inputs(&decl, json!({"topik": "x", "n": "3"}).as_object().unwrap()).unwrap_err();
        let msgs: Vec<&str> = errs.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert!(msgs[0].contains("did you mean `topic`"));
    }
}
