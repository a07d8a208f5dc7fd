//! Synthetic workflows of chosen shape and size, for benchmarks and scale tests.
//!
//! Every generated task is an `llm` task (mock provider) whose prompt reads the outputs of
//! its dependencies, so validation exercises templates and reference checks at full scale.

use std::fmt::Write;

/// Graph shapes used by the benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// t0 -> t1 -> ... -> t(n-1).
    Chain,
    /// One source, n-2 parallel tasks, one join depending on all of them.
    FanOutFanIn,
    /// Layers of `width` tasks; each task depends on up to 3 tasks of the layer before.
    Layered { width: usize },
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Chain => "chain",
            Shape::FanOutFanIn => "fan-out-fan-in",
            Shape::Layered { .. } => "layered",
        }
    }
}

/// The dependencies of task `i` in a graph of `n` tasks of this shape.
pub fn deps(shape: Shape, n: usize, i: usize) -> Vec<usize> {
    match shape {
        Shape::Chain => (i > 0).then(|| i - 1).into_iter().collect(),
        Shape::FanOutFanIn => {
            if i == 0 {
                vec![]
            } else if i == n - 1 && n > 2 {
                (1..n - 1).collect()
            } else {
                vec![0]
            }
        }
        Shape::Layered { width } => {
            let layer = i / width;
            if layer == 0 {
                return vec![];
            }
            let prev = (layer - 1) * width;
            let pos = i % width;
            let mut d = vec![prev + pos, prev + (pos + 1) % width, prev + (pos + 7) % width];
            d.sort_unstable();
            d.dedup();
            d
        }
    }
}

/// A workflow document (YAML text) with `n` tasks of `shape`.
pub fn workflow_yaml(shape: Shape, n: usize) -> String {
    let mut s = String::with_capacity(n * 160);
    let _ = write!(
        s,
        "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata:\n  name: synth-{}-{n}\nspec:\n  inputs:\n    topic: {{ type: string, default: benchmarks }}\n  tasks:\n",
        shape.name()
    );
    for i in 0..n {
        let d = deps(shape, n, i);
        let _ = write!(s, "    - id: t{i}\n      type: llm\n");
        if !d.is_empty() {
            s.push_str("      depends_on: [");
            for (k, j) in d.iter().enumerate() {
                if k > 0 {
                    s.push_str(", ");
                }
                let _ = write!(s, "t{j}");
            }
            s.push_str("]\n");
        }
        let read = match d.first() {
            Some(j) if d.len() <= 3 => format!("{{{{ tasks.t{j}.output.text }}}}"),
            Some(_) => "{{ inputs.topic }} (join)".to_string(),
            None => "{{ inputs.topic }}".to_string(),
        };
        let _ = writeln!(s, "      with: {{ provider: mock, model: echo, prompt: \"step {i}: {read}\" }}");
    }
    s
}
