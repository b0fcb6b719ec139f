//! From YAML entries to URLs: placeholders, entry fields and parameters, templates,
//! filter composition and group expansion, with the environment that changes them.
use std::collections::BTreeMap;

use serde_yaml_ng::{Mapping, Value};

use super::super::sections::AgentSection;
use super::names::*;
use super::problems::Problems;
use crate::url::{Url, keys, split_list};

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
    /// `MESH_DIRECT_RPC`: refers served by fixed server lists (launch_env.rs).
    pub direct_rpc: String,
    /// The whole environment, for the metadata variables (`META_*` or `envMetaPrefix`).
    pub vars: Vec<(String, String)>,
    /// `-idc`: what `${idc}` in refer groups is tried as first (resolved at cluster start).
    pub idc: String,
}

impl MotanEnv {
    pub fn from_process() -> MotanEnv {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        MotanEnv {
            mesh_filters: var("MESH_FILTERS"),
            additional_group: var("MESH_SERVICE_ADDITIONAL_GROUP"),
            reg_group_suffix: var("RPC_REG_GROUP_SUFFIX"),
            sub_group_suffix: var("MESH_MULTI_SUB_GROUP_SUFFIX"),
            direct_rpc: var(super::launch_env::DIRECT_RPC_ENV),
            vars: std::env::vars().collect(),
            idc: String::new(),
        }
    }
}

// ---- placeholders (4.2.4, file mode) -------------------------------------------------------

/// `dynamic-param` values. A per-pool map (pool name or `regexp:` keys) was resolved for
/// `-pool` before (config/launch.rs); one left here had no match and uses its `default`.
pub(super) fn dynamic_params(section: Option<&Value>, p: &mut Problems) -> BTreeMap<String, Value> {
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
                    "per-pool values without a `default` entry and none for this -pool: ${key} stays unreplaced",
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
pub(super) fn substitute(
    v: &mut Value,
    placeholders: &BTreeMap<String, Value>,
    section: &str,
    p: &mut Problems,
) {
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

pub(super) fn section_urls(section: &str, v: &Value, p: &mut Problems) -> Vec<(String, Url)> {
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

pub(super) fn entry_url(section: &str, id: &str, m: &Mapping, p: &mut Problems) -> Url {
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
pub(super) fn scalar_text(v: &Value) -> Option<String> {
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

pub(super) fn agent_params(
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
pub(super) fn inherit(
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
        let basic_section = if section == SERVICE_SECTION {
            BASIC_SERVICE_SECTION
        } else {
            BASIC_REFER_SECTION
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

pub(super) fn finish_refer(u: &mut Url, application: &str, agent: &BTreeMap<String, String>, env: &MotanEnv) {
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
pub(super) fn compose_filters(u: &mut Url, agent: &BTreeMap<String, String>, env: &MotanEnv) {
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
pub(super) fn add_sub_group_refers(refers: &mut BTreeMap<String, Url>, suffix: &str) {
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
pub(super) fn expand_service_groups(services: &mut BTreeMap<String, Url>, env: &MotanEnv) {
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

pub(super) fn unknown_registry(id: &str, registries: &BTreeMap<String, Url>) -> String {
    let known: Vec<&str> = registries.keys().map(String::as_str).collect();
    format!(
        "unknown registry {id:?} (not in {REGISTRY_SECTION}: {})",
        list_or_none(&known)
    )
}

pub(super) fn list_or_none(v: &[&str]) -> String {
    if v.is_empty() {
        "none defined".into()
    } else {
        v.join(", ")
    }
}
