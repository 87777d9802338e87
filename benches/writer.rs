//! Session writer throughput against a raw sequential file write of the same bytes, in the same
//! run, on the same disk: 60 frames of 512x512 u16 (31.5 MB) per iteration.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::io::Write;
use twinrig::config::RigConfig;
use twinrig::session::{SessionInfo, SessionWriter};

const FRAMES: usize = 60;
const H: usize = 512;
const W: usize = 512;

fn config(compression: &str) -> RigConfig {
    let text = twinrig::config::EMBEDDED_SIM_CONFIG
        .replace("width = 256", "width = 512")
        .replace("height = 256", "height = 512")
        .replace(
            "compression = \"none\"",
            &format!("compression = \"{compression}\""),
        );
    RigConfig::parse(&text, "bench").expect("bench config")
}

fn frames() -> Vec<Vec<u16>> {
    // Realistic content (a simulated field of view) so deflate sees real entropy.
    let cfg = config("none");
    let mut rig = twinrig::sim::SimRig::new(&cfg, 1);
    let mut ev = twinrig::sim::FrameEvents::default();
    (0..FRAMES)
        .map(|_| {
            let mut f = vec![0u16; H * W];
            rig.step(&mut f, &mut ev);
            f
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = frames();
    let bytes = (FRAMES * H * W * 2) as u64;
    let info = SessionInfo {
        mouse_id: "bench".into(),
        session_id: "bench".into(),
        start_time: "2026-01-01T00:00:00Z".into(),
    };
    let mut g = c.benchmark_group("write_60_frames_512x512");
    g.throughput(Throughput::Bytes(bytes));
    g.sample_size(10);

    g.bench_function("raw_sequential_file", |b| {
        let p = dir.path().join("raw.bin");
        b.iter(|| {
            let mut f =
                std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&p).unwrap());
            for fr in &data {
                // SAFETY-free byte view: u16 -> little-endian bytes, as HDF5 stores them on x86.
                let b: Vec<u8> = fr.iter().flat_map(|v| v.to_le_bytes()).collect();
                f.write_all(&b).unwrap();
            }
            f.flush().unwrap();
        })
    });
    for comp in ["none", "deflate"] {
        let cfg = config(comp);
        g.bench_function(format!("session_writer_{comp}"), |b| {
            let p = dir.path().join(format!("s_{comp}.h5"));
            b.iter(|| {
                let mut w = SessionWriter::create(&p, &cfg, &info, true).unwrap();
                for (i, fr) in data.iter().enumerate() {
                    w.append_frame(fr, i as f64 / 30.0).unwrap();
                }
                w.finish("end").unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
