//! Live ingest over loopback TCP: 512x512 u16 frames in the frame protocol (docs/frame-protocol.md)
//! through `StreamSource::next_frame`, against a plain socket reader (`std::net::TcpStream`,
//! `read_exact` of each header and payload into one buffer) of the same bytes from the same sender,
//! in the same run. Target: at least 1,000 frames/s through `StreamSource`.
//!
//! Before measuring, it counts heap allocations (all threads: sender, runtime, consumer) over 500
//! frames of steady-state ingest and prints them: the design allows none per frame.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use twinrig::acquire::stream::{
    Clock, FrameHeader, FrameSender, StreamOptions, StreamSource, HEADER_LEN,
};
use twinrig::acquire::FrameSource;

const H: usize = 512;
const W: usize = 512;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Sends `n` frames (times from `t0`, 1 ms apart) and the end-of-stream message to `addr`.
fn sender(addr: String, n: u64, t0: f64) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let px: Vec<u16> = (0..H * W).map(|i| (i * 7 % 65_536) as u16).collect();
        let mut tx = FrameSender::connect(&addr).expect("connect");
        for i in 0..n {
            let h = FrameHeader::frame(i, t0 + i as f64 * 1e-3, Clock::Rig, 0, H as u32, W as u32);
            tx.send_frame(&h, &px).expect("send");
        }
        tx.finish(Duration::from_secs(30)).expect("finish");
    })
}

fn source() -> StreamSource {
    StreamSource::bind(StreamOptions {
        listen: "127.0.0.1:0".into(),
        height: H,
        width: W,
        planes: 1,
        buffers: 32,
        stall_timeout: Duration::from_secs(10),
        first_header_timeout: Duration::from_secs(30),
        idle_timeout: Some(Duration::from_secs(30)),
        // One connection per measurement; the source lives across them.
        end_on_eos: false,
        clock_origin: Instant::now(),
    })
    .expect("bind")
}

fn count_allocations() {
    let mut src = source();
    let mut buf = vec![0u16; H * W];
    let (warm, n) = (50u64, 500u64);
    let tx = sender(src.local_addr(), warm + n, 0.0);
    for _ in 0..warm {
        src.next_frame(&mut buf).unwrap().unwrap();
    }
    let a0 = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..n {
        src.next_frame(&mut buf).unwrap().unwrap();
    }
    let allocs = ALLOCS.load(Ordering::Relaxed) - a0;
    tx.join().unwrap();
    println!(
        "ingest allocations: {allocs} over {n} frames of 512x512 u16 in steady state ({:.3} per frame)",
        allocs as f64 / n as f64
    );
}

fn bench(c: &mut Criterion) {
    count_allocations();
    let mut g = c.benchmark_group("ingest_512x512_u16_loopback_tcp");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(6));

    let plain = TcpListener::bind("127.0.0.1:0").unwrap();
    let plain_addr = plain.local_addr().unwrap().to_string();
    let mut buf = vec![0u8; H * W * 2];
    g.bench_function("plain_tcp_read_exact", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let tx = sender(plain_addr.clone(), iters, 0.0);
            let (mut s, _) = plain.accept().unwrap();
            let mut hdr = [0u8; HEADER_LEN];
            for _ in 0..iters {
                s.read_exact(&mut hdr).unwrap();
                s.read_exact(&mut buf).unwrap();
                black_box(&buf);
            }
            s.read_exact(&mut hdr).unwrap(); // end of stream
            let el = start.elapsed();
            drop(s); // the sender's wait for a reply ends at the close
            tx.join().unwrap();
            el
        })
    });

    let mut src = source();
    let addr = src.local_addr();
    let mut px = vec![0u16; H * W];
    let mut t0 = 0.0;
    g.bench_function("stream_source_next_frame", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let tx = sender(addr.clone(), iters, t0);
            t0 += iters as f64 * 1e-3 + 1.0;
            for _ in 0..iters {
                src.next_frame(&mut px).unwrap().expect("frame");
                black_box(&px);
            }
            let el = start.elapsed();
            tx.join().unwrap();
            el
        })
    });
    g.finish();
    let s = src.stats();
    println!(
        "stream_source: {} frames ok, {} rejected, {} dropped, {} back-pressure waits",
        s.frames_ok,
        s.frames_rejected.total(),
        s.frames_dropped,
        s.backpressure_waits
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
