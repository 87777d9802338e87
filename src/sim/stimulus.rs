//! The simulated stimulus set: natural-like movie clips (1/f spatial spectrum, panned across the
//! screen) and drifting gratings, rendered at the stimulus resolution and frame rate as 8-bit linear
//! luminance (0 black, 255 white, 127.5 the mean gray).

use rustfft::num_complex::Complex;
use rustfft::FftPlanner;

use super::rng::FastRng;
use crate::config::{RigConfig, StimulusSet};
use crate::session::ClipParams;

pub const KIND_NATURAL: u8 = 0;
pub const KIND_GRATING: u8 = 1;
/// Sparse noise: the `noise` family of `twin::evaluate::FAMILIES` and the in-silico search.
pub const KIND_NOISE: u8 = 3;

/// All clips of a session, each [F, h, w].
#[derive(Debug, Clone)]
pub struct ClipLibrary {
    pub frames_per_clip: usize,
    pub height: usize,
    pub width: usize,
    pub clips: Vec<Vec<u8>>,
    pub params: Vec<ClipParams>,
}

impl ClipLibrary {
    /// Renders `cfg.sim.clips` clips of the configured set, deterministically for `seed`.
    pub fn generate(cfg: &RigConfig, seed: u64) -> Self {
        let s = &cfg.stimulus;
        let (h, w, f) = (s.height, s.width, s.frames_per_clip());
        let deg_per_px = cfg.display.width_deg() / w as f64;
        let mut rng = FastRng::new(seed ^ 0x5717_C11B);
        let mut lib = ClipLibrary {
            frames_per_clip: f,
            height: h,
            width: w,
            clips: Vec::new(),
            params: Vec::new(),
        };
        for i in 0..cfg.sim.clips {
            let kind = match cfg.sim.stimulus_set {
                StimulusSet::Natural => KIND_NATURAL,
                StimulusSet::Gratings => KIND_GRATING,
                StimulusSet::SparseNoise => KIND_NOISE,
                StimulusSet::Mixed => [KIND_NATURAL, KIND_GRATING][i % 2],
                // The calibration protocol: half natural clips, a quarter each gratings and
                // sparse noise, interleaved so that any prefix of the library keeps the mix.
                StimulusSet::Calibration => {
                    [KIND_NATURAL, KIND_GRATING, KIND_NATURAL, KIND_NOISE][i % 4]
                }
            };
            let (frames, params) = if kind == KIND_NATURAL {
                natural_clip(&mut rng, h, w, f)
            } else if kind == KIND_NOISE {
                sparse_noise_clip(&mut rng, h, w, f, deg_per_px, s.frame_rate_hz)
            } else {
                let ori = 22.5 * (rng.uniform() * 8.0).floor();
                let sf = [0.02, 0.04, 0.08][(rng.uniform() * 3.0) as usize % 3];
                let tf = [1.0, 2.0, 4.0][(rng.uniform() * 3.0) as usize % 3];
                let contrast = 0.8 + 0.2 * rng.uniform();
                let phase = rng.uniform() * std::f64::consts::TAU;
                let g = Grating {
                    orientation_deg: ori,
                    sf_cpd: sf,
                    tf_hz: tf,
                    contrast,
                    phase,
                };
                (
                    g.render(h, w, f, deg_per_px, s.frame_rate_hz),
                    ClipParams {
                        kind: KIND_GRATING,
                        orientation: ori as f32,
                        spatial_frequency: sf as f32,
                        temporal_frequency: tf as f32,
                        contrast: contrast as f32,
                    },
                )
            };
            lib.clips.push(frames);
            lib.params.push(params);
        }
        lib
    }

    pub fn len(&self) -> usize {
        self.clips.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clips.is_empty()
    }

    /// Frame `k` of clip `c`.
    pub fn frame(&self, c: usize, k: usize) -> &[u8] {
        let n = self.height * self.width;
        &self.clips[c][k * n..(k + 1) * n]
    }
}

/// A full-field drifting sinusoidal grating.
#[derive(Debug, Clone, Copy)]
pub struct Grating {
    pub orientation_deg: f64,
    pub sf_cpd: f64,
    pub tf_hz: f64,
    pub contrast: f64,
    pub phase: f64,
}

impl Grating {
    pub fn render(
        &self,
        h: usize,
        w: usize,
        frames: usize,
        deg_per_px: f64,
        rate_hz: f64,
    ) -> Vec<u8> {
        let th = self.orientation_deg.to_radians();
        let (c, s) = (th.cos(), th.sin());
        let k = std::f64::consts::TAU * self.sf_cpd * deg_per_px;
        let mut out = Vec::with_capacity(frames * h * w);
        for f in 0..frames {
            let ph = self.phase - std::f64::consts::TAU * self.tf_hz * f as f64 / rate_hz;
            for y in 0..h {
                for x in 0..w {
                    let u = (x as f64 - w as f64 / 2.0) * c + (y as f64 - h as f64 / 2.0) * s;
                    let l = 0.5 + 0.5 * self.contrast * (k * u + ph).sin();
                    out.push(to_u8(l));
                }
            }
        }
        out
    }
}

#[inline]
pub fn to_u8(l: f64) -> u8 {
    (l.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// A zero-mean, unit-variance random field with a 1/f^`alpha` amplitude spectrum (natural images
/// have alpha near 1), made by shaping white noise in the Fourier domain.
pub fn pink_field(rng: &mut FastRng, h: usize, w: usize, alpha: f64) -> Vec<f32> {
    let mut data: Vec<Complex<f64>> = (0..h * w)
        .map(|_| Complex::new(rng.normal(), rng.normal()))
        .collect();
    let mut planner = FftPlanner::<f64>::new();
    fft2(&mut planner, &mut data, h, w, false);
    for y in 0..h {
        let fy = if y <= h / 2 {
            y as f64
        } else {
            y as f64 - h as f64
        } / h as f64;
        for x in 0..w {
            let fx = if x <= w / 2 {
                x as f64
            } else {
                x as f64 - w as f64
            } / w as f64;
            let f = (fx * fx + fy * fy).sqrt();
            let a = if f == 0.0 { 0.0 } else { f.powf(-alpha) };
            data[y * w + x] *= a;
        }
    }
    fft2(&mut planner, &mut data, h, w, true);
    let mut out: Vec<f32> = data.iter().map(|c| c.re as f32).collect();
    let n = out.len() as f64;
    let mean = out.iter().map(|&v| v as f64).sum::<f64>() / n;
    let sd = (out.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n)
        .sqrt()
        .max(1e-12);
    for v in &mut out {
        *v = ((*v as f64 - mean) / sd) as f32;
    }
    out
}

fn fft2(
    planner: &mut FftPlanner<f64>,
    data: &mut [Complex<f64>],
    h: usize,
    w: usize,
    inverse: bool,
) {
    let row = if inverse {
        planner.plan_fft_inverse(w)
    } else {
        planner.plan_fft_forward(w)
    };
    for r in data.chunks_exact_mut(w) {
        row.process(r);
    }
    let col = if inverse {
        planner.plan_fft_inverse(h)
    } else {
        planner.plan_fft_forward(h)
    };
    let mut buf = vec![Complex::new(0.0, 0.0); h];
    for x in 0..w {
        for y in 0..h {
            buf[y] = data[y * w + x];
        }
        col.process(&mut buf);
        for y in 0..h {
            data[y * w + x] = buf[y];
        }
    }
}

/// Sparse noise as used to map receptive fields: squares of 5-8 degrees, each white or black on
/// mean gray with probability `density`, a new pattern every 4-8 stimulus frames (130-270 ms at
/// 30 Hz). Its parameters are recorded as contrast 1, `spatial_frequency` = 1 / square size
/// (cycles per degree of one on-off period's half) and `temporal_frequency` = patterns per second.
fn sparse_noise_clip(
    rng: &mut FastRng,
    h: usize,
    w: usize,
    frames: usize,
    deg_per_px: f64,
    rate_hz: f64,
) -> (Vec<u8>, ClipParams) {
    let square_deg = 5.0 + 3.0 * rng.uniform();
    let cell = ((square_deg / deg_per_px).round() as usize).max(1);
    let density = 0.04 + 0.06 * rng.uniform();
    let hold = 4 + (rng.uniform() * 5.0) as usize;
    let (gy, gx) = (h.div_ceil(cell), w.div_ceil(cell));
    let mut grid = vec![128u8; gy * gx];
    let mut out = Vec::with_capacity(frames * h * w);
    for f in 0..frames {
        if f % hold == 0 {
            for g in grid.iter_mut() {
                *g = if rng.uniform() >= density {
                    128
                } else if rng.uniform() < 0.5 {
                    255
                } else {
                    0
                };
            }
        }
        for y in 0..h {
            for x in 0..w {
                out.push(grid[(y / cell) * gx + x / cell]);
            }
        }
    }
    let params = ClipParams {
        kind: KIND_NOISE,
        orientation: f32::NAN,
        spatial_frequency: (1.0 / (2.0 * cell as f64 * deg_per_px)) as f32,
        temporal_frequency: (rate_hz / hold as f64) as f32,
        contrast: 1.0,
    };
    (out, params)
}

/// A natural-like clip: a 1/f field twice the screen size, viewed through a window that pans at a
/// constant velocity (the self-motion flow a running mouse sees), at a random RMS contrast.
fn natural_clip(rng: &mut FastRng, h: usize, w: usize, frames: usize) -> (Vec<u8>, ClipParams) {
    let (fh, fw) = (2 * h, 2 * w);
    let field = pink_field(rng, fh, fw, 1.0);
    let contrast = 0.15 + 0.2 * rng.uniform();
    let speed = 0.2 + 0.8 * rng.uniform(); // stimulus px per frame
    let dir = rng.uniform() * std::f64::consts::TAU;
    let (vy, vx) = (speed * dir.sin(), speed * dir.cos());
    let span_y = (fh - h - 1) as f64;
    let span_x = (fw - w - 1) as f64;
    let y0 = (span_y / 2.0 - vy * frames as f64 / 2.0).clamp(0.0, span_y);
    let x0 = (span_x / 2.0 - vx * frames as f64 / 2.0).clamp(0.0, span_x);
    let mut out = Vec::with_capacity(frames * h * w);
    for f in 0..frames {
        let oy = (y0 + vy * f as f64).clamp(0.0, span_y);
        let ox = (x0 + vx * f as f64).clamp(0.0, span_x);
        let (iy, ix) = (oy.floor() as usize, ox.floor() as usize);
        let (fy, fx) = ((oy - iy as f64) as f32, (ox - ix as f64) as f32);
        for y in 0..h {
            let r0 = (iy + y) * fw;
            let r1 = r0 + fw;
            for x in 0..w {
                let c = ix + x;
                let v = (1.0 - fy) * ((1.0 - fx) * field[r0 + c] + fx * field[r0 + c + 1])
                    + fy * ((1.0 - fx) * field[r1 + c] + fx * field[r1 + c + 1]);
                out.push(to_u8(0.5 + contrast * v as f64));
            }
        }
    }
    let params = ClipParams {
        kind: KIND_NATURAL,
        orientation: f32::NAN,
        spatial_frequency: f32::NAN,
        temporal_frequency: f32::NAN,
        contrast: contrast as f32,
    };
    (out, params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pink_field_spectrum_falls_with_frequency() {
        let mut rng = FastRng::new(1);
        let f = pink_field(&mut rng, 64, 64, 1.0);
        // Neighbouring pixels of a 1/f field are strongly correlated; white noise's are not.
        let n = f.len() - 1;
        let c: f64 = (0..n).map(|i| f[i] as f64 * f[i + 1] as f64).sum::<f64>() / n as f64;
        assert!(c > 0.5, "lag-1 correlation {c}");
    }

    #[test]
    fn grating_has_requested_contrast_and_mean() {
        let g = Grating {
            orientation_deg: 45.0,
            sf_cpd: 0.04,
            tf_hz: 2.0,
            contrast: 1.0,
            phase: 0.0,
        };
        let v = g.render(36, 64, 10, 1.9, 30.0);
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        assert!((mean - 127.5).abs() < 6.0, "{mean}");
        assert_eq!(*v.iter().max().unwrap(), 255);
        assert_eq!(*v.iter().min().unwrap(), 0);
    }

    /// The calibration protocol's library: half natural clips, a quarter gratings, a quarter
    /// sparse noise; noise is squares of one size, white or black on mean gray, sparse, held for
    /// several frames.
    #[test]
    fn calibration_library_mixes_natural_gratings_and_sparse_noise() {
        let mut cfg = RigConfig::embedded_sim();
        cfg.sim.stimulus_set = StimulusSet::Calibration;
        cfg.sim.clips = 8;
        let lib = ClipLibrary::generate(&cfg, 5);
        let kinds: Vec<u8> = lib.params.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, [0, 1, 0, 3, 0, 1, 0, 3]);
        let n = lib.height * lib.width;
        for c in [3, 7] {
            let clip = &lib.clips[c];
            assert!(clip.iter().all(|&v| v == 0 || v == 128 || v == 255));
            let lit = clip.iter().filter(|&&v| v != 128).count() as f64 / clip.len() as f64;
            assert!(lit > 0.005 && lit < 0.2, "fraction not gray {lit}");
            // A pattern is held: frame 1 repeats frame 0, and some later frame differs.
            assert_eq!(clip[..n], clip[n..2 * n]);
            assert!((1..lib.frames_per_clip).any(|k| clip[k * n..(k + 1) * n] != clip[..n]));
            let p = lib.params[c];
            assert_eq!(p.contrast, 1.0);
            assert!(p.temporal_frequency >= 3.0 && p.temporal_frequency <= 7.6);
        }
    }

    #[test]
    fn library_is_deterministic() {
        let cfg = RigConfig::embedded_sim();
        let a = ClipLibrary::generate(&cfg, 5);
        let b = ClipLibrary::generate(&cfg, 5);
        assert_eq!(a.clips, b.clips);
        assert_eq!(a.len(), cfg.sim.clips);
    }
}
