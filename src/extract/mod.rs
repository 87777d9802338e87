//! Online extraction: one imaging frame in, one row of per-ROI activity out.
//!
//! The stage is a chain of four steps, each usable on its own:
//!
//! 1. [`motion`]: rigid motion correction by phase correlation against a reference image
//!    (suite2p's rigid registration, with sub-pixel peak fitting), on a central window of the
//!    frame (256x256 by default),
//! 2. [`rois`]: weighted ROI fluorescence minus a scaled neuropil annulus (suite2p rule),
//!    read from the raw frame at the shifted ROI positions, so the frame itself is only
//!    resampled when a caller asks for the registered frame
//!    ([`ExtractorConfig::registered_frame`]),
//! 3. [`baseline`]: dF/F against a running "maximin" baseline kept in bounded memory,
//! 4. [`deconv`]: optional online OASIS AR(1) deconvolution with a fixed output lag.
//!
//! [`Extractor`] chains them and times each step. Everything a frame needs (FFT plans, scratch
//! buffers, ring storage) is allocated by the constructors, so the hot path allocates nothing:
//! this matters because the extractor shares the rig workstation with the recorder, and an
//! allocator stall there would show up as a skipped analysis frame. Constructors validate their
//! input and return [`ExtractError`]; per-frame calls only check buffer lengths and return an
//! error (never panic) when a caller hands in a buffer of the wrong size.
//!
//! Speed (benches/extract.rs, one core, 512x512 frames from the simulator, 500 ROIs): motion
//! estimate ~0.4 ms, traces ~0.35 ms, dF/F ~0.02 ms, deconvolution ~0.05 ms, the whole
//! `process` ~0.85 ms (thread CPU time on a shared 2-core machine); writing the registered
//! frame adds ~0.2 ms.
//!
//! ROI masks must be in the reference's coordinates. Masks from elsewhere (a simulator's ground
//! truth, an earlier session) are placed with [`align_masks`] and
//! [`ExtractorConfig::roi_offset_px`]; [`masks_from_table`] converts a session's ROI table.

pub mod baseline;
pub mod deconv;
pub mod motion;
pub mod pairing;
pub mod rois;

#[cfg(test)]
mod synth;

use std::time::{Duration, Instant};

pub use baseline::{Baseline, BaselineConfig};
pub use deconv::{DeconvConfig, OnlineOasis};
pub use motion::{
    build_reference, build_reference_with, MotionCorrector, MotionOptions, ReferenceOptions, Shift,
};
pub use rois::{align_masks, imperfect_masks, masks_from_table, NeuropilConfig, RoiMask, RoiSet};

/// Everything that can be wrong with the input of the extraction stage.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExtractError {
    #[error("frame size {height}x{width} is invalid: {reason}")]
    FrameSize {
        height: usize,
        width: usize,
        reason: &'static str,
    },
    #[error("{what} has length {got}, expected {expected}")]
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{name} = {value} is invalid: {reason}")]
    Parameter {
        name: &'static str,
        value: f64,
        reason: &'static str,
    },
    #[error("no frames given to build a reference image")]
    NoFrames,
    #[error("frame {index} has {got} pixels, expected {expected}")]
    FrameLength {
        index: usize,
        expected: usize,
        got: usize,
    },
    #[error("reference image value at pixel {index} is not finite")]
    NonFiniteReference { index: usize },
    #[error("reference image has no contrast (it is constant), so no shift can be measured")]
    FlatReference,
    #[error("no ROIs given: the extractor needs at least one ROI mask")]
    NoRois,
    #[error(
        "ROI table was made for {roi_height}x{roi_width} frames but the frames are \
         {height}x{width}"
    )]
    RoiFrameMismatch {
        roi_height: usize,
        roi_width: usize,
        height: usize,
        width: usize,
    },
    #[error("ROI table is malformed: {reason}")]
    RoiTable { reason: &'static str },
    #[error("ROI {id} has no pixels")]
    EmptyMask { id: u32 },
    #[error("ROI {id} has {pixels} pixel indices but {weights} weights")]
    MaskLengths {
        id: u32,
        pixels: usize,
        weights: usize,
    },
    #[error("ROI {id} pixel index {index} outside a {height}x{width} frame")]
    PixelOutOfRange {
        id: u32,
        index: u32,
        height: usize,
        width: usize,
    },
    #[error("ROI {id} weight {position} is {value}; weights must be finite and non-negative")]
    BadWeight {
        id: u32,
        position: usize,
        value: f32,
    },
    #[error("ROI {id} weights sum to zero")]
    ZeroWeights { id: u32 },
    #[error("ROI id {id} is used by more than one mask")]
    DuplicateId { id: u32 },
    #[error("FFT failed: {0}")]
    Fft(String),
}

/// Configuration of the whole chain.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractorConfig {
    pub height: usize,
    pub width: usize,
    /// Registration: largest shift (suite2p: 10% of the frame side), smoothing, taper and the
    /// central window used ([`MotionOptions::new`] for the defaults).
    pub motion: MotionOptions,
    /// Also write the motion-corrected frame each time (see
    /// [`Extractor::registered_frame`]), e.g. to record registered frames or refresh the
    /// reference. Off, the traces are read from the raw frame at shifted positions and no
    /// frame is resampled, which saves most of the per-frame cost of motion correction.
    pub registered_frame: bool,
    /// Where the ROI masks sit in the reference: mask pixel (y, x) is reference pixel
    /// (y + dy, x + dx). [0, 0] when the masks were drawn on this reference; use
    /// [`align_masks`] when they come from elsewhere (a simulator's ground truth, another
    /// session).
    pub roi_offset_px: [f32; 2],
    pub neuropil: NeuropilConfig,
    pub baseline: BaselineConfig,
    /// `None` disables deconvolution; `FrameOutput::spikes` then stays zero.
    pub deconv: Option<DeconvConfig>,
}

/// Per-frame results, preallocated once with [`FrameOutput::new`] and overwritten by
/// [`Extractor::process`].
#[derive(Debug, Clone, PartialEq)]
pub struct FrameOutput {
    /// Index of the frame in this extractor's stream (0 for the first processed frame).
    pub frame_index: u64,
    /// Estimated displacement of the frame's content relative to the reference.
    pub shift: Shift,
    /// Weighted ROI fluorescence.
    pub raw: Vec<f32>,
    /// Mean of each ROI's neuropil annulus.
    pub neuropil: Vec<f32>,
    /// raw - coefficient * neuropil.
    pub corrected: Vec<f32>,
    /// Running baseline F0 of `corrected`.
    pub f0: Vec<f32>,
    /// (corrected - F0) / max(F0, eps).
    pub dff: Vec<f32>,
    /// Deconvolved event amplitudes (dF/F units) for frame `spikes_frame`, which lags
    /// `frame_index` by the deconvolution lag. Zero while `spikes_frame` is `None`.
    pub spikes: Vec<f32>,
    pub spikes_frame: Option<u64>,
}

impl FrameOutput {
    pub fn new(n_rois: usize) -> Self {
        Self {
            frame_index: 0,
            shift: Shift::default(),
            raw: vec![0.0; n_rois],
            neuropil: vec![0.0; n_rois],
            corrected: vec![0.0; n_rois],
            f0: vec![0.0; n_rois],
            dff: vec![0.0; n_rois],
            spikes: vec![0.0; n_rois],
            spikes_frame: None,
        }
    }

    fn check(&self, n: usize) -> Result<(), ExtractError> {
        for (what, v) in [
            ("FrameOutput.raw", &self.raw),
            ("FrameOutput.neuropil", &self.neuropil),
            ("FrameOutput.corrected", &self.corrected),
            ("FrameOutput.f0", &self.f0),
            ("FrameOutput.dff", &self.dff),
            ("FrameOutput.spikes", &self.spikes),
        ] {
            if v.len() != n {
                return Err(ExtractError::Length {
                    what,
                    expected: n,
                    got: v.len(),
                });
            }
        }
        Ok(())
    }
}

/// Wall time spent in each step of one [`Extractor::process`] call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepTimes {
    /// Shift estimate, plus resampling of the frame when `registered_frame` is on.
    pub motion: Duration,
    pub traces: Duration,
    pub dff: Duration,
    /// Zero when deconvolution is disabled.
    pub deconv: Duration,
}

impl StepTimes {
    pub fn total(&self) -> Duration {
        self.motion + self.traces + self.dff + self.deconv
    }
}

/// The chained extraction stage. See the module docs.
pub struct Extractor {
    motion: MotionCorrector,
    rois: RoiSet,
    baseline: Baseline,
    deconv: Option<OnlineOasis>,
    /// Empty unless `registered_frame` is on.
    registered: Vec<f32>,
    roi_offset: [f32; 2],
    frames: u64,
}

impl Extractor {
    pub fn new(
        config: ExtractorConfig,
        reference: &[f32],
        masks: &[RoiMask],
    ) -> Result<Self, ExtractError> {
        let motion =
            MotionCorrector::with_options(config.height, config.width, reference, config.motion)?;
        let rois = RoiSet::new(config.height, config.width, masks, config.neuropil)?;
        let baseline = Baseline::new(rois.len(), config.baseline)?;
        if !config.roi_offset_px.iter().all(|v| v.is_finite()) {
            return Err(ExtractError::Parameter {
                name: "roi_offset_px",
                value: (config.roi_offset_px[0] + config.roi_offset_px[1]) as f64,
                reason: "must be finite",
            });
        }
        let deconv = match config.deconv {
            Some(c) => Some(OnlineOasis::new(rois.len(), c)?),
            None => None,
        };
        Ok(Self {
            motion,
            rois,
            baseline,
            deconv,
            registered: if config.registered_frame {
                vec![0.0; config.height * config.width]
            } else {
                Vec::new()
            },
            roi_offset: config.roi_offset_px,
            frames: 0,
        })
    }

    pub fn n_rois(&self) -> usize {
        self.rois.len()
    }

    /// Ids of the ROIs extracted without neuropil subtraction (empty annulus, see
    /// [`RoiSet::without_neuropil`]).
    pub fn rois_without_neuropil(&self) -> &[u32] {
        self.rois.without_neuropil()
    }

    /// Runs one frame through all steps. `out` must come from `FrameOutput::new(self.n_rois())`.
    pub fn process(
        &mut self,
        frame: &[u16],
        out: &mut FrameOutput,
    ) -> Result<StepTimes, ExtractError> {
        out.check(self.rois.len())?;
        let mut times = StepTimes::default();

        let t0 = Instant::now();
        let shift = self.motion.estimate(frame)?;
        if !self.registered.is_empty() {
            self.motion.apply(frame, shift, &mut self.registered)?;
        }
        let t1 = Instant::now();
        times.motion = t1 - t0;

        // Mask pixel p is reference pixel p + offset, which is frame pixel p + offset + shift.
        let at = Shift {
            dy: shift.dy + self.roi_offset[0],
            dx: shift.dx + self.roi_offset[1],
            peak: shift.peak,
        };
        self.rois.traces_shifted(
            frame,
            at,
            &mut out.raw,
            &mut out.neuropil,
            &mut out.corrected,
        )?;
        let t2 = Instant::now();
        times.traces = t2 - t1;

        self.baseline.push(&out.corrected, &mut out.dff)?;
        out.f0.copy_from_slice(self.baseline.f0());
        let t3 = Instant::now();
        times.dff = t3 - t2;

        out.spikes_frame = match &mut self.deconv {
            Some(d) => {
                let emitted = d.push(&out.dff, &mut out.spikes)?;
                times.deconv = t3.elapsed();
                emitted
            }
            None => {
                out.spikes.fill(0.0);
                None
            }
        };
        out.shift = shift;
        out.frame_index = self.frames;
        self.frames += 1;
        Ok(times)
    }

    /// The last motion-corrected frame (row-major, `height * width`), or `None` when the
    /// extractor was configured without `registered_frame`.
    pub fn registered_frame(&self) -> Option<&[f32]> {
        (!self.registered.is_empty()).then_some(self.registered.as_slice())
    }

    pub fn motion(&self) -> &MotionCorrector {
        &self.motion
    }

    /// Mutable access, e.g. to swap the reference mid-session with `set_reference`.
    pub fn motion_mut(&mut self) -> &mut MotionCorrector {
        &mut self.motion
    }

    pub fn rois(&self) -> &RoiSet {
        &self.rois
    }

    pub fn baseline(&self) -> &Baseline {
        &self.baseline
    }

    pub fn deconv(&self) -> Option<&OnlineOasis> {
        self.deconv.as_ref()
    }

    /// Ends the deconvolution stream: writes the still-pending lagged frames frame-major into
    /// `out` (`pending * n_rois` values) and returns how many frames were written.
    pub fn flush_deconv(&mut self, out: &mut [f32]) -> Result<usize, ExtractError> {
        match &mut self.deconv {
            Some(d) => d.flush(out),
            None => Ok(0),
        }
    }
}

#[cfg(test)]
pub(crate) mod alloc_counter {
    //! Counts heap allocations made by the current thread while armed, to check that the
    //! per-frame path allocates nothing. A pass-through to the system allocator otherwise.
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static ARMED: Cell<bool> = const { Cell::new(false) };
        static COUNT: Cell<usize> = const { Cell::new(0) };
    }

    pub struct Counting;

    // SAFETY: forwards every call unchanged to `System`; only bumps a thread-local counter.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if ARMED.with(|a| a.get()) {
                COUNT.with(|c| c.set(c.get() + 1));
            }
            System.alloc(layout)
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            System.dealloc(ptr, layout)
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            if ARMED.with(|a| a.get()) {
                COUNT.with(|c| c.set(c.get() + 1));
            }
            System.alloc_zeroed(layout)
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if ARMED.with(|a| a.get()) {
                COUNT.with(|c| c.set(c.get() + 1));
            }
            System.realloc(ptr, layout, new_size)
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// Runs `f` and returns how many allocations this thread made meanwhile.
    pub fn count_allocations(f: impl FnOnce()) -> usize {
        COUNT.with(|c| c.set(0));
        ARMED.with(|a| a.set(true));
        f();
        ARMED.with(|a| a.set(false));
        COUNT.with(|c| c.get())
    }
}

#[cfg(test)]
mod tests {
    use super::synth::Scene;
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn corr(a: &[f32], b: &[f32]) -> f64 {
        let n = a.len() as f64;
        let ma = a.iter().map(|&v| v as f64).sum::<f64>() / n;
        let mb = b.iter().map(|&v| v as f64).sum::<f64>() / n;
        let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
        for (&x, &y) in a.iter().zip(b) {
            let (x, y) = (x as f64 - ma, y as f64 - mb);
            sab += x * y;
            saa += x * x;
            sbb += y * y;
        }
        sab / (saa * sbb).sqrt()
    }

    fn config(h: usize, w: usize, deconv: bool) -> ExtractorConfig {
        ExtractorConfig {
            height: h,
            width: w,
            motion: MotionOptions::new(8.0),
            registered_frame: false,
            roi_offset_px: [0.0; 2],
            neuropil: NeuropilConfig::default(),
            baseline: BaselineConfig {
                smooth_frames: 5,
                window_frames: 90,
                eps: 1.0,
            },
            deconv: deconv.then(|| DeconvConfig {
                gamma: (-1.0f32 / (1.0 * 30.0)).exp(),
                lambda: 0.0,
                lag_frames: 30,
            }),
        }
    }

    /// Motion + traces together on the synthetic scene: shifts are recovered and the
    /// neuropil-corrected traces follow each soma's activity despite motion and shot noise.
    #[test]
    fn extractor_recovers_shifts_and_activity() {
        let (h, w) = (128, 128);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let scene = Scene::new(&mut rng, h, w, 6);
        let mut clean = vec![0.0f32; h * w];
        let zero = vec![0.0f32; scene.somas.len()];
        scene.render(0.0, 0.0, &zero, 0.0, &mut clean);
        let frames: Vec<Vec<u16>> = (0..30)
            .map(|_| {
                let (dy, dx) = scene.random_shift(&mut rng, 3.0);
                let mut img = vec![0.0f32; h * w];
                scene.render(dy, dx, &zero, 0.0, &mut img);
                Scene::poisson(&mut rng, &img)
            })
            .collect();
        let reference = build_reference(&frames, h, w).unwrap();
        // The built reference is recentred on the mean position of the frames, so measure its
        // offset from the clean image to compare estimated and true shifts.
        let mut mc = MotionCorrector::new(h, w, &clean, 8.0).unwrap();
        let q: Vec<u16> = reference.iter().map(|&v| v.round() as u16).collect();
        let offset = mc.estimate(&q).unwrap();

        let masks = scene.soma_masks(0.0, 0.0);
        let mut ex = Extractor::new(config(h, w, true), &reference, &masks).unwrap();
        let mut out = FrameOutput::new(ex.n_rois());
        let n_frames = 300;
        let mut truth = vec![vec![0.0f32; n_frames]; scene.somas.len()];
        let mut got = vec![vec![0.0f32; n_frames]; scene.somas.len()];
        let mut err2 = 0.0f64;
        let mut act = vec![0.0f32; scene.somas.len()];
        let mut img = vec![0.0f32; h * w];
        for t in 0..n_frames {
            for (i, a) in act.iter_mut().enumerate() {
                // Slow, distinct per-soma modulations plus sparse transients.
                let ph = t as f32 / (15.0 + 7.0 * i as f32);
                *a = 0.6 * (0.5 + 0.5 * ph.sin()) + if (t + 13 * i) % 50 < 4 { 1.5 } else { 0.0 };
                truth[i][t] = *a;
            }
            let (dy, dx) = scene.random_shift(&mut rng, 3.0);
            let np = 0.3 * (t as f32 / 23.0).sin();
            scene.render(dy, dx, &act, np, &mut img);
            let frame = Scene::poisson(&mut rng, &img);
            ex.process(&frame, &mut out).unwrap();
            let (ey, ex_) = (out.shift.dy - offset.dy, out.shift.dx - offset.dx);
            err2 += ((ey - dy).powi(2) + (ex_ - dx).powi(2)) as f64;
            for (g, &c) in got.iter_mut().zip(&out.corrected) {
                g[t] = c;
            }
            assert_eq!(out.frame_index, t as u64);
            assert_eq!(out.spikes_frame, (t >= 30).then(|| t as u64 - 30));
        }
        let rms = (err2 / n_frames as f64).sqrt();
        eprintln!("extractor: shift RMS error {rms:.3} px (reference offset {offset:?})");
        assert!(rms < 0.5, "shift RMS error {rms}");
        for i in 0..scene.somas.len() {
            let c = corr(&truth[i], &got[i]);
            eprintln!("soma {i}: corr(corrected, activity) {c:.4}");
            assert!(c > 0.95, "soma {i}: corr {c}");
        }
        assert!(out.dff.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn process_allocates_nothing() {
        let (h, w) = (64, 96);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let scene = Scene::new(&mut rng, h, w, 4);
        let zero = vec![0.0f32; 4];
        let mut img = vec![0.0f32; h * w];
        scene.render(0.0, 0.0, &zero, 0.0, &mut img);
        let masks = scene.soma_masks(0.0, 0.0);
        let frames: Vec<Vec<u16>> = (0..80)
            .map(|_| {
                scene.render(1.3, -0.7, &zero, 0.0, &mut img);
                Scene::poisson(&mut rng, &img)
            })
            .collect();
        for registered in [false, true] {
            let mut cfg = config(h, w, true);
            cfg.registered_frame = registered;
            let mut ex = Extractor::new(cfg, &img, &masks).unwrap();
            assert_eq!(ex.registered_frame().is_some(), registered);
            let mut out = FrameOutput::new(ex.n_rois());
            let n = alloc_counter::count_allocations(|| {
                for f in &frames {
                    ex.process(f, &mut out).unwrap();
                }
            });
            assert_eq!(
                n, 0,
                "allocations on the per-frame path (registered {registered})"
            );
        }
    }

    #[test]
    fn process_rejects_wrong_sizes() {
        let (h, w) = (32, 32);
        let reference: Vec<f32> = (0..h * w).map(|i| ((i * 7919) % 101) as f32).collect();
        let masks = vec![RoiMask {
            id: 1,
            pixels: vec![5 * 32 + 5],
            weights: vec![1.0],
        }];
        let mut cfg = config(h, w, false);
        cfg.motion.max_shift_px = 3.0;
        let mut ex = Extractor::new(cfg, &reference, &masks).unwrap();
        let mut out = FrameOutput::new(1);
        let err = ex.process(&[0u16; 10], &mut out).unwrap_err();
        assert_eq!(err.to_string(), "frame has length 10, expected 1024");
        let mut bad = FrameOutput::new(2);
        assert!(ex.process(&[0u16; 1024], &mut bad).is_err());
    }

    /// Rough per-step timing at 512x512 with 500 ROIs:
    /// `cargo test --release --lib extract::tests::speed_512 -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn speed_512() {
        let (h, w) = (512, 512);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let scene = Scene::new(&mut rng, h, w, 500);
        let act = vec![0.0f32; scene.somas.len()];
        let mut img = vec![0.0f32; h * w];
        scene.render(0.0, 0.0, &act, 0.0, &mut img);
        let masks = scene.soma_masks(0.0, 0.0);
        let mut cfg = config(h, w, true);
        cfg.motion.max_shift_px = 25.0;
        cfg.baseline.window_frames = 1800;
        cfg.baseline.smooth_frames = 20;
        cfg.deconv.as_mut().unwrap().lag_frames = 60;
        cfg.registered_frame = std::env::var_os("REGISTERED").is_some();
        let mut ex = Extractor::new(cfg, &img, &masks).unwrap();
        let mut out = FrameOutput::new(ex.n_rois());
        let frames: Vec<Vec<u16>> = (0..8)
            .map(|k| {
                scene.render(
                    k as f32 * 0.7 - 2.0,
                    1.5 - k as f32 * 0.4,
                    &act,
                    0.0,
                    &mut img,
                );
                Scene::poisson(&mut rng, &img)
            })
            .collect();
        let n = 400;
        let mut times: Vec<StepTimes> = Vec::with_capacity(n);
        for k in 0..n {
            times.push(ex.process(&frames[k % frames.len()], &mut out).unwrap());
        }
        // Median and minimum per step: the machine is shared, so the mean is easily skewed.
        let stat = |f: &dyn Fn(&StepTimes) -> Duration| {
            let mut v: Vec<f64> = times.iter().map(|t| f(t).as_secs_f64() * 1e3).collect();
            v.sort_by(f64::total_cmp);
            format!("{:.3} (min {:.3})", v[v.len() / 2], v[0])
        };
        println!(
            "512x512, {} ROIs, per frame, median (min) ms: motion {}, traces {}, dff {}, \
             deconv {}, total {}",
            ex.n_rois(),
            stat(&|t| t.motion),
            stat(&|t| t.traces),
            stat(&|t| t.dff),
            stat(&|t| t.deconv),
            stat(&|t| t.total())
        );
    }
}
