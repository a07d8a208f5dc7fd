//! Bounds on the work a workflow's templates and expressions may ask of the engine.
//!
//! A workflow file is code written by users and its templates read model answers and HTTP
//! responses, so every `when`, `for_each`, `with` field, output and hook template runs under
//! these limits and fails with an error naming the limit when it would pass one.
//!
//! They are constants of the engine, not settings: templates are evaluated again each time a
//! run's state is rebuilt from its log (a status request, the dead-letter handler, the CLI),
//! and a limit that differed between the first evaluation and a rebuild could give the same
//! log a different state. Raising one is a change to the engine, made with a new version.

/// The work one template or expression may do (minijinja's fuel): each instruction costs one,
/// and each 64 bytes of data it produces or a filter reads cost one more (an allocation is
/// checked before it is made), so this bounds time and memory alike: at most 500,000
/// instructions, or about 32 MB of strings and lists. A workflow's ordinary templates use a
/// few hundred.
pub const TEMPLATE_FUEL: u64 = 500_000;

/// Largest value one template or expression may produce, in bytes (of text, or of the JSON
/// value an expression gives).
pub const MAX_RENDERED_BYTES: usize = 8 << 20;

/// Most items one `for_each` may fan out to.
pub const MAX_FOR_EACH_ITEMS: usize = 10_000;

/// The approximate size of a JSON value in bytes (its text, without whitespace), counted
/// only up to `cap` (a huge value is not walked in full).
pub fn json_size(v: &serde_json::Value, cap: usize) -> usize {
    fn walk(v: &serde_json::Value, n: &mut usize, cap: usize) {
        if *n > cap {
            return;
        }
        *n += match v {
            serde_json::Value::Null => 4,
            serde_json::Value::Bool(_) => 5,
            serde_json::Value::Number(_) => 8,
            serde_json::Value::String(s) => s.len() + 2,
            serde_json::Value::Array(a) => {
                a.iter().for_each(|x| walk(x, n, cap));
                2 + a.len()
            }
            serde_json::Value::Object(m) => {
                m.iter().for_each(|(k, x)| {
                    *n += k.len() + 4;
                    walk(x, n, cap);
                });
                2
            }
        };
    }
    let mut n = 0;
    walk(v, &mut n, cap);
    n
}

/// The error of a value over [`MAX_RENDERED_BYTES`].
pub fn too_large(size: usize) -> String {
    format!(
        "the value is larger than the limit of {MAX_RENDERED_BYTES} bytes a template or expression may produce ({size}+ bytes)"
    )
}

/// minijinja's out-of-fuel error, named as the limit it is.
pub fn explain(e: minijinja::Error) -> String {
    if e.kind() == minijinja::ErrorKind::OutOfFuel {
        format!("stopped: out of fuel ({TEMPLATE_FUEL}), the limit of the work one template or expression may do")
    } else {
        e.to_string()
    }
}
