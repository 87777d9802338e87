//! The simulated two-photon microscope: renders each frame (u16 counts) from soma footprints over a
//! textured neuropil, shifts it by slow rigid motion, and adds shot and read noise.
//!
//! Motion convention (shared with `extract::motion` and the ground truth): frame(y, x) =
//! scene(y - dy, x - dx), i.e. (dy, dx) is how far the content moved.

use super::mouse::Neuron;
use super::rng::FastRng;
use super::stimulus::pink_field;
use crate::session::RoiTable;

/// Dark offset of the detector, counts.
const DARK: f32 = 100.0;
/// Counts per detected photon: shot-noise variance is GAIN * signal.
const GAIN: f32 = 2.0;
/// Read noise, counts RMS.
const READ_NOISE: f32 = 3.0;
/// How strongly population activity brightens the neuropil (fraction per unit mean dF/F).
const NEUROPIL_COUPLING: f32 = 0.5;

pub struct Microscope {
    height: usize,
    width: usize,
    neuropil: Vec<f32>,
    /// Soma footprints; ROI id r is neuron r.
    pub footprints: RoiTable,
    brightness: Vec<f32>,
    scene: Vec<f32>,
    noise: Vec<f32>,
    col0: Vec<usize>,
    col1: Vec<usize>,
    rng: FastRng,
    noise_scale: f32,
    motion_sd: f64,
    rho: f64,
    dy: f64,
    dx: f64,
}

impl Microscope {
    pub fn new(
        height: usize,
        width: usize,
        neurons: &[Neuron],
        frame_rate_hz: f64,
        noise_scale: f64,
        motion_px: f64,
        seed: u64,
    ) -> Self {
        let mut rng = FastRng::new(seed ^ 0x3D1C_2050);
        // Neuropil: a smooth 1/f^1.5 texture (vessels and out-of-focus processes) of 120..280 counts.
        let tex = pink_field(&mut rng, height, width, 1.5);
        let neuropil: Vec<f32> = tex.iter().map(|&v| (200.0 + 40.0 * v).max(20.0)).collect();
        let mut fp = RoiTable {
            height,
            width,
            offsets: vec![0],
            ..Default::default()
        };
        for (i, n) in neurons.iter().enumerate() {
            let r = n.radius;
            let reach = (r * 1.6).ceil() as isize;
            let (cy, cx) = (n.soma_y, n.soma_x);
            for y in (cy as isize - reach)..=(cy as isize + reach) {
                for x in (cx as isize - reach)..=(cx as isize + reach) {
                    if y < 0 || x < 0 || y >= height as isize || x >= width as isize {
                        continue;
                    }
                    let d = ((y as f32 - cy).powi(2) + (x as f32 - cx).powi(2)).sqrt();
                    // A soft-edged disk: GCaMP fills the cytosol, falling off over ~1 px at the edge.
                    let w = 1.0 / (1.0 + ((d - r) / 0.7).exp());
                    if w > 0.05 {
                        fp.pixels.push((y as usize * width + x as usize) as u32);
                        fp.weights.push(w);
                    }
                }
            }
            fp.ids.push(i as u32);
            fp.offsets.push(fp.pixels.len() as u64);
        }
        Microscope {
            height,
            width,
            neuropil,
            footprints: fp,
            brightness: neurons.iter().map(|n| n.brightness).collect(),
            scene: vec![0.0; height * width],
            noise: vec![0.0; width],
            col0: vec![0; width],
            col1: vec![0; width],
            rng: FastRng::new(seed ^ 0x0015_E000),
            noise_scale: noise_scale as f32,
            motion_sd: motion_px,
            rho: (-1.0 / (1.5 * frame_rate_hz)).exp(),
            dy: 0.0,
            dx: 0.0,
        }
    }

    /// Renders the next frame from each soma's dF/F into `out` and returns the true (dy, dx).
    pub fn render(&mut self, dff: &[f32], out: &mut [u16]) -> [f32; 2] {
        let (h, w) = (self.height, self.width);
        // Slow rigid motion: Ornstein-Uhlenbeck, 1.5 s time constant.
        let k = self.motion_sd * (1.0 - self.rho * self.rho).sqrt();
        self.dy = self.rho * self.dy + k * self.rng.normal();
        self.dx = self.rho * self.dx + k * self.rng.normal();

        let mean_dff = if dff.is_empty() {
            0.0
        } else {
            dff.iter().sum::<f32>() / dff.len() as f32
        };
        let np_gain = 1.0 + NEUROPIL_COUPLING * mean_dff;
        for (s, &n) in self.scene.iter_mut().zip(&self.neuropil) {
            *s = n * np_gain;
        }
        let fp = &self.footprints;
        for (r, (&b, &d)) in self.brightness.iter().zip(dff).enumerate() {
            let (a, e) = (fp.offsets[r] as usize, fp.offsets[r + 1] as usize);
            let amp = b * (1.0 + d);
            for (&p, &wgt) in fp.pixels[a..e].iter().zip(&fp.weights[a..e]) {
                self.scene[p as usize] += amp * wgt;
            }
        }

        // The shift is the same for every pixel, so the bilinear weights are constants.
        let (sy, sx) = (-self.dy, -self.dx);
        let (iy, ix) = (sy.floor(), sx.floor());
        let (fy, fx) = ((sy - iy) as f32, (sx - ix) as f32);
        let (iy, ix) = (iy as isize, ix as isize);
        let clampc = |v: isize, n: usize| v.clamp(0, n as isize - 1) as usize;
        for x in 0..w {
            self.col0[x] = clampc(x as isize + ix, w);
            self.col1[x] = clampc(x as isize + ix + 1, w);
        }
        let (w00, w01, w10, w11) = (
            (1.0 - fy) * (1.0 - fx),
            (1.0 - fy) * fx,
            fy * (1.0 - fx),
            fy * fx,
        );
        for y in 0..h {
            let r0 = clampc(y as isize + iy, h) * w;
            let r1 = clampc(y as isize + iy + 1, h) * w;
            self.rng.fill_normal(&mut self.noise);
            let row = &mut out[y * w..(y + 1) * w];
            let cols = self.col0.iter().zip(&self.col1).zip(&self.noise);
            for (px, ((&c0, &c1), &z)) in row.iter_mut().zip(cols) {
                let s = w00 * self.scene[r0 + c0]
                    + w01 * self.scene[r0 + c1]
                    + w10 * self.scene[r1 + c0]
                    + w11 * self.scene[r1 + c1];
                let sd = (GAIN * s + READ_NOISE * READ_NOISE).sqrt() * self.noise_scale;
                *px = (DARK + s + sd * z).clamp(0.0, 65535.0).round() as u16;
            }
        }
        [self.dy as f32, self.dx as f32]
    }
}
