//! Kernel self-test of the sk_msg redirect path, run at start-up and by `sockmesh check`.
//!
//! A private copy of the programs (maps pinned in a scratch directory) gets its sk_msg program
//! attached to its own sockhash; a loopback connection made here has both ends inserted from
//! user space, so everything written on it takes the redirect path. Then each way an app may
//! read is exercised: plain reads (byte-exact, both directions), FIONREAD, epoll readiness,
//! blocking reads and splice(). Kernels differ here (FIONREAD regressions, splice not seeing
//! redirected data), so `auto` mode uses the result.
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aya::maps::{MapData, SockHash};
use serde::Serialize;
use sockmesh_common::{SockKey, ip6_of};

use super::ebpf::{attach_link, load_object};
use super::pins::remove_pins;
use crate::sys::{self, AttachType};

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct SelfTest {
    pub checks: Vec<Check>,
}

/// Checks an app's ordinary reads depend on; if any fails, sk_msg redirect is unsafe here.
const REQUIRED: &[&str] = &[
    "redirect-active",
    "data-exact",
    "fionread",
    "epoll",
    "blocking-read",
    "blocking-read-while-writing",
];

impl SelfTest {
    /// sk_msg redirect is safe for ordinary apps (splice users aside).
    pub fn sockmap_safe(&self) -> bool {
        REQUIRED
            .iter()
            .all(|n| self.checks.iter().any(|c| c.name == *n && c.ok))
    }
    pub fn failed(&self) -> Vec<&'static str> {
        self.checks.iter().filter(|c| !c.ok).map(|c| c.name).collect()
    }
    pub fn summary(&self) -> String {
        self.checks
            .iter()
            .map(|c| format!("{}={}", c.name, if c.ok { "ok" } else { "FAIL" }))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Run the self-test with scratch pins under `scratch_root` (a bpffs directory).
pub fn run(scratch_root: &Path) -> Result<SelfTest> {
    let dir = scratch_root.join(format!("sockmesh-selftest-{}", std::process::id()));
    let _guard = PinDirGuard(dir.clone());
    let mut bpf = load_object(&dir.join("maps"), 0)?;
    let socks_fd = match bpf.map("SM_SOCKS").context("SM_SOCKS")? {
        aya::maps::Map::SockHash(m) => m.fd().as_fd().try_clone_to_owned()?,
        _ => anyhow::bail!("SM_SOCKS is not a sockhash"),
    };
    let _link = attach_link(&bpf, "sm_skmsg", &socks_fd, AttachType::SkMsgVerdict)?;

    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    for s in [&client, &server] {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
    }
    {
        let mut hash: SockHash<&mut MapData, SockKey> =
            SockHash::try_from(bpf.map_mut("SM_SOCKS").context("SM_SOCKS")?)?;
        for s in [&client, &server] {
            let key = key_of(s)?;
            hash.insert(key, s.as_raw_fd(), 0)
                .context("inserting a socket into the sockhash")?;
        }
    }
    let mut checks = Vec::new();
    let mut push = |name, r: Result<String>| {
        checks.push(match r {
            Ok(detail) => Check {
                name,
                ok: true,
                detail,
            },
            Err(e) => Check {
                name,
                ok: false,
                detail: format!("{e:#}"),
            },
        })
    };
    push("data-exact", data_exact(&client, &server));
    push("redirect-active", redirect_active(&server));
    push("fionread", fionread(&client, &server));
    push("epoll", epoll(&client, &server));
    push("blocking-read", blocking_read(&client, &server));
    push(
        "blocking-read-while-writing",
        blocking_read_while_writing(&client, &server),
    );
    push("splice", splice(&client, &server));
    Ok(SelfTest { checks })
}

struct PinDirGuard(PathBuf);
impl Drop for PinDirGuard {
    fn drop(&mut self) {
        let _ = remove_pins(&self.0);
    }
}

fn key_of(s: &TcpStream) -> Result<SockKey> {
    let (l, r) = (s.local_addr()?, s.peer_addr()?);
    Ok(SockKey {
        local_ip: ip6_of(l.ip()),
        remote_ip: ip6_of(r.ip()),
        local_port: l.port() as u32,
        remote_port: r.port() as u32,
        netns: sys::netns_cookie(s)?,
    })
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn data_exact(client: &TcpStream, server: &TcpStream) -> Result<String> {
    for (from, to, seed) in [(client, server, 1u8), (server, client, 7u8)] {
        let data = pattern(64 * 1024, seed);
        let writer = {
            let mut w = from.try_clone()?;
            let d = data.clone();
            std::thread::spawn(move || w.write_all(&d))
        };
        let mut got = vec![0u8; data.len()];
        (&*to).read_exact(&mut got).context("reading redirected data")?;
        writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        anyhow::ensure!(got == data, "redirected bytes differ from the bytes sent");
    }
    Ok("64 KiB each way, byte-exact".into())
}

/// TCP_INFO's bytes_received stays 0 on a socket whose data all came through the redirect.
fn redirect_active(server: &TcpStream) -> Result<String> {
    let mut info = [0u8; 232];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: buffer is valid for len bytes.
    let r = unsafe {
        libc::getsockopt(
            server.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    anyhow::ensure!(r == 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    // struct tcp_info: tcpi_bytes_received is a u64 at offset 128 (Linux >= 4.1).
    anyhow::ensure!(len as usize >= 136, "TCP_INFO too short ({len} bytes)");
    let bytes_received = u64::from_ne_bytes(info[128..136].try_into().unwrap());
    anyhow::ensure!(
        bytes_received == 0,
        "{bytes_received} bytes went through TCP: sk_msg did not redirect"
    );
    Ok("no payload crossed the TCP stack".into())
}

fn fionread_of(s: &TcpStream) -> Result<i32> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) };
    anyhow::ensure!(r == 0, "ioctl(FIONREAD): {}", std::io::Error::last_os_error());
    Ok(n)
}

fn fionread(client: &TcpStream, server: &TcpStream) -> Result<String> {
    (&*client).write_all(b"fionread!!!")?;
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut n = fionread_of(server)?;
    while n < 11 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        n = fionread_of(server)?;
    }
    let mut buf = [0u8; 11];
    (&*server).read_exact(&mut buf)?;
    anyhow::ensure!(n == 11, "FIONREAD reported {n} with 11 bytes queued");
    Ok("reports queued redirected bytes".into())
}

fn epoll(client: &TcpStream, server: &TcpStream) -> Result<String> {
    // SAFETY: plain epoll syscalls on fds we own; the epoll fd is closed below.
    unsafe {
        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        anyhow::ensure!(ep >= 0, "epoll_create1: {}", std::io::Error::last_os_error());
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 1,
        };
        libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, server.as_raw_fd(), &mut ev);
        (&*client).write_all(b"epoll")?;
        let mut out = [libc::epoll_event { events: 0, u64: 0 }; 1];
        let n = libc::epoll_wait(ep, out.as_mut_ptr(), 1, 1000);
        libc::close(ep);
        let mut buf = [0u8; 5];
        (&*server).read_exact(&mut buf)?;
        anyhow::ensure!(n == 1, "epoll_wait saw no EPOLLIN within 1 s");
    }
    Ok("EPOLLIN reported".into())
}

fn blocking_read(client: &TcpStream, server: &TcpStream) -> Result<String> {
    let w = {
        let mut c = client.try_clone()?;
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            c.write_all(b"blocking")
        })
    };
    let mut buf = [0u8; 8];
    (&*server).read_exact(&mut buf).context("blocking read")?;
    w.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    anyhow::ensure!(&buf == b"blocking", "wrong bytes");
    Ok("a blocked reader wakes with the data".into())
}

/// A blocking reader while another thread writes on the same socket (Java blocking I/O, thread
/// per direction) must never get EAGAIN. Seen on 6.18: tcp_bpf_recvmsg turns a wake-up that
/// brought no redirected data (the writer's write-space wake-up) into -EAGAIN.
fn blocking_read_while_writing(client: &TcpStream, server: &TcpStream) -> Result<String> {
    const ROUNDS: usize = 8;
    const SIZE: usize = 1024 * 1024;
    client.set_read_timeout(None)?;
    // The redirected server end behaves like the agent: non-blocking, forwarding through a
    // plain TCP upstream (an echo) and back, so the reader's wake-ups come as they do in
    // production.
    let echo = {
        let s = server.try_clone()?;
        std::thread::spawn(move || relay_through_upstream(s, ROUNDS * SIZE))
    };
    let mut spurious = 0;
    let mut first_error = String::new();
    for round in 0..ROUNDS {
        let w = {
            let mut c = client.try_clone()?;
            std::thread::spawn(move || c.write_all(&pattern(SIZE, round as u8)))
        };
        let mut got = 0;
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + Duration::from_secs(5);
        while got < SIZE && Instant::now() < deadline {
            match (&*client).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    spurious += 1;
                    if first_error.is_empty() {
                        first_error = format!("round {round}, after {got} bytes");
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        w.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        anyhow::ensure!(got == SIZE, "round {round}: {got} of {SIZE} bytes echoed");
    }
    echo.join().map_err(|_| anyhow::anyhow!("echo panicked"))??;
    client.set_read_timeout(Some(Duration::from_secs(2)))?;
    anyhow::ensure!(
        spurious == 0,
        "a blocking read() returned EAGAIN {spurious} time(s) while another thread wrote on the socket (first: {first_error}); blocking-I/O apps with a writer thread would fail"
    );
    Ok(format!(
        "{ROUNDS} x {} KiB echoed, no spurious EAGAIN",
        SIZE / 1024
    ))
}

fn relay_through_upstream(s: TcpStream, total: usize) -> std::io::Result<()> {
    let up_listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let up = TcpStream::connect(up_listener.local_addr()?)?;
    let (mut far, _) = up_listener.accept()?;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = far.read(&mut buf) {
            if n == 0 || far.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    s.set_nonblocking(true)?;
    up.set_nonblocking(true)?;
    let (mut s, mut up) = (s, up);
    let mut to_up: Vec<u8> = Vec::new();
    let mut to_app: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 8192];
    let mut delivered = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while delivered < total && Instant::now() < deadline {
        let mut fds = [
            libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN | if to_app.is_empty() { 0 } else { libc::POLLOUT },
                revents: 0,
            },
            libc::pollfd {
                fd: up.as_raw_fd(),
                events: libc::POLLIN | if to_up.is_empty() { 0 } else { libc::POLLOUT },
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) };
        if to_up.len() < 65536
            && let Ok(n) = s.read(&mut buf)
        {
            to_up.extend_from_slice(&buf[..n]);
        }
        if !to_up.is_empty()
            && let Ok(n) = up.write(&to_up)
        {
            to_up.drain(..n);
        }
        if to_app.len() < 65536
            && let Ok(n) = up.read(&mut buf)
        {
            to_app.extend_from_slice(&buf[..n]);
        }
        if !to_app.is_empty()
            && let Ok(n) = s.write(&to_app)
        {
            to_app.drain(..n);
            delivered += n;
        }
    }
    Ok(())
}

fn splice(client: &TcpStream, server: &TcpStream) -> Result<String> {
    let mut pipe = [0; 2];
    // SAFETY: pipe2 fills two fds which we close below.
    anyhow::ensure!(
        unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } == 0,
        "pipe2"
    );
    (&*client).write_all(b"splice")?;
    let deadline = Instant::now() + Duration::from_millis(300);
    let mut got = -1;
    while Instant::now() < deadline {
        // SAFETY: valid fds; non-blocking splice into our pipe.
        got = unsafe {
            libc::splice(
                server.as_raw_fd(),
                std::ptr::null_mut(),
                pipe[1],
                std::ptr::null_mut(),
                64,
                libc::SPLICE_F_NONBLOCK,
            )
        } as i64;
        if got > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: closing the pipe fds we created.
    unsafe {
        libc::close(pipe[0]);
        libc::close(pipe[1]);
    }
    // Drain what splice did not take so the socket is clean.
    if got <= 0 {
        let mut buf = [0u8; 6];
        let _ = (&*server).read_exact(&mut buf);
    }
    anyhow::ensure!(
        got > 0,
        "splice() from the receiving socket saw no data (redirected data is only readable with recv); apps that splice must use --mode ebpf-connect"
    );
    Ok(format!("spliced {got} bytes"))
}
