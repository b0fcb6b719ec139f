//! Settings of a refer that the configuration types once and the cluster uses as they are.
use std::collections::HashMap;
use std::time::Duration;

use super::sections::SettingError;
use crate::protocol::motan2::{Frame, simple};
use crate::url::{Url, keys};

/// Where the consistent-hash key comes from (sockmesh extension): `meta:<key>` or `arg:<n>`
/// (the n-th argument of a simple-serialized body, 0-based). Default: meta `consistentHashKey`.
pub const HASH_KEY_SOURCE: &str = "consistentHashKey.source";

/// Longest hash key taken from an argument, bytes.
pub const MAX_HASH_KEY: usize = 64 << 10;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKeySource {
    Meta(String),
    Arg(usize),
}

impl HashKeySource {
    pub fn from_url(refer: &Url) -> Result<HashKeySource, SettingError> {
        let raw = refer.get_str(HASH_KEY_SOURCE, "meta:consistentHashKey");
        if let Some(k) = raw.strip_prefix("meta:").filter(|k| !k.is_empty()) {
            return Ok(HashKeySource::Meta(k.to_string()));
        }
        if let Some(n) = raw.strip_prefix("arg:").and_then(|n| n.parse().ok()) {
            return Ok(HashKeySource::Arg(n));
        }
        Err(SettingError::new(
            HASH_KEY_SOURCE,
            format!("{raw:?} is not meta:<key> or arg:<index>"),
        ))
    }

    /// The request's hash key, if it has one.
    pub fn key(&self, req: &Frame) -> Option<String> {
        match self {
            HashKeySource::Meta(k) => req.meta.get_non_empty(k).map(str::to_string),
            HashKeySource::Arg(n) => {
                // The arguments before the key are stepped over, not decoded; a key that is
                // not one scalar, or is longer than MAX_HASH_KEY, is no key (the request is
                // balanced as one without).
                let v = simple::decode_nth(&req.body, *n, 1).ok()??;
                match v.as_str() {
                    Some(s) if s.len() <= MAX_HASH_KEY => Some(s.to_string()),
                    Some(_) => None,
                    None => v.as_i64().map(|i| i.to_string()),
                }
            }
        }
    }
}

/// The refer's HA strategy (`haStrategy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HaKind {
    Failover,
    /// Not in motan-go (sharp edge 17): accepted as failover with 0 retries, as Java means it.
    Failfast,
    BackupRequest,
}

impl HaKind {
    pub const NAMES: [&'static str; 3] = ["failover", "failfast", "backupRequest"];

    pub fn from_name(name: &str) -> Result<HaKind, String> {
        Ok(match name {
            "failover" => HaKind::Failover,
            "failfast" => HaKind::Failfast,
            "backupRequest" => HaKind::BackupRequest,
            other => {
                return Err(format!(
                    "unknown HA strategy {other:?} (expected {})",
                    Self::NAMES.join(", ")
                ));
            }
        })
    }

    /// The refer's `haStrategy`, default failover.
    pub fn from_url(refer: &Url) -> Result<HaKind, SettingError> {
        Self::from_name(refer.get_str(keys::HA_STRATEGY, "failover"))
            .map_err(|m| SettingError::new(keys::HA_STRATEGY, m))
    }
}

/// The refer's load balancer (`loadbalance`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LbKind {
    Random,
    RoundRobin,
    WeightedRoundRobin,
    ConsistentHashKey,
    /// Not in motan-go (Java's "activeWeight" idea): fewest in-flight requests, ties random.
    LeastActive,
}

impl LbKind {
    pub const NAMES: [&'static str; 5] = ["random", "roundrobin", "wrr", "consistentHashKey", "leastActive"];

    pub fn name(self) -> &'static str {
        match self {
            LbKind::Random => "random",
            LbKind::RoundRobin => "roundrobin",
            LbKind::WeightedRoundRobin => "wrr",
            LbKind::ConsistentHashKey => "consistentHashKey",
            LbKind::LeastActive => "leastActive",
        }
    }

    pub fn from_name(name: &str) -> Result<LbKind, String> {
        Ok(match name {
            "random" => LbKind::Random,
            "roundrobin" => LbKind::RoundRobin,
            "wrr" => LbKind::WeightedRoundRobin,
            "consistentHashKey" => LbKind::ConsistentHashKey,
            "leastActive" => LbKind::LeastActive,
            other => {
                return Err(format!(
                    "unknown load balancer {other:?} (expected {})",
                    Self::NAMES.join(", ")
                ));
            }
        })
    }
}

/// The balancer settings of a refer.
#[derive(Clone, Debug, PartialEq)]
pub struct LbConfig {
    pub kind: LbKind,
    /// `consistentHashKey.partSize`: partition count if ≥ 2n, else 5n + 271 is used.
    pub hash_part_size: usize,
    /// `consistentHashKey.load`: bounded-load factor, at least 1.1.
    pub hash_load: f64,
    /// `consistentHashKey.replica`: virtual nodes per member; 0 → 20 (< 100 endpoints) or 10.
    pub hash_replica: usize,
    /// wrr only: how often the endpoints' dynamic meta is fetched for their weights
    /// (`weightRefreshPeriodSecond`, default 3 s); `None` when `dynamicMeta` is false.
    pub weight_refresh: Option<Duration>,
}

/// motan-go's `weightRefreshPeriodSecond` and its default.
pub const WEIGHT_REFRESH_PERIOD_KEY: &str = "weightRefreshPeriodSecond";
pub const DEFAULT_WEIGHT_REFRESH_PERIOD: Duration = Duration::from_secs(3);
/// motan-go's `dynamicMeta` (default true): whether the endpoints' dynamic meta is fetched.
pub const DYNAMIC_META_KEY: &str = "dynamicMeta";

impl LbConfig {
    pub const MIN_HASH_LOAD: f64 = 1.1;

    pub fn new(kind: LbKind) -> LbConfig {
        LbConfig {
            kind,
            hash_part_size: 0,
            hash_load: Self::MIN_HASH_LOAD,
            hash_replica: 0,
            weight_refresh: None,
        }
    }

    /// From the refer's `loadbalance` (default `random`) and `consistentHashKey.*` parameters.
    pub fn from_url(refer: &Url) -> Result<LbConfig, SettingError> {
        let kind = LbKind::from_name(refer.get_str(keys::LOADBALANCE, "random"))
            .map_err(|m| SettingError::new(keys::LOADBALANCE, m))?;
        let load = refer
            .param("consistentHashKey.load")
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|l| *l >= Self::MIN_HASH_LOAD)
            .unwrap_or(Self::MIN_HASH_LOAD);
        let weight_refresh = match refer.param(WEIGHT_REFRESH_PERIOD_KEY) {
            None => DEFAULT_WEIGHT_REFRESH_PERIOD,
            Some(v) => match v.trim().parse::<u64>() {
                Ok(s) if (1..=86_400).contains(&s) => Duration::from_secs(s),
                _ => {
                    return Err(SettingError::new(
                        WEIGHT_REFRESH_PERIOD_KEY,
                        format!("{v:?} is not a whole number of seconds in 1..86400"),
                    ));
                }
            },
        };
        let refresh = kind == LbKind::WeightedRoundRobin && refer.get_bool(DYNAMIC_META_KEY, true);
        Ok(LbConfig {
            kind,
            hash_part_size: refer.get_int("consistentHashKey.partSize", 0).max(0) as usize,
            hash_load: load,
            hash_replica: refer.get_int("consistentHashKey.replica", 0).max(0) as usize,
            weight_refresh: refresh.then_some(weight_refresh),
        })
    }
}

/// A refer setting with motan-go's per-method overrides (`<method>(<desc>).<key>` parameters)
/// resolved once, when the configuration is read: a request looks its value up by method and
/// descriptor without formatting a key or parsing a number.
#[derive(Clone, Debug, PartialEq)]
pub struct PerMethod<T> {
    default: T,
    /// method -> descriptor -> value, for the pairs that some override names.
    by_method: HashMap<String, HashMap<String, T>>,
}

impl<T: Clone> PerMethod<T> {
    /// `resolve(method, desc)` is the setting's value for one pair (as the URL's method-level
    /// look-ups give it); it is called for every pair an override names and once for the rest.
    pub fn resolve(url: &Url, resolve: impl Fn(&str, &str) -> T) -> PerMethod<T> {
        let mut by_method: HashMap<String, HashMap<String, T>> = HashMap::new();
        for (method, desc) in override_pairs(url) {
            let v = resolve(&method, &desc);
            by_method.entry(method).or_default().insert(desc, v);
        }
        // No override names this pair (a NUL never appears in a method name).
        let default = resolve("\0", "\0");
        PerMethod { default, by_method }
    }

    /// The same value for every method.
    pub fn uniform(default: T) -> PerMethod<T> {
        PerMethod {
            default,
            by_method: HashMap::new(),
        }
    }

    pub fn get(&self, method: &str, desc: &str) -> &T {
        self.by_method
            .get(method)
            .and_then(|d| d.get(desc))
            .unwrap_or(&self.default)
    }
}

/// The (method, descriptor) pairs of the URL's `<method>(<desc>).<key>` parameters.
fn override_pairs(url: &Url) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = url
        .params
        .keys()
        .filter_map(|k| {
            let (head, _key) = k.split_once(").")?;
            let (method, desc) = head.split_once('(')?;
            (!method.contains(')') && !desc.contains('(')).then(|| (method.to_string(), desc.to_string()))
        })
        .collect();
    pairs.sort();
    pairs.dedup();
    pairs
}

/// `requestTimeout` when neither the refer nor the method sets one (motan-go's default).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);
const DEFAULT_DELAY_RATIO: i64 = 90;
const DEFAULT_MAX_RETRY_RATIO: i64 = 15;

/// The per-call timeout settings (4.8): `requestTimeout` (method override allowed) and the
/// window [`minRequestTimeout`, `maxRequestTimeout`] (defaults timeout/2 and timeout×2) in
/// which a request's own `M_tmo` is honoured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeoutSettings {
    pub timeout_ms: i64,
    pub min_ms: i64,
    pub max_ms: i64,
}

impl TimeoutSettings {
    /// The URL's timeouts with their method overrides.
    pub fn per_method(url: &Url) -> PerMethod<TimeoutSettings> {
        PerMethod::resolve(url, |m, d| TimeoutSettings::resolve(url, m, d))
    }

    fn resolve(url: &Url, method: &str, desc: &str) -> TimeoutSettings {
        let default_ms = DEFAULT_REQUEST_TIMEOUT.as_millis() as i64;
        let timeout_ms = url.get_method_positive_int(method, desc, keys::REQUEST_TIMEOUT, default_ms);
        let min_ms = match url.get_int(keys::MIN_REQUEST_TIMEOUT, 0) {
            0 => timeout_ms / 2,
            v => v,
        };
        let max_ms = match url.get_int(keys::MAX_REQUEST_TIMEOUT, 0) {
            0 => timeout_ms.saturating_mul(2),
            v => v,
        };
        TimeoutSettings {
            timeout_ms,
            min_ms,
            max_ms,
        }
    }

    /// The timeout of one call: the request's `M_tmo` when it lies within the window,
    /// otherwise the configured timeout.
    pub fn for_request(&self, m_tmo: Option<&str>) -> Duration {
        let asked = m_tmo.and_then(|t| t.parse::<i64>().ok());
        let ms = match asked {
            Some(t) if t >= self.min_ms && t <= self.max_ms => t,
            _ => self.timeout_ms,
        };
        Duration::from_millis(ms.max(0) as u64)
    }
}

/// backupRequest parameters of one method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupRequestConfig {
    /// Backup requests after the first; 0 = a plain single call.
    pub retries: u32,
    /// `backupRequestDelayTime`: fixed delay; `None` (0 or less) = from observed latency.
    pub fixed_delay: Option<Duration>,
    /// `backupRequestDelayRatio`: the latency percentile used for the dynamic delay.
    pub delay_ratio: u32,
    /// `backupRequestInitDelayTime`: delay before latency is known; `None` = no backups then.
    pub init_delay: Option<Duration>,
    /// `backupRequestMaxRetryRatio`: backups allowed per round of 100 requests.
    pub max_retry_ratio: u32,
    /// `requestTimeout`: the overall deadline.
    pub request_timeout: Duration,
}

impl BackupRequestConfig {
    pub fn for_method(refer: &Url, method: &str, desc: &str) -> BackupRequestConfig {
        let int = |key: &str, default: i64| refer.get_method_int(method, desc, key, default);
        let positive = |key: &str, default: i64| refer.get_method_positive_int(method, desc, key, default);
        let ms = |v: i64| (v > 0).then(|| Duration::from_millis(v as u64));
        BackupRequestConfig {
            retries: u32::try_from(int(keys::RETRIES, 0).max(0)).unwrap_or(u32::MAX),
            fixed_delay: ms(int("backupRequestDelayTime", 0)),
            delay_ratio: positive("backupRequestDelayRatio", DEFAULT_DELAY_RATIO).min(100) as u32,
            init_delay: ms(positive("backupRequestInitDelayTime", 0)),
            max_retry_ratio: positive("backupRequestMaxRetryRatio", DEFAULT_MAX_RETRY_RATIO).min(100) as u32,
            request_timeout: Duration::from_millis(positive(keys::REQUEST_TIMEOUT, 1000) as u64),
        }
    }
}

/// The per-method settings of a refer's calls, resolved once.
#[derive(Clone, Debug, PartialEq)]
pub struct CallSettings {
    pub timeouts: PerMethod<TimeoutSettings>,
    /// Failover retries (`retries`, values < 1 mean 0; failfast always 0).
    pub retries: PerMethod<u32>,
    pub backup: PerMethod<BackupRequestConfig>,
}

impl CallSettings {
    pub fn from_url(refer: &Url, ha: HaKind) -> CallSettings {
        let retries = match ha {
            HaKind::Failfast => PerMethod::uniform(0),
            _ => PerMethod::resolve(refer, |m, d| {
                u32::try_from(refer.get_method_positive_int(m, d, keys::RETRIES, 0)).unwrap_or(u32::MAX)
            }),
        };
        CallSettings {
            timeouts: TimeoutSettings::per_method(refer),
            retries,
            backup: PerMethod::resolve(refer, |m, d| BackupRequestConfig::for_method(refer, m, d)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn weight_refresh_period_only_for_wrr_with_dynamic_meta() {
        let wrr = Url::new("motan2", "", 0, "p", "g").with_param("loadbalance", "wrr");
        let c = LbConfig::from_url(&wrr).unwrap();
        assert_eq!(c.weight_refresh, Some(DEFAULT_WEIGHT_REFRESH_PERIOD));
        let one = wrr.clone().with_param(WEIGHT_REFRESH_PERIOD_KEY, "1");
        assert_eq!(
            LbConfig::from_url(&one).unwrap().weight_refresh,
            Some(Duration::from_secs(1))
        );
        let off = one.clone().with_param(DYNAMIC_META_KEY, "false");
        assert_eq!(LbConfig::from_url(&off).unwrap().weight_refresh, None);
        let random = Url::new("motan2", "", 0, "p", "g");
        assert_eq!(LbConfig::from_url(&random).unwrap().weight_refresh, None);
        for bad in ["0", "-3", "1.5", "x"] {
            let e = LbConfig::from_url(&wrr.clone().with_param(WEIGHT_REFRESH_PERIOD_KEY, bad)).unwrap_err();
            assert_eq!(e.key, WEIGHT_REFRESH_PERIOD_KEY, "{bad}");
        }
    }

    #[test]
    fn per_method_overrides_match_the_url_lookups() {
        let u = Url::new("motan2", "", 0, "p", "g")
            .with_param("requestTimeout", "300")
            .with_param("hello(java.lang.String).requestTimeout", "700")
            .with_param("bye().retries", "2")
            .with_param("retries", "1");
        let c = CallSettings::from_url(&u, HaKind::Failover);
        assert_eq!(
            c.timeouts.get("hello", "java.lang.String").for_request(None),
            ms(700)
        );
        assert_eq!(c.timeouts.get("hello", "").for_request(None), ms(300));
        assert_eq!(c.timeouts.get("other", "x").for_request(None), ms(300));
        assert_eq!(*c.retries.get("bye", ""), 2);
        assert_eq!(*c.retries.get("hello", "java.lang.String"), 1);
        assert_eq!(*c.retries.get("x", ""), 1);
        let ff = CallSettings::from_url(&u, HaKind::Failfast);
        assert_eq!(*ff.retries.get("bye", ""), 0);
        // The M_tmo window: [timeout/2, timeout*2] unless set.
        let t = c.timeouts.get("other", "");
        assert_eq!(t.for_request(Some("500")), ms(500));
        assert_eq!(t.for_request(Some("149")), ms(300));
        assert_eq!(t.for_request(Some("601")), ms(300));
        let b = CallSettings::from_url(
            &u.clone()
                .with_param("hello(java.lang.String).backupRequestDelayTime", "20"),
            HaKind::BackupRequest,
        );
        let backup = b.backup;
        assert_eq!(backup.get("hello", "java.lang.String").fixed_delay, Some(ms(20)));
        assert_eq!(backup.get("hello", "").fixed_delay, None);
        assert_eq!(backup.get("hello", "java.lang.String").request_timeout, ms(700));
    }

    #[test]
    fn timeout_honours_m_tmo_only_within_bounds() {
        let u = Url::new("motan2", "h", 1, "p", "g")
            .with_param("requestTimeout", "1000")
            .with_param("slow().requestTimeout", "4000");
        let ms = Duration::from_millis;
        let rt = |u: &Url, m: &str, d: &str, t: Option<&str>| {
            TimeoutSettings::per_method(u).get(m, d).for_request(t)
        };
        assert_eq!(rt(&u, "m", "", None), ms(1000));
        assert_eq!(rt(&u, "m", "", Some("500")), ms(500));
        assert_eq!(rt(&u, "m", "", Some("2000")), ms(2000));
        assert_eq!(rt(&u, "m", "", Some("499")), ms(1000));
        assert_eq!(rt(&u, "m", "", Some("2001")), ms(1000));
        assert_eq!(rt(&u, "m", "", Some("abc")), ms(1000));
        assert_eq!(rt(&u, "slow", "", None), ms(4000));
        assert_eq!(rt(&u, "slow", "", Some("8000")), ms(8000));
        let bounded = u.clone().with_param("maxRequestTimeout", "1200");
        assert_eq!(rt(&bounded, "m", "", Some("1500")), ms(1000));
        let none = Url::new("motan2", "h", 1, "p", "g");
        assert_eq!(rt(&none, "m", "", None), ms(1000));
    }
}
