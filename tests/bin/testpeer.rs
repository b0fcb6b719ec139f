//! Test peer for the privileged integration tests (not part of the product):
//! `echo-server ADDR` echoes every connection until EOF; `client` optionally moves itself into a
//! cgroup first, then exchanges a byte pattern with an echo server and reports as JSON.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8 ^ 0x5a).collect()
}

fn fionread(s: &TcpStream) -> i32 {
    let mut n: libc::c_int = 0;
    unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) };
    n
}

fn tcp_bytes_received(s: &TcpStream) -> u64 {
    let mut info = [0u8; 232];
    let mut len = info.len() as libc::socklen_t;
    unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    u64::from_ne_bytes(info[128..136].try_into().unwrap())
}

fn echo_server(addr: &str) {
    let l = TcpListener::bind(addr).expect("bind echo server");
    println!("ready {}", l.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    for c in l.incoming() {
        let Ok(mut c) = c else { continue };
        std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            loop {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if c.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = c.shutdown(std::net::Shutdown::Write);
        });
    }
}

fn client(args: &[String]) {
    let get = |k: &str| args.iter().position(|a| a == k).map(|i| args[i + 1].clone());
    if let Some(cg) = get("--cgroup") {
        std::fs::write(format!("{cg}/cgroup.procs"), std::process::id().to_string()).expect("join cgroup");
    }
    let addr: SocketAddr = get("--connect").expect("--connect").parse().unwrap();
    let n: usize = get("--bytes").map(|b| b.parse().unwrap()).unwrap_or(1 << 20);
    let reader = get("--reader").unwrap_or_else(|| "blocking".into());
    let data = pattern(n);
    let mut fionread_max = 0;
    let mut eagain = 0u32;
    let got = if reader == "tokio" {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let peer = s.peer_addr().unwrap();
            let (mut r, mut w) = s.into_split();
            let d = data.clone();
            let wt = tokio::spawn(async move {
                w.write_all(&d).await.unwrap();
                w.shutdown().await.unwrap();
            });
            let mut got = Vec::new();
            tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut got))
                .await
                .expect("read timed out")
                .unwrap();
            wt.await.unwrap();
            (got, peer, 0u64)
        })
    } else {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let peer = s.peer_addr().unwrap();
        let mut w = s.try_clone().unwrap();
        let d = data.clone();
        let wt = std::thread::spawn(move || {
            w.write_all(&d).unwrap();
            w.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let mut got = Vec::with_capacity(n);
        let mut buf = vec![0u8; 65536];
        let mut r = &s;
        loop {
            if reader == "fionread" {
                // Size reads by FIONREAD, the way nginx/Java NIO do; wait while it says 0.
                let mut waited = 0;
                let mut q = fionread(&s);
                while q == 0 && waited < 2000 && got.len() < n {
                    std::thread::sleep(Duration::from_millis(1));
                    waited += 1;
                    q = fionread(&s);
                }
                fionread_max = fionread_max.max(q);
                if q == 0 && got.len() < n {
                    panic!(
                        "FIONREAD stayed 0 for 2 s with {} of {n} bytes received",
                        got.len()
                    );
                }
            }
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => got.extend_from_slice(&buf[..k]),
                // A blocking socket should never say EAGAIN before its 20 s timeout; count it
                // (the sk_msg self-test reports this kernel behaviour) and keep reading.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => eagain += 1,
                Err(e) => panic!("read: {e}"),
            }
        }
        wt.join().unwrap();
        let tcp = tcp_bytes_received(&s);
        (got, peer, tcp)
    };
    let (got, peer, tcp) = got;
    println!(
        "{{\"ok\":{},\"received\":{},\"peer\":\"{}\",\"tcp_bytes_received\":{},\"fionread_max\":{},\"spurious_eagain\":{}}}",
        got == data,
        got.len(),
        peer,
        tcp,
        fionread_max,
        eagain
    );
}

/// One connection, `--count` small exchanges `--interval-ms` apart; fails on the first wrong or
/// missing echo. Prints how many round trips succeeded.
fn pingpong(args: &[String]) {
    let get = |k: &str| args.iter().position(|a| a == k).map(|i| args[i + 1].clone());
    if let Some(cg) = get("--cgroup") {
        std::fs::write(format!("{cg}/cgroup.procs"), std::process::id().to_string()).expect("join cgroup");
    }
    let addr: SocketAddr = get("--connect").expect("--connect").parse().unwrap();
    let count: u32 = get("--count").map(|c| c.parse().unwrap()).unwrap_or(10);
    let interval = Duration::from_millis(get("--interval-ms").map(|c| c.parse().unwrap()).unwrap_or(100));
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    println!("connected");
    std::io::stdout().flush().unwrap();
    for i in 0..count {
        let msg = format!("ping {i:06}");
        s.write_all(msg.as_bytes()).expect("write");
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("round trip {i}: {e}"));
        assert_eq!(buf, msg.as_bytes(), "round trip {i}: wrong echo");
        std::thread::sleep(interval);
    }
    println!("ok {count}");
}

/// `until-echo [--cgroup DIR] --connect ADDR [--wait-ms N]`: connect, send a few bytes and wait
/// `wait-ms` for their echo; again on a new connection until one answers (at most 30 s). Prints
/// `{"attempts": N, "ms": M}`: how many connections it took and how long.
fn until_echo(args: &[String]) {
    let get = |k: &str| args.iter().position(|a| a == k).map(|i| args[i + 1].clone());
    if let Some(cg) = get("--cgroup") {
        std::fs::write(format!("{cg}/cgroup.procs"), std::process::id().to_string()).expect("join cgroup");
    }
    let addr: SocketAddr = get("--connect").expect("--connect").parse().unwrap();
    let wait = Duration::from_millis(get("--wait-ms").map(|c| c.parse().unwrap()).unwrap_or(50));
    let start = std::time::Instant::now();
    let mut attempts = 0u32;
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no echo in 30 s ({attempts} attempts)"
        );
        attempts += 1;
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            continue;
        };
        s.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 5];
        if s.write_all(b"probe").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"probe" {
            break;
        }
    }
    println!(
        "{}",
        serde_json::json!({ "attempts": attempts, "ms": start.elapsed().as_millis() as u64 })
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("echo-server") => echo_server(&args[1]),
        Some("client") => client(&args[1..]),
        Some("pingpong") => pingpong(&args[1..]),
        Some("until-echo") => until_echo(&args[1..]),
        Some("motan2-provider") => motan2_provider(&args[1..]),
        Some("motan2-call") => motan2_call(&args[1..]),
        Some("untrusted-listener") => untrusted_listener(&args[1..]),
        Some("icmp-responder") => icmp_responder(&args[1..]),
        Some("hold") => {
            // Join a cgroup and stay there (a resident app process) until killed.
            std::fs::write(
                format!("{}/cgroup.procs", args[1]),
                std::process::id().to_string(),
            )
            .expect("join cgroup");
            println!("held");
            std::io::stdout().flush().unwrap();
            std::thread::sleep(Duration::from_secs(120));
        }
        _ => {
            eprintln!(
                "usage: sockmesh-testpeer echo-server ADDR | motan2-provider --listen ADDR --name NAME [--delay-ms N [--slow-every N] | --blocking] | motan2-call [--cgroup DIR] --connect ADDR --service S [--method M] [--arg TEXT] | hold CGROUP-DIR | untrusted-listener ADDR... | client [--cgroup DIR] --connect ADDR [--bytes N] [--reader blocking|fionread|tokio] | until-echo [--cgroup DIR] --connect ADDR [--wait-ms N] | icmp-responder --delay-ms N"
            );
            std::process::exit(2);
        }
    }
}

/// A listener of some other (unprivileged) process on the addresses given, e.g. the agent's
/// transparent address: prints `ready uid=UID ADDR...` (or `bind-failed ADDR: ERROR` and exits
/// 1), then one JSON line per accepted connection with what `SO_ORIGINAL_DST` told it.
fn untrusted_listener(addrs: &[String]) {
    let mut listeners = Vec::new();
    for a in addrs {
        match TcpListener::bind(a) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                println!("bind-failed {a}: {e}");
                std::process::exit(1);
            }
        }
    }
    let bound: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    // SAFETY: geteuid has no preconditions.
    println!("ready uid={} {}", unsafe { libc::geteuid() }, bound.join(" "));
    std::io::stdout().flush().unwrap();
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            std::thread::spawn(move || {
                for c in l.incoming().flatten() {
                    let orig = match sockmesh::sys::original_dst(&c) {
                        Ok(a) => a.to_string(),
                        Err(e) => format!("error: {e}"),
                    };
                    let line = serde_json::json!({
                        "local": c.local_addr().unwrap().to_string(),
                        "peer": c.peer_addr().unwrap().to_string(),
                        "original_dst": orig,
                    });
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{line}").unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// A slow ICMPv4 echo responder, for a network namespace whose kernel does not answer echoes
/// (`net.ipv4.icmp_echo_ignore_all=1`): every echo request is answered after `--delay-ms`
/// from a raw socket. Prints `ready icmp`, then serves until killed.
fn icmp_responder(args: &[String]) {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::mem::MaybeUninit;
    use std::sync::Arc;
    let delay = Duration::from_millis(flag(args, "--delay-ms").map_or(5, |v| v.parse().unwrap()));
    let sock =
        Arc::new(Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).expect("raw ICMP socket"));
    println!("ready icmp");
    std::io::stdout().flush().unwrap();
    let mut buf = vec![0u8; 65536];
    loop {
        // SAFETY: recv_from only writes into the buffer; u8 has no invalid bit patterns.
        let uninit = unsafe { &mut *(buf.as_mut_slice() as *mut [u8] as *mut [MaybeUninit<u8>]) };
        let Ok((n, from)) = sock.recv_from(uninit) else {
            continue;
        };
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        // Echo requests only (type 8); a raw socket also sees other ICMP traffic.
        if n < ihl + 8 || buf[ihl] != 8 {
            continue;
        }
        let mut reply = buf[ihl..n].to_vec();
        reply[0] = 0;
        reply[2..4].copy_from_slice(&[0, 0]);
        let mut sum: u32 = reply
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        reply[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        let sock = sock.clone();
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            let _ = sock.send_to(&reply, &from);
        });
    }
}

fn flag(args: &[String], k: &str) -> Option<String> {
    args.iter().position(|a| a == k).map(|i| args[i + 1].clone())
}

/// A Motan2 provider for the mesh tests. It echoes the request body and reports in the
/// response meta who answered (`provider`) and what it saw (`seen-rid`, `seen-host`,
/// `seen-group`, `seen-proxy`). Request meta `delay-ms` delays the answer, `fail` = `biz` or
/// `service` answers with that exception; method `count` returns the number of requests served;
/// method `set-fail` (argument `service`, `biz` or `off`, not counted) makes every later request
/// fail that way until switched off.
/// Oneway requests (flag 0x04) are counted and never answered, as a provider that honours the
/// flag does.
fn motan2_provider(args: &[String]) {
    if args.iter().any(|a| a == "--blocking") {
        return blocking_motan2_provider(args);
    }
    use bytes::Bytes;
    use futures_util::{SinkExt, StreamExt};
    use sockmesh::protocol::motan2::{Exception, Frame, Motan2Codec, Value};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let listen = flag(args, "--listen").expect("--listen");
    let name = flag(args, "--name").expect("--name");
    let delay: u64 = flag(args, "--delay-ms").map(|d| d.parse().unwrap()).unwrap_or(0);
    // The delay applies to every n-th request only (1 = all).
    let every: u64 = flag(args, "--slow-every")
        .map(|d| d.parse().unwrap())
        .unwrap_or(1)
        .max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(&listen)
            .await
            .expect("bind provider");
        println!("ready {}", l.local_addr().unwrap());
        std::io::stdout().flush().unwrap();
        let count = Arc::new(AtomicU64::new(0));
        // 0 answer, 1 business exceptions, 2 service exceptions (`set-fail`).
        let failing = Arc::new(std::sync::atomic::AtomicU8::new(0));
        let name: Arc<str> = name.into();
        while let Ok((s, _)) = l.accept().await {
            let (count, name, failing) = (count.clone(), name.clone(), failing.clone());
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let (mut sink, mut stream) =
                    tokio_util::codec::Framed::new(s, Motan2Codec::default()).split();
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Frame>();
                tokio::spawn(async move {
                    while let Some(f) = rx.recv().await {
                        if sink.send(f).await.is_err() {
                            break;
                        }
                    }
                });
                while let Some(Ok(req)) = stream.next().await {
                    if req.header.is_heartbeat() {
                        let _ = tx.send(Frame::heartbeat_response(req.header.request_id));
                        continue;
                    }
                    if req.meta.get("M_m") == Some("set-fail") {
                        let arg = sockmesh::protocol::motan2::simple::decode_all(&req.body)
                            .ok()
                            .and_then(|v| v.first().and_then(|v| v.as_str().map(str::to_string)));
                        let mode = match arg.as_deref() {
                            Some("biz") => 1,
                            Some("service") => 2,
                            _ => 0,
                        };
                        failing.store(mode, Ordering::Relaxed);
                        let _ = tx.send(Frame::response_to(&req, req.body.clone()));
                        continue;
                    }
                    let n = count.fetch_add(1, Ordering::Relaxed) + 1;
                    if req.header.is_oneway() {
                        continue;
                    }
                    let (tx, name) = (tx.clone(), name.clone());
                    let mode = failing.load(Ordering::Relaxed);
                    tokio::spawn(async move {
                        let m = &req.meta;
                        let extra: u64 = m.get("delay-ms").and_then(|d| d.parse().ok()).unwrap_or(0);
                        let own = if n % every == 0 { delay } else { 0 };
                        if own + extra > 0 {
                            tokio::time::sleep(Duration::from_millis(own + extra)).await;
                        }
                        let id = req.header.request_id;
                        let fail = match (mode, m.get("M_m")) {
                            (_, Some("count")) | (0, _) => m.get("fail"),
                            (1, _) => Some("biz"),
                            _ => Some("service"),
                        };
                        let mut resp = match fail {
                            Some("biz") => Frame::exception_response(
                                id,
                                &Exception::business(503, format!("biz failure at {name}")),
                                6,
                                false,
                            ),
                            Some("service") => Frame::exception_response(
                                id,
                                &Exception::service(503, format!("service failure at {name}")),
                                6,
                                false,
                            ),
                            _ if m.get("M_m") == Some("count") => {
                                Frame::response_to(&req, Value::from(n.to_string()).to_bytes())
                            }
                            _ => Frame::response_to(&req, req.body.clone()),
                        };
                        resp.meta
                            .insert("provider", Bytes::copy_from_slice(name.as_bytes()));
                        for (k, out) in [
                            ("M_rid", "seen-rid"),
                            ("host", "seen-host"),
                            ("M_g", "seen-group"),
                            ("M_s", "seen-source"),
                        ] {
                            if let Some(v) = m.get(k) {
                                resp.meta.insert(out, Bytes::copy_from_slice(v.as_bytes()));
                            }
                        }
                        resp.meta
                            .insert("seen-proxy", if req.header.is_proxy() { "1" } else { "0" });
                        let _ = tx.send(resp);
                    });
                }
            });
        }
    });
}

/// `motan2-provider --blocking`: a provider written as classic blocking I/O (std::net, a thread
/// per connection that reads a frame with a blocking `read`, then writes the echo), the kind of
/// provider the sk_msg kernel bug can hit. Answers requests (not heartbeats' bodies) with the
/// request body and `provider` meta, heartbeats with heartbeat responses.
fn blocking_motan2_provider(args: &[String]) {
    use sockmesh::protocol::motan2::{Frame, Motan2Codec};
    use tokio_util::codec::Decoder;
    let listen = flag(args, "--listen").expect("--listen");
    let name = flag(args, "--name").expect("--name");
    let l = TcpListener::bind(&listen).expect("bind provider");
    println!("ready {}", l.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    for c in l.incoming() {
        let Ok(mut c) = c else { continue };
        let name = name.clone();
        std::thread::spawn(move || {
            let _ = c.set_nodelay(true);
            let mut buf = bytes::BytesMut::new();
            let mut codec = Motan2Codec::default();
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                let req = match codec.decode(&mut buf) {
                    Ok(Some(f)) => f,
                    Ok(None) => match c.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            buf.extend_from_slice(&chunk[..n]);
                            continue;
                        }
                    },
                    Err(_) => return,
                };
                let resp = if req.header.is_heartbeat() {
                    Frame::heartbeat_response(req.header.request_id)
                } else {
                    let mut r = Frame::response_to(&req, req.body.clone());
                    r.meta
                        .insert("provider", bytes::Bytes::copy_from_slice(name.as_bytes()));
                    r
                };
                if c.write_all(&resp.encode_to_bytes()).is_err() {
                    return;
                }
            }
        });
    }
}

/// One Motan2 call (optionally from inside a cgroup, for interception tests); prints the
/// response as JSON: exception, provider meta (who answered, whether through an agent) and the
/// body decoded as a simple string.
fn motan2_call(args: &[String]) {
    use sockmesh::protocol::motan2::{Frame, Motan2Codec, Value};
    use tokio_util::codec::Decoder;
    if let Some(cg) = flag(args, "--cgroup") {
        std::fs::write(format!("{cg}/cgroup.procs"), std::process::id().to_string()).expect("join cgroup");
    }
    let addr: SocketAddr = flag(args, "--connect").expect("--connect").parse().unwrap();
    let service = flag(args, "--service").expect("--service");
    let method = flag(args, "--method").unwrap_or_else(|| "echo".into());
    let arg = flag(args, "--arg").unwrap_or_else(|| "hello".into());
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = Frame::request(77, &service, &method, Value::from(arg).to_bytes());
    s.write_all(&req.encode_to_bytes()).expect("write");
    let mut buf = bytes::BytesMut::new();
    let mut codec = Motan2Codec::default();
    let resp = loop {
        if let Some(f) = codec.decode(&mut buf).expect("decode") {
            break f;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0, "connection closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    };
    let body = Value::decode(&resp.body)
        .ok()
        .and_then(|(v, _)| v.as_str().map(str::to_string));
    println!(
        "{}",
        serde_json::json!({
            "id": resp.header.request_id,
            "exception": resp.meta.get("M_e"),
            "provider": resp.meta.get("provider"),
            // "1" when the request reached the provider through an agent (proxy flag).
            "seen_proxy": resp.meta.get("seen-proxy"),
            "body": body,
        })
    );
}
