//! Heap allocations per proxied request through the agent's real request path, in one process:
//! an echo Motan2 provider, the mesh built from a YAML configuration the way `sockmesh run`
//! builds it (`Config::parse` → `MotanConfig` → `Mesh::build`, agent and export listeners
//! served by `proxy::serve::accept_loop`), and a client sending requests one at a time over a
//! persistent connection.
//!
//! Only allocations made on the agent's runtime threads are counted (the client and the
//! provider run on threads of their own), so the figures are the agent's own. A `realloc`
//! counts as one allocation of its new size.
//!
//! Run: `cargo bench -p sockmesh --bench alloc` (`ALLOC_BENCH_REQUESTS=N` changes the count).
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use sockmesh::config::Config;
use sockmesh::filter::FilterShared;
use sockmesh::protocol::motan2::{Frame, Motan2Codec};
use sockmesh::proxy::mesh::{ClientHandler, Mesh, MeshHandle, MeshOptions, ServerHandler};
use sockmesh::proxy::serve::{AcceptGate, ConnectionLimits, ServeStats, accept_loop};
use sockmesh::upstream::channel::Transport;
use tokio_util::codec::{Decoder, Framed};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the agent runtime's threads: only their allocations are counted.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn count(size: usize) {
    if COUNTED.try_with(Cell::get).unwrap_or(false) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(size as u64, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(l.size());
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        count(l.size());
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count(n);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SERVICE_DIRECT: &str = "com.example.bench.Direct";
const SERVICE_EXPORTED: &str = "com.example.bench.Exported";
const GROUP: &str = "bench";
const WARMUP: usize = 2_000;

/// The echo provider: answers every request with its own body, on a thread of its own.
fn start_provider() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            l.set_nonblocking(true).unwrap();
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            while let Ok((s, _)) = l.accept().await {
                let _ = s.set_nodelay(true);
                tokio::spawn(async move {
                    let mut frames = Framed::new(s, Motan2Codec::default());
                    while let Some(Ok(f)) = frames.next().await {
                        let resp = if f.header.is_heartbeat() {
                            Frame::heartbeat_response(f.header.request_id)
                        } else {
                            Frame::response_to(&f, f.body.clone())
                        };
                        if frames.send(resp).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
    });
    addr
}

/// One agent: a refer straight to the provider, a refer to its own export port, and that
/// export backed by the provider.
fn config(agent: u16, export: u16, provider: SocketAddr) -> String {
    format!(
        "motan-agent:\n  port: {agent}\n  eport: {export}\n  application: alloc-bench\n\
         sockmesh:\n  log_level: warn\n  intercept:\n    enabled: false\n\
         motan-registry:\n  provider:\n    protocol: direct\n    address: \"{provider}\"\n\
         \x20 own-export:\n    protocol: direct\n    address: \"127.0.0.1:{export}\"\n\
         motan-refer:\n  direct:\n    path: {SERVICE_DIRECT}\n    group: {GROUP}\n    protocol: motan2\n    registry: provider\n\
         \x20 via-export:\n    path: {SERVICE_EXPORTED}\n    group: {GROUP}\n    protocol: motan2\n    registry: own-export\n\
         motan-service:\n  exported:\n    path: {SERVICE_EXPORTED}\n    group: {GROUP}\n    export: \"motan2:{export}\"\n    provider: motan2\n    proxy: \"motan2:{}\"\n",
        provider.port()
    )
}

/// Build the mesh and serve the agent port and the export port on `rt` (the counted runtime).
fn start_agent(rt: &tokio::runtime::Runtime, provider: SocketAddr) -> (SocketAddr, SocketAddr) {
    let agent_l = TcpListener::bind("127.0.0.1:0").unwrap();
    let export_l = TcpListener::bind("127.0.0.1:0").unwrap();
    let (agent, export) = (agent_l.local_addr().unwrap(), export_l.local_addr().unwrap());
    let cfg = Config::parse(&config(agent.port(), export.port(), provider), "<alloc bench>")
        .unwrap_or_else(|e| panic!("{e}"));
    let mc = &cfg.mesh;
    let opts = MeshOptions {
        transport: Transport::default(),
        local_ip: "127.0.0.1".into(),
        application: cfg.agent.application.clone(),
        snapshot_dir: std::env::temp_dir(),
        filters: FilterShared::new(),
        agent_registries: Vec::new(),
        agent_port: agent.port(),
        overrides: Arc::default(),
        idc: String::new(),
        // The bench measures the TCP path between the roles.
        local: None,
    };
    rt.block_on(async move {
        let mesh = Mesh::build(mc, &opts, None).unwrap_or_else(|e| panic!("{}", e.join("\n")));
        let mesh: MeshHandle = Arc::new(arc_swap::ArcSwap::from_pointee(mesh));
        let (shutdown, tasks) = (CancellationToken::new(), TaskTracker::new());
        let listen = |l: TcpListener| {
            l.set_nonblocking(true).unwrap();
            tokio::net::TcpListener::from_std(l).unwrap()
        };
        tokio::spawn(accept_loop(
            "agent",
            listen(agent_l),
            AcceptGate::new(&ConnectionLimits::default().budget),
            Arc::new(ClientHandler(mesh.clone())),
            ConnectionLimits::default(),
            Arc::new(ServeStats::default()),
            shutdown.clone(),
            tasks.clone(),
        ));
        tokio::spawn(accept_loop(
            "export",
            listen(export_l),
            AcceptGate::new(&ConnectionLimits::default().budget),
            Arc::new(ServerHandler {
                mesh: mesh.clone(),
                port: export.port(),
            }),
            ConnectionLimits::default(),
            Arc::new(ServeStats::default()),
            shutdown,
            tasks,
        ));
        mesh.load()
            .wait_ready(sockmesh::config::launch::DEFAULT_INIT_CLUSTER_TIMEOUT)
            .await;
    });
    (agent, export)
}

/// A request as an app sends it: 100 B simple-string body, the usual meta.
fn request(id: u64, service: &str) -> Bytes {
    let body = sockmesh::protocol::motan2::Value::String(Bytes::from(vec![b'x'; 95])).to_bytes();
    let mut f = Frame::request(id, service, "echo", body);
    for (k, v) in [("M_g", GROUP), ("M_pp", "motan2"), ("M_s", "alloc-bench")] {
        f.meta.insert(k, v);
    }
    f.encode_to_bytes()
}

/// A blocking client over one persistent connection: one request, then its response.
struct Client {
    s: TcpStream,
    buf: BytesMut,
    codec: Motan2Codec,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            s,
            buf: BytesMut::with_capacity(8192),
            codec: Motan2Codec::default(),
        }
    }

    fn call(&mut self, req: &[u8]) -> Frame {
        self.s.write_all(req).unwrap();
        loop {
            if let Some(f) = self.codec.decode(&mut self.buf).unwrap() {
                return f;
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).unwrap();
            assert!(n > 0, "agent closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// (allocations, bytes) per request of `n` requests to `addr` naming `service`.
fn measure(addr: SocketAddr, service: &str, n: usize) -> (f64, f64) {
    let mut c = Client::connect(addr);
    let req = request(7, service);
    let mut run = |count: usize| {
        for _ in 0..count {
            let resp = c.call(&req);
            assert!(!resp.is_exception(), "{service}: {:?}", resp.meta);
        }
    };
    run(WARMUP);
    let (a0, b0) = (ALLOCS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
    run(n);
    let (a1, b1) = (ALLOCS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
    ((a1 - a0) as f64 / n as f64, (b1 - b0) as f64 / n as f64)
}

fn main() {
    let n: usize = std::env::var("ALLOC_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let provider = start_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(|| COUNTED.with(|c| c.set(true)))
        .build()
        .unwrap();
    let (agent, export) = start_agent(&rt, provider);
    println!(
        "heap allocations per request on the agent's threads ({n} requests, 100 B body, one connection)"
    );
    println!("| path | allocations/request | bytes/request |");
    println!("|---|---:|---:|");
    for (label, addr, service) in [
        ("client role (agent port → provider)", agent, SERVICE_DIRECT),
        ("server role (export port → provider)", export, SERVICE_EXPORTED),
        (
            "both (agent port → own export port → provider)",
            agent,
            SERVICE_EXPORTED,
        ),
    ] {
        let (allocs, bytes) = measure(addr, service, n);
        println!("| {label} | {allocs:.1} | {bytes:.0} |");
    }
}
