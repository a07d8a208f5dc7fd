//! A hardened YAML loader that keeps source positions.
//!
//! Built on `saphyr-parser`'s event stream (a maintained YAML 1.2 parser). We build our own
//! small tree instead of using a serde deserializer so that:
//! - every node and every mapping key keeps its span, for diagnostics that point at the
//!   exact line and column;
//! - hostile input is refused early: documents over a size limit, nesting deeper than a
//!   limit, and alias expansion ("billion laughs") past a node budget are stopped while
//!   parsing, before memory is spent;
//! - duplicate keys (which YAML forbids, and which silently lose data elsewhere) are reported.
//!
//! Scalars resolve with the YAML 1.2 core schema, so `on:` is a string key and `yes` is a
//! string, not a boolean.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle};

use crate::source::{Pos, Span};

/// Size limits applied while loading. Defaults refuse hostile input in well under a second.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted document, in bytes.
    pub max_bytes: usize,
    /// Deepest accepted nesting of sequences and mappings.
    pub max_depth: usize,
    /// Most nodes in the loaded tree, counting every copy made by an alias.
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 10 * 1024 * 1024,
            max_depth: 64,
            max_nodes: 2_000_000,
        }
    }
}

/// A loaded YAML value with its span.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub span: Span,
}

/// One mapping entry; keys are always strings in this format.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_span: Span,
    pub value: Node,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

/// A fatal loading error: the document cannot be turned into a tree.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadError {
    #[error("file is {size} bytes; the limit is {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("YAML syntax error: {message}")]
    Syntax { message: String, pos: Pos },
    #[error("nesting is deeper than {limit} levels")]
    TooDeep { limit: usize, pos: Pos },
    #[error("document expands to more than {limit} nodes (alias expansion?)")]
    TooManyNodes { limit: usize, pos: Pos },
    #[error("alias refers to an unknown anchor")]
    UnknownAlias { pos: Pos },
    #[error("file holds more than one YAML document; a workflow file holds exactly one")]
    MultipleDocuments { pos: Pos },
}

impl LoadError {
    pub fn pos(&self) -> Option<Pos> {
        match self {
            LoadError::TooLarge { .. } => None,
            LoadError::Syntax { pos, .. }
            | LoadError::TooDeep { pos, .. }
            | LoadError::TooManyNodes { pos, .. }
            | LoadError::UnknownAlias { pos }
            | LoadError::MultipleDocuments { pos } => Some(*pos),
        }
    }
}

/// A non-fatal problem found while loading; the tree is still usable.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadIssue {
    DuplicateKey { key: String, span: Span, first: Span },
    NonScalarKey { span: Span },
}

/// The result of loading one document.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub root: Node,
    pub issues: Vec<LoadIssue>,
}

fn pos(m: &saphyr_parser::Marker) -> Pos {
    Pos {
        line: m.line() as u32,
        column: m.col() as u32 + 1,
    }
}

fn span(s: &saphyr_parser::Span) -> Span {
    Span::new(pos(&s.start), pos(&s.end))
}

enum Frame {
    Seq {
        start: Span,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        start: Span,
        anchor: usize,
        entries: Vec<Entry>,
        key: Option<(String, Span)>,
        merges: Vec<Node>,
    },
}

struct Builder {
    limits: Limits,
    nodes: usize,
    anchors: HashMap<usize, (Node, usize)>,
    stack: Vec<(Frame, usize)>,
    issues: Vec<LoadIssue>,
    root: Option<Node>,
}

impl Builder {
    fn count(&mut self, n: usize, at: Pos) -> Result<(), LoadError> {
        self.nodes += n;
        if self.nodes > self.limits.max_nodes {
            return Err(LoadError::TooManyNodes {
                limit: self.limits.max_nodes,
                pos: at,
            });
        }
        Ok(())
    }

    fn open(&mut self, frame: Frame, at: Pos) -> Result<(), LoadError> {
        if self.stack.len() >= self.limits.max_depth {
            return Err(LoadError::TooDeep {
                limit: self.limits.max_depth,
                pos: at,
            });
        }
        self.count(1, at)?;
        let before = self.nodes;
        self.stack.push((frame, before));
        Ok(())
    }

    /// Adds a finished node to the enclosing collection (or makes it the root).
    fn push(&mut self, node: Node, anchor: usize, size: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, (node.clone(), size));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some((Frame::Seq { items, .. }, _)) => items.push(node),
            Some((
                Frame::Map {
                    entries,
                    key,
                    merges,
                    ..
                },
                _,
            )) => match key.take() {
                None => {
                    let text = match &node.value {
                        Value::Str(s) => s.clone(),
                        Value::Null => "null".to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Int(i) => i.to_string(),
                        Value::Float(f) => f.to_string(),
                        Value::Seq(_) | Value::Map(_) => {
                            self.issues.push(LoadIssue::NonScalarKey { span: node.span });
                            String::from("<complex key>")
                        }
                    };
                    *key = Some((text, node.span));
                }
                Some((k, key_span)) => {
                    if k == "<<" {
                        merges.push(node);
                        return;
                    }
                    if let Some(first) = entries.iter().find(|e| e.key == k) {
                        self.issues.push(LoadIssue::DuplicateKey {
                            key: k,
                            span: key_span,
                            first: first.key_span,
                        });
                        return;
                    }
                    entries.push(Entry {
                        key: k,
                        key_span,
                        value: node,
                    });
                }
            },
        }
    }
}

/// YAML merge keys (`<<: *base`): entries of the merged mapping(s) that the mapping does not
/// set itself are added (explicit keys win wherever they stand). Widely used in hand-written YAML, so honoured here.
fn merge(entries: &mut Vec<Entry>, node: Node) {
    let maps = match node.value {
        Value::Map(m) => vec![m],
        Value::Seq(items) => items
            .into_iter()
            .filter_map(|n| match n.value {
                Value::Map(m) => Some(m),
                _ => None,
            })
            .collect(),
        _ => vec![],
    };
    for m in maps {
        for e in m {
            if !entries.iter().any(|x| x.key == e.key) {
                entries.push(e);
            }
        }
    }
}

fn subtree_size(node: &Node) -> usize {
    1 + match &node.value {
        Value::Seq(items) => items.iter().map(subtree_size).sum(),
        Value::Map(entries) => entries.iter().map(|e| 1 + subtree_size(&e.value)).sum(),
        _ => 0,
    }
}

/// Resolves a plain scalar with the YAML 1.2 core schema.
fn resolve_plain(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return Value::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    let bytes = s.as_bytes();
    let digits = |b: &[u8]| !b.is_empty() && b.iter().all(u8::is_ascii_digit);
    let unsigned = bytes.strip_prefix(b"-").or(bytes.strip_prefix(b"+")).unwrap_or(bytes);
    if digits(unsigned) {
        if let Ok(i) = s.parse::<i64>() {
            return Value::Int(i);
        }
        if let Ok(f) = s.parse::<f64>() {
            return Value::Float(f);
        }
    }
    if let Some(oct) = s.strip_prefix("0o") {
        if let Ok(i) = i64::from_str_radix(oct, 8) {
            return Value::Int(i);
        }
    }
    if let Some(hex) = s.strip_prefix("0x") {
        if let Ok(i) = i64::from_str_radix(hex, 16) {
            return Value::Int(i);
        }
    }
    let float_like = unsigned.first().is_some_and(|c| c.is_ascii_digit() || *c == b'.')
        && unsigned
            .iter()
            .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'-' | b'+'))
        && unsigned.iter().any(u8::is_ascii_digit);
    if float_like {
        if let Ok(f) = s.parse::<f64>() {
            return Value::Float(f);
        }
    }
    Value::Str(s.to_string())
}

/// Loads one YAML document into a spanned tree, enforcing `limits`.
pub fn load(text: &str, limits: Limits) -> Result<Loaded, LoadError> {
    if text.len() > limits.max_bytes {
        return Err(LoadError::TooLarge {
            size: text.len(),
            limit: limits.max_bytes,
        });
    }
    let mut b = Builder {
        limits,
        nodes: 0,
        anchors: HashMap::new(),
        stack: Vec::new(),
        issues: Vec::new(),
        root: None,
    };
    let mut documents = 0;
    let mut end = Pos { line: 1, column: 1 };
    for item in Parser::new_from_str(text) {
        let (event, sp) = item.map_err(|e| LoadError::Syntax {
            message: e.info().to_string(),
            pos: pos(e.marker()),
        })?;
        let sp = span(&sp);
        end = sp.end;
        match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(LoadError::MultipleDocuments { pos: sp.start });
                }
            }
            Event::Scalar(value, style, anchor, tag) => {
                b.count(1, sp.start)?;
                let is_str_tag = tag.as_ref().is_some_and(|t| t.handle == "tag:yaml.org,2002:" && t.suffix == "str" || t.handle == "!!" && t.suffix == "str");
                let v = if style == ScalarStyle::Plain && !is_str_tag {
                    resolve_plain(&value)
                } else {
                    Value::Str(value.into_owned())
                };
                b.push(Node { value: v, span: sp }, anchor, 1);
            }
            Event::Alias(id) => {
                let (node, size) = b
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or(LoadError::UnknownAlias { pos: sp.start })?;
                b.count(size, sp.start)?;
                b.push(Node { value: node.value, span: sp }, 0, size);
            }
            Event::SequenceStart(anchor, _) => b.open(
                Frame::Seq {
                    start: sp,
                    anchor,
                    items: Vec::new(),
                },
                sp.start,
            )?,
            Event::MappingStart(anchor, _) => b.open(
                Frame::Map {
                    start: sp,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                    merges: Vec::new(),
                },
                sp.start,
            )?,
            Event::SequenceEnd | Event::MappingEnd => {
                let Some((frame, before)) = b.stack.pop() else {
                    continue;
                };
                let size = b.nodes - before + 1;
                let (value, start, anchor) = match frame {
                    Frame::Seq { start, anchor, items } => (Value::Seq(items), start, anchor),
                    Frame::Map {
                        start,
                        anchor,
                        mut entries,
                        merges,
                        ..
                    } => {
                        for m in merges {
                            merge(&mut entries, m);
                        }
                        (Value::Map(entries), start, anchor)
                    }
                };
                let node = Node {
                    value,
                    span: Span::new(start.start, sp.end.max(start.end)),
                };
                // An anchored collection is cloned on every alias: account for its real size.
                let size = if anchor != 0 { subtree_size(&node).max(size) } else { size };
                b.push(node, anchor, size);
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
    }
    let root = b.root.take().unwrap_or(Node {
        value: Value::Null,
        span: Span::new(end, end),
    });
    Ok(Loaded {
        root,
        issues: b.issues,
    })
}

impl Node {
    /// Converts to JSON. Non-finite floats, which JSON cannot hold, become null.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.to_json()))
                    .collect(),
            ),
        }
    }

    /// Finds the node at a JSON pointer (`/spec/tasks/0/id`). Returns the node and, when the
    /// last step was a mapping key, that key's span.
    pub fn pointer(&self, pointer: &str) -> Option<(&Node, Option<Span>)> {
        let mut node = self;
        let mut key_span = None;
        if pointer.is_empty() {
            return Some((node, None));
        }
        for raw in pointer.strip_prefix('/')?.split('/') {
            let seg = raw.replace("~1", "/").replace("~0", "~");
            match &node.value {
                Value::Map(entries) => {
                    let e = entries.iter().find(|e| e.key == seg)?;
                    key_span = Some(e.key_span);
                    node = &e.value;
                }
                Value::Seq(items) => {
                    node = items.get(seg.parse::<usize>().ok()?)?;
                    key_span = None;
                }
                _ => return None,
            }
        }
        Some((node, key_span))
    }

    /// Finds the deepest node on the way to `pointer`: the best place to point at when the
    /// pointer names something missing.
    pub fn nearest(&self, pointer: &str) -> (&Node, Option<Span>) {
        let segs: Vec<&str> = pointer.split('/').collect();
        for n in (1..=segs.len()).rev() {
            let p = segs[..n].join("/");
            if let Some(found) = self.pointer(&p) {
                return found;
            }
        }
        (self, None)
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_ok(text: &str) -> Loaded {
        load(text, Limits::default()).expect("loads")
    }

    #[test]
    fn core_schema_scalars() {
        let l = load_ok("a: 1\nb: 1.5\nc: true\nd: ~\ne: yes\nf: '1'\ng: on\nh: 0x1f\n");
        let j = l.root.to_json();
        assert_eq!(j["a"], 1);
        assert_eq!(j["b"], 1.5);
        assert_eq!(j["c"], true);
        assert!(j["d"].is_null());
        assert_eq!(j["e"], "yes");
        assert_eq!(j["f"], "1");
        assert_eq!(j["g"], "on");
        assert_eq!(j["h"], 31);
    }

    #[test]
    fn spans_point_at_keys_and_values() {
        let l = load_ok("spec:\n  tasks:\n    - id: a\n      type: llm\n");
        let (node, key) = l.root.pointer("/spec/tasks/0/type").unwrap();
        assert_eq!(node.as_str(), Some("llm"));
        assert_eq!(node.span.start, Pos { line: 4, column: 13 });
        assert_eq!(key.unwrap().start, Pos { line: 4, column: 7 });
    }

    #[test]
    fn duplicate_keys_are_reported() {
        let l = load_ok("a: 1\nb: 2\na: 3\n");
        assert_eq!(l.root.to_json()["a"], 1);
        assert!(matches!(&l.issues[0], LoadIssue::DuplicateKey { key, .. } if key == "a"));
    }

    #[test]
    fn merge_keys() {
        let l = load_ok("base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  y: 3\n");
        assert_eq!(l.root.to_json()["c"], serde_json::json!({"y": 3, "x": 1}));
    }

    #[test]
    fn alias_bomb_is_refused() {
        let mut doc = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            doc.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let start = std::time::Instant::now();
        let err = load(&doc, Limits::default()).unwrap_err();
        assert!(matches!(err, LoadError::TooManyNodes { .. }), "{err:?}");
        assert!(start.elapsed().as_secs() < 2);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let doc = "[".repeat(100_000);
        // The parser's own flow-recursion guard or ours, whichever trips first.
        let r = load(&doc, Limits::default());
        assert!(
            matches!(&r, Err(LoadError::TooDeep { .. }))
                || matches!(&r, Err(LoadError::Syntax { message, .. }) if message.contains("recursion")),
            "{r:?}"
        );
        let mut block = String::new();
        for i in 0..200 {
            block.push_str(&" ".repeat(i));
            block.push_str("k:\n");
        }
        let r = load(&block, Limits::default());
        assert!(matches!(r, Err(LoadError::TooDeep { limit: 64, .. })), "{r:?}");
    }

    #[test]
    fn oversized_input_is_refused() {
        let limits = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        assert!(matches!(load("a: 123456789", limits), Err(LoadError::TooLarge { .. })));
    }

    #[test]
    fn syntax_errors_carry_positions() {
        let err = load("a: [1, 2\nb: 3\n", Limits::default()).unwrap_err();
        assert!(err.pos().is_some());
    }

    #[test]
    fn two_documents_are_refused() {
        assert!(matches!(
            load("a: 1\n---\nb: 2\n", Limits::default()),
            Err(LoadError::MultipleDocuments { .. })
        ));
    }
}
