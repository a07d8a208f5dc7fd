//! Text from runs, APIs and other people (task errors carrying HTTP bodies, approval prompts,
//! audit actors, model answers) reaches the terminal through [`clean`]: control characters
//! could otherwise move the cursor, rewrite lines, set the window title or hide text (ANSI
//! escapes, carriage returns, bidirectional overrides).
use std::borrow::Cow;

/// `s` with every control character (C0, DEL, C1) and bidirectional-formatting character
/// written as an escape (`\n`, `\r`, `\t`, `\u{1b}`): one line, shown as it is, never obeyed.
pub fn clean(s: &str) -> Cow<'_, str> {
    let bad = |c: char| {
        c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !s.chars().any(bad) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if bad(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn control_and_bidi_characters_are_shown_not_obeyed() {
        assert_eq!(clean("plain text, ünïcode ✓"), "plain text, ünïcode ✓");
        assert_eq!(clean("a\x1b[2J\x1b]0;pwned\x07b"), "a\\u{1b}[2J\\u{1b}]0;pwned\\u{7}b");
        assert_eq!(clean("ok\r\nrun-1: succeeded"), "ok\\r\\nrun-1: succeeded");
        assert_eq!(clean("x\u{202e}gnp.exe\u{9b}"), "x\\u{202e}gnp.exe\\u{9b}");
    }
}
