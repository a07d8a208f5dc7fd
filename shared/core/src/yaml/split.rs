//! Loading a large workflow file on several threads.
//!
//! A large workflow file is almost all task list: `spec.tasks`, a block sequence of tasks one
//! after another. YAML's block structure makes the list's entries independent of each other:
//! an entry is the lines from a `- ` at the list's indentation to the next one, and what it
//! means depends only on those lines. So the list is cut at entries into pieces of about equal
//! size, each piece is parsed on a thread of its own as a document of its own (a block
//! sequence at the same columns, its lines counted from where the piece starts), and the rest
//! of the file, the list's lines left blank, is parsed as the skeleton the pieces go into.
//!
//! The cut is found from lines alone, without a parser, so it is only a guess, and the pieces
//! are taken only when the parsers confirm it. A cut can only fall wrongly inside something
//! that spans lines, a quoted scalar or a flow collection, and then the piece before it does
//! not parse (unterminated). Block scalars inside an entry are indented past the entry's `-`,
//! so they never hold a line that looks like the next entry. The skeleton must have `tasks:`
//! on the line found, under `spec`, with nothing in it. Anchors are local to a piece, so an
//! alias to an anchor in another piece or in the skeleton does not resolve. Whenever anything
//! does not hold (an error, a limit, an alias across pieces, a directive, a second document,
//! carriage returns), the caller loads the file the one-thread way, which gives the answer
//! and the error message a whole-document parse gives. A property test checks both ways
//! agree on generated documents full of the constructs above.

use saphyr_parser::Parser;

use super::{Built, Json, Kids, Limits, Loaded, SpanNode, build_counted};
use crate::source::Pos;

/// Documents from this size (bytes) on are tried in pieces.
pub(super) const SPLIT_FROM: usize = 64 * 1024;
/// The smallest piece worth a thread of its own.
const MIN_PIECE: usize = 32 * 1024;
/// The most pieces, whatever the machine.
const MAX_PIECES: usize = 8;
/// Nesting above the task list's entries: the root mapping, `spec`, the list.
const LIST_DEPTH: usize = 2;

/// The task list as found in the text, from lines alone.
#[derive(Debug, PartialEq)]
struct List {
    /// 1-based line of `tasks:`.
    key_line: u32,
    /// Byte offset of the first entry's line, and of the line after the list.
    start: usize,
    end: usize,
    /// 1-based line of the first entry.
    first_line: u32,
    /// Byte offsets of every entry's line, with their 1-based line numbers.
    entries: Vec<(usize, u32)>,
    /// The entries' column (1-based).
    column: u32,
    /// The line after the list and the column of its first token, unless the list ends the text.
    after: Option<(u32, u32)>,
}

/// Finds `tasks:` and the block sequence under it, or `None` when the text is not shaped so
/// (or holds something that makes cutting it unsafe: directives, document markers, `\r`).
fn find(text: &str) -> Option<List> {
    if text.starts_with('\u{feff}') || memchr::memchr(b'\r', text.as_bytes()).is_some() {
        return None;
    }
    enum Seek {
        Key,
        First { key_line: u32, indent: usize },
        In { key_line: u32, indent: usize, start: usize, first_line: u32 },
    }
    let mut seek = Seek::Key;
    let mut entries = Vec::new();
    let mut found = None;
    let mut at = 0;
    let mut line_no = 0u32;
    while at < text.len() {
        line_no += 1;
        let line_end = memchr::memchr(b'\n', &text.as_bytes()[at..]).map_or(text.len(), |i| at + i + 1);
        let line = text[at..line_end].trim_end_matches('\n');
        if line.starts_with('%') || line.starts_with("---") || line.starts_with("...") {
            return None;
        }
        let rest = line.trim_start_matches(' ');
        let indent = line.len() - rest.len();
        let blank = rest.is_empty() || rest.starts_with('#');
        let entry = rest == "-" || rest.starts_with("- ");
        match seek {
            Seek::Key => {
                if let Some(after) = rest.strip_prefix("tasks:") {
                    let after = after.trim_start_matches(' ');
                    if after.is_empty() || after.starts_with('#') {
                        seek = Seek::First { key_line: line_no, indent };
                    }
                }
            }
            Seek::First { key_line, indent: key_indent } => {
                if !blank {
                    if !(entry && indent >= key_indent) {
                        return None;
                    }
                    entries.push((at, line_no));
                    seek = Seek::In { key_line, indent, start: at, first_line: line_no };
                }
            }
            Seek::In { key_line, indent: list_indent, start, first_line } => {
                if found.is_none() && !blank && indent <= list_indent {
                    if indent == list_indent && entry {
                        entries.push((at, line_no));
                    } else {
                        found = Some(List {
                            key_line,
                            start,
                            end: at,
                            first_line,
                            entries: std::mem::take(&mut entries),
                            column: list_indent as u32 + 1,
                            after: Some((line_no, indent as u32 + 1)),
                        });
                    }
                }
            }
        }
        at = line_end;
    }
    match (found, seek) {
        (Some(list), _) => Some(list),
        (None, Seek::In { key_line, indent, start, first_line }) => {
            Some(List { key_line, start, end: text.len(), first_line, entries, column: indent as u32 + 1, after: None })
        }
        _ => None,
    }
}

/// Loads `text` in pieces, or `None` to say: load it the one-thread way.
pub(super) fn load(text: &str, limits: Limits) -> Option<Loaded> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    load_on(text, limits, threads)
}

/// [`load`] with at most `threads` pieces.
fn load_on(text: &str, limits: Limits, threads: usize) -> Option<Loaded> {
    let list = find(text)?;
    let threads = threads.min(MAX_PIECES);
    let pieces = threads.min((list.end - list.start) / MIN_PIECE).min(list.entries.len());
    if pieces < 2 {
        return None;
    }
    // Cut at the entries nearest to equal shares of the list's bytes.
    let mut cuts: Vec<(usize, u32)> = vec![(list.start, list.first_line)];
    let share = (list.end - list.start) / pieces;
    for k in 1..pieces {
        let want = list.start + k * share;
        let i = list.entries.partition_point(|&(at, _)| at < want);
        if let Some(&cut) = list.entries.get(i)
            && cut.0 > cuts.last().map_or(0, |c| c.0)
        {
            cuts.push(cut);
        }
    }
    let bounds: Vec<(usize, usize, u32)> =
        cuts.iter().enumerate().map(|(k, &(at, line))| (at, cuts.get(k + 1).map_or(list.end, |c| c.0), line)).collect();
    // The skeleton: the text with the list's lines left empty, so its lines keep their numbers.
    let body = &text[list.start..list.end];
    let mut skeleton = String::with_capacity(text.len() - body.len() + body.len() / 16);
    skeleton.push_str(&text[..list.start]);
    skeleton.extend(std::iter::repeat_n('\n', memchr::memchr_iter(b'\n', body.as_bytes()).count()));
    skeleton.push_str(&text[list.end..]);

    // Each piece gets its share of the node budgets, so that all of them together never build
    // more than one whole-document load may; a piece over its share gives way to that load.
    let share_of = |n: usize| n / bounds.len() + 1;
    let piece_limits = Limits {
        max_depth: limits.max_depth.checked_sub(LIST_DEPTH)?,
        max_nodes: share_of(limits.max_nodes),
        max_alias_nodes: share_of(limits.max_alias_nodes),
        max_alias_bytes: share_of(limits.max_alias_bytes),
        ..limits
    };
    let parse = |(a, b, line): (usize, usize, u32)| {
        build_counted(Parser::new_from_str(&text[a..b]), piece_limits, line - 1).ok()
    };
    let (skeleton, parts) = std::thread::scope(|scope| {
        let others: Vec<_> = bounds[1..]
            .iter()
            .map(|&b| std::thread::Builder::new().name("llmo-yaml".into()).spawn_scoped(scope, move || parse(b)))
            .collect();
        let mut parts = vec![parse(bounds[0])];
        let skeleton = build_counted(Parser::new_from_str(&skeleton), limits, 0).ok();
        // A piece whose thread could not start or finish is a piece that did not load.
        parts.extend(others.into_iter().map(|h| h.ok().and_then(|h| h.join().ok().flatten())));
        (skeleton, parts)
    });
    let ends = piece_ends(&cuts, &list);
    graft(skeleton?, parts, &ends, &list, limits)
}

/// For each piece starting at `cuts`, the line after it and its next token's column.
fn piece_ends(cuts: &[(usize, u32)], list: &List) -> Vec<(u32, u32)> {
    let mut ends: Vec<(u32, u32)> = cuts[1..].iter().map(|&(_, line)| (line, list.column)).collect();
    ends.extend(list.after);
    ends
}

/// Puts the pieces' entries into the skeleton's empty `spec.tasks`, if everything confirms
/// the cut.
///
/// `ends` gives, for each piece, the line after it and the column of the whole document's
/// next token there (absent at the end of the text).
fn graft(
    mut skeleton: Built,
    parts: Vec<Option<Built>>,
    ends: &[(u32, u32)],
    list: &List,
    limits: Limits,
) -> Option<Loaded> {
    let (mut nodes, mut alias_nodes, mut alias_bytes) = (skeleton.nodes, skeleton.alias_nodes, skeleton.alias_bytes);
    let mut items = Vec::new();
    let mut kids = Vec::new();
    let mut issues = std::mem::take(&mut skeleton.loaded.issues);
    let (mut start, mut end) = (None, None);
    for (k, part) in parts.into_iter().enumerate() {
        let Built { mut loaded, nodes: n, alias_nodes: a, alias_bytes: ab } = part?;
        // A piece's collections that run to its end end where its text does, at the start of
        // the next line; in the whole document they end at the next token: the next entry's
        // `-`, or what follows the list.
        if let Some(&(next_line, column)) = ends.get(k) {
            let (from, to) = (Pos { line: next_line, column: 1 }, Pos { line: next_line, column });
            let mut node = &mut loaded.spans;
            while node.span.end == from {
                node.span.end = to;
                node = match &mut node.kids {
                    Kids::Seq(items) => match items.last_mut() {
                        Some(n) => n,
                        None => break,
                    },
                    Kids::Map(entries) => match entries.last_mut() {
                        Some((_, n)) => n,
                        None => break,
                    },
                    Kids::Leaf => break,
                };
            }
        }
        nodes += n;
        alias_nodes += a;
        alias_bytes += ab;
        let (Json::Array(mut part_items), Kids::Seq(mut part_kids)) = (loaded.json, loaded.spans.kids) else {
            return None;
        };
        // Each piece is one sequence starting on its first line: entries, nothing else.
        if loaded.spans.span.start.line < list.first_line || part_items.len() != part_kids.len() {
            return None;
        }
        start = start.or(Some(loaded.spans.span.start));
        end = Some(loaded.spans.span.end);
        items.append(&mut part_items);
        kids.append(&mut part_kids);
        issues.extend(loaded.issues);
    }
    // Near a limit, let the one-thread load decide exactly where it trips.
    if nodes >= limits.max_nodes || alias_nodes >= limits.max_alias_nodes || alias_bytes >= limits.max_alias_bytes {
        return None;
    }
    let Loaded { mut json, mut spans, .. } = skeleton.loaded;
    // The skeleton's `spec.tasks` is where the list was, and empty.
    let (Json::Object(root), Kids::Map(root_kids)) = (&mut json, &mut spans.kids) else { return None };
    // The span tree keeps a mapping's entries in the order of the JSON object's.
    let s = root.keys().position(|k| k == "spec")?;
    let (Some(Json::Object(spec)), Some((_, spec_node))) = (root.get_mut("spec"), root_kids.get_mut(s)) else {
        return None;
    };
    let Kids::Map(spec_kids) = &mut spec_node.kids else { return None };
    let t = spec.keys().position(|k| k == "tasks")?;
    let (slot, (key_span, node)) = (spec.get_mut("tasks")?, spec_kids.get_mut(t)?);
    if !slot.is_null() || key_span.start.line != list.key_line || !matches!(node.kids, Kids::Leaf) {
        return None;
    }
    *slot = Json::Array(items);
    *node = SpanNode { span: super::Span::new(start?, end?), kids: Kids::Seq(kids) };
    Some(Loaded { json, spans, issues })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::{LoadError, build, load as load_any};
    use proptest::prelude::*;

    fn serial(text: &str) -> Result<Loaded, LoadError> {
        build(Parser::new_from_str(text), Limits::default())
    }

    #[test]
    fn finds_the_task_list_from_lines() {
        let text = "spec:\n  tasks:   # the list\n\n    - id: a\n      x: |\n        - not an entry\n    # note\n    - id: b\n  outputs: {}\n";
        let list = find(text).unwrap();
        assert_eq!(list.key_line, 2);
        assert_eq!(list.first_line, 4);
        assert_eq!(list.entries.iter().map(|e| e.1).collect::<Vec<_>>(), vec![4, 8]);
        assert_eq!(&text[list.end..], "  outputs: {}\n");
        // Compact lists (entries at the key's indentation) too.
        let list = find("spec:\n  tasks:\n  - id: a\n  - id: b\n  x: 1\n").unwrap();
        assert_eq!(list.entries.len(), 2);
        // Not a block list, or cutting would be unsafe: none.
        assert!(find("spec:\n  tasks: [a, b]\n").is_none());
        assert!(find("spec:\n  tasks:\n    id: a\n").is_none());
        assert!(find("%YAML 1.2\n---\nspec:\n  tasks:\n    - a\n").is_none());
        assert!(find("spec:\r\n  tasks:\r\n    - a\r\n").is_none());
    }

    /// Entries made of the constructs that span lines, so that the line scan's guesses land
    /// inside them: quoted scalars, flow collections, block scalars, comments, anchors.
    fn entry() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            1 => Just("      prompt: \"two\n    - lines\"\n".to_string()),
            1 => Just("      prompt: 'one\n\n    - more'\n".to_string()),
            1 => Just("      with: { a: 1,\n    - b: 2 }\n".to_string()),
            1 => Just("      with: [1,\n    - 2]\n".to_string()),
            4 => Just("      text: |\n        - inside\n          more\n".to_string()),
            4 => Just("      text: >-\n        folded\n\n        - x\n".to_string()),
            // Keep chomping: the blank lines after the scalar, up to the next entry, are its own.
            4 => Just("      text: |+\n        kept\n\n\n".to_string()),
            2 => Just("      text: >+\n        kept\n\n    # a comment after\n\n".to_string()),
            4 => Just("    # a comment\n".to_string()),
            4 => Just("      retry: &r { max: 2 }\n".to_string()),
            1 => Just("      again: *r\n".to_string()),
            1 => Just("      again: *spec_anchor\n".to_string()),
            4 => Just("      dup: 1\n      dup: 2\n".to_string()),
            4 => Just("      when: \"{{ x }}\"\n".to_string()),
            4 => Just("      prompt: \"two\n        - lines\"\n".to_string()),
            4 => Just("      with: { a: 1,\n        b: [2,\n        3] }\n".to_string()),
            4 => Just("      ? complex\n      : value\n".to_string()),
            4 => Just("      tagged: !!str 12\n".to_string()),
            4 => Just("      list:\n      - a\n      - b\n".to_string()),
            1 => Just("      bad: [\n".to_string()),
            1 => Just("  stray: 1\n".to_string()),
            4 => Just("\n".to_string()),
            4 => Just("      n: 0x1f\n      t: ~\n".to_string()),
            4 => "[a-z]{1,8}".prop_map(|w| format!("      k_{w}: v {w}\n")),
        ];
        (0u32..1000, prop::collection::vec(piece, 0..4)).prop_map(|(id, parts)| {
            let mut s = format!("    - id: t{id}\n");
            for p in parts {
                s.push_str(&p);
            }
            s
        })
    }

    fn document(head: &str, entries: &[String], tail: &str) -> String {
        let mut s = format!("apiVersion: v1\n{head}spec:\n  base: &spec_anchor {{ a: 1 }}\n  tasks:\n");
        for e in entries {
            s.push_str(e);
        }
        s.push_str(tail);
        s
    }

    /// What a whole-document parse gives, the pieces give too, or they give way.
    fn agrees(text: &str) -> Result<(), TestCaseError> {
        let list = find(text);
        let Some(list) = list else { return Ok(()) };
        // Force a cut at every entry boundary a piece could start at: the strongest check.
        let mut built = Vec::new();
        for (k, &(at, line)) in list.entries.iter().enumerate() {
            let end = list.entries.get(k + 1).map_or(list.end, |e| e.0);
            let limits = Limits { max_depth: Limits::default().max_depth - LIST_DEPTH, ..Limits::default() };
            built.push(build_counted(Parser::new_from_str(&text[at..end]), limits, line - 1).ok());
        }
        let body = &text[list.start..list.end];
        let mut skeleton = String::from(&text[..list.start]);
        skeleton.extend(std::iter::repeat_n('\n', body.matches('\n').count()));
        skeleton.push_str(&text[list.end..]);
        let skeleton = build_counted(Parser::new_from_str(&skeleton), Limits::default(), 0);
        let whole = serial(text);
        let Ok(skeleton) = skeleton else { return Ok(()) };
        let ends = piece_ends(&list.entries, &list);
        let g = graft(skeleton, built, &ends, &list, Limits::default());
        if let Some(pieced) = g {
            let whole =
                whole.map_err(|e| TestCaseError::fail(format!("pieces loaded what does not load: {e}\n{text}")))?;
            prop_assert_eq!(&pieced.json, &whole.json, "{}", text);
            if let Some(d) = difference(&pieced.spans, &whole.spans, "") {
                return Err(TestCaseError::fail(format!("spans differ at {d}\n{text}")));
            }
            let mut a = format!("{:?}", pieced.issues);
            let mut b = format!("{:?}", whole.issues);
            if pieced.issues.len() == whole.issues.len() {
                a = sorted_debug(&pieced.issues);
                b = sorted_debug(&whole.issues);
            }
            prop_assert_eq!(a, b, "{}", text);
        }
        Ok(())
    }

    /// Where two span trees first differ, and how.
    fn difference(a: &SpanNode, b: &SpanNode, at: &str) -> Option<String> {
        if a.span != b.span {
            return Some(format!("{at}: {:?} against {:?}", a.span, b.span));
        }
        match (&a.kids, &b.kids) {
            (Kids::Leaf, Kids::Leaf) => None,
            (Kids::Seq(x), Kids::Seq(y)) if x.len() == y.len() => {
                x.iter().zip(y).enumerate().find_map(|(i, (p, q))| difference(p, q, &format!("{at}/{i}")))
            }
            (Kids::Map(x), Kids::Map(y)) if x.len() == y.len() => {
                x.iter().zip(y).enumerate().find_map(|(i, (p, q))| {
                    if p.0 != q.0 {
                        return Some(format!("{at}/{i} key: {:?} against {:?}", p.0, q.0));
                    }
                    difference(&p.1, &q.1, &format!("{at}/{i}"))
                })
            }
            _ => Some(format!("{at}: shapes differ")),
        }
    }

    fn sorted_debug(issues: &[crate::yaml::LoadIssue]) -> String {
        let mut v: Vec<String> = issues.iter().map(|i| format!("{i:?}")).collect();
        v.sort();
        v.join("\n")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn pieces_load_what_the_whole_document_loads(
            // `tasks:` lines before the real one: in a block scalar, under another key.
            head in prop_oneof![
                Just(""),
                Just("notes: |\n  tasks:\n    - not: this\n"),
                Just("metadata:\n  tasks:\n    - a\n"),
                Just("# tasks:\n"),
            ],
            entries in prop::collection::vec(entry(), 1..8),
            tail in prop_oneof![Just(""), Just("  outputs: { a: 1 }\n"), Just("  more: [1,\n    2]\n"), Just("tail: x\n"), Just("    - late: 1\n")],
        ) {
            agrees(&document(head, &entries, tail))?;
        }
    }

    #[test]
    fn entries_with_multi_line_constructs_load_in_pieces_as_whole() {
        let entry = "    - id: t\n      text: |\n        - not an entry\n\n      # a comment\n    # another\n      retry: &r { max: 2 }\n      again: *r\n      with: { a: 1,\n        b: [2,\n        3] }\n      prompt: \"two\n        lines\"\n      list:\n      - a\n      ? complex\n      : value\n      dup: 1\n      dup: 2\n";
        let mut text = String::from("spec:\n  name: x\n  tasks:\n");
        while text.len() < 4 * SPLIT_FROM {
            text.push_str(entry);
        }
        text.push_str("  outputs: { a: 1 }\nafter: [1,\n  2]\n");
        let pieced = load_on(&text, Limits::default(), 3).expect("cut");
        let whole = serial(&text).unwrap();
        assert_eq!(pieced.json, whole.json);
        assert_eq!(difference(&pieced.spans, &whole.spans, ""), None);
        assert_eq!(sorted_debug(&pieced.issues), sorted_debug(&whole.issues));
        assert!(!whole.issues.is_empty());
        // An alias to an anchor outside the entry: not cut, loaded whole, the same.
        let text = text.replacen("again: *r", "again: *elsewhere", 1).replacen("name: x", "name: &elsewhere x", 1);
        assert!(load_on(&text, Limits::default(), 3).is_none());
        assert_eq!(load_any(&text, Limits::default()).unwrap().json, serial(&text).unwrap().json);
    }

    #[test]
    fn an_alias_bomb_in_the_list_is_refused_as_the_whole_load_refuses_it() {
        // Within one entry, so a piece parses it: each piece may copy only its share of the
        // alias budget, and the whole load, which decides, refuses it at the document's limit.
        let with_aliases = |levels: usize| {
            let mut text = String::from("spec:\n  tasks:\n");
            while text.len() < 4 * SPLIT_FROM {
                text.push_str("    - id: t\n      with: { prompt: \"padding padding padding padding\" }\n");
            }
            text.push_str("    - id: aliases\n      a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
            for i in 1..levels {
                let p = i - 1;
                text.push_str(&format!(
                    "      a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
                ));
            }
            text
        };
        let limits = Limits::default();
        let bomb = with_aliases(7);
        assert!(load_on(&bomb, limits, 3).is_none(), "a piece over its share gives way");
        assert!(matches!(load_any(&bomb, limits), Err(LoadError::TooManyAliasNodes { .. })));
        // Over one piece's share (about 1,100 copied nodes against a third of 1,500) but under
        // the document's budget: loaded whole, as a whole-document load loads it.
        let text = with_aliases(3);
        let tight = Limits { max_alias_nodes: 1_500, ..limits };
        assert!(load_on(&text, tight, 3).is_none());
        assert_eq!(load_any(&text, tight).unwrap().json, serial_with(&text, tight).unwrap().json);
        assert!(load_on(&text, limits, 3).is_some(), "with room in every share, it is cut");
    }

    fn serial_with(text: &str, limits: Limits) -> Result<Loaded, LoadError> {
        build(Parser::new_from_str(text), limits)
    }

    #[test]
    fn a_large_workflow_loads_in_pieces_as_it_loads_whole() {
        for shape in [crate::synth::Shape::Layered { width: 100 }, crate::synth::Shape::FanOutFanIn] {
            let text = crate::synth::workflow_yaml(shape, 2_000);
            let pieced = load_on(&text, Limits::default(), 3).expect("a synthetic workflow is cut");
            let whole = serial(&text).unwrap();
            assert_eq!(pieced.json, whole.json);
            assert_eq!(difference(&pieced.spans, &whole.spans, ""), None);
            assert_eq!(difference(&load_any(&text, Limits::default()).unwrap().spans, &whole.spans, ""), None);
        }
    }
}
