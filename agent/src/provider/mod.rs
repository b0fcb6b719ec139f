//! Providers the server role calls besides Motan2 backends.
pub mod http;
