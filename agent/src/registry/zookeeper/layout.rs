//! motan's ZooKeeper node layout (the table in the `zookeeper` module doc) and how a server
//! node's name and data become a URL.
use crate::registry::CommandScope;
use crate::url::{Url, keys};

pub(super) const NAMESPACE: &str = "/motan";
/// The child of the namespace that holds agents, not a group.
pub(super) const AGENT_NODE: &str = "agent";
pub(super) const NODE_SERVER: &str = "server";
pub(super) const NODE_UNAVAILABLE: &str = "unavailableServer";
pub(super) const NODE_CLIENT: &str = "client";

/// `/motan/<group>/<path>/<kind>` of a service.
pub fn node_type_path(url: &Url, kind: &str) -> String {
    format!("{NAMESPACE}/{}/{}/{kind}", url.group, url.path)
}

/// `/motan/<group>/<path>/<kind>/<host:port>`.
pub fn node_path(url: &Url, kind: &str) -> String {
    format!("{}/{}:{}", node_type_path(url, kind), url.host, url.port)
}

/// `/motan/agent/<application>/node/<host:port>` of an agent URL.
pub fn agent_node_path(agent: &Url) -> String {
    format!(
        "{NAMESPACE}/{AGENT_NODE}/{}/node/{}:{}",
        agent.get_str(keys::APPLICATION, ""),
        agent.host,
        agent.port
    )
}

/// The command node of a scope (4.9).
pub fn command_path(scope: &CommandScope) -> String {
    match scope {
        CommandScope::Group(group) => format!("{NAMESPACE}/{group}/command"),
        CommandScope::Agent(application) => format!("{NAMESPACE}/agent/{application}/command"),
    }
}

/// The server URL of a child of `.../server`: the node data when it parses, else the refer
/// with the child name's host and port (4.9; upstream: `nodeChildsToURLs`).
pub fn server_from_node(refer: &Url, child: &str, data: &[u8]) -> Option<Url> {
    let text = Url::node_data_text(data);
    if !text.is_empty() {
        match Url::parse_node(&text) {
            Ok(u) => return Some(u),
            Err(e) => tracing::warn!(node = child, "{e}; using the node name"),
        }
    }
    let mut u = refer.clone();
    match child.rsplit_once(':') {
        Some((host, port)) => {
            u.host = host.to_string();
            u.port = port.parse().unwrap_or(0);
        }
        None => {
            u.host = child.to_string();
            u.port = 80;
        }
    }
    (!u.host.is_empty() || u.port != 0).then_some(u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::zookeeper::tests::service;

    #[test]
    fn paths_follow_the_motan_layout() {
        let s = service();
        assert_eq!(
            node_type_path(&s, NODE_SERVER),
            "/motan/g1/com.weibo.Hello/server"
        );
        assert_eq!(
            node_path(&s, NODE_UNAVAILABLE),
            "/motan/g1/com.weibo.Hello/unavailableServer/10.0.0.1:9982"
        );
        let agent = Url::new("motan2", "10.0.0.1", 8002, "", "").with_param("application", "app");
        assert_eq!(agent_node_path(&agent), "/motan/agent/app/node/10.0.0.1:8002");
        assert_eq!(
            command_path(&CommandScope::Group("g1".into())),
            "/motan/g1/command"
        );
        assert_eq!(
            command_path(&CommandScope::Agent("app".into())),
            "/motan/agent/app/command"
        );
    }

    #[test]
    fn server_nodes_from_data_or_name() {
        let refer = Url::new("motan2", "", 0, "com.weibo.Hello", "g1").with_param("requestTimeout", "300");
        let s = service();
        assert_eq!(
            server_from_node(&refer, "10.0.0.1:9982", s.to_node_string().as_bytes()),
            Some(s.clone())
        );
        // Java-serialized data.
        let text = s.to_node_string();
        let mut java = vec![0xAC, 0xED, 0x00, 0x05, 0x74, 0x00, text.len() as u8];
        java.extend_from_slice(text.as_bytes());
        assert_eq!(server_from_node(&refer, "x", &java), Some(s));
        // No data (or unparsable data): the refer at the node's address.
        let u = server_from_node(&refer, "10.0.0.9:8100", b"").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("10.0.0.9", 8100, "com.weibo.Hello")
        );
        assert_eq!(u.params["requestTimeout"], "300");
        let u = server_from_node(&refer, "10.0.0.9:8100", b"garbage").unwrap();
        assert_eq!(u.address(), "10.0.0.9:8100");
        let u = server_from_node(&refer, "hostonly", b"").unwrap();
        assert_eq!(u.address(), "hostonly:80");
        assert_eq!(server_from_node(&refer, ":x", b""), None);
    }
}
