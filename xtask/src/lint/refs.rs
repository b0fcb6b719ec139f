//! Scanning: the references of one file (use trees, `crate::`/`super::`/`self::` paths in code,
//! paths through declared child modules), skipping test code, and their resolution to nodes.
use std::collections::BTreeSet;

use super::lexer::{Tok, Token, lex, pair_delimiters};
use super::nodes::{ROOT, segments};

/// A reference as found in one file, before it is resolved to a node.
#[derive(Debug)]
pub(super) struct RawRef {
    pub(super) line: usize,
    pub(super) written: String,
    /// The module path it names from the library crate's root (`["cluster", "lb", "Balancer"]`),
    /// or `None` for something inside the `sockmesh` binary (`crate::` in `main.rs`).
    pub(super) target: Option<Vec<String>>,
    /// Part of a `pub use` (or `pub(..) use`).
    pub(super) public_use: bool,
}

/// The deepest node a target names.
pub(super) fn resolve(target: &Option<Vec<String>>, modules: &BTreeSet<String>) -> String {
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

/// The references in `src`, the text of node `node`.
pub(super) fn scan(src: &str, node: &str) -> Vec<RawRef> {
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

#[cfg(test)]
mod tests {
    use crate::lint::check;
    use crate::lint::tests::{FIXTURE_LAYERS, edges, tree};

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
}
