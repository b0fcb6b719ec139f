//! The motan sections of the configuration as typed URLs (4.2): registries, refers (client
//! side), services (server side) and `http-client` clusters. Each entry becomes a URL (keys
//! `protocol`, `host`, `port`, `path`, `group` are fields, every other key a string parameter,
//! `conf-id` = the entry id), inherits from its `basicRefer`/`basicService` template, gets its
//! final filter list, and is checked. Every problem is reported at once, each naming file,
//! section, entry and key.
//!
//! Not covered: pool mode (`-c <dir>`, `import-*`), `MESH_DIRECT_RPC`, `${idc}` resolution
//! (needs the registry), and placeholders in the typed `motan-agent` keys (`port`, `mport`,
//! `eport`, `application` are deserialised by `Config::parse` before substitution can run).
use std::collections::BTreeMap;

use serde_yaml_ng::{Mapping, Value};

use super::filters::filter_names;
use super::refer::{HaKind, HashKeySource};
use super::sections::AgentSection;
use super::service::{EXPORT_PROTOCOLS, ServiceSpec, parse_protocol_port};
use crate::cluster::lb::LbKind;
use crate::registry::direct::DirectRegistry;
use crate::registry::zookeeper;
use crate::url::{Url, keys, parse_go_bool, split_list};

pub const REGISTRY_SECTION: &str = "motan-registry";
pub const BASIC_REFER_SECTION: &str = "motan-basicRefer";
pub const REFER_SECTION: &str = "motan-refer";
pub const BASIC_SERVICE_SECTION: &str = "motan-basicService";
pub const SERVICE_SECTION: &str = "motan-service";
pub const HTTP_CLIENT_SECTION: &str = "http-client";
pub const DYNAMIC_PARAM_SECTION: &str = "dynamic-param";
const HTTP_LOCATIONS_SECTION: &str = "http-locations";

const BASIC_REFER_KEY: &str = "basicRefer";
const BASIC_SERVICE_KEY: &str = "basicService";
const DEFAULT_FILTER_KEY: &str = "defaultFilter";
const GLOBAL_FILTER_KEY: &str = "globalFilter";
const DISABLE_DEFAULT_FILTER_KEY: &str = "disableDefaultFilter";
const DISABLE_GLOBAL_FILTER_KEY: &str = "disableGlobalFilter";
/// Protocol of a refer that does not name one: sockmesh speaks motan2.
pub const DEFAULT_REFER_PROTOCOL: &str = "motan2";

/// Environment variables that change the motan sections (4.1).
#[derive(Clone, Debug, Default)]
pub struct MotanEnv {
    /// `MESH_FILTERS`: filters added to every refer and service.
    pub mesh_filters: String,
    /// `MESH_SERVICE_ADDITIONAL_GROUP`: groups every service is also exported in.
    pub additional_group: String,
    /// `RPC_REG_GROUP_SUFFIX`: suffix appended to every exported group.
    pub reg_group_suffix: String,
    /// `MESH_MULTI_SUB_GROUP_SUFFIX`: for every refer, an extra refer of `group + suffix`.
    pub sub_group_suffix: String,
}

impl MotanEnv {
    pub fn from_process() -> MotanEnv {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        MotanEnv {
            mesh_filters: var("MESH_FILTERS"),
            additional_group: var("MESH_SERVICE_ADDITIONAL_GROUP"),
            reg_group_suffix: var("RPC_REG_GROUP_SUFFIX"),
            sub_group_suffix: var("MESH_MULTI_SUB_GROUP_SUFFIX"),
        }
    }
}

/// The typed motan configuration. Maps are keyed by entry id (`conf-id`).
#[derive(Clone, Debug, Default)]
pub struct MotanConfig {
    pub registries: BTreeMap<String, Url>,
    pub refers: BTreeMap<String, Url>,
    pub services: BTreeMap<String, Url>,
    /// Every service (after group expansion) as the exporter serves it.
    pub exports: BTreeMap<String, ServiceSpec>,
    pub http_clients: BTreeMap<String, Url>,
    /// Things that work but are probably not meant (log them at start).
    pub warnings: Vec<String>,
}

impl MotanConfig {
    /// Build and check; returns the model (best effort) and every error found.
    pub fn build(
        source: &str,
        agent: &AgentSection,
        sections: &BTreeMap<String, Value>,
        env: &MotanEnv,
    ) -> (MotanConfig, Vec<String>) {
        let mut p = Problems {
            src: source,
            errors: Vec::new(),
            warnings: Vec::new(),
        };
        let placeholders = dynamic_params(sections.get(DYNAMIC_PARAM_SECTION), &mut p);
        let section = |name: &str, p: &mut Problems| -> Vec<(String, Url)> {
            let mut v = sections.get(name).cloned().unwrap_or(Value::Null);
            substitute(&mut v, &placeholders, name, p);
            section_urls(name, &v, p)
        };
        let agent_params = agent_params(agent, &placeholders, &mut p);
        let registries: BTreeMap<String, Url> = section(REGISTRY_SECTION, &mut p).into_iter().collect();
        let basic_refers: BTreeMap<String, Url> = section(BASIC_REFER_SECTION, &mut p).into_iter().collect();
        let basic_services: BTreeMap<String, Url> =
            section(BASIC_SERVICE_SECTION, &mut p).into_iter().collect();
        let raw_refers = section(REFER_SECTION, &mut p);
        let raw_services = section(SERVICE_SECTION, &mut p);
        let raw_http = section(HTTP_CLIENT_SECTION, &mut p);

        for (id, u) in &registries {
            check_registry(id, u, &mut p);
        }
        // The registry the agent registers itself in.
        for r in split_list(agent_params.get(keys::REGISTRY).map(String::as_str).unwrap_or("")) {
            if !registries.contains_key(r) {
                p.error(
                    "motan-agent",
                    None,
                    Some(keys::REGISTRY),
                    unknown_registry(r, &registries),
                );
            }
        }
        let ctx = Checks {
            registries: &registries,
            sections,
        };
        for (sec, list) in [
            (BASIC_REFER_SECTION, &basic_refers),
            (BASIC_SERVICE_SECTION, &basic_services),
        ] {
            for (id, u) in list {
                ctx.check_values(sec, id, u, &mut p);
            }
        }
        for (sec, list) in [
            (REFER_SECTION, &raw_refers),
            (SERVICE_SECTION, &raw_services),
            (HTTP_CLIENT_SECTION, &raw_http),
        ] {
            for (id, u) in list {
                ctx.check_values(sec, id, u, &mut p);
            }
        }

        let application = agent.application.as_str();
        let mut refers = BTreeMap::new();
        for (id, raw) in raw_refers {
            let mut u = inherit(REFER_SECTION, &id, raw, BASIC_REFER_KEY, &basic_refers, &mut p);
            finish_refer(&mut u, application, &agent_params, env);
            ctx.check_refer(REFER_SECTION, &id, &u, &mut p);
            check_filters(REFER_SECTION, &id, &u, &mut p);
            if let Err(e) = HashKeySource::from_url(&u) {
                p.error(REFER_SECTION, Some(&id), Some(&e.key), e.reason);
            }
            refers.insert(id, u);
        }
        add_sub_group_refers(&mut refers, &env.sub_group_suffix);
        let mut http_clients = BTreeMap::new();
        for (id, raw) in raw_http {
            let mut u = inherit(
                HTTP_CLIENT_SECTION,
                &id,
                raw,
                BASIC_REFER_KEY,
                &basic_refers,
                &mut p,
            );
            finish_refer(&mut u, application, &agent_params, env);
            ctx.check_refer(HTTP_CLIENT_SECTION, &id, &u, &mut p);
            http_clients.insert(id, u);
        }
        let mut services = BTreeMap::new();
        for (id, raw) in raw_services {
            let mut u = inherit(
                SERVICE_SECTION,
                &id,
                raw,
                BASIC_SERVICE_KEY,
                &basic_services,
                &mut p,
            );
            compose_filters(&mut u, &agent_params, env);
            if u.param(keys::APPLICATION).is_none() && !application.is_empty() {
                u.params.insert(keys::APPLICATION.into(), application.into());
            }
            ctx.check_service(&id, &u, &mut p);
            check_filters(SERVICE_SECTION, &id, &u, &mut p);
            services.insert(id, u);
        }
        expand_service_groups(&mut services, env);
        let mut exports: BTreeMap<String, ServiceSpec> = BTreeMap::new();
        for (id, u) in &services {
            let Some(spec) = ctx.service_spec(id, u, &mut p) else {
                continue;
            };
            if let Some((other, _)) = exports.iter().find(|(_, s)| s.export_key() == spec.export_key()) {
                p.error(
                    SERVICE_SECTION,
                    Some(id),
                    Some(keys::EXPORT),
                    format!(
                        "entry {other} already exports group {:?} path {:?} on port {}",
                        u.group, u.path, spec.export_port
                    ),
                );
                continue;
            }
            exports.insert(id.clone(), spec);
        }

        let mc = MotanConfig {
            registries,
            refers,
            services,
            exports,
            http_clients,
            warnings: p.warnings,
        };
        (mc, p.errors)
    }
}

struct Problems<'a> {
    src: &'a str,
    errors: Vec<String>,
    warnings: Vec<String>,
}

impl Problems<'_> {
    /// Record an error once (an entry's own value and the spec built from it may both see it).
    fn error(&mut self, section: &str, entry: Option<&str>, key: Option<&str>, msg: impl std::fmt::Display) {
        let line = self.line(section, entry, key, msg);
        if !self.errors.contains(&line) {
            self.errors.push(line);
        }
    }

    fn warn(&mut self, section: &str, entry: Option<&str>, key: Option<&str>, msg: impl std::fmt::Display) {
        let line = self.line(section, entry, key, msg);
        self.warnings.push(line);
    }

    fn line(
        &self,
        section: &str,
        entry: Option<&str>,
        key: Option<&str>,
        msg: impl std::fmt::Display,
    ) -> String {
        let mut s = format!("{}: section {section}", self.src);
        if let Some(e) = entry {
            s.push_str(&format!(", entry {e}"));
        }
        if let Some(k) = key {
            s.push_str(&format!(", key {k}"));
        }
        format!("{s}: {msg}")
    }
}

// ---- placeholders (4.2.4, file mode) -------------------------------------------------------

/// `dynamic-param` values. A map value (pool mode: per pool name or `regexp:` key) uses its
/// `default` entry, since sockmesh has no pool name.
fn dynamic_params(section: Option<&Value>, p: &mut Problems) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let Some(section) = section else { return out };
    let Value::Mapping(map) = section else {
        if !section.is_null() {
            p.error(
                DYNAMIC_PARAM_SECTION,
                None,
                None,
                "must be a mapping of key → value",
            );
        }
        return out;
    };
    for (k, v) in map {
        let Some(key) = k.as_str() else {
            p.error(
                DYNAMIC_PARAM_SECTION,
                None,
                None,
                format!("keys must be strings, found {k:?}"),
            );
            continue;
        };
        match v {
            Value::Mapping(per_pool) => match per_pool.get("default") {
                Some(d) => {
                    out.insert(key.to_string(), d.clone());
                }
                None => p.warn(
                    DYNAMIC_PARAM_SECTION,
                    None,
                    Some(key),
                    "per-pool values without a `default` entry: sockmesh has no pool name, so ${key} stays unreplaced",
                ),
            },
            other => {
                out.insert(key.to_string(), other.clone());
            }
        }
    }
    out
}

/// Replace every string value that is exactly `${key}` inside nested mappings (not inside
/// lists, as upstream). An unknown key leaves the text as is, with a warning.
fn substitute(v: &mut Value, placeholders: &BTreeMap<String, Value>, section: &str, p: &mut Problems) {
    let Value::Mapping(map) = v else { return };
    for (_, child) in map.iter_mut() {
        match child {
            Value::String(s) => {
                if let Some(key) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}'))
                    && !key.is_empty()
                    && !key.contains('}')
                {
                    match placeholders.get(key) {
                        Some(val) => *child = val.clone(),
                        None => p.warn(
                            section,
                            None,
                            None,
                            format!("placeholder ${{{key}}} has no dynamic-param value; kept as text"),
                        ),
                    }
                }
            }
            Value::Mapping(_) => substitute(child, placeholders, section, p),
            _ => {}
        }
    }
}

// ---- entries to URLs (4.2.1) ---------------------------------------------------------------

fn section_urls(section: &str, v: &Value, p: &mut Problems) -> Vec<(String, Url)> {
    let map = match v {
        Value::Null => return Vec::new(),
        Value::Mapping(m) => m,
        _ => {
            p.error(section, None, None, "must be a mapping of entry id → settings");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (k, entry) in map {
        let Some(id) = k.as_str() else {
            p.error(
                section,
                None,
                None,
                format!("entry ids must be strings, found {k:?}"),
            );
            continue;
        };
        match entry {
            Value::Mapping(m) => out.push((id.to_string(), entry_url(section, id, m, p))),
            _ => p.error(section, Some(id), None, "must be a mapping of settings"),
        }
    }
    out
}

fn entry_url(section: &str, id: &str, m: &Mapping, p: &mut Problems) -> Url {
    let mut u = Url::default();
    for (k, v) in m {
        let Some(key) = k.as_str() else {
            p.error(
                section,
                Some(id),
                None,
                format!("keys must be strings, found {k:?}"),
            );
            continue;
        };
        let Some(text) = scalar_text(v) else {
            p.error(
                section,
                Some(id),
                Some(key),
                "expected a single value, found a list or mapping",
            );
            continue;
        };
        match key {
            "protocol" => u.protocol = text,
            "host" => u.host = text,
            "path" => u.path = text,
            "group" => u.group = text,
            "port" => match text.parse::<u16>() {
                Ok(port) => u.port = port,
                Err(_) if text.is_empty() => {}
                Err(_) => p.error(
                    section,
                    Some(id),
                    Some(key),
                    format!("{text:?} is not a port (0..65535)"),
                ),
            },
            _ => {
                u.params.insert(key.to_string(), text);
            }
        }
    }
    u.params.insert(keys::CONF_ID.into(), id.to_string());
    u
}

/// YAML scalar as upstream stringifies it (ints decimal, floats shortest, bools true/false,
/// null empty); `None` for lists and mappings.
fn scalar_text(v: &Value) -> Option<String> {
    Some(match v {
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) => f.to_string(),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Sequence(_) | Value::Mapping(_) => return None,
        Value::Tagged(t) => return scalar_text(&t.value),
    })
}

fn agent_params(
    agent: &AgentSection,
    placeholders: &BTreeMap<String, Value>,
    p: &mut Problems,
) -> BTreeMap<String, String> {
    let mut m = Mapping::new();
    for (k, v) in &agent.other {
        m.insert(Value::String(k.clone()), v.clone());
    }
    let mut v = Value::Mapping(m);
    substitute(&mut v, placeholders, "motan-agent", p);
    let Value::Mapping(m) = v else { unreachable!() };
    m.iter()
        .filter_map(|(k, v)| Some((k.as_str()?.to_string(), scalar_text(v)?)))
        .collect()
}

// ---- inheritance and composition (4.2.2, 4.2.3) --------------------------------------------

/// Start from the template named by `basic_key`: the entry's non-empty fields replace the
/// template's, parameters merge with the entry winning. An unknown template is an error (upstream
/// only logs it) and the entry is used as is.
fn inherit(
    section: &str,
    id: &str,
    raw: Url,
    basic_key: &str,
    templates: &BTreeMap<String, Url>,
    p: &mut Problems,
) -> Url {
    let Some(name) = raw.param(basic_key).map(str::to_string) else {
        return raw;
    };
    let Some(t) = templates.get(&name) else {
        let known: Vec<&str> = templates.keys().map(String::as_str).collect();
        let basic_section = if basic_key == BASIC_REFER_KEY {
            BASIC_REFER_SECTION
        } else {
            BASIC_SERVICE_SECTION
        };
        p.error(
            section,
            Some(id),
            Some(basic_key),
            format!(
                "unknown {basic_key} {name:?} (not in {basic_section}: {})",
                list_or_none(&known)
            ),
        );
        return raw;
    };
    let mut u = t.clone();
    for (field, value) in [
        (&mut u.protocol, &raw.protocol),
        (&mut u.host, &raw.host),
        (&mut u.path, &raw.path),
        (&mut u.group, &raw.group),
    ] {
        if !value.is_empty() {
            *field = value.clone();
        }
    }
    if raw.port != 0 {
        u.port = raw.port;
    }
    u.merge_params(&raw.params);
    u
}

fn finish_refer(u: &mut Url, application: &str, agent: &BTreeMap<String, String>, env: &MotanEnv) {
    if u.protocol.is_empty() {
        u.protocol = DEFAULT_REFER_PROTOCOL.into();
    }
    if u.protocol == "motanV1Compatible" {
        u.protocol = "motan".into();
    }
    if u.param(keys::APPLICATION).is_none() && !application.is_empty() {
        u.params.insert(keys::APPLICATION.into(), application.into());
    }
    compose_filters(u, agent, env);
}

/// Final `filter` = union of the agent's `defaultFilter` minus the URL's `disableDefaultFilter`,
/// `globalFilter` minus `disableGlobalFilter`, `MESH_FILTERS` and the URL's own `filter`
/// (sorted; order does not matter, filters are ordered by index). backupRequest needs the
/// `metrics` filter and gets it, as upstream adds it when creating the HA strategy.
fn compose_filters(u: &mut Url, agent: &BTreeMap<String, String>, env: &MotanEnv) {
    let set = |list: &str, disable: &str| -> Vec<String> {
        let off = split_list(disable);
        split_list(list)
            .into_iter()
            .filter(|f| !off.contains(f))
            .map(str::to_string)
            .collect()
    };
    let agent_list = |k: &str| agent.get(k).map(String::as_str).unwrap_or("");
    let mut all: Vec<String> = Vec::new();
    all.extend(set(
        agent_list(DEFAULT_FILTER_KEY),
        u.get_str(DISABLE_DEFAULT_FILTER_KEY, ""),
    ));
    all.extend(set(
        agent_list(GLOBAL_FILTER_KEY),
        u.get_str(DISABLE_GLOBAL_FILTER_KEY, ""),
    ));
    all.extend(set(&env.mesh_filters, ""));
    all.extend(set(u.get_str(keys::FILTER, ""), ""));
    if u.get_str(keys::HA_STRATEGY, "") == "backupRequest" {
        all.push("metrics".into());
    }
    all.sort();
    all.dedup();
    if !all.is_empty() {
        u.params.insert(keys::FILTER.into(), all.join(","));
    }
}

/// `MESH_MULTI_SUB_GROUP_SUFFIX`: an extra refer `auto_<id><group+suffix>` per refer whose
/// group does not already end with the suffix (and that does not exist already).
fn add_sub_group_refers(refers: &mut BTreeMap<String, Url>, suffix: &str) {
    if suffix.is_empty() {
        return;
    }
    let mut seen: Vec<String> = refers.values().map(Url::identity).collect();
    let mut extra = Vec::new();
    for (id, u) in refers.iter() {
        if u.group.ends_with(suffix) {
            continue;
        }
        let mut n = u.clone();
        n.group.push_str(suffix);
        if seen.contains(&n.identity()) {
            continue;
        }
        seen.push(n.identity());
        extra.push((format!("auto_{id}{}", n.group), n));
    }
    refers.extend(extra);
}

/// Services with a comma list of groups (plus `MESH_SERVICE_ADDITIONAL_GROUP`) are exported once
/// per group: the entry keeps the first group, copies `<id>-<n>` get the others. Then
/// `RPC_REG_GROUP_SUFFIX` is appended to every group that lacks it.
fn expand_service_groups(services: &mut BTreeMap<String, Url>, env: &MotanEnv) {
    let mut extra = Vec::new();
    for (id, u) in services.iter_mut() {
        if !env.additional_group.is_empty() {
            u.group = if u.group.is_empty() {
                env.additional_group.clone()
            } else {
                format!("{},{}", u.group, env.additional_group)
            };
        }
        if !u.group.contains(',') {
            continue;
        }
        let mut groups: Vec<String> = Vec::new();
        for g in split_list(&u.group) {
            if !groups.iter().any(|x| x == g) {
                groups.push(g.to_string());
            }
        }
        u.group = groups.first().cloned().unwrap_or_default();
        for (n, g) in groups.iter().skip(1).enumerate() {
            let mut copy = u.clone();
            copy.group = g.clone();
            extra.push((format!("{id}-{n}"), copy));
        }
    }
    services.extend(extra);
    if !env.reg_group_suffix.is_empty() {
        for u in services.values_mut() {
            if !u.group.ends_with(&env.reg_group_suffix) {
                u.group.push_str(&env.reg_group_suffix);
            }
        }
    }
}

fn unknown_registry(id: &str, registries: &BTreeMap<String, Url>) -> String {
    let known: Vec<&str> = registries.keys().map(String::as_str).collect();
    format!(
        "unknown registry {id:?} (not in {REGISTRY_SECTION}: {})",
        list_or_none(&known)
    )
}

fn list_or_none(v: &[&str]) -> String {
    if v.is_empty() {
        "none defined".into()
    } else {
        v.join(", ")
    }
}

// ---- checks --------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Rule {
    /// Integer ≥ min.
    Int(i64),
    /// Integer in [lo, hi].
    Range(i64, i64),
    /// Positive number (float allowed).
    Float,
    Bool,
}

/// Value rules of known keys; `<method>(<desc>).<key>` overrides follow the same rule.
fn rule(key: &str) -> Option<Rule> {
    Some(match key {
        "requestTimeout"
        | "minRequestTimeout"
        | "maxRequestTimeout"
        | "connectTimeout"
        | "connectRetryInterval"
        | "keepaliveInterval"
        | "mingzSize"
        | "maxContentLength"
        | "backupRequestDelayTime"
        | "backupRequestInitDelayTime"
        | "registrySessionTimeout"
        | "consistentHashKey.partSize"
        | "consistentHashKey.replica"
        | "retries" => Rule::Int(0),
        "clientConnection" | "weightRefreshPeriodSecond" => Rule::Int(1),
        "errorCountThreshold" => Rule::Int(i64::MIN),
        "backupRequestDelayRatio" | "backupRequestMaxRetryRatio" => Rule::Range(1, 100),
        "consistentHashKey.load" => Rule::Float,
        "lazyInit"
        | "asyncInitConnection"
        | "dynamicMeta"
        | "registerMeta"
        | "enableRewrite"
        | "enableHttpException"
        | "httpProxyKeepalive" => Rule::Bool,
        _ => return None,
    })
}

fn check_rule(rule: Rule, v: &str) -> Result<(), String> {
    match rule {
        Rule::Int(min) => match v.parse::<i64>() {
            Ok(n) if n >= min => Ok(()),
            Ok(_) => Err(format!("{v} is below the minimum {min}")),
            Err(_) => Err(format!("{v:?} is not an integer")),
        },
        Rule::Range(lo, hi) => match v.parse::<i64>() {
            Ok(n) if (lo..=hi).contains(&n) => Ok(()),
            _ => Err(format!("{v:?} is not an integer in {lo}..{hi}")),
        },
        Rule::Float => match v.parse::<f64>() {
            Ok(f) if f > 0.0 && f.is_finite() => Ok(()),
            _ => Err(format!("{v:?} is not a positive number")),
        },
        Rule::Bool => parse_go_bool(v)
            .map(|_| ())
            .ok_or_else(|| format!("{v:?} is not a boolean (true or false)")),
    }
}

const REGISTRY_PROTOCOLS: [&str; 2] = ["direct", "zookeeper"];
const REFER_PROTOCOLS: [&str; 3] = ["motan2", "motan", "cedrus"];

fn check_registry(id: &str, u: &Url, p: &mut Problems) {
    let s = REGISTRY_SECTION;
    match u.protocol.as_str() {
        "" => p.error(s, Some(id), Some("protocol"), "missing (direct or zookeeper)"),
        "direct" => {
            if let Err(e) = DirectRegistry::new(u.clone()) {
                let msg = e.to_string();
                let msg = msg.split_once(": ").map(|(_, m)| m.to_string()).unwrap_or(msg);
                let key = if u.host.is_empty() { "address" } else { "host" };
                p.error(s, Some(id), Some(key), msg);
            }
        }
        "zookeeper" => {
            if let Err(e) = zookeeper::connect_string(u) {
                let by_address = (u.host.is_empty() || u.port == 0) && u.param(keys::ADDRESS).is_some();
                p.error(s, Some(id), Some(if by_address { "address" } else { "host" }), e);
            }
            let timeout = zookeeper::session_timeout(u).as_secs();
            if let Some(v) = u
                .param(zookeeper::SESSION_TIMEOUT)
                .and_then(|v| v.parse::<u64>().ok())
                && v != timeout
            {
                p.warn(
                    s,
                    Some(id),
                    Some(zookeeper::SESSION_TIMEOUT),
                    format!("{v} is read as seconds (as motan-go does) and clamped: {timeout} s is used"),
                );
            }
        }
        other => p.error(
            s,
            Some(id),
            Some("protocol"),
            format!(
                "unsupported registry {other:?} (expected {})",
                REGISTRY_PROTOCOLS.join(", ")
            ),
        ),
    }
    check_params(s, id, u, p);
}

/// Value rules of every parameter that has one (plain and method-level keys).
fn check_params(section: &str, id: &str, u: &Url, p: &mut Problems) {
    for (k, v) in &u.params {
        let base = k.rsplit_once(").").map(|(_, b)| b).unwrap_or(k);
        if let Some(r) = rule(base)
            && !v.is_empty()
            && let Err(m) = check_rule(r, v)
        {
            p.error(section, Some(id), Some(k), m);
        }
    }
}

struct Checks<'a> {
    registries: &'a BTreeMap<String, Url>,
    sections: &'a BTreeMap<String, Value>,
}

impl Checks<'_> {
    /// Checks of the entry's own values (before inheritance, so a template's mistake is
    /// reported once, on the template).
    fn check_values(&self, section: &str, id: &str, u: &Url, p: &mut Problems) {
        check_params(section, id, u, p);
        if let Some(lb) = u.param(keys::LOADBALANCE)
            && let Err(m) = LbKind::from_name(lb)
        {
            p.error(section, Some(id), Some(keys::LOADBALANCE), m);
        }
        if let Some(ha) = u.param(keys::HA_STRATEGY)
            && let Err(m) = HaKind::from_name(ha)
        {
            p.error(section, Some(id), Some(keys::HA_STRATEGY), m);
        }
        if let Some(list) = u.param(keys::REGISTRY) {
            for r in split_list(list) {
                if !self.registries.contains_key(r) {
                    p.error(
                        section,
                        Some(id),
                        Some(keys::REGISTRY),
                        unknown_registry(r, self.registries),
                    );
                }
            }
        }
        for key in [keys::EXPORT, keys::PROXY] {
            if let Some(v) = u.param(key)
                && let Err(m) = parse_protocol_port(v)
            {
                p.error(section, Some(id), Some(key), m);
            }
        }
        if let Some(v) = u.param(keys::EXPORT)
            && let Ok((proto, _)) = parse_protocol_port(v)
            && !EXPORT_PROTOCOLS.contains(&proto.as_str())
        {
            p.error(
                section,
                Some(id),
                Some(keys::EXPORT),
                format!(
                    "unsupported export protocol {proto:?} (expected {})",
                    EXPORT_PROTOCOLS.join(", ")
                ),
            );
        }
    }

    fn check_refer(&self, section: &str, id: &str, u: &Url, p: &mut Problems) {
        if u.path.is_empty() && section == REFER_SECTION {
            p.error(
                section,
                Some(id),
                Some("path"),
                "missing: the service name (M_p) this refer serves",
            );
        }
        if section == HTTP_CLIENT_SECTION && u.param(keys::DOMAIN).is_none() {
            p.error(
                section,
                Some(id),
                Some(keys::DOMAIN),
                "missing: the HTTP domain this cluster serves",
            );
        }
        if !REFER_PROTOCOLS.contains(&u.protocol.as_str()) {
            p.error(
                section,
                Some(id),
                Some("protocol"),
                format!(
                    "unsupported refer protocol {:?} (expected {})",
                    u.protocol,
                    REFER_PROTOCOLS.join(", ")
                ),
            );
        }
        if u.get_list(keys::REGISTRY).is_empty() {
            p.warn(
                section,
                Some(id),
                Some(keys::REGISTRY),
                "no registry: this refer will never have endpoints",
            );
        }
        let min = u.get_int(keys::MIN_REQUEST_TIMEOUT, 0);
        let max = u.get_int(keys::MAX_REQUEST_TIMEOUT, 0);
        if min > 0 && max > 0 && min > max {
            p.error(
                section,
                Some(id),
                Some(keys::MIN_REQUEST_TIMEOUT),
                format!("{min} is above maxRequestTimeout {max}"),
            );
        }
    }

    fn check_service(&self, id: &str, u: &Url, p: &mut Problems) {
        let s = SERVICE_SECTION;
        if u.path.is_empty() {
            p.error(
                s,
                Some(id),
                Some("path"),
                "missing: the service name (M_p) callers use",
            );
        }
        if u.get_list(keys::REGISTRY).is_empty() {
            p.warn(
                s,
                Some(id),
                Some(keys::REGISTRY),
                "no registry: callers can only reach it directly",
            );
        }
    }

    /// The export of a service entry (after group expansion), checked as the exporter uses it.
    fn service_spec(&self, id: &str, u: &Url, p: &mut Problems) -> Option<ServiceSpec> {
        let domain = u.get_str(keys::DOMAIN, "");
        let has_locations = !domain.is_empty() && section_has(self.sections, HTTP_LOCATIONS_SECTION, domain);
        match ServiceSpec::from_url(u, has_locations) {
            Ok(spec) => Some(spec),
            Err(e) => {
                p.error(SERVICE_SECTION, Some(id), Some(&e.key), &e.reason);
                None
            }
        }
    }
}

/// The final filter list of a refer or service names only filters the agent has.
fn check_filters(section: &str, id: &str, u: &Url, p: &mut Problems) {
    match filter_names(u) {
        Ok(f) => {
            for (n, why) in f.skipped {
                p.warn(
                    section,
                    Some(id),
                    Some(keys::FILTER),
                    format!("{n} is not a filter here: {why}"),
                );
            }
        }
        Err(e) => p.error(section, Some(id), Some(&e.key), e.reason),
    }
}

fn section_has(sections: &BTreeMap<String, Value>, section: &str, key: &str) -> bool {
    sections
        .get(section)
        .and_then(Value::as_mapping)
        .is_some_and(|m| m.contains_key(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT_EXAMPLE: &str = r#"
motan-agent:
  port: 9981
  mport: 8002
  log_dir: "/var/log/motan"
  application: "order-web"          # becomes M_s for callers that do not send one
  registry: "zk"                    # the agent registers itself here (for agent commands)

motan-registry:
  zk:
    protocol: zookeeper
    host: 10.0.0.11
    port: 2181
    registrySessionTimeout: 30      # seconds in motan-go
  direct-users:
    protocol: direct
    address: "10.0.1.5:9982,10.0.1.6:9982"

motan-basicRefer:
  rpc-basic:
    protocol: motan2
    registry: zk
    serialization: simple
    haStrategy: failover
    retries: 1
    loadbalance: roundrobin
    requestTimeout: 800
    filter: "accessLog,metrics"

motan-refer:
  hello-service:
    path: com.weibo.HelloService
    group: g
    basicRefer: rpc-basic
  user-service:
    path: com.example.UserService
    group: user-rpc
    basicRefer: rpc-basic
    registry: direct-users          # overrides the template
    loadbalance: consistentHashKey
"#;

    const SERVER_EXAMPLE: &str = r#"
motan-agent:
  port: 9981
  eport: 9982
  mport: 8002
  application: "hello-server"

motan-registry:
  zk:
    protocol: zookeeper
    host: 10.0.0.11
    port: 2181

motan-basicService:
  svc-basic:
    registry: zk
    group: g
    serialization: simple
    filter: "accessLog,metrics"

motan-service:
  hello-rpc:                         # local process speaks motan2 on 127.0.0.1:8100
    path: com.weibo.HelloService
    basicService: svc-basic
    export: "motan2:9982"
    provider: motan2
    proxy: "motan2:8100"
  hello-http:                        # local process speaks HTTP on 127.0.0.1:8080
    path: api.hello.com              # clients call M_p=api.hello.com, M_m=/the/http/path
    basicService: svc-basic
    export: "motan2:9982"
    provider: http
    domain: api.hello.com
    proxyAddress: "127.0.0.1:8080"
    enableRewrite: false             # true (default) requires http-locations rules for the domain
    requestTimeout: 2000
"#;

    fn build_with(text: &str, env: &MotanEnv) -> (MotanConfig, Vec<String>) {
        let root: BTreeMap<String, Value> = serde_yaml_ng::from_str(text).unwrap();
        let mut agent = AgentSection::default();
        let mut sections = BTreeMap::new();
        for (k, v) in root {
            if k == "motan-agent" {
                agent = serde_yaml_ng::from_value(v).unwrap();
            } else {
                sections.insert(k, v);
            }
        }
        MotanConfig::build("app.yaml", &agent, &sections, env)
    }

    fn build(text: &str) -> (MotanConfig, Vec<String>) {
        build_with(text, &MotanEnv::default())
    }

    fn errors(text: &str) -> Vec<String> {
        build(text).1
    }

    #[test]
    fn client_example_from_the_spec() {
        let (mc, errs) = build(CLIENT_EXAMPLE);
        assert!(errs.is_empty(), "{errs:#?}");
        assert!(mc.warnings.is_empty(), "{:#?}", mc.warnings);
        assert_eq!(mc.registries.len(), 2);
        let zk = &mc.registries["zk"];
        assert_eq!(
            (zk.protocol.as_str(), zk.host.as_str(), zk.port),
            ("zookeeper", "10.0.0.11", 2181)
        );
        assert_eq!(zk.params["registrySessionTimeout"], "30");
        assert_eq!(zk.params["conf-id"], "zk");
        assert_eq!(
            mc.registries["direct-users"].params["address"],
            "10.0.1.5:9982,10.0.1.6:9982"
        );

        let hello = &mc.refers["hello-service"];
        assert_eq!(hello.identity(), "motan2://:0/com.weibo.HelloService?group=g");
        let expect = [
            ("application", "order-web"),
            ("basicRefer", "rpc-basic"),
            ("conf-id", "hello-service"),
            ("filter", "accessLog,metrics"),
            ("haStrategy", "failover"),
            ("loadbalance", "roundrobin"),
            ("registry", "zk"),
            ("requestTimeout", "800"),
            ("retries", "1"),
            ("serialization", "simple"),
        ];
        let got: Vec<(&str, &str)> = hello
            .params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(got, expect);

        let user = &mc.refers["user-service"];
        assert_eq!(
            (user.path.as_str(), user.group.as_str()),
            ("com.example.UserService", "user-rpc")
        );
        assert_eq!(user.params["registry"], "direct-users");
        assert_eq!(user.params["loadbalance"], "consistentHashKey");
        assert_eq!(user.params["retries"], "1", "inherited");
        assert_eq!(user.params["conf-id"], "user-service");
        assert!(mc.services.is_empty());
    }

    #[test]
    fn server_example_from_the_spec() {
        let (mc, errs) = build(SERVER_EXAMPLE);
        assert!(errs.is_empty(), "{errs:#?}");
        assert!(mc.warnings.is_empty(), "{:#?}", mc.warnings);
        assert_eq!(mc.services.len(), 2);
        let rpc = &mc.services["hello-rpc"];
        // No protocol or host yet: the export step sets them (4.11).
        assert_eq!(rpc.identity(), "://:0/com.weibo.HelloService?group=g");
        assert_eq!(rpc.params["export"], "motan2:9982");
        assert_eq!(rpc.params["provider"], "motan2");
        assert_eq!(rpc.params["proxy"], "motan2:8100");
        assert_eq!(rpc.params["registry"], "zk");
        assert_eq!(rpc.params["serialization"], "simple");
        assert_eq!(rpc.params["filter"], "accessLog,metrics");
        assert_eq!(rpc.params["application"], "hello-server");
        assert_eq!(rpc.params["conf-id"], "hello-rpc");
        let http = &mc.services["hello-http"];
        assert_eq!((http.path.as_str(), http.group.as_str()), ("api.hello.com", "g"));
        assert_eq!(http.params["provider"], "http");
        assert_eq!(http.params["proxyAddress"], "127.0.0.1:8080");
        assert_eq!(http.params["enableRewrite"], "false");
        assert_eq!(http.params["requestTimeout"], "2000");
        assert_eq!(http.params["domain"], "api.hello.com");
        assert!(mc.refers.is_empty());
    }

    #[test]
    fn examples_pass_config_parse_too() {
        for text in [CLIENT_EXAMPLE, SERVER_EXAMPLE] {
            let cfg = crate::config::Config::parse(text, "app.yaml").unwrap_or_else(|e| panic!("{e}"));
            let mc = &cfg.mesh;
            assert!(!mc.registries.is_empty());
        }
    }

    #[test]
    fn reports_every_problem_with_file_section_entry_and_key() {
        let text = r#"
motan-registry:
  zk: {protocol: consul, host: 127.0.0.1, port: 8500}
  d: {protocol: direct, address: "127.0.0.1:x"}
motan-basicRefer:
  base: {protocol: motan2, retries: -1}
motan-refer:
  hello-service:
    path: com.weibo.HelloService
    basicRefer: nope
    loadbalance: foo
    haStrategy: broadcast
    registry: zk,missing
    requestTimeout: 10s
    "get(java.lang.String).requestTimeout": abc
    lazyInit: maybe
    clientConnection: 0
    backupRequestDelayRatio: 120
  no-path:
    basicRefer: base
    port: 70000
  weird:
    path: p
    protocol: grpc
    filter: [a, b]
"#;
        let errs = errors(text);
        let all = errs.join("\n");
        let expect = [
            "app.yaml: section motan-refer, entry hello-service, key loadbalance: unknown load balancer \"foo\" (expected random, roundrobin, wrr, consistentHashKey, leastActive)",
            "app.yaml: section motan-refer, entry hello-service, key haStrategy: unknown HA strategy \"broadcast\" (expected failover, failfast, backupRequest)",
            "app.yaml: section motan-refer, entry hello-service, key basicRefer: unknown basicRefer \"nope\" (not in motan-basicRefer: base)",
            "app.yaml: section motan-refer, entry hello-service, key registry: unknown registry \"missing\" (not in motan-registry: d, zk)",
            "app.yaml: section motan-refer, entry hello-service, key requestTimeout: \"10s\" is not an integer",
            "app.yaml: section motan-refer, entry hello-service, key get(java.lang.String).requestTimeout: \"abc\" is not an integer",
            "app.yaml: section motan-refer, entry hello-service, key lazyInit: \"maybe\" is not a boolean (true or false)",
            "app.yaml: section motan-refer, entry hello-service, key clientConnection: 0 is below the minimum 1",
            "app.yaml: section motan-refer, entry hello-service, key backupRequestDelayRatio: \"120\" is not an integer in 1..100",
            "app.yaml: section motan-refer, entry no-path, key path: missing",
            "app.yaml: section motan-refer, entry no-path, key port: \"70000\" is not a port (0..65535)",
            "app.yaml: section motan-refer, entry weird, key filter: expected a single value, found a list or mapping",
            "app.yaml: section motan-refer, entry weird, key protocol: unsupported refer protocol \"grpc\"",
            "app.yaml: section motan-basicRefer, entry base, key retries: -1 is below the minimum 0",
            "app.yaml: section motan-registry, entry zk, key protocol: unsupported registry \"consul\" (expected direct, zookeeper)",
            "app.yaml: section motan-registry, entry d, key address: address entry \"127.0.0.1:x\": port must be a number in 1..65535",
        ];
        for e in expect {
            assert!(errs.iter().any(|x| x.starts_with(e)), "missing {e:?} in:\n{all}");
        }
        assert_eq!(errs.len(), expect.len(), "{all}");
    }

    #[test]
    fn agent_registry_must_exist() {
        let errs = errors("motan-agent:\n  registry: zk\n");
        assert_eq!(
            errs,
            [
                "app.yaml: section motan-agent, key registry: unknown registry \"zk\" (not in motan-registry: none defined)"
            ]
        );
    }

    #[test]
    fn failfast_is_accepted() {
        let (mc, errs) = build(
            "motan-registry:\n  d: {protocol: direct, address: \"127.0.0.1:1\"}\nmotan-refer:\n  r: {path: p, registry: d, haStrategy: failfast}\n",
        );
        assert!(errs.is_empty(), "{errs:?}");
        let r = &mc.refers["r"];
        assert_eq!(HaKind::from_url(r).unwrap(), HaKind::Failfast);
        assert_eq!(r.protocol, "motan2", "default refer protocol");
    }

    #[test]
    fn service_checks() {
        let text = r#"
motan-registry:
  d: {protocol: direct, host: 127.0.0.1, port: 9982}
http-locations:
  api.ok.com: []
http-service:
  fmt-http: {}
motan-service:
  no-proxy: {path: a, registry: d, provider: motan2, export: "9982"}
  bad-export: {path: b, registry: d, export: "motan2:", proxy: "8100"}
  grpc-export: {path: c, registry: d, export: "grpc:9982", proxy: "motan2:8100"}
  cgi: {path: d, registry: d, provider: cgi}
  in-process: {path: e, registry: d}
  http-nothing: {path: f, registry: d, provider: http, enableRewrite: false}
  http-rewrite: {path: g, registry: d, provider: http, proxyAddress: "127.0.0.1:8080", domain: api.x.com}
  http-ok: {path: h, registry: d, provider: http, proxyAddress: "unix:///run/app.sock", domain: api.ok.com}
  http-rules: {path: l, registry: d, provider: http, proxyAddress: "127.0.0.1:8080", domain: api.ok.com}
  http-plain: {path: m, registry: d, provider: http, proxyAddress: "127.0.0.1:8080", domain: api.ok.com, enableRewrite: false}
  http-format: {path: i, registry: d, provider: http, URL_FORMAT: "http://127.0.0.1:8080%s", enableRewrite: "false"}
  fmt-http: {path: j, registry: d, provider: http, enableRewrite: "false"}
  by-proxy: {path: k, registry: d, proxy: "motan:8100"}
  no-path: {registry: d, proxy: "8100"}
"#;
        let errs = errors(text);
        let all = errs.join("\n");
        let expect = [
            "entry no-proxy, key proxy: provider motan2 needs proxy",
            "entry bad-export, key export: \"motan2:\" is not [protocol:]port (port must be 1..65535)",
            "entry grpc-export, key export: unsupported export protocol \"grpc\" (expected motan2, motan)",
            "entry cgi, key provider: unsupported provider \"cgi\" (expected motan2, motan, http; set provider or proxy)",
            "entry in-process, key provider: unsupported provider \"default\"",
            "entry http-nothing, key proxyAddress: an http provider needs proxyAddress (host:port)",
            // What the provider cannot serve yet is refused here, not at run time.
            "entry http-ok, key proxyAddress: \"unix:///run/app.sock\": unix sockets are not supported by sockmesh yet",
            "entry http-format, key URL_FORMAT: URL_FORMAT providers are not supported by sockmesh yet",
            "entry fmt-http, key proxyAddress: an http provider needs proxyAddress",
            "entry no-path, key path: missing",
            "entry http-rules, key enableRewrite: http-locations rewriting is not supported by sockmesh yet",
        ];
        for e in expect {
            assert!(
                errs.iter()
                    .any(|x| x.starts_with(&format!("app.yaml: section motan-service, {e}"))),
                "missing {e:?} in:\n{all}"
            );
        }
        assert_eq!(errs.len(), expect.len(), "{all}");
    }

    #[test]
    fn inheritance_fields_and_params() {
        let (mc, errs) = build(
            r#"
motan-registry:
  d: {protocol: direct, address: "127.0.0.1:1"}
motan-basicRefer:
  b: {protocol: motan, host: 127.0.0.2, port: 1, group: tg, path: tp, registry: d, requestTimeout: 100, x: 1}
motan-refer:
  r1: {basicRefer: b, requestTimeout: 200}
  r2: {basicRefer: b, group: own, path: op, port: 7, protocol: motan2}
"#,
        );
        assert!(errs.is_empty(), "{errs:?}");
        let r1 = &mc.refers["r1"];
        assert_eq!(r1.identity(), "motan://127.0.0.2:1/tp?group=tg");
        assert_eq!(r1.params["requestTimeout"], "200");
        assert_eq!(r1.params["x"], "1");
        assert_eq!(r1.params["conf-id"], "r1");
        let r2 = &mc.refers["r2"];
        assert_eq!(r2.identity(), "motan2://127.0.0.2:7/op?group=own");
        assert_eq!(r2.params["requestTimeout"], "100");
    }

    #[test]
    fn scalars_are_stringified_like_upstream() {
        let (mc, _) =
            build("motan-refer:\n  r: {path: p, a: 1, b: 1.5, c: true, d: ~, e: \"x\", f: -7, g: 1e3}\n");
        let r = &mc.refers["r"];
        let get = |k: &str| r.params[k].as_str();
        assert_eq!(
            (
                get("a"),
                get("b"),
                get("c"),
                get("d"),
                get("e"),
                get("f"),
                get("g")
            ),
            ("1", "1.5", "true", "", "x", "-7", "1000")
        );
    }

    #[test]
    fn dynamic_param_placeholders() {
        let (mc, errs) = build(
            r#"
dynamic-param:
  regGroup: g-yf
  timeout: 300
  perPool: {default: pooled, "regexp:yf-.*": other}
  noDefault: {yf: x}
motan-registry:
  d: {protocol: direct, address: "127.0.0.1:1"}
motan-refer:
  r:
    path: p
    registry: d
    group: ${regGroup}
    requestTimeout: ${timeout}
    a: ${perPool}
    b: "prefix-${regGroup}"
    c: ${unknown}
    d: ${noDefault}
"#,
        );
        assert!(errs.is_empty(), "{errs:?}");
        let r = &mc.refers["r"];
        assert_eq!(r.group, "g-yf");
        assert_eq!(r.params["requestTimeout"], "300");
        assert_eq!(r.params["a"], "pooled");
        assert_eq!(
            r.params["b"], "prefix-${regGroup}",
            "only exact matches are replaced"
        );
        assert_eq!(r.params["c"], "${unknown}");
        let w = mc.warnings.join("\n");
        assert!(
            w.contains("placeholder ${unknown} has no dynamic-param value"),
            "{w}"
        );
        assert!(
            w.contains("key noDefault: per-pool values without a `default` entry"),
            "{w}"
        );
    }

    #[test]
    fn filters_union_with_agent_sets_env_and_backup_request() {
        let text = r#"
motan-agent:
  defaultFilter: "accessLog,metrics"
  globalFilter: "trace"
motan-registry:
  d: {protocol: direct, address: "127.0.0.1:1"}
motan-refer:
  plain: {path: a, registry: d}
  own: {path: b, registry: d, filter: "rateLimit, accessLog", disableDefaultFilter: metrics}
  noglobal: {path: c, registry: d, disableGlobalFilter: trace, disableDefaultFilter: "accessLog,metrics"}
  backup: {path: d, registry: d, haStrategy: backupRequest, disableDefaultFilter: "accessLog,metrics", disableGlobalFilter: trace}
motan-service:
  s: {path: e, registry: d, proxy: "8100", disableGlobalFilter: trace}
"#;
        let env = MotanEnv {
            mesh_filters: "circuitBreaker".into(),
            ..Default::default()
        };
        let (mc, errs) = build_with(text, &env);
        assert!(errs.is_empty(), "{errs:?}");
        let f = |id: &str| mc.refers[id].params.get("filter").cloned().unwrap_or_default();
        assert_eq!(f("plain"), "accessLog,circuitBreaker,metrics,trace");
        assert_eq!(f("own"), "accessLog,circuitBreaker,rateLimit,trace");
        assert_eq!(f("noglobal"), "circuitBreaker");
        assert_eq!(f("backup"), "circuitBreaker,metrics");
        assert_eq!(
            mc.services["s"].params["filter"],
            "accessLog,circuitBreaker,metrics"
        );
        let (mc, _) = build("motan-refer:\n  r: {path: p}\n");
        assert!(!mc.refers["r"].params.contains_key("filter"));
        assert!(
            mc.warnings
                .iter()
                .any(|w| w.contains("entry r, key registry: no registry"))
        );
    }

    #[test]
    fn service_groups_and_group_env() {
        let text = r#"
motan-registry:
  d: {protocol: direct, address: "127.0.0.1:1"}
motan-service:
  s: {path: p, registry: d, group: "g1, g2,g1", proxy: "8100"}
  t: {path: q, registry: d, group: "h-sfx", proxy: "8101"}
motan-refer:
  r: {path: p, registry: d, group: g}
  r2: {path: p, registry: d, group: g-sub}
"#;
        let (mc, errs) = build(text);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(mc.services["s"].group, "g1");
        assert_eq!(mc.services["s-0"].group, "g2");
        assert_eq!(mc.services.len(), 3);
        let env = MotanEnv {
            additional_group: "extra".into(),
            reg_group_suffix: "-sfx".into(),
            sub_group_suffix: "-sub".into(),
            ..Default::default()
        };
        let (mc, _) = build_with(text, &env);
        let mut groups: Vec<(&str, &str)> = mc
            .services
            .iter()
            .map(|(k, v)| (k.as_str(), v.group.as_str()))
            .collect();
        groups.sort();
        assert_eq!(
            groups,
            [
                ("s", "g1-sfx"),
                ("s-0", "g2-sfx"),
                ("s-1", "extra-sfx"),
                ("t", "h-sfx"),
                ("t-0", "extra-sfx")
            ]
        );
        let mut refers: Vec<(&str, &str)> = mc
            .refers
            .iter()
            .map(|(k, v)| (k.as_str(), v.group.as_str()))
            .collect();
        refers.sort();
        assert_eq!(
            refers,
            [("r", "g"), ("r2", "g-sub")],
            "g-sub already exists: no auto refer"
        );
        let (mc, _) = build_with("motan-refer:\n  r: {path: p, group: g}\n", &env);
        assert_eq!(mc.refers["auto_rg-sub"].group, "g-sub");
    }

    #[test]
    fn section_and_entry_shapes() {
        let errs = errors("motan-refer: [a, b]\nmotan-service:\n  s: 3\ndynamic-param: 5\n");
        let all = errs.join("\n");
        assert!(
            all.contains("section motan-refer: must be a mapping of entry id → settings"),
            "{all}"
        );
        assert!(
            all.contains("section motan-service, entry s: must be a mapping of settings"),
            "{all}"
        );
        assert!(all.contains("section dynamic-param: must be a mapping"), "{all}");
        assert!(errors("motan-refer:\n").is_empty());
    }

    #[test]
    fn registry_checks() {
        let errs = errors(
            "motan-registry:\n  a: {host: 127.0.0.1}\n  b: {protocol: zookeeper}\n  c: {protocol: zookeeper, address: \"127.0.0.1:2181,127.0.0.2\"}\n  e: {protocol: direct}\n  f: {protocol: zookeeper, host: 127.0.0.1, port: 2181, registrySessionTimeout: x}\n  g: {protocol: zookeeper, address: \"unix:///x\"}\n",
        );
        let all = errs.join("\n");
        for e in [
            "entry a, key protocol: missing (direct or zookeeper)",
            "entry b, key host: needs host and port, or address",
            "entry c, key address: address entry \"127.0.0.2\" is not host:port or unix://path",
            "entry e, key address: needs host and port",
            "entry f, key registrySessionTimeout: \"x\" is not an integer",
            "entry g, key address: address entry \"unix:///x\" is not host:port",
        ] {
            assert!(all.contains(e), "missing {e:?} in:\n{all}");
        }
        assert_eq!(errs.len(), 6, "{all}");
        // Accepted, with a word on motan-go's unit.
        let (mc, errs) = build(
            "motan-registry:\n  zk: {protocol: zookeeper, address: \"127.0.0.1:2181, 127.0.0.2:2181\", registrySessionTimeout: 10000}\n",
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(mc.warnings.len(), 1, "{:?}", mc.warnings);
        assert!(
            mc.warnings[0].contains(
                "key registrySessionTimeout: 10000 is read as seconds (as motan-go does) and clamped: 60 s is used"
            ),
            "{:?}",
            mc.warnings
        );
    }

    #[test]
    fn protocol_port_format() {
        assert_eq!(parse_protocol_port("8100").unwrap(), ("motan2".into(), 8100));
        assert_eq!(parse_protocol_port("motan:8100").unwrap(), ("motan".into(), 8100));
        assert!(parse_protocol_port(":8100").is_err());
        assert!(parse_protocol_port("motan2:0").is_err());
        assert!(parse_protocol_port("motan2").is_err());
    }
}
