//! The task graph: topological order, parallel levels, critical path, ancestry, cycles,
//! and drawings (Mermaid, Graphviz dot).
//!
//! Edges point from a dependency to its dependent (`a -> b`: b runs after a). A fallback
//! task gets an edge from the task it stands in for.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::OnceLock;

use fixedbitset::FixedBitSet;
use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeKind {
    DependsOn,
    Fallback,
}

/// One task as the graph sees it.
#[derive(Debug, Clone)]
pub struct NodeSpec<'a> {
    pub id: &'a str,
    pub depends_on: Vec<&'a str>,
    pub fallback: Option<&'a str>,
}

/// An acyclic task graph.
#[derive(Debug, Clone)]
pub struct Dag {
    ids: Vec<String>,
    index: HashMap<String, usize>,
    graph: DiGraph<usize, EdgeKind>,
    topo: Vec<usize>,
    levels: Vec<u32>,
    /// Transitive dependencies, computed on first use: most references are to direct
    /// dependencies, and a 10,000-task chain would need 12 MB of bitsets up front.
    ancestors: Vec<OnceLock<FixedBitSet>>,
}

/// A dependency cycle, as task indexes in dependency order: each depends on the next, and
/// the last on the first.
pub type Cycle = Vec<usize>;

impl Dag {
    /// Builds the graph. Unknown ids in `depends_on`/`fallback` are ignored here (the
    /// validator reports them); cycles are returned as errors.
    pub fn build(nodes: &[NodeSpec<'_>]) -> Result<Dag, Vec<Cycle>> {
        let mut graph = DiGraph::with_capacity(nodes.len(), nodes.len() * 2);
        let mut index = HashMap::with_capacity(nodes.len());
        for (i, n) in nodes.iter().enumerate() {
            graph.add_node(i);
            index.entry(n.id.to_string()).or_insert(i);
        }
        for (i, n) in nodes.iter().enumerate() {
            for d in &n.depends_on {
                if let Some(&j) = index.get(*d) {
                    graph.add_edge(NodeIndex::new(j), NodeIndex::new(i), EdgeKind::DependsOn);
                }
            }
            if let Some(f) = n.fallback
                && let Some(&j) = index.get(f)
            {
                graph.add_edge(NodeIndex::new(i), NodeIndex::new(j), EdgeKind::Fallback);
            }
        }
        let ids = nodes.iter().map(|n| n.id.to_string()).collect();
        let topo = match petgraph::algo::toposort(&graph, None) {
            Ok(order) => order.into_iter().map(NodeIndex::index).collect::<Vec<_>>(),
            Err(_) => return Err(find_cycles(&graph)),
        };
        let n = nodes.len();
        let mut levels = vec![0u32; n];
        for &v in &topo {
            let vi = NodeIndex::new(v);
            levels[v] = graph
                .edges_directed(vi, petgraph::Direction::Incoming)
                .map(|e| levels[e.source().index()] + 1)
                .max()
                .unwrap_or(0);
        }
        let ancestors = (0..n).map(|_| OnceLock::new()).collect();
        Ok(Dag { ids, index, graph, topo, levels, ancestors })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn id(&self, i: usize) -> &str {
        &self.ids[i]
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Tasks in an order where every task comes after its dependencies.
    pub fn topological_order(&self) -> &[usize] {
        &self.topo
    }

    /// Level of each task: 0 for tasks without dependencies, else 1 + the deepest dependency.
    pub fn level(&self, i: usize) -> u32 {
        self.levels[i]
    }

    /// Tasks grouped by level: each group can run in parallel once the earlier ones ended.
    pub fn level_groups(&self) -> Vec<Vec<usize>> {
        let depth = self.levels.iter().copied().max().map_or(0, |m| m as usize + 1);
        let mut groups = vec![Vec::new(); depth];
        for (i, &l) in self.levels.iter().enumerate() {
            groups[l as usize].push(i);
        }
        groups
    }

    /// Is `a` a (transitive) dependency of `b`?
    pub fn is_ancestor(&self, a: usize, b: usize) -> bool {
        if self.levels[a] >= self.levels[b] {
            return false;
        }
        if self.parents(b).any(|(p, _)| p == a) {
            return true;
        }
        self.ancestor_set(b).contains(a)
    }

    /// All (transitive) dependencies of `i`.
    pub fn ancestors(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        self.ancestor_set(i).ones()
    }

    /// The ancestor set of `i`, computing (iteratively, in topological order) the sets of
    /// every ancestor that lacks one.
    fn ancestor_set(&self, i: usize) -> &FixedBitSet {
        if let Some(s) = self.ancestors[i].get() {
            return s;
        }
        let n = self.len();
        let mut seen = FixedBitSet::with_capacity(n);
        let mut need = Vec::new();
        let mut stack = vec![i];
        while let Some(v) = stack.pop() {
            if seen.put(v) || self.ancestors[v].get().is_some() {
                continue;
            }
            need.push(v);
            stack.extend(self.parents(v).map(|(p, _)| p));
        }
        // Parents have lower levels, so level order is a topological order.
        need.sort_unstable_by_key(|&v| self.levels[v]);
        for v in need {
            let mut set = FixedBitSet::with_capacity(n);
            for (p, _) in self.parents(v) {
                set.union_with(self.ancestors[p].get().expect("parents come first"));
                set.insert(p);
            }
            let _ = self.ancestors[v].set(set);
        }
        self.ancestors[i].get().expect("just computed")
    }

    /// Direct dependencies of `i`, with the edge kind.
    pub fn parents(&self, i: usize) -> impl Iterator<Item = (usize, EdgeKind)> + '_ {
        self.graph
            .edges_directed(NodeIndex::new(i), petgraph::Direction::Incoming)
            .map(|e| (e.source().index(), *e.weight()))
    }

    /// Direct dependents of `i`, with the edge kind.
    pub fn children(&self, i: usize) -> impl Iterator<Item = (usize, EdgeKind)> + '_ {
        self.graph
            .edges_directed(NodeIndex::new(i), petgraph::Direction::Outgoing)
            .map(|e| (e.target().index(), *e.weight()))
    }

    /// The longest chain of tasks (each task counting 1; weights can refine this later).
    pub fn critical_path(&self) -> Vec<usize> {
        self.critical_path_by(|_| 1.0)
    }

    /// The heaviest chain of tasks, each weighing `weight(task)`.
    pub fn critical_path_by(&self, weight: impl Fn(usize) -> f64) -> Vec<usize> {
        let n = self.len();
        let mut best = vec![0f64; n];
        let mut prev: Vec<Option<usize>> = vec![None; n];
        for &v in &self.topo {
            let mut b = 0f64;
            for (p, _) in self.parents(v) {
                if best[p] > b || (best[p] == b && prev[v].is_none_or(|q| p < q)) {
                    b = best[p];
                    prev[v] = Some(p);
                }
            }
            best[v] = b + weight(v);
        }
        let Some(mut end) = (0..n).max_by(|&a, &b| best[a].total_cmp(&best[b]).then(b.cmp(&a))) else {
            return Vec::new();
        };
        let mut path = vec![end];
        while let Some(p) = prev[end] {
            path.push(p);
            end = p;
        }
        path.reverse();
        path
    }

    /// Mermaid flowchart source.
    pub fn mermaid(&self, label: impl Fn(usize) -> String) -> String {
        let mut out = String::from("flowchart TD\n");
        for i in 0..self.len() {
            let _ = writeln!(out, "    {}[\"{}\"]", self.ids[i], label(i).replace('"', "#quot;"));
        }
        for e in self.graph.edge_references() {
            let (a, b) = (&self.ids[e.source().index()], &self.ids[e.target().index()]);
            match e.weight() {
                EdgeKind::DependsOn => {
                    let _ = writeln!(out, "    {a} --> {b}");
                }
                EdgeKind::Fallback => {
                    let _ = writeln!(out, "    {a} -. on failure .-> {b}");
                }
            }
        }
        out
    }

    /// Graphviz dot source.
    pub fn dot(&self, name: &str, label: impl Fn(usize) -> String) -> String {
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out = format!("digraph \"{}\" {{\n    rankdir=TB;\n    node [shape=box, style=rounded];\n", esc(name));
        for i in 0..self.len() {
            let _ = writeln!(out, "    \"{}\" [label=\"{}\"];", esc(&self.ids[i]), esc(&label(i)));
        }
        for e in self.graph.edge_references() {
            let (a, b) = (&self.ids[e.source().index()], &self.ids[e.target().index()]);
            let style = match e.weight() {
                EdgeKind::DependsOn => "",
                EdgeKind::Fallback => " [style=dashed, label=\"on failure\"]",
            };
            let _ = writeln!(out, "    \"{}\" -> \"{}\"{style};", esc(a), esc(b));
        }
        out.push_str("}\n");
        out
    }
}

/// One cycle per strongly connected component that has one.
fn find_cycles(graph: &DiGraph<usize, EdgeKind>) -> Vec<Cycle> {
    let mut cycles = Vec::new();
    for scc in tarjan_scc(graph) {
        let self_loop = scc.len() == 1 && graph.find_edge(scc[0], scc[0]).is_some();
        if scc.len() < 2 && !self_loop {
            continue;
        }
        let members: std::collections::HashSet<NodeIndex> = scc.iter().copied().collect();
        let start = *scc.iter().min().expect("non-empty");
        // Walk edges inside the component until we come back: a BFS gives a shortest cycle.
        let mut prev: HashMap<NodeIndex, NodeIndex> = HashMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut closing = None;
        'bfs: while let Some(v) = queue.pop_front() {
            for w in graph.neighbors_directed(v, petgraph::Direction::Outgoing) {
                if !members.contains(&w) {
                    continue;
                }
                if w == start {
                    closing = Some(v);
                    break 'bfs;
                }
                if let std::collections::hash_map::Entry::Vacant(e) = prev.entry(w) {
                    e.insert(v);
                    queue.push_back(w);
                }
            }
        }
        let mut path = vec![start.index()];
        if let Some(mut v) = closing {
            let mut back = Vec::new();
            while v != start {
                back.push(v.index());
                v = prev[&v];
            }
            path.extend(back.into_iter().rev());
        }
        // Edges run dependency -> dependent; report in "depends on" order, from the
        // first-declared task.
        path.reverse();
        let first = path.iter().enumerate().min_by_key(|(_, v)| **v).map_or(0, |(i, _)| i);
        path.rotate_left(first);
        cycles.push(path);
    }
    cycles.sort();
    cycles
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(edges: &[(&'a str, &[&'a str])]) -> Vec<NodeSpec<'a>> {
        edges.iter().map(|(id, deps)| NodeSpec { id, depends_on: deps.to_vec(), fallback: None }).collect()
    }

    #[test]
    fn levels_ancestors_and_critical_path() {
        let nodes = spec(&[("a", &[]), ("b", &["a"]), ("c", &["a"]), ("d", &["b", "c"]), ("e", &["d"]), ("x", &[])]);
        let dag = Dag::build(&nodes).unwrap();
        let groups: Vec<Vec<&str>> =
            dag.level_groups().into_iter().map(|g| g.into_iter().map(|i| dag.id(i)).collect()).collect();
        assert_eq!(groups, vec![vec!["a", "x"], vec!["b", "c"], vec!["d"], vec!["e"]]);
        assert!(dag.is_ancestor(0, 4));
        assert!(!dag.is_ancestor(5, 4));
        assert!(!dag.is_ancestor(4, 0));
        let path: Vec<&str> = dag.critical_path().into_iter().map(|i| dag.id(i)).collect();
        assert_eq!(path, vec!["a", "b", "d", "e"]);
    }

    #[test]
    fn cycles_are_named() {
        let nodes = spec(&[("a", &["c"]), ("b", &["a"]), ("c", &["b"]), ("d", &["d"]), ("e", &[])]);
        let cycles = Dag::build(&nodes).unwrap_err();
        let named: Vec<Vec<&str>> = cycles.iter().map(|c| c.iter().map(|&i| nodes[i].id).collect()).collect();
        assert_eq!(named, vec![vec!["a", "c", "b"], vec!["d"]]);
    }

    #[test]
    fn drawings_mention_every_edge() {
        let mut nodes = spec(&[("a", &[]), ("b", &["a"]), ("fb", &["a"])]);
        nodes[1].fallback = Some("fb");
        let dag = Dag::build(&nodes).unwrap();
        let m = dag.mermaid(|i| dag.id(i).to_string());
        assert!(m.contains("a --> b") && m.contains("b -. on failure .-> fb"));
        let d = dag.dot("w", |i| dag.id(i).to_string());
        assert!(d.contains("\"a\" -> \"b\";") && d.contains("\"b\" -> \"fb\" [style=dashed"));
    }
}
