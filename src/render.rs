//! `dag`: the graph as indented text, Graphviz DOT or Mermaid.

use crate::plan::Plan;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write;

/// How `dag` draws the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DagFormat {
    /// Indented text: each vertex with its inputs.
    Text,
    /// Graphviz DOT.
    Dot,
    /// A Mermaid flowchart.
    Mermaid,
}

/// Edges as (from, to, label) over node or stage names.
fn edges(plan: &Plan, stages: bool) -> (Vec<String>, BTreeSet<(String, String, String)>) {
    let mut vertices = Vec::new();
    let mut seen = HashSet::new();
    let mut es = BTreeSet::new();
    for n in &plan.nodes {
        let v = if stages { n.stage.clone() } else { n.name.clone() };
        if seen.insert(v.clone()) {
            vertices.push(v.clone());
        }
        for (slot, ups) in &n.inputs {
            for u in ups {
                let from = if stages { plan.nodes[u.node].stage.clone() } else { plan.nodes[u.node].name.clone() };
                es.insert((from, v.clone(), format!("{}→{slot}", u.output)));
            }
        }
    }
    (vertices, es)
}

pub fn dag(plan: &Plan, format: DagFormat, stages: bool) -> String {
    let (vs, es) = edges(plan, stages);
    let mut s = String::new();
    match format {
        DagFormat::Text => {
            // Built once: looked up per vertex, a scan of every node and edge made 20k stages take minutes.
            let mut kinds: HashMap<&str, &str> = HashMap::new();
            for n in &plan.nodes {
                kinds.entry(if stages { n.stage.as_str() } else { n.name.as_str() }).or_insert(n.kind.kind());
            }
            let mut into: HashMap<&str, Vec<(&str, &str)>> = HashMap::new(); // in `es` order: by upstream, label
            for (from, to, label) in &es {
                into.entry(to.as_str()).or_default().push((from, label));
            }
            for v in &vs {
                let kind = kinds.get(v.as_str()).copied().unwrap_or("");
                let count = if stages { format!(" ({} nodes)", plan.by_stage[v].len()) } else { String::new() };
                let _ = writeln!(s, "{v} [{kind}]{count}");
                for (from, label) in into.get(v.as_str()).into_iter().flatten() {
                    let _ = writeln!(s, "    <- {from} ({label})");
                }
            }
        }
        DagFormat::Dot => {
            let _ = writeln!(s, "digraph rmdistill {{\n  rankdir=LR;\n  node [shape=box];");
            for v in &vs {
                let _ = writeln!(s, "  {v:?};");
            }
            for (a, b, l) in &es {
                let _ = writeln!(s, "  {a:?} -> {b:?} [label={l:?}];");
            }
            s.push_str("}\n");
        }
        DagFormat::Mermaid => {
            s.push_str("flowchart LR\n");
            let index: HashMap<&str, usize> = vs.iter().enumerate().map(|(i, v)| (v.as_str(), i)).collect();
            let id = |v: &str| format!("n{}", index.get(v).copied().unwrap_or(0));
            for v in &vs {
                let _ = writeln!(s, "  {}[\"{}\"]", id(v), v.replace('"', "'"));
            }
            for (a, b, l) in &es {
                let _ = writeln!(s, "  {} -->|\"{}\"| {}", id(a), l.replace('"', "'"), id(b));
            }
        }
    }
    s
}
