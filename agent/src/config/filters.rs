//! The filter vocabulary of the `filter` key (spec 4.7): which names exist, motan-go's aliases
//! and the names accepted without a filter. The configuration resolves a URL's list once with
//! [`filter_names`]; the filter stage builds exactly those (`filter::FilterChain::build`), and
//! on a refer the cluster applies the endpoint filters to each endpoint (`cluster::circuit`).
use super::sections::SettingError;
use crate::url::{Url, keys};

/// Every filter the agent has, by configuration name (each has a constructor in `filter/`).
pub const FILTERS: &[&str] = &[
    "accessLog",
    "metrics",
    "trace",
    "rateLimit",
    "degrade",
    "circuitBreaker",
    "mock",
];

/// motan-go's cluster-level variants: the same filter here (where a chain wraps the call is the
/// request path's choice); listing both names gives one filter.
pub const ALIASES: &[(&str, &str)] = &[
    ("clusterAccessLog", "accessLog"),
    ("clusterMetrics", "metrics"),
    ("clusterCircuitBreaker", "circuitBreaker"),
];

/// On a refer, motan-go runs these as endpoint filters, one instance per endpoint: here the
/// cluster gives every endpoint its own circuit (`circuitBreaker`; the refer-wide circuit is
/// `clusterCircuitBreaker`) and failfast status (`failfast`).
pub const ENDPOINT_FILTERS: &[&str] = &["circuitBreaker", "failfast"];
pub const CIRCUIT_BREAKER: &str = "circuitBreaker";
pub const CLUSTER_CIRCUIT_BREAKER: &str = "clusterCircuitBreaker";
pub const FAILFAST: &str = "failfast";

/// Where a filter list applies: a refer (client role, calls go over a cluster of endpoints) or
/// a service (server role, calls go to the local provider).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Refer,
    Service,
}

/// A URL's filter list resolved: canonical names, each once, in the order listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterNames {
    /// Filters of the refer's or service's chain.
    pub names: Vec<&'static str>,
    /// Refer only: endpoint filters the cluster applies per endpoint ([`ENDPOINT_FILTERS`]).
    pub endpoint: Vec<&'static str>,
    /// Names accepted without a filter, with the reason (to warn about).
    pub skipped: Vec<(&'static str, &'static str)>,
}

/// Resolve the URL's `filter` list for `side`; an unknown name is an error naming it and the
/// known ones.
pub fn filter_names(url: &Url, side: Side) -> Result<FilterNames, SettingError> {
    let mut out = FilterNames::default();
    for name in url.get_list(keys::FILTER) {
        if side == Side::Refer
            && let Some(n) = ENDPOINT_FILTERS.iter().find(|n| **n == name)
        {
            if !out.endpoint.contains(n) {
                out.endpoint.push(n);
            }
            continue;
        }
        let canonical = ALIASES
            .iter()
            .find(|(alias, _)| *alias == name)
            .map(|(_, to)| *to)
            .or_else(|| FILTERS.iter().find(|n| **n == name).copied());
        match canonical {
            Some(n) if !out.names.contains(&n) => out.names.push(n),
            Some(_) => {}
            None => match name == FAILFAST {
                true => out.skipped.push((
                    FAILFAST,
                    "failfast marks a refer's endpoints unavailable; a service has none",
                )),
                false => {
                    return Err(SettingError::new(
                        keys::FILTER,
                        format!(
                            "unknown filter {name:?}; known filters: {}",
                            known_names().join(", ")
                        ),
                    ));
                }
            },
        }
    }
    Ok(out)
}

/// Every configuration name [`filter_names`] accepts.
pub fn known_names() -> Vec<&'static str> {
    FILTERS
        .iter()
        .copied()
        .chain(ALIASES.iter().map(|(a, _)| *a))
        .chain([FAILFAST])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(filter: &str) -> Url {
        Url::new("motan2", "", 0, "p", "g").with_param("filter", filter)
    }

    #[test]
    fn aliases_dedup_skips_and_unknown_names() {
        let f = filter_names(&url("clusterMetrics, metrics,accessLog,failfast"), Side::Service).unwrap();
        assert_eq!(f.names, ["metrics", "accessLog"]);
        assert_eq!(f.skipped.len(), 1);
        let e = filter_names(&url("metrics,nope"), Side::Refer).unwrap_err();
        assert_eq!(e.key, "filter");
        assert!(
            e.reason.contains("\"nope\"") && e.reason.contains("accessLog"),
            "{e}"
        );
    }

    #[test]
    fn endpoint_filters_of_a_refer() {
        let list = "failfast,circuitBreaker,clusterCircuitBreaker,failfast";
        let r = filter_names(&url(list), Side::Refer).unwrap();
        assert_eq!(
            (r.names, r.endpoint, r.skipped),
            (vec!["circuitBreaker"], vec!["failfast", "circuitBreaker"], vec![])
        );
        let s = filter_names(&url(list), Side::Service).unwrap();
        assert_eq!((s.names, s.endpoint), (vec!["circuitBreaker"], vec![]));
        assert_eq!(s.skipped.len(), 2);
        assert!(
            filter_names(&url("circuitBreaker"), Side::Refer)
                .unwrap()
                .names
                .is_empty()
        );
    }
}
