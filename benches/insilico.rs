//! In-silico search on the reference twin: stimulus frames scored per second at batch sizes
//! 1..64 (one twin, one thread: the unit the search's worker pool multiplies by its cores; on CUDA
//! too when this build and machine have it), then one full search at the default budget on all
//! cores, timed once (skip it with INSILICO_BENCH_FULL=0).

use std::path::PathBuf;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use twinrig::config::Backend;
use twinrig::insilico::{search, Objective, SearchOptions};
use twinrig::twin::runtime::cuda_unavailable_reason;
use twinrig::twin::{Twin, TwinOptions};

fn model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("onnx/reference_twin.onnx")
}

fn batches(c: &mut Criterion) {
    let mut backends = vec![Backend::Cpu];
    if cuda_unavailable_reason().is_none() {
        backends.push(Backend::Cuda);
    }
    for backend in backends {
        let name = format!("insilico_frames_{backend:?}").to_lowercase();
        let mut g = c.benchmark_group(name);
        let opts = TwinOptions {
            backend,
            threads: 1,
        };
        let mut twin = Twin::load_with(&model(), &opts).expect("reference twin");
        let ct = twin.contract().clone();
        let hw = ct.stimulus_len();
        for b in [1usize, 2, 4, 8, 16, 32, 64] {
            twin.prepare_batch(b).unwrap();
            let mut st = twin.new_batch_state(b);
            let stim: Vec<f32> = (0..b * hw)
                .map(|i| 127.5 + 100.0 * ((i as f32) * 0.05).sin())
                .collect();
            let beh = vec![0f32; b * ct.n_behavior()];
            let mut out = vec![0f32; b * ct.n_neurons];
            g.throughput(Throughput::Elements(b as u64));
            g.bench_function(format!("batch_{b}"), |bch| {
                bch.iter(|| twin.run_batch(&mut st, &stim, &beh, &mut out).unwrap())
            });
        }
        g.finish();
    }
}

fn full_search(_: &mut Criterion) {
    if std::env::var("INSILICO_BENCH_FULL").is_ok_and(|v| v == "0") {
        return;
    }
    let mut twin = Twin::load(&model(), Backend::Cpu).expect("reference twin");
    let o = SearchOptions {
        objective: Objective::Neuron,
        targets: vec![133, 65, 74, 22, 177],
        ..SearchOptions::default()
    };
    let t0 = Instant::now();
    let plan = search(&mut twin, &o, &|_, _| {}).expect("search");
    let s = t0.elapsed().as_secs_f64();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "insilico/full_search: default budget {} evaluations x {} frames, 5 targets, {cores} cores: {s:.1} s ({:.1} evaluations/s, {:.0} frames/s)",
        plan.evaluations,
        plan.frames,
        plan.evaluations as f64 / s,
        (plan.evaluations * plan.frames as u64) as f64 / s
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = batches, full_search
}
criterion_main!(benches);
