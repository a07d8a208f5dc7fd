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
        // Text with plain `{{ a.b.c }}` holes (most prompts): the holes are the references.
        // minijinja would compile the template and parse it again to say the same, at several
        // KB and microseconds a template (a fifth of validating 1,000 tasks).
        if let Some(pieces) = crate::engine::interp::parse(src) {
            // The holes' paths as they are: what `split` gives for their dotted names, sorted
            // and without repeats, without joining and splitting them again.
            let mut refs: Vec<Vec<String>> = pieces
                .into_iter()
                .filter_map(|p| match p {
                    crate::engine::interp::Piece::Path(path) => Some(path),
                    crate::engine::interp::Piece::Text(_) => None,
                })
                .filter(|path| !matches!(path.as_slice(), [one] if BUILTIN_GLOBALS.contains(&one.as_str()) || one == SLICE_FN))
                .collect();
            refs.sort();
            refs.dedup();
            return Ok(refs);
        }
        self.minijinja_template_refs(src)
    }

    /// [`Self::template_refs`] by minijinja's own analysis.
    fn minijinja_template_refs(&self, src: &str) -> Result<Vec<Vec<String>>, SyntaxError> {
        let tmpl = self.env.template_from_str(src).map_err(syntax)?;
        let mut vars = tmpl.undeclared_variables(true);
        if let Some(alt) = desugar_template(src)
            && let Ok(t) = self.env.template_from_str(&alt)
        {
            vars.extend(t.undeclared_variables(true));
        }
        Ok(split(vars))
    }

    /// The variables an expression reads.
    pub fn expression_refs(&self, src: &str) -> Result<Vec<Vec<String>>, SyntaxError> {
        let expr = self.env.compile_expression(src).map_err(syntax)?;
        let mut vars = expr.undeclared_variables(true);
        if let Some(alt) = desugar_slices(src)
            && let Ok(e) = self.env.compile_expression(&alt)
        {
            vars.extend(e.undeclared_variables(true));
        }
        Ok(split(vars))
    }
}

/// minijinja (3.1) does not report the variables of a sliced value (`x.text[0:10]`) or of
/// the slice bounds. For analysis only, slices are rewritten as dynamic subscripts,
/// `x.text[__llmo_slice(0, 10)]`, which it does follow (the path stops at `x.text`).
const SLICE_FN: &str = "__llmo_slice";

/// [`desugar_slices`] applied inside `{{ }}` and `{% %}` of a template.
fn desugar_template(src: &str) -> Option<String> {
    if !src.contains(':') {
        return None;
    }
    let mut out = String::with_capacity(src.len() + 16);
    let mut rest = src;
    let mut changed = false;
    while let Some(open) = rest.find(['{']) {
        let (close, skip) = match rest[open..].chars().nth(1) {
            Some('{') => ("}}", 2),
            Some('%') => ("%}", 2),
            _ => {
                out.push_str(&rest[..open + 1]);
                rest = &rest[open + 1..];
                continue;
            }
        };
        let body_start = open + skip;
        let Some(len) = rest[body_start..].find(close) else { break };
        out.push_str(&rest[..body_start]);
        let body = &rest[body_start..body_start + len];
        match desugar_slices(body) {
            Some(b) => {
                changed = true;
                out.push_str(&b);
            }
            None => out.push_str(body),
        }
        rest = &rest[body_start + len..];
    }
    out.push_str(rest);
    changed.then_some(out)
}

/// Rewrites each slice `[a:b(:c)]` of an expression as `[__llmo_slice(a, b(, c))]` (empty
/// bounds as `none`); `None` when there is none. String literals are left alone.
fn desugar_slices(src: &str) -> Option<String> {
    let chars: Vec<char> = src.chars().collect();
    // For each `[`: its position in `out`, and the positions in `out` of its top-level colons.
    let mut brackets: Vec<(usize, Vec<usize>)> = Vec::new();
    // Nesting of ( and { inside the innermost bracket.
    let mut inner: Vec<u32> = vec![0];
    let mut out: Vec<char> = Vec::with_capacity(chars.len());
    let mut quote: Option<char> = None;
    let mut changed = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = quote {
            out.push(c);
            if c == '\\' && i + 1 < chars.len() {
                out.push(chars[i + 1]);
                i += 1;
            } else if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '[' => {
                brackets.push((out.len(), Vec::new()));
                inner.push(0);
            }
            '(' | '{' => *inner.last_mut().expect("depth") += 1,
            ')' | '}' => {
                let d = inner.last_mut().expect("depth");
                *d = d.saturating_sub(1);
            }
            ':' if inner.last() == Some(&0) => {
                if let Some((_, colons)) = brackets.last_mut() {
                    colons.push(out.len());
                }
            }
            ']' => {
                if inner.len() > 1 {
                    inner.pop();
                }
                if let Some((start, colons)) = brackets.pop()
                    && !colons.is_empty()
                    && colons.len() <= 2
                {
                    // out[start] is '['; rebuild its content.
                    let content: Vec<char> = out.drain(start + 1..).collect();
                    let mut parts = Vec::new();
                    let mut from = 0;
                    for &c in &colons {
                        parts.push(content[from..c - start - 1].iter().collect::<String>());
                        from = c - start;
                    }
                    parts.push(content[from..].iter().collect::<String>());
                    let args: Vec<String> =
                        parts.into_iter().map(|p| if p.trim().is_empty() { "none".to_string() } else { p }).collect();
                    out.extend(format!("{SLICE_FN}({})", args.join(", ")).chars());
                    changed = true;
                }
            }
            _ => {}
        }
        out.push(c);
        i += 1;
    }
    changed.then(|| out.into_iter().collect())
}

fn syntax(e: minijinja::Error) -> SyntaxError {
    SyntaxError { message: e.detail().map_or_else(|| e.kind().to_string(), str::to_string), line: e.line() }
}

fn split(vars: std::collections::HashSet<String>) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = vars
        .into_iter()
        .filter(|v| !BUILTIN_GLOBALS.contains(&v.as_str()) && v != SLICE_FN)
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
    fn sliced_values_and_slice_bounds_are_references() {
        let a = Analyzer::new();
        assert_eq!(
            a.expression_refs("tasks.fetch.output.body.tickets[0:inputs.max]").unwrap(),
            vec![vec!["inputs", "max"], vec!["tasks", "fetch", "output", "body", "tickets"]]
        );
        assert_eq!(a.expression_refs("x[:2][1:]").unwrap(), vec![vec!["x"]]);
        assert_eq!(a.expression_refs("{'a:b': y}['a:b']").unwrap(), vec![vec!["y"]], "colons in strings and dicts");
        assert_eq!(
            a.template_refs("Text: {{ tasks.e.output.text[:4000] }} [note: {{ z }}]").unwrap(),
            vec![vec!["tasks", "e", "output", "text"], vec!["z"]]
        );
        assert_eq!(desugar_slices("a[1:2:3]").as_deref(), Some("a[__llmo_slice(1, 2, 3)]"));
        assert_eq!(desugar_slices("a[0]"), None);
    }

    #[test]
    fn plain_holes_give_what_minijinja_gives() {
        let a = Analyzer::new();
        for src in [
            "step 0: {{ inputs.topic }}",
            "{{ tasks.a.output }} and {{ tasks.a.output }} then {{ item }}\n",
            "Summarise:\n{{ tasks.fetch.output.body.text }} for {{ run.id }}",
            "{{ range }} {{ loop.index }} {{x}}",
            "{{ tasks.b.output.x_1 }}{{ inputs._n }}",
            "{{ dict }} {{ __llmo_slice }} {{ b.c }} {{ a }} {{ b.c }} {{ a.z }}",
        ] {
            assert!(crate::engine::interp::parse(src).is_some(), "{src} takes the fast path");
            assert_eq!(a.template_refs(src).unwrap(), a.minijinja_template_refs(src).unwrap(), "{src}");
        }
        // Not plain: minijinja's analysis (filters, literals, blocks, whitespace control).
        for src in ["{{ x | upper }}", "{{ none }}", "{% if a %}{{ b }}{% endif %}", "{{- c -}}", "{{ d[0] }}"] {
            assert!(crate::engine::interp::parse(src).is_none(), "{src}");
        }
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
