//! Service discovery and registration (4.9). A `Registry` streams the server list of a refer
//! and the registry's command texts (4.10), and, for the server role, registers exported
//! services. `direct` is a static list; `zookeeper` is motan's ZooKeeper layout.
//! `dynamic` holds what the admin API registered and subscribed at run time (and its snapshot).
pub mod command;
pub mod direct;
pub mod dynamic;
pub mod zookeeper;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::SettingError;
use crate::config::registry::{PROTOCOLS, RegistrySpec};
use crate::url::{Url, keys};
pub use direct::DirectRegistry;
pub use zookeeper::{ZkOptions, ZkRegistry};

/// The full server list of one refer from one registry; every change replaces it whole.
pub type ServerList = Arc<Vec<Url>>;

/// Boxed future so that `Registry` stays object-safe (`Arc<dyn Registry>`).
pub type RegistryFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, RegistryError>> + Send + 'a>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {registry}: {message}")]
    Config { registry: String, message: String },
    #[error("registry protocol {0:?} is not supported (supported: direct, zookeeper)")]
    Unsupported(String),
    /// The registry's servers could not be reached. A registration request that fails this
    /// way is remembered and applied in the background once they can.
    #[error("registry {registry}: {message}")]
    Unavailable { registry: String, message: String },
}

impl RegistryError {
    /// A setting of the registry `url` that cannot be used (the reason only, as the caller
    /// knows the registry's URL).
    pub fn setting(url: &Url, e: SettingError) -> RegistryError {
        RegistryError::Config {
            registry: url.get_str(keys::CONF_ID, &url.identity()).to_string(),
            message: e.reason,
        }
    }
}

/// Which command node to watch (4.9, 4.10).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CommandScope {
    /// The service command of a group: `/motan/<group>/command`.
    Group(String),
    /// The agent command of an application: `/motan/agent/<application>/command`.
    Agent(String),
}

pub trait Registry: Send + Sync + std::fmt::Debug {
    /// The registry's own URL (from `motan-registry`).
    fn url(&self) -> &Url;

    /// Watch the servers of `refer`. The receiver holds the current list (possibly empty)
    /// and is notified of every change. When the sender side closes, the list will not change
    /// again: keep using the last value. Dropping the receiver unsubscribes.
    fn subscribe<'a>(&'a self, refer: &'a Url) -> RegistryFuture<'a, watch::Receiver<ServerList>>;

    /// One look at the servers of `refer` (its group and path) as the registry has them now,
    /// following nothing (motan-go's `Discover`; `${idc}` resolution probes groups with it).
    /// The default takes a subscription's current value.
    fn discover<'a>(&'a self, refer: &'a Url) -> RegistryFuture<'a, Vec<Url>> {
        Box::pin(async move { Ok(self.subscribe(refer).await?.borrow().as_ref().clone()) })
    }

    /// Every group the registry holds (for `${idc}` resolution), or `None` when it cannot list
    /// them (upstream's `GroupDiscoverableRegistry`; of ours only ZooKeeper can).
    fn list_groups(&self) -> RegistryFuture<'_, Option<Vec<String>>> {
        Box::pin(async { Ok(None) })
    }

    /// Server role: make `service` known to callers, as unavailable (4.9 lifecycle).
    fn register<'a>(&'a self, service: &'a Url) -> RegistryFuture<'a, ()>;
    fn unregister<'a>(&'a self, service: &'a Url) -> RegistryFuture<'a, ()>;
    /// Move every registered service to available (`/200`) or back (`/503`); `None` = all.
    fn available<'a>(&'a self, service: Option<&'a Url>) -> RegistryFuture<'a, ()>;
    fn unavailable<'a>(&'a self, service: Option<&'a Url>) -> RegistryFuture<'a, ()>;

    /// Register the agent itself (`/motan/agent/<application>/node/...` in ZooKeeper), so
    /// that agent commands can address it. A no-op where the registry has no such record.
    fn register_agent<'a>(&'a self, _agent: &'a Url) -> RegistryFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    /// Watch a command node's text (`None`: no command). Like `subscribe`: the receiver holds
    /// the current value; a closed sender means it will not change again, which is what a
    /// registry without commands answers.
    fn subscribe_commands<'a>(
        &'a self,
        _scope: &'a CommandScope,
    ) -> RegistryFuture<'a, watch::Receiver<Option<String>>> {
        let (_tx, rx) = watch::channel(None);
        Box::pin(async move { Ok(rx) })
    }

    /// State for the admin API (`/registry/status`-like): at least the protocol and identity.
    fn status(&self) -> serde_json::Value {
        serde_json::json!({"protocol": self.url().protocol, "registry": self.url().identity()})
    }
}

/// The registry for a `motan-registry` entry, by its protocol.
pub fn from_url(url: &Url) -> Result<Arc<dyn Registry>, RegistryError> {
    if !PROTOCOLS.contains(&url.protocol.as_str()) {
        return Err(RegistryError::Unsupported(url.protocol.clone()));
    }
    let spec = RegistrySpec::from_url(url).map_err(|e| RegistryError::setting(url, e))?;
    build(url, spec, ZkOptions::default())
}

/// The registry of `url` from its spec; `zk`: what a ZooKeeper registry takes besides it.
pub fn build(url: &Url, spec: RegistrySpec, zk: ZkOptions) -> Result<Arc<dyn Registry>, RegistryError> {
    Ok(match spec {
        RegistrySpec::Direct(d) => Arc::new(DirectRegistry::with_spec(url.clone(), d)),
        RegistrySpec::Zookeeper(z) => Arc::new(ZkRegistry::with_spec(url.clone(), z, zk)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn factory_by_protocol() {
        let d = Url::new("direct", "", 0, "", "").with_param("address", "127.0.0.1:9982");
        let r = from_url(&d).unwrap();
        assert_eq!(r.url().protocol, "direct");
        assert_eq!(r.status()["protocol"], "direct");
        // The default command watch: nothing, and it never changes.
        let mut cmd = r
            .subscribe_commands(&CommandScope::Group("g".into()))
            .await
            .unwrap();
        assert_eq!(*cmd.borrow_and_update(), None);
        assert!(cmd.changed().await.is_err());
        // A closed port: created all the same, connecting in the background.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let zk = Url::new("zookeeper", "127.0.0.1", port, "", "");
        let r = from_url(&zk).unwrap();
        assert_eq!(r.status()["protocol"], "zookeeper");
        let consul = Url::new("consul", "127.0.0.1", 8500, "", "");
        assert_eq!(
            from_url(&consul).unwrap_err().to_string(),
            "registry protocol \"consul\" is not supported (supported: direct, zookeeper)"
        );
    }
}
