//! Test-only synthetic two-photon-like frames: a textured background (many small Gaussian
//! blobs on a gentle gradient, standing in for neuropil and vessels) plus Gaussian somas.
//! Everything is rendered analytically at any sub-pixel displacement, so the true shift of a
//! frame is known exactly, and Poisson sampling gives realistic shot noise.

use rand::Rng;
use rand_distr::{Distribution, Poisson};

use super::RoiMask;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Blob {
    pub cy: f32,
    pub cx: f32,
    pub sigma: f32,
    pub amp: f32,
}

pub(crate) struct Scene {
    pub height: usize,
    pub width: usize,
    pub somas: Vec<Blob>,
    texture: Vec<Blob>,
    base: f32,
}

impl Scene {
    /// A scene with `n_somas` somas at least 12 px apart and 10 px away from the borders
    /// (fewer if they do not fit).
    pub fn new(rng: &mut impl Rng, height: usize, width: usize, n_somas: usize) -> Self {
        let (hf, wf) = (height as f32, width as f32);
        let texture = (0..height * width / 50)
            .map(|_| Blob {
                cy: rng.gen_range(-5.0..hf + 5.0),
                cx: rng.gen_range(-5.0..wf + 5.0),
                sigma: rng.gen_range(1.0..3.0),
                amp: rng.gen_range(10.0..60.0),
            })
            .collect();
        let mut somas: Vec<Blob> = Vec::with_capacity(n_somas);
        let mut tries = 0;
        while somas.len() < n_somas && tries < 100 * n_somas {
            tries += 1;
            let cy = rng.gen_range(10.0..hf - 10.0);
            let cx = rng.gen_range(10.0..wf - 10.0);
            if somas
                .iter()
                .all(|s| (s.cy - cy).powi(2) + (s.cx - cx).powi(2) > 144.0)
            {
                somas.push(Blob {
                    cy,
                    cx,
                    sigma: rng.gen_range(2.0..3.0),
                    amp: rng.gen_range(150.0..250.0),
                });
            }
        }
        Self {
            height,
            width,
            somas,
            texture,
            base: 50.0,
        }
    }

    /// Expected photon counts with the content displaced by (dy, dx), soma i scaled by
    /// (1 + activity[i]) and the background by (1 + neuropil).
    pub fn render(&self, dy: f32, dx: f32, activity: &[f32], neuropil: f32, out: &mut [f32]) {
        let (h, w) = (self.height, self.width);
        for y in 0..h {
            let g = self.base + 20.0 * (y as f32 - dy) / h as f32;
            out[y * w..(y + 1) * w].fill(g * (1.0 + neuropil));
        }
        let mut draw = |b: &Blob, gain: f32| {
            let (cy, cx) = (b.cy + dy, b.cx + dx);
            let rad = 4.0 * b.sigma;
            let y0 = (cy - rad).floor().max(0.0) as usize;
            let y1 = ((cy + rad).ceil().max(0.0) as usize).min(h);
            let x0 = (cx - rad).floor().max(0.0) as usize;
            let x1 = ((cx + rad).ceil().max(0.0) as usize).min(w);
            let k = -0.5 / (b.sigma * b.sigma);
            for y in y0..y1 {
                for x in x0..x1 {
                    let d2 = (y as f32 - cy).powi(2) + (x as f32 - cx).powi(2);
                    out[y * w + x] += gain * b.amp * (k * d2).exp();
                }
            }
        };
        for b in &self.texture {
            draw(b, 1.0 + neuropil);
        }
        for (b, &a) in self.somas.iter().zip(activity) {
            draw(b, 1.0 + a);
        }
    }

    pub fn poisson(rng: &mut impl Rng, img: &[f32]) -> Vec<u16> {
        img.iter()
            .map(|&l| {
                let l = (l as f64).max(1e-3);
                match Poisson::new(l) {
                    Ok(p) => p.sample(rng).min(u16::MAX as f64) as u16,
                    Err(_) => 0,
                }
            })
            .collect()
    }

    pub fn random_shift(&self, rng: &mut impl Rng, max: f32) -> (f32, f32) {
        (rng.gen_range(-max..max), rng.gen_range(-max..max))
    }

    /// One mask per soma (ids 100, 101, ...): pixels within 2 sigma of its centre displaced by
    /// (dy, dx), weighted by the soma's Gaussian profile.
    pub fn soma_masks(&self, dy: f32, dx: f32) -> Vec<RoiMask> {
        let (h, w) = (self.height, self.width);
        self.somas
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let (cy, cx) = (b.cy + dy, b.cx + dx);
                let rad = 2.0 * b.sigma;
                let mut pixels = vec![];
                let mut weights = vec![];
                for y in 0..h {
                    for x in 0..w {
                        let d2 = (y as f32 - cy).powi(2) + (x as f32 - cx).powi(2);
                        if d2 <= rad * rad {
                            pixels.push((y * w + x) as u32);
                            weights.push((-0.5 * d2 / (b.sigma * b.sigma)).exp());
                        }
                    }
                }
                RoiMask {
                    id: 100 + i as u32,
                    pixels,
                    weights,
                }
            })
            .collect()
    }
}
