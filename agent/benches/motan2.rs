//! Decode and encode cost of a Motan2 request with realistic meta (M_p, M_m, M_g, M_pp, M_rid,
//! host, M_s) and 100 B / 4 KiB bodies; prints allocations per frame, counted by a wrapping
//! global allocator, before the timings.
//! Run: `cargo bench -p sockmesh --bench motan2`.
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sockmesh::protocol::motan2::{Frame, Motan2Codec, Value};
use tokio_util::codec::Decoder;

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
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

/// Frames per buffer in the stream benchmark: a read buffer holding several frames.
const BATCH: usize = 64;

/// A request whose whole body (one simple string) is `body_len` bytes.
fn request(body_len: usize) -> Frame {
    let body = Value::String(Bytes::from(vec![b'x'; body_len - 5])).to_bytes();
    let mut f = Frame::request(0x1234_5678, "com.weibo.HelloService", "hello", body);
    for (k, v) in [
        ("M_g", "motan-demo-rpc"),
        ("M_pp", "motan2"),
        ("M_rid", "1699999999123456789"),
        ("host", "10.77.0.12"),
        ("M_s", "client-app"),
    ] {
        f.meta.insert(k, v);
    }
    f
}

/// Allocations per frame of `op`, which handles `frames` frames; `setup` is not counted.
fn allocations<S>(label: &str, frames: usize, mut setup: impl FnMut() -> S, mut op: impl FnMut(S)) {
    const ROUNDS: usize = 1000;
    let mut counted = 0;
    for _ in 0..ROUNDS {
        let s = setup();
        let before = ALLOCS.load(Ordering::Relaxed);
        op(s);
        counted += ALLOCS.load(Ordering::Relaxed) - before;
    }
    println!(
        "allocations per frame: {label}: {:.2}",
        counted as f64 / (ROUNDS * frames) as f64
    );
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("motan2");
    for size in [100usize, 4096] {
        let frame = request(size);
        let wire = frame.encode_to_bytes();
        let batch: BytesMut = (0..BATCH).flat_map(|_| wire.iter().copied()).collect();
        let mut codec = Motan2Codec::default();
        println!("{size} B body: {} B on the wire", wire.len());

        allocations(
            &format!("decode {size} B, fresh buffer"),
            1,
            || BytesMut::from(&wire[..]),
            |mut buf| drop(black_box(codec.decode(&mut buf).unwrap().unwrap())),
        );
        allocations(
            &format!("decode {size} B, {BATCH} frames per read buffer"),
            BATCH,
            || batch.clone(),
            |mut buf| {
                while let Some(f) = codec.decode(&mut buf).unwrap() {
                    drop(black_box(f));
                }
            },
        );
        allocations(
            &format!("encode {size} B, encode_to_bytes"),
            1,
            || (),
            |_| drop(black_box(frame.encode_to_bytes())),
        );
        let mut out = BytesMut::with_capacity(2 * wire.len());
        allocations(
            &format!("encode {size} B, into a reused write buffer"),
            1,
            || (),
            |_| {
                frame.encode(&mut out);
                black_box(&out);
                out.clear();
            },
        );

        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new("decode", size), &wire, |b, wire| {
            b.iter_batched_ref(
                || BytesMut::from(&wire[..]),
                |buf| codec.decode(buf).unwrap().unwrap(),
                BatchSize::SmallInput,
            )
        });
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_with_input(BenchmarkId::new("decode_batch64", size), &batch, |b, batch| {
            b.iter_batched_ref(
                || batch.clone(),
                |buf| {
                    let mut n = 0;
                    while let Some(f) = codec.decode(buf).unwrap() {
                        black_box(f);
                        n += 1;
                    }
                    n
                },
                BatchSize::SmallInput,
            )
        });
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::new("encode_to_bytes", size), &frame, |b, f| {
            b.iter(|| f.encode_to_bytes())
        });
        g.bench_with_input(BenchmarkId::new("encode_reused_buffer", size), &frame, |b, f| {
            b.iter(|| {
                f.encode(&mut out);
                black_box(&out);
                out.clear();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
