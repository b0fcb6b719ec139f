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
