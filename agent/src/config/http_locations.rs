//! `http-locations` (spec 4.12), typed once: per domain, nginx-like location rules that map a
//! request path to an upstream (the RPC service an `http-client` cluster calls) and rewrite it
//! (what an HTTP provider sends to its application), matched as motan-go's
//! `http.LocationMatcher` does: every `exact` location first, then `regexp`/`iregexp` ones in
//! file order, then the longest matching `start` prefix.
//!
//! motan-go logs and skips a rule it cannot use (an unknown type, a regexp that does not
//! compile, a rewrite rule without four fields) and panics on a location without `match` or
//! `upstream`; here each is a configuration error naming the domain and the rule, so what
//! validates is exactly what runs.
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use regex::Regex;
use serde_yaml_ng::Value;

use super::sections::SettingError;

/// How a location's `match` is compared with the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchKind {
    Exact,
    /// Prefix (the default when `type` is absent).
    Start,
    Regexp,
    /// Case-insensitive regexp.
    IRegexp,
}

impl MatchKind {
    fn from_name(s: &str) -> Option<MatchKind> {
        Some(match s {
            "exact" => MatchKind::Exact,
            "start" => MatchKind::Start,
            "regexp" => MatchKind::Regexp,
            "iregexp" => MatchKind::IRegexp,
            _ => return None,
        })
    }
}

/// The condition of a rewrite rule.
#[derive(Debug)]
enum Condition {
    Exact(String),
    Start(String),
    Regexp(Regex),
}

/// `[!]condType condition pattern replacement` (e.g. `!regexp ^/2/.* ^/(.*) /2/$1`).
#[derive(Debug)]
struct RewriteRule {
    not: bool,
    condition: Condition,
    pattern: Regex,
    replacement: String,
    /// `regexpVar`: `{name}` in the result is replaced by the query value of `name`.
    query_vars: bool,
}

impl RewriteRule {
    fn parse(rule: &str) -> Result<RewriteRule, String> {
        let args: Vec<&str> = rule.split_whitespace().collect();
        let [cond_type, cond, pattern, replacement] = args.as_slice() else {
            return Err(format!(
                "{rule:?}: {} fields, a rewrite rule has 4: [!]condition-type condition regexp replacement",
                args.len()
            ));
        };
        let (not, cond_type) = match cond_type.strip_prefix('!') {
            Some(t) => (true, t),
            None => (false, *cond_type),
        };
        let compile = |re: &str| Regex::new(re).map_err(|e| format!("{rule:?}: regexp {re:?}: {e}"));
        let condition = match cond_type {
            "exact" => Condition::Exact(cond.to_string()),
            "start" => Condition::Start(cond.to_string()),
            "regexp" | "regexpVar" => Condition::Regexp(compile(cond)?),
            "iregexp" => Condition::Regexp(compile(&format!("(?i){cond}"))?),
            other => {
                return Err(format!(
                    "{rule:?}: unknown condition type {other:?} (expected exact, start, regexp, iregexp, regexpVar)"
                ));
            }
        };
        Ok(RewriteRule {
            not,
            condition,
            pattern: compile(pattern)?,
            replacement: replacement.to_string(),
            query_vars: cond_type == "regexpVar",
        })
    }

    /// The rewritten path when the rule applies and its pattern matches.
    fn rewrite(&self, path: &str, query: &str) -> Option<String> {
        let matched = match &self.condition {
            Condition::Exact(s) => path == s,
            Condition::Start(s) => path.starts_with(s.as_str()),
            Condition::Regexp(re) => re.is_match(path),
        };
        if matched == self.not {
            return None;
        }
        // As Go's Regexp.ExpandString: the result is the expanded template alone.
        let caps = self.pattern.captures(path)?;
        let mut out = String::new();
        caps.expand(&self.replacement, &mut out);
        if self.query_vars {
            out = replace_query_vars(&out, query);
        }
        Some(out)
    }
}

/// `{name}` → the query's first value of `name` ("" when absent), as motan-go's regexpVar.
fn replace_query_vars(s: &str, query: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(after.len());
        if name_len > 0 && after[name_len..].starts_with('}') {
            let name = &after[..name_len];
            out.push_str(&rest[..open]);
            let value = form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            out.push_str(&value);
            rest = &after[name_len + 1..];
        } else {
            out.push_str(&rest[..=open]);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// One location of a domain.
#[derive(Debug)]
pub struct Location {
    /// The RPC service (`M_p`) that serves matching paths.
    pub upstream: String,
    pub pattern: String,
    pub kind: MatchKind,
    regex: Option<Regex>,
    rewrites: Vec<RewriteRule>,
}

impl Location {
    /// The path as sent upstream: the first rewrite rule that applies, else unchanged.
    fn determine_path<'p>(&self, path: &'p str, query: &str) -> Cow<'p, str> {
        self.rewrites
            .iter()
            .find_map(|r| r.rewrite(path, query))
            .map_or(Cow::Borrowed(path), Cow::Owned)
    }
}

/// The locations of one domain, in motan-go's matching order.
#[derive(Debug, Default)]
pub struct LocationMatcher {
    exact: Vec<Location>,
    regexp: Vec<Location>,
    start: Vec<Location>,
}

impl LocationMatcher {
    /// One domain's list of locations (`[{match, type, upstream, rewriteRules}]`).
    pub fn from_yaml(list: &Value) -> Result<LocationMatcher, SettingError> {
        let Value::Sequence(items) = list else {
            return Err(SettingError::new(
                "",
                "must be a list of locations ({match, type, upstream, rewriteRules})",
            ));
        };
        let mut m = LocationMatcher::default();
        for (i, item) in items.iter().enumerate() {
            let key = |k: &str| format!("[{i}].{k}");
            let Value::Mapping(map) = item else {
                return Err(SettingError::new(
                    format!("[{i}]"),
                    "must be a mapping {match, type, upstream, rewriteRules}",
                ));
            };
            let text = |k: &str| -> Result<Option<String>, SettingError> {
                match map.get(k) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s.clone())),
                    Some(other) => Err(SettingError::new(key(k), format!("{other:?} is not a string"))),
                }
            };
            let pattern =
                text("match")?.ok_or_else(|| SettingError::new(key("match"), "missing: the path pattern"))?;
            let upstream = text("upstream")?.ok_or_else(|| {
                SettingError::new(key("upstream"), "missing: the RPC service of matching paths")
            })?;
            let type_name = text("type")?.unwrap_or_else(|| "start".into());
            let kind = MatchKind::from_name(&type_name).ok_or_else(|| {
                SettingError::new(
                    key("type"),
                    format!("unknown location type {type_name:?} (expected exact, start, regexp, iregexp)"),
                )
            })?;
            let regex = match kind {
                MatchKind::Regexp => Some(Regex::new(&pattern)),
                MatchKind::IRegexp => Some(Regex::new(&format!("(?i){pattern}"))),
                _ => None,
            }
            .transpose()
            .map_err(|e| SettingError::new(key("match"), format!("regexp {pattern:?}: {e}")))?;
            let mut rewrites = Vec::new();
            match map.get("rewriteRules") {
                None | Some(Value::Null) => {}
                Some(Value::Sequence(rules)) => {
                    for (j, r) in rules.iter().enumerate() {
                        let k = format!("[{i}].rewriteRules[{j}]");
                        match r {
                            // motan-go skips empty rules.
                            Value::String(s) if s.trim().is_empty() => {}
                            Value::String(s) => {
                                rewrites.push(RewriteRule::parse(s).map_err(|m| SettingError::new(k, m))?)
                            }
                            other => return Err(SettingError::new(k, format!("{other:?} is not a string"))),
                        }
                    }
                }
                Some(_) => {
                    return Err(SettingError::new(
                        key("rewriteRules"),
                        "must be a list of rule strings",
                    ));
                }
            }
            let loc = Location {
                upstream,
                pattern,
                kind,
                regex,
                rewrites,
            };
            match kind {
                MatchKind::Exact => m.exact.push(loc),
                MatchKind::Start => m.start.push(loc),
                MatchKind::Regexp | MatchKind::IRegexp => m.regexp.push(loc),
            }
        }
        Ok(m)
    }

    /// The location for `path`, in motan-go's order.
    pub fn find(&self, path: &str) -> Option<&Location> {
        if let Some(l) = self.exact.iter().find(|l| l.pattern == path) {
            return Some(l);
        }
        if let Some(l) = self
            .regexp
            .iter()
            .find(|l| l.regex.as_ref().is_some_and(|re| re.is_match(path)))
        {
            return Some(l);
        }
        // Longest prefix; the first of equally long ones.
        let mut best: Option<&Location> = None;
        for l in self.start.iter().filter(|l| path.starts_with(l.pattern.as_str())) {
            if best.is_none_or(|b| l.pattern.len() > b.pattern.len()) {
                best = Some(l);
            }
        }
        best
    }

    /// The upstream serving `path` and the path rewritten for it (`query` feeds `regexpVar`).
    pub fn pick<'p>(&self, path: &'p str, query: &str) -> Option<(&str, Cow<'p, str>)> {
        self.find(path)
            .map(|l| (l.upstream.as_str(), l.determine_path(path, query)))
    }

    /// Every upstream named, each once, in matching order.
    pub fn upstreams(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for l in self.exact.iter().chain(&self.regexp).chain(&self.start) {
            if !out.contains(&l.upstream.as_str()) {
                out.push(&l.upstream);
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.regexp.is_empty() && self.start.is_empty()
    }
}

/// Every domain's locations.
#[derive(Clone, Debug, Default)]
pub struct HttpLocations(pub BTreeMap<String, Arc<LocationMatcher>>);

impl HttpLocations {
    /// The `http-locations` section; errors name the domain (the entry) and the rule (the key).
    pub fn from_section(section: Option<&Value>) -> (HttpLocations, Vec<(String, SettingError)>) {
        let mut out = HttpLocations::default();
        let mut errors = Vec::new();
        let Some(section) = section else {
            return (out, errors);
        };
        let Value::Mapping(domains) = section else {
            if !section.is_null() {
                errors.push((
                    String::new(),
                    SettingError::new("", "must be a mapping of domain → list of locations"),
                ));
            }
            return (out, errors);
        };
        for (domain, list) in domains {
            let Some(domain) = domain.as_str() else {
                errors.push((
                    format!("{domain:?}"),
                    SettingError::new("", "the domain must be a string"),
                ));
                continue;
            };
            if list.is_null() {
                out.0.insert(domain.to_string(), Arc::default());
                continue;
            }
            match LocationMatcher::from_yaml(list) {
                Ok(m) => {
                    out.0.insert(domain.to_string(), Arc::new(m));
                }
                Err(e) => errors.push((domain.to_string(), e)),
            }
        }
        (out, errors)
    }

    /// The rules of `domain`, when it has any.
    pub fn rules(&self, domain: &str) -> Option<&Arc<LocationMatcher>> {
        self.0.get(domain).filter(|m| !m.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(yaml: &str) -> LocationMatcher {
        LocationMatcher::from_yaml(&serde_yaml_ng::from_str(yaml).unwrap()).unwrap()
    }

    /// motan-go's http/httpProxy_test.go (TestNewLocationMatcher): its locations, its picks.
    #[test]
    fn matching_order_and_rewrites_as_motan_go() {
        let m = matcher(
            r#"
- {match: /, type: start, upstream: test1, rewriteRules: ['exact /Test2/1 /(.*) /test']}
- {match: ^/test2/.*, type: regexp, upstream: test2, rewriteRules: ['!iregexp ^/Test2/1/.* ^/test2/(.*) /test/$1']}
- {match: ^/test3/.*, type: iregexp, upstream: test3, rewriteRules: ['start / ^/(.*) /test/$1']}
- {match: ^(/|/2/)(p1|p2).*, type: regexp, upstream: test4, rewriteRules: ['start / ^/(p1|p2)/(.*) /2/$1/$2']}
- {match: /test/mytest, type: exact, upstream: test5}
- {match: /test/mytest, type: exact, upstream: test5, rewriteRules: ['regexp / ^/(p1|p2)/(.*) /2/$1/$2']}
- {match: ^/p3.*, type: regexp, upstream: test6, rewriteRules: ['regexpVar / ^/p3/(.*) /p3/{a}/$1']}
"#,
        );
        let pick = |p: &str, q: &str| m.pick(p, q).map(|(u, path)| (u.to_string(), path.into_owned()));
        let some = |u: &str, p: &str| Some((u.to_string(), p.to_string()));
        assert_eq!(pick("/Test3/1", ""), some("test3", "/test/Test3/1"));
        assert_eq!(pick("/test3/1", "").unwrap().0, "test3");
        assert_eq!(pick("/test2/1/1", ""), some("test2", "/test2/1/1"));
        assert_eq!(pick("/test2/2/1", ""), some("test2", "/test/2/1"));
        assert_eq!(pick("/Test2/1", ""), some("test1", "/test"));
        assert_eq!(pick("/p1/test", ""), some("test4", "/2/p1/test"));
        assert_eq!(pick("/p2/test", ""), some("test4", "/2/p2/test"));
        assert_eq!(pick("/2/p1/test", ""), some("test4", "/2/p1/test"));
        assert_eq!(pick("/2/p2/test", ""), some("test4", "/2/p2/test"));
        assert_eq!(pick("/test/mytest", "").unwrap().0, "test5");
        assert_eq!(pick("abcde", ""), None);
        assert_eq!(pick("/p3/test", "a=b&c=d"), some("test6", "/p3/b/test"));
        assert_eq!(
            m.upstreams(),
            ["test5", "test2", "test3", "test4", "test6", "test1"]
        );
    }

    #[test]
    fn longest_prefix_and_no_match() {
        let m = matcher(
            "- {match: /api, upstream: short}\n- {match: /api/v2, upstream: long}\n- {match: /API, type: iregexp, upstream: ci}\n",
        );
        assert_eq!(
            m.find("/api/v2/x").unwrap().upstream,
            "ci",
            "regexps before prefixes"
        );
        let m = matcher("- {match: /api, upstream: short}\n- {match: /api/v2, upstream: long}\n");
        assert_eq!(m.find("/api/v2/x").unwrap().upstream, "long");
        assert_eq!(m.find("/api/v1").unwrap().upstream, "short");
        assert!(m.find("/other").is_none());
    }

    #[test]
    fn query_vars() {
        assert_eq!(
            replace_query_vars("/{a}/{b-c}/{}/{x y}", "a=1&b-c=2%2F"),
            "/1/2//{}/{x y}"
        );
        assert_eq!(replace_query_vars("{a", "a=1"), "{a");
    }

    #[test]
    fn every_refusal_names_domain_and_rule() {
        let (_, errors) = HttpLocations::from_section(Some(
            &serde_yaml_ng::from_str(
                r#"
a.com: [{match: /, type: prefix, upstream: x}]
b.com: [{match: "(", type: regexp, upstream: x}]
c.com: [{match: /, upstream: x, rewriteRules: ["regexp ^/ /x"]}]
d.com: [{match: /, upstream: x, rewriteRules: ["same / ^/ /x"]}]
e.com: [{match: /}]
f.com: [{upstream: x}]
g.com: {match: /}
ok.com: [{match: /, upstream: x, rewriteRules: ["", "!start /a ^/(.*) /b/$1"]}]
empty.com:
"#,
            )
            .unwrap(),
        ));
        let got: Vec<String> = errors.iter().map(|(d, e)| format!("{d} {}", e.key)).collect();
        assert_eq!(
            got,
            [
                "a.com [0].type",
                "b.com [0].match",
                "c.com [0].rewriteRules[0]",
                "d.com [0].rewriteRules[0]",
                "e.com [0].upstream",
                "f.com [0].match",
                "g.com "
            ]
        );
    }
}
