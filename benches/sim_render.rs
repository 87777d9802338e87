//! Simulator speed at 512x512 (the typical resonant-scanner frame): frames/s of the microscope's
//! rendering alone and of a whole simulated rig step (mouse, behaviour, display, microscope), on one
//! core. Target: at least 10x real time at 30 Hz, i.e. 300 frames/s.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use twinrig::config::RigConfig;
use twinrig::sim::{FrameEvents, SimRig};

fn config_512() -> RigConfig {
    let text = twinrig::config::EMBEDDED_SIM_CONFIG
        .replace("width = 256", "width = 512")
        .replace("height = 256", "height = 512")
        .replace("neurons = 200", "neurons = 500")
        .replace("um_per_px = 2.0", "um_per_px = 1.0");
    RigConfig::parse(&text, "bench").expect("bench config")
}

fn bench(c: &mut Criterion) {
    let cfg = config_512();
    let mut rig = SimRig::new(&cfg, 1);
    let mut frame = vec![0u16; 512 * 512];
    let mut ev = FrameEvents::default();
    // Warm the population up so calcium is at its working level.
    for _ in 0..60 {
        rig.step(&mut frame, &mut ev);
    }
    let mut g = c.benchmark_group("sim_512x512_500_neurons");
    g.throughput(Throughput::Elements(1));
    g.sample_size(30);
    let calcium = rig.calcium.clone();
    g.bench_function("microscope_render", |b| {
        b.iter(|| black_box(rig.microscope.render(black_box(&calcium), &mut frame)))
    });
    g.bench_function("rig_step", |b| {
        b.iter(|| rig.step(black_box(&mut frame), &mut ev))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
