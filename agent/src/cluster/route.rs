//! Choosing the refer (cluster) for a request in the client agent (4.3 step 2), and the
//! request defaults filled from it (step 3). Pure functions over the configured refers.
use rustc_hash::FxHashMap;
use std::fmt;

use crate::protocol::motan2::call::CallError;
use crate::url::{Url, keys};

/// What routing looks at: the request's `M_p`, `M_g`, `M_v`, `M_pp` (empty when absent).
#[derive(Clone, Copy, Debug, Default)]
pub struct RouteRequest<'a> {
    pub service: &'a str,
    pub group: &'a str,
    pub version: &'a str,
    pub proxy_protocol: &'a str,
}

/// Why no cluster was found. `Display` is upstream's inner text; the client receives
/// `to_call_error()`: errcode 400, errtype 1, "cluster not found. cluster: <text>".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteError {
    EmptyService,
    NotFound {
        service: String,
    },
    GroupRequired {
        service: String,
    },
    NoMatch {
        service: String,
        group: String,
        protocol: String,
        version: String,
    },
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::EmptyService => write!(f, "empty service is not supported. service: "),
            RouteError::NotFound { service } => write!(f, "cluster not found. service: {service}"),
            RouteError::GroupRequired { service } => write!(
                f,
                "multiple clusters are matched with service: {service}, but the group is empty"
            ),
            RouteError::NoMatch {
                service,
                group,
                protocol,
                version,
            } => write!(
                f,
                "no cluster matches the request; info: {{service: {service}, group: {group}, protocol: {protocol}, version: {version}}}"
            ),
        }
    }
}

impl std::error::Error for RouteError {}

impl RouteError {
    pub fn to_call_error(&self) -> CallError {
        CallError::service(400, format!("cluster not found. cluster: {self}"))
    }
}

/// The refers indexed by service path, built once per configuration (or reload).
#[derive(Debug, Default)]
pub struct RouteTable {
    refers: Vec<Url>,
    by_path: FxHashMap<String, Vec<usize>>,
}

impl RouteTable {
    /// `refers` in the order routing should prefer them when several match (upstream's order is
    /// undefined; we keep the given one).
    pub fn new(refers: Vec<Url>) -> RouteTable {
        let mut by_path: FxHashMap<String, Vec<usize>> = FxHashMap::default();
        for (i, r) in refers.iter().enumerate() {
            by_path.entry(r.path.clone()).or_default().push(i);
        }
        RouteTable { refers, by_path }
    }

    pub fn refers(&self) -> &[Url] {
        &self.refers
    }

    /// 4.3 step 2: one refer with the path → it, whatever `M_g` says; several → `M_g` is
    /// required and the first refer matching group, protocol (`M_pp`) and version (`M_v`) wins.
    /// The answer is an index into the refers the table was built from. (`http-client`
    /// clusters, which upstream tries next by `domain`, do not exist in sockmesh.)
    pub fn route(&self, req: &RouteRequest<'_>) -> Result<usize, RouteError> {
        self.route_by(req, |i, r| {
            self.refers[i].is_match(r.service, r.group, r.proxy_protocol, r.version)
        })
    }

    /// As `route`, with `is_match` saying whether refer `i` matches (the caller's current
    /// view of it, e.g. a group resolved after the table was built).
    pub fn route_by(
        &self,
        req: &RouteRequest<'_>,
        is_match: impl Fn(usize, &RouteRequest<'_>) -> bool,
    ) -> Result<usize, RouteError> {
        if req.service.is_empty() {
            return Err(RouteError::EmptyService);
        }
        let candidates = self
            .by_path
            .get(req.service)
            .ok_or_else(|| RouteError::NotFound {
                service: req.service.to_string(),
            })?;
        if let [only] = candidates.as_slice() {
            return Ok(*only);
        }
        if req.group.is_empty() {
            return Err(RouteError::GroupRequired {
                service: req.service.to_string(),
            });
        }
        candidates
            .iter()
            .copied()
            .find(|&i| is_match(i, req))
            .ok_or_else(|| RouteError::NoMatch {
                service: req.service.to_string(),
                group: req.group.to_string(),
                protocol: req.proxy_protocol.to_string(),
                version: req.version.to_string(),
            })
    }
}

/// Meta values to fill from the chosen refer (4.3 step 3), each only when the request lacks it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestDefaults {
    /// New `M_s`: the request's `application` attachment, else the refer's `application`.
    pub source: Option<String>,
    /// New `M_g`: the refer's group.
    pub group: Option<String>,
}

/// `m_s`, `application` and `m_g` are the request's current meta values (absent or empty alike).
pub fn request_defaults(
    refer: &Url,
    m_s: Option<&str>,
    application: Option<&str>,
    m_g: Option<&str>,
) -> RequestDefaults {
    let missing = |v: Option<&str>| v.is_none_or(str::is_empty);
    let source = if missing(m_s) {
        application
            .filter(|a| !a.is_empty())
            .or_else(|| refer.param(keys::APPLICATION))
            .map(str::to_string)
    } else {
        None
    };
    let group = missing(m_g).then(|| refer.group.clone());
    RequestDefaults { source, group }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refer(path: &str, group: &str, protocol: &str) -> Url {
        Url::new(protocol, "", 0, path, group)
    }

    fn req<'a>(service: &'a str, group: &'a str) -> RouteRequest<'a> {
        RouteRequest {
            service,
            group,
            ..Default::default()
        }
    }

    fn table() -> RouteTable {
        RouteTable::new(vec![
            refer("com.a.Hello", "g1", "motan2"),
            refer("com.a.Multi", "g1", "motan2").with_param("version", "1.0"),
            refer("com.a.Multi", "g2", "motan2"),
            refer("com.a.Multi", "g3", "grpc"),
        ])
    }

    #[test]
    fn single_refer_ignores_group() {
        let t = table();
        assert_eq!(t.route(&req("com.a.Hello", "")), Ok(0));
        assert_eq!(t.route(&req("com.a.Hello", "whatever")), Ok(0));
    }

    #[test]
    fn several_refers_need_a_matching_group() {
        let t = table();
        let e = t.route(&req("com.a.Multi", "")).unwrap_err();
        assert_eq!(
            e.to_call_error().message,
            "cluster not found. cluster: multiple clusters are matched with service: com.a.Multi, but the group is empty"
        );
        assert_eq!(t.route(&req("com.a.Multi", "g2")), Ok(2));
        let e = t.route(&req("com.a.Multi", "g9")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no cluster matches the request; info: {service: com.a.Multi, group: g9, protocol: , version: }"
        );
    }

    #[test]
    fn protocol_and_version_matching() {
        let t = table();
        let r = |group, proxy_protocol, version| RouteRequest {
            service: "com.a.Multi",
            group,
            version,
            proxy_protocol,
        };
        assert_eq!(t.route(&r("g1", "motan", "")), Ok(1));
        assert_eq!(t.route(&r("g1", "motan2", "1.0")), Ok(1));
        assert!(t.route(&r("g1", "motan2", "2.0")).is_err());
        assert!(t.route(&r("g1", "grpc", "")).is_err());
        assert_eq!(t.route(&r("g2", "motan2", "7.7")), Ok(2), "refer has no version");
        assert_eq!(t.route(&r("g3", "grpc", "")), Ok(3));
        assert_eq!(
            t.route(&r("g3", "motan2", "")).unwrap_err().to_string(),
            "no cluster matches the request; info: {service: com.a.Multi, group: g3, protocol: motan2, version: }"
        );
    }

    #[test]
    fn empty_and_unknown_services() {
        let t = table();
        let e = t.route(&req("", "g")).unwrap_err();
        assert_eq!(
            e.to_call_error().message,
            "cluster not found. cluster: empty service is not supported. service: "
        );
        let e = t.route(&req("com.a.Nope", "")).unwrap_err();
        let ce = e.to_call_error();
        assert_eq!((ce.code, ce.kind.errtype()), (400, 1));
        assert_eq!(
            ce.message,
            "cluster not found. cluster: cluster not found. service: com.a.Nope"
        );
    }

    #[test]
    fn defaults_only_fill_missing_values() {
        let r = refer("p", "g", "motan2").with_param("application", "order-web");
        assert_eq!(
            request_defaults(&r, None, None, None),
            RequestDefaults {
                source: Some("order-web".into()),
                group: Some("g".into())
            }
        );
        assert_eq!(
            request_defaults(&r, Some(""), Some("caller"), Some("g2")),
            RequestDefaults {
                source: Some("caller".into()),
                group: None
            }
        );
        assert_eq!(
            request_defaults(&r, Some("x"), Some("caller"), Some("")).source,
            None
        );
        let bare = refer("p", "g", "motan2");
        assert_eq!(
            request_defaults(&bare, None, None, Some("g")),
            RequestDefaults::default()
        );
    }
}
