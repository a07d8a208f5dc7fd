//! Pass 2: JSON Schema errors translated into diagnostics at the field's line and column.

use super::*;

impl Run<'_> {
    pub(super) fn schema_error(&mut self, e: &jsonschema::ValidationError<'_>, help: Option<&'static str>) {
        let pointer = e.instance_path().as_str().to_string();
        let schema_path = e.schema_path().as_str().to_string();
        let help = help.or_else(|| form_help(&schema_path));
        let instance = e.instance();
        match e.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                let allowed = self.allowed_properties(&schema_path);
                for name in unexpected {
                    let p = format!("{pointer}/{}", name.replace('~', "~0").replace('/', "~1"));
                    let (path, span) = self.loc_key(&p);
                    let hint = self
                        .suggest(name, allowed.iter().map(String::as_str))
                        .or_else(|| (!allowed.is_empty()).then(|| format!("allowed here: {}", allowed.join(", "))));
                    self.push(
                        Diagnostic::error(UNKNOWN_FIELD, format!("unknown field `{name}`"))
                            .at(path, span)
                            .label("not a field here")
                            .help_opt(hint),
                    );
                }
            }
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().unwrap_or("?");
                let (path, span) = self.loc_key(&pointer);
                self.push(
                    Diagnostic::error(MISSING_FIELD, format!("missing required field `{name}`"))
                        .at(path, span)
                        .label(format!("`{name}` is required here"))
                        .help_opt(help.map(str::to_string)),
                );
            }
            ValidationErrorKind::Pattern { pattern } => {
                let value = short(instance);
                let (msg, hint) = if pattern == DURATION_PATTERN {
                    (
                        format!("invalid duration `{value}`"),
                        "write a number and a unit: 500ms, 30s, 5m, 1h30m, 2d".to_string(),
                    )
                } else if pattern == IDENT_PATTERN {
                    let fixed: String =
                        value.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
                    (
                        format!("`{value}` is not a valid identifier"),
                        format!(
                            "use letters, digits and `_`, not starting with a digit (ids are read as `tasks.<id>` in templates), e.g. `{fixed}`"
                        ),
                    )
                } else if pattern == NAME_PATTERN {
                    (
                        format!("invalid workflow name `{value}`"),
                        "use lower-case letters, digits and `-` (at most 63 characters), e.g. `article-pipeline`"
                            .to_string(),
                    )
                } else if pattern == HOST_PATTERN {
                    (
                        format!("`{value}` is not a host"),
                        "write a host name without scheme, port or path (`api.example.com`), or `*.example.com` for its subdomains"
                            .to_string(),
                    )
                } else {
                    (format!("`{value}` does not match the pattern `{pattern}`"), String::new())
                };
                let (path, span) = self.loc(&pointer);
                self.push(Diagnostic::error(SCHEMA, msg).at(path, span).help_opt((!hint.is_empty()).then_some(hint)));
            }
            ValidationErrorKind::Type { kind } => {
                let expected = format!("{kind:?}")
                    .replace("Single(", "")
                    .replace("Multiple(", "")
                    .replace(')', "")
                    .to_lowercase()
                    .replace("object", "mapping")
                    .replace("array", "list");
                let hint = if schema_path.starts_with("/$defs/Duration") {
                    Some("durations are strings with a unit, e.g. `60s`".to_string())
                } else {
                    help.map(str::to_string)
                };
                let (path, span) = self.loc(&pointer);
                self.push(
                    Diagnostic::error(
                        SCHEMA,
                        format!("expected {expected}, found {} `{}`", json_type(instance), short(instance)),
                    )
                    .at(path, span)
                    .help_opt(hint),
                );
            }
            ValidationErrorKind::Enum { options } => {
                let opts: Vec<String> = options.as_array().map(|a| a.iter().map(short).collect()).unwrap_or_default();
                let value = short(instance);
                let hint = self.suggest(&value, opts.iter().map(String::as_str)).or(help.map(str::to_string));
                let (path, span) = self.loc(&pointer);
                self.push(
                    Diagnostic::error(SCHEMA, format!("`{value}` is not one of: {}", opts.join(", ")))
                        .at(path, span)
                        .help_opt(hint),
                );
            }
            ValidationErrorKind::Constant { expected_value } => {
                let (path, span) = self.loc(&pointer);
                self.push(
                    Diagnostic::error(
                        SCHEMA,
                        format!("expected `{}`, found `{}`", short(expected_value), short(instance)),
                    )
                    .at(path, span)
                    .help_opt(help.map(str::to_string)),
                );
            }
            ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } => {
                self.alternatives(e, context, help);
            }
            _ => {
                let (path, span) = self.loc(&pointer);
                self.push(Diagnostic::error(SCHEMA, e.to_string()).at(path, span).help_opt(help.map(str::to_string)));
            }
        }
    }

    /// An `anyOf`/`oneOf` failure: find the alternative the author meant and report its
    /// errors, or list the alternatives.
    pub(super) fn alternatives(
        &mut self,
        e: &jsonschema::ValidationError<'_>,
        context: &[Vec<jsonschema::ValidationError<'static>>],
        help: Option<&'static str>,
    ) {
        let inst = e.instance_path().as_str();
        let tag_mismatch = |x: &jsonschema::ValidationError<'_>| {
            matches!(x.kind(), ValidationErrorKind::Constant { .. } | ValidationErrorKind::Enum { .. })
                && x.instance_path().as_str().len() > inst.len()
                && x.instance_path().as_str().starts_with(inst)
                && x.instance_path().as_str()[inst.len() + 1..].find('/').is_none()
        };
        let type_mismatch = |x: &jsonschema::ValidationError<'_>| {
            matches!(x.kind(), ValidationErrorKind::Type { .. }) && x.instance_path().as_str() == inst
        };
        // An enum written as one constant per alternative (documented enum variants).
        let consts: Vec<String> = context
            .iter()
            .filter_map(|b| {
                b.iter().find_map(|x| match x.kind() {
                    ValidationErrorKind::Constant { expected_value } if x.instance_path().as_str() == inst => {
                        Some(short(expected_value))
                    }
                    _ => None,
                })
            })
            .collect();
        if !context.is_empty() && consts.len() == context.len() {
            let value = short(e.instance());
            let hint = self.suggest(&value, consts.iter().map(String::as_str)).or(help.map(str::to_string));
            let (path, span) = self.loc(inst);
            self.push(
                Diagnostic::error(SCHEMA, format!("`{value}` is not one of: {}", consts.join(", ")))
                    .at(path, span)
                    .help_opt(hint),
            );
            return;
        }
        let viable: Vec<&Vec<_>> =
            context.iter().filter(|b| !b.iter().any(|x| tag_mismatch(x) || type_mismatch(x))).collect();
        if let Some(best) = viable.iter().min_by_key(|b| b.len()) {
            for x in best.iter() {
                self.schema_error(x, help);
            }
            return;
        }
        // No alternative fits: if they differ by a tag field (`kind`), say which tags exist.
        let mut tags: Vec<(String, String)> = Vec::new();
        for b in context {
            for x in b {
                if let ValidationErrorKind::Constant { expected_value } = x.kind()
                    && tag_mismatch(x)
                {
                    tags.push((x.instance_path().as_str().to_string(), short(expected_value)));
                }
            }
        }
        if let Some((tag_ptr, _)) = tags.first().cloned() {
            let field = tag_ptr.rsplit('/').next().unwrap_or("kind").to_string();
            let value = self.json.pointer(&tag_ptr).map(short).unwrap_or_default();
            let names: Vec<String> = tags.into_iter().map(|(_, v)| v).collect();
            let hint = self.suggest(&value, names.iter().map(String::as_str));
            let (path, span) = self.loc(&tag_ptr);
            self.push(
                Diagnostic::error(SCHEMA, format!("unknown {field} `{value}`; expected one of: {}", names.join(", ")))
                    .at(path, span)
                    .help_opt(hint),
            );
            return;
        }
        let (path, span) = self.loc(inst);
        self.push(
            Diagnostic::error(SCHEMA, format!("`{}` does not match any allowed form", short(e.instance())))
                .at(path, span)
                .help_opt(help.map(str::to_string)),
        );
    }

    /// Property names the schema allows where an `additionalProperties` error was raised.
    pub(super) fn allowed_properties(&self, schema_path: &str) -> Vec<String> {
        let parent = schema_path.strip_suffix("/additionalProperties").unwrap_or(schema_path);
        self.v
            .schema
            .pointer(parent)
            .and_then(|s| s.get("properties"))
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }
}
