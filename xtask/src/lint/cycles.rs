//! Cycles: the folder graph each edge counts in, and the elementary cycles of a graph.
use std::collections::BTreeSet;

use super::nodes::{ROOT, segments};

/// Enough to act on; a tangle with more cycles than this is reported as cut short.
pub(super) const MAX_CYCLES: usize = 200;

/// The folder graph an edge belongs to (the deepest common ancestor of its ends) and the edge
/// there: each end becomes the folder's own node (its `mod.rs`) or the child of the folder that
/// holds it.
pub(super) fn folder_edge(from: &str, to: &str) -> (String, String, String) {
    let (f, t) = (segments(from), segments(to));
    let common = f.iter().zip(&t).take_while(|(x, y)| x == y).count();
    let folder = f[..common].join("/");
    let end = |s: &[&str]| {
        if s.len() == common {
            if common == 0 {
                ROOT.to_string()
            } else {
                folder.clone()
            }
        } else {
            s[..=common].join("/")
        }
    };
    let (a, b) = (end(&f), end(&t));
    (folder, a, b)
}

/// Every elementary cycle of a directed graph, each once, starting from its smallest node, in
/// order; at most `max` (the flag says whether the listing is complete).
pub(super) fn elementary_cycles(edges: &BTreeSet<(String, String)>, max: usize) -> (Vec<Vec<String>>, bool) {
    let nodes: Vec<&String> = edges
        .iter()
        .flat_map(|(a, b)| [a, b])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let index = |n: &String| nodes.binary_search(&n).unwrap();
    let mut succ = vec![Vec::new(); nodes.len()];
    for (a, b) in edges {
        if a != b {
            succ[index(a)].push(index(b));
        }
    }
    let scc = strongly_connected(&succ);
    let mut cycles = Vec::new();
    // From each start node, simple paths through larger nodes of its component back to it.
    fn dfs(
        v: usize,
        start: usize,
        succ: &[Vec<usize>],
        scc: &[usize],
        path: &mut Vec<usize>,
        out: &mut Vec<Vec<usize>>,
        max: usize,
    ) {
        for &w in &succ[v] {
            if out.len() > max {
                return;
            }
            if w == start {
                out.push(path.clone());
            } else if w > start && scc[w] == scc[start] && !path.contains(&w) {
                path.push(w);
                dfs(w, start, succ, scc, path, out, max);
                path.pop();
            }
        }
    }
    for start in 0..nodes.len() {
        dfs(start, start, &succ, &scc, &mut vec![start], &mut cycles, max);
    }
    let complete = cycles.len() <= max;
    cycles.truncate(max);
    let named = cycles
        .into_iter()
        .map(|c| c.into_iter().map(|i| nodes[i].clone()).collect())
        .collect();
    (named, complete)
}

/// Tarjan's algorithm: the component number of each node.
fn strongly_connected(succ: &[Vec<usize>]) -> Vec<usize> {
    struct State<'a> {
        succ: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        comp: Vec<usize>,
        comps: usize,
    }
    fn visit(s: &mut State, v: usize) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for k in 0..s.succ[v].len() {
            let w = s.succ[v][k];
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on_stack[w] => s.low[v] = s.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                s.comp[w] = s.comps;
                if w == v {
                    break;
                }
            }
            s.comps += 1;
        }
    }
    let n = succ.len();
    let mut s = State {
        succ,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        comp: vec![0; n],
        comps: 0,
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(&mut s, v);
        }
    }
    s.comp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_are_each_listed_once() {
        let e: BTreeSet<(String, String)> = [("a", "b"), ("b", "a"), ("b", "c"), ("c", "a"), ("c", "d")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let (cycles, complete) = elementary_cycles(&e, 10);
        assert!(complete);
        assert_eq!(cycles, [vec!["a", "b"], vec!["a", "b", "c"]]);
        let (cycles, complete) = elementary_cycles(&e, 1);
        assert!(!complete);
        assert_eq!(cycles.len(), 1);
    }
}
