//! `${idc}` in a refer's group, resolved when the cluster starts, as motan-go's
//! cluster/motanCluster.go `getSubscribeGroup` and `getBestGroup` do:
//!
//! 1. With `-idc X`: the candidates are the group with `${idc}` replaced by X as given, in
//!    lower case and in upper case (without repeats, in that order).
//! 2. A registry that cannot list its groups (direct): the first candidate with servers wins,
//!    else the group stays as written (warned: it finds nothing in ZooKeeper-like registries).
//! 3. A registry that lists groups (ZooKeeper: the children of `/motan`): the first candidate
//!    that is a listed group with servers wins; else every listed group matching the pattern
//!    (`${idc}` standing for any text) is a match. Matches with servers: one random server of
//!    each is pinged (5 echoes, at most 1 s, all groups at once, see `crate::ping`) and the lowest
//!    trimmed-mean RTT wins; a group with fewer than 3 replies is skipped; none answering → the
//!    last one. Matches without servers → the last match. No match → the group as written.
//!
//! Listed groups are sorted, so "the last" is well defined (upstream iterates a Go map).
//! Resolution happens once per cluster start (and reload), as upstream. A registry that cannot
//! be asked yet (ZooKeeper not connected): with `-idc` its value as given is used at once (a
//! snapshot still serves it), without `-idc` discovery asks again until the registry answers.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::motan::IDC_PLACEHOLDER;
use crate::ping::trimmed_mean;
use crate::registry::{Registry, RegistryError};
use crate::url::Url;

/// Pings one host: the RTTs of its replies, or why there are none.
pub type PingFn =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Result<Vec<Duration>, String>> + Send>> + Send + Sync>;

/// The ICMP pinger with motan-go's parameters.
pub fn icmp_ping() -> PingFn {
    Arc::new(|host: String| {
        Box::pin(async move { crate::ping::ping_host(&host, crate::ping::PingOptions::default()).await })
    })
}

/// How the group was chosen (logged, and shown in the cluster's status).
#[derive(Clone, Debug, PartialEq)]
pub struct Resolution {
    pub group: String,
    pub candidates: Vec<String>,
    /// Ping results per group with servers: the trimmed-mean RTT, or why it has none.
    pub rtts: Vec<(String, Result<Duration, String>)>,
    /// Which rule chose: `candidate`, `rtt`, `last-unanswered`, `last-match`, `literal`.
    pub rule: &'static str,
    /// Set when the choice is probably not what is meant.
    pub warning: Option<String>,
}

impl Resolution {
    pub fn to_json(&self) -> Value {
        let rtts: serde_json::Map<String, Value> = self
            .rtts
            .iter()
            .map(|(g, r)| {
                let v = match r {
                    Ok(d) => json!({"rtt_us": d.as_micros() as u64}),
                    Err(e) => json!({"error": e}),
                };
                (g.clone(), v)
            })
            .collect();
        json!({
            "group": self.group, "candidates": self.candidates, "rule": self.rule,
            "rtts": rtts, "warning": self.warning,
        })
    }

    fn new(group: &str, candidates: &[String], rule: &'static str) -> Resolution {
        Resolution {
            group: group.to_string(),
            candidates: candidates.to_vec(),
            rtts: Vec::new(),
            rule,
            warning: None,
        }
    }
}

/// The exact groups to try first: `${idc}` (its first occurrence, as upstream) replaced by
/// `idc` as given, lower-case, upper-case; none without `idc`.
pub fn candidates(group: &str, idc: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if idc.is_empty() {
        return out;
    }
    for v in [idc.to_string(), idc.to_lowercase(), idc.to_uppercase()] {
        let g = group.replacen(IDC_PLACEHOLDER, &v, 1);
        if !out.contains(&g) {
            out.push(g);
        }
    }
    out
}

/// Whether `candidate` is `group` with its (first) `${idc}` standing for any text, possibly
/// empty (upstream's regex `^prefix(.*)suffix$`, the rest taken literally).
pub fn matches(group: &str, candidate: &str) -> bool {
    let Some((prefix, suffix)) = group.split_once(IDC_PLACEHOLDER) else {
        return group == candidate;
    };
    candidate.len() >= prefix.len() + suffix.len()
        && candidate.starts_with(prefix)
        && candidate.ends_with(suffix)
}

/// The group with the lowest RTT; `None` when no group has one.
pub fn best_group(rtts: &[(String, Result<Duration, String>)]) -> Option<&str> {
    rtts.iter()
        .filter_map(|(g, r)| r.as_ref().ok().map(|d| (g, d)))
        .min_by_key(|(_, d)| **d)
        .map(|(g, _)| g.as_str())
}

/// The refer with another group.
fn with_group(refer: &Url, group: &str) -> Url {
    let mut u = refer.clone();
    u.group = group.to_string();
    u
}

/// The servers `registry` has for `refer` in `group`.
async fn servers_in(registry: &dyn Registry, refer: &Url, group: &str) -> Result<Vec<Url>, RegistryError> {
    registry.discover(&with_group(refer, group)).await
}

/// Resolve `refer.group` (which holds `${idc}`) against `registry`; `idc` is `-idc` (empty
/// without), `ping` measures a host. `Err`: the registry could not answer (not connected), so
/// nothing can be decided yet.
pub async fn resolve(
    refer: &Url,
    registry: &dyn Registry,
    idc: &str,
    ping: &PingFn,
) -> Result<Resolution, RegistryError> {
    let group = refer.group.as_str();
    let cands = candidates(group, idc);
    let Some(listed) = registry.list_groups().await? else {
        for c in &cands {
            if !servers_in(registry, refer, c).await?.is_empty() {
                return Ok(Resolution::new(c, &cands, "candidate"));
            }
        }
        let mut r = Resolution::new(group, &cands, "literal");
        r.warning = Some(if cands.is_empty() {
            format!(
                "group {group:?}: registry {} cannot list groups and -idc is not set; the group is used as written",
                registry.url().identity()
            )
        } else {
            format!(
                "group {group:?}: no servers in any of {cands:?} and registry {} cannot list groups; the group is used as written",
                registry.url().identity()
            )
        });
        return Ok(r);
    };
    for c in &cands {
        if listed.contains(c) && !servers_in(registry, refer, c).await?.is_empty() {
            return Ok(Resolution::new(c, &cands, "candidate"));
        }
    }
    let matched: Vec<&String> = listed.iter().filter(|g| matches(group, g)).collect();
    let mut with_servers: Vec<(String, Vec<Url>)> = Vec::new();
    for g in &matched {
        let list = servers_in(registry, refer, g).await?;
        if !list.is_empty() {
            with_servers.push(((*g).clone(), list));
        }
    }
    if with_servers.is_empty() {
        let Some(last) = matched.last() else {
            let mut r = Resolution::new(group, &cands, "literal");
            r.warning = Some(format!(
                "group {group:?}: no group of registry {} matches; the group is used as written",
                registry.url().identity()
            ));
            return Ok(r);
        };
        let mut r = Resolution::new(last, &cands, "last-match");
        r.warning = Some(format!(
            "group {group:?}: none of the matching groups {matched:?} has servers; using the last, {last:?}"
        ));
        return Ok(r);
    }
    // One random server per group, all pinged at once.
    let mut set = tokio::task::JoinSet::new();
    for (i, (_, list)) in with_servers.iter().enumerate() {
        let host = list[fastrand::usize(..list.len())].host.clone();
        let ping = ping.clone();
        set.spawn(async move { (i, host.clone(), ping(host).await) });
    }
    let mut rtts: Vec<(String, Result<Duration, String>)> = with_servers
        .iter()
        .map(|(g, _)| (g.clone(), Err("not measured".to_string())))
        .collect();
    while let Some(done) = set.join_next().await {
        let Ok((i, host, result)) = done else { continue };
        rtts[i].1 = match result {
            Ok(r) => trimmed_mean(&r).ok_or_else(|| format!("{host}: {} of 5 echoes answered", r.len())),
            Err(e) => Err(e),
        };
    }
    let (chosen, rule) = match best_group(&rtts) {
        Some(g) => (g.to_string(), "rtt"),
        None => (
            with_servers.last().map(|(g, _)| g.clone()).unwrap_or_default(),
            "last-unanswered",
        ),
    };
    let mut r = Resolution::new(&chosen, &cands, rule);
    if rule == "last-unanswered" {
        r.warning = Some(format!(
            "group {group:?}: no server of {:?} answered ping; using the last, {chosen:?}",
            with_servers.iter().map(|(g, _)| g).collect::<Vec<_>>()
        ));
    }
    r.rtts = rtts;
    Ok(r)
}

/// When the registry cannot answer yet and `-idc` is set: its value as given (what sockmesh
/// did before resolving at start), so a registry snapshot still serves; `None` without `-idc`.
pub fn unreachable_fallback(group: &str, idc: &str, e: &RegistryError) -> Option<Resolution> {
    let cands = candidates(group, idc);
    let first = cands.first()?;
    let mut r = Resolution::new(first, &cands, "registry-unreachable");
    r.warning = Some(format!(
        "group {group:?}: the registry cannot be asked ({e}); using -idc's value as given, {first:?}"
    ));
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::DirectRegistry;

    #[test]
    fn candidates_and_patterns() {
        assert_eq!(candidates("api-${idc}", "Yf"), vec!["api-Yf", "api-yf", "api-YF"]);
        assert_eq!(candidates("api-${idc}", "yf"), vec!["api-yf", "api-YF"]);
        assert_eq!(candidates("api-${idc}", "").len(), 0);
        assert!(matches("api-${idc}", "api-yf"));
        assert!(matches("api-${idc}", "api-"));
        assert!(matches("a.${idc}.b", "a.x.b"));
        assert!(
            !matches("a.${idc}.b", "aXx.b"),
            "the rest is literal, not a regex"
        );
        assert!(!matches("api-${idc}", "other-yf"));
        assert!(!matches("${idc}-x", "-"));
    }

    #[test]
    fn the_lowest_rtt_wins() {
        let ms = Duration::from_millis;
        let r = vec![
            ("a".to_string(), Ok(ms(5))),
            ("b".to_string(), Err("x".to_string())),
            ("c".to_string(), Ok(ms(1))),
        ];
        assert_eq!(best_group(&r), Some("c"));
        assert_eq!(best_group(&r[1..2]), None);
    }

    #[tokio::test]
    async fn registries_that_cannot_list_groups_take_the_first_candidate() {
        let reg = DirectRegistry::new(Url::new("direct", "127.0.0.1", 1, "", "")).unwrap();
        let refer = Url::new("motan2", "", 0, "s", "api-${idc}");
        let never: PingFn = Arc::new(|_| Box::pin(async { Err("no ping".to_string()) }));
        let r = resolve(&refer, &reg, "YF", &never).await.unwrap();
        assert_eq!((r.group.as_str(), r.rule), ("api-YF", "candidate"));
        let r = resolve(&refer, &reg, "", &never).await.unwrap();
        assert_eq!((r.group.as_str(), r.rule), ("api-${idc}", "literal"));
        assert!(
            r.warning
                .unwrap()
                .contains("cannot list groups and -idc is not set")
        );
    }
}
