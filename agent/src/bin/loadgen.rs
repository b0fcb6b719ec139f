//! sockmesh-loadgen: a Motan2 load generator and echo provider for `cargo xtask bench`.
//!
//! `serve --listen ADDR` answers every request with its own body (heartbeats too).
//! `run --target ADDR ...` sends requests and prints one JSON line: counts, throughput and
//! latency percentiles from an HDR histogram. Open loop (`--rate`) measures each request from its
//! *intended* send time, so a stalled path cannot hide its queueing (no coordinated omission);
//! `--closed` measures maximum throughput instead.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::{Bytes, BytesMut};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use sockmesh::protocol::motan2::simple::Value;
use sockmesh::protocol::motan2::{Frame, Motan2Codec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use tokio_util::codec::Decoder;

#[derive(Parser)]
#[command(name = "sockmesh-loadgen", about = "Motan2 load generator and echo provider")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Echo provider: answers each request with its body.
    Serve {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Generate load and print a JSON summary.
    Run {
        #[arg(long)]
        target: SocketAddr,
        /// Open loop at this total rate (requests per second).
        #[arg(long, conflicts_with = "closed", required_unless_present = "closed")]
        rate: Option<u32>,
        /// Closed loop: each connection sends the next request when the answer arrives.
        #[arg(long)]
        closed: bool,
        #[arg(long, default_value_t = 1)]
        conns: u32,
        /// Payload bytes (a simple-serialized string argument of this length).
        #[arg(long, default_value_t = 100)]
        payload: usize,
        #[arg(long, default_value_t = 5000)]
        duration_ms: u64,
        #[arg(long, default_value_t = 1000)]
        warmup_ms: u64,
        /// A new TCP connection for every request (connect + request + close).
        #[arg(long)]
        conn_per_request: bool,
        /// Move this process into the cgroup (directory) first.
        #[arg(long)]
        cgroup: Option<std::path::PathBuf>,
        /// Give up on a request after this long (counted as an error).
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// Service (M_p) of the requests.
        #[arg(long, default_value = "com.weibo.bench.EchoService")]
        service: String,
        /// Group (M_g) of the requests.
        #[arg(long, default_value = "bench")]
        group: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Serve { listen } => rt.block_on(serve(listen)),
        Cmd::Run {
            target,
            rate,
            closed: _,
            conns,
            payload,
            duration_ms,
            warmup_ms,
            conn_per_request,
            cgroup,
            timeout_ms,
            service,
            group,
        } => {
            let _ = SERVICE.set(service);
            let _ = GROUP.set(group);
            if let Some(cg) = cgroup {
                std::fs::write(cg.join("cgroup.procs"), std::process::id().to_string())
                    .with_context(|| format!("joining cgroup {}", cg.display()))?;
            }
            let p = Plan {
                target,
                rate,
                conns: conns.max(1),
                payload,
                duration: Duration::from_millis(duration_ms),
                warmup: Duration::from_millis(warmup_ms),
                cpr: conn_per_request,
                timeout: Duration::from_millis(timeout_ms),
            };
            drop(rt);
            let out = run(p)?;
            println!("{out}");
            Ok(())
        }
    }
}

async fn serve(listen: SocketAddr) -> Result<()> {
    let l = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!("ready {}", l.local_addr()?);
    loop {
        let (s, _) = l.accept().await?;
        tokio::spawn(async move {
            let _ = echo_conn(s).await;
        });
    }
}

async fn echo_conn(mut s: TcpStream) -> Result<()> {
    s.set_nodelay(true)?;
    let mut codec = Motan2Codec::default();
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let mut wbuf = BytesMut::with_capacity(16 * 1024);
    loop {
        if s.read_buf(&mut rbuf).await? == 0 {
            return Ok(());
        }
        while let Some(req) = codec.decode(&mut rbuf)? {
            let resp = if req.header.is_heartbeat() {
                Frame::heartbeat_response(req.header.request_id)
            } else {
                Frame::response_to(&req, req.body.clone())
            };
            resp.encode(&mut wbuf);
        }
        if !wbuf.is_empty() {
            s.write_all(&wbuf).await?;
            wbuf.clear();
        }
    }
}

#[derive(Clone, Copy)]
struct Plan {
    target: SocketAddr,
    rate: Option<u32>,
    conns: u32,
    payload: usize,
    duration: Duration,
    warmup: Duration,
    cpr: bool,
    timeout: Duration,
}

struct Stats {
    hist: Mutex<Histogram<u64>>,
    ok: AtomicU64,
    errors: AtomicU64,
    measure_from: Instant,
    measure_until: Instant,
}

impl Stats {
    /// Record a completed request whose intended send time was `intended`.
    fn done(&self, intended: Instant, ok: bool) {
        if intended < self.measure_from || intended >= self.measure_until {
            return;
        }
        if ok {
            let us = intended.elapsed().as_micros().max(1) as u64;
            let _ = self.hist.lock().unwrap().record(us.min(60_000_000));
            self.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The service every request names (set once from `--service`).
static SERVICE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
/// The group every request names (set once from `--group`).
static GROUP: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn request(id: u64, body: &Bytes) -> Bytes {
    let service = SERVICE
        .get()
        .map(String::as_str)
        .unwrap_or("com.weibo.bench.EchoService");
    let mut f = Frame::request(id, service, "echo", body.clone());
    let group = GROUP.get().map(String::as_str).unwrap_or("bench");
    f.meta.insert("M_g", Bytes::copy_from_slice(group.as_bytes()));
    f.meta.insert("M_pp", "motan2");
    f.to_bytes()
}

/// Sleep until `t` with OS-thread precision (tokio's timer has 1 ms granularity, which would
/// show up as latency when measuring from intended send times).
fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// Load runs on plain threads with blocking sockets: precise pacing, no runtime in the path.
fn run(p: Plan) -> Result<String> {
    // 1 µs timer slack instead of the default 50 µs, for punctual sends.
    // SAFETY: prctl(PR_SET_TIMERSLACK) only affects this thread and those it creates.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0, 0, 0) };
    let body = Value::String(Bytes::from(vec![b'x'; p.payload])).to_bytes();
    let start = Instant::now() + Duration::from_millis(50);
    let stats = Arc::new(Stats {
        hist: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        measure_from: start + p.warmup,
        measure_until: start + p.warmup + p.duration,
    });
    let end = start + p.warmup + p.duration;
    let mut threads = Vec::new();
    for c in 0..p.conns {
        let (stats, body) = (stats.clone(), body.clone());
        threads.push(std::thread::spawn(move || match (p.rate, p.cpr) {
            (Some(rate), false) => open_loop_conn(p, rate, c, start, end, body, stats),
            (Some(rate), true) => open_loop_cpr(p, rate, c, start, end, body, stats),
            (None, _) => closed_loop_conn(p, start, end, body, stats),
        }));
    }
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    }
    let h = stats.hist.lock().unwrap();
    let ok = stats.ok.load(Ordering::Relaxed);
    let errors = stats.errors.load(Ordering::Relaxed);
    let secs = p.duration.as_secs_f64();
    let cdf: Vec<serde_json::Value> = [
        0.0, 1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 97.0, 99.0, 99.5, 99.9,
        99.95, 99.99, 100.0,
    ]
    .iter()
    .map(|q| serde_json::json!([h.value_at_quantile(q / 100.0), q / 100.0]))
    .collect();
    Ok(serde_json::json!({
        "target": p.target.to_string(),
        "mode": if p.rate.is_some() { "open" } else { "closed" },
        "rate": p.rate, "conns": p.conns, "payload": p.payload, "conn_per_request": p.cpr,
        "requests": ok + errors, "ok": ok, "errors": errors, "duration_s": secs,
        "throughput": ok as f64 / secs,
        "latency_us": {
            "p50": h.value_at_quantile(0.5), "p90": h.value_at_quantile(0.9), "p99": h.value_at_quantile(0.99),
            "p999": h.value_at_quantile(0.999), "max": h.max(), "mean": h.mean(),
        },
        "cdf": cdf,
    })
    .to_string())
}

fn connect(p: &Plan) -> std::io::Result<std::net::TcpStream> {
    let s = std::net::TcpStream::connect_timeout(&p.target, p.timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(p.timeout))?;
    Ok(s)
}

/// Read frames from a blocking stream, calling `on` for each until it returns false.
fn read_frames(
    r: &mut impl std::io::Read,
    buf: &mut BytesMut,
    codec: &mut Motan2Codec,
    mut on: impl FnMut(Frame) -> bool,
) -> Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        while let Some(f) = codec.decode(buf)? {
            if !on(f) {
                return Ok(());
            }
        }
        let n = r.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed by the peer");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn open_loop_conn(
    p: Plan,
    rate: u32,
    c: u32,
    start: Instant,
    end: Instant,
    body: Bytes,
    stats: Arc<Stats>,
) -> Result<()> {
    use std::io::Write;
    let s = connect(&p).with_context(|| format!("connecting to {}", p.target))?;
    let mut r = s.try_clone()?;
    let mut w = s;
    let interval = Duration::from_secs_f64(p.conns as f64 / rate as f64);
    let pending: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let sent_all = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (pending, stats, sent_all) = (pending.clone(), stats.clone(), sent_all.clone());
        std::thread::spawn(move || {
            let mut buf = BytesMut::with_capacity(16 * 1024);
            let mut codec = Motan2Codec::default();
            let _ = read_frames(&mut r, &mut buf, &mut codec, |f| {
                let mut pend = pending.lock().unwrap();
                if let Some(intended) = pend.remove(&f.header.request_id) {
                    stats.done(intended, !f.is_exception());
                }
                !(sent_all.load(Ordering::Acquire) && pend.is_empty())
            });
        })
    };
    let offset = interval.mul_f64(c as f64 / p.conns as f64);
    let mut k: u64 = 0;
    loop {
        let intended = start + offset + interval.mul_f64(k as f64);
        if intended >= end {
            break;
        }
        sleep_until(intended);
        pending.lock().unwrap().insert(k, intended);
        if w.write_all(&request(k, &body)).is_err() {
            break;
        }
        k += 1;
    }
    sent_all.store(true, Ordering::Release);
    if pending.lock().unwrap().is_empty() {
        let _ = w.shutdown(std::net::Shutdown::Both);
    }
    let _ = reader.join();
    // Whatever is still pending did not come back in time.
    for (_, intended) in pending.lock().unwrap().drain() {
        stats.done(intended, false);
    }
    Ok(())
}

fn one_request(p: &Plan, id: u64, body: &Bytes) -> Result<bool> {
    use std::io::Write;
    let mut s = connect(p)?;
    s.write_all(&request(id, body))?;
    let mut buf = BytesMut::with_capacity(4096);
    let mut codec = Motan2Codec::default();
    let mut ok = false;
    read_frames(&mut s, &mut buf, &mut codec, |f| {
        ok = f.header.request_id == id && !f.is_exception();
        false
    })?;
    Ok(ok)
}

/// A new connection per request, one lane per `--conns`: a request whose intended time has
/// passed starts at once, and its latency includes the wait (open-loop semantics).
fn open_loop_cpr(
    p: Plan,
    rate: u32,
    c: u32,
    start: Instant,
    end: Instant,
    body: Bytes,
    stats: Arc<Stats>,
) -> Result<()> {
    let interval = Duration::from_secs_f64(p.conns as f64 / rate as f64);
    let offset = interval.mul_f64(c as f64 / p.conns as f64);
    let mut k: u64 = 0;
    loop {
        let intended = start + offset + interval.mul_f64(k as f64);
        if intended >= end {
            break;
        }
        sleep_until(intended);
        let ok = one_request(&p, k, &body).unwrap_or(false);
        stats.done(intended, ok);
        k += 1;
    }
    Ok(())
}

fn closed_loop_conn(p: Plan, start: Instant, end: Instant, body: Bytes, stats: Arc<Stats>) -> Result<()> {
    use std::io::Write;
    let mut s = connect(&p).with_context(|| format!("connecting to {}", p.target))?;
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut codec = Motan2Codec::default();
    sleep_until(start);
    let mut id = 0u64;
    while Instant::now() < end {
        let sent = Instant::now();
        id += 1;
        let mut ok = false;
        let r = s
            .write_all(&request(id, &body))
            .map_err(anyhow::Error::from)
            .and_then(|_| {
                read_frames(&mut s, &mut buf, &mut codec, |f| {
                    ok = f.header.request_id == id && !f.is_exception();
                    false
                })
            });
        stats.done(sent, r.is_ok() && ok);
        if r.is_err() || !ok {
            break;
        }
    }
    Ok(())
}
