//! Registry commands (4.10): the JSON held by `/motan/<group>/command` (service command) and
//! `/motan/agent/<application>/command` (agent command), and what they mean for one refer.
//! Pure parsing and decisions, after weibocom/motan-go cluster/command.go; the registry
//! delivers the texts (`Registry::subscribe_commands`) and the cluster acts on the result
//! (subscribes merge groups, marks itself degraded, sets switchers).
//!
//! Deliberate differences from upstream, each noted where it applies: ties in `index` keep
//! file order (Go's sort is not stable); a traffic-control result whose route rules leave no
//! endpoint falls back to the refer's own group (upstream's pseudo `rule://` URL keeps that
//! list non-empty, so it would serve nothing).
use std::collections::BTreeMap;
use std::fmt;

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use crate::url::{Url, parse_go_bool};

/// Refer parameter listing groups merged statically into the refer (a traffic-control command
/// without weights, used when no dynamic one applies).
pub const MIX_GROUPS: &str = "mixGroups";

/// `commandType` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CommandType {
    TrafficControl,
    Degrade,
    Switcher,
    /// Any other number: parsed, never applied (as upstream).
    Unknown(i64),
}

impl CommandType {
    pub fn from_code(code: i64) -> CommandType {
        match code {
            0 => CommandType::TrafficControl,
            1 => CommandType::Degrade,
            2 => CommandType::Switcher,
            n => CommandType::Unknown(n),
        }
    }
}

/// Which node a command text came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CommandSource {
    /// `/motan/agent/<application>/command`: wins over the service command, per type.
    Agent,
    /// `/motan/<group>/command`.
    Service,
}

/// A command text that is not a command list. Upstream logs it and applies nothing from that
/// text; so do `ReferCommands` (the error is kept for the caller to report).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad command JSON: {reason} (text: {text:?})")]
pub struct CommandError {
    pub text: String,
    pub reason: String,
}

/// One entry of `clientCommandList`.
#[derive(Clone, Debug)]
pub struct ClientCommand {
    pub index: i64,
    pub version: String,
    pub command_type: CommandType,
    pub dc: String,
    pub pattern: String,
    pub merge_groups: Vec<String>,
    pub route_rules: Vec<String>,
    pub remark: String,
    /// `pattern` compiled as a regexp, when it is one.
    regex: Option<Regex>,
}

impl PartialEq for ClientCommand {
    fn eq(&self, o: &ClientCommand) -> bool {
        (
            self.index,
            &self.version,
            self.command_type,
            &self.dc,
            &self.pattern,
        ) == (o.index, &o.version, o.command_type, &o.dc, &o.pattern)
            && (&self.merge_groups, &self.route_rules, &self.remark)
                == (&o.merge_groups, &o.route_rules, &o.remark)
    }
}

impl ClientCommand {
    fn new(index: i64, command_type: CommandType, pattern: String) -> ClientCommand {
        let regex = Regex::new(&pattern).ok();
        ClientCommand {
            index,
            version: String::new(),
            command_type,
            dc: String::new(),
            pattern,
            merge_groups: Vec::new(),
            route_rules: Vec::new(),
            remark: String::new(),
            regex,
        }
    }

    /// Whether this command applies to the service `path` (upstream `MatchCmdPattern`):
    /// switchers always; else `*`, a prefix of the path (so an empty pattern matches
    /// everything), or a regexp found anywhere in the path (Go's `regexp.MatchString`, not
    /// anchored). A pattern that is no valid regexp only matches as `*` or prefix.
    pub fn matches(&self, path: &str) -> bool {
        self.command_type == CommandType::Switcher
            || self.pattern == "*"
            || path.starts_with(&self.pattern)
            || self.regex.as_ref().is_some_and(|r| r.is_match(path))
    }
}

/// A parsed command node, sorted by `index` (ascending; equal indexes keep their order).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CommandList {
    pub commands: Vec<ClientCommand>,
}

/// Command fields as Go's `encoding/json` reads them: keys are matched case-insensitively
/// (the keys are lower-cased before this is deserialised), `null` leaves the zero value.
#[derive(Deserialize)]
struct RawCommand {
    index: Option<i64>,
    version: Option<String>,
    commandtype: Option<i64>,
    dc: Option<String>,
    pattern: Option<String>,
    mergegroups: Option<Vec<Option<String>>>,
    routerules: Option<Vec<Option<String>>>,
    remark: Option<String>,
}

impl CommandList {
    /// Parse a command node's text. Empty (or blank) text is an empty list; anything that Go's
    /// `json.Unmarshal` into upstream's `Command` struct would reject is an error. Unknown
    /// fields are ignored.
    pub fn parse(text: &str) -> Result<CommandList, CommandError> {
        if text.trim().is_empty() {
            return Ok(CommandList::default());
        }
        let err = |reason: String| CommandError {
            text: text.to_string(),
            reason,
        };
        let value: Value = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
        let Value::Object(top) = value else {
            return Err(err("not a JSON object".into()));
        };
        let list = match field(top, "clientcommandlist") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items,
            Some(_) => return Err(err("clientCommandList is not an array".into())),
        };
        let mut commands = Vec::with_capacity(list.len());
        for (i, item) in list.into_iter().enumerate() {
            let raw: RawCommand = match item {
                Value::Null => continue,
                Value::Object(m) => {
                    let lowered = m.into_iter().map(|(k, v)| (k.to_lowercase(), v)).collect();
                    serde_json::from_value(Value::Object(lowered))
                        .map_err(|e| err(format!("clientCommandList[{i}]: {e}")))?
                }
                _ => return Err(err(format!("clientCommandList[{i}] is not an object"))),
            };
            let strings = |v: Option<Vec<Option<String>>>| -> Vec<String> {
                v.unwrap_or_default()
                    .into_iter()
                    .map(Option::unwrap_or_default)
                    .collect()
            };
            let mut c = ClientCommand::new(
                raw.index.unwrap_or(0),
                CommandType::from_code(raw.commandtype.unwrap_or(0)),
                raw.pattern.unwrap_or_default(),
            );
            c.version = raw.version.unwrap_or_default();
            c.dc = raw.dc.unwrap_or_default();
            c.merge_groups = strings(raw.mergegroups);
            c.route_rules = strings(raw.routerules);
            c.remark = raw.remark.unwrap_or_default();
            commands.push(c);
        }
        // Stable: equal indexes keep file order (Go's sort.Sort leaves that unspecified).
        commands.sort_by_key(|c| c.index);
        Ok(CommandList { commands })
    }

    /// The commands of each type that apply to service `path` (upstream `mergeCommand`): the
    /// first matching traffic control by index, and the *last* matching degrade and switcher
    /// (upstream overwrites those as it walks the sorted list).
    pub fn select(&self, path: &str) -> Selected {
        let mut s = Selected::default();
        for c in self.commands.iter().filter(|c| c.matches(path)) {
            match c.command_type {
                CommandType::TrafficControl if s.traffic_control.is_none() => {
                    s.traffic_control = Some(c.clone())
                }
                CommandType::TrafficControl => {
                    tracing::debug!(
                        index = c.index,
                        "traffic control command shadowed by a lower index"
                    )
                }
                CommandType::Degrade => s.degrade = Some(c.clone()),
                CommandType::Switcher => s.switcher = Some(c.clone()),
                CommandType::Unknown(n) => tracing::debug!(command_type = n, "unknown command type ignored"),
            }
        }
        s
    }
}

/// A JSON object member matched like Go does (case-insensitively; an exact match first).
fn field(mut obj: serde_json::Map<String, Value>, lower: &str) -> Option<Value> {
    if let Some(v) = obj.remove(lower) {
        return Some(v);
    }
    let key = obj.keys().find(|k| k.to_lowercase() == lower)?.clone();
    obj.remove(&key)
}

/// At most one command of each type.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selected {
    pub traffic_control: Option<ClientCommand>,
    pub degrade: Option<ClientCommand>,
    pub switcher: Option<ClientCommand>,
}

impl Selected {
    /// The agent command wins over the service command for each type independently.
    pub fn merge(agent: Selected, service: Selected) -> Selected {
        Selected {
            traffic_control: agent.traffic_control.or(service.traffic_control),
            degrade: agent.degrade.or(service.degrade),
            switcher: agent.switcher.or(service.switcher),
        }
    }

    /// A matching degrade command makes the cluster unavailable (4.4).
    pub fn is_degraded(&self) -> bool {
        self.degrade.is_some()
    }

    /// The switcher assignments of the switcher command, if any.
    pub fn switchers(&self) -> Vec<(String, bool)> {
        self.switcher
            .as_ref()
            .map(|c| parse_switchers(&c.pattern))
            .unwrap_or_default()
    }
}

/// The command state of one refer: the last agent and service command texts, the static
/// `mixGroups` command, and what they select. Identical text is ignored, as upstream.
#[derive(Debug)]
pub struct ReferCommands {
    refer_path: String,
    static_traffic: Option<TrafficControl>,
    agent_text: String,
    service_text: String,
    effective: Selected,
}

/// What `ReferCommands::update` changed.
#[derive(Debug)]
pub struct CommandUpdate {
    pub effective: Selected,
    /// Texts that could not be parsed; nothing of such a text is applied.
    pub errors: Vec<CommandError>,
}

impl ReferCommands {
    pub fn new(refer: &Url) -> ReferCommands {
        ReferCommands {
            refer_path: refer.path.clone(),
            static_traffic: TrafficControl::from_mix_groups(refer),
            agent_text: String::new(),
            service_text: String::new(),
            effective: Selected::default(),
        }
    }

    /// A new text from `source` (`None`: the node is absent or empty). Returns `None` when the
    /// text is the one already applied from that source; else the new effective commands.
    pub fn update(&mut self, source: CommandSource, text: Option<&str>) -> Option<CommandUpdate> {
        let text = text.unwrap_or("");
        let slot = match source {
            CommandSource::Agent => &mut self.agent_text,
            CommandSource::Service => &mut self.service_text,
        };
        if slot == text {
            return None;
        }
        *slot = text.to_string();
        let mut errors = Vec::new();
        let mut select = |t: &str| match CommandList::parse(t) {
            Ok(list) => list.select(&self.refer_path),
            Err(e) => {
                errors.push(e);
                Selected::default()
            }
        };
        let agent = select(&self.agent_text);
        let service = select(&self.service_text);
        self.effective = Selected::merge(agent, service);
        Some(CommandUpdate {
            effective: self.effective.clone(),
            errors,
        })
    }

    pub fn effective(&self) -> &Selected {
        &self.effective
    }

    /// The traffic control in force: the dynamic command, else the static `mixGroups` one.
    pub fn traffic_control(&self) -> Option<TrafficControl> {
        match &self.effective.traffic_control {
            Some(c) => Some(TrafficControl::from_command(c)),
            None => self.static_traffic.clone(),
        }
    }
}

/// One `mergeGroups` entry: `group` or `group:weight`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeGroup {
    pub group: String,
    /// The weight text as written (the balancer clamps and parses it, 4.5).
    pub weight: Option<String>,
}

impl MergeGroup {
    /// Like upstream's `strings.Split(group, ":")`: the name is before the first `:`, the
    /// weight between the first and a possible second one.
    pub fn parse(entry: &str) -> MergeGroup {
        let mut parts = entry.split(':');
        MergeGroup {
            group: parts.next().unwrap_or("").to_string(),
            weight: parts.next().map(str::to_string),
        }
    }
}

/// A traffic-control decision for one refer: merge groups (with weights) and route rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrafficControl {
    /// The `mergeGroups` entries as written; joined with `,` they are the balancer's group
    /// weights (4.5).
    pub entries: Vec<String>,
    pub groups: Vec<MergeGroup>,
    pub route_rules: Vec<RouteRule>,
}

/// The endpoints a traffic-control decision yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrafficResult {
    /// Server URLs of every merge group, in merge-group order, after the route rules.
    pub endpoints: Vec<Url>,
    /// `Balancer` group weights (`g1:3,g2:1`); `None` after a fallback.
    pub group_weights: Option<String>,
    /// True when nothing was left and the refer's own group was used instead.
    pub fell_back: bool,
}

impl TrafficControl {
    pub fn from_command(c: &ClientCommand) -> TrafficControl {
        let route_rules = c
            .route_rules
            .iter()
            .filter_map(|r| match RouteRule::parse(r) {
                Ok(rule) => Some(rule),
                Err(e) => {
                    tracing::warn!(rule = %r, "route rule ignored: {e}");
                    None
                }
            })
            .collect();
        TrafficControl {
            entries: c.merge_groups.clone(),
            groups: c.merge_groups.iter().map(|g| MergeGroup::parse(g)).collect(),
            route_rules,
        }
    }

    /// The static command of a refer's `mixGroups`: own group first, then each listed group
    /// other than it; `None` unless another group is listed.
    pub fn from_mix_groups(refer: &Url) -> Option<TrafficControl> {
        let mut entries = vec![refer.group.clone()];
        for g in refer.get_list(MIX_GROUPS) {
            if g != refer.group {
                entries.push(g.to_string());
            }
        }
        (entries.len() > 1).then(|| TrafficControl {
            groups: entries.iter().map(|g| MergeGroup::parse(g)).collect(),
            entries,
            route_rules: Vec::new(),
        })
    }

    /// The merge groups other than `own_group`: the ones the cluster must subscribe to.
    pub fn other_groups<'a>(&'a self, own_group: &str) -> Vec<&'a str> {
        let mut out: Vec<&str> = Vec::new();
        for g in &self.groups {
            if g.group != own_group && !out.contains(&g.group.as_str()) {
                out.push(&g.group);
            }
        }
        out
    }

    /// The `group_weights` argument of `Balancer::new` (the entries joined by `,`).
    pub fn group_weights(&self) -> String {
        self.entries.join(",")
    }

    /// The endpoints of the refer under this decision (upstream `getResultWithCommand`):
    /// concatenate each merge group's servers (`own` for the refer's own group, else
    /// `group_servers(name)`), apply the route rules with this agent's IP, and fall back to
    /// `own` when no endpoint is left. A merge group not in `mergeGroups` is not used, so the
    /// own group must be listed to keep its endpoints.
    pub fn apply<'a>(
        &self,
        own_group: &str,
        own: &'a [Url],
        group_servers: impl Fn(&str) -> Option<&'a [Url]>,
        local_ip: &str,
    ) -> TrafficResult {
        let mut endpoints = Vec::new();
        for g in &self.groups {
            let servers = if g.group == own_group {
                Some(own)
            } else {
                group_servers(&g.group)
            };
            endpoints.extend(servers.unwrap_or_default().iter().cloned());
        }
        let endpoints = route(endpoints, &self.route_rules, local_ip);
        if endpoints.is_empty() {
            return TrafficResult {
                endpoints: own.to_vec(),
                group_weights: None,
                fell_back: true,
            };
        }
        TrafficResult {
            endpoints,
            group_weights: Some(self.group_weights()),
            fell_back: false,
        }
    }
}

/// An IP pattern of a route rule: `*`, an exact IP, or a prefix ending in `*` (`10.75.*`:
/// everything before the first `*`); `!` in front negates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpPattern {
    pub negate: bool,
    pub kind: IpMatch,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpMatch {
    Any,
    Prefix(String),
    Exact(String),
}

impl IpPattern {
    pub fn parse(s: &str) -> IpPattern {
        let (negate, s) = match s.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let kind = if s == "*" {
            IpMatch::Any
        } else if let Some(i) = s.find('*') {
            IpMatch::Prefix(s[..i].to_string())
        } else {
            IpMatch::Exact(s.to_string())
        };
        IpPattern { negate, kind }
    }

    pub fn matches(&self, ip: &str) -> bool {
        let m = match &self.kind {
            IpMatch::Any => true,
            IpMatch::Prefix(p) => ip.starts_with(p.as_str()),
            IpMatch::Exact(e) => ip == e,
        };
        m != self.negate
    }
}

/// `"<from> to <to>"`: when this agent's IP matches `from`, keep only the endpoints whose host
/// matches `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRule {
    pub from: IpPattern,
    pub to: IpPattern,
}

impl RouteRule {
    /// Upstream splits on the text `to` (anywhere) and needs exactly two non-empty parts.
    pub fn parse(rule: &str) -> Result<RouteRule, String> {
        let parts: Vec<&str> = rule.split("to").map(str::trim).collect();
        match parts.as_slice() {
            [from, to] if !from.is_empty() && !to.is_empty() => Ok(RouteRule {
                from: IpPattern::parse(from),
                to: IpPattern::parse(to),
            }),
            _ => Err(format!("{rule:?} is not \"<from> to <to>\"")),
        }
    }
}

/// Apply route rules in order, each narrowing the result of the previous one (upstream
/// `processRoute`).
pub fn route(mut urls: Vec<Url>, rules: &[RouteRule], local_ip: &str) -> Vec<Url> {
    for rule in rules {
        if rule.from.matches(local_ip) {
            urls.retain(|u| rule.to.matches(&u.host));
        }
    }
    urls
}

/// A switcher command's pattern `"name1:true,name2:false"`: entries without `:` or with a
/// value that is no Go bool are skipped; names are taken as written.
pub fn parse_switchers(pattern: &str) -> Vec<(String, bool)> {
    pattern
        .split(',')
        .filter_map(|item| {
            let mut parts = item.split(':');
            let name = parts.next()?;
            let value = parse_go_bool(parts.next()?)?;
            Some((name.to_string(), value))
        })
        .collect()
}

/// Switcher values set by commands, and the values they had before, so that removing a
/// command restores them (upstream keeps this process-wide, as switchers are).
#[derive(Debug, Default)]
pub struct SwitcherOverrides {
    original: BTreeMap<String, bool>,
}

impl SwitcherOverrides {
    /// The assignments to make for the switcher command now in force (`wanted`), given the
    /// current value of each registered switcher (`current` is `None` for an unknown name,
    /// which is skipped): the wanted values, and the original value of every switcher a
    /// previous command set but this one does not mention.
    pub fn apply(
        &mut self,
        wanted: &[(String, bool)],
        current: impl Fn(&str) -> Option<bool>,
    ) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        let mut kept = BTreeMap::new();
        for (name, value) in wanted {
            let Some(now) = current(name) else { continue };
            let original = self.original.get(name).copied().unwrap_or(now);
            kept.insert(name.clone(), original);
            out.push((name.clone(), *value));
        }
        for (name, original) in &self.original {
            if !kept.contains_key(name) {
                out.push((name.clone(), *original));
            }
        }
        self.original = kept;
        out
    }
}

impl fmt::Display for CommandType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandType::TrafficControl => f.write_str("traffic control"),
            CommandType::Degrade => f.write_str("degrade"),
            CommandType::Switcher => f.write_str("switcher"),
            CommandType::Unknown(n) => write!(f, "unknown type {n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(index: i64, ty: i64, pattern: &str, groups: &[&str], rules: &[&str]) -> String {
        serde_json::json!({
            "index": index, "version": "1.0", "commandType": ty, "dc": "yf", "pattern": pattern,
            "mergeGroups": groups, "routeRules": rules, "remark": "r"
        })
        .to_string()
    }

    fn list(cmds: &[String]) -> String {
        format!("{{\"clientCommandList\":[{}]}}", cmds.join(","))
    }

    fn server(host: &str, group: &str) -> Url {
        Url::new("motan2", host, 9982, "com.weibo.test.TestService", group)
    }

    /// Two hosts in each of 10.73.1, 10.75.1, 10.77.1 (upstream's test fixture shape).
    fn servers(group: &str) -> Vec<Url> {
        [
            "10.73.1.3",
            "10.73.1.5",
            "10.75.1.3",
            "10.75.1.5",
            "10.77.1.3",
            "10.77.1.5",
        ]
        .iter()
        .map(|h| server(h, group))
        .collect()
    }

    fn hosts(urls: &[Url]) -> Vec<&str> {
        urls.iter().map(|u| u.host.as_str()).collect()
    }

    #[test]
    fn parse_the_spec_example() {
        let text = r#"{"clientCommandList":[
          {"index":1,"version":"1.0","commandType":0,"dc":"yf","pattern":"com.weibo.*",
           "mergeGroups":["g-yf:3","g-tc:1"],"routeRules":["10.75.* to 10.75.*","!10.75.* to 10.77.*"],
           "remark":"shift 25% to tc"}]}"#;
        let l = CommandList::parse(text).unwrap();
        assert_eq!(l.commands.len(), 1);
        let c = &l.commands[0];
        assert_eq!(c.index, 1);
        assert_eq!(c.command_type, CommandType::TrafficControl);
        assert_eq!(c.merge_groups, ["g-yf:3", "g-tc:1"]);
        assert_eq!(c.route_rules.len(), 2);
        assert_eq!((c.dc.as_str(), c.version.as_str()), ("yf", "1.0"));
        assert_eq!(c.remark, "shift 25% to tc");
    }

    #[test]
    fn parse_errors_are_clear() {
        let e = CommandList::parse("kljsdfoie").unwrap_err();
        assert!(
            e.to_string().starts_with("bad command JSON: expected value"),
            "{e}"
        );
        assert_eq!(e.text, "kljsdfoie");
        let e = CommandList::parse("[1]").unwrap_err();
        assert_eq!(e.reason, "not a JSON object");
        let e = CommandList::parse(r#"{"clientCommandList":{}}"#).unwrap_err();
        assert_eq!(e.reason, "clientCommandList is not an array");
        let e = CommandList::parse(r#"{"clientCommandList":[3]}"#).unwrap_err();
        assert_eq!(e.reason, "clientCommandList[0] is not an object");
        // A wrongly typed field rejects the whole text, as Go's json.Unmarshal does.
        let e = CommandList::parse(r#"{"clientCommandList":[{"index":"1"}]}"#).unwrap_err();
        assert!(
            e.reason.starts_with("clientCommandList[0]: invalid type: string"),
            "{e}"
        );
        let e = CommandList::parse(r#"{"clientCommandList":[{"index":1.5}]}"#).unwrap_err();
        assert!(e.reason.contains("invalid type: floating point"), "{e}");
    }

    #[test]
    fn parse_like_go_json() {
        // Blank text: no command; missing or null list: empty.
        assert!(CommandList::parse("").unwrap().commands.is_empty());
        assert!(CommandList::parse("  \n").unwrap().commands.is_empty());
        assert!(CommandList::parse("{}").unwrap().commands.is_empty());
        assert!(
            CommandList::parse(r#"{"clientCommandList":null}"#)
                .unwrap()
                .commands
                .is_empty()
        );
        // Keys case-insensitive, nulls leave zero values, unknown fields ignored.
        let l = CommandList::parse(
            r#"{"ClientCommandList":[{"INDEX":4,"CommandType":1,"Pattern":null,"mergeGroups":["a",null],"extra":{"x":1}},null]}"#,
        )
        .unwrap();
        assert_eq!(l.commands.len(), 1);
        let c = &l.commands[0];
        assert_eq!((c.index, c.command_type), (4, CommandType::Degrade));
        assert_eq!(c.pattern, "");
        assert_eq!(c.merge_groups, ["a", ""]);
        assert_eq!(CommandType::from_code(7), CommandType::Unknown(7));
    }

    #[test]
    fn sorted_by_index_stably() {
        let text = list(&[
            cmd(3, 0, "a", &[], &[]),
            cmd(1, 0, "b", &[], &[]),
            cmd(2, 0, "c", &[], &[]),
            cmd(1, 0, "d", &[], &[]),
        ]);
        let l = CommandList::parse(&text).unwrap();
        let order: Vec<&str> = l.commands.iter().map(|c| c.pattern.as_str()).collect();
        assert_eq!(order, ["b", "d", "c", "a"]);
    }

    #[test]
    fn pattern_matching() {
        let c = |ty: CommandType, p: &str| ClientCommand::new(1, ty, p.to_string());
        let tc = CommandType::TrafficControl;
        let path = "com.weibo.test.TestService";
        assert!(c(tc, "*").matches(path));
        assert!(c(tc, "com.weibo").matches(path));
        assert!(
            c(tc, "").matches(path),
            "empty prefix matches everything, as upstream"
        );
        assert!(!c(tc, "com.sina").matches(path));
        // Regexp, unanchored like Go's regexp.MatchString.
        assert!(c(tc, "com\\.weibo\\..*Service$").matches(path));
        assert!(c(tc, "Test").matches(path));
        assert!(!c(tc, "^Test").matches(path));
        // "com.weibo.*" matches as a prefix-or-regexp.
        assert!(c(tc, "com.weibo.*").matches(path));
        assert!(!c(tc, "org.weibo.*").matches(path));
        // An invalid regexp only matches as prefix.
        assert!(!c(tc, "Test(").matches(path));
        assert!(c(tc, "com.weibo.test.Test(").matches("com.weibo.test.Test(x"));
        // Switchers ignore the pattern.
        assert!(c(CommandType::Switcher, "a:true").matches(path));
    }

    #[test]
    fn select_first_traffic_control_last_degrade_and_switcher() {
        let text = list(&[
            cmd(5, 0, "*", &["late"], &[]),
            cmd(2, 0, "com.weibo", &["early"], &[]),
            cmd(1, 0, "com.sina", &["nomatch"], &[]),
            cmd(1, 1, "*", &[], &[]),
            cmd(2, 1, "com.weibo.test", &[], &[]),
            cmd(3, 1, "other", &[], &[]),
            cmd(1, 2, "a:true", &[], &[]),
            cmd(4, 2, "b:false", &[], &[]),
            cmd(9, 9, "*", &[], &[]),
        ]);
        let s = CommandList::parse(&text)
            .unwrap()
            .select("com.weibo.test.TestService");
        assert_eq!(s.traffic_control.unwrap().merge_groups, ["early"]);
        assert_eq!(s.degrade.as_ref().unwrap().index, 2);
        assert!(s.switcher.is_some());
        assert_eq!(
            CommandList::parse(&text).unwrap().select("x").switchers(),
            [("b".to_string(), false)]
        );
        let none = CommandList::parse(&list(&[cmd(1, 1, "nope", &[], &[])]))
            .unwrap()
            .select("com.weibo.X");
        assert!(!none.is_degraded());
    }

    #[test]
    fn agent_command_wins_per_type() {
        let agent = CommandList::parse(&list(&[cmd(1, 0, "*", &["agent-g"], &[])]))
            .unwrap()
            .select("p");
        let service = CommandList::parse(&list(&[
            cmd(1, 0, "*", &["service-g"], &[]),
            cmd(1, 1, "*", &[], &[]),
            cmd(1, 2, "s:true", &[], &[]),
        ]))
        .unwrap()
        .select("p");
        let m = Selected::merge(agent, service);
        assert_eq!(m.traffic_control.as_ref().unwrap().merge_groups, ["agent-g"]);
        assert!(m.is_degraded(), "the service degrade applies: the agent has none");
        assert_eq!(m.switcher.unwrap().pattern, "s:true");
    }

    #[test]
    fn refer_commands_ignore_identical_text_and_report_bad_json() {
        let refer = Url::new("motan2", "", 0, "com.weibo.test.TestService", "group0");
        let mut rc = ReferCommands::new(&refer);
        assert!(rc.traffic_control().is_none());
        let svc = list(&[
            cmd(1, 0, "*", &["group0:3", "group1:5"], &[]),
            cmd(1, 1, "com.weibo", &[], &[]),
        ]);
        let u = rc.update(CommandSource::Service, Some(&svc)).unwrap();
        assert!(u.errors.is_empty());
        assert!(u.effective.is_degraded());
        assert_eq!(rc.traffic_control().unwrap().group_weights(), "group0:3,group1:5");
        // Same text again: nothing to do.
        assert!(rc.update(CommandSource::Service, Some(&svc)).is_none());
        // The agent command overrides the service traffic control but not its degrade.
        let agent = list(&[cmd(1, 0, "*", &["group0", "group2"], &[" * to 10.75.*"])]);
        let u = rc.update(CommandSource::Agent, Some(&agent)).unwrap();
        assert!(u.effective.is_degraded());
        let tc = rc.traffic_control().unwrap();
        assert_eq!(tc.other_groups("group0"), ["group2"]);
        assert_eq!(tc.route_rules.len(), 1);
        assert!(rc.update(CommandSource::Agent, Some(&agent)).is_none());
        // A bad agent text applies nothing of the agent, keeps the service command.
        let u = rc.update(CommandSource::Agent, Some("kljsdfoie")).unwrap();
        assert_eq!(u.errors.len(), 1);
        assert_eq!(rc.traffic_control().unwrap().group_weights(), "group0:3,group1:5");
        // Removing both restores availability.
        rc.update(CommandSource::Agent, None).unwrap();
        let u = rc.update(CommandSource::Service, Some("")).unwrap();
        assert!(!u.effective.is_degraded());
        assert!(rc.traffic_control().is_none());
        assert!(
            rc.update(CommandSource::Service, None).is_none(),
            "absent = empty text"
        );
    }

    #[test]
    fn static_mix_groups() {
        let refer = Url::new("motan2", "", 0, "p", "own").with_param(MIX_GROUPS, "a, own ,b,,");
        let tc = TrafficControl::from_mix_groups(&refer).unwrap();
        assert_eq!(tc.entries, ["own", "a", "b"]);
        assert_eq!(tc.other_groups("own"), ["a", "b"]);
        let mut rc = ReferCommands::new(&refer);
        assert_eq!(rc.traffic_control(), Some(tc.clone()));
        // A dynamic command wins over it, and its removal brings it back.
        rc.update(
            CommandSource::Service,
            Some(&list(&[cmd(1, 0, "*", &["x:1"], &[])])),
        );
        assert_eq!(rc.traffic_control().unwrap().entries, ["x:1"]);
        rc.update(CommandSource::Service, None);
        assert_eq!(rc.traffic_control(), Some(tc));
        // Only the own group listed: no static command.
        let solo = Url::new("motan2", "", 0, "p", "own").with_param(MIX_GROUPS, "own");
        assert!(TrafficControl::from_mix_groups(&solo).is_none());
        assert!(TrafficControl::from_mix_groups(&Url::new("motan2", "", 0, "p", "own")).is_none());
    }

    #[test]
    fn merge_group_entries() {
        let g = MergeGroup::parse("g-yf:3");
        assert_eq!((g.group.as_str(), g.weight.as_deref()), ("g-yf", Some("3")));
        let g = MergeGroup::parse("plain");
        assert_eq!((g.group.as_str(), g.weight), ("plain", None));
        let g = MergeGroup::parse("a:2:x");
        assert_eq!((g.group.as_str(), g.weight.as_deref()), ("a", Some("2")));
    }

    #[test]
    fn traffic_control_merges_groups_with_weights() {
        let c = CommandList::parse(&list(&[cmd(1, 0, "*", &["group0:3", "group1:5"], &[])]))
            .unwrap()
            .commands
            .remove(0);
        let tc = TrafficControl::from_command(&c);
        let own = servers("group0");
        let g1 = servers("group1");
        let r = tc.apply(
            "group0",
            &own,
            |g| (g == "group1").then_some(g1.as_slice()),
            "10.1.1.1",
        );
        assert_eq!(r.endpoints.len(), 12);
        assert_eq!(r.endpoints[0].group, "group0");
        assert_eq!(r.endpoints[11].group, "group1");
        assert_eq!(r.group_weights.as_deref(), Some("group0:3,group1:5"));
        assert!(!r.fell_back);
        // The own group is only used when listed.
        let other_only = TrafficControl::from_command(&ClientCommand {
            merge_groups: vec!["group1".into()],
            ..c.clone()
        });
        let r = other_only.apply("group0", &own, |_| Some(g1.as_slice()), "10.1.1.1");
        assert!(r.endpoints.iter().all(|u| u.group == "group1"));
        // A group with no servers known yet contributes nothing.
        let r = tc.apply("group0", &own, |_| None, "10.1.1.1");
        assert_eq!(r.endpoints.len(), 6);
    }

    #[test]
    fn traffic_control_with_routes_and_fallback() {
        // Upstream TestGetResultWithCommand: local IP 10.108.0.8, rules keep 10.73.1.* only.
        let c = CommandList::parse(&list(&[cmd(
            1,
            0,
            "*",
            &["group0:3", "group1:5"],
            &[" 10.79.* to !10.75.1.*", "10.108.* to 10.73.1.* "],
        )]))
        .unwrap()
        .commands
        .remove(0);
        let tc = TrafficControl::from_command(&c);
        let own = servers("group0");
        let g1 = servers("group1");
        let r = tc.apply("group0", &own, |_| Some(g1.as_slice()), "10.108.0.8");
        assert_eq!(r.endpoints.len(), 4);
        assert!(r.endpoints.iter().all(|u| u.host.starts_with("10.73.1")));
        // Rules that leave nothing: the own group, without weights.
        let c2 = ClientCommand {
            route_rules: vec!["* to 10.99.*".into()],
            ..c
        };
        let r = TrafficControl::from_command(&c2).apply("group0", &own, |_| Some(g1.as_slice()), "10.1.1.1");
        assert!(r.fell_back);
        assert_eq!(r.endpoints, own);
        assert_eq!(r.group_weights, None);
    }

    #[test]
    fn route_rules_like_upstream() {
        let urls = servers("group0");
        let rules =
            |rs: &[&str]| -> Vec<RouteRule> { rs.iter().map(|r| RouteRule::parse(r).unwrap()).collect() };
        let r = rules(&[" 10.73.1.* to 10.75.1.* "]);
        // Not matching the agent IP: untouched.
        assert_eq!(route(urls.clone(), &r, "10.75.0.8").len(), 6);
        // Prefix match.
        assert_eq!(
            hosts(&route(urls.clone(), &r, "10.73.1.8")),
            ["10.75.1.3", "10.75.1.5"]
        );
        // Exact match.
        let r = rules(&["10.75.0.8 to 10.73.1.*"]);
        assert_eq!(
            hosts(&route(urls.clone(), &r, "10.75.0.8")),
            ["10.73.1.3", "10.73.1.5"]
        );
        assert_eq!(route(urls.clone(), &r, "10.75.0.81").len(), 6);
        // `*`.
        let r = rules(&[" * to 10.75.*"]);
        assert_eq!(route(urls.clone(), &r, "10.108.0.8").len(), 2);
        // Rules narrow one after the other.
        let r = rules(&[" * to 10.75.*", "10.108.* to 10.77.1.* "]);
        assert!(route(urls.clone(), &r, "10.108.0.8").is_empty());
        let r = rules(&[" * to 10.*", "10.108.* to !10.73.1.* "]);
        assert_eq!(
            hosts(&route(urls.clone(), &r, "10.108.0.8")),
            ["10.75.1.3", "10.75.1.5", "10.77.1.3", "10.77.1.5"]
        );
        let r = rules(&[
            " 10.79.* to !10.75.1.*",
            "10.108.* to 10.73.1.* ",
            "10.108.* to !10.73.1.5",
        ]);
        assert_eq!(route(urls.clone(), &r, "10.79.0.8").len(), 4);
        assert_eq!(hosts(&route(urls.clone(), &r, "10.108.0.8")), ["10.73.1.3"]);
        // Negated `from`.
        let r = rules(&["!10.75.* to 10.77.*"]);
        assert_eq!(route(urls.clone(), &r, "10.75.0.1").len(), 6);
        assert_eq!(route(urls, &r, "10.1.0.1").len(), 2);
    }

    #[test]
    fn route_rule_parsing() {
        assert!(RouteRule::parse("10.75.* 10.77.*").is_err());
        assert!(RouteRule::parse(" to 10.77.*").is_err());
        assert!(RouteRule::parse("a to b to c").is_err());
        // Upstream splits on "to" anywhere, spaces or not.
        let r = RouteRule::parse("10.75.*to10.77.*").unwrap();
        assert_eq!(r.from.kind, IpMatch::Prefix("10.75.".into()));
        assert_eq!(r.to.kind, IpMatch::Prefix("10.77.".into()));
        // A broken rule in a command is skipped, the others apply.
        let c = ClientCommand {
            route_rules: vec!["nonsense".into(), "* to 10.75.*".into()],
            ..ClientCommand::new(1, CommandType::TrafficControl, "*".into())
        };
        assert_eq!(TrafficControl::from_command(&c).route_rules.len(), 1);
    }

    #[test]
    fn ip_patterns() {
        let p = IpPattern::parse;
        assert!(p("*").matches("1.2.3.4"));
        assert!(!p("!*").matches("1.2.3.4"));
        assert!(p("10.75.*").matches("10.75.1.1"));
        assert!(!p("10.75.*").matches("10.76.1.1"));
        assert!(p("!10.75.*").matches("10.76.1.1"));
        assert!(p("10.75.1.1").matches("10.75.1.1"));
        assert!(!p("10.75.1.1").matches("10.75.1.10"));
        assert!(p("!10.75.1.1").matches("10.75.1.10"));
        // Everything before the first `*` is the prefix.
        assert_eq!(p("10.*.1.*").kind, IpMatch::Prefix("10.".into()));
    }

    #[test]
    fn switcher_patterns() {
        assert_eq!(
            parse_switchers("name1:true,name2:false,bad,x:yes,y:0,z:T:extra"),
            [
                ("name1".to_string(), true),
                ("name2".to_string(), false),
                ("y".to_string(), false),
                ("z".to_string(), true)
            ]
        );
        assert!(parse_switchers("").is_empty());
    }

    #[test]
    fn switcher_overrides_restore_originals() {
        let registered = |name: &str| match name {
            "a" => Some(false),
            "b" => Some(true),
            _ => None,
        };
        let mut o = SwitcherOverrides::default();
        let w = |v: &[(&str, bool)]| -> Vec<(String, bool)> {
            v.iter().map(|(n, b)| (n.to_string(), *b)).collect()
        };
        // Unknown switchers are skipped.
        assert_eq!(
            o.apply(&w(&[("a", true), ("zz", true)]), registered),
            w(&[("a", true)])
        );
        // While set, the current value is the command's; the original stays remembered.
        let now = |name: &str| if name == "a" { Some(true) } else { registered(name) };
        assert_eq!(
            o.apply(&w(&[("b", false)]), now),
            w(&[("b", false), ("a", false)])
        );
        // Command removed: b goes back to true.
        assert_eq!(o.apply(&[], |_| Some(false)), w(&[("b", true)]));
        assert!(o.apply(&[], registered).is_empty());
    }
}
