//! Stimulus families and the renderer. A candidate is (family, parameter vector); rendering is a
//! pure function of it, so a plan entry, a shard and a merge all see the same frames.
//!
//! Every family renders a contrast signal c = (L - gray) / gray and then goes through the same
//! constraints MEI work uses: each frame's mean is set to the gray level (no luminance flicker),
//! the clip's RMS contrast is scaled down to the budget when above it, and pixels are clipped to
//! the 8-bit range and quantised. The twin scores the quantised frames: what is predicted is
//! exactly what will be shown.

use std::f64::consts::TAU;
use std::path::Path;

use super::{InsilicoError, SearchOptions};
use crate::session::SessionReader;
use crate::sim::rng::FastRng;
use crate::sim::stimulus::KIND_NATURAL;

/// Mean gray of the 8-bit encoding (docs/twin-contract.md).
pub const GRAY: f64 = 127.5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Grating,
    Gabor,
    Noise,
    Freeform,
    Natural,
}

pub const FAMILIES: &[&str] = &["grating", "gabor", "noise", "freeform", "natural"];

/// Free-form space: a 5x5 cosine basis (less the DC term) under a Gaussian window.
const FREEFORM_K: usize = 5;

/// How a unit-cube coordinate maps onto a parameter.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    pub name: String,
    pub lo: f64,
    pub hi: f64,
    pub log: bool,
}

impl ParamSpec {
    fn lin(name: &str, lo: f64, hi: f64) -> Self {
        ParamSpec {
            name: name.into(),
            lo,
            hi,
            log: false,
        }
    }
    fn log(name: &str, lo: f64, hi: f64) -> Self {
        ParamSpec {
            log: true,
            ..ParamSpec::lin(name, lo, hi)
        }
    }
    fn at_unit(&self, u: f64) -> f64 {
        let u = u.clamp(0.0, 1.0);
        if self.log {
            (self.lo.ln() + u * (self.hi.ln() - self.lo.ln())).exp()
        } else {
            self.lo + u * (self.hi - self.lo)
        }
    }
    fn to_unit(&self, v: f64) -> f64 {
        let u = if self.log {
            (v.max(1e-300).ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        u.clamp(0.0, 1.0)
    }
}

/// One stimulus family with its parameter space.
#[derive(Debug, Clone)]
pub struct Family {
    pub kind: Kind,
    pub params: Vec<ParamSpec>,
}

impl Family {
    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::Grating => "grating",
            Kind::Gabor => "gabor",
            Kind::Noise => "noise",
            Kind::Freeform => "freeform",
            Kind::Natural => "natural",
        }
    }

    /// Whether CMA-ES optimises it (continuous parameters); noise and natural clips are screened.
    pub fn optimisable(&self) -> bool {
        matches!(self.kind, Kind::Grating | Kind::Gabor | Kind::Freeform)
    }

    pub fn dim(&self) -> usize {
        self.params.len()
    }

    pub fn param_names(&self) -> Vec<String> {
        self.params.iter().map(|p| p.name.clone()).collect()
    }

    pub fn at_unit(&self, u: &[f64]) -> Vec<f64> {
        self.params
            .iter()
            .zip(u)
            .map(|(p, &u)| p.at_unit(u))
            .collect()
    }

    pub fn to_unit(&self, v: &[f64]) -> Vec<f64> {
        self.params
            .iter()
            .zip(v)
            .map(|(p, &v)| p.to_unit(v))
            .collect()
    }
}

/// Natural clips for the `natural` family, at the twin's stimulus size.
#[derive(Debug, Clone)]
pub struct ClipSet {
    pub source: String,
    pub height: usize,
    pub width: usize,
    pub frames_per_clip: usize,
    /// Each [F, H, W] u8 luminance.
    pub clips: Vec<Vec<u8>>,
}

impl ClipSet {
    /// The natural clips of a session's clip library (`stimulus/clips` with kind natural).
    pub fn from_session(path: &Path) -> Result<ClipSet, InsilicoError> {
        let r = SessionReader::open(path)?;
        let m = r.meta().clone();
        let params = r.clip_params()?;
        if m.n_clips == 0 {
            return Err(InsilicoError::File {
                path: path.into(),
                message: "the clip library `stimulus/clips` is empty: the natural family needs at least one natural clip".into(),
            });
        }
        let mut clips = Vec::new();
        for (i, p) in params.iter().enumerate() {
            if p.kind == KIND_NATURAL {
                clips.push(r.clip(i)?);
            }
        }
        let set = ClipSet {
            source: path.display().to_string(),
            height: m.stimulus_height,
            width: m.stimulus_width,
            frames_per_clip: m.frames_per_clip,
            clips,
        };
        if set.clips.is_empty() {
            return Err(InsilicoError::File {
                path: path.into(),
                message: format!(
                    "the clip library `stimulus/clips` has {} clips and none is natural (`stimulus/clip_kind` = 0): the natural family has nothing to draw from",
                    m.n_clips
                ),
            });
        }
        Ok(set)
    }

    /// The natural clips of an in-memory library (e.g. the simulator's).
    pub fn from_library(lib: &crate::sim::stimulus::ClipLibrary, source: &str) -> ClipSet {
        ClipSet {
            source: source.into(),
            height: lib.height,
            width: lib.width,
            frames_per_clip: lib.frames_per_clip,
            clips: lib
                .clips
                .iter()
                .zip(&lib.params)
                .filter(|(_, p)| p.kind == KIND_NATURAL)
                .map(|(c, _)| c.clone())
                .collect(),
        }
    }
}

/// Builds the named families for a stimulus of `h` x `w` pixels.
pub fn families(
    names: &[String],
    h: usize,
    w: usize,
    deg_per_px: f64,
    library: Option<&ClipSet>,
) -> Result<Vec<Family>, InsilicoError> {
    if names.is_empty() {
        return Err(InsilicoError::input(format!(
            "--families: empty; expected some of {}",
            FAMILIES.join(", ")
        )));
    }
    let (half_w, half_h) = (w as f64 * deg_per_px / 2.0, h as f64 * deg_per_px / 2.0);
    let mut out: Vec<Family> = Vec::new();
    for name in names {
        let kind = match name.as_str() {
            "grating" => Kind::Grating,
            "gabor" => Kind::Gabor,
            "noise" => Kind::Noise,
            "freeform" => Kind::Freeform,
            "natural" => Kind::Natural,
            o => {
                return Err(InsilicoError::input(format!(
                    "--families: unknown family {o:?}; expected some of {}",
                    FAMILIES.join(", ")
                )))
            }
        };
        if out.iter().any(|f| f.kind == kind) {
            return Err(InsilicoError::input(format!(
                "--families: {name} is named twice"
            )));
        }
        let pos = |v: &mut Vec<ParamSpec>| {
            v.push(ParamSpec::lin("x_deg", -half_w, half_w));
            v.push(ParamSpec::lin("y_deg", -half_h, half_h));
        };
        let mut p = Vec::new();
        match kind {
            Kind::Grating => {
                p.push(ParamSpec::lin("orientation_deg", 0.0, 180.0));
                p.push(ParamSpec::log("sf_cpd", 0.01, 0.16));
                p.push(ParamSpec::lin("tf_hz", 0.0, 6.0));
                p.push(ParamSpec::lin("contrast", 0.2, 1.0));
                p.push(ParamSpec::log("radius_deg", 8.0, 2.0 * half_w));
                pos(&mut p);
                p.push(ParamSpec::lin("phase", 0.0, TAU));
            }
            Kind::Gabor => {
                p.push(ParamSpec::lin("orientation_deg", 0.0, 180.0));
                p.push(ParamSpec::log("sf_cpd", 0.01, 0.16));
                p.push(ParamSpec::lin("tf_hz", 0.0, 6.0));
                p.push(ParamSpec::lin("contrast", 0.2, 1.0));
                p.push(ParamSpec::log("sigma_deg", 3.0, 25.0));
                pos(&mut p);
                p.push(ParamSpec::lin("phase", 0.0, TAU));
            }
            Kind::Noise => {
                p.push(ParamSpec::log("square_deg", 4.0, 24.0));
                p.push(ParamSpec::lin("density", 0.02, 0.3));
                p.push(ParamSpec::lin("hold_frames", 1.0, 10.0));
                p.push(ParamSpec::lin("noise_seed", 0.0, (1u64 << 52) as f64));
            }
            Kind::Freeform => {
                pos(&mut p);
                p.push(ParamSpec::log("sigma_deg", 4.0, 40.0));
                p.push(ParamSpec::lin("modulation", 0.0, 1.0));
                p.push(ParamSpec::lin("tf_hz", 0.5, 6.0));
                for ky in 0..FREEFORM_K {
                    for kx in 0..FREEFORM_K {
                        if kx + ky > 0 {
                            p.push(ParamSpec::lin(&format!("a{ky}{kx}"), -1.0, 1.0));
                        }
                    }
                }
            }
            Kind::Natural => {
                let Some(lib) = library else {
                    return Err(InsilicoError::input(
                        "--families: natural needs a clip library (--library SESSION.h5)",
                    ));
                };
                if lib.clips.is_empty() {
                    return Err(InsilicoError::input(format!(
                        "{}: the natural-clip library is empty",
                        lib.source
                    )));
                }
                if (lib.height, lib.width) != (h, w) {
                    return Err(InsilicoError::input(format!(
                        "{}: library clips are {}x{} (HxW), the twin's stimulus is {h}x{w}",
                        lib.source, lib.height, lib.width
                    )));
                }
                p.push(ParamSpec::lin("clip", 0.0, (lib.clips.len() - 1) as f64));
                p.push(ParamSpec::lin(
                    "start_frame",
                    0.0,
                    (lib.frames_per_clip.max(1) - 1) as f64,
                ));
            }
        }
        out.push(Family { kind, params: p });
    }
    Ok(out)
}

/// Renders candidates at the twin's stimulus size and frame rate under the constraints.
#[derive(Debug, Clone)]
pub struct Renderer {
    pub height: usize,
    pub width: usize,
    pub frames: usize,
    pub frame_rate_hz: f64,
    pub deg_per_px: f64,
    pub max_rms: f64,
    pub families: Vec<Family>,
    pub library: Option<ClipSet>,
}

impl Renderer {
    /// The renderer for the families `names`, a stimulus of `frames` frames of `height` x `width`
    /// pixels at `frame_rate_hz`, under the search options' geometry and contrast budget. The
    /// search and the control of a plan build theirs the same way, so a control is drawn from the
    /// very space the plan was searched in.
    pub fn new(
        names: &[String],
        (height, width, frames): (usize, usize, usize),
        frame_rate_hz: f64,
        o: &SearchOptions,
        library: Option<ClipSet>,
    ) -> Result<Renderer, InsilicoError> {
        let families = families(names, height, width, o.deg_per_px, library.as_ref())?;
        Ok(Renderer {
            height,
            width,
            frames,
            frame_rate_hz,
            deg_per_px: o.deg_per_px,
            max_rms: o.max_rms_contrast,
            families,
            library,
        })
    }

    pub fn frame_len(&self) -> usize {
        self.height * self.width
    }
    pub fn clip_len(&self) -> usize {
        self.frames * self.frame_len()
    }

    /// A screening candidate's parameters: uniform in the family's space, drawn from `rng`.
    pub fn sample(&self, fam: usize, rng: &mut FastRng) -> Vec<f64> {
        let f = &self.families[fam];
        let mut v: Vec<f64> = f.params.iter().map(|p| p.at_unit(rng.uniform())).collect();
        match f.kind {
            Kind::Noise => {
                v[2] = v[2].round();
                v[3] = (rng.next_u64() >> 12) as f64;
            }
            Kind::Natural => {
                v[0] = v[0].round();
                v[1] = v[1].round();
            }
            _ => {}
        }
        v
    }

    /// Renders `params` of family `fam` into `out` ([T*H*W] u8 luminance).
    pub fn render(&self, fam: usize, params: &[f64], out: &mut [u8]) {
        let (h, w, t_n) = (self.height, self.width, self.frames);
        let hw = h * w;
        let mut c = vec![0f64; t_n * hw];
        let d = self.deg_per_px;
        let xdeg = |x: usize| (x as f64 + 0.5 - w as f64 / 2.0) * d;
        let ydeg = |y: usize| (y as f64 + 0.5 - h as f64 / 2.0) * d;
        let dt = 1.0 / self.frame_rate_hz;
        let f = &self.families[fam];
        match f.kind {
            Kind::Grating | Kind::Gabor => {
                let (ori, sf, tf, con, size, cx, cy, ph) = (
                    params[0].to_radians(),
                    params[1],
                    params[2],
                    params[3],
                    params[4],
                    params[5],
                    params[6],
                    params[7],
                );
                let (co, si) = (ori.cos(), ori.sin());
                // Spatial part once per pixel; time only shifts the carrier's phase.
                let mut env = vec![0f64; hw];
                let mut arg = vec![0f64; hw];
                for y in 0..h {
                    for x in 0..w {
                        let (dx, dy) = (xdeg(x) - cx, ydeg(y) - cy);
                        let r2 = dx * dx + dy * dy;
                        env[y * w + x] = if f.kind == Kind::Gabor {
                            (-r2 / (2.0 * size * size)).exp()
                        } else {
                            // Soft-edged aperture: edge width a tenth of the radius (at least a pixel).
                            let edge = (0.1 * size).max(d);
                            1.0 / (1.0 + ((r2.sqrt() - size) / edge).exp())
                        };
                        arg[y * w + x] = TAU * sf * (dx * co + dy * si) + ph;
                    }
                }
                for k in 0..t_n {
                    let shift = TAU * tf * k as f64 * dt;
                    let fr = &mut c[k * hw..(k + 1) * hw];
                    for i in 0..hw {
                        fr[i] = con * env[i] * (arg[i] - shift).sin();
                    }
                }
            }
            Kind::Freeform => {
                let (cx, cy, sigma, m, tf) =
                    (params[0], params[1], params[2], params[3], params[4]);
                let coef = &params[5..];
                let mut pat = vec![0f64; hw];
                let mut peak = 0f64;
                for y in 0..h {
                    for x in 0..w {
                        let (dx, dy) = (xdeg(x) - cx, ydeg(y) - cy);
                        let env = (-(dx * dx + dy * dy) / (2.0 * sigma * sigma)).exp();
                        // Local coordinates over a +-2 sigma window: cosines up to 2 cycles across it.
                        let (u, v) = (dx / (4.0 * sigma) + 0.5, dy / (4.0 * sigma) + 0.5);
                        let mut s = 0.0;
                        let mut j = 0;
                        for ky in 0..FREEFORM_K {
                            let cyv = (std::f64::consts::PI * ky as f64 * v).cos();
                            for kx in 0..FREEFORM_K {
                                if kx + ky == 0 {
                                    continue;
                                }
                                s += coef[j] * cyv * (std::f64::consts::PI * kx as f64 * u).cos();
                                j += 1;
                            }
                        }
                        let val = env * s;
                        peak = peak.max(val.abs());
                        pat[y * w + x] = val;
                    }
                }
                let norm = if peak > 1e-12 { 1.0 / peak } else { 0.0 };
                for k in 0..t_n {
                    let a = norm * (1.0 - m + m * (TAU * tf * k as f64 * dt).cos());
                    for i in 0..hw {
                        c[k * hw + i] = a * pat[i];
                    }
                }
            }
            Kind::Noise => {
                let cell = ((params[0] / d).round() as usize).max(1);
                let density = params[1];
                let hold = (params[2].round() as usize).max(1);
                let seed = params[3] as u64;
                let (gy, gx) = (h.div_ceil(cell), w.div_ceil(cell));
                let mut grid = vec![0f64; gy * gx];
                for k in 0..t_n {
                    if k % hold == 0 {
                        let mut rng = FastRng::new(super::mix(seed, (k / hold) as u64));
                        for g in grid.iter_mut() {
                            let on = rng.uniform() < density;
                            let white = rng.uniform() < 0.5;
                            *g = if !on {
                                0.0
                            } else if white {
                                1.0
                            } else {
                                -1.0
                            };
                        }
                    }
                    for y in 0..h {
                        for x in 0..w {
                            c[k * hw + y * w + x] = grid[(y / cell) * gx + x / cell];
                        }
                    }
                }
            }
            Kind::Natural => {
                let lib = self.library.as_ref().expect("checked when built");
                let clip = &lib.clips[(params[0] as usize).min(lib.clips.len() - 1)];
                let fpc = lib.frames_per_clip.max(1);
                let start = params[1] as usize;
                for k in 0..t_n {
                    let src = (start + k) % fpc;
                    let fr = &clip[src * hw..(src + 1) * hw];
                    for i in 0..hw {
                        c[k * hw + i] = fr[i] as f64 / GRAY - 1.0;
                    }
                }
            }
        }
        constrain(&mut c, hw, self.max_rms, out);
    }
}

/// Mean gray per frame, RMS contrast at most `max_rms`, 8-bit range.
pub fn constrain(c: &mut [f64], hw: usize, max_rms: f64, out: &mut [u8]) {
    for fr in c.chunks_exact_mut(hw) {
        let m = fr.iter().sum::<f64>() / hw as f64;
        fr.iter_mut().for_each(|v| *v -= m);
    }
    let rms = (c.iter().map(|v| v * v).sum::<f64>() / c.len().max(1) as f64).sqrt();
    let scale = if rms > max_rms { max_rms / rms } else { 1.0 };
    for (o, &v) in out.iter_mut().zip(c.iter()) {
        *o = (GRAY + GRAY * v * scale).round().clamp(0.0, 255.0) as u8;
    }
}

/// RMS contrast of an 8-bit clip, in contrast units.
pub fn rms_contrast(frames: &[u8]) -> f64 {
    let n = frames.len().max(1) as f64;
    (frames
        .iter()
        .map(|&v| (v as f64 / GRAY - 1.0).powi(2))
        .sum::<f64>()
        / n)
        .sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn renderer(names: &[&str]) -> Renderer {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        Renderer {
            height: 36,
            width: 64,
            frames: 10,
            frame_rate_hz: 30.0,
            deg_per_px: 1.9,
            max_rms: 0.5,
            families: families(&names, 36, 64, 1.9, None).unwrap(),
            library: None,
        }
    }

    #[test]
    fn every_family_respects_the_constraints() {
        let r = renderer(&["grating", "gabor", "noise", "freeform"]);
        let mut out = vec![0u8; r.clip_len()];
        let mut rng = FastRng::new(3);
        for fam in 0..r.families.len() {
            for _ in 0..5 {
                let p = r.sample(fam, &mut rng);
                assert_eq!(p.len(), r.families[fam].dim());
                r.render(fam, &p, &mut out);
                let rms = rms_contrast(&out);
                assert!(rms <= 0.5 + 0.01, "{} rms {rms}", r.families[fam].name());
                for fr in out.chunks_exact(r.frame_len()) {
                    let m = fr.iter().map(|&v| v as f64).sum::<f64>() / fr.len() as f64;
                    // Clipping at 0/255 can move the mean a little; rounding by half a level.
                    assert!(
                        (m - GRAY).abs() < 8.0,
                        "{} mean {m}",
                        r.families[fam].name()
                    );
                }
            }
        }
    }

    #[test]
    fn unit_mapping_round_trips() {
        let r = renderer(&["gabor"]);
        let f = &r.families[0];
        let u: Vec<f64> = (0..f.dim())
            .map(|i| (i as f64 + 0.5) / f.dim() as f64)
            .collect();
        let back = f.to_unit(&f.at_unit(&u));
        for (a, b) in u.iter().zip(&back) {
            assert!((a - b).abs() < 1e-9);
        }
    }

    #[test]
    fn unknown_family_is_refused() {
        let e = families(&["plaid".into()], 36, 64, 1.9, None).unwrap_err();
        assert!(e.to_string().contains("plaid"));
    }
}
