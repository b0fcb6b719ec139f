//! Plain TCP forwarding to the original destination: full duplex, half-close propagated
//! (`copy_bidirectional` shuts down the write side when the other side reaches EOF), and
//! bounded buffers (one 8 KiB buffer per direction), so back-pressure reaches the sender.
use std::net::SocketAddrV4;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::{TcpSocket, TcpStream};

/// Connect to `dst` with the agent's socket mark, so the connect hook never intercepts the
/// agent's own connections (no loops), in eBPF and iptables mode alike. `socket`, when given,
/// is a fresh socket made in another network namespace (see intercept/netns.rs).
pub async fn connect_marked(
    dst: SocketAddrV4,
    mark: u32,
    timeout: Duration,
    socket: Option<socket2::Socket>,
) -> Result<TcpStream> {
    let sock = match socket {
        Some(s) => {
            s.set_nonblocking(true)?;
            TcpSocket::from_std_stream(s.into())
        }
        None => TcpSocket::new_v4()?,
    };
    if mark != 0 {
        socket2::SockRef::from(&sock)
            .set_mark(mark)
            .context("setting SO_MARK (needs CAP_NET_ADMIN)")?;
    }
    sock.set_nodelay(true)?;
    let stream = tokio::time::timeout(timeout, sock.connect(dst.into()))
        .await
        .with_context(|| format!("connecting to {dst}: timed out after {timeout:?}"))?
        .with_context(|| format!("connecting to {dst}"))?;
    Ok(stream)
}

/// Forward until both directions are closed; returns (bytes app->upstream, upstream->app).
pub async fn forward(mut app: TcpStream, mut upstream: TcpStream) -> std::io::Result<(u64, u64)> {
    tokio::io::copy_bidirectional(&mut app, &mut upstream).await
}
