//! The report: what [`check`](super::check) found, and how it is printed.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::cycles::{MAX_CYCLES, folder_edge};

/// A reference from one file to another module: where it is and how it is written.
#[derive(Debug, Clone)]
pub struct Ref {
    pub file: String,
    pub line: usize,
    pub path: String,
}

#[derive(Debug)]
pub struct LayerViolation {
    pub at: Ref,
    pub from: String,
    pub to: String,
    pub from_module: String,
    pub to_module: String,
    pub from_layer: String,
    pub to_layer: String,
}

/// An elementary cycle among the nodes of one folder (`""` for `agent/src` itself).
#[derive(Debug)]
pub struct Cycle {
    pub folder: String,
    pub nodes: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Report {
    /// Every node (file) checked.
    pub nodes: BTreeSet<String>,
    /// Every edge between two different nodes, with the references that make it.
    pub edges: BTreeMap<(String, String), Vec<Ref>>,
    pub layer_violations: Vec<LayerViolation>,
    /// Top-level modules missing from the layer table, with their file.
    pub unlisted: Vec<(String, String)>,
    pub cycles: Vec<Cycle>,
    /// Folders whose cycle listing stopped at [`MAX_CYCLES`].
    pub truncated: Vec<String>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.layer_violations.is_empty() && self.unlisted.is_empty() && self.cycles.is_empty()
    }

    pub fn summary(&self) -> String {
        format!(
            "{} modules checked, {} edges: no layer violation, no cycle",
            self.nodes.len(),
            self.edges.len()
        )
    }

    /// The violations, one per line, `file:line: path: rule`; each cycle with a reference per edge.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if !self.unlisted.is_empty() {
            let _ = writeln!(
                s,
                "modules missing from the layer table ({}):",
                self.unlisted.len()
            );
            for (m, file) in &self.unlisted {
                let _ = writeln!(
                    s,
                    "  agent/src/{file}:1: `crate::{m}`: module `{m}` has no layer: add it to the layer table \
                     in xtask/src/lint/mod.rs"
                );
            }
        }
        if !self.layer_violations.is_empty() {
            let _ = writeln!(s, "layer violations ({}):", self.layer_violations.len());
            for v in &self.layer_violations {
                let _ = writeln!(
                    s,
                    "  agent/src/{}:{}: `{}` ({} -> {}): layer `{}` ({}) may not use the higher layer `{}` ({})",
                    v.at.file,
                    v.at.line,
                    v.at.path,
                    v.from,
                    v.to,
                    v.from_layer,
                    v.from_module,
                    v.to_layer,
                    v.to_module,
                );
            }
        }
        if !self.cycles.is_empty() {
            let _ = writeln!(s, "cycles ({}):", self.cycles.len());
            for c in &self.cycles {
                let _ = writeln!(
                    s,
                    "  in agent/src/{}: {} -> {}",
                    if c.folder.is_empty() {
                        String::new()
                    } else {
                        format!("{}/", c.folder)
                    },
                    c.nodes.join(" -> "),
                    c.nodes[0]
                );
                for (i, a) in c.nodes.iter().enumerate() {
                    let b = &c.nodes[(i + 1) % c.nodes.len()];
                    let refs = self.refs_between(&c.folder, a, b);
                    let first = &refs[0];
                    let more = if refs.len() > 1 {
                        format!(" (+{} more)", refs.len() - 1)
                    } else {
                        String::new()
                    };
                    let _ = writeln!(
                        s,
                        "    {a} -> {b}: agent/src/{}:{}: `{}`{more}",
                        first.file, first.line, first.path
                    );
                }
            }
        }
        for f in &self.truncated {
            let _ = writeln!(s, "  (agent/src/{f}: listing stopped after {MAX_CYCLES} cycles)");
        }
        s
    }

    /// The references behind the edge `a -> b` of `folder`'s graph, by file and line.
    fn refs_between(&self, folder: &str, a: &str, b: &str) -> Vec<&Ref> {
        let mut refs: Vec<&Ref> = self
            .edges
            .iter()
            .filter(|((from, to), _)| {
                folder_edge(from, to) == (folder.to_string(), a.to_string(), b.to_string())
            })
            .flat_map(|(_, refs)| refs)
            .collect();
        refs.sort_by(|x, y| (&x.file, x.line).cmp(&(&y.file, y.line)));
        refs
    }
}
