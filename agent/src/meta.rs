//! The agent's dynamic meta (motan-go's `meta` package): key/value pairs set at run time through
//! the admin API (`/meta/update`, `/meta/delete`) and served to other agents by the MetaService
//! (`com.weibo.api.motan.runtime.meta.MetaService.getDynamicMeta`, answered on the export
//! ports), whose callers read the wrr weight from it (`META_WEIGHT`). One store per process, as
//! upstream's; it starts empty and lives until exit (a reload keeps it).
use std::collections::BTreeMap;
use std::sync::{LazyLock, RwLock};

use crate::locks::Unpoisoned;

/// The framework service other agents call for this agent's dynamic meta.
pub const META_SERVICE: &str = "com.weibo.api.motan.runtime.meta.MetaService";
pub const META_METHOD: &str = "getDynamicMeta";
/// The meta key of an endpoint's wrr weight (motan-go's default prefix `META_` + `WEIGHT`).
pub const WEIGHT_KEY: &str = "META_WEIGHT";
/// motan-go's exception message for a framework service an agent does not serve.
pub const SERVICE_NOT_SUPPORT: &str = "service not support";

static DYNAMIC: LazyLock<RwLock<BTreeMap<String, String>>> = LazyLock::new(Default::default);

/// Set `pairs` (each replaces the key's value).
pub fn put_all(pairs: impl IntoIterator<Item = (String, String)>) {
    let mut m = DYNAMIC.write_unpoisoned();
    m.extend(pairs);
}

/// Remove `key`; whether it was there.
pub fn remove(key: &str) -> bool {
    DYNAMIC.write_unpoisoned().remove(key).is_some()
}

pub fn get(key: &str) -> Option<String> {
    DYNAMIC.read_unpoisoned().get(key).cloned()
}

/// All the dynamic meta, as the MetaService answers it.
pub fn all() -> BTreeMap<String, String> {
    DYNAMIC.read_unpoisoned().clone()
}
