//! Service discovery and registration (4.9). A `Registry` streams the server list of a refer
//! and, for the server role, registers exported services. `direct` is a static list;
//! ZooKeeper will implement the same trait.
pub mod direct;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;

use crate::url::Url;
pub use direct::DirectRegistry;

/// The full server list of one refer from one registry; every change replaces it whole.
pub type ServerList = Arc<Vec<Url>>;

/// Boxed future so that `Registry` stays object-safe (`Arc<dyn Registry>`).
pub type RegistryFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, RegistryError>> + Send + 'a>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {registry}: {message}")]
    Config { registry: String, message: String },
    #[error("registry protocol {0:?} is not supported (supported: direct)")]
    Unsupported(String),
    #[error("registry {registry}: {message}")]
    Unavailable { registry: String, message: String },
}

pub trait Registry: Send + Sync + std::fmt::Debug {
    /// The registry's own URL (from `motan-registry`).
    fn url(&self) -> &Url;

    /// Watch the servers of `refer`. The receiver holds the current list (possibly empty)
    /// and is notified of every change. When the sender side closes, the list will not change
    /// again: keep using the last value. Dropping the receiver unsubscribes.
    fn subscribe<'a>(&'a self, refer: &'a Url) -> RegistryFuture<'a, watch::Receiver<ServerList>>;

    /// Server role: make `service` known to callers, as unavailable (4.9 lifecycle).
    fn register<'a>(&'a self, service: &'a Url) -> RegistryFuture<'a, ()>;
    fn unregister<'a>(&'a self, service: &'a Url) -> RegistryFuture<'a, ()>;
    /// Move every registered service to available (`/200`) or back (`/503`); `None` = all.
    fn available<'a>(&'a self, service: Option<&'a Url>) -> RegistryFuture<'a, ()>;
    fn unavailable<'a>(&'a self, service: Option<&'a Url>) -> RegistryFuture<'a, ()>;
}

/// The registry for a `motan-registry` entry, by its protocol.
pub fn from_url(url: &Url) -> Result<Arc<dyn Registry>, RegistryError> {
    match url.protocol.as_str() {
        "direct" => Ok(Arc::new(DirectRegistry::new(url.clone())?)),
        other => Err(RegistryError::Unsupported(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factory_by_protocol() {
        let d = Url::new("direct", "", 0, "", "").with_param("address", "127.0.0.1:9982");
        let r = from_url(&d).unwrap();
        assert_eq!(r.url().protocol, "direct");
        let zk = Url::new("zookeeper", "127.0.0.1", 2181, "", "");
        assert_eq!(
            from_url(&zk).unwrap_err().to_string(),
            "registry protocol \"zookeeper\" is not supported (supported: direct)"
        );
    }
}
