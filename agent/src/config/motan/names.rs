//! Section and key names of motan-go's configuration layout.
pub const REGISTRY_SECTION: &str = "motan-registry";
pub const BASIC_REFER_SECTION: &str = "motan-basicRefer";
pub const REFER_SECTION: &str = "motan-refer";
pub const BASIC_SERVICE_SECTION: &str = "motan-basicService";
pub const SERVICE_SECTION: &str = "motan-service";
pub const HTTP_CLIENT_SECTION: &str = "http-client";
pub const DYNAMIC_PARAM_SECTION: &str = "dynamic-param";
pub(super) const HTTP_LOCATIONS_SECTION: &str = "http-locations";

pub(super) const BASIC_REFER_KEY: &str = "basicRefer";
pub(super) const BASIC_SERVICE_KEY: &str = "basicService";
pub(super) const DEFAULT_FILTER_KEY: &str = "defaultFilter";
pub(super) const GLOBAL_FILTER_KEY: &str = "globalFilter";
pub(super) const DISABLE_DEFAULT_FILTER_KEY: &str = "disableDefaultFilter";
pub(super) const DISABLE_GLOBAL_FILTER_KEY: &str = "disableGlobalFilter";
/// Protocol of a refer that does not name one: sockmesh speaks motan2.
pub const DEFAULT_REFER_PROTOCOL: &str = "motan2";
