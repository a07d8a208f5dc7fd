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

mod split;

/// Size limits applied while loading. Defaults refuse hostile input in well under a second.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted document, in bytes.
    pub max_bytes: usize,
    /// Deepest accepted nesting of sequences and mappings.
    pub max_depth: usize,
    /// Most nodes in the loaded tree, counting every copy made by an alias.
    pub max_nodes: usize,
    /// Most nodes that aliases may copy in all. Real workflows share small blocks (a retry
    /// policy, a header map); "billion laughs" documents are stopped here, early and cheaply.
    pub max_alias_nodes: usize,
    /// Most bytes that aliases may copy in all (string and key bytes, a byte per other
    /// scalar): a few aliases of one long anchored string expand to as much memory as many
    /// aliases of a small block.
    pub max_alias_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 10 * 1024 * 1024,
            max_depth: 64,
            max_nodes: 1_000_000,
            max_alias_nodes: 100_000,
            max_alias_bytes: 4 * 1024 * 1024,
        }
    }
}

/// The spans of a loaded document, shaped like its JSON value: sequences and mappings keep
/// their children in the same order as the JSON arrays and objects.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SpanNode {
    pub span: Span,
    pub kids: Kids,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub enum Kids {
    #[default]
    Leaf,
    Seq(Vec<SpanNode>),
    /// Key span and value spans, in the order of the JSON object's entries.
    Map(Vec<(Span, SpanNode)>),
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
    #[error("document has more than {limit} nodes")]
    TooManyNodes { limit: usize, pos: Pos },
    #[error("aliases expand to more than {limit} nodes (an alias bomb?)")]
    TooManyAliasNodes { limit: usize, pos: Pos },
    #[error("aliases expand to more than {limit} bytes (an alias bomb?)")]
    TooManyAliasBytes { limit: usize, pos: Pos },
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
            | LoadError::TooManyAliasNodes { pos, .. }
            | LoadError::TooManyAliasBytes { pos, .. }
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

/// The result of loading one document: its JSON value and, beside it, where each part of
/// it stands in the source.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub json: serde_json::Value,
    pub spans: SpanNode,
    pub issues: Vec<LoadIssue>,
}

fn pos(m: &saphyr_parser::Marker) -> Pos {
    Pos { line: m.line() as u32, column: m.col() as u32 + 1 }
}

type Json = serde_json::Value;

enum Frame {
    Seq {
        start: Span,
        anchor: usize,
        items: Vec<Json>,
        spans: Vec<SpanNode>,
    },
    Map {
        start: Span,
        anchor: usize,
        entries: serde_json::Map<String, Json>,
        spans: Vec<(Span, SpanNode)>,
        key: Option<(String, Span)>,
        merges: Vec<(Json, SpanNode)>,
    },
}

struct Builder {
    limits: Limits,
    nodes: usize,
    alias_nodes: usize,
    alias_bytes: usize,
    /// Per anchor: its value, spans, size in nodes and in bytes.
    anchors: HashMap<usize, (Json, SpanNode, usize, usize)>,
    stack: Vec<(Frame, usize)>,
    issues: Vec<LoadIssue>,
    root: Option<(Json, SpanNode)>,
}

impl Builder {
    fn count(&mut self, n: usize, at: Pos) -> Result<(), LoadError> {
        self.nodes += n;
        if self.nodes > self.limits.max_nodes {
            return Err(LoadError::TooManyNodes { limit: self.limits.max_nodes, pos: at });
        }
        Ok(())
    }

    fn open(&mut self, frame: Frame, at: Pos) -> Result<(), LoadError> {
        if self.stack.len() >= self.limits.max_depth {
            return Err(LoadError::TooDeep { limit: self.limits.max_depth, pos: at });
        }
        self.count(1, at)?;
        let before = self.nodes;
        self.stack.push((frame, before));
        Ok(())
    }

    /// Adds a finished node to the enclosing collection (or makes it the root).
    fn push(&mut self, value: Json, span: SpanNode, anchor: usize, size: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, (value.clone(), span.clone(), size, subtree_bytes(&value)));
        }
        match self.stack.last_mut() {
            None => self.root = Some((value, span)),
            Some((Frame::Seq { items, spans, .. }, _)) => {
                items.push(value);
                spans.push(span);
            }
            Some((Frame::Map { entries, spans, key, merges, .. }, _)) => match key.take() {
                None => {
                    let text = match value {
                        Json::String(s) => s,
                        Json::Null => "null".to_string(),
                        Json::Bool(b) => b.to_string(),
                        Json::Number(n) => n.to_string(),
                        Json::Array(_) | Json::Object(_) => {
                            self.issues.push(LoadIssue::NonScalarKey { span: span.span });
                            String::from("<complex key>")
                        }
                    };
                    *key = Some((text, span.span));
                }
                Some((k, key_span)) => {
                    if k == "<<" {
                        merges.push((value, span));
                        return;
                    }
                    // One lookup for the usual case, a new key.
                    match entries.entry(k) {
                        serde_json::map::Entry::Vacant(slot) => {
                            slot.insert(value);
                            spans.push((key_span, span));
                        }
                        serde_json::map::Entry::Occupied(taken) => {
                            let k = taken.key().clone();
                            let first = entries.keys().position(|x| *x == k).map_or(key_span, |i| spans[i].0);
                            self.issues.push(LoadIssue::DuplicateKey { key: k, span: key_span, first });
                        }
                    }
                }
            },
        }
    }
}

/// YAML merge keys (`<<: *base`): entries of the merged mapping(s) that the mapping does not
/// set itself are added (explicit keys win wherever they stand).
fn merge(entries: &mut serde_json::Map<String, Json>, spans: &mut Vec<(Span, SpanNode)>, value: Json, span: SpanNode) {
    let parts: Vec<(Json, SpanNode)> = match (value, span.kids) {
        (Json::Array(items), Kids::Seq(kids)) => items.into_iter().zip(kids).collect(),
        (v, kids) => vec![(v, SpanNode { span: span.span, kids })],
    };
    for (v, sp) in parts {
        if let (Json::Object(m), Kids::Map(kids)) = (v, sp.kids) {
            for ((k, val), (ks, vs)) in m.into_iter().zip(kids) {
                if !entries.contains_key(&k) {
                    entries.insert(k, val);
                    spans.push((ks, vs));
                }
            }
        }
    }
}

/// What a copy of `v` costs in bytes, as [`Limits::max_alias_bytes`] counts them.
fn subtree_bytes(v: &Json) -> usize {
    match v {
        Json::String(s) => s.len().max(1),
        Json::Array(items) => 1 + items.iter().map(subtree_bytes).sum::<usize>(),
        Json::Object(m) => 1 + m.iter().map(|(k, v)| k.len().max(1) + subtree_bytes(v)).sum::<usize>(),
        _ => 1,
    }
}

fn subtree_size(v: &Json) -> usize {
    1 + match v {
        Json::Array(items) => items.iter().map(subtree_size).sum(),
        Json::Object(m) => m.values().map(|v| 1 + subtree_size(v)).sum(),
        _ => 0,
    }
}

/// Resolves a plain scalar with the YAML 1.2 core schema.
fn resolve_plain(s: std::borrow::Cow<'_, str>) -> Json {
    match &*s {
        "" | "~" | "null" | "Null" | "NULL" => return Json::Null,
        "true" | "True" | "TRUE" => return Json::Bool(true),
        "false" | "False" | "FALSE" => return Json::Bool(false),
        // JSON cannot hold infinities or NaN: keep their text.
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF" | ".nan" | ".NaN"
        | ".NAN" => {
            return Json::String(s.into_owned());
        }
        _ => {}
    }
    let bytes = s.as_bytes();
    let first = bytes.first().copied().unwrap_or(b'a');
    if !(first.is_ascii_digit() || matches!(first, b'-' | b'+' | b'.')) {
        return Json::String(s.into_owned());
    }
    let digits = |b: &[u8]| !b.is_empty() && b.iter().all(u8::is_ascii_digit);
    let unsigned = bytes.strip_prefix(b"-").or(bytes.strip_prefix(b"+")).unwrap_or(bytes);
    if digits(unsigned) {
        if let Ok(i) = s.parse::<i64>() {
            return Json::from(i);
        }
        if let Ok(f) = s.parse::<f64>() {
            return serde_json::Number::from_f64(f).map_or(Json::String(s.into_owned()), Json::Number);
        }
    }
    if let Some(oct) = s.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return Json::from(i);
    }
    if let Some(hex) = s.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return Json::from(i);
    }
    let float_like = unsigned.first().is_some_and(|c| c.is_ascii_digit() || *c == b'.')
        && unsigned.iter().all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'-' | b'+'))
        && unsigned.iter().any(u8::is_ascii_digit);
    if float_like
        && let Ok(f) = s.parse::<f64>()
        && let Some(n) = serde_json::Number::from_f64(f)
    {
        return Json::Number(n);
    }
    Json::String(s.into_owned())
}

/// Loads one YAML document into a spanned tree, enforcing `limits`. A large workflow file is
/// loaded in pieces on several threads when that gives the same tree (`split`), else whole.
pub fn load(text: &str, limits: Limits) -> Result<Loaded, LoadError> {
    if text.len() > limits.max_bytes {
        return Err(LoadError::TooLarge { size: text.len(), limit: limits.max_bytes });
    }
    if text.len() >= split::SPLIT_FROM
        && let Some(loaded) = split::load(text, limits)
    {
        return Ok(loaded);
    }
    if text.len() < PIPELINE_FROM {
        return build(Parser::new_from_str(text), limits);
    }
    // Large documents: parse on a second thread and build on this one, so the two overlap.
    // If building stops early (a limit), the receiver is dropped and the parser stops at its
    // next send.
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<ParseItem<'_>>>(16);
        scope.spawn(move || {
            let mut batch = Vec::with_capacity(BATCH);
            for item in Parser::new_from_str(text) {
                let failed = item.is_err();
                batch.push(item);
                if batch.len() == BATCH || failed {
                    // A parse error travels with its batch, then parsing stops.
                    let sent = tx.send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH))).is_ok();
                    if !sent || failed {
                        return;
                    }
                }
            }
            let _ = tx.send(batch);
        });
        build(rx.into_iter().flatten(), limits)
    })
}

/// Documents from this size (bytes) on are parsed and built on two threads.
const PIPELINE_FROM: usize = 256 * 1024;
/// Parser events handed over at a time.
const BATCH: usize = 2048;

type ParseItem<'i> = Result<(Event<'i>, saphyr_parser::Span), saphyr_parser::ScanError>;

/// Builds the JSON value and span tree from parser events.
fn build<'i>(events: impl Iterator<Item = ParseItem<'i>>, limits: Limits) -> Result<Loaded, LoadError> {
    build_counted(events, limits, 0).map(|b| b.loaded)
}

/// A loaded piece of a document, with what it counted against the limits.
struct Built {
    loaded: Loaded,
    nodes: usize,
    alias_nodes: usize,
    alias_bytes: usize,
}

/// [`build`] for a piece of a document that starts on line `line_offset + 1` of it: every
/// position is reported in the whole document's lines.
fn build_counted<'i>(
    events: impl Iterator<Item = ParseItem<'i>>,
    limits: Limits,
    line_offset: u32,
) -> Result<Built, LoadError> {
    let pos = |m: &saphyr_parser::Marker| {
        let p = pos(m);
        Pos { line: p.line + line_offset, column: p.column }
    };
    let span = |s: &saphyr_parser::Span| Span::new(pos(&s.start), pos(&s.end));
    let mut b = Builder {
        limits,
        nodes: 0,
        alias_nodes: 0,
        alias_bytes: 0,
        anchors: HashMap::new(),
        stack: Vec::new(),
        issues: Vec::new(),
        root: None,
    };
    let mut documents = 0;
    let mut end = Pos { line: 1, column: 1 };
    for item in events {
        let (event, sp) = item.map_err(|e| {
            // The parser's own guard against deep flow nesting: the same refusal as ours.
            if e.info().contains("recursion limit") {
                LoadError::TooDeep { limit: limits.max_depth, pos: pos(e.marker()) }
            } else {
                LoadError::Syntax { message: e.info().to_string(), pos: pos(e.marker()) }
            }
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
                let is_str_tag = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let v = if style == ScalarStyle::Plain && !is_str_tag {
                    resolve_plain(value)
                } else {
                    Json::String(value.into_owned())
                };
                b.push(v, SpanNode { span: sp, kids: Kids::Leaf }, anchor, 1);
            }
            Event::Alias(id) => {
                let (size, bytes, at) = match b.anchors.get(&id) {
                    Some((_, _, size, bytes)) => (*size, *bytes, sp.start),
                    None => return Err(LoadError::UnknownAlias { pos: sp.start }),
                };
                // Count before cloning, so an alias bomb is refused before it allocates.
                b.alias_nodes += size;
                if b.alias_nodes > b.limits.max_alias_nodes {
                    return Err(LoadError::TooManyAliasNodes { limit: b.limits.max_alias_nodes, pos: at });
                }
                b.alias_bytes += bytes;
                if b.alias_bytes > b.limits.max_alias_bytes {
                    return Err(LoadError::TooManyAliasBytes { limit: b.limits.max_alias_bytes, pos: at });
                }
                b.count(size, at)?;
                let (v, spans, _, _) = b.anchors.get(&id).cloned().expect("checked above");
                b.push(v, relocate(spans, sp), 0, size);
            }
            Event::SequenceStart(anchor, _) => {
                b.open(Frame::Seq { start: sp, anchor, items: Vec::new(), spans: Vec::new() }, sp.start)?
            }
            Event::MappingStart(anchor, _) => b.open(
                Frame::Map {
                    start: sp,
                    anchor,
                    entries: serde_json::Map::new(),
                    spans: Vec::new(),
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
                let (value, kids, start, anchor) = match frame {
                    Frame::Seq { start, anchor, items, spans } => (Json::Array(items), Kids::Seq(spans), start, anchor),
                    Frame::Map { start, anchor, mut entries, mut spans, merges, .. } => {
                        for (v, s) in merges {
                            merge(&mut entries, &mut spans, v, s);
                        }
                        (Json::Object(entries), Kids::Map(spans), start, anchor)
                    }
                };
                let span = SpanNode { span: Span::new(start.start, sp.end.max(start.end)), kids };
                // An anchored collection is cloned on every alias: account for its real size.
                let size = if anchor != 0 { subtree_size(&value).max(size) } else { size };
                b.push(value, span, anchor, size);
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
    }
    let (json, spans) = b.root.take().unwrap_or((Json::Null, SpanNode { span: Span::new(end, end), kids: Kids::Leaf }));
    Ok(Built {
        loaded: Loaded { json, spans, issues: b.issues },
        nodes: b.nodes,
        alias_nodes: b.alias_nodes,
        alias_bytes: b.alias_bytes,
    })
}

/// An alias's copy points at the alias itself: that is where the user wrote it.
fn relocate(node: SpanNode, at: Span) -> SpanNode {
    let kids = match node.kids {
        Kids::Leaf => Kids::Leaf,
        Kids::Seq(items) => Kids::Seq(items.into_iter().map(|n| relocate(n, at)).collect()),
        Kids::Map(entries) => Kids::Map(entries.into_iter().map(|(_, n)| (at, relocate(n, at))).collect()),
    };
    SpanNode { span: at, kids }
}

impl Loaded {
    /// The spans of the value at a JSON pointer (`/spec/tasks/0/id`): the value's span and,
    /// when the last step was a mapping key, the key's span.
    pub fn locate(&self, pointer: &str) -> Option<(Span, Option<Span>)> {
        let mut json = &self.json;
        let mut node = &self.spans;
        let mut key_span = None;
        if pointer.is_empty() {
            return Some((node.span, None));
        }
        for raw in pointer.strip_prefix('/')?.split('/') {
            let seg = if raw.contains('~') {
                std::borrow::Cow::Owned(raw.replace("~1", "/").replace("~0", "~"))
            } else {
                std::borrow::Cow::Borrowed(raw)
            };
            match (json, &node.kids) {
                (Json::Object(m), Kids::Map(kids)) => {
                    let i = m.keys().position(|k| *k == *seg)?;
                    json = &m[&*seg];
                    let (ks, n) = kids.get(i)?;
                    key_span = Some(*ks);
                    node = n;
                }
                (Json::Array(items), Kids::Seq(kids)) => {
                    let i = seg.parse::<usize>().ok()?;
                    json = items.get(i)?;
                    node = kids.get(i)?;
                    key_span = None;
                }
                _ => return None,
            }
        }
        Some((node.span, key_span))
    }

    /// Like [`locate`](Self::locate), for the deepest existing node on the way to
    /// `pointer`: the best place to point at when the pointer names something missing.
    pub fn nearest(&self, pointer: &str) -> (Span, Option<Span>) {
        let mut p = pointer;
        loop {
            if let Some(found) = self.locate(p) {
                return found;
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return (self.spans.span, None),
            }
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
        let j = l.json;
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
        let (span, key) = l.locate("/spec/tasks/0/type").unwrap();
        assert_eq!(l.json["spec"]["tasks"][0]["type"], "llm");
        assert_eq!(span.start, Pos { line: 4, column: 13 });
        assert_eq!(key.unwrap().start, Pos { line: 4, column: 7 });
        assert_eq!(l.nearest("/spec/tasks/0/nope").0.start, Pos { line: 3, column: 7 });
    }

    #[test]
    fn duplicate_keys_are_reported() {
        let l = load_ok("a: 1\nb: 2\na: 3\n");
        assert_eq!(l.json["a"], 1);
        assert!(matches!(&l.issues[0], LoadIssue::DuplicateKey { key, .. } if key == "a"));
    }

    #[test]
    fn merge_keys() {
        let l = load_ok("base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  y: 3\n");
        assert_eq!(l.json["c"], serde_json::json!({"y": 3, "x": 1}));
        let (span, _) = l.locate("/c/x").unwrap();
        assert_eq!(span.start.line, 3);
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
        assert!(matches!(err, LoadError::TooManyAliasNodes { .. }), "{err:?}");
        assert!(start.elapsed().as_secs() < 2);
    }

    /// A few hundred aliases of one long anchored string are a few nodes and hundreds of
    /// megabytes: refused by the bytes they copy, before they are copied. A workflow that
    /// shares a block a few times still loads.
    #[test]
    fn aliases_of_a_long_string_are_charged_by_their_bytes() {
        let mut doc = format!("s: &s \"{}\"\nl:\n", "x".repeat(1_000_000));
        for _ in 0..801 {
            doc.push_str("  - *s\n");
        }
        let err = load(&doc, Limits::default()).unwrap_err();
        assert!(matches!(err, LoadError::TooManyAliasBytes { limit: 4_194_304, .. }), "{err:?}");
        assert_eq!(err.pos().map(|p| p.line), Some(7), "the fifth alias goes over: {err:?}");
        let shared = "retry: &r {max_attempts: 3, backoff: exponential}\na: {retry: *r}\nb: {retry: *r}\n";
        assert_eq!(load_ok(shared).json["b"]["retry"]["max_attempts"], 3);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let doc = "[".repeat(100_000);
        // The parser's own flow-recursion guard or ours, whichever trips first.
        let r = load(&doc, Limits::default());
        assert!(matches!(&r, Err(LoadError::TooDeep { .. })), "{r:?}");
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
        let limits = Limits { max_bytes: 10, ..Limits::default() };
        assert!(matches!(load("a: 123456789", limits), Err(LoadError::TooLarge { .. })));
    }

    #[test]
    fn syntax_errors_carry_positions() {
        let err = load("a: [1, 2\nb: 3\n", Limits::default()).unwrap_err();
        assert!(err.pos().is_some());
    }

    #[test]
    fn large_documents_take_the_two_thread_path_with_the_same_results() {
        let mut doc = String::from("items:\n");
        while doc.len() < 2 * PIPELINE_FROM {
            doc.push_str("  - { id: x, n: 1, s: 'text' }\n");
        }
        let l = load(&doc, Limits::default()).unwrap();
        let n = l.json["items"].as_array().unwrap().len();
        assert!(n > 10_000);
        let (span, _) = l.locate(&format!("/items/{}/s", n - 1)).unwrap();
        assert_eq!(span.start.line as usize, n + 1);
        // A syntax error at the very end is still reported, from the parser thread.
        doc.push_str("  - [unclosed\n");
        assert!(matches!(load(&doc, Limits::default()), Err(LoadError::Syntax { .. })));
    }

    #[test]
    fn two_documents_are_refused() {
        assert!(matches!(load("a: 1\n---\nb: 2\n", Limits::default()), Err(LoadError::MultipleDocuments { .. })));
    }
}
