//! Harp link benchmarks: the stream parser's throughput on a realistic mix of sync-board
//! messages (MB/s), and a register round trip (`R_WHO_AM_I` read) from the host driver to the
//! simulated board's firmware over a real pseudo-terminal, with the board's event stream running.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use twinrig::config::RigConfig;
use twinrig::harp::sim::{SimBoard, SimBoardOptions};
use twinrig::harp::{HarpDriver, HarpOptions};
use twinrig_firmware::device::registers::address as reg;
use twinrig_firmware::harp::{ElementType, Message, Parser, Payload, Timestamp};

/// About 64 KiB of what the board sends: frame clock, photodiode and encoder events, heartbeats
/// and replies, in the proportions of a 30 Hz / 60 Hz / 100 Hz rig.
fn stream() -> Vec<u8> {
    let mut out = Vec::with_capacity(70_000);
    let mut buf = [0u8; 64];
    let mut i: u32 = 0;
    while out.len() < 64 * 1024 {
        let t = Timestamp::from_micros(u64::from(i) * 1_000);
        let (count, level, who, position) = ([i], [(i % 2) as u8], [2176u16], [i as i32 * 3]);
        let msg = match i % 10 {
            0 | 5 => Message::event(reg::FRAME_CLOCK, t, Payload::U32(&count)),
            1 | 3 | 6 | 8 => Message::event(reg::PHOTODIODE, t, Payload::U8(&level)),
            9 => Message::new(
                twinrig_firmware::harp::MessageType::Read,
                reg::WHO_AM_I,
                Payload::U16(&who),
            )
            .with_timestamp(t),
            _ => Message::event(reg::ENCODER, t, Payload::S32(&position)),
        };
        let n = msg.encode_into(&mut buf).expect("encode");
        out.extend_from_slice(&buf[..n]);
        i += 1;
    }
    out
}

fn parser(c: &mut Criterion) {
    let data = stream();
    let mut g = c.benchmark_group("harp_parser");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    for chunk in [64usize, 4096] {
        g.bench_function(format!("push_{chunk}_byte_reads"), |b| {
            b.iter_batched_ref(
                Parser::<1024>::new,
                |p| {
                    let mut n = 0usize;
                    for c in data.chunks(chunk) {
                        n += p.push(c, |m| {
                            std::hint::black_box(m.address());
                        });
                    }
                    n
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn round_trip(c: &mut Criterion) {
    let cfg = RigConfig::embedded_sim();
    let board = SimBoard::spawn(&cfg, SimBoardOptions::default()).expect("simulated board");
    let drv = HarpDriver::open(
        &board.port(),
        HarpOptions::from_config(&cfg.sync).expect("options"),
    )
    .expect("open the simulated board");
    let events = drv.events();
    let mut g = c.benchmark_group("harp_pty");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    g.warm_up_time(Duration::from_secs(1));
    g.bench_function("read_who_am_i_round_trip", |b| {
        b.iter(|| {
            // Keep the event channel drained, as the rig does.
            while events.try_recv().is_ok() {}
            drv.request(&Message::read(reg::WHO_AM_I, ElementType::U16), "bench")
                .expect("reply")
        })
    });
    g.finish();
    let rt = drv.round_trip(2000).expect("round trips");
    eprintln!(
        "harp_pty round trip over 2000 reads: p50 {:.0} us, p99 {:.0} us, max {:.0} us",
        rt.p50_us, rt.p99_us, rt.max_us
    );
}

criterion_group!(benches, parser, round_trip);
criterion_main!(benches);
