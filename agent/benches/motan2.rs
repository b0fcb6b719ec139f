//! Decode and encode cost of a Motan2 request with realistic meta, 100 B and 4 KiB bodies.
//! Also prints allocations per operation, counted by a wrapping global allocator.
//! Run: `cargo bench -p sockmesh --bench motan2`.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sockmesh::protocol::motan2::{Frame, Motan2Codec};
use tokio_util::codec::Decoder;

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn request(body_len: usize) -> Frame {
    let mut f = Frame::request(
        0x1234_5678,
        "com.weibo.HelloService",
        "hello",
        Bytes::from(vec![0x5a; body_len]),
    );
    for (k, v) in [
        ("M_g", "g"),
        ("M_pp", "motan2"),
        ("M_rid", "123456789"),
        ("host", "127.0.0.1"),
        ("M_s", "client-app"),
    ] {
        f.meta.insert(k, v);
    }
    f
}

fn allocations(label: &str, n: u64, mut op: impl FnMut()) {
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..n {
        op();
    }
    let per = (ALLOCS.load(Ordering::Relaxed) - before) as f64 / n as f64;
    println!("allocations per op: {label}: {per:.2}");
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("motan2");
    for size in [100usize, 4096] {
        let frame = request(size);
        let wire = frame.to_bytes();
        g.throughput(Throughput::Elements(1));
        let mut codec = Motan2Codec::default();
        allocations(&format!("decode {size} B"), 10_000, || {
            let mut buf = BytesMut::from(&wire[..]);
            std::hint::black_box(codec.decode(&mut buf).unwrap().unwrap());
        });
        allocations(&format!("encode {size} B"), 10_000, || {
            std::hint::black_box(frame.to_bytes());
        });
        g.bench_with_input(BenchmarkId::new("decode", size), &wire, |b, wire| {
            b.iter(|| {
                // The copy into a read buffer is what a connection does too.
                let mut buf = BytesMut::from(&wire[..]);
                codec.decode(&mut buf).unwrap().unwrap()
            })
        });
        g.bench_with_input(BenchmarkId::new("encode", size), &frame, |b, f| {
            b.iter(|| f.to_bytes())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
