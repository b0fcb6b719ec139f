//! The one socket factory (as ztunnel's `SocketFactory`): every upstream socket the agent makes
//! (pooled Motan2 channels, passthrough connections to original destinations) comes from
//! [`SocketFactory::connect`], so all of them carry the agent's mark (the connect hook and the
//! iptables chain never intercept the agent itself), are made in the right network namespace,
//! have TCP_NODELAY and a bounded connect time. Nothing else in the agent calls `connect(2)`
//! for upstreams.
use std::fs::File;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;

/// Connect timeout of passthrough connections (an app's own connect would wait for the kernel's
/// SYN retries, minutes; an agent that holds the app that long looks hung).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Makes the agent's upstream sockets.
#[derive(Clone, Debug)]
pub struct SocketFactory {
    mark: u32,
    connect_timeout: Duration,
    netns: Option<NetnsSockets>,
}

impl Default for SocketFactory {
    fn default() -> Self {
        SocketFactory::new(0, DEFAULT_CONNECT_TIMEOUT)
    }
}

impl SocketFactory {
    /// `mark` 0 sets no mark (tests without interception).
    pub fn new(mark: u32, connect_timeout: Duration) -> SocketFactory {
        SocketFactory {
            mark,
            connect_timeout,
            netns: None,
        }
    }

    /// The same factory making its sockets inside another network namespace.
    pub fn in_namespace(&self, netns: NetnsSockets) -> SocketFactory {
        SocketFactory {
            netns: Some(netns),
            ..self.clone()
        }
    }

    pub fn mark(&self) -> u32 {
        self.mark
    }

    /// Whether the sockets are made inside another network namespace (`in_namespace`).
    pub fn in_other_namespace(&self) -> bool {
        self.netns.is_some()
    }

    /// Connect to `dst` within the factory's connect timeout.
    pub async fn connect(&self, dst: SocketAddr) -> Result<TcpStream> {
        self.connect_within(dst, self.connect_timeout).await
    }

    /// Connect to `dst` within `timeout` (a refer's `connectTimeout`).
    pub async fn connect_within(&self, dst: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        let domain = Domain::for_address(dst);
        let socket = match &self.netns {
            Some(ns) => ns.socket(domain).await?,
            None => Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?,
        };
        if self.mark != 0 {
            socket
                .set_mark(self.mark)
                .context("setting SO_MARK (needs CAP_NET_ADMIN)")?;
        }
        socket.set_tcp_nodelay(true)?;
        socket.set_nonblocking(true)?;
        let sock = TcpSocket::from_std_stream(socket.into());
        tokio::time::timeout(timeout, sock.connect(dst))
            .await
            .with_context(|| format!("connecting to {dst}: timed out after {timeout:?}"))?
            .with_context(|| format!("connecting to {dst}"))
    }
}

/// Creates TCP sockets inside one network namespace, from a thread that lives there (a socket
/// belongs to the namespace it was created in).
#[derive(Clone, Debug)]
pub struct NetnsSockets {
    tx: mpsc::Sender<(Domain, oneshot::Sender<std::io::Result<Socket>>)>,
}

impl NetnsSockets {
    /// Start the namespace thread in the namespace `ns_file` refers to (opened by the caller, who
    /// checked it is the one it meant); returns the factory and a listener bound in the
    /// namespace. The thread ends when the last copy of the factory is dropped.
    pub fn start(ns_file: File, listen: SocketAddrV4) -> Result<(NetnsSockets, std::net::TcpListener)> {
        let (tx, rx) = mpsc::channel::<(Domain, oneshot::Sender<std::io::Result<Socket>>)>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("sockmesh-netns".into())
            .spawn(move || {
                // SAFETY: setns on this thread only; the thread never goes back to the host namespace.
                if unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let _ = ready_tx.send(Err(std::io::Error::last_os_error()));
                    return;
                }
                let l = std::net::TcpListener::bind(listen);
                let _ = ready_tx.send(l);
                while let Ok((domain, reply)) = rx.recv() {
                    let _ = reply.send(Socket::new(domain, Type::STREAM, Some(Protocol::TCP)));
                }
            })?;
        let listener = ready_rx
            .recv()
            .context("netns thread died")?
            .with_context(|| format!("binding {listen} inside the namespace"))?;
        Ok((NetnsSockets { tx }, listener))
    }

    /// A new, unconnected TCP socket in the namespace.
    pub async fn socket(&self, domain: Domain) -> Result<Socket> {
        let (tx, rx) = oneshot::channel();
        self.tx.send((domain, tx)).context("netns thread gone")?;
        Ok(rx.await.context("netns thread gone")??)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connects_v4_and_v6_and_reports_refusals_with_the_address() {
        let l4 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let f = SocketFactory::default();
        let s = f.connect(l4.local_addr().unwrap()).await.unwrap();
        assert!(s.nodelay().unwrap());
        if let Ok(l6) = tokio::net::TcpListener::bind("[::1]:0").await {
            f.connect(l6.local_addr().unwrap()).await.unwrap();
        }
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let e = f.connect(closed).await.unwrap_err();
        assert!(format!("{e:#}").contains(&closed.to_string()), "{e:#}");
    }
}
