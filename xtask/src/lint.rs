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
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::util::project_root;

/// The layers of the agent crate, top to bottom, and the top-level modules (`crate::X`, i.e.
/// `agent/src/X.rs` or `agent/src/X/`) in each. A module may use modules of its own layer or of a
/// lower one, never of a higher one.
#[rustfmt::skip]
pub const LAYERS: &[(&str, &[&str])] = &[
    ("top",       &["main", "app", "admin", "control", "install", "check"]),
    ("intercept", &["intercept"]),
    ("proxy",     &["proxy"]),     // transparent, passthrough, serve, outbound = client role, inbound = server role
    ("filter",    &["filter"]),
    ("cluster",   &["cluster"]),   // one running cluster: discovery, route, ha, endpoint, lb
    ("provider",  &["provider"]),  // http provider
    ("upstream",  &["upstream"]),  // channel, pool
    ("registry",  &["registry"]),  // direct, command, zookeeper
    ("runtime",   &["net", "drain", "metrics", "switcher"]),
    ("config",    &["config"]),
    ("base",      &["protocol", "url", "sys", "cgroup", "recent", "log_writer"]),
];

/// The crate root's node name.
const ROOT: &str = "lib";

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

/// Enough to act on; a tangle with more cycles than this is reported as cut short.
const MAX_CYCLES: usize = 200;

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
                     in xtask/src/lint.rs"
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

/// `cluster/lb.rs` -> `cluster/lb`, `cluster/mod.rs` -> `cluster`, `lib.rs` -> `lib`.
fn node_of(file: &str) -> String {
    let stem = file.strip_suffix(".rs").unwrap_or(file);
    stem.strip_suffix("/mod").unwrap_or(stem).to_string()
}

/// The node's module path from the crate root (`lib` is the root itself).
fn segments(node: &str) -> Vec<&str> {
    if node == ROOT {
        Vec::new()
    } else {
        node.split('/').collect()
    }
}

fn top_module(node: &str) -> &str {
    node.split('/').next().unwrap_or(node)
}

/// `a` lies strictly inside `b` (`cluster/lb` inside `cluster`; everything inside `lib`).
fn is_descendant(a: &str, b: &str) -> bool {
    let (a, b) = (segments(a), segments(b));
    a.len() > b.len() && a.starts_with(&b)
}

/// The folder graph an edge belongs to (the deepest common ancestor of its ends) and the edge
/// there: each end becomes the folder's own node (its `mod.rs`) or the child of the folder that
/// holds it.
fn folder_edge(from: &str, to: &str) -> (String, String, String) {
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

/// A reference as found in one file, before it is resolved to a node.
#[derive(Debug)]
struct RawRef {
    line: usize,
    written: String,
    /// The module path it names from the library crate's root (`["cluster", "lb", "Balancer"]`),
    /// or `None` for something inside the `sockmesh` binary (`crate::` in `main.rs`).
    target: Option<Vec<String>>,
    /// Part of a `pub use` (or `pub(..) use`).
    public_use: bool,
}

/// The deepest node a target names.
fn resolve(target: &Option<Vec<String>>, modules: &BTreeSet<String>) -> String {
    let Some(path) = target else {
        return "main".to_string();
    };
    let mut node = ROOT.to_string();
    for i in 1..=path.len() {
        let candidate = path[..i].join("/");
        if candidate == "main" || !modules.contains(&candidate) {
            break;
        }
        node = candidate;
    }
    node
}

// ---------------------------------------------------------------------------------------------
// Lexing: just enough of Rust's to keep comments and literals out of the way.

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
    Open(char),
    Close(char),
    /// A string, char, number or lifetime: nothing of interest, but a token between others.
    Lit,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
}

fn lex(src: &str) -> Vec<Token> {
    let c: Vec<char> = src.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let is_ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    // Skip a quoted string starting at `i` (the opening `"`); returns the index after it.
    let skip_string = |mut i: usize, line: &mut usize| {
        i += 1;
        while i < c.len() {
            match c[i] {
                '\\' => {
                    if at(i + 1) == '\n' {
                        *line += 1;
                    }
                    i += 2;
                }
                '"' => return i + 1,
                ch => {
                    if ch == '\n' {
                        *line += 1;
                    }
                    i += 1;
                }
            }
        }
        i
    };
    while i < c.len() {
        let ch = c[i];
        let start_line = line;
        let tok = match ch {
            '\n' => {
                line += 1;
                i += 1;
                continue;
            }
            _ if ch.is_whitespace() => {
                i += 1;
                continue;
            }
            '/' if at(i + 1) == '/' => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            '/' if at(i + 1) == '*' => {
                // Block comments nest.
                let mut depth = 0;
                while i < c.len() {
                    if c[i] == '/' && at(i + 1) == '*' {
                        depth += 1;
                        i += 2;
                    } else if c[i] == '*' && at(i + 1) == '/' {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        if c[i] == '\n' {
                            line += 1;
                        }
                        i += 1;
                    }
                }
                continue;
            }
            '"' => {
                i = skip_string(i, &mut line);
                Tok::Lit
            }
            '\'' => {
                if at(i + 1) == '\\' {
                    // '\n', '\'', '\u{1F600}'
                    i += 3;
                    while i < c.len() && c[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                } else if at(i + 2) == '\'' {
                    // 'x', including '{' and '"'
                    i += 3;
                } else {
                    // a lifetime or a label
                    i += 1;
                    while is_ident(at(i)) {
                        i += 1;
                    }
                }
                Tok::Lit
            }
            _ if ch.is_ascii_digit() => {
                while is_ident(at(i)) {
                    i += 1;
                }
                Tok::Lit
            }
            _ if is_ident(ch) => {
                let start = i;
                while is_ident(at(i)) {
                    i += 1;
                }
                let word: String = c[start..i].iter().collect();
                let hashes = (i..).take_while(|&j| at(j) == '#').count();
                if matches!(word.as_str(), "r" | "br" | "cr") && at(i + hashes) == '"' {
                    // r"..", r#".."#, br##".."##: ends at a quote followed by as many hashes.
                    i += hashes + 1;
                    while i < c.len() && !(c[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#')) {
                        if c[i] == '\n' {
                            line += 1;
                        }
                        i += 1;
                    }
                    i += hashes + 1;
                    Tok::Lit
                } else if matches!(word.as_str(), "b" | "c") && at(i) == '"' {
                    i = skip_string(i, &mut line);
                    Tok::Lit
                } else if word == "b" && at(i) == '\'' {
                    // b'x', b'\''
                    i += if at(i + 1) == '\\' { 3 } else { 2 };
                    while i < c.len() && c[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                    Tok::Lit
                } else if word == "r" && hashes == 1 && is_ident(at(i + 1)) {
                    // a raw identifier: r#type
                    let start = i + 1;
                    i = start;
                    while is_ident(at(i)) {
                        i += 1;
                    }
                    Tok::Ident(c[start..i].iter().collect())
                } else {
                    Tok::Ident(word)
                }
            }
            ':' if at(i + 1) == ':' => {
                i += 2;
                Tok::PathSep
            }
            '(' | '[' | '{' => {
                i += 1;
                Tok::Open(ch)
            }
            ')' | ']' | '}' => {
                i += 1;
                Tok::Close(ch)
            }
            _ => {
                i += 1;
                Tok::Punct(ch)
            }
        };
        out.push(Token {
            tok,
            line: start_line,
        });
    }
    out
}

/// For each opening delimiter the index of its closing one and the other way round (unbalanced
/// ones pair with the end).
fn pair_delimiters(toks: &[Token]) -> Vec<usize> {
    let mut pair = vec![toks.len(); toks.len()];
    let mut open = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        match t.tok {
            Tok::Open(_) => open.push(i),
            Tok::Close(_) => {
                if let Some(o) = open.pop() {
                    pair[o] = i;
                    pair[i] = o;
                }
            }
            _ => {}
        }
    }
    pair
}

// ---------------------------------------------------------------------------------------------
// Scanning: the references of one file.

/// The references in `src`, the text of node `node`.
fn scan(src: &str, node: &str) -> Vec<RawRef> {
    let toks = lex(src);
    let pair = pair_delimiters(&toks);
    let mut s = Scanner {
        toks: &toks,
        pair: &pair,
        module: segments(node).iter().map(|s| s.to_string()).collect(),
        is_main: node == "main",
        children: BTreeSet::new(),
        out: Vec::new(),
    };
    s.children = s.declared_children();
    s.scan(0, toks.len(), &mut Vec::new());
    s.out
}

struct Scanner<'a> {
    toks: &'a [Token],
    pair: &'a [usize],
    /// The file's module path from the crate root.
    module: Vec<String>,
    is_main: bool,
    /// Child modules declared with `mod x;`: `x::` in this file is a path into them.
    children: BTreeSet<String>,
    out: Vec<RawRef>,
}

impl Scanner<'_> {
    fn tok(&self, i: usize) -> Option<&Tok> {
        self.toks.get(i).map(|t| &t.tok)
    }

    fn ident(&self, i: usize) -> Option<&str> {
        match self.tok(i) {
            Some(Tok::Ident(s)) => Some(s),
            _ => None,
        }
    }

    fn declared_children(&self) -> BTreeSet<String> {
        (0..self.toks.len())
            .filter(|&i| self.ident(i) == Some("mod") && self.tok(i + 2) == Some(&Tok::Punct(';')))
            .filter_map(|i| self.ident(i + 1).map(String::from))
            .collect()
    }

    /// Scan `lo..hi`, inside the inline modules `inline` of this file.
    fn scan(&mut self, lo: usize, hi: usize, inline: &mut Vec<String>) {
        let mut i = lo;
        while i < hi {
            match self.tok(i) {
                Some(Tok::Punct('#')) => {
                    let inner = self.tok(i + 1) == Some(&Tok::Punct('!'));
                    let open = i + 1 + usize::from(inner);
                    if self.tok(open) != Some(&Tok::Open('[')) {
                        i += 1;
                        continue;
                    }
                    let close = self.pair[open];
                    if self.is_cfg_test(open + 1, close) {
                        if inner {
                            // #![cfg(test)]: the whole enclosing module is test code.
                            return;
                        }
                        i = self.skip_item(close + 1, hi);
                    } else {
                        // Other attributes hold no dependency worth a layer.
                        i = close + 1;
                    }
                }
                Some(Tok::Ident(w)) if w == "mod" => {
                    match (self.ident(i + 1), self.tok(i + 2)) {
                        (Some(name), Some(Tok::Open('{'))) => {
                            let (name, close) = (name.to_string(), self.pair[i + 2]);
                            inline.push(name);
                            self.scan(i + 3, close.min(hi), inline);
                            inline.pop();
                            i = close + 1;
                        }
                        // `mod x;` is structure, not a dependency.
                        _ => i += 2,
                    }
                }
                Some(Tok::Ident(w)) if w == "use" => {
                    let public = self.is_pub_before(i);
                    let end = self.statement_end(i + 1, hi);
                    self.use_tree(i + 1, end, &[], public, inline);
                    i = end + 1;
                }
                Some(Tok::Ident(w))
                    if w == "pub"
                        && self.tok(i + 1) == Some(&Tok::Open('('))
                        && self.ident(i + 2) == Some("in") =>
                {
                    // pub(in crate::x) says who may see an item, not what it uses.
                    i = self.pair[i + 1] + 1;
                }
                Some(Tok::Ident(_)) if self.starts_path(i, inline) => {
                    let mut segs = Vec::new();
                    let mut j = i;
                    while let Some(s) = self.ident(j) {
                        segs.push(s.to_string());
                        if self.tok(j + 1) == Some(&Tok::PathSep) && self.ident(j + 2).is_some() {
                            j += 2;
                        } else {
                            break;
                        }
                    }
                    let line = self.toks[i].line;
                    self.emit(&segs, line, false, inline);
                    i = j + 1;
                }
                _ => i += 1,
            }
        }
    }

    /// A path this lint follows begins at `i`: `crate::`, `super::`, `self::`, `sockmesh::` in
    /// main.rs, or `x::` for a declared child `x`, not preceded by `::`.
    fn starts_path(&self, i: usize, inline: &[String]) -> bool {
        let Some(w) = self.ident(i) else { return false };
        self.tok(i + 1) == Some(&Tok::PathSep)
            && (i == 0 || self.tok(i - 1) != Some(&Tok::PathSep))
            && self.is_root(w, inline)
    }

    fn is_root(&self, w: &str, inline: &[String]) -> bool {
        matches!(w, "crate" | "super" | "self")
            || (w == "sockmesh" && self.is_main)
            || (inline.is_empty() && self.children.contains(w))
    }

    /// `#[cfg(test)]` or `#[cfg(all(test, ..))]`, given the tokens between the brackets.
    fn is_cfg_test(&self, lo: usize, hi: usize) -> bool {
        if self.ident(lo) != Some("cfg") || self.tok(lo + 1) != Some(&Tok::Open('(')) {
            return false;
        }
        let (a, b) = (lo + 2, self.pair[lo + 1]);
        if b == a + 1 && self.ident(a) == Some("test") {
            return b + 1 == hi;
        }
        if self.ident(a) == Some("all") && self.tok(a + 1) == Some(&Tok::Open('(')) {
            let end = self.pair[a + 1];
            let mut j = a + 2;
            while j < end {
                if self.ident(j) == Some("test")
                    && matches!(self.tok(j - 1), Some(Tok::Open('(') | Tok::Punct(',')))
                    && (j + 1 == end || self.tok(j + 1) == Some(&Tok::Punct(',')))
                {
                    return true;
                }
                j = if matches!(self.tok(j), Some(Tok::Open(_))) {
                    self.pair[j] + 1
                } else {
                    j + 1
                };
            }
        }
        false
    }

    /// The end of the item (or field, or match arm) starting at `i` after an attribute.
    fn skip_item(&self, mut i: usize, hi: usize) -> usize {
        while self.tok(i) == Some(&Tok::Punct('#')) && self.tok(i + 1) == Some(&Tok::Open('[')) {
            i = self.pair[i + 1] + 1;
        }
        const ITEM: &[&str] = &[
            "pub",
            "fn",
            "mod",
            "impl",
            "struct",
            "enum",
            "union",
            "use",
            "const",
            "static",
            "type",
            "trait",
            "macro_rules",
            "unsafe",
            "async",
            "extern",
            "let",
        ];
        let item = self.ident(i).is_some_and(|w| ITEM.contains(&w));
        while i < hi {
            match self.tok(i) {
                Some(Tok::Open('{')) => return self.pair[i] + 1,
                Some(Tok::Open(_)) => i = self.pair[i] + 1,
                Some(Tok::Punct(';')) => return i + 1,
                Some(Tok::Punct(',')) if !item => return i + 1,
                Some(Tok::Close(_)) => return i,
                _ => i += 1,
            }
        }
        hi
    }

    /// `pub` or `pub(..)` right before token `i`.
    fn is_pub_before(&self, i: usize) -> bool {
        match i.checked_sub(1).and_then(|p| self.tok(p)) {
            Some(Tok::Ident(w)) => w == "pub",
            Some(Tok::Close(')')) => {
                let open = self.pair[i - 1];
                open > 0 && self.ident(open - 1) == Some("pub")
            }
            _ => false,
        }
    }

    /// The index of the `;` ending the statement that starts at `i` (or `hi`).
    fn statement_end(&self, mut i: usize, hi: usize) -> usize {
        while i < hi {
            match self.tok(i) {
                Some(Tok::Punct(';')) => return i,
                Some(Tok::Open(_)) => i = self.pair[i] + 1,
                Some(Tok::Close(_)) => return i,
                _ => i += 1,
            }
        }
        hi
    }

    /// One use tree in `lo..hi` under `prefix`: `a::b`, `a::{b, c::{d, e}}`, `a::*`, `a as b`.
    fn use_tree(&mut self, lo: usize, hi: usize, prefix: &[String], public: bool, inline: &[String]) {
        if lo >= hi {
            return;
        }
        let line = self.toks[lo].line;
        let mut segs = prefix.to_vec();
        let mut i = lo;
        if self.tok(i) == Some(&Tok::PathSep) {
            // ::name is an external crate.
            return;
        }
        while i < hi {
            match self.tok(i) {
                Some(Tok::Ident(s)) => {
                    segs.push(s.clone());
                    if self.tok(i + 1) == Some(&Tok::PathSep) {
                        i += 2;
                    } else {
                        break;
                    }
                }
                Some(Tok::Open('{')) => {
                    let close = self.pair[i].min(hi);
                    let mut start = i + 1;
                    let mut j = start;
                    while j <= close {
                        if j == close || self.tok(j) == Some(&Tok::Punct(',')) {
                            self.use_tree(start, j, &segs, public, inline);
                            start = j + 1;
                            j += 1;
                        } else if matches!(self.tok(j), Some(Tok::Open(_))) {
                            j = self.pair[j] + 1;
                        } else {
                            j += 1;
                        }
                    }
                    return;
                }
                Some(Tok::Punct('*')) => {
                    segs.push("*".to_string());
                    break;
                }
                _ => break,
            }
        }
        if segs.first().is_some_and(|w| self.is_root(w, inline)) {
            self.emit(&segs, line, public, inline);
        }
    }

    /// Record the path `segs` (as written, groups flattened: `a::{self, b}` is `a` and `a::b`).
    fn emit(&mut self, segs: &[String], line: usize, public_use: bool, inline: &[String]) {
        let written = segs.join("::");
        let written = written.strip_suffix("::self").unwrap_or(&written).to_string();
        let rest: Vec<String> = segs
            .iter()
            .enumerate()
            .filter(|&(k, s)| !(k > 0 && s == "self") && s != "*")
            .map(|(_, s)| s.clone())
            .collect();
        let here: Vec<String> = self.module.iter().chain(inline).cloned().collect();
        let target = if self.is_main {
            // main.rs is a crate of its own: only `sockmesh::` leads out of it.
            (rest[0] == "sockmesh").then(|| rest[1..].to_vec())
        } else {
            match rest[0].as_str() {
                "crate" => Some(rest[1..].to_vec()),
                "self" => Some(here.iter().chain(&rest[1..]).cloned().collect()),
                "super" => {
                    let ups = rest.iter().take_while(|s| *s == "super").count();
                    let Some(up) = here.len().checked_sub(ups) else {
                        return;
                    };
                    Some(here[..up].iter().chain(&rest[ups..]).cloned().collect())
                }
                // A declared child module.
                _ => Some(here.iter().chain(&rest).cloned().collect()),
            }
        };
        self.out.push(RawRef {
            line,
            written,
            target,
            public_use,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Cycles.

/// Every elementary cycle of a directed graph, each once, starting from its smallest node, in
/// order; at most `max` (the flag says whether the listing is complete).
fn elementary_cycles(edges: &BTreeSet<(String, String)>, max: usize) -> (Vec<Vec<String>>, bool) {
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

    fn tree(files: &[(&str, &str)]) -> BTreeMap<String, String> {
        files
            .iter()
            .map(|(p, s)| (p.to_string(), s.to_string()))
            .collect()
    }

    fn edges(r: &Report) -> Vec<String> {
        r.edges.keys().map(|(a, b)| format!("{a} -> {b}")).collect()
    }

    const FIXTURE_LAYERS: &[(&str, &[&str])] = &[
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
    fn brace_groups_resolve_each_leaf() {
        let src = "use crate::{\n    url::{self, Url},\n    cluster::{lb::{Balancer, pick}, Cluster},\n    registry as reg,\n};\n";
        let r = check(
            &tree(&[
                ("app.rs", src),
                ("url.rs", ""),
                ("cluster/mod.rs", "pub mod lb;\n"),
                ("cluster/lb.rs", ""),
                ("registry/mod.rs", ""),
            ]),
            FIXTURE_LAYERS,
        );
        assert_eq!(
            edges(&r),
            [
                "app -> cluster",
                "app -> cluster/lb",
                "app -> registry",
                "app -> url"
            ]
        );
        let lb = &r.edges[&("app".to_string(), "cluster/lb".to_string())];
        let lb: Vec<_> = lb.iter().map(|r| (r.line, r.path.as_str())).collect();
        assert_eq!(
            lb,
            [
                (3, "crate::cluster::lb::Balancer"),
                (3, "crate::cluster::lb::pick")
            ]
        );
        let url = &r.edges[&("app".to_string(), "url".to_string())];
        assert_eq!((url[0].line, url[0].path.as_str()), (2, "crate::url"));
    }

    #[test]
    fn super_self_and_child_paths_resolve_relative_to_the_file() {
        let r = check(
            &tree(&[
                (
                    "cluster/mod.rs",
                    "pub mod lb;\nmod ha;\npub struct Cluster;\nfn f() { lb::pick(); self::ha::x(); }\n",
                ),
                (
                    "cluster/lb.rs",
                    "use super::Cluster;\nuse super::super::url::Url;\n",
                ),
                (
                    "cluster/ha.rs",
                    "pub mod inner {\n    use super::super::lb::pick;\n}\n",
                ),
                ("url.rs", ""),
            ]),
            FIXTURE_LAYERS,
        );
        assert_eq!(
            edges(&r),
            [
                "cluster -> cluster/ha",
                "cluster -> cluster/lb",
                "cluster/ha -> cluster/lb",
                "cluster/lb -> cluster",
                "cluster/lb -> url"
            ]
        );
        // cluster <-> cluster/lb: the module's own file takes part in its folder's cycles.
        let cycles: Vec<_> = r.cycles.iter().map(|c| c.nodes.join(" -> ")).collect();
        assert_eq!(
            cycles,
            ["cluster -> cluster/ha -> cluster/lb", "cluster -> cluster/lb"]
        );
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
    fn test_code_comments_and_strings_are_ignored() {
        let src = r####"//! Uses `crate::app::run` in a doc comment.
use crate::url::Url; // crate::app in a line comment
/* crate::app::a /* nested
   crate::app::b */ crate::app::c */
const A: &str = "crate::app::run \" crate::app::escaped";
const B: &str = r#"a "quoted" crate::app::x"#;
const C: &[u8] = br##"crate::app "# still inside"##;
const D: char = '"';
const E: char = '{';
fn f<'a>(x: &'a str) -> &'a str { let _ = b'"'; let _ = '\''; x }
pub(in crate::app) fn g() {}
#[cfg(test)]
use crate::app::Fixture;
#[cfg(all(test, feature = "x"))]
fn only_in_tests() { crate::app::run(); }
#[cfg(test)]
mod tests {
    use crate::app::run;
    fn t() { crate::app::x(); }
}
fn after_tests() { crate::cluster::go(); }
"####;
        let r = check(
            &tree(&[
                ("registry.rs", src),
                ("app.rs", ""),
                ("url.rs", ""),
                ("cluster.rs", ""),
            ]),
            FIXTURE_LAYERS,
        );
        assert_eq!(edges(&r), ["registry -> cluster", "registry -> url"]);
        let go = &r.edges[&("registry".to_string(), "cluster".to_string())][0];
        assert_eq!(
            go.line, 21,
            "line numbers survive multi-line comments and strings"
        );
    }

    #[test]
    fn lexer_handles_raw_identifiers_and_lifetimes() {
        let toks: Vec<Tok> = lex("r#type 'a 'static x::y").into_iter().map(|t| t.tok).collect();
        assert_eq!(
            toks,
            [
                Tok::Ident("type".into()),
                Tok::Lit,
                Tok::Lit,
                Tok::Ident("x".into()),
                Tok::PathSep,
                Tok::Ident("y".into())
            ]
        );
    }

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
