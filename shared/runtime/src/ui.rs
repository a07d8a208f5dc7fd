//! The run pages (a list of runs, one run's DAG with live task states): three static files
//! compiled into every binary that serves them (the API, local and deployed, and `llmo run
//! --ui`). They hold no data: the page fetches `GET /runs` and `GET /runs/{id}` with the bearer
//! token its link carries (`#token=`, never sent to a server) or that the user pastes, so the
//! API's authentication and tenancy apply to everything shown.

const INDEX: &str = include_str!("ui/index.html");
const APP: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");
/// The answer page of an approval's single-use link (`/ui/answer.html#<token>`).
const ANSWER: &str = include_str!("ui/answer.html");
const ANSWER_JS: &str = include_str!("ui/answer.js");

/// The page's Content-Security-Policy: its own scripts, styles and API only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The file `path` names (`/ui`, `/ui/runs/<id>` → the page; `/ui/app.js`, `/ui/style.css`),
/// with its content type.
pub fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    let path = path.trim_end_matches('/');
    match path {
        "/ui" => Some(("text/html; charset=utf-8", INDEX)),
        "/ui/app.js" => Some(("text/javascript; charset=utf-8", APP)),
        "/ui/style.css" => Some(("text/css; charset=utf-8", STYLE)),
        "/ui/answer.html" => Some(("text/html; charset=utf-8", ANSWER)),
        "/ui/answer.js" => Some(("text/javascript; charset=utf-8", ANSWER_JS)),
        p if p.strip_prefix("/ui/runs/").is_some_and(|id| !id.is_empty() && !id.contains('/')) => {
            Some(("text/html; charset=utf-8", INDEX))
        }
        _ => None,
    }
}

/// The headers every asset is served with.
pub fn headers(content_type: &'static str) -> [(&'static str, &'static str); 5] {
    [
        ("content-type", content_type),
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-cache"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_files_are_found_and_nothing_else() {
        assert_eq!(asset("/ui").unwrap().1, INDEX);
        assert_eq!(asset("/ui/").unwrap().1, INDEX);
        assert_eq!(asset("/ui/runs/run-1").unwrap().1, INDEX);
        assert!(asset("/ui/app.js").unwrap().0.starts_with("text/javascript"));
        assert!(asset("/ui/runs/").is_none());
        assert!(asset("/ui/runs/a/b").is_none());
        assert!(asset("/ui/../etc/passwd").is_none());
        assert!(asset("/runs").is_none());
    }

    #[test]
    fn the_script_never_inserts_html() {
        assert!(!APP.contains("innerHTML") && !APP.contains("outerHTML") && !APP.contains("insertAdjacentHTML"));
        assert!(!APP.contains("eval("));
    }
}
