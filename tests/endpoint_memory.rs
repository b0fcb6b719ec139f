//! Memory of an idle endpoint (issue #21: target ≤ 1 KiB): live heap bytes, counted by this
//! test binary's allocator, that a cluster holds per endpoint it was told about but never
//! called (pools are made on demand, so an idle endpoint has none).
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use sockmesh::cluster::Cluster;
use sockmesh::upstream::channel::Transport;
use sockmesh::url::Url;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn an_idle_endpoint_costs_at_most_a_kib() {
    const N: usize = 10_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _g = rt.enter();
    // A provider URL as motan registers it, and a refer with typical settings.
    let servers: Vec<Url> = (0..N)
        .map(|j| {
            Url::new(
                "motan2",
                &format!("10.{}.{}.{}", j / 65536, (j / 256) % 256, j % 256),
                8002,
                "com.example.Svc",
                "g",
            )
            .with_param("nodeType", "service")
            .with_param("application", "svc-app")
            .with_param("serialization", "simple")
        })
        .collect();
    let refer = Url::new("motan2", "", 0, "com.example.Svc", "g")
        .with_param("registry", "zk")
        .with_param("requestTimeout", "1000")
        .with_param("haStrategy", "failover")
        .with_param("loadbalance", "random")
        .with_param("warmEndpoints", "0");
    let c = Cluster::new("c", refer, Transport::default(), None, &Default::default()).unwrap();
    let before = LIVE.load(Ordering::Relaxed);
    c.apply("zk", 1, &servers, None);
    let per = (LIVE.load(Ordering::Relaxed) - before) as f64 / N as f64;
    eprintln!("an idle endpoint: {per:.0} bytes of heap");
    assert_eq!(c.endpoint_count(), N);
    assert!(per <= 1024.0, "{per:.0} bytes per idle endpoint");
    c.stop();
}
