//! The connection to ZooKeeper: establishing a session, and the requests made in one (each
//! bounded by `OP_TIMEOUT`). What a session is used for lives in `register` (nodes of the
//! server role), `subscriptions` (watches) and `run` (the session loop).
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use crate::url::Url;

/// Bound of one ZooKeeper request: requests made while disconnected wait for a reconnection.
pub(super) const OP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub(super) struct Session {
    pub(super) client: zk::Client,
    pub(super) id: i64,
    /// Cancelled when the session ends: its watch tasks stop.
    pub(super) token: CancellationToken,
}

/// Establish a session with one of `servers` (a connect string), giving up after
/// `session_timeout`.
pub(super) async fn connect(servers: &str, session_timeout: Duration) -> Result<zk::Client, zk::Error> {
    let connect = zk::Client::connector()
        .with_session_timeout(session_timeout)
        .with_fail_eagerly()
        .connect(servers);
    tokio::time::timeout(session_timeout, connect)
        .await
        .unwrap_or(Err(zk::Error::Timeout))
}

/// One ZooKeeper request, bounded by `OP_TIMEOUT`.
pub(super) async fn op<T>(
    f: impl std::future::Future<Output = Result<T, zk::Error>>,
) -> Result<T, zk::Error> {
    tokio::time::timeout(OP_TIMEOUT, f)
        .await
        .unwrap_or(Err(zk::Error::Timeout))
}

/// The local address of a TCP connection to the first reachable server.
pub(super) async fn local_ip_towards(servers: &str) -> String {
    for server in servers.split(',') {
        let connect = tokio::net::TcpStream::connect(server.trim());
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(2), connect).await
            && let Ok(addr) = stream.local_addr()
        {
            return addr.ip().to_string();
        }
    }
    tracing::warn!(
        servers,
        "could not find the local IP towards zookeeper; using 127.0.0.1"
    );
    "127.0.0.1".into()
}

/// Delete a node if it exists.
pub(super) async fn delete_node(session: &Session, path: &str) -> Result<(), zk::Error> {
    match op(session.client.delete(path, None)).await {
        Ok(()) | Err(zk::Error::NoNode) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Make `path` an ephemeral node of this session holding `url` as node data. A node that
/// already is exactly that is left alone; any other (another session's, other data) is
/// replaced, as upstream's remove-then-create.
pub(super) async fn ensure_node(session: &Session, path: &str, url: &Url) -> Result<(), zk::Error> {
    let data = url.to_node_string();
    match op(session.client.get_data(path)).await {
        Ok((current, stat)) if stat.ephemeral_owner == session.id && current == data.as_bytes() => {
            return Ok(());
        }
        Ok(_) => delete_node(session, path).await?,
        Err(zk::Error::NoNode) => {}
        Err(e) => return Err(e),
    }
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    match op(session.client.create(path, data.as_bytes(), &ephemeral)).await {
        Ok(_) => Ok(()),
        Err(zk::Error::NoNode) => {
            let parent = &path[..path.rfind('/').unwrap_or(0)];
            let dir = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
            op(session.client.mkdir(parent, &dir)).await?;
            op(session.client.create(path, data.as_bytes(), &ephemeral))
                .await
                .map(|_| ())
        }
        Err(e) => Err(e),
    }
}
