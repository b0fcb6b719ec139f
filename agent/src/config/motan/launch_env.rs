//! What the agent's start (flags, environment) changes in the typed URLs, and the check of
//! `${idc}` in refer groups (resolved when the cluster starts: `cluster::idc`, motan-go's
//! cluster/motanCluster.go `getSubscribeGroup`): `MESH_DIRECT_RPC` (refers served by a fixed
//! server list instead of their registries) and the `META_*` environment variables a service
//! with `registerMeta: true` registers (motan-go: core/util.go `GetDirectEnvRegistry`,
//! meta/meta.go and server/server.go `Export`).
use std::collections::BTreeMap;

use super::super::registry::DirectSpec;
use super::problems::Problems;
use crate::url::{Url, keys, parse_go_bool};

/// The placeholder motan-go resolves in refer groups.
pub const IDC_PLACEHOLDER: &str = "${idc}";
/// The environment variable of direct RPC rules.
pub const DIRECT_RPC_ENV: &str = "MESH_DIRECT_RPC";
/// Top-level configuration key: the prefix of environment variables that are metadata.
pub const ENV_META_PREFIX_KEY: &str = "envMetaPrefix";
pub const DEFAULT_META_PREFIX: &str = "META_";
/// Service key: register the environment metadata with the service's URL.
pub const REGISTER_META_KEY: &str = "registerMeta";

/// `${idc}` in a refer's group is resolved when the cluster starts (`cluster::idc`, as
/// motan-go's `getSubscribeGroup`): `-idc`'s value (as given, lower, upper case) first, then,
/// in a registry that lists its groups (ZooKeeper), the matching group with the lowest ping
/// RTT. Here only what cannot find a group is reported: no `-idc` and a first registry that
/// cannot list groups (the group would be used as written).
pub(super) fn check_idc(
    section: &str,
    id: &str,
    u: &Url,
    idc: &str,
    registries: &BTreeMap<String, Url>,
    p: &mut Problems,
) {
    if !u.group.contains(IDC_PLACEHOLDER) || !idc.is_empty() {
        return;
    }
    let first = u.get_list(keys::REGISTRY).into_iter().next();
    let lists_groups = first
        .and_then(|r| registries.get(r))
        .is_some_and(|r| r.protocol == "zookeeper");
    if !lists_groups {
        p.warn(
            section,
            Some(id),
            Some("group"),
            format!(
                "{:?}: without -idc only a zookeeper registry can resolve ${{idc}} (registry {:?} cannot list groups); the group is used as written",
                u.group,
                first.unwrap_or("")
            ),
        );
    }
}

/// One `MESH_DIRECT_RPC` rule: `service>group@host:port,host:port` or `service>host:port`;
/// `service` ending in `*` matches path prefixes, otherwise path suffixes.
#[derive(Debug, PartialEq)]
pub(super) struct DirectRule {
    pub key: String,
    pub group: String,
    pub address: String,
}

impl DirectRule {
    fn matches(&self, path: &str) -> bool {
        match self.key.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path.ends_with(&self.key),
        }
    }

    /// The registry id the rule's direct registry gets in `motan-registry`.
    fn registry_id(&self) -> String {
        format!("{DIRECT_RPC_ENV}:{}", self.key)
    }
}

pub(super) fn direct_rules(text: &str) -> Vec<DirectRule> {
    text.split(';')
        .filter_map(|s| {
            let (key, rest) = s.split_once('>')?;
            let (group, address) = rest.split_once('@').unwrap_or(("", rest));
            Some(DirectRule {
                key: key.trim().to_string(),
                group: group.trim().to_string(),
                address: address.trim().to_string(),
            })
        })
        .filter(|r| !r.key.is_empty())
        .collect()
}

/// Point every refer a rule matches (the first matching rule, in the variable's order) at
/// that rule's direct registry, which replaces its own registries, as motan-go does.
pub(super) fn apply_direct_rpc(
    text: &str,
    refers: &mut BTreeMap<String, Url>,
    registries: &mut BTreeMap<String, Url>,
    p: &mut Problems,
) {
    let rules = direct_rules(text);
    for r in &rules {
        let mut reg = Url::new("direct", "", 0, "", &r.group);
        reg.params.insert(keys::ADDRESS.into(), r.address.clone());
        reg.params.insert(keys::CONF_ID.into(), r.registry_id());
        if let Err(e) = DirectSpec::from_url(&reg) {
            p.error(
                &format!("environment {DIRECT_RPC_ENV}"),
                Some(&r.key),
                Some(&e.key),
                e.reason,
            );
            continue;
        }
        let mut used = false;
        for u in refers.values_mut() {
            if rules.iter().find(|x| x.matches(&u.path)) == Some(r) {
                u.params.insert(keys::REGISTRY.into(), r.registry_id());
                used = true;
            }
        }
        if used {
            registries.insert(r.registry_id(), reg);
        }
    }
}

/// The environment variables that are metadata (`prefix`, default `META_`), with their names.
pub(super) fn env_meta(vars: &[(String, String)], prefix: &str) -> BTreeMap<String, String> {
    vars.iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A service with `registerMeta: true` carries the metadata as URL parameters, so callers see
/// it in the registry.
pub(super) fn add_register_meta(u: &mut Url, meta: &BTreeMap<String, String>) {
    if u.param(REGISTER_META_KEY).and_then(parse_go_bool) == Some(true) {
        for (k, v) in meta {
            u.params.insert(k.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems() -> Problems<'static> {
        Problems {
            src: "t.yaml",
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    #[test]
    fn direct_rules_as_motan_go_writes_them() {
        // core/util_test.go's examples.
        let r = direct_rules(
            "helloService>change_group@127.0.0.1:8005;testService>127.0.0.1:7777,127.0.0.1:8888;",
        );
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            DirectRule {
                key: "helloService".into(),
                group: "change_group".into(),
                address: "127.0.0.1:8005".into()
            }
        );
        assert_eq!(r[1].group, "");
        assert!(r[0].matches("com.weibo.helloService"));
        assert!(!r[0].matches("helloService.x"));
        let star = &direct_rules("com.weibo.t*>g@127.0.0.1:1")[0];
        assert!(star.matches("com.weibo.test") && !star.matches("com.other"));
    }

    #[test]
    fn direct_rpc_replaces_the_registry_of_matching_refers() {
        let mut refers = BTreeMap::new();
        refers.insert(
            "a".to_string(),
            Url::new("motan2", "", 0, "com.weibo.HelloService", "g").with_param("registry", "zk"),
        );
        refers.insert(
            "b".to_string(),
            Url::new("motan2", "", 0, "com.weibo.Other", "g").with_param("registry", "zk"),
        );
        let mut regs = BTreeMap::new();
        let mut p = problems();
        apply_direct_rpc(
            "HelloService>g2@127.0.0.1:8005,127.0.0.1:8006;Nothing>bad:addr:x",
            &mut refers,
            &mut regs,
            &mut p,
        );
        assert_eq!(
            refers["a"].param("registry"),
            Some("MESH_DIRECT_RPC:HelloService")
        );
        assert_eq!(refers["b"].param("registry"), Some("zk"));
        let reg = &regs["MESH_DIRECT_RPC:HelloService"];
        assert_eq!((reg.protocol.as_str(), reg.group.as_str()), ("direct", "g2"));
        assert_eq!(regs.len(), 1);
        assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
        assert!(
            p.errors[0]
                .starts_with("t.yaml: section environment MESH_DIRECT_RPC, entry Nothing, key address"),
            "{:?}",
            p.errors
        );
    }

    #[test]
    fn idc_and_meta() {
        let mut p = problems();
        let regs = BTreeMap::from([
            ("zk".to_string(), Url::new("zookeeper", "127.0.0.1", 2181, "", "")),
            ("d".to_string(), Url::new("direct", "127.0.0.1", 1, "", "")),
        ]);
        let u = |reg: &str| Url::new("motan2", "", 0, "s", "api-${idc}").with_param("registry", reg);
        // Resolved at cluster start, not here: the group keeps ${idc}.
        check_idc("motan-refer", "r", &u("d"), "yf", &regs, &mut p);
        check_idc("motan-refer", "r", &u("zk"), "", &regs, &mut p);
        check_idc("motan-refer", "r", &u("zk,d"), "", &regs, &mut p);
        assert!(p.errors.is_empty() && p.warnings.is_empty(), "{:?}", p.warnings);
        check_idc("motan-refer", "r", &u("d,zk"), "", &regs, &mut p);
        assert!(p.errors.is_empty());
        assert!(
            p.warnings[0]
                .contains("entry r, key group: \"api-${idc}\": without -idc only a zookeeper registry"),
            "{:?}",
            p.warnings
        );

        let vars = vec![
            ("META_A".to_string(), "1".to_string()),
            ("X_B".to_string(), "2".to_string()),
        ];
        let m = env_meta(&vars, DEFAULT_META_PREFIX);
        let mut s = Url::new("motan2", "", 0, "s", "g").with_param("registerMeta", "true");
        add_register_meta(&mut s, &m);
        assert_eq!(s.param("META_A"), Some("1"));
        assert_eq!(s.param("X_B"), None);
        let mut s = Url::new("motan2", "", 0, "s", "g");
        add_register_meta(&mut s, &env_meta(&vars, "X_"));
        assert_eq!(s.param("X_B"), None);
    }
}
