//! `dag`: the graph as indented text, Graphviz DOT or Mermaid; and [`visible`], how text that comes from data is
//! written to a terminal.

use crate::plan::Plan;
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write;

/// Whether a terminal could act on `c` rather than show it: C0 controls, DEL, C1 controls (U+0080–U+009F: some
/// terminals take U+009B as CSI), and the bidirectional marks, embeddings, overrides and isolates (U+061C, U+200E,
/// U+200F, U+202A–U+202E, U+2066–U+2069), which reorder the text around them.
pub fn is_unsafe_char(c: char) -> bool {
    matches!(c, '\0'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{61c}' | '\u{200e}' | '\u{200f}')
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Writes `c` as [`visible`] shows it: `\t`, `\n`, `\r`, else `\u{1b}`.
fn push_escaped(out: &mut String, c: char) {
    match c {
        '\t' => out.push_str("\\t"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

/// `s` safe to print on a terminal: every character [`is_unsafe_char`] says a terminal could act on (an escape
/// sequence that sets the title or clears the screen, a bidi override) is written visibly as Rust writes it, e.g.
/// `\u{1b}`, `\u{202e}`, `\t`; those in `keep` (such as `\n` in a multi-line message) are left as they are.
/// Backslashes are not doubled, so a literal `\u{1b}` in the data reads the same as an escaped ESC.
pub fn visible<'a>(s: &'a str, keep: &[char]) -> Cow<'a, str> {
    if !s.chars().any(|c| is_unsafe_char(c) && !keep.contains(&c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if is_unsafe_char(c) && !keep.contains(&c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

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
pub fn edges(plan: &Plan, stages: bool) -> (Vec<String>, BTreeSet<(String, String, String)>) {
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
                let _ = writeln!(s, "{} [{kind}]{count}", visible(v, &[]));
                for (from, label) in into.get(v.as_str()).into_iter().flatten() {
                    let _ = writeln!(s, "    <- {} ({})", visible(from, &[]), visible(label, &[]));
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
                let _ = writeln!(s, "  {}[\"{}\"]", id(v), visible(v, &[]).replace('"', "'"));
            }
            for (a, b, l) in &es {
                let _ = writeln!(s, "  {} -->|\"{}\"| {}", id(a), visible(l, &[]).replace('"', "'"), id(b));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::{is_unsafe_char, visible};

    #[test]
    fn what_a_terminal_would_act_on_is_written_visibly() {
        let title = "hello \u{1b}]0;PWNED\u{7} \u{1b}[2J\u{1b}[31m red";
        assert_eq!(visible(title, &[]), "hello \\u{1b}]0;PWNED\\u{7} \\u{1b}[2J\\u{1b}[31m red");
        assert_eq!(visible("a\tb\nc\rd\u{7f}\u{9b}e", &[]), "a\\tb\\nc\\rd\\u{7f}\\u{9b}e");
        assert_eq!(visible("l1\nl2\tx\u{0}", &['\n', '\t']), "l1\nl2\tx\\u{0}");
        assert_eq!(
            visible("abc\u{202e}cba\u{2066}x\u{2069}\u{200f}", &[]),
            "abc\\u{202e}cba\\u{2066}x\\u{2069}\\u{200f}"
        );
        // ordinary text, however far from ASCII, is left alone (and not copied)
        for ok in ["plain", "café ☕ 日本語 עברית", "", "\\u{1b} typed out"] {
            assert!(matches!(visible(ok, &[]), std::borrow::Cow::Borrowed(_)), "{ok}");
        }
        let unsafe_: Vec<u32> =
            (0..0x3000u32).filter_map(char::from_u32).filter(|&c| is_unsafe_char(c)).map(|c| c as u32).collect();
        let want: Vec<u32> = (0..0x20)
            .chain(0x7f..0xa0)
            .chain([0x61c, 0x200e, 0x200f])
            .chain(0x202a..0x202f)
            .chain(0x2066..0x206a)
            .collect();
        assert_eq!(unsafe_, want);
    }
}
