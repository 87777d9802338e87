//! Online deconvolution of dF/F traces with OASIS for an AR(1) calcium model
//! (Friedrich, Zhou & Paninski 2017, "Fast online deconvolution of calcium imaging data",
//! PLoS Comput Biol 13:e1005423; suite2p's port is `suite2p/extraction/dcnv.py::oasis`).
//!
//! Model: calcium c_t = gamma c_{t-1} + s_t with spikes s_t >= 0, observed as y_t = c_t + noise,
//! gamma = exp(-1 / (tau * fs)) (tau ~ 0.7 s for GCaMP6f, 1.0-1.5 s for GCaMP6s). OASIS solves
//! min 1/2 sum (c_t - y_t)^2 + lambda sum s_t exactly with "pools": runs of frames that share
//! one spike at their start and decay geometrically after it. A pool keeps
//! v = sum gamma^k y_{start+k} and w = sum gamma^(2k), so its best start value is v / w (clamped
//! at 0, the positivity constraint). Each new frame opens a pool; while the previous pool's
//! decayed end value exceeds the new pool's start (a negative spike), the two are merged, and
//! merging repeats backwards. The lambda term amounts to using y_t - lambda (1 - gamma).
//!
//! Streaming in bounded memory: a pool can in principle merge back arbitrarily far. Here a pool
//! is finalised ("frozen") once its start is `lag_frames` old: its spike is emitted and its value
//! fixed. A later pool that would violate the frozen pool's decay is absorbed into it (with its
//! start value fixed, the constrained optimum is to continue the decay). Everything younger than
//! the lag is exact OASIS, so per ROI at most `lag_frames + 1` pools are live and the state is
//! preallocated.
//!
//! Lag: the spikes written by [`OnlineOasis::push`] for the frame pushed as number t belong to
//! frame t - lag_frames (the returned index says which; nothing is emitted for the first
//! lag_frames frames). A lag of ~1-2 s (a few decay constants) leaves the estimates practically
//! equal to offline OASIS. [`OnlineOasis::flush`] emits the remaining frames at the end.
//! Spike amplitudes are in the units of y (dF/F jumps), not spike counts.

use super::ExtractError;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeconvConfig {
    /// AR(1) decay per frame, in (0, 1): exp(-1 / (tau_s * frame_rate_hz)).
    pub gamma: f32,
    /// Sparsity penalty (units of y), >= 0; 0 gives suite2p's unpenalised OASIS.
    pub lambda: f32,
    /// Frames between a frame's arrival and the finalisation of its spike estimate.
    pub lag_frames: usize,
}

impl DeconvConfig {
    /// From an indicator decay time and frame rate, with the lag given in seconds.
    pub fn from_tau(tau_s: f32, frame_rate_hz: f32, lambda: f32, lag_s: f32) -> Self {
        let lag = (lag_s * frame_rate_hz).round();
        Self {
            gamma: (-1.0 / (tau_s * frame_rate_hz)).exp(),
            lambda,
            lag_frames: if lag.is_finite() && lag > 0.0 {
                lag as usize
            } else {
                0
            },
        }
    }
}

/// Longest lag accepted (about 9 minutes at 30 Hz); bounds the preallocated state.
pub const MAX_LAG_FRAMES: usize = 1 << 14;

/// Streaming OASIS AR(1) for a fixed number of ROIs. See the module docs.
#[derive(Debug, Clone)]
pub struct OnlineOasis {
    n: usize,
    cfg: DeconvConfig,
    gamma: f64,
    /// lambda (1 - gamma), subtracted from every sample.
    offset: f64,
    cap: usize,
    /// Frames pushed.
    t: u64,
    // Live pools, a ring of `cap` per ROI.
    v: Vec<f64>,
    w: Vec<f64>,
    l: Vec<u32>,
    head: Vec<usize>,
    len: Vec<usize>,
    // The frozen pool preceding the live ones, per ROI.
    fz_c: Vec<f64>,
    fz_l: Vec<u64>,
    has_fz: Vec<bool>,
    /// Frames [0, covered) are covered by frozen pools.
    covered: Vec<u64>,
    calcium: Vec<f32>,
}

impl OnlineOasis {
    pub fn new(n_rois: usize, cfg: DeconvConfig) -> Result<Self, ExtractError> {
        let param = |name, value: f64, reason| ExtractError::Parameter {
            name,
            value,
            reason,
        };
        if !(cfg.gamma.is_finite() && cfg.gamma > 0.0 && cfg.gamma < 1.0) {
            return Err(param(
                "gamma",
                cfg.gamma as f64,
                "must be in (0, 1): exp(-1 / (tau * frame rate))",
            ));
        }
        if !(cfg.lambda.is_finite() && cfg.lambda >= 0.0) {
            return Err(param(
                "lambda",
                cfg.lambda as f64,
                "must be finite and >= 0",
            ));
        }
        if cfg.lag_frames > MAX_LAG_FRAMES {
            return Err(param(
                "lag_frames",
                cfg.lag_frames as f64,
                "must be at most 16384",
            ));
        }
        let cap = cfg.lag_frames + 1;
        let gamma = cfg.gamma as f64;
        Ok(Self {
            n: n_rois,
            cfg,
            gamma,
            offset: cfg.lambda as f64 * (1.0 - gamma),
            cap,
            t: 0,
            v: vec![0.0; n_rois * cap],
            w: vec![0.0; n_rois * cap],
            l: vec![0; n_rois * cap],
            head: vec![0; n_rois],
            len: vec![0; n_rois],
            fz_c: vec![0.0; n_rois],
            fz_l: vec![0; n_rois],
            has_fz: vec![false; n_rois],
            covered: vec![0; n_rois],
            calcium: vec![0.0; n_rois],
        })
    }

    pub fn config(&self) -> DeconvConfig {
        self.cfg
    }

    pub fn lag_frames(&self) -> usize {
        self.cfg.lag_frames
    }

    /// Frames pushed whose spikes have not been emitted yet.
    pub fn pending(&self) -> usize {
        self.t.min(self.cfg.lag_frames as u64) as usize
    }

    /// Denoised calcium (units of y) of each ROI at the last emitted frame.
    pub fn calcium(&self) -> &[f32] {
        &self.calcium
    }

    /// Starts a new stream.
    pub fn reset(&mut self) {
        self.t = 0;
        self.head.fill(0);
        self.len.fill(0);
        self.has_fz.fill(false);
        self.fz_l.fill(0);
        self.covered.fill(0);
        self.calcium.fill(0.0);
    }

    /// Takes one frame (one dF/F value per ROI). Once more than `lag_frames` frames have been
    /// pushed, writes the final spike estimates of frame `t - lag_frames` into `spikes_out` and
    /// returns `Some(t - lag_frames)`, where t counts frames from 0; before that writes zeros and
    /// returns `None`. A non-finite input is treated as 0.
    pub fn push(&mut self, y: &[f32], spikes_out: &mut [f32]) -> Result<Option<u64>, ExtractError> {
        for (what, got) in [
            ("deconvolution input", y.len()),
            ("spikes", spikes_out.len()),
        ] {
            if got != self.n {
                return Err(ExtractError::Length {
                    what,
                    expected: self.n,
                    got,
                });
            }
        }
        for (i, &yi) in y.iter().enumerate() {
            let yi = if yi.is_finite() { yi as f64 } else { 0.0 };
            self.add(i, yi - self.offset);
        }
        let t = self.t;
        self.t += 1;
        let lag = self.cfg.lag_frames as u64;
        if t < lag {
            spikes_out.fill(0.0);
            return Ok(None);
        }
        let tau = t - lag;
        for (i, s) in spikes_out.iter_mut().enumerate() {
            *s = self.emit(i, tau);
        }
        Ok(Some(tau))
    }

    /// Ends the stream: writes the spikes of the [`pending`](Self::pending) frames not yet
    /// emitted, frame-major (`out[k * n_rois + i]` for the k-th of them, oldest first), returns
    /// how many frames that was, and resets for a new stream.
    pub fn flush(&mut self, out: &mut [f32]) -> Result<usize, ExtractError> {
        let pending = self.pending();
        let need = pending * self.n;
        if out.len() < need {
            return Err(ExtractError::Length {
                what: "flush output",
                expected: need,
                got: out.len(),
            });
        }
        let first = self.t - pending as u64;
        for k in 0..pending {
            for i in 0..self.n {
                out[k * self.n + i] = self.emit(i, first + k as u64);
            }
        }
        self.reset();
        Ok(pending)
    }

    fn gpow(&self, k: u64) -> f64 {
        // gamma^k underflows to 0 long before k reaches 2^30.
        self.gamma.powi(k.min(1 << 30) as i32)
    }

    fn value(&self, slot: usize) -> f64 {
        (self.v[slot] / self.w[slot]).max(0.0)
    }

    /// Adds one (offset) sample to ROI `i`'s live pools and restores the OASIS constraints.
    fn add(&mut self, i: usize, y: f64) {
        let (cap, base, head) = (self.cap, i * self.cap, self.head[i]);
        let slot = |k: usize| base + (head + k) % cap;
        let mut len = self.len[i];
        if len < cap {
            let s = slot(len);
            self.v[s] = y;
            self.w[s] = 1.0;
            self.l[s] = 1;
            len += 1;
        } else {
            // Unreachable (at most lag + 1 live pools, see the module docs), but stay
            // well-defined: extend the newest pool by the sample.
            let s = slot(len - 1);
            let k = self.l[s] as u64;
            self.v[s] += self.gpow(k) * y;
            self.w[s] += self.gpow(2 * k);
            self.l[s] += 1;
        }
        loop {
            if len >= 2 {
                let (a, b) = (slot(len - 2), slot(len - 1));
                let la = self.l[a] as u64;
                if self.value(a) * self.gpow(la) > self.value(b) {
                    // Merge b into a: b's samples continue a's decay.
                    self.v[a] += self.gpow(la) * self.v[b];
                    self.w[a] += self.gpow(2 * la) * self.w[b];
                    self.l[a] += self.l[b];
                    len -= 1;
                    continue;
                }
            } else if len == 1 && self.has_fz[i] {
                let a = slot(0);
                if self.fz_c[i] * self.gpow(self.fz_l[i]) > self.value(a) {
                    // The frozen pool's value is fixed: absorb the pool as its continuation.
                    let la = self.l[a] as u64;
                    self.fz_l[i] += la;
                    self.covered[i] += la;
                    len = 0;
                }
            }
            break;
        }
        self.len[i] = len;
    }

    /// Final spike of ROI `i` at frame `tau` (the oldest not yet emitted); freezes the pool
    /// that starts there.
    fn emit(&mut self, i: usize, tau: u64) -> f32 {
        if self.covered[i] > tau {
            // Inside the frozen pool: no spike, calcium keeps decaying.
            let start = self.covered[i] - self.fz_l[i];
            self.calcium[i] = (self.fz_c[i] * self.gpow(tau - start)) as f32;
            return 0.0;
        }
        if self.len[i] == 0 {
            // Unreachable: frames [covered, t) are always covered by live pools.
            self.calcium[i] = 0.0;
            return 0.0;
        }
        let a = i * self.cap + self.head[i];
        let c0 = self.value(a);
        let prev = if self.has_fz[i] {
            self.fz_c[i] * self.gpow(self.fz_l[i])
        } else {
            0.0
        };
        let la = self.l[a] as u64;
        self.fz_c[i] = c0;
        self.fz_l[i] = la;
        self.has_fz[i] = true;
        self.covered[i] = tau + la;
        self.head[i] = (self.head[i] + 1) % self.cap;
        self.len[i] -= 1;
        self.calcium[i] = c0 as f32;
        (c0 - prev).max(0.0) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, Normal, Poisson};

    /// Plain offline OASIS AR(1), written independently as the reference.
    fn oasis_batch(y: &[f32], g: f64, lambda: f64) -> Vec<f64> {
        struct P {
            v: f64,
            w: f64,
            t: usize,
            l: usize,
        }
        let val = |p: &P| (p.v / p.w).max(0.0);
        let mut pools: Vec<P> = vec![];
        for (t, &yt) in y.iter().enumerate() {
            pools.push(P {
                v: yt as f64 - lambda * (1.0 - g),
                w: 1.0,
                t,
                l: 1,
            });
            while pools.len() > 1 {
                let k = pools.len() - 1;
                let gl = g.powi(pools[k - 1].l as i32);
                if val(&pools[k - 1]) * gl > val(&pools[k]) {
                    let b = pools.pop().unwrap();
                    let a = pools.last_mut().unwrap();
                    a.v += gl * b.v;
                    a.w += gl * gl * b.w;
                    a.l += b.l;
                } else {
                    break;
                }
            }
        }
        let mut c = vec![0.0; y.len()];
        for p in &pools {
            for j in 0..p.l {
                c[p.t + j] = val(p) * g.powi(j as i32);
            }
        }
        (0..y.len())
            .map(|t| if t == 0 { c[0] } else { c[t] - g * c[t - 1] })
            .collect()
    }

    fn corr(a: &[f64], b: &[f64]) -> f64 {
        let n = a.len() as f64;
        let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
        let mut s = (0.0, 0.0, 0.0);
        for (&x, &y) in a.iter().zip(b) {
            s.0 += (x - ma) * (y - mb);
            s.1 += (x - ma).powi(2);
            s.2 += (y - mb).powi(2);
        }
        s.0 / (s.1 * s.2).sqrt()
    }

    /// Poisson spikes (rate `hz`) through an AR(1) kernel, plus Gaussian noise.
    fn simulate(
        rng: &mut ChaCha8Rng,
        n: usize,
        g: f32,
        hz: f64,
        noise: f32,
    ) -> (Vec<f64>, Vec<f32>) {
        let pois = Poisson::new(hz / 30.0).unwrap();
        let norm = Normal::new(0.0f32, noise).unwrap();
        let mut c = 0.0f32;
        let mut spikes = vec![];
        let mut y = vec![];
        for _ in 0..n {
            let k: f64 = pois.sample(rng);
            spikes.push(k);
            c = g * c + k as f32;
            y.push(c + norm.sample(rng));
        }
        (spikes, y)
    }

    fn run_online(y: &[f32], cfg: DeconvConfig) -> Vec<f64> {
        let mut d = OnlineOasis::new(1, cfg).unwrap();
        let mut out = vec![0.0f64; y.len()];
        let mut s = [0.0f32];
        for (t, &v) in y.iter().enumerate() {
            match d.push(&[v], &mut s).unwrap() {
                Some(tau) => {
                    assert_eq!(tau as usize + cfg.lag_frames, t);
                    out[tau as usize] = s[0] as f64;
                }
                None => assert!(t < cfg.lag_frames && s[0] == 0.0),
            }
        }
        let mut rest = vec![0.0f32; d.pending()];
        let k = d.flush(&mut rest).unwrap();
        for j in 0..k {
            out[y.len() - k + j] = rest[j] as f64;
        }
        out
    }

    #[test]
    fn noise_free_trace_is_inverted_exactly() {
        let g = (-1.0f32 / (0.7 * 30.0)).exp();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut c = 0.0f32;
        let mut truth = vec![];
        let y: Vec<f32> = (0..600)
            .map(|_| {
                let s = if rng.gen_bool(0.05) {
                    rng.gen_range(0.5..2.0)
                } else {
                    0.0
                };
                truth.push(s as f64);
                c = g * c + s;
                c
            })
            .collect();
        for lag in [0, 5, 60] {
            let cfg = DeconvConfig {
                gamma: g,
                lambda: 0.0,
                lag_frames: lag,
            };
            let s = run_online(&y, cfg);
            for t in 0..y.len() {
                assert!(
                    (s[t] - truth[t]).abs() < 1e-3,
                    "lag {lag} t {t}: {} vs {}",
                    s[t],
                    truth[t]
                );
            }
        }
    }

    #[test]
    fn long_lag_equals_offline_oasis() {
        let g = (-1.0f32 / 30.0).exp();
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let (_, y) = simulate(&mut rng, 500, g, 1.0, 0.3);
        let lambda = 0.5;
        let batch = oasis_batch(&y, g as f64, lambda as f64);
        let cfg = DeconvConfig {
            gamma: g,
            lambda,
            lag_frames: 500,
        };
        let online = run_online(&y, cfg);
        for t in 0..y.len() {
            assert!(
                (online[t] - batch[t]).abs() < 1e-4,
                "t {t}: {} vs {}",
                online[t],
                batch[t]
            );
        }
    }

    #[test]
    fn events_correlate_with_true_spikes_better_than_the_trace() {
        let cfg = DeconvConfig::from_tau(1.0, 30.0, 1.0, 2.0);
        assert_eq!(cfg.lag_frames, 60);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (spikes, y) = simulate(&mut rng, 6000, cfg.gamma, 1.0, 0.3);
        let est = run_online(&y, cfg);
        let yd: Vec<f64> = y.iter().map(|&v| v as f64).collect();
        let c_trace = corr(&yd, &spikes);
        let c_est = corr(&est, &spikes);
        // And the fixed lag costs little against offline OASIS.
        let c_batch = corr(
            &oasis_batch(&y, cfg.gamma as f64, cfg.lambda as f64),
            &spikes,
        );
        eprintln!("deconv: corr events {c_est:.3}, trace {c_trace:.3}, offline {c_batch:.3}");
        assert!(
            c_est > c_trace + 0.2,
            "events {c_est:.3} vs trace {c_trace:.3}"
        );
        assert!(c_est > 0.6, "events {c_est:.3}");
        assert!(
            c_est > c_batch - 0.02,
            "online {c_est:.3} vs offline {c_batch:.3}"
        );
    }

    #[test]
    fn validation_and_lengths() {
        let ok = DeconvConfig {
            gamma: 0.95,
            lambda: 0.0,
            lag_frames: 3,
        };
        assert!(OnlineOasis::new(2, DeconvConfig { gamma: 1.0, ..ok }).is_err());
        assert!(OnlineOasis::new(
            2,
            DeconvConfig {
                gamma: f32::NAN,
                ..ok
            }
        )
        .is_err());
        assert!(OnlineOasis::new(2, DeconvConfig { lambda: -1.0, ..ok }).is_err());
        let mut d = OnlineOasis::new(2, ok).unwrap();
        assert!(d.push(&[0.0], &mut [0.0, 0.0]).is_err());
        assert!(d.push(&[0.0, 1.0], &mut [0.0]).is_err());
        d.push(&[f32::NAN, 1.0], &mut [0.0, 0.0]).unwrap();
        assert_eq!(d.pending(), 1);
        assert!(d.flush(&mut [0.0]).is_err());
        let mut out = [9.0; 2];
        assert_eq!(d.flush(&mut out).unwrap(), 1);
        assert_eq!(out, [0.0, 1.0]);
        assert_eq!(d.pending(), 0);
    }
}
