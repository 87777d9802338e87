//! FrameRing throughput: 512x512 u16 frames from a producer thread to a consumer thread that reads
//! (checksums) every pixel of every frame, against a memcpy of the same bytes followed by the same
//! checksum on one thread, in the same run. Target: at least 50% of memcpy + checksum.
//!
//! The consumer must touch the whole frame: one that reads a single pixel (as this bench once did)
//! never pulls the frame's bytes across to its core, and the ratio is met by construction.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::time::{Duration, Instant};
use twinrig::ring::{frame_ring, Overflow};

const PIXELS: usize = 512 * 512;

/// Reads every pixel: the work the consumer does on each frame, and the baseline does after its
/// copy.
fn checksum(px: &[u16]) -> u64 {
    // A plain sum vectorises, so the checksum runs at memory speed and the bench measures moving
    // frames, not arithmetic.
    px.iter().map(|&v| u64::from(v)).sum()
}

fn bench(c: &mut Criterion) {
    let src: Vec<u16> = (0..PIXELS).map(|i| (i * 7 % 65_536) as u16).collect();
    let want = checksum(&src);
    let mut g = c.benchmark_group("frames_512x512_u16");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(4));

    let mut dst = vec![0u16; PIXELS];
    g.bench_function("memcpy_and_checksum_one_thread", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(checksum(black_box(&dst)))
        })
    });

    g.bench_function("frame_ring_producer_to_checksumming_consumer", |b| {
        b.iter_custom(|iters| {
            let (mut p, mut cons) = frame_ring(16, PIXELS, Overflow::Block);
            cons.set_producer_thread(std::thread::current());
            let consumer = std::thread::spawn(move || {
                let mut n = 0u64;
                let mut bad = 0u64;
                loop {
                    match cons.pop() {
                        Some(s) => {
                            if checksum(black_box(&s.pixels)) != want {
                                bad += 1;
                            }
                            n += 1;
                            cons.recycle(s);
                        }
                        None if cons.is_finished() => break,
                        None => cons.wait(Duration::from_micros(50)),
                    }
                }
                (n, bad)
            });
            p.set_consumer_thread(consumer.thread().clone());
            let start = Instant::now();
            for i in 0..iters {
                p.push_with(i, 0.0, |px| px.copy_from_slice(&src));
            }
            drop(p);
            let (n, bad) = consumer.join().expect("consumer");
            let elapsed = start.elapsed();
            assert_eq!(n, iters);
            assert_eq!(
                bad, 0,
                "the consumer read a frame that was not the one pushed"
            );
            elapsed
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
