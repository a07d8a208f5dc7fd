//! Diagnostics: what the validator says about a document.
//!
//! Every diagnostic carries a stable code (documented in `docs/errors.md`), the field path it
//! is about, and a span; [`Report`] turns them into miette diagnostics so the CLI can render
//! them with a snippet, and into plain records for `--format json`.

use std::fmt;
use std::sync::Arc;

use miette::{LabeledSpan, MietteError, MietteSpanContents, SourceCode, SourceSpan, SpanContents};
use serde::Serialize;

use crate::source::{SourceFile, Span};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One finding.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// Stable code, e.g. `WF022`.
    pub code: &'static str,
    pub severity: Severity,
    pub message: String,
    /// Field path in the document, e.g. `spec.tasks[2].depends_on[0]`.
    pub path: String,
    pub span: Option<Span>,
    /// Short text shown under the snippet.
    pub label: Option<String>,
    pub help: Option<String>,
    /// Other places worth showing (e.g. where a duplicate id was first defined).
    pub related: Vec<(Span, String)>,
}

impl Diagnostic {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Diagnostic {
            code,
            severity: Severity::Error,
            message: message.into(),
            path: String::new(),
            span: None,
            label: None,
            help: None,
            related: Vec::new(),
        }
    }

    pub fn warning(code: &'static str, message: impl Into<String>) -> Self {
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error(code, message) }
    }

    pub fn at(mut self, path: impl Into<String>, span: Option<Span>) -> Self {
        self.path = path.into();
        self.span = span;
        self
    }

    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn help_opt(mut self, help: Option<String>) -> Self {
        self.help = help.or(self.help);
        self
    }

    pub fn related(mut self, span: Span, text: impl Into<String>) -> Self {
        self.related.push((span, text.into()));
        self
    }
}

/// Turns a JSON pointer (`/spec/tasks/2/with`) into a field path (`spec.tasks[2].with`).
pub fn field_path(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(&seg);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    out
}

/// The suggestion closest to `word` among `candidates`, if any is close enough.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

/// All diagnostics for one source file.
#[derive(Debug, Clone)]
pub struct Report {
    pub source: SourceFile,
    pub diagnostics: Vec<Diagnostic>,
}

/// A plain record of a diagnostic, for machine-readable output.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub file: String,
    pub line: Option<u32>,
    pub column: Option<u32>,
    pub severity: Severity,
    pub code: &'static str,
    pub path: String,
    pub message: String,
    pub help: Option<String>,
}

impl Report {
    pub fn new(source: SourceFile) -> Self {
        Report { source, diagnostics: Vec::new() }
    }

    pub fn push(&mut self, d: Diagnostic) {
        self.diagnostics.push(d);
    }

    pub fn errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.severity == Severity::Error).count()
    }

    pub fn warnings(&self) -> usize {
        self.diagnostics.len() - self.errors()
    }

    pub fn has_errors(&self) -> bool {
        self.errors() > 0
    }

    /// Orders diagnostics by position, errors first on the same spot, and drops exact repeats.
    /// Positions past the end of the text (the parser reports end-of-input one line down)
    /// are moved to the end of the last line.
    pub fn sort(&mut self) {
        let last = self.source.lines() as u32;
        let end = crate::source::Pos { line: last, column: self.source.line_text(last).chars().count() as u32 + 1 };
        for d in &mut self.diagnostics {
            for s in d.span.iter_mut().chain(d.related.iter_mut().map(|(s, _)| s)) {
                if s.start.line > last {
                    s.start = end;
                }
                if s.end.line > last {
                    s.end = end;
                }
            }
        }
        self.diagnostics.sort_by(|a, b| {
            let pa = a.span.map(|s| s.start);
            let pb = b.span.map(|s| s.start);
            pa.cmp(&pb).then(a.severity.cmp(&b.severity))
        });
        self.diagnostics.dedup_by(|a, b| a.code == b.code && a.span == b.span && a.message == b.message);
    }

    pub fn records(&self) -> Vec<Record> {
        self.diagnostics
            .iter()
            .map(|d| Record {
                file: self.source.name().to_string(),
                line: d.span.map(|s| s.start.line),
                column: d.span.map(|s| s.start.column),
                severity: d.severity,
                code: d.code,
                path: d.path.clone(),
                message: d.message.clone(),
                help: d.help.clone(),
            })
            .collect()
    }

    /// The diagnostics as miette diagnostics, ready to render with a snippet.
    pub fn miette(&self) -> Vec<Rendered> {
        let src = Snippets(Arc::new(self.source.clone()));
        self.diagnostics
            .iter()
            .map(|d| {
                let to_span = |s: Span| -> SourceSpan { self.source.byte_range(s).into() };
                let mut labels = Vec::new();
                if let Some(s) = d.span {
                    labels.push(LabeledSpan::new_primary_with_span(d.label.clone(), to_span(s)));
                }
                for (s, text) in &d.related {
                    labels.push(LabeledSpan::new_with_span(Some(text.clone()), to_span(*s)));
                }
                let location = match d.span {
                    Some(s) => format!("{}:{}:{}", self.source.name(), s.start.line, s.start.column),
                    None => self.source.name().to_string(),
                };
                Rendered {
                    message: if d.path.is_empty() {
                        format!("{location}: {}", d.message)
                    } else {
                        format!("{location}: {}: {}", d.path, d.message)
                    },
                    code: d.code,
                    severity: d.severity,
                    help: d.help.clone(),
                    labels,
                    source: src.clone(),
                }
            })
            .collect()
    }
}

/// A diagnostic in miette's terms.
#[derive(Debug)]
pub struct Rendered {
    message: String,
    code: &'static str,
    severity: Severity,
    help: Option<String>,
    labels: Vec<LabeledSpan>,
    source: Snippets,
}

/// The source as miette reads it. miette's own `str` source finds a snippet by scanning the
/// text from its start, which makes thousands of diagnostics on a large file quadratic; this
/// one uses the line table.
#[derive(Debug, Clone)]
pub struct Snippets(Arc<SourceFile>);

impl SourceCode for Snippets {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let src = &self.0;
        let (start, end) = (span.offset(), span.offset() + span.len());
        if end > src.text().len() {
            return Err(MietteError::OutOfBounds);
        }
        let first = src.line_of(start);
        let last = src.line_of(end.saturating_sub(1).max(start));
        let from_line = first.saturating_sub(context_lines_before);
        let to_line = (last + context_lines_after).min(src.lines() - 1);
        let (mut from, to) = src.lines_range(from_line, to_line);
        let mut column = 0;
        if context_lines_before == 0 {
            // Without context, the contents start at the span (miette reads the header's
            // `file:line:column` this way).
            column = src.text()[from..start].chars().count();
            from = start;
        }
        Ok(Box::new(MietteSpanContents::new_named(
            src.name().to_string(),
            &src.text().as_bytes()[from..to],
            (from, to - from).into(),
            from_line,
            column,
            to_line - from_line + 1,
        )))
    }
}

impl fmt::Display for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Rendered {}

impl miette::Diagnostic for Rendered {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        if self.labels.is_empty() { None } else { Some(&self.source) }
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() { None } else { Some(Box::new(self.labels.iter().cloned())) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(field_path("/spec/tasks/2/with/prompt"), "spec.tasks[2].with.prompt");
        assert_eq!(field_path(""), "");
        assert_eq!(field_path("/a~1b"), "a/b");
    }

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("outlne", ["outline", "draft"]).as_deref(), Some("did you mean `outline`?"));
        assert_eq!(did_you_mean("zzz", ["outline"]), None);
    }
}
