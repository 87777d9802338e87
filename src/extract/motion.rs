//! Rigid motion correction by phase correlation, after suite2p's rigid registration
//! (Pachitariu et al. 2017, bioRxiv 061507; `suite2p/registration/rigid.py`), which follows the
//! classic phase-correlation method (Kuglin & Hines 1975).
//!
//! Method, per frame:
//! 1. Take the registration window: a central crop of at most `crop_px` x `crop_px` pixels
//!    (default 256, so a 512x512 frame is registered on its central quarter), optionally
//!    binned `bin` x `bin`. A rigid shift moves every pixel alike, so a window with enough
//!    texture (somas, vessels, neuropil) measures it as well as the whole frame at a fraction
//!    of the cost: the 2-D FFT of a 256x256 window is ~5x cheaper than that of 512x512.
//! 2. Taper the window towards its mean near the borders with suite2p's sigmoid
//!    `spatial_taper` (slope 3 x smooth_sigma), so the implicit periodic wrap of the FFT does
//!    not create edges that would correlate at zero shift.
//! 3. 2-D FFT. The cross-power spectrum F conj(R) is whitened to unit magnitude on both sides
//!    (pure phase correlation: every spatial frequency votes equally, which makes the peak sharp
//!    and insensitive to slow brightness changes) and multiplied by a Gaussian low-pass of
//!    `smooth_sigma_px` (suite2p: 1.15 px), which smooths the correlation peak and suppresses the
//!    shot-noise-dominated high frequencies. The reference side, conj(R)/|R| times the Gaussian,
//!    is computed once per reference.
//! 4. Inverse FFT, of which only the (2r+1)^2 window of reachable shifts is evaluated (r = max
//!    shift + 1), argmax within +-max_shift, then a sub-pixel fit: a Gaussian (parabola through
//!    the logs) in each axis around the integer peak, which matches the Gaussian-smoothed peak
//!    shape; a plain parabola when a neighbour is not positive. suite2p's rigid step stops at
//!    integer shifts; the fit is what brings the error well under half a pixel.
//!
//! The 2-D FFT is rows of real FFTs (`realfft`, half spectra of w / 2 + 1 bins), transposed so
//! that each column of the half spectrum is contiguous, then one batched complex FFT
//! (`rustfft`) over all those columns; the inverse runs the batched complex inverse over the
//! columns and real inverse FFTs over the 2r + 1 rows of the shift window only. Plans, planes
//! and scratch are all allocated in the constructor.
//!
//! Sign convention: a returned [`Shift`] is the displacement of the frame's content relative to
//! the reference, frame(y, x) ~ reference(y - dy, x - dx); [`MotionCorrector::apply`] undoes it,
//! out(y, x) = frame(y + dy, x + dx). The online extractor does not need the registered frame
//! at all: it samples the raw frame at the shifted ROI positions (`RoiSet::traces_shifted`).
//!
//! [`build_reference`] builds the reference the way suite2p's `compute_reference` does: seed
//! with the mean of the frames most correlated with each other, then a few rounds of
//! register-and-average over a growing fraction of the best-matching frames.

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use rustfft::{Fft, FftPlanner};

use super::ExtractError;

type C32 = Complex<f32>;

/// suite2p's default `smooth_sigma` (pixels) for the Gaussian smoothing of the phase correlation.
pub const DEFAULT_SMOOTH_SIGMA_PX: f32 = 1.15;

/// Default side of the central registration window, pixels (see [`MotionOptions::crop_px`]).
pub const DEFAULT_CROP_PX: usize = 256;

/// Displacement of a frame's content relative to the reference, in pixels, and the height of
/// the normalised phase-correlation peak (1 for a perfect match; low values flag frames that
/// did not register well, e.g. during a z-drift or a dropped frame).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Shift {
    pub dy: f32,
    pub dx: f32,
    pub peak: f32,
}

/// Registration parameters; [`MotionOptions::new`] gives suite2p's defaults and a 256x256
/// central window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MotionOptions {
    /// Largest shift searched in each axis, frame pixels.
    pub max_shift_px: f32,
    /// Sigma of the Gaussian that smooths the correlation, frame pixels (0 disables it).
    pub smooth_sigma_px: f32,
    /// Slope of the border taper, frame pixels (0 disables it).
    pub taper_slope_px: f32,
    /// Largest side of the central crop that is registered, frame pixels; a side shorter than
    /// this is used whole. 0 registers the whole frame. Powers of two are the fastest.
    pub crop_px: usize,
    /// Bin factor applied to the crop before the FFT (1 = none, 2 = means of 2x2 pixels).
    /// Binning trades sub-pixel precision for speed on frames with large features.
    pub bin: usize,
}

impl MotionOptions {
    pub fn new(max_shift_px: f32) -> Self {
        Self {
            max_shift_px,
            smooth_sigma_px: DEFAULT_SMOOTH_SIGMA_PX,
            taper_slope_px: 3.0 * DEFAULT_SMOOTH_SIGMA_PX,
            crop_px: DEFAULT_CROP_PX,
            bin: 1,
        }
    }
}

/// Checks a frame size shared by all steps.
pub(crate) fn check_size(height: usize, width: usize) -> Result<(), ExtractError> {
    let bad = |reason| ExtractError::FrameSize {
        height,
        width,
        reason,
    };
    if height < 8 || width < 8 {
        return Err(bad("each side must be at least 8 pixels"));
    }
    match height.checked_mul(width) {
        Some(n) if n <= u32::MAX as usize => Ok(()),
        _ => Err(bad("more pixels than a u32 index can address")),
    }
}

pub(crate) fn check_len(
    what: &'static str,
    expected: usize,
    got: usize,
) -> Result<(), ExtractError> {
    if expected == got {
        Ok(())
    } else {
        Err(ExtractError::Length {
            what,
            expected,
            got,
        })
    }
}

fn fft_err(e: realfft::FftError) -> ExtractError {
    ExtractError::Fft(e.to_string())
}

/// suite2p `spatial_taper` along one axis: 1 in the middle, a sigmoid to 0 near both ends.
fn taper_axis(n: usize, slope: f32) -> Vec<f32> {
    if slope <= 0.0 {
        return vec![1.0; n];
    }
    let mid = (n as f32 - 1.0) / 2.0;
    let edge = mid - 2.0 * slope;
    (0..n)
        .map(|i| {
            let d = (i as f32 - mid).abs();
            1.0 / (1.0 + ((d - edge) / slope).exp())
        })
        .collect()
}

/// Gaussian low-pass along one axis, in the frequency domain: the transform of a unit-area
/// spatial Gaussian of `sigma` pixels, exp(-2 pi^2 sigma^2 f^2) with f in cycles/pixel.
fn gauss_axis(n: usize, sigma: f32) -> Vec<f32> {
    let s = sigma as f64;
    (0..n)
        .map(|k| {
            let f = k.min(n - k) as f64 / n as f64;
            (-2.0 * std::f64::consts::PI.powi(2) * s * s * f * f).exp() as f32
        })
        .collect()
}

/// Estimates and undoes rigid shifts against one reference image. See the module docs.
pub struct MotionCorrector {
    h: usize,
    w: usize,
    /// Registration window (after binning): ch x cw, whose frame-pixel origin is (y0, x0).
    ch: usize,
    cw: usize,
    y0: usize,
    x0: usize,
    bin: usize,
    /// Complex columns of a row real FFT: cw / 2 + 1.
    wc: usize,
    /// Radius of the evaluated correlation window, window pixels: the integer search radius
    /// floor(max_shift / bin) plus one ring, because the sub-pixel fit needs the neighbours of
    /// a peak on the edge.
    r: usize,
    max_shift: f32,
    taper_y: Vec<f32>,
    taper_x: Vec<f32>,
    gauss_y: Vec<f32>,
    gauss_x: Vec<f32>,
    /// conj(R) / |R| * Gaussian, column-major: [c * ch + ky].
    ref_spec: Vec<C32>,
    /// 1 / (sum of the Gaussian over the full spectrum without DC): a perfect match scores 1.
    peak_norm: f32,
    row_r2c: Arc<dyn RealToComplex<f32>>,
    row_c2r: Arc<dyn ComplexToReal<f32>>,
    col_fwd: Arc<dyn Fft<f32>>,
    col_inv: Arc<dyn Fft<f32>>,
    /// The tapered window, row-major ch x cw.
    img: Vec<f32>,
    /// Half spectrum, column-major [c * ch + ky], c < wc.
    spec: Vec<C32>,
    row_spec: Vec<C32>,
    row_out: Vec<f32>,
    /// Correlation over the shift window: [(dy + r) * (2r + 1) + (dx + r)].
    cc: Vec<f32>,
    real_scratch: Vec<C32>,
    col_scratch: Vec<C32>,
}

impl MotionCorrector {
    /// A corrector with suite2p's default smoothing and taper on the default central window.
    pub fn new(
        height: usize,
        width: usize,
        reference: &[f32],
        max_shift_px: f32,
    ) -> Result<Self, ExtractError> {
        Self::with_options(height, width, reference, MotionOptions::new(max_shift_px))
    }

    pub fn with_options(
        height: usize,
        width: usize,
        reference: &[f32],
        opts: MotionOptions,
    ) -> Result<Self, ExtractError> {
        check_size(height, width)?;
        let param = |name, value: f32, reason| ExtractError::Parameter {
            name,
            value: value as f64,
            reason,
        };
        if !(1..=8).contains(&opts.bin) {
            return Err(param("bin", opts.bin as f32, "must be between 1 and 8"));
        }
        if opts.crop_px != 0 && opts.crop_px < 16 {
            return Err(param(
                "crop_px",
                opts.crop_px as f32,
                "must be 0 (whole frame) or at least 16",
            ));
        }
        let bin = opts.bin;
        let side = |n: usize| {
            let c = if opts.crop_px == 0 {
                n
            } else {
                n.min(opts.crop_px)
            };
            c / bin
        };
        let (ch, cw) = (side(height), side(width));
        if ch < 8 || cw < 8 {
            return Err(param(
                "bin",
                bin as f32,
                "leaves a registration window side under 8 pixels",
            ));
        }
        let ms = opts.max_shift_px;
        if !(ms.is_finite() && ms >= 0.0) {
            return Err(param("max_shift_px", ms, "must be finite and >= 0"));
        }
        let r = (ms / bin as f32).floor() as usize + 1;
        if 2 * r + 1 > ch.min(cw) / 2 {
            return Err(param(
                "max_shift_px",
                ms,
                "must be below a quarter of the smaller registration window side minus 1",
            ));
        }
        if !(opts.smooth_sigma_px.is_finite() && opts.smooth_sigma_px >= 0.0) {
            return Err(param(
                "smooth_sigma_px",
                opts.smooth_sigma_px,
                "must be finite and >= 0",
            ));
        }
        if !(opts.taper_slope_px.is_finite() && opts.taper_slope_px >= 0.0) {
            return Err(param(
                "taper_slope_px",
                opts.taper_slope_px,
                "must be finite and >= 0",
            ));
        }
        let wc = cw / 2 + 1;
        let mut planner = RealFftPlanner::<f32>::new();
        let row_r2c = planner.plan_fft_forward(cw);
        let row_c2r = planner.plan_fft_inverse(cw);
        let mut cplanner = FftPlanner::<f32>::new();
        let col_fwd = cplanner.plan_fft_forward(ch);
        let col_inv = cplanner.plan_fft_inverse(ch);
        let real_scratch_len = row_r2c.get_scratch_len().max(row_c2r.get_scratch_len());
        let col_scratch_len = col_fwd
            .get_inplace_scratch_len()
            .max(col_inv.get_inplace_scratch_len());
        let b = bin as f32;
        let sigma = opts.smooth_sigma_px / b;
        let gauss_y = gauss_axis(ch, sigma);
        let gauss_x = gauss_axis(cw, sigma);
        let gsum = gauss_y.iter().map(|&v| v as f64).sum::<f64>()
            * gauss_x.iter().map(|&v| v as f64).sum::<f64>()
            - 1.0;
        let nwin = 2 * r + 1;
        let zero = C32::new(0.0, 0.0);
        let mut me = Self {
            h: height,
            w: width,
            ch,
            cw,
            y0: (height - ch * bin) / 2,
            x0: (width - cw * bin) / 2,
            bin,
            wc,
            r,
            max_shift: ms,
            taper_y: taper_axis(ch, opts.taper_slope_px / b),
            taper_x: taper_axis(cw, opts.taper_slope_px / b),
            gauss_y,
            gauss_x,
            ref_spec: vec![zero; wc * ch],
            peak_norm: if gsum > 0.0 { (1.0 / gsum) as f32 } else { 0.0 },
            row_r2c,
            row_c2r,
            col_fwd,
            col_inv,
            img: vec![0.0; ch * cw],
            spec: vec![zero; wc * ch],
            row_spec: vec![zero; wc],
            row_out: vec![0.0; cw],
            cc: vec![0.0; nwin * nwin],
            real_scratch: vec![zero; real_scratch_len],
            col_scratch: vec![zero; col_scratch_len],
        };
        me.set_reference(reference)?;
        Ok(me)
    }

    pub fn height(&self) -> usize {
        self.h
    }

    pub fn width(&self) -> usize {
        self.w
    }

    pub fn max_shift_px(&self) -> f32 {
        self.max_shift
    }

    /// The registration window in frame pixels: (top, left, height, width) before binning.
    pub fn window(&self) -> (usize, usize, usize, usize) {
        (self.y0, self.x0, self.ch * self.bin, self.cw * self.bin)
    }

    /// Replaces the reference image (e.g. a refreshed mean image mid-session) without
    /// allocating.
    pub fn set_reference(&mut self, reference: &[f32]) -> Result<(), ExtractError> {
        check_len("reference", self.h * self.w, reference.len())?;
        if let Some(index) = reference.iter().position(|v| !v.is_finite()) {
            return Err(ExtractError::NonFiniteReference { index });
        }
        self.load(reference);
        self.forward()?;
        let ch = self.ch;
        let mut any = false;
        for c in 0..self.wc {
            let gx = self.gauss_x[c];
            let col = &self.spec[c * ch..(c + 1) * ch];
            let out = &mut self.ref_spec[c * ch..(c + 1) * ch];
            for (k, ((o, &z), &gy)) in out.iter_mut().zip(col).zip(&self.gauss_y).enumerate() {
                let mag = z.norm();
                *o = if mag > 1e-20 && !(c == 0 && k == 0) {
                    any = true;
                    z.conj() * (gx * gy / mag)
                } else {
                    C32::new(0.0, 0.0)
                };
            }
        }
        if !any {
            return Err(ExtractError::FlatReference);
        }
        Ok(())
    }

    /// Shift of `frame` (row-major `height * width`) relative to the reference.
    pub fn estimate(&mut self, frame: &[u16]) -> Result<Shift, ExtractError> {
        self.estimate_any(frame)
    }

    /// As [`estimate`](Self::estimate) for a floating-point frame.
    pub fn estimate_f32(&mut self, frame: &[f32]) -> Result<Shift, ExtractError> {
        self.estimate_any(frame)
    }

    /// Writes the corrected frame, out(y, x) = frame(y + dy, x + dx), bilinear, edges clamped.
    pub fn apply(&self, frame: &[u16], shift: Shift, out: &mut [f32]) -> Result<(), ExtractError> {
        resample(self.h, self.w, frame, shift, out)
    }

    /// As [`apply`](Self::apply) for a floating-point frame.
    pub fn apply_f32(
        &self,
        frame: &[f32],
        shift: Shift,
        out: &mut [f32],
    ) -> Result<(), ExtractError> {
        resample(self.h, self.w, frame, shift, out)
    }

    fn estimate_any<T: Copy + Into<f32>>(&mut self, frame: &[T]) -> Result<Shift, ExtractError> {
        check_len("frame", self.h * self.w, frame.len())?;
        let (ch, cw, wc, r) = (self.ch, self.cw, self.wc, self.r);
        let nwin = 2 * r + 1;
        self.load(frame);
        self.forward()?;
        // Whitened cross-power spectrum times the (whitened, smoothed) reference.
        // Branch-free so that it vectorises: a zero bin stays zero (0 * finite), and the tiny
        // floor only keeps 1 / sqrt finite there.
        for (z, &rf) in self.spec.iter_mut().zip(&self.ref_spec) {
            let inv = 1.0 / (z.norm_sqr() + 1e-30).sqrt();
            *z = *z * rf * inv;
        }
        self.col_inv
            .process_with_scratch(&mut self.spec, &mut self.col_scratch);
        // Inverse row transforms only for the rows of the shift window. Each such row of the
        // column-inverted spectrum is Hermitian in kx (the correlation is real), so a real
        // inverse FFT of its half spectrum gives the row.
        for j in 0..nwin {
            let y = (j + ch - r) % ch;
            for (c, z) in self.row_spec.iter_mut().enumerate() {
                *z = self.spec[c * ch + y];
            }
            // Exactly real by construction; realfft insists on exact zeros there.
            self.row_spec[0].im = 0.0;
            if cw % 2 == 0 {
                self.row_spec[wc - 1].im = 0.0;
            }
            self.row_c2r
                .process_with_scratch(
                    &mut self.row_spec,
                    &mut self.row_out,
                    &mut self.real_scratch,
                )
                .map_err(fft_err)?;
            for i in 0..nwin {
                let x = (i + cw - r) % cw;
                self.cc[j * nwin + i] = self.row_out[x] * self.peak_norm;
            }
        }
        // Integer peak within +-m (the outer ring of the window is only for the fit).
        let (mut bj, mut bi, mut best) = (r, r, f32::NEG_INFINITY);
        for j in 1..nwin - 1 {
            for i in 1..nwin - 1 {
                let v = self.cc[j * nwin + i];
                if v > best {
                    (bj, bi, best) = (j, i, v);
                }
            }
        }
        if !best.is_finite() {
            // Only reachable with a non-finite frame value; report "no information".
            return Ok(Shift {
                dy: 0.0,
                dx: 0.0,
                peak: 0.0,
            });
        }
        let at = |j: usize, i: usize| self.cc[j * nwin + i];
        let fy = peak_offset(at(bj - 1, bi), best, at(bj + 1, bi));
        let fx = peak_offset(at(bj, bi - 1), best, at(bj, bi + 1));
        let (ms, b) = (self.max_shift, self.bin as f32);
        Ok(Shift {
            dy: ((bj as f32 - r as f32 + fy) * b).clamp(-ms, ms),
            dx: ((bi as f32 - r as f32 + fx) * b).clamp(-ms, ms),
            peak: best,
        })
    }

    /// Tapered, mean-removed copy of the (binned) registration window into `img` (suite2p:
    /// frame * mask + mean * (1 - mask); the mean itself is dropped because the DC bin is
    /// ignored anyway).
    fn load<T: Copy + Into<f32>>(&mut self, frame: &[T]) {
        let (w, ch, cw, b) = (self.w, self.ch, self.cw, self.bin);
        if b == 1 {
            for (y, dst) in self.img.chunks_exact_mut(cw).enumerate() {
                let src = &frame[(self.y0 + y) * w + self.x0..][..cw];
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = s.into();
                }
            }
        } else {
            self.img.fill(0.0);
            for (y, dst) in self.img.chunks_exact_mut(cw).enumerate() {
                for k in 0..b {
                    let src = &frame[(self.y0 + y * b + k) * w + self.x0..][..cw * b];
                    for (d, s) in dst.iter_mut().zip(src.chunks_exact(b)) {
                        *d += s.iter().map(|&v| v.into()).sum::<f32>();
                    }
                }
            }
        }
        let sum: f64 = self
            .img
            .chunks_exact(cw)
            .map(|row| row.iter().sum::<f32>() as f64)
            .sum();
        let mean = (sum / (ch * cw) as f64) as f32;
        for (row, &ty) in self.img.chunks_exact_mut(cw).zip(&self.taper_y) {
            for (d, &tx) in row.iter_mut().zip(&self.taper_x) {
                *d = (*d - mean) * ty * tx;
            }
        }
    }

    /// 2-D FFT of `img` into the column-major half spectrum `spec`: real FFTs of the rows,
    /// transposed, then one batched complex FFT down all the columns.
    fn forward(&mut self) -> Result<(), ExtractError> {
        let ch = self.ch;
        for (y, row) in self.img.chunks_exact_mut(self.cw).enumerate() {
            self.row_r2c
                .process_with_scratch(row, &mut self.row_spec, &mut self.real_scratch)
                .map_err(fft_err)?;
            for (c, &z) in self.row_spec.iter().enumerate() {
                self.spec[c * ch + y] = z;
            }
        }
        self.col_fwd
            .process_with_scratch(&mut self.spec, &mut self.col_scratch);
        Ok(())
    }
}

/// Offset of a peak from the middle sample, by a Gaussian fit (parabola through the logs) when
/// all three samples are positive, else a parabola; within +-0.5.
fn peak_offset(a: f32, b: f32, c: f32) -> f32 {
    let fit = |a: f32, b: f32, c: f32| {
        let den = a - 2.0 * b + c;
        if den < 0.0 {
            0.5 * (a - c) / den
        } else {
            0.0
        }
    };
    let off = if a > 0.0 && b > 0.0 && c > 0.0 {
        fit(a.ln(), b.ln(), c.ln())
    } else {
        fit(a, b, c)
    };
    if off.is_finite() {
        off.clamp(-0.5, 0.5)
    } else {
        0.0
    }
}

/// out(y, x) = frame(y + dy, x + dx), bilinear, with source coordinates clamped to the frame.
fn resample<T: Copy + Into<f32>>(
    h: usize,
    w: usize,
    frame: &[T],
    shift: Shift,
    out: &mut [f32],
) -> Result<(), ExtractError> {
    check_len("frame", h * w, frame.len())?;
    check_len("output frame", h * w, out.len())?;
    // A non-finite shift would poison every pixel; treat it as "no shift".
    let (dy, dx) = if shift.dy.is_finite() && shift.dx.is_finite() {
        (shift.dy, shift.dx)
    } else {
        (0.0, 0.0)
    };
    let (iy, ix) = (dy.floor(), dx.floor());
    let (fy, fx) = (dy - iy, dx - ix);
    // Shifts beyond the frame only ever clamp; bounding them keeps the casts exact.
    let lim = (h.max(w) + 2) as f32;
    let (iy, ix) = (iy.clamp(-lim, lim) as isize, ix.clamp(-lim, lim) as isize);
    let clamp = |v: isize, n: usize| v.clamp(0, n as isize - 1) as usize;
    // Output columns [xa, xb) read source columns x + ix and x + ix + 1 inside the frame,
    // so they need no clamping: a plain loop over slices there, which vectorises.
    let wi = w as isize;
    let xa = (-ix).clamp(0, wi) as usize;
    let xb = (wi - 1 - ix).clamp(xa as isize, wi) as usize;
    let (gx, gy) = (1.0 - fx, 1.0 - fy);
    for (y, orow) in out.chunks_exact_mut(w).enumerate() {
        let sy = y as isize + iy;
        let r0 = &frame[clamp(sy, h) * w..][..w];
        let r1 = &frame[clamp(sy + 1, h) * w..][..w];
        let edge = |x: usize| {
            let sx = x as isize + ix;
            let (x0, x1) = (clamp(sx, w), clamp(sx + 1, w));
            let top = r0[x0].into() * gx + r0[x1].into() * fx;
            let bot = r1[x0].into() * gx + r1[x1].into() * fx;
            top * gy + bot * fy
        };
        for x in (0..xa).chain(xb..w) {
            orow[x] = edge(x);
        }
        if xb > xa {
            let s = (xa as isize + ix) as usize;
            let n = xb - xa;
            let (a0, a1) = (&r0[s..s + n], &r0[s + 1..s + 1 + n]);
            let (b0, b1) = (&r1[s..s + n], &r1[s + 1..s + 1 + n]);
            let src = a0.iter().zip(a1).zip(b0.iter().zip(b1));
            for (o, ((&p00, &p01), (&p10, &p11))) in orow[xa..xb].iter_mut().zip(src) {
                let top = p00.into() * gx + p01.into() * fx;
                let bot = p10.into() * gx + p11.into() * fx;
                *o = top * gy + bot * fy;
            }
        }
    }
    Ok(())
}

/// Options of [`build_reference_with`]; the defaults follow suite2p.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReferenceOptions {
    /// Largest shift searched; `None` means 10% of the smaller frame side (suite2p
    /// `maxregshift`).
    pub max_shift_px: Option<f32>,
    /// Register-and-average rounds (suite2p: 8).
    pub iterations: usize,
    /// At most this many frames are used, evenly spaced (suite2p `nimg_init`: 300).
    pub max_frames: usize,
    /// Size of the seed group of mutually correlated frames (suite2p: 20).
    pub seed_frames: usize,
}

impl Default for ReferenceOptions {
    fn default() -> Self {
        Self {
            max_shift_px: None,
            iterations: 8,
            max_frames: 300,
            seed_frames: 20,
        }
    }
}

/// Builds a reference image from a stack of frames with suite2p's default options.
/// `frames` may be `&[Vec<u16>]` or `&[&[u16]]`, each row-major `height * width`.
pub fn build_reference<F: AsRef<[u16]>>(
    frames: &[F],
    height: usize,
    width: usize,
) -> Result<Vec<f32>, ExtractError> {
    build_reference_with(frames, height, width, &ReferenceOptions::default())
}

/// Builds a reference image as suite2p's `compute_reference`: the seed is the mean of the
/// `seed_frames` frames most correlated with the frame that has the highest mean correlation to
/// its best matches (correlations computed on frames binned to <= 128x128 pixels, which keeps
/// the n^2 step cheap and averages out shot noise); then each round registers all frames to the
/// current reference and averages the best-matching fraction (1/16, 2/16, ..., 1/2 of them),
/// recentred on their mean shift so that the reference sits at the frames' average position.
/// Unlike suite2p, each round registers the original frames (sub-pixel, bilinear) rather than
/// re-shifting already shifted ones, so interpolation blur does not accumulate.
pub fn build_reference_with<F: AsRef<[u16]>>(
    frames: &[F],
    height: usize,
    width: usize,
    opts: &ReferenceOptions,
) -> Result<Vec<f32>, ExtractError> {
    check_size(height, width)?;
    if frames.is_empty() {
        return Err(ExtractError::NoFrames);
    }
    let (h, w) = (height, width);
    let npx = h * w;
    for (index, f) in frames.iter().enumerate() {
        let got = f.as_ref().len();
        if got != npx {
            return Err(ExtractError::FrameLength {
                index,
                expected: npx,
                got,
            });
        }
    }
    let param = |name, value: usize, reason| ExtractError::Parameter {
        name,
        value: value as f64,
        reason,
    };
    if opts.max_frames == 0 {
        return Err(param("max_frames", 0, "must be at least 1"));
    }
    if opts.seed_frames == 0 {
        return Err(param("seed_frames", 0, "must be at least 1"));
    }
    // suite2p `maxregshift` = 0.1: always within MotionCorrector's limit for sides >= 8.
    let max_shift = opts.max_shift_px.unwrap_or(0.1 * h.min(w) as f32);

    let n_all = frames.len();
    let sel: Vec<&[u16]> = if n_all > opts.max_frames {
        (0..opts.max_frames)
            .map(|k| frames[k * n_all / opts.max_frames].as_ref())
            .collect()
    } else {
        frames.iter().map(|f| f.as_ref()).collect()
    };
    let n = sel.len();
    if n == 1 {
        return Ok(sel[0].iter().map(|&v| v as f32).collect());
    }

    // Seed: correlation matrix of binned, z-scored frames.
    let mut b = 1;
    while (h / b) * (w / b) > 128 * 128 {
        b *= 2;
    }
    let binned: Vec<Vec<f32>> = sel.iter().map(|f| bin_unit(f, h, w, b)).collect();
    let mut cc = vec![0.0f32; n * n];
    for i in 0..n {
        cc[i * n + i] = 1.0;
        for j in i + 1..n {
            let v = dot(&binned[i], &binned[j]);
            cc[i * n + j] = v;
            cc[j * n + i] = v;
        }
    }
    let seed = opts.seed_frames.min(n);
    let top = (seed - 1).max(1);
    let mut row = vec![0.0f32; n];
    let mut best_i = 0;
    let mut best_v = f32::NEG_INFINITY;
    for i in 0..n {
        row.copy_from_slice(&cc[i * n..(i + 1) * n]);
        row[i] = f32::NEG_INFINITY;
        row.sort_unstable_by(|a, b| b.total_cmp(a));
        let v = row[..top].iter().sum::<f32>() / top as f32;
        if v > best_v {
            (best_i, best_v) = (i, v);
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| cc[best_i * n + b].total_cmp(&cc[best_i * n + a]));
    let mut reference = vec![0.0f32; npx];
    for &k in &order[..seed] {
        for (acc, &v) in reference.iter_mut().zip(sel[k]) {
            *acc += v as f32;
        }
    }
    reference.iter_mut().for_each(|v| *v /= seed as f32);

    // Register-and-average rounds.
    let mut mc = MotionCorrector::new(h, w, &reference, max_shift)?;
    let mut shifts = vec![Shift::default(); n];
    let mut tmp = vec![0.0f32; npx];
    for it in 0..opts.iterations {
        if it > 0 {
            mc.set_reference(&reference)?;
        }
        for (s, f) in shifts.iter_mut().zip(&sel) {
            *s = mc.estimate(f)?;
        }
        order.sort_by(|&a, &b| shifts[b].peak.total_cmp(&shifts[a].peak));
        let nsel = (n * (1 + it) / (2 * opts.iterations)).max(2).min(n);
        let chosen = &order[..nsel];
        let dy = chosen.iter().map(|&k| shifts[k].dy).sum::<f32>() / nsel as f32;
        let dx = chosen.iter().map(|&k| shifts[k].dx).sum::<f32>() / nsel as f32;
        reference.fill(0.0);
        for &k in chosen {
            let s = Shift {
                dy: shifts[k].dy - dy,
                dx: shifts[k].dx - dx,
                peak: 0.0,
            };
            resample(h, w, sel[k], s, &mut tmp)?;
            for (acc, &v) in reference.iter_mut().zip(&tmp) {
                *acc += v;
            }
        }
        reference.iter_mut().for_each(|v| *v /= nsel as f32);
    }
    Ok(reference)
}

/// Frame binned by `b` x `b`, zero mean, unit norm (all zeros for a constant frame).
fn bin_unit(f: &[u16], h: usize, w: usize, b: usize) -> Vec<f32> {
    let (hb, wb) = (h / b, w / b);
    let mut out = vec![0.0f32; hb * wb];
    for y in 0..hb * b {
        for x in 0..wb * b {
            out[(y / b) * wb + x / b] += f[y * w + x] as f32;
        }
    }
    let mean = out.iter().map(|&v| v as f64).sum::<f64>() / out.len() as f64;
    let mut ss = 0.0f64;
    for v in out.iter_mut() {
        *v -= mean as f32;
        ss += (*v as f64) * (*v as f64);
    }
    let norm = ss.sqrt();
    if norm > 0.0 {
        let inv = (1.0 / norm) as f32;
        out.iter_mut().for_each(|v| *v *= inv);
    }
    out
}

/// Dot product in eight lanes so the compiler can vectorise it.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::super::synth::Scene;
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn scene_frames(seed: u64) -> (Scene, ChaCha8Rng) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let scene = Scene::new(&mut rng, 128, 128, 8);
        (scene, rng)
    }

    fn render(scene: &Scene, dy: f32, dx: f32) -> Vec<f32> {
        let mut img = vec![0.0; scene.height * scene.width];
        let act = vec![0.0; scene.somas.len()];
        scene.render(dy, dx, &act, 0.0, &mut img);
        img
    }

    #[test]
    fn integer_shifts_exact_and_sign_convention() {
        let (scene, _) = scene_frames(1);
        let reference = render(&scene, 0.0, 0.0);
        let mut mc = MotionCorrector::new(128, 128, &reference, 10.0).unwrap();
        for &(dy, dx) in &[(0.0, 0.0), (3.0, -2.0), (-7.0, 5.0), (10.0, -10.0)] {
            let f = render(&scene, dy, dx);
            let s = mc.estimate_f32(&f).unwrap();
            assert!((s.dy - dy).abs() < 0.1, "dy {dy} got {}", s.dy);
            assert!((s.dx - dx).abs() < 0.1, "dx {dx} got {}", s.dx);
            assert!(s.peak > 0.5 && s.peak <= 1.001, "peak {}", s.peak);
        }
        // A pure translation of the reference array itself: frame(y, x) = ref(y - 2, x + 3).
        let (h, w) = (128, 128);
        let mut f = vec![0.0; h * w];
        for y in 0..h {
            for x in 0..w {
                let (sy, sx) = ((y + h - 2) % h, (x + 3) % w);
                f[y * w + x] = reference[sy * w + sx];
            }
        }
        let s = mc.estimate_f32(&f).unwrap();
        assert!(
            (s.dy - 2.0).abs() < 0.05 && (s.dx + 3.0).abs() < 0.05,
            "{s:?}"
        );
    }

    #[test]
    fn subpixel_rms_below_half_pixel_with_shot_noise() {
        let (scene, mut rng) = scene_frames(2);
        let reference = render(&scene, 0.0, 0.0);
        let mut mc = MotionCorrector::new(128, 128, &reference, 8.0).unwrap();
        let mut err2 = 0.0f64;
        let mut maxerr = 0.0f32;
        let n = 60;
        for _ in 0..n {
            let (dy, dx) = scene.random_shift(&mut rng, 4.0);
            let frame = Scene::poisson(&mut rng, &render(&scene, dy, dx));
            let s = mc.estimate(&frame).unwrap();
            let e = ((s.dy - dy).powi(2) + (s.dx - dx).powi(2)) as f64;
            err2 += e;
            maxerr = maxerr.max(e.sqrt() as f32);
        }
        let rms = (err2 / n as f64).sqrt();
        eprintln!("motion: RMS {rms:.3} px, max {maxerr:.3} px");
        assert!(rms < 0.25, "RMS {rms} px, max {maxerr}");
    }

    #[test]
    fn odd_sizes_and_resampled_frames() {
        // Non-square, odd sides, and a shift made by bilinear resampling instead of rendering.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let scene = Scene::new(&mut rng, 75, 101, 4);
        let (h, w) = (75, 101);
        let mut reference = vec![0.0; h * w];
        scene.render(0.0, 0.0, &[0.0; 4], 0.0, &mut reference);
        let mut mc = MotionCorrector::new(h, w, &reference, 6.0).unwrap();
        for _ in 0..10 {
            let dy = rng.gen_range(-3.0f32..3.0);
            let dx = rng.gen_range(-3.0f32..3.0);
            // frame(y, x) = ref(y - dy, x - dx) is apply() with the negated shift.
            let mut f = vec![0.0; h * w];
            let s = Shift {
                dy: -dy,
                dx: -dx,
                peak: 0.0,
            };
            mc.apply_f32(&reference, s, &mut f).unwrap();
            let e = mc.estimate_f32(&f).unwrap();
            assert!(
                (e.dy - dy).abs() < 0.3 && (e.dx - dx).abs() < 0.3,
                "true ({dy}, {dx}) got {e:?}"
            );
        }
    }

    #[test]
    fn apply_undoes_the_shift() {
        let (scene, _) = scene_frames(3);
        let reference = render(&scene, 0.0, 0.0);
        let mut mc = MotionCorrector::new(128, 128, &reference, 8.0).unwrap();
        let f = render(&scene, 2.4, -1.7);
        let s = mc.estimate_f32(&f).unwrap();
        let mut out = vec![0.0; 128 * 128];
        mc.apply_f32(&f, s, &mut out).unwrap();
        // Compare away from the borders, where content moved in from outside.
        let (mut e_before, mut e_after) = (0.0f64, 0.0f64);
        for y in 8..120 {
            for x in 8..120 {
                let i = y * 128 + x;
                e_before += ((f[i] - reference[i]) as f64).powi(2);
                e_after += ((out[i] - reference[i]) as f64).powi(2);
            }
        }
        assert!(e_after < 0.05 * e_before, "{e_after} vs {e_before}");
    }

    #[test]
    fn resample_known_values() {
        let (h, w) = (8, 8);
        let f: Vec<f32> = (0..h * w).map(|i| i as f32).collect(); // f(y, x) = 8y + x
        let mut out = vec![0.0; h * w];
        let s = Shift {
            dy: 0.5,
            dx: 0.25,
            peak: 0.0,
        };
        resample(h, w, &f, s, &mut out).unwrap();
        // Interior: linear function, so bilinear is exact: 8(y + 0.5) + x + 0.25.
        assert!((out[2 * w + 3] - (8.0 * 2.5 + 3.25)).abs() < 1e-5);
        // Bottom-right corner clamps to the last pixel.
        assert_eq!(out[h * w - 1], 63.0);
    }

    /// The unclamped interior loop of `resample` gives what the per-pixel clamped formula
    /// gives, for shifts of either sign, fractional or whole, small or beyond the frame.
    #[test]
    fn resample_matches_the_clamped_formula() {
        let (h, w) = (13, 21);
        let f: Vec<f32> = (0..h * w).map(|i| ((i * 7919) % 97) as f32).collect();
        let mut out = vec![0.0; h * w];
        let cl = |v: f32, n: usize| v.clamp(0.0, n as f32 - 1.0) as usize;
        for &(dy, dx) in &[
            (0.0, 0.0),
            (0.3, -0.6),
            (-2.5, 3.25),
            (4.0, -7.0),
            (-12.2, 30.5),
            (0.9, 20.7),
        ] {
            let s = Shift { dy, dx, peak: 0.0 };
            resample(h, w, &f, s, &mut out).unwrap();
            let (iy, ix) = (dy.floor(), dx.floor());
            let (fy, fx) = (dy - iy, dx - ix);
            for y in 0..h {
                for x in 0..w {
                    let (y0, y1) = (cl(y as f32 + iy, h), cl(y as f32 + iy + 1.0, h));
                    let (x0, x1) = (cl(x as f32 + ix, w), cl(x as f32 + ix + 1.0, w));
                    let top = f[y0 * w + x0] * (1.0 - fx) + f[y0 * w + x1] * fx;
                    let bot = f[y1 * w + x0] * (1.0 - fx) + f[y1 * w + x1] * fx;
                    let want = top * (1.0 - fy) + bot * fy;
                    assert_eq!(out[y * w + x], want, "shift ({dy}, {dx}) at ({y}, {x})");
                }
            }
        }
    }

    #[test]
    fn build_reference_recovers_the_image() {
        let (scene, mut rng) = scene_frames(4);
        let truth = render(&scene, 0.0, 0.0);
        let mut true_shifts = vec![];
        let frames: Vec<Vec<u16>> = (0..60)
            .map(|_| {
                let (dy, dx) = scene.random_shift(&mut rng, 3.0);
                true_shifts.push((dy, dx));
                Scene::poisson(&mut rng, &render(&scene, dy, dx))
            })
            .collect();
        let reference = build_reference(&frames, 128, 128).unwrap();
        // The reference is the truth displaced by some offset; find it and check sharpness.
        let mut mc = MotionCorrector::new(128, 128, &truth, 8.0).unwrap();
        let off = mc.estimate_f32(&reference).unwrap();
        assert!(
            off.peak > 0.6,
            "reference matches the truth poorly: {off:?}"
        );
        assert!(off.dy.abs() < 1.5 && off.dx.abs() < 1.5, "{off:?}");
        // Shifts measured against the built reference equal the true ones minus that offset.
        let mut mc = MotionCorrector::new(128, 128, &reference, 8.0).unwrap();
        let mut err2 = 0.0;
        for (f, &(dy, dx)) in frames.iter().zip(&true_shifts) {
            let s = mc.estimate(f).unwrap();
            err2 += (s.dy + off.dy - dy).powi(2) + (s.dx + off.dx - dx).powi(2);
        }
        let rms = (err2 / frames.len() as f32).sqrt();
        eprintln!("build_reference: offset {off:?}, RMS {rms:.3} px");
        assert!(rms < 0.4, "RMS {rms}");
    }

    #[test]
    fn constructor_validation() {
        let r = vec![1.0f32; 64 * 64];
        let mut tex = r.clone();
        tex[100] = 5.0;
        assert_eq!(
            MotionCorrector::new(64, 64, &r, 4.0).err(),
            Some(ExtractError::FlatReference)
        );
        let e = MotionCorrector::new(64, 64, &tex[..100], 4.0)
            .err()
            .unwrap();
        assert_eq!(e.to_string(), "reference has length 100, expected 4096");
        let e = MotionCorrector::new(64, 64, &tex, 40.0).err().unwrap();
        assert!(
            e.to_string().starts_with("max_shift_px = 40 is invalid"),
            "{e}"
        );
        assert!(MotionCorrector::new(64, 64, &tex, f32::NAN).is_err());
        assert!(MotionCorrector::new(4, 64, &tex[..256], 1.0).is_err());
        let mut nan = tex.clone();
        nan[7] = f32::NAN;
        assert_eq!(
            MotionCorrector::new(64, 64, &nan, 4.0).err(),
            Some(ExtractError::NonFiniteReference { index: 7 })
        );
        let mut mc = MotionCorrector::new(64, 64, &tex, 4.0).unwrap();
        assert!(mc.estimate(&[0u16; 10]).is_err());
        assert!(mc
            .apply(&[0u16; 4096], Shift::default(), &mut [0.0; 5])
            .is_err());
        let frames: Vec<Vec<u16>> = vec![];
        assert_eq!(
            build_reference(&frames, 64, 64).err(),
            Some(ExtractError::NoFrames)
        );
        let frames = vec![vec![0u16; 4096], vec![0u16; 4095]];
        assert_eq!(
            build_reference(&frames, 64, 64).err(),
            Some(ExtractError::FrameLength {
                index: 1,
                expected: 4096,
                got: 4095
            })
        );
    }
}
