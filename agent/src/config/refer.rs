//! Settings of a refer that the configuration types once and the cluster uses as they are.
use super::sections::SettingError;
use crate::protocol::motan2::{Frame, simple};
use crate::url::{Url, keys};

/// Where the consistent-hash key comes from (sockmesh extension): `meta:<key>` or `arg:<n>`
/// (the n-th argument of a simple-serialized body, 0-based). Default: meta `consistentHashKey`.
pub const HASH_KEY_SOURCE: &str = "consistentHashKey.source";

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
                let args = simple::decode_all(&req.body).ok()?;
                let v = args.get(*n)?;
                match v.as_str() {
                    Some(s) => Some(s.to_string()),
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
}

impl LbConfig {
    pub const MIN_HASH_LOAD: f64 = 1.1;

    pub fn new(kind: LbKind) -> LbConfig {
        LbConfig {
            kind,
            hash_part_size: 0,
            hash_load: Self::MIN_HASH_LOAD,
            hash_replica: 0,
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
        Ok(LbConfig {
            kind,
            hash_part_size: refer.get_int("consistentHashKey.partSize", 0).max(0) as usize,
            hash_load: load,
            hash_replica: refer.get_int("consistentHashKey.replica", 0).max(0) as usize,
        })
    }
}
