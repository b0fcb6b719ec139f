//! `cargo xtask lint`: the module layers and the import cycles of `agent/src` (issue #14).
//!
//! Every `.rs` file under `agent/src` (except `bin/`, which holds separate binaries) is a node of a
//! graph, named by its module path: `cluster/lb` for `cluster/lb.rs`, `cluster` for
//! `cluster/mod.rs`, `lib` for the crate root, `main` for the `sockmesh` binary. An edge `a -> b`
//! is a reference from non-test code of `a` to something in `b`: a `use` (brace groups included),
//! or a `crate::`/`super::`/`self::` path in code (`sockmesh::` in `main.rs`, which is its own
//! crate), or a path through a child module the file declares (`mod lb;` then `lb::pick()`).
//! A path goes to the deepest file it names: `crate::cluster::lb::Balancer` is `cluster/lb` when
//! `cluster/lb.rs` (or `cluster/lb/mod.rs`) exists, else `cluster`.
//!
//! Not edges: `mod x;` declarations, a `pub use` of a module's own descendants (that is the
//! module's shape, not a dependency), `pub(in path)` visibilities, attributes, comments, string
//! and char literals, and items under `#[cfg(test)]` (or `#[cfg(all(test, ..))]`).
//!
//! The checks:
//! - layers: the top-level module of each end of an edge has a layer in [`LAYERS`]; a module may
//!   use its own layer or lower ones, never a higher one. A top-level module missing from the
//!   table is a violation of its own. The crate root (`lib.rs`: module declarations and crate-wide
//!   items such as the embedded BPF object) belongs to no layer: anyone may use its items.
//! - cycles: within each folder (the crate root included), the folder's own file (`mod.rs`) and
//!   its children, each child folder taken as one node, must not depend on each other in a
//!   circle. An edge counts in the folder that is the deepest common ancestor of its ends, so
//!   `agent/src` shows the cycles between top-level modules and `agent/src/cluster` those between
//!   the files of `cluster`. Every elementary cycle is printed once, from its smallest node.
//!
//! Plain std, a small lexer instead of `syn`: the lexer is all the robustness needed (comments,
//! nested block comments, raw strings, char literals against lifetimes), `syn` would not look into
//! macro bodies (`tokio::select!`, `assert!`) where paths also live, and it would add a compile of
//! its own to every `cargo xtask` on a busy 2-core machine.
//!
//! The files, each on its own, none using another that uses it back: this one holds the layer
//! table, [`run`] and [`check`]; [`report`] the findings and their rendering; [`lexer`] the
//! tokens; [`refs`] the references of one file and their resolution to nodes; [`cycles`] the
//! folder graphs and their elementary cycles; [`nodes`] the module path of each file.
mod cycles;
mod lexer;
mod nodes;
mod refs;
mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::util::project_root;
use cycles::{MAX_CYCLES, elementary_cycles, folder_edge};
use nodes::{ROOT, is_descendant, node_of, top_module};
use refs::{resolve, scan};
pub use report::{Cycle, LayerViolation, Ref, Report};

/// The layers of the agent crate, top to bottom, and the top-level modules (`crate::X`, i.e.
/// `agent/src/X.rs` or `agent/src/X/`) in each. A module may use modules of its own layer or of a
/// lower one, never of a higher one.
#[rustfmt::skip]
pub const LAYERS: &[(&str, &[&str])] = &[
    ("top",       &["main", "app", "admin", "control", "install", "check", "observe"]),
    ("intercept", &["intercept"]),
    ("proxy",     &["proxy"]),     // transparent, passthrough, serve, outbound = client role, inbound = server role
    ("filter",    &["filter"]),
    ("cluster",   &["cluster"]),   // one running cluster: discovery, route, ha, endpoint, lb
    ("provider",  &["provider"]),  // http provider
    ("upstream",  &["upstream"]),  // channel, pool
    ("registry",  &["registry"]),  // direct, command, zookeeper
    ("runtime",   &["net", "drain", "metrics", "switcher", "meta", "shard"]), // meta: the dynamic meta store; shard: the data-plane runtimes
    ("config",    &["config"]),
    ("base",      &["protocol", "url", "sys", "ping", "cgroup", "recent", "log_writer", "log_file", "locks", "unix_socket", "write_queue"]),
];

/// Check `agent/src`: prints the violations and fails, or returns a one-line summary.
pub fn run() -> Result<String> {
    let src = project_root().join("agent/src");
    let files = read_tree(&src)?;
    let report = check(&files, LAYERS);
    if !report.is_clean() {
        print!("{}", report.render());
        bail!(
            "lint: {} layer violation(s), {} module(s) missing from the layer table, {} cycle(s) in agent/src",
            report.layer_violations.len(),
            report.unlisted.len(),
            report.cycles.len()
        );
    }
    Ok(report.summary())
}

/// Every `.rs` file under `dir` except `bin/`, by path relative to `dir` (`cluster/lb.rs`).
fn read_tree(dir: &Path) -> Result<BTreeMap<String, String>> {
    fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, String>) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = format!("{rel}{name}");
            if e.file_type()?.is_dir() {
                if path != "bin" {
                    walk(&e.path(), &format!("{path}/"), out)?;
                }
            } else if name.ends_with(".rs") {
                let text = std::fs::read_to_string(e.path())
                    .with_context(|| format!("reading {}", e.path().display()))?;
                out.insert(path, text);
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(dir, "", &mut out)?;
    if out.is_empty() {
        bail!("no .rs file under {}", dir.display());
    }
    Ok(out)
}

/// Check a tree given as source text by path relative to `agent/src` (`cluster/lb.rs`).
pub fn check(files: &BTreeMap<String, String>, layers: &[(&str, &[&str])]) -> Report {
    let node_of_file: BTreeMap<&str, String> = files.keys().map(|f| (f.as_str(), node_of(f))).collect();
    let modules: BTreeSet<String> = node_of_file.values().cloned().collect();
    let mut report = Report {
        nodes: modules.clone(),
        ..Report::default()
    };
    for (file, text) in files {
        let from = &node_of_file[file.as_str()];
        let has_children = modules.iter().any(|m| is_descendant(m, from));
        for raw in scan(text, from) {
            let to = resolve(&raw.target, &modules);
            if &to == from || (raw.public_use && has_children && is_descendant(&to, from)) {
                continue;
            }
            let at = Ref {
                file: file.clone(),
                line: raw.line,
                path: raw.written,
            };
            report.edges.entry((from.clone(), to)).or_default().push(at);
        }
    }

    // Layers.
    let layer_of = |module: &str| layers.iter().position(|(_, ms)| ms.contains(&module));
    let tops: BTreeSet<&str> = modules.iter().map(|m| top_module(m)).collect();
    for top in tops {
        if top == ROOT || layer_of(top).is_some() {
            continue;
        }
        // Point at the module's own file (`X.rs`, `X/mod.rs`), else at its first one.
        let file = [format!("{top}.rs"), format!("{top}/mod.rs")]
            .into_iter()
            .find(|f| files.contains_key(f))
            .or_else(|| files.keys().find(|f| f.starts_with(&format!("{top}/"))).cloned())
            .unwrap_or_default();
        report.unlisted.push((top.to_string(), file));
    }
    for ((from, to), refs) in &report.edges {
        let (fm, tm) = (top_module(from), top_module(to));
        if let (Some(fl), Some(tl)) = (layer_of(fm), layer_of(tm))
            && tl < fl
        {
            for at in refs {
                report.layer_violations.push(LayerViolation {
                    at: at.clone(),
                    from: from.clone(),
                    to: to.clone(),
                    from_module: fm.to_string(),
                    to_module: tm.to_string(),
                    from_layer: layers[fl].0.to_string(),
                    to_layer: layers[tl].0.to_string(),
                });
            }
        }
    }
    report
        .layer_violations
        .sort_by(|a, b| (&a.at.file, a.at.line).cmp(&(&b.at.file, b.at.line)));

    // Cycles, folder by folder.
    let mut folders: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for (from, to) in report.edges.keys() {
        let (folder, a, b) = folder_edge(from, to);
        folders.entry(folder).or_default().insert((a, b));
    }
    for (folder, edges) in &folders {
        let (cycles, complete) = elementary_cycles(edges, MAX_CYCLES);
        if !complete {
            report.truncated.push(folder.clone());
        }
        report.cycles.extend(cycles.into_iter().map(|nodes| Cycle {
            folder: folder.clone(),
            nodes,
        }));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn tree(files: &[(&str, &str)]) -> BTreeMap<String, String> {
        files
            .iter()
            .map(|(p, s)| (p.to_string(), s.to_string()))
            .collect()
    }

    pub(super) fn edges(r: &Report) -> Vec<String> {
        r.edges.keys().map(|(a, b)| format!("{a} -> {b}")).collect()
    }

    pub(super) const FIXTURE_LAYERS: &[(&str, &[&str])] = &[
        ("top", &["main", "app"]),
        ("cluster", &["cluster"]),
        ("registry", &["registry"]),
        ("base", &["url"]),
    ];

    #[test]
    fn lower_layer_using_a_higher_one_fails() {
        let r = check(
            &tree(&[
                ("lib.rs", "pub mod cluster;\npub mod registry;\n"),
                ("cluster/mod.rs", "pub mod lb;\nuse crate::registry::Registry;\n"),
                ("cluster/lb.rs", "pub struct Balancer;\n"),
                (
                    "registry/mod.rs",
                    "\n\nfn f() { let _ = crate::cluster::lb::Balancer; }\n",
                ),
            ]),
            FIXTURE_LAYERS,
        );
        assert_eq!(r.layer_violations.len(), 1, "{}", r.render());
        let v = &r.layer_violations[0];
        assert_eq!((v.at.file.as_str(), v.at.line), ("registry/mod.rs", 3));
        assert_eq!(v.at.path, "crate::cluster::lb::Balancer");
        assert_eq!((v.from.as_str(), v.to.as_str()), ("registry", "cluster/lb"));
        // Downward is fine; the upward edge also closes a cycle between the two modules.
        assert_eq!(r.cycles.len(), 1);
        assert_eq!(r.cycles[0].nodes, ["cluster", "registry"]);
        assert!(r.render().contains(
            "agent/src/registry/mod.rs:3: `crate::cluster::lb::Balancer` (registry -> cluster/lb): \
             layer `registry` (registry) may not use the higher layer `cluster` (cluster)"
        ));
    }

    #[test]
    fn clean_tree_passes_with_a_summary() {
        let r = check(
            &tree(&[
                ("lib.rs", "pub mod app;\npub mod url;\n"),
                ("app.rs", "use crate::url::Url;\n"),
                ("url.rs", "pub struct Url;\n"),
                (
                    "main.rs",
                    "use sockmesh::app;\nfn main() { crate::run(); }\nfn run() {}\n",
                ),
            ]),
            FIXTURE_LAYERS,
        );
        assert!(r.is_clean(), "{}", r.render());
        assert_eq!(edges(&r), ["app -> url", "main -> app"]);
        assert_eq!(
            r.summary(),
            "4 modules checked, 2 edges: no layer violation, no cycle"
        );
    }

    #[test]
    fn module_missing_from_the_table_is_a_violation() {
        let r = check(
            &tree(&[
                ("lib.rs", "pub mod mesh;\n"),
                ("mesh/mod.rs", "pub mod channel;\n"),
                ("mesh/channel.rs", ""),
                ("url.rs", ""),
            ]),
            FIXTURE_LAYERS,
        );
        assert_eq!(r.unlisted, [("mesh".to_string(), "mesh/mod.rs".to_string())]);
        assert!(!r.is_clean());
    }

    #[test]
    fn sibling_cycle_fails_and_is_printed_once() {
        let r = check(
            &tree(&[
                ("cluster/mod.rs", "pub mod ha;\npub mod lb;\npub mod route;\n"),
                ("cluster/ha.rs", "use super::lb::pick;\n"),
                ("cluster/lb.rs", "use super::route::Route;\n"),
                ("cluster/route.rs", "fn f() { super::ha::retry(); }\n"),
            ]),
            FIXTURE_LAYERS,
        );
        assert!(r.layer_violations.is_empty());
        assert_eq!(r.cycles.len(), 1, "{}", r.render());
        assert_eq!(r.cycles[0].folder, "cluster");
        assert_eq!(r.cycles[0].nodes, ["cluster/ha", "cluster/lb", "cluster/route"]);
        let out = r.render();
        assert!(
            out.contains("in agent/src/cluster/: cluster/ha -> cluster/lb -> cluster/route -> cluster/ha"),
            "{out}"
        );
        assert!(
            out.contains("cluster/route -> cluster/ha: agent/src/cluster/route.rs:1: `super::ha::retry`")
        );
    }

    #[test]
    fn top_level_cycle_within_one_layer_is_found_through_nested_files() {
        let r = check(
            &tree(&[
                (
                    "app.rs",
                    "use crate::main_loop;\nuse crate::admin::routes::table;\n",
                ),
                ("admin/mod.rs", "pub mod routes;\n"),
                ("admin/routes.rs", "fn f() { crate::app::reload() }\n"),
            ]),
            &[("top", &["app", "admin"])],
        );
        assert!(r.layer_violations.is_empty());
        let cycles: Vec<_> = r
            .cycles
            .iter()
            .map(|c| (c.folder.as_str(), c.nodes.join(" -> ")))
            .collect();
        assert_eq!(cycles, [("", "admin -> app".to_string())]);
    }

    #[test]
    fn reexports_of_own_children_are_structure() {
        let r = check(
            &tree(&[
                (
                    "cluster/mod.rs",
                    "pub mod lb;\npub use lb::Balancer;\npub(crate) use self::lb::{pick, Policy};\n",
                ),
                ("cluster/lb.rs", "use super::Shared;\n"),
                ("lib.rs", "pub mod cluster;\npub use cluster::Cluster;\n"),
            ]),
            FIXTURE_LAYERS,
        );
        assert_eq!(edges(&r), ["cluster/lb -> cluster"]);
        assert!(r.is_clean(), "{}", r.render());
        // A plain `use` of a child is a dependency.
        let r = check(
            &tree(&[
                ("cluster/mod.rs", "pub mod lb;\nuse lb::Balancer;\n"),
                ("cluster/lb.rs", ""),
            ]),
            FIXTURE_LAYERS,
        );
        assert_eq!(edges(&r), ["cluster -> cluster/lb"]);
    }

    #[test]
    fn layer_table_names_each_module_once() {
        let mut seen = BTreeSet::new();
        for (_, modules) in LAYERS {
            for m in *modules {
                assert!(seen.insert(*m), "{m} is in two layers");
            }
        }
    }
}
