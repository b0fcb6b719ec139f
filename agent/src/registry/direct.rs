//! The `direct` registry (4.9): a static server list from `host` + `port` or
//! `address: "h1:p1,h2:p2"` (entries may be `unix://path`). A discovered server is the refer
//! with host and port replaced (and the registry's group, if it has one). Registration is a
//! no-op: there is nobody to tell.
use std::sync::Arc;

use tokio::sync::watch;

use super::{Registry, RegistryError, RegistryFuture, ServerList};
use crate::url::{UNIX_SOCK_PREFIX, Url, keys};

#[derive(Debug)]
pub struct DirectRegistry {
    url: Url,
    servers: Vec<Server>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Server {
    host: String,
    port: u16,
}

impl DirectRegistry {
    pub fn new(url: Url) -> Result<DirectRegistry, RegistryError> {
        let servers = parse_servers(&url).map_err(|message| RegistryError::Config {
            registry: url.get_str(keys::CONF_ID, &url.identity()).to_string(),
            message,
        })?;
        Ok(DirectRegistry { url, servers })
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

/// `host`+`port` when both are set, else the `address` list. Every entry must parse (upstream
/// skips bad ones silently; a typo in a static list is better reported).
fn parse_servers(url: &Url) -> Result<Vec<Server>, String> {
    if !url.host.is_empty() && url.port > 0 {
        return Ok(vec![Server {
            host: url.host.clone(),
            port: url.port,
        }]);
    }
    let list = url.get_list(keys::ADDRESS);
    if list.is_empty() {
        return Err("needs host and port, or address: \"host:port,host:port\"".into());
    }
    list.into_iter()
        .map(|e| parse_address(e).map(|(host, port)| Server { host, port }))
        .collect()
}

/// One `host:port` or `unix://path` entry of an address list, as (host, port); a unix socket
/// has the whole entry as host and port 0.
pub fn parse_address(entry: &str) -> Result<(String, u16), String> {
    if entry.starts_with(UNIX_SOCK_PREFIX) {
        return Ok((entry.to_string(), 0));
    }
    match entry.rsplit_once(':') {
        Some((host, port)) if !host.trim().is_empty() => match port.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok((host.trim().to_string(), p)),
            _ => Err(format!(
                "address entry {entry:?}: port must be a number in 1..65535"
            )),
        },
        _ => Err(format!("address entry {entry:?} is not host:port or unix://path")),
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
