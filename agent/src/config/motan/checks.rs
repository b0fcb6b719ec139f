//! The checks of registries, refers and services: value rules of known keys, protocols,
//! registries named, and the service specs the exporter is built from.
use std::collections::BTreeMap;

use super::super::filters::{Side, filter_names};
use super::super::http::{HttpMode, HttpSections};
use super::super::refer::{HaKind, LbKind};
use super::super::registry::{RegistrySpec, SESSION_TIMEOUT};
use super::super::service::{EXPORT_PROTOCOLS, ProviderSpec, ServiceSpec, parse_protocol_port};
use super::entries::unknown_registry;
use super::names::*;
use super::problems::Problems;
use crate::url::{Url, keys, parse_go_bool, split_list};

// ---- checks --------------------------------------------------------------------------------

#[derive(Clone, Copy)]
pub(super) enum Rule {
    /// Integer ≥ min.
    Int(i64),
    /// Integer in [lo, hi].
    Range(i64, i64),
    /// Positive number (float allowed).
    Float,
    Bool,
}

/// Value rules of known keys; `<method>(<desc>).<key>` overrides follow the same rule.
pub(super) fn rule(key: &str) -> Option<Rule> {
    Some(match key {
        "requestTimeout"
        | "minRequestTimeout"
        | "maxRequestTimeout"
        | "connectTimeout"
        | "connectRetryInterval"
        | "warmEndpoints"
        | "poolIdleTimeout"
        | "keepaliveInterval"
        | "mingzSize"
        | "maxContentLength"
        | "backupRequestDelayTime"
        | "backupRequestInitDelayTime"
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

pub(super) fn check_rule(rule: Rule, v: &str) -> Result<(), String> {
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

const REFER_PROTOCOLS: [&str; 3] = ["motan2", "motan", "cedrus"];

/// The registry as the agent builds it ([`RegistrySpec`], which also owns the value rule of
/// `registrySessionTimeout`), and the value rules of its other parameters.
pub(super) fn check_registry(id: &str, u: &Url, p: &mut Problems) {
    let s = REGISTRY_SECTION;
    match RegistrySpec::from_url(u) {
        Err(e) => p.error(s, Some(id), Some(&e.key), e.reason),
        Ok(RegistrySpec::Zookeeper(zk)) => {
            let timeout = zk.session_timeout.as_secs();
            if let Some(v) = u.param(SESSION_TIMEOUT).and_then(|v| v.parse::<u64>().ok())
                && v != timeout
            {
                p.warn(
                    s,
                    Some(id),
                    Some(SESSION_TIMEOUT),
                    format!("{v} is read as seconds (as motan-go does) and clamped: {timeout} s is used"),
                );
            }
        }
        Ok(RegistrySpec::Direct(_)) => {}
    }
    check_params(s, id, u, p);
}

/// Value rules of every parameter that has one (plain and method-level keys).
pub(super) fn check_params(section: &str, id: &str, u: &Url, p: &mut Problems) {
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

pub(super) struct Checks<'a> {
    pub(super) registries: &'a BTreeMap<String, Url>,
    pub(super) http: &'a HttpSections,
}

impl Checks<'_> {
    /// Checks of the entry's own values (before inheritance, so a template's mistake is
    /// reported once, on the template).
    pub(super) fn check_values(&self, section: &str, id: &str, u: &Url, p: &mut Problems) {
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

    pub(super) fn check_refer(&self, section: &str, id: &str, u: &Url, p: &mut Problems) {
        if let Some(v) = u.param(keys::SOCKMAP)
            && parse_go_bool(v).is_none()
        {
            p.error(
                section,
                Some(id),
                Some(keys::SOCKMAP),
                format!("{v:?} is not a boolean (true or false)"),
            );
        }
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

    pub(super) fn check_service(&self, id: &str, u: &Url, p: &mut Problems) {
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
    pub(super) fn service_spec(&self, id: &str, u: &Url, p: &mut Problems) -> Option<ServiceSpec> {
        match ServiceSpec::from_url(u, self.http) {
            Ok(spec) => {
                if let ProviderSpec::Http(h) = &spec.provider
                    && let HttpMode::Proxy { .. } = h.mode
                    && h.rewrite_without_rules
                {
                    p.warn(
                        SERVICE_SECTION,
                        Some(id),
                        Some("enableRewrite"),
                        format!(
                            "on (the default) but http-locations has no rules for domain {:?}: M_m is sent as the path (motan-go would answer every call 404; set enableRewrite: false to say so)",
                            u.get_str(keys::DOMAIN, "")
                        ),
                    );
                }
                Some(spec)
            }
            Err(e) => {
                p.error(SERVICE_SECTION, Some(id), Some(&e.key), &e.reason);
                None
            }
        }
    }
}

/// The final filter list of a refer or service names only filters the agent has.
pub(super) fn check_filters(section: &str, id: &str, u: &Url, p: &mut Problems) {
    let side = match section {
        SERVICE_SECTION => Side::Service,
        _ => Side::Refer,
    };
    match filter_names(u, side) {
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
