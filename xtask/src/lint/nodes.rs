//! Nodes: the module path each file stands for (`cluster/lb`), and how two nodes relate.

/// The crate root's node name.
pub(super) const ROOT: &str = "lib";

/// `cluster/lb.rs` -> `cluster/lb`, `cluster/mod.rs` -> `cluster`, `lib.rs` -> `lib`.
pub(super) fn node_of(file: &str) -> String {
    let stem = file.strip_suffix(".rs").unwrap_or(file);
    stem.strip_suffix("/mod").unwrap_or(stem).to_string()
}

/// The node's module path from the crate root (`lib` is the root itself).
pub(super) fn segments(node: &str) -> Vec<&str> {
    if node == ROOT {
        Vec::new()
    } else {
        node.split('/').collect()
    }
}

pub(super) fn top_module(node: &str) -> &str {
    node.split('/').next().unwrap_or(node)
}

/// `a` lies strictly inside `b` (`cluster/lb` inside `cluster`; everything inside `lib`).
pub(super) fn is_descendant(a: &str, b: &str) -> bool {
    let (a, b) = (segments(a), segments(b));
    a.len() > b.len() && a.starts_with(&b)
}
