//! Plain TCP forwarding to the original destination: full duplex, half-close propagated
//! (`copy_bidirectional` shuts down the write side when the other side reaches EOF), and
//! bounded buffers (one 8 KiB buffer per direction), so back-pressure reaches the sender.
//! The upstream connection comes from the socket factory (`crate::net`).
use tokio::net::TcpStream;

/// Forward until both directions are closed; returns (bytes app->upstream, upstream->app).
pub async fn forward(mut app: TcpStream, mut upstream: TcpStream) -> std::io::Result<(u64, u64)> {
    tokio::io::copy_bidirectional(&mut app, &mut upstream).await
}
