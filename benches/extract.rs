//! Online extraction speed at 512x512 with 500 ROIs (the typical resonant-scanner frame), one
//! core, on frames from the simulated rig: each step on its own (motion estimate, the optional
//! resampling of the whole frame, ROI traces, dF/F, deconvolution) and the whole
//! `Extractor::process`, with and without writing the registered frame. Throughput is in
//! frames/s. Target: motion + traces + dF/F in at most 2 ms per frame (>= 500 frames/s).
//!
//! On a shared machine wall time counts the time the benchmark waits for a core; with
//! `EXTRACT_BENCH_CPU_TIME=1` the bench measures the thread's CPU time instead
//! (`CLOCK_THREAD_CPUTIME_ID`), which is what one frame costs the core that runs it.

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use twinrig::config::RigConfig;
use twinrig::extract::{
    align_masks, build_reference, masks_from_table, Baseline, BaselineConfig, DeconvConfig,
    Extractor, ExtractorConfig, FrameOutput, MotionCorrector, MotionOptions, NeuropilConfig,
    OnlineOasis, RoiSet, Shift,
};
use twinrig::sim::{FrameEvents, SimRig};

const SIDE: usize = 512;
const FRAMES: usize = 64;

fn config_512() -> RigConfig {
    let text = twinrig::config::EMBEDDED_SIM_CONFIG
        .replace("width = 256", "width = 512")
        .replace("height = 256", "height = 512")
        .replace("neurons = 200", "neurons = 500")
        .replace("um_per_px = 2.0", "um_per_px = 1.0");
    RigConfig::parse(&text, "bench").expect("bench config")
}

/// CPU time of the calling thread, nanoseconds (see the module docs).
struct CpuTime(WallTime);

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for CpuTime {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Values are nanoseconds, as for wall time, so its formatter applies.
        self.0.formatter()
    }
}

fn bench<M: Measurement + 'static>(c: &mut Criterion<M>) {
    let cfg = config_512();
    let rate = cfg.imaging.frame_rate_hz as f32;
    let mut rig = SimRig::new(&cfg, 1);
    let mut frame = vec![0u16; SIDE * SIDE];
    let mut ev = FrameEvents::default();
    // Warm the population up so calcium is at its working level, then keep a cycle of frames.
    for _ in 0..60 {
        rig.step(&mut frame, &mut ev);
    }
    let frames: Vec<Vec<u16>> = (0..FRAMES)
        .map(|_| {
            rig.step(&mut frame, &mut ev);
            frame.clone()
        })
        .collect();
    let reference = build_reference(&frames, SIDE, SIDE).expect("reference");
    let masks = masks_from_table(&rig.microscope.footprints, SIDE, SIDE).expect("masks");
    let offset = align_masks(&reference, SIDE, SIDE, &masks, 50.0).expect("align");
    let motion = MotionOptions::new(25.0);
    let config = ExtractorConfig {
        height: SIDE,
        width: SIDE,
        motion,
        registered_frame: false,
        roi_offset_px: [offset.dy, offset.dx],
        neuropil: NeuropilConfig::default(),
        baseline: BaselineConfig::from_rate(rate, 60.0, 10.0),
        deconv: Some(DeconvConfig::from_tau(0.9, rate, 0.0, 2.0)),
    };

    // Per-step inputs, computed once: shifts, corrected traces and dF/F of every frame.
    let mut mc = MotionCorrector::with_options(SIDE, SIDE, &reference, motion).expect("mc");
    let shifts: Vec<Shift> = frames.iter().map(|f| mc.estimate(f).unwrap()).collect();
    let rois = RoiSet::new(SIDE, SIDE, &masks, config.neuropil).expect("rois");
    let n = rois.len();
    let mut ex = Extractor::new(config.clone(), &reference, &masks).expect("extractor");
    let mut out = FrameOutput::new(n);
    let (mut corrected, mut dff) = (Vec::new(), Vec::new());
    for f in &frames {
        ex.process(f, &mut out).unwrap();
        corrected.push(out.corrected.clone());
        dff.push(out.dff.clone());
    }

    let mut g = c.benchmark_group(format!("extract_512x512_{n}_rois"));
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    g.warm_up_time(Duration::from_millis(800));
    g.measurement_time(Duration::from_secs(3));

    let mut k = 0;
    g.bench_function("motion_estimate", |b| {
        b.iter(|| {
            k = (k + 1) % FRAMES;
            black_box(mc.estimate(black_box(&frames[k])).unwrap())
        })
    });
    let mut registered = vec![0.0f32; SIDE * SIDE];
    g.bench_function("motion_apply_whole_frame", |b| {
        b.iter(|| {
            k = (k + 1) % FRAMES;
            mc.apply(black_box(&frames[k]), shifts[k], &mut registered)
                .unwrap();
        })
    });
    let (mut raw, mut np, mut cor) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    g.bench_function("traces_shifted", |b| {
        b.iter(|| {
            k = (k + 1) % FRAMES;
            let s = Shift {
                dy: shifts[k].dy + offset.dy,
                dx: shifts[k].dx + offset.dx,
                peak: 0.0,
            };
            rois.traces_shifted(black_box(&frames[k]), s, &mut raw, &mut np, &mut cor)
                .unwrap();
        })
    });
    let mut baseline = Baseline::new(n, config.baseline).expect("baseline");
    let mut out_dff = vec![0.0; n];
    g.bench_function("dff", |b| {
        b.iter(|| {
            k = (k + 1) % FRAMES;
            baseline
                .push(black_box(&corrected[k]), &mut out_dff)
                .unwrap();
        })
    });
    let mut oasis = OnlineOasis::new(n, config.deconv.unwrap()).expect("oasis");
    let mut spikes = vec![0.0; n];
    g.bench_function("deconv", |b| {
        b.iter(|| {
            k = (k + 1) % FRAMES;
            black_box(oasis.push(black_box(&dff[k]), &mut spikes).unwrap())
        })
    });
    g.bench_function("process", |b| {
        b.iter(|| {
            k = (k + 1) % FRAMES;
            black_box(ex.process(black_box(&frames[k]), &mut out).unwrap())
        })
    });
    let mut ex_reg = Extractor::new(
        ExtractorConfig {
            registered_frame: true,
            ..config
        },
        &reference,
        &masks,
    )
    .expect("extractor");
    g.bench_function("process_with_registered_frame", |b| {
        b.iter(|| {
            k = (k + 1) % FRAMES;
            black_box(ex_reg.process(black_box(&frames[k]), &mut out).unwrap())
        })
    });
    g.finish();
}

fn main() {
    if std::env::var_os("EXTRACT_BENCH_CPU_TIME").is_some() {
        let mut c = Criterion::default()
            .with_measurement(CpuTime(WallTime))
            .configure_from_args();
        bench(&mut c);
        c.final_summary();
    } else {
        let mut c = Criterion::default().configure_from_args();
        bench(&mut c);
        c.final_summary();
    }
}
