//! The `direct` registry (4.9): a static server list from `host` + `port` or
//! `address: "h1:p1,h2:p2"` (entries may be `unix://path`). A discovered server is the refer
//! with host and port replaced (and the registry's group, if it has one). Registration is a
//! no-op: there is nobody to tell.
use std::sync::Arc;

use tokio::sync::watch;

use super::{Registry, RegistryError, RegistryFuture, ServerList};
use crate::config::registry::{DirectSpec, ServerAddr};
use crate::url::Url;

#[derive(Debug)]
pub struct DirectRegistry {
    url: Url,
    servers: Vec<ServerAddr>,
}

impl DirectRegistry {
    /// The registry of a `direct` URL; fails as [`DirectSpec::from_url`] does.
    pub fn new(url: Url) -> Result<DirectRegistry, RegistryError> {
        let spec = DirectSpec::from_url(&url).map_err(|e| RegistryError::setting(&url, e))?;
        Ok(DirectRegistry::with_spec(url, spec))
    }

    pub fn with_spec(url: Url, spec: DirectSpec) -> DirectRegistry {
        DirectRegistry {
            url,
            servers: spec.servers,
        }
    }

    /// The server URLs for `refer`.
    pub fn discover(&self, refer: &Url) -> Vec<Url> {
        self.servers
            .iter()
            .map(|s| {
                let mut u = refer.clone();
                u.host = s.host.clone();
                u.port = s.port;
                if !self.url.group.is_empty() {
                    u.group = self.url.group.clone();
                }
                u
            })
            .collect()
    }
}

impl Registry for DirectRegistry {
    fn url(&self) -> &Url {
        &self.url
    }

    fn subscribe<'a>(&'a self, refer: &'a Url) -> RegistryFuture<'a, watch::Receiver<ServerList>> {
        // The list never changes: the sender is dropped at once, which tells the subscriber
        // that the current value is final.
        let (_tx, rx) = watch::channel(Arc::new(self.discover(refer)));
        Box::pin(async move { Ok(rx) })
    }

    fn register<'a>(&'a self, service: &'a Url) -> RegistryFuture<'a, ()> {
        tracing::debug!(service = %service.identity(), "direct registry: register is a no-op");
        Box::pin(async { Ok(()) })
    }

    fn unregister<'a>(&'a self, _service: &'a Url) -> RegistryFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn available<'a>(&'a self, _service: Option<&'a Url>) -> RegistryFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn unavailable<'a>(&'a self, _service: Option<&'a Url>) -> RegistryFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refer() -> Url {
        Url::new("motan2", "", 0, "com.example.UserService", "user-rpc").with_param("requestTimeout", "800")
    }

    #[tokio::test]
    async fn address_list_becomes_servers_of_the_refer() {
        let reg = DirectRegistry::new(
            Url::new("direct", "", 0, "", "")
                .with_param("address", "127.0.0.5:9982, 127.0.0.6:9983,unix:///run/x.sock"),
        )
        .unwrap();
        let mut rx = reg.subscribe(&refer()).await.unwrap();
        let list = rx.borrow_and_update().clone();
        let addrs: Vec<String> = list.iter().map(Url::address).collect();
        assert_eq!(addrs, ["127.0.0.5:9982", "127.0.0.6:9983", "unix:///run/x.sock"]);
        assert!(
            list.iter()
                .all(|u| u.path == "com.example.UserService" && u.group == "user-rpc")
        );
        assert_eq!(list[0].params["requestTimeout"], "800");
        assert!(list.iter().all(|u| u.can_serve(&refer())));
        // Static: no further change will come.
        assert!(rx.changed().await.is_err());
    }

    #[test]
    fn host_and_port_and_registry_group() {
        let reg = DirectRegistry::new(Url::new("direct", "127.0.0.9", 8100, "", "other-group")).unwrap();
        let list = reg.discover(&refer());
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].address(), "127.0.0.9:8100");
        assert_eq!(list[0].group, "other-group");
    }

    #[test]
    fn bad_addresses_are_reported() {
        let err = |addr: &str| {
            DirectRegistry::new(
                Url::new("direct", "", 0, "", "")
                    .with_param("address", addr)
                    .with_param("conf-id", "d"),
            )
            .unwrap_err()
            .to_string()
        };
        assert!(err("127.0.0.1").contains("not host:port"), "{}", err("127.0.0.1"));
        assert!(err("127.0.0.1:x").contains("port must be"));
        assert!(err("127.0.0.1:0").contains("port must be"));
        assert!(err("").starts_with("registry d: needs host and port"));
        assert!(DirectRegistry::new(Url::new("direct", "", 0, "", "")).is_err());
    }

    #[tokio::test]
    async fn server_role_calls_are_no_ops() {
        let reg: Arc<dyn Registry> =
            Arc::new(DirectRegistry::new(Url::new("direct", "127.0.0.1", 1, "", "")).unwrap());
        let svc = refer();
        reg.register(&svc).await.unwrap();
        reg.available(None).await.unwrap();
        reg.unavailable(Some(&svc)).await.unwrap();
        reg.unregister(&svc).await.unwrap();
    }
}
