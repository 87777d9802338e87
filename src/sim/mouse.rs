//! The simulated mouse: a population of V1-like neurons with Gabor receptive fields (simple and
//! complex cells), a biphasic temporal filter, a static nonlinearity, gain modulated by running and
//! arousal, Poisson spiking and GCaMP-like calcium (AR(1) decay).
//!
//! Neurons see luminance contrast, (L - 0.5) / 0.5 per stimulus pixel. Each receptive field is
//! normalised so that its optimal full-contrast grating drives it to 1; the nonlinearity maps that
//! drive to a firing rate between the gray-screen rate and `max_rate`.

use super::rng::FastRng;
use crate::config::RigConfig;
use crate::session::NeuronTable;

/// One ground-truth neuron.
#[derive(Debug, Clone)]
pub struct Neuron {
    pub soma_y: f32,
    pub soma_x: f32,
    pub radius: f32,
    pub brightness: f32,
    pub rf_x: f32,
    pub rf_y: f32,
    pub rf_sigma: f32,
    pub orientation_deg: f32,
    /// cycles per stimulus pixel
    pub sf: f32,
    pub phase: f32,
    pub complex: bool,
    pub baseline_rate: f32,
    pub max_rate: f32,
    pub running_gain: f32,
    pub tau: f32,
    pub dff_per_spike: f32,
    patch: Patch,
}

/// The receptive field's support in the stimulus: a window and the two quadrature kernels on it.
#[derive(Debug, Clone)]
struct Patch {
    x0: usize,
    y0: usize,
    w: usize,
    h: usize,
    even: Vec<f32>,
    odd: Vec<f32>,
}

/// Drive levels of the static nonlinearity: slope and threshold of the softplus.
const NL_SLOPE: f32 = 6.0;
const NL_THRESHOLD: f32 = 0.25;
/// Half-saturation of the indicator, in dF/F.
const DFF_SATURATION: f32 = 4.0;

#[inline]
fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

pub struct Mouse {
    pub neurons: Vec<Neuron>,
    stim_w: usize,
    stim_h: usize,
    /// Temporal filter taps at the imaging rate, newest first.
    taps: Vec<f32>,
    /// History of the spatial responses [N][K], ring-indexed by `pos`.
    hist_even: Vec<f32>,
    hist_odd: Vec<f32>,
    pos: usize,
    cur_even: Vec<f32>,
    cur_odd: Vec<f32>,
    gamma: Vec<f32>,
    calcium: Vec<f32>,
    rate: Vec<f32>,
    dt: f32,
    rng: FastRng,
    nl_floor: f32,
    nl_scale: f32,
}

impl Mouse {
    /// Draws a population for the config's field of view and stimulus size.
    pub fn new(cfg: &RigConfig, seed: u64) -> Self {
        let mut rng = FastRng::new(seed ^ 0x0A0B_5E00);
        let (fh, fw) = (cfg.imaging.height as f32, cfg.imaging.width as f32);
        let (sh, sw) = (cfg.stimulus.height, cfg.stimulus.width);
        let n = cfg.sim.neurons;
        // Somas are about 12 um across; keep them inside a margin the motion cannot push out.
        let radius_px = (6.0 / cfg.imaging.um_per_px as f32).clamp(2.0, 12.0);
        let margin = radius_px * 2.0 + 4.0 * cfg.sim.motion_px as f32 + 4.0;
        let deg_per_px = (cfg.display.width_deg() / sw as f64) as f32;
        let mut neurons = Vec::with_capacity(n);
        let mut placed: Vec<(f32, f32)> = Vec::with_capacity(n);
        let min_dist = 2.2 * radius_px;
        for _ in 0..n {
            let mut best = (fh / 2.0, fw / 2.0);
            // Rejection sampling for non-overlapping somas; with dense populations the last try stands.
            for _attempt in 0..200 {
                let y = margin + rng.uniform() as f32 * (fh - 2.0 * margin).max(1.0);
                let x = margin + rng.uniform() as f32 * (fw - 2.0 * margin).max(1.0);
                best = (y, x);
                if placed
                    .iter()
                    .all(|&(py, px)| (py - y).powi(2) + (px - x).powi(2) > min_dist * min_dist)
                {
                    break;
                }
            }
            placed.push(best);
            let radius = radius_px * (0.85 + 0.3 * rng.uniform() as f32);
            // Receptive fields cluster near the screen centre (retinotopy of one field of view)
            // with scatter; sigma 4-9 degrees, preferred SF 0.02-0.08 cycles/degree.
            let rf_x = sw as f32 * (0.5 + 0.22 * rng.normal() as f32).clamp(0.15, 0.85);
            let rf_y = sh as f32 * (0.5 + 0.18 * rng.normal() as f32).clamp(0.2, 0.8);
            let rf_sigma = (4.0 + 5.0 * rng.uniform() as f32) / deg_per_px;
            let sf_cpd = 0.02 * 2f32.powf(2.0 * rng.uniform() as f32);
            let sf = sf_cpd * deg_per_px;
            let orientation = 180.0 * rng.uniform() as f32;
            let phase = std::f32::consts::TAU * rng.uniform() as f32;
            let complex = rng.uniform() < 0.4;
            let patch = make_patch(rf_x, rf_y, rf_sigma, orientation, sf, phase, sw, sh);
            neurons.push(Neuron {
                soma_y: best.0,
                soma_x: best.1,
                radius,
                brightness: 150.0 + 200.0 * rng.uniform() as f32,
                rf_x,
                rf_y,
                rf_sigma,
                orientation_deg: orientation,
                sf,
                phase,
                complex,
                baseline_rate: 0.3 + 1.2 * rng.uniform() as f32,
                max_rate: 5.0 + 15.0 * rng.uniform() as f32,
                running_gain: (0.6 * rng.normal() as f32 + 0.4).clamp(-0.5, 1.5),
                tau: 0.6 + 0.6 * rng.uniform() as f32,
                dff_per_spike: 0.15 + 0.2 * rng.uniform() as f32,
                patch,
            });
        }
        let fr = cfg.imaging.frame_rate_hz as f32;
        let dt = 1.0 / fr;
        // Biphasic temporal kernel (gamma-like lobes peaking ~50 ms and ~100 ms), unit DC gain.
        let k = ((0.25 * fr).ceil() as usize).max(1) + 1;
        let mut taps: Vec<f32> = (0..k)
            .map(|i| {
                let t = i as f32 * dt;
                let lobe = |tau: f32| (t / tau).powi(2) * (-t / tau).exp();
                lobe(0.025) - 0.35 * lobe(0.05)
            })
            .collect();
        let sum: f32 = taps.iter().sum();
        if sum.abs() < 1e-6 || k == 1 {
            taps = vec![1.0];
        } else {
            taps.iter_mut().for_each(|v| *v /= sum);
        }
        let kk = taps.len();
        let nl_floor = softplus(-NL_SLOPE * NL_THRESHOLD);
        let nl_scale = softplus(NL_SLOPE * (1.0 - NL_THRESHOLD)) - nl_floor;
        Mouse {
            gamma: neurons.iter().map(|nr| (-dt / nr.tau).exp()).collect(),
            calcium: vec![0.0; n],
            rate: vec![0.0; n],
            hist_even: vec![0.0; n * kk],
            hist_odd: vec![0.0; n * kk],
            cur_even: vec![0.0; n],
            cur_odd: vec![0.0; n],
            pos: 0,
            taps,
            neurons,
            stim_w: sw,
            stim_h: sh,
            dt,
            rng: FastRng::new(seed ^ 0x5B1C_E5ED),
            nl_floor,
            nl_scale,
        }
    }

    pub fn len(&self) -> usize {
        self.neurons.len()
    }

    pub fn is_empty(&self) -> bool {
        self.neurons.is_empty()
    }

    /// Sets what is on screen (`None` = mean gray). Call when the visible stimulus frame changes.
    pub fn set_stimulus(&mut self, frame: Option<&[u8]>) {
        let Some(frame) = frame else {
            self.cur_even.iter_mut().for_each(|v| *v = 0.0);
            self.cur_odd.iter_mut().for_each(|v| *v = 0.0);
            return;
        };
        debug_assert_eq!(frame.len(), self.stim_w * self.stim_h);
        for (i, n) in self.neurons.iter().enumerate() {
            let (e, o) = n.patch.respond(frame, self.stim_w);
            self.cur_even[i] = e;
            self.cur_odd[i] = o;
        }
    }

    /// Advances one imaging frame: filters the current stimulus response in time, draws spikes and
    /// updates calcium. `running` in cm/s, `arousal` ~N(0,1).
    pub fn step(&mut self, running: f32, arousal: f32, spikes: &mut [u8], calcium: &mut [f32]) {
        let k = self.taps.len();
        self.pos = (self.pos + 1) % k;
        let run = running.max(0.0) / (running.max(0.0) + 10.0);
        for i in 0..self.neurons.len() {
            let base = i * k;
            self.hist_even[base + self.pos] = self.cur_even[i];
            self.hist_odd[base + self.pos] = self.cur_odd[i];
            let (mut e, mut o) = (0.0f32, 0.0f32);
            for (j, &tap) in self.taps.iter().enumerate() {
                let idx = base + (self.pos + k - j) % k;
                e += tap * self.hist_even[idx];
                o += tap * self.hist_odd[idx];
            }
            let n = &self.neurons[i];
            let x = if n.complex { (e * e + o * o).sqrt() } else { e };
            let drive = (softplus(NL_SLOPE * (x - NL_THRESHOLD)) - self.nl_floor) / self.nl_scale;
            let gain = (1.0 + n.running_gain * run) * (1.0 + 0.1 * arousal.clamp(-2.0, 2.0));
            let rate = ((n.baseline_rate + n.max_rate * drive) * gain).max(0.0);
            self.rate[i] = rate;
            let s = self.rng.poisson((rate * self.dt) as f64).min(255);
            spikes[i] = s as u8;
            self.calcium[i] = self.gamma[i] * self.calcium[i] + n.dff_per_spike * s as f32;
            // GCaMP saturates: the soma's dF/F bends over as calcium rises.
            calcium[i] = self.calcium[i] / (1.0 + self.calcium[i] / DFF_SATURATION);
        }
    }

    /// Firing rates of the last step, Hz (the noise-free response, for scoring stimuli).
    pub fn rates(&self) -> &[f32] {
        &self.rate
    }

    /// Ground-truth parameters for the session file.
    pub fn table(&self, roi_ids: &[u32]) -> NeuronTable {
        let col = |f: &dyn Fn(&Neuron) -> f32| self.neurons.iter().map(f).collect::<Vec<f32>>();
        NeuronTable {
            fields: vec![
                ("roi_id", roi_ids.iter().map(|&i| i as f32).collect()),
                ("soma_y", col(&|n| n.soma_y)),
                ("soma_x", col(&|n| n.soma_x)),
                ("radius", col(&|n| n.radius)),
                ("brightness", col(&|n| n.brightness)),
                ("rf_x", col(&|n| n.rf_x)),
                ("rf_y", col(&|n| n.rf_y)),
                ("rf_sigma", col(&|n| n.rf_sigma)),
                ("orientation", col(&|n| n.orientation_deg)),
                ("spatial_frequency", col(&|n| n.sf)),
                ("phase", col(&|n| n.phase)),
                ("complex", col(&|n| n.complex as u8 as f32)),
                ("baseline_rate", col(&|n| n.baseline_rate)),
                ("max_rate", col(&|n| n.max_rate)),
                ("running_gain", col(&|n| n.running_gain)),
                ("tau", col(&|n| n.tau)),
                ("dff_per_spike", col(&|n| n.dff_per_spike)),
            ],
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn make_patch(
    cx: f32,
    cy: f32,
    sigma: f32,
    ori_deg: f32,
    sf: f32,
    phase: f32,
    sw: usize,
    sh: usize,
) -> Patch {
    let r = 3.0 * sigma;
    let x0 = (cx - r).floor().max(0.0) as usize;
    let y0 = (cy - r).floor().max(0.0) as usize;
    let x1 = ((cx + r).ceil() as usize).min(sw);
    let y1 = ((cy + r).ceil() as usize).min(sh);
    let (w, h) = (x1.saturating_sub(x0).max(1), y1.saturating_sub(y0).max(1));
    let th = ori_deg.to_radians();
    let (c, s) = (th.cos(), th.sin());
    let k = std::f32::consts::TAU * sf;
    let mut even = Vec::with_capacity(w * h);
    let mut odd = Vec::with_capacity(w * h);
    let mut carrier_e = Vec::with_capacity(w * h);
    let mut carrier_o = Vec::with_capacity(w * h);
    for y in y0..y0 + h {
        for x in x0..x0 + w {
            let (dx, dy) = (x as f32 - cx, y as f32 - cy);
            let env = (-(dx * dx + dy * dy) / (2.0 * sigma * sigma)).exp();
            let u = dx * c + dy * s;
            carrier_e.push((k * u + phase).cos());
            carrier_o.push((k * u + phase).sin());
            even.push(env * (k * u + phase).cos());
            odd.push(env * (k * u + phase).sin());
        }
    }
    // A kernel with a DC component would answer mean luminance; remove it so gray gives exactly 0.
    // Then scale so the matched full-contrast grating (the kernel's own carrier) gives 1.
    for (kern, carrier) in [(&mut even, &carrier_e), (&mut odd, &carrier_o)] {
        let mean = kern.iter().sum::<f32>() / kern.len() as f32;
        kern.iter_mut().for_each(|v| *v -= mean);
        let matched: f32 = kern.iter().zip(carrier.iter()).map(|(a, b)| a * b).sum();
        let norm = matched.abs().max(1e-6);
        kern.iter_mut().for_each(|v| *v /= norm);
    }
    Patch {
        x0,
        y0,
        w,
        h,
        even,
        odd,
    }
}

impl Patch {
    #[inline]
    fn respond(&self, frame: &[u8], stride: usize) -> (f32, f32) {
        let (mut e, mut o) = (0.0f32, 0.0f32);
        for r in 0..self.h {
            let row =
                &frame[(self.y0 + r) * stride + self.x0..(self.y0 + r) * stride + self.x0 + self.w];
            let ke = &self.even[r * self.w..(r + 1) * self.w];
            let ko = &self.odd[r * self.w..(r + 1) * self.w];
            for ((&p, &a), &b) in row.iter().zip(ke).zip(ko) {
                let c = p as f32 * (2.0 / 255.0) - 1.0;
                e += a * c;
                o += b * c;
            }
        }
        (e, o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::stimulus::Grating;

    #[test]
    fn preferred_grating_drives_harder_than_orthogonal() {
        let cfg = RigConfig::embedded_sim();
        let mut m = Mouse::new(&cfg, 1);
        let deg_per_px = cfg.display.width_deg() / cfg.stimulus.width as f64;
        let (sh, sw) = (cfg.stimulus.height, cfg.stimulus.width);
        let mut wins = 0;
        let total = m.len().min(40);
        for i in 0..total {
            let n = m.neurons[i].clone();
            let sf_cpd = n.sf as f64 / deg_per_px;
            let mut resp = |ori: f64| {
                let g = Grating {
                    orientation_deg: ori,
                    sf_cpd,
                    tf_hz: 0.0,
                    contrast: 1.0,
                    phase: 0.0,
                };
                let mut best = 0f32;
                for ph in 0..8 {
                    let g = Grating {
                        phase: ph as f64 * std::f64::consts::TAU / 8.0,
                        ..g
                    };
                    let f = g.render(sh, sw, 1, deg_per_px, 30.0);
                    m.set_stimulus(Some(&f));
                    best = best.max(m.cur_even[i].abs().max(m.cur_odd[i].abs()));
                }
                best
            };
            let pref = resp(n.orientation_deg as f64);
            let orth = resp(n.orientation_deg as f64 + 90.0);
            if pref > orth {
                wins += 1;
            }
        }
        assert!(wins as f64 >= 0.8 * total as f64, "{wins}/{total}");
    }

    #[test]
    fn gray_screen_gives_baseline_rates() {
        let cfg = RigConfig::embedded_sim();
        let mut m = Mouse::new(&cfg, 2);
        let n = m.len();
        let (mut s, mut c) = (vec![0u8; n], vec![0f32; n]);
        m.set_stimulus(None);
        m.step(0.0, 0.0, &mut s, &mut c);
        for (r, nr) in m.rates().iter().zip(&m.neurons) {
            assert!(
                (r - nr.baseline_rate).abs() < 1e-3,
                "{r} vs {}",
                nr.baseline_rate
            );
        }
    }
}
