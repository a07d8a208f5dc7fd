//! Source text and positions.
//!
//! The YAML parser reports positions as (line, column) in characters; miette wants byte
//! offsets. [`SourceFile`] keeps a line table so the conversion is exact for any UTF-8 input
//! and costs nothing until a diagnostic is rendered.

use std::sync::Arc;

/// A position in a source file: 1-based line, 1-based column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

/// A half-open range of source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: Pos,
    pub end: Pos,
}

impl Span {
    pub fn new(start: Pos, end: Pos) -> Self {
        Span { start, end }
    }
}

/// A named source text (a workflow file, or `<stdin>`).
#[derive(Debug, Clone)]
pub struct SourceFile {
    name: Arc<str>,
    text: Arc<str>,
    line_starts: Arc<[usize]>,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        let text: String = text.into();
        // Line breaks as YAML counts them: `\n`, `\r\n`, and a lone `\r`.
        let bytes = text.as_bytes();
        let mut line_starts = vec![0];
        line_starts.extend(
            memchr::memchr2_iter(b'\n', b'\r', bytes)
                .filter(|&i| bytes[i] == b'\n' || bytes.get(i + 1) != Some(&b'\n'))
                .map(|i| i + 1),
        );
        SourceFile { name: Arc::from(name.into()), text: Arc::from(text), line_starts: line_starts.into() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Byte offset of a position, clamped to the text.
    pub fn offset(&self, pos: Pos) -> usize {
        let line = (pos.line.max(1) as usize - 1).min(self.line_starts.len() - 1);
        let start = self.line_starts[line];
        let line_text = self.line_at(start);
        let col = pos.column.max(1) as usize - 1;
        match line_text.char_indices().nth(col) {
            Some((i, _)) => start + i,
            None => start + line_text.len(),
        }
    }

    /// Byte range of a span, at least one byte wide where the text allows it, so that
    /// a label always has something to point at.
    pub fn byte_range(&self, span: Span) -> (usize, usize) {
        let start = self.offset(span.start);
        let mut end = self.offset(span.end).max(start);
        if end == start && start < self.text.len() {
            end = start + self.text[start..].chars().next().map_or(0, char::len_utf8);
        }
        (start, end - start)
    }

    /// The text of one line (1-based), without its line break.
    pub fn line_text(&self, line: u32) -> &str {
        let idx = (line.max(1) as usize - 1).min(self.line_starts.len() - 1);
        self.line_at(self.line_starts[idx])
    }

    /// Number of lines, counted as YAML counts them.
    pub fn lines(&self) -> usize {
        self.line_starts.len()
    }

    /// The 0-based line holding byte `offset`.
    pub fn line_of(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&s| s <= offset).saturating_sub(1)
    }

    /// Byte range of 0-based lines `first..=last`, line breaks included.
    pub fn lines_range(&self, first: usize, last: usize) -> (usize, usize) {
        let start = self.line_starts[first.min(self.line_starts.len() - 1)];
        let end = self.line_starts.get(last + 1).copied().unwrap_or(self.text.len());
        (start, end.max(start))
    }

    fn line_at(&self, start: usize) -> &str {
        let rest = &self.text[start..];
        rest.split(['\n', '\r']).next().unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_count_characters_not_bytes() {
        let src = SourceFile::new("t.yaml", "a: é\nb: x\n");
        assert_eq!(src.offset(Pos { line: 1, column: 4 }), 3);
        assert_eq!(src.offset(Pos { line: 2, column: 4 }), 9);
        assert_eq!(src.byte_range(Span::new(Pos { line: 1, column: 4 }, Pos { line: 1, column: 4 })), (3, 2));
        assert_eq!(src.line_text(2), "b: x");
    }

    #[test]
    fn carriage_returns_break_lines_like_yaml() {
        let src = SourceFile::new("t.yaml", "a\rb\r\nc\nd");
        assert_eq!(src.lines(), 4);
        assert_eq!(src.line_text(2), "b");
        assert_eq!(src.offset(Pos { line: 3, column: 1 }), 5);
    }

    #[test]
    fn positions_past_the_end_are_clamped() {
        let src = SourceFile::new("t.yaml", "a");
        assert_eq!(src.offset(Pos { line: 9, column: 9 }), 1);
    }
}
