//! The filter vocabulary of the `filter` key (spec 4.7): which names exist, motan-go's aliases
//! and the names accepted without a filter. The configuration resolves a URL's list once with
//! [`filter_names`]; the filter stage builds exactly those (`filter::FilterChain::build`).
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

/// Names motan-go accepts that are not filters here, and why (accepted with a warning so a
/// motan-go configuration still loads).
pub const HANDLED_ELSEWHERE: &[(&str, &str)] = &[(
    "failfast",
    "endpoint health is tracked by the cluster (errorCountThreshold, keepalive)",
)];

/// A URL's filter list resolved: canonical names, each once, in the order listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterNames {
    pub names: Vec<&'static str>,
    /// Names accepted without a filter, with the reason (to warn about).
    pub skipped: Vec<(&'static str, &'static str)>,
}

/// Resolve the URL's `filter` list; an unknown name is an error naming it and the known ones.
pub fn filter_names(url: &Url) -> Result<FilterNames, SettingError> {
    let mut out = FilterNames::default();
    for name in url.get_list(keys::FILTER) {
        let canonical = ALIASES
            .iter()
            .find(|(alias, _)| *alias == name)
            .map(|(_, to)| *to)
            .or_else(|| FILTERS.iter().find(|n| **n == name).copied());
        match canonical {
            Some(n) if !out.names.contains(&n) => out.names.push(n),
            Some(_) => {}
            None => match HANDLED_ELSEWHERE.iter().find(|(n, _)| *n == name) {
                Some(&(n, why)) => out.skipped.push((n, why)),
                None => {
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
        .chain(HANDLED_ELSEWHERE.iter().map(|(n, _)| *n))
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
        let f = filter_names(&url("clusterMetrics, metrics,accessLog,failfast")).unwrap();
        assert_eq!(f.names, ["metrics", "accessLog"]);
        assert_eq!(f.skipped.len(), 1);
        let e = filter_names(&url("metrics,nope")).unwrap_err();
        assert_eq!(e.key, "filter");
        assert!(
            e.reason.contains("\"nope\"") && e.reason.contains("accessLog"),
            "{e}"
        );
    }
}
