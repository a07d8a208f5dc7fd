//! Templates and expressions, through minijinja.
//!
//! Strings in `with`, `outputs` and hooks are minijinja templates (`{{ tasks.a.output }}`);
//! `when` and `for_each` are minijinja expressions. This module only *analyses* them: it
//! checks syntax and lists the variables they read, so the validator can check every
//! reference statically. Rendering lives with the engine.

use minijinja::Environment;

/// A syntax error in a template or expression.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    pub message: String,
    /// Line within the template (1-based), when known.
    pub line: Option<usize>,
}

/// Globals minijinja provides; reading them is not a reference to workflow data.
pub const BUILTIN_GLOBALS: &[&str] = &["range", "dict", "namespace", "debug", "loop", "self", "none", "true", "false"];

/// Does this string contain template syntax at all?
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

/// Parses templates and expressions and lists what they read.
pub struct Analyzer {
    env: Environment<'static>,
}

impl Default for Analyzer {
    fn default() -> Self {
        Self::new()
    }
}

impl Analyzer {
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        Analyzer { env }
    }

    /// The variables a template reads, as dotted paths (`tasks.draft.output.text`). A
    /// dynamic lookup (`tasks[x]`) stops the path at the last static part.
    pub fn template_refs(&self, src: &str) -> Result<Vec<Vec<String>>, SyntaxError> {
        if !is_template(src) {
            return Ok(Vec::new());
        }
        let tmpl = self.env.template_from_str(src).map_err(syntax)?;
        Ok(split(tmpl.undeclared_variables(true)))
    }

    /// The variables an expression reads.
    pub fn expression_refs(&self, src: &str) -> Result<Vec<Vec<String>>, SyntaxError> {
        let expr = self.env.compile_expression(src).map_err(syntax)?;
        Ok(split(expr.undeclared_variables(true)))
    }
}

fn syntax(e: minijinja::Error) -> SyntaxError {
    SyntaxError { message: e.detail().map_or_else(|| e.kind().to_string(), str::to_string), line: e.line() }
}

fn split(vars: std::collections::HashSet<String>) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = vars
        .into_iter()
        .filter(|v| !BUILTIN_GLOBALS.contains(&v.as_str()))
        .map(|v| v.split('.').map(str::to_string).collect())
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_references() {
        let a = Analyzer::new();
        let refs = a
            .template_refs("Write {{ tasks.outline.output.text }} in {{ inputs.lang | upper }}{% for x in inputs.items %}{{ x }}{% endfor %}")
            .unwrap();
        assert_eq!(
            refs,
            vec![
                vec!["inputs".to_string(), "items".into()],
                vec!["inputs".to_string(), "lang".into()],
                vec!["tasks".to_string(), "outline".into(), "output".into(), "text".into()],
            ]
        );
        assert!(a.template_refs("plain text").unwrap().is_empty());
    }

    #[test]
    fn dynamic_lookup_stops_the_path() {
        let a = Analyzer::new();
        assert_eq!(
            a.template_refs("{{ tasks[name] }}").unwrap(),
            vec![vec!["name".to_string()], vec!["tasks".to_string()]]
        );
    }

    #[test]
    fn expression_references_and_errors() {
        let a = Analyzer::new();
        assert_eq!(a.expression_refs("tasks.score.output.passed and inputs.publish").unwrap().len(), 2);
        assert!(a.expression_refs("tasks.score.output.passed and").is_err());
        let err = a.template_refs("line one\n{{ broken ").unwrap_err();
        assert_eq!(err.line, Some(2));
    }
}
