//! Plain TCP forwarding to the original destination: full duplex, half-close propagated
//! (`copy_bidirectional` shuts down the write side when the other side reaches EOF), and
//! bounded buffers (one 8 KiB buffer per direction), so back-pressure reaches the sender.
//! The upstream connection comes from the socket factory (`crate::net`).
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;

use super::read_hook::{Hooked, ReadHook};

/// Forward until both directions are closed, or nothing moved either way for `idle`; returns
/// (bytes app->upstream, upstream->app).
pub async fn forward(
    app: TcpStream,
    upstream: TcpStream,
    idle: Option<Duration>,
) -> std::io::Result<(u64, u64)> {
    let Some(idle) = idle else {
        let (mut app, mut upstream) = (app, upstream);
        return tokio::io::copy_bidirectional(&mut app, &mut upstream).await;
    };
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let noted = |inner| Hooked {
        inner,
        hook: LastRead {
            start,
            last: last.clone(),
        },
    };
    let (mut app, mut upstream) = (noted(app), noted(upstream));
    let copy = tokio::io::copy_bidirectional(&mut app, &mut upstream);
    tokio::pin!(copy);
    loop {
        let quiet_since = start + Duration::from_millis(last.load(Ordering::Relaxed));
        tokio::select! {
            r = &mut copy => return r,
            _ = tokio::time::sleep_until((quiet_since + idle).into()) => {
                let now = Instant::now();
                let seen = start + Duration::from_millis(last.load(Ordering::Relaxed));
                if now.duration_since(seen) >= idle {
                    return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle timeout"));
                }
            }
        }
    }
}

/// Notes when data last arrived on a stream (ms since `start`).
struct LastRead {
    start: Instant,
    last: Arc<AtomicU64>,
}

impl ReadHook for LastRead {
    fn poll_read<S: AsyncRead + Unpin>(
        &mut self,
        inner: &mut S,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let ms = self.start.elapsed().as_millis() as u64;
            self.last.store(ms, Ordering::Relaxed);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn a_quiet_connection_is_closed_after_the_idle_timeout() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = l.local_addr().unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app_addr = l2.local_addr().unwrap();
        let mut client = TcpStream::connect(app_addr).await.unwrap();
        let (app, _) = l2.accept().await.unwrap();
        let upstream = TcpStream::connect(up_addr).await.unwrap();
        let (mut server, _) = l.accept().await.unwrap();
        let fwd = tokio::spawn(forward(app, upstream, Some(Duration::from_millis(150))));
        // Activity keeps it open past the timeout.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(80)).await;
            client.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            server.read_exact(&mut b).await.unwrap();
        }
        let r = tokio::time::timeout(Duration::from_secs(2), fwd)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
    }
}
