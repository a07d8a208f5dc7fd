//! A fast path for the most common template: text with `{{ a.b.c }}` holes and nothing else
//! (`"Summarise:\n{{ tasks.fetch.output.text }}"`). Such a template is kept as its pieces and
//! rendered by looking the paths up and writing the values as minijinja writes them, with no
//! compiled program: compiling thousands of prompts costs memory (several KB each) and time.
//! Anything else (filters, tests, `{% %}`, whitespace control, literals) goes to minijinja.

use minijinja::Value as Ctx;

#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    Path(Vec<String>),
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_') && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// The pieces of `src` if it is plain text with simple `{{ path }}` holes.
pub fn parse(src: &str) -> Option<Vec<Piece>> {
    let mut out = Vec::new();
    let mut rest = src;
    loop {
        match rest.find("{{") {
            None => {
                if rest.contains(['{', '}']) {
                    return None;
                }
                // Like minijinja (without `keep_trailing_newline`), drop one final newline.
                let rest = rest.strip_suffix('\n').map_or(rest, |r| r.strip_suffix('\r').unwrap_or(r));
                if !rest.is_empty() {
                    out.push(Piece::Text(rest.to_string()));
                }
                return Some(out);
            }
            Some(open) => {
                let text = &rest[..open];
                if text.contains(['{', '}']) {
                    return None;
                }
                if !text.is_empty() {
                    out.push(Piece::Text(text.to_string()));
                }
                let after = &rest[open + 2..];
                let close = after.find("}}")?;
                let expr = &after[..close];
                if expr.starts_with('-') || expr.ends_with('-') || expr.contains(['{', '}']) {
                    return None;
                }
                let parts: Vec<&str> = expr.trim().split('.').collect();
                // `none`, `true`... and keywords are literals or syntax, not variables.
                const RESERVED: &[&str] =
                    &["none", "None", "true", "false", "True", "False", "not", "and", "or", "in", "is", "if", "else"];
                if !parts.iter().all(|p| is_ident(p)) || RESERVED.contains(&parts[0]) {
                    return None;
                }
                out.push(Piece::Path(parts.into_iter().map(str::to_string).collect()));
                rest = &after[close + 2..];
            }
        }
    }
}

/// Why `expr` is undefined: the first part of its dotted `path` (`path[n]`) that is not there,
/// what holds it, the keys that are there (the likeliest first, for a typo), and how to allow
/// it. `tasks.<id>.output...` names the task.
pub fn undefined(expr: &str, path: &[String], n: usize, ctx: &Ctx) -> String {
    let mut holder = ctx.clone();
    for part in &path[..n] {
        holder = holder.get_attr(part).unwrap_or_default();
    }
    let missing = &path[n];
    let at = if n == 0 { "the context".to_string() } else { format!("`{}`", path[..n].join(".")) };
    let mut keys: Vec<String> =
        holder.try_iter().map(|it| it.filter_map(|k| k.as_str().map(str::to_string)).collect()).unwrap_or_default();
    let task = (path.len() > 2 && path[0] == "tasks" && n >= 2).then(|| format!(" (task `{}`)", path[1]));
    let mut msg = format!("`{expr}` is undefined: {at}{} has no `{missing}`", task.unwrap_or_default());
    if !keys.is_empty() {
        keys.sort_by_key(|k| (strsim::levenshtein(k, missing), k.clone()));
        if strsim::levenshtein(&keys[0], missing) <= 2.max(missing.len() / 3) {
            msg.push_str(&format!("; did you mean `{}`?", keys[0]));
        }
        keys.truncate(12);
        msg.push_str(&format!(" (it has: {})", keys.join(", ")));
    }
    msg.push_str(&format!(" (write `{expr} | default(...)` to allow it missing)"));
    msg
}

/// The dotted path an expression is, if it is only that (`tasks.a.output.text`).
pub fn path_of(expr: &str) -> Option<Vec<String>> {
    let parts: Vec<&str> = expr.trim().split('.').collect();
    parts.iter().all(|p| is_ident(p)).then(|| parts.into_iter().map(str::to_string).collect())
}

/// Renders pieces in `ctx` as minijinja (strict undefined, no auto-escaping) would.
pub fn render(pieces: &[Piece], ctx: &Ctx) -> Result<String, String> {
    let mut out = String::new();
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::Path(path) => {
                let mut v = ctx.clone();
                for (n, part) in path.iter().enumerate() {
                    v = v.get_attr(part).map_err(|e| e.to_string())?;
                    if v.is_undefined() {
                        return Err(undefined(&path.join("."), path, n, ctx));
                    }
                }
                use std::fmt::Write;
                let _ = write!(out, "{v}");
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_only_plain_interpolation() {
        assert_eq!(
            parse("a {{ x.y }} b").unwrap(),
            vec![Piece::Text("a ".into()), Piece::Path(vec!["x".into(), "y".into()]), Piece::Text(" b".into())]
        );
        for other in [
            "{{ x | upper }}",
            "{% if x %}y{% endif %}",
            "{{- x }}",
            "{{ x[0] }}",
            "{{ 'a' }}",
            "{{ none }}",
            "a } b {{ x }}",
            "{# c #}{{ x }}",
            "{{ x + 1 }}",
        ] {
            assert!(parse(other).is_none(), "{other}");
        }
    }

    #[test]
    fn renders_exactly_as_minijinja() {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        let ctx = Ctx::from(minijinja::value::Serde(json!({
            "s": "text <b>&", "i": 42, "f": 1.5, "big": 1e21, "neg": -0.0, "b": true, "n": null,
            "l": [1, "two", null, [3]], "m": { "k": "v", "z": { "y": 1 } }, "e": "", "u": "ünï"
        })));
        for t in [
            "{{ s }}",
            "{{ i }}/{{ f }}/{{ big }}/{{ neg }}",
            "{{ b }} {{ n }}",
            "{{ l }}",
            "{{ m }}",
            "{{ m.z.y }}{{ e }}{{ u }}",
            "x",
            "line\n{{ m.k }}\n",
            "a\r\n",
            "{{ i }}\n\n",
        ] {
            let want = env.render_str(t, &ctx).unwrap();
            assert_eq!(render(&parse(t).unwrap(), &ctx).unwrap(), want, "{t}");
        }
        for t in ["{{ missing }}", "{{ m.missing }}", "{{ s.x }}"] {
            assert!(env.render_str(t, &ctx).is_err(), "{t}");
            assert!(render(&parse(t).unwrap(), &ctx).is_err(), "{t}");
        }
    }
}
