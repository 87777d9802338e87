//! Twin runtime on tract: per-step latency of the reference twin (batch 1, 1 thread and all
//! threads) and batch throughput (B = 32 candidates per call). onnxruntime on the same model and
//! inputs: tools/bench_ort.py (tools/bench_compare.sh prints both side by side).

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use twinrig::twin::{Twin, TwinOptions};

fn model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("onnx/reference_twin.onnx")
}

fn stimulus(hw: usize, f: usize) -> Vec<f32> {
    (0..hw)
        .map(|i| 127.5 + 100.0 * (((i + 3 * f) as f32) * 0.05).sin())
        .collect()
}

fn bench(c: &mut Criterion) {
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut g = c.benchmark_group("twin");
    g.throughput(Throughput::Elements(1));
    // One thread, and all of them where that is more (on a one-CPU host `[1, all]` named two
    // benches step_1_threads).
    let mut counts = vec![1];
    if all > 1 {
        counts.push(all);
    }
    for threads in counts {
        let opts = TwinOptions {
            threads,
            ..Default::default()
        };
        let mut twin = Twin::load_with(&model(), &opts).expect("reference twin");
        let ct = twin.contract().clone();
        let stim: Vec<Vec<f32>> = (0..16).map(|f| stimulus(ct.stimulus_len(), f)).collect();
        let beh = vec![5.0f32; ct.n_behavior()];
        let mut out = vec![0f32; ct.n_neurons];
        let mut st = twin.new_state();
        let mut i = 0usize;
        g.bench_function(format!("step_{threads}_threads"), |b| {
            b.iter(|| {
                i += 1;
                twin.step(&mut st, &stim[i % 16], &beh, &mut out).unwrap();
            })
        });
        if threads == all {
            let bsz = 32;
            twin.prepare_batch(bsz).unwrap();
            let mut bs = twin.new_batch_state(bsz);
            let stim_b: Vec<f32> = (0..bsz).flat_map(|j| stim[j % 16].clone()).collect();
            let beh_b = vec![5.0f32; bsz * ct.n_behavior()];
            let mut out_b = vec![0f32; bsz * ct.n_neurons];
            g.throughput(Throughput::Elements(bsz as u64));
            g.bench_function(format!("batch_{bsz}_{threads}_threads"), |b| {
                b.iter(|| {
                    twin.run_batch(&mut bs, &stim_b, &beh_b, &mut out_b)
                        .unwrap()
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
