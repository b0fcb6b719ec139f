//! The one socket factory (as ztunnel's `SocketFactory`): every upstream socket the agent makes
//! (pooled Motan2 channels, passthrough connections to original destinations) comes from
//! [`SocketFactory::connect`], so all of them carry the agent's mark (the connect hook and the
//! iptables chain never intercept the agent itself), are made in the right network namespace,
//! have TCP_NODELAY and a bounded connect time. Nothing else in the agent calls `connect(2)`
//! for upstreams.
//!
//! The transparent listeners come from here too ([`SocketFactory::bind_listener`]): they carry
//! the same mark, which is how the kernel programs know them from any other process's
//! listener on the same address (see ARCHITECTURE.md, "Threat model").
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;

/// TCP keepalive of every upstream socket.
const UPSTREAM_KEEPALIVE: TcpKeepalive = TcpKeepalive::new()
    .with_time(Duration::from_secs(15))
    .with_interval(Duration::from_secs(15))
    .with_retries(9);

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

    /// Whether the sockets are made inside another network namespace (`in_namespace`).
    pub fn in_other_namespace(&self) -> bool {
        self.netns.is_some()
    }

    /// A transparent listener at `addr`, made in the factory's namespace like its upstream
    /// sockets; it gets the factory's mark when it is ready to serve. On the host, with
    /// data-plane shards, it is a group of one socket per shard ([`listen_group`]).
    pub async fn bind_listener(&self, addr: SocketAddr) -> Result<TransparentListener> {
        let bound = match &self.netns {
            Some(ns) => listen_at(ns.socket(Domain::for_address(addr)).await?, addr).map(|l| vec![l]),
            None => listen_group(addr, crate::shard::count()),
        };
        let listeners = bound.map_err(|e| {
            anyhow::Error::new(e).context(format!("binding the transparent listener on {addr}"))
        })?;
        let addr = listeners[0].local_addr()?;
        Ok(TransparentListener {
            listeners,
            addr,
            mark: self.mark,
        })
    }

    /// The transparent listeners at `addrs`: the first (IPv4) is required; without one of the
    /// others (IPv6) the agent serves the rest, and connects of that family go direct.
    pub async fn bind_listeners(&self, addrs: &[SocketAddr]) -> Result<Vec<TransparentListener>> {
        let mut out = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            match self.bind_listener(*addr).await {
                Ok(l) => out.push(l),
                Err(e) if i == 0 => return Err(e),
                Err(e) if ipv6_unavailable(&e) => {
                    tracing::info!("no IPv6 here, so IPv6 connects are not intercepted: {e:#}")
                }
                Err(e) => tracing::warn!("{e:#}; connects to {addr}'s family are not intercepted"),
            }
        }
        Ok(out)
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
        // A dead upstream host (no RST ever comes) is found within about 2.5 minutes instead of
        // the kernel's 2 hours: Go's dialer default (15 s idle, 15 s probes), which motan-go
        // uses, with the kernel's 9 probes.
        socket.set_tcp_keepalive(&UPSTREAM_KEEPALIVE)?;
        socket.set_nonblocking(true)?;
        let sock = TcpSocket::from_std_stream(socket.into());
        tokio::time::timeout(timeout, sock.connect(dst))
            .await
            .with_context(|| format!("connecting to {dst}: timed out after {timeout:?}"))?
            .with_context(|| format!("connecting to {dst}"))
    }
}

/// A transparent listener. It is bound and listening from the start, so the address is the
/// agent's (no other process can listen there), but it carries the agent's mark only once
/// [`TransparentListener::ready`] is called: the connect hook only redirects to a listening
/// socket with the agent's mark, so until the agent serves, apps keep connecting directly
/// (fail-open) instead of waiting in a backlog.
#[derive(Debug)]
pub struct TransparentListener {
    /// One socket, or one per data-plane shard.
    listeners: Vec<std::net::TcpListener>,
    addr: SocketAddr,
    mark: u32,
}

impl TransparentListener {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Put the agent's mark on it: from now on the connect hook redirects here (and the
    /// sockets accepted from it inherit the mark, which is what lets them read original
    /// destinations). Non-blocking, for the runtime (or shard) that serves each.
    pub fn ready(self) -> Result<Vec<std::net::TcpListener>> {
        let mut out = Vec::with_capacity(self.listeners.len());
        for l in self.listeners {
            let socket = Socket::from(l);
            if self.mark != 0 {
                socket
                    .set_mark(self.mark)
                    .with_context(|| format!("setting SO_MARK on the listener {}", self.addr))?;
            }
            socket.set_nonblocking(true)?;
            out.push(socket.into());
        }
        Ok(out)
    }
}

/// Whether binding failed because this host (or namespace) has no IPv6 (no ::1, or no IPv6 at
/// all): then there is no IPv6 listener, and native IPv6 connects are not intercepted there.
pub fn ipv6_unavailable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>().is_some_and(|e| {
            matches!(
                e.raw_os_error(),
                Some(libc::EADDRNOTAVAIL) | Some(libc::EAFNOSUPPORT)
            )
        })
    })
}

/// SO_REUSEADDR (as every listener has: a restarted agent binds despite TIME_WAIT connections;
/// it never lets two listening sockets share the address), IPV6_V6ONLY for IPv6 (IPv4-mapped
/// connections belong to the IPv4 listener), bind, listen.
fn listen_at(socket: Socket, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    bind_at(&socket, addr)?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// [`listen_at`] up to the bind.
fn bind_at(socket: &Socket, addr: SocketAddr) -> io::Result<()> {
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())
}

/// A listening address served by `n` data-plane shards: `n` sockets with SO_REUSEPORT, one per
/// shard, and the kernel spreads new connections over them by their 4-tuple hash, so each
/// shard accepts what it serves (no hand-over between threads per connection). With `n` ≤ 1,
/// one socket ([`listen_at`]).
///
/// SO_REUSEPORT lets another socket of the same user join the group, so the address is first
/// bound without it: if anything listens there (a second daemon, whichever user), that bind
/// fails with "Address already in use" as a plain listener's would. Only sockets of the same
/// user can join a group afterwards (the kernel checks), and one that does gets no connection
/// ([`select_within`]).
pub fn listen_group(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let socket = || Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP));
    if n <= 1 {
        return Ok(vec![listen_at(socket()?, addr)?]);
    }
    let at = {
        let probe = socket()?;
        bind_at(&probe, addr)?;
        probe
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("bound socket without an address"))?
    };
    let group = (0..n)
        .map(|_| {
            let s = socket()?;
            s.set_reuse_port(true)?;
            listen_at(s, at)
        })
        .collect::<io::Result<Vec<_>>>()?;
    if let Err(e) = select_within(&group[0], n) {
        // Without the program a socket that joined would get connections: one socket instead,
        // whose accept loop hands connections to the shards.
        tracing::warn!(
            "{at}: cannot attach the reuseport program ({e}); one listening socket for all shards"
        );
        drop(group);
        return Ok(vec![listen_at(socket()?, at)?]);
    }
    Ok(group)
}

/// Make the kernel pick one of the group's first `n` sockets (ours) for each new connection, at
/// random: a classic BPF program on the group (SO_ATTACH_REUSEPORT_CBPF) that returns an index
/// below `n`. Without it, a socket another process of the same user made with SO_REUSEPORT at
/// the address would join the group and get its share of the connections; with it, such a
/// socket is never chosen (while all of ours listen, which is until shutdown).
fn select_within(member: &std::net::TcpListener, n: usize) -> io::Result<()> {
    let ins = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let mut program = [
        // A = a random u32; A %= n; return A (the index of the socket in the group).
        ins(
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            (libc::SKF_AD_OFF + libc::SKF_AD_RANDOM) as u32,
        ),
        ins(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, n as u32),
        ins(libc::BPF_RET | libc::BPF_A, 0),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: setsockopt on a socket we own, with a valid sock_fprog that outlives the call.
    let r = unsafe {
        libc::setsockopt(
            member.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Creates TCP sockets inside one network namespace, from a thread that lives there (a socket
/// belongs to the namespace it was created in).
#[derive(Clone, Debug)]
pub struct NetnsSockets {
    tx: mpsc::Sender<(Domain, oneshot::Sender<std::io::Result<Socket>>)>,
}

impl NetnsSockets {
    /// Start the namespace thread in the namespace `ns_file` refers to (opened by the caller, who
    /// checked it is the one it meant). The thread ends when the last copy of the factory is
    /// dropped.
    pub fn start(ns_file: File) -> Result<NetnsSockets> {
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
                let _ = ready_tx.send(Ok(()));
                while let Ok((domain, reply)) = rx.recv() {
                    let _ = reply.send(Socket::new(domain, Type::STREAM, Some(Protocol::TCP)));
                }
            })?;
        ready_rx
            .recv()
            .context("netns thread died")?
            .context("entering the network namespace")?;
        Ok(NetnsSockets { tx })
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
    async fn transparent_listener_holds_its_address_from_the_start() {
        let f = SocketFactory::default();
        let l = f.bind_listener("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let at = l.addr();
        assert_ne!(at.port(), 0);
        // Listening already: nobody else can listen there, even with SO_REUSEADDR.
        assert!(std::net::TcpListener::bind(at).is_err());
        let early = tokio::net::TcpStream::connect(at).await.unwrap();
        let mut l = l.ready().unwrap();
        assert_eq!(l.len(), 1);
        let l = tokio::net::TcpListener::from_std(l.remove(0)).unwrap();
        let (a, _) = l.accept().await.unwrap();
        assert_eq!(a.peer_addr().unwrap(), early.local_addr().unwrap());
        match f.bind_listener("[::1]:0".parse().unwrap()).await {
            Ok(l6) => assert!(l6.addr().is_ipv6()),
            Err(e) => assert!(ipv6_unavailable(&e), "{e:#}"),
        }
    }

    #[tokio::test]
    async fn a_listener_group_spreads_connections_and_keeps_its_address() {
        let group = listen_group("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        assert_eq!(group.len(), 2);
        let at = group[0].local_addr().unwrap();
        assert_ne!(at.port(), 0);
        assert_eq!(group[1].local_addr().unwrap(), at);
        // Nobody else listens there: neither a plain listener nor a second group (whose probe
        // binds without SO_REUSEPORT).
        assert!(std::net::TcpListener::bind(at).is_err());
        let err = listen_group(at, 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        // A socket of the same user with SO_REUSEPORT can join the group, but it is never
        // chosen: the group's program picks one of the first two.
        let joined = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        joined.set_reuse_port(true).unwrap();
        let joined = listen_at(joined, at).expect("same user, SO_REUSEPORT: joins");
        // The kernel spreads connections over both of ours.
        let group: Vec<_> = group
            .into_iter()
            .chain([joined])
            .map(|l| {
                l.set_nonblocking(true).unwrap();
                tokio::net::TcpListener::from_std(l).unwrap()
            })
            .collect();
        let mut clients = Vec::new();
        for _ in 0..64 {
            clients.push(tokio::net::TcpStream::connect(at).await.unwrap());
        }
        let mut taken = [0; 3];
        for (i, l) in group.iter().enumerate() {
            while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(50), l.accept()).await {
                taken[i] += 1;
            }
        }
        assert_eq!(taken[2], 0, "the joined socket got connections: {taken:?}");
        assert_eq!(taken[0] + taken[1], 64, "{taken:?}");
        assert!(taken[0] > 0 && taken[1] > 0, "all on one socket: {taken:?}");
    }

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
