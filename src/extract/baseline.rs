//! dF/F against a running baseline, in memory that does not grow with the session.
//!
//! The baseline F0 follows suite2p's "maximin" (`suite2p/extraction/dcnv.py::preprocess`,
//! `baseline = 'maximin'`): smooth the trace, take a running minimum over a window (which sits
//! under the transients), then a running maximum of that over the same window (which undoes
//! the downward bias the minimum picks up from noise dips and keeps F0 on the upper edge of the
//! quiet periods). suite2p does it offline with a centred Gaussian (`sig_baseline` = 10 frames)
//! and centred windows (`win_baseline` = 60 s). Online everything must be causal:
//!
//! - smoothing is a trailing boxcar of `smooth_frames` (a boxcar of width 2.5-3.5 sigma has
//!   about the same noise reduction as the Gaussian; the delay of half its width is irrelevant
//!   for a baseline that changes over tens of seconds),
//! - min and max run over trailing windows of `window_frames`, so F0 at frame t looks back up
//!   to 2 * window_frames - 1 frames.
//!
//! **Warm-up.** Until 2 * window_frames - 1 frames have been seen, F0 is the maximin over
//! every frame seen so far, never one frame's value: at the n-th frame the minimum runs over
//! ceil(3n / 4) frames and the maximum over the rest of the n (each capped at window_frames).
//! A fixed-length window that starts at frame 0 held F0 at frame 0's smoothed value for the
//! whole first window, 60 s by default, so a bright first frame (a shutter, a laser settling)
//! turned every dF/F of the first minute negative. A long minimum keeps F0 off transients while
//! little has been seen; the growing maximum undoes its downward noise bias as it does later;
//! and a first frame that is too bright or too dark leaves both windows after a few seconds.
//! Each window grows by at most one frame per frame, so the monotonic deques stay exact: the
//! oldest frame a window may hold never moves backwards. Measured on a simulated 256x256 session
//! (tests/extract_accuracy.rs): first-minute dF/F against the truth has slope 0.493 and offset
//! -0.017 where full windows later give 0.490 and +0.007; the fixed window gave 0.623 and +0.036,
//! and -0.741 (all negative) after a 4x first frame.
//!
//! Both running extrema use monotonic deques (Lemire 2006, "Streaming maximum-minimum filter
//! using no more than three comparisons per element"): O(1) amortised per frame, and never more
//! than `window_frames` entries, so each ROI gets fixed ring storage sized at construction.
//!
//! dF/F = (F - F0) / max(F0, eps), with the unsmoothed F as in suite2p. `eps` (in the units of
//! F) guards ROIs whose neuropil-corrected baseline is near or below zero.

use super::ExtractError;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BaselineConfig {
    /// Width of the trailing boxcar smoothing, frames (>= 1; 1 disables smoothing).
    pub smooth_frames: usize,
    /// Length of the running min and max windows, frames (>= 1).
    pub window_frames: usize,
    /// Floor of the dF/F denominator, in units of F (> 0).
    pub eps: f32,
}

impl BaselineConfig {
    /// suite2p-like settings for a frame rate: a `window_s` window and a boxcar matching a
    /// Gaussian of `sigma_frames` (suite2p: 10 frames; boxcar width = sqrt(12) sigma).
    pub fn from_rate(frame_rate_hz: f32, window_s: f32, sigma_frames: f32) -> Self {
        let window = (frame_rate_hz * window_s).round();
        let smooth = (12f32.sqrt() * sigma_frames).round();
        Self {
            smooth_frames: if smooth.is_finite() && smooth >= 1.0 {
                smooth as usize
            } else {
                1
            },
            window_frames: if window.is_finite() && window >= 1.0 {
                window as usize
            } else {
                1
            },
            eps: 1.0,
        }
    }
}

impl Default for BaselineConfig {
    /// 30 Hz, 60 s window, sigma 10 frames.
    fn default() -> Self {
        Self::from_rate(30.0, 60.0, 10.0)
    }
}

/// A bank of monotonic deques, one ring of `cap` slots per ROI.
#[derive(Debug, Clone)]
struct Deques {
    cap: usize,
    vals: Vec<f32>,
    times: Vec<u32>,
    head: Vec<usize>,
    len: Vec<usize>,
}

impl Deques {
    fn new(n: usize, cap: usize) -> Self {
        Self {
            cap,
            vals: vec![0.0; n * cap],
            times: vec![0; n * cap],
            head: vec![0; n],
            len: vec![0; n],
        }
    }

    fn clear(&mut self) {
        self.head.fill(0);
        self.len.fill(0);
    }

    /// Pushes `v` at frame `t` for ROI `i` and returns the running extremum over the last
    /// `win` (<= `cap`) frames: the minimum, or the maximum when `MAX`. Frame numbers are
    /// compared with wrapping arithmetic, so the u32 counter may roll over. `win` must not grow
    /// by more than one from one frame to the next (entries already dropped stay dropped).
    fn push<const MAX: bool>(&mut self, i: usize, t: u32, v: f32, win: usize) -> f32 {
        let cap = self.cap;
        debug_assert!(win >= 1 && win <= cap);
        let base = i * cap;
        let (mut head, mut len) = (self.head[i], self.len[i]);
        // Drop entries that left the window.
        while len > 0 && t.wrapping_sub(self.times[base + head]) as usize >= win {
            head = (head + 1) % cap;
            len -= 1;
        }
        // Drop entries that can never be the extremum again.
        while len > 0 {
            let back = self.vals[base + (head + len - 1) % cap];
            let dominated = if MAX { back <= v } else { back >= v };
            if !dominated {
                break;
            }
            len -= 1;
        }
        // At most cap - 1 entries remain (all from the last cap - 1 frames), so this fits.
        let slot = base + (head + len) % cap;
        self.vals[slot] = v;
        self.times[slot] = t;
        len += 1;
        self.head[i] = head;
        self.len[i] = len;
        self.vals[base + head]
    }
}

/// Running maximin baseline and dF/F for a fixed number of ROIs.
#[derive(Debug, Clone)]
pub struct Baseline {
    n: usize,
    cfg: BaselineConfig,
    t: u32,
    frames: u64,
    box_ring: Vec<f32>,
    box_sum: Vec<f64>,
    box_pos: usize,
    box_count: usize,
    mins: Deques,
    maxs: Deques,
    f0: Vec<f32>,
    last: Vec<f32>,
}

impl Baseline {
    pub fn new(n_rois: usize, cfg: BaselineConfig) -> Result<Self, ExtractError> {
        let param = |name, value: f64, reason| ExtractError::Parameter {
            name,
            value,
            reason,
        };
        if cfg.smooth_frames == 0 {
            return Err(param("smooth_frames", 0.0, "must be at least 1"));
        }
        if cfg.window_frames == 0 || cfg.window_frames > (u32::MAX / 2) as usize {
            return Err(param(
                "window_frames",
                cfg.window_frames as f64,
                "must be between 1 and 2^31",
            ));
        }
        if !(cfg.eps.is_finite() && cfg.eps > 0.0) {
            return Err(param("eps", cfg.eps as f64, "must be finite and > 0"));
        }
        Ok(Self {
            n: n_rois,
            cfg,
            t: 0,
            frames: 0,
            box_ring: vec![0.0; n_rois * cfg.smooth_frames],
            box_sum: vec![0.0; n_rois],
            box_pos: 0,
            box_count: 0,
            mins: Deques::new(n_rois, cfg.window_frames),
            maxs: Deques::new(n_rois, cfg.window_frames),
            f0: vec![0.0; n_rois],
            last: vec![0.0; n_rois],
        })
    }

    pub fn config(&self) -> BaselineConfig {
        self.cfg
    }

    /// Frames pushed since construction or the last `reset`.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Bytes of per-ROI state; fixed at construction, independent of session length.
    pub fn state_bytes(&self) -> usize {
        let w = self.cfg.window_frames;
        self.n * (self.cfg.smooth_frames * 4 + 8 + 2 * w * 8 + 2 * 16 + 8)
    }

    /// Forgets the history (e.g. after a change of imaging plane).
    pub fn reset(&mut self) {
        self.t = 0;
        self.frames = 0;
        self.box_pos = 0;
        self.box_count = 0;
        self.box_sum.fill(0.0);
        self.mins.clear();
        self.maxs.clear();
        self.f0.fill(0.0);
        self.last.fill(0.0);
    }

    /// Takes one frame of fluorescence (one value per ROI), updates F0 and writes dF/F.
    /// A non-finite F (e.g. a blanked frame) is replaced by that ROI's previous value so it
    /// cannot poison the running windows.
    pub fn push(&mut self, f: &[f32], dff: &mut [f32]) -> Result<(), ExtractError> {
        for (what, got) in [("fluorescence", f.len()), ("dff", dff.len())] {
            if got != self.n {
                return Err(ExtractError::Length {
                    what,
                    expected: self.n,
                    got,
                });
            }
        }
        let l = self.cfg.smooth_frames;
        let full = self.box_count == l;
        let count = if full { l } else { self.box_count + 1 };
        let inv = 1.0 / count as f64;
        let t = self.t;
        let (win_min, win_max) = self.windows_now();
        for i in 0..self.n {
            let v = if f[i].is_finite() { f[i] } else { self.last[i] };
            self.last[i] = v;
            let slot = i * l + self.box_pos;
            if full {
                self.box_sum[i] -= self.box_ring[slot] as f64;
            }
            self.box_ring[slot] = v;
            self.box_sum[i] += v as f64;
            let smooth = (self.box_sum[i] * inv) as f32;
            let m = self.mins.push::<false>(i, t, smooth, win_min);
            let f0 = self.maxs.push::<true>(i, t, m, win_max);
            self.f0[i] = f0;
            dff[i] = (v - f0) / f0.max(self.cfg.eps);
        }
        self.box_pos = (self.box_pos + 1) % l;
        self.box_count = count;
        self.t = t.wrapping_add(1);
        self.frames += 1;
        Ok(())
    }

    /// Lengths of the (min, max) windows for the n-th frame: during warm-up ceil(3n / 4) and
    /// the rest of the n frames seen (so F0 covers all of them), then `window_frames` each.
    fn windows_now(&self) -> (usize, usize) {
        let n = self.frames.saturating_add(1);
        let w = self.cfg.window_frames as u64;
        let min_win = (3 * n).div_ceil(4).min(w);
        let max_win = (n - min_win + 1).min(w);
        (min_win as usize, max_win as usize)
    }

    /// F0 of the last pushed frame, per ROI.
    pub fn f0(&self) -> &[f32] {
        &self.f0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Direct O(window) evaluation of the same causal maximin, warm-up included.
    fn brute(f: &[f32], l: usize, w: usize) -> Vec<f32> {
        let win_min = |t: usize| (3 * (t + 1)).div_ceil(4).min(w);
        let win_max = |t: usize| (t + 2 - win_min(t)).min(w);
        let sm: Vec<f32> = (0..f.len())
            .map(|t| {
                let a = (t + 1).saturating_sub(l);
                (f[a..=t].iter().map(|&v| v as f64).sum::<f64>() / (t + 1 - a) as f64) as f32
            })
            .collect();
        let mins: Vec<f32> = (0..f.len())
            .map(|t| {
                sm[(t + 1).saturating_sub(win_min(t))..=t]
                    .iter()
                    .cloned()
                    .fold(f32::INFINITY, f32::min)
            })
            .collect();
        (0..f.len())
            .map(|t| {
                mins[(t + 1).saturating_sub(win_max(t))..=t]
                    .iter()
                    .cloned()
                    .fold(f32::NEG_INFINITY, f32::max)
            })
            .collect()
    }

    #[test]
    fn matches_brute_force_maximin() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let n = 3;
        let (l, w) = (4, 25);
        let cfg = BaselineConfig {
            smooth_frames: l,
            window_frames: w,
            eps: 1.0,
        };
        let mut b = Baseline::new(n, cfg).unwrap();
        let len = 400;
        let traces: Vec<Vec<f32>> = (0..n)
            .map(|i| {
                (0..len)
                    .map(|t| {
                        100.0
                            + 20.0 * ((t as f32) / (30.0 + 10.0 * i as f32)).sin()
                            + rng.gen_range(-5.0..5.0)
                            + if rng.gen_bool(0.05) { 80.0 } else { 0.0 }
                    })
                    .collect()
            })
            .collect();
        let expect: Vec<Vec<f32>> = traces.iter().map(|tr| brute(tr, l, w)).collect();
        let mut dff = vec![0.0; n];
        for t in 0..len {
            let f: Vec<f32> = traces.iter().map(|tr| tr[t]).collect();
            b.push(&f, &mut dff).unwrap();
            for i in 0..n {
                let e = expect[i][t];
                assert!(
                    (b.f0()[i] - e).abs() < 1e-3,
                    "t {t} roi {i}: {} vs {e}",
                    b.f0()[i]
                );
                assert!((dff[i] - (f[i] - e) / e).abs() < 1e-5);
            }
        }
        assert_eq!(b.frames(), len as u64);
    }

    #[test]
    fn transients_ride_on_a_flat_baseline() {
        let cfg = BaselineConfig {
            smooth_frames: 5,
            window_frames: 60,
            eps: 1.0,
        };
        let mut b = Baseline::new(1, cfg).unwrap();
        let mut dff = [0.0];
        for t in 0..300 {
            let f = if (200..220).contains(&t) {
                150.0
            } else {
                100.0
            };
            b.push(&[f], &mut dff).unwrap();
            assert_eq!(b.f0()[0], 100.0, "t {t}");
            let want = if (200..220).contains(&t) { 0.5 } else { 0.0 };
            assert!((dff[0] - want).abs() < 1e-6);
        }
    }

    #[test]
    fn wrapping_counter_and_bad_values() {
        let cfg = BaselineConfig {
            smooth_frames: 1,
            window_frames: 3,
            eps: 0.5,
        };
        let mut b = Baseline::new(1, cfg).unwrap();
        b.t = u32::MAX - 2; // roll over mid-stream
        let mut dff = [0.0];
        let seq = [5.0, 4.0, 6.0, 7.0, 8.0, 9.0, f32::NAN, 2.0, 0.1];
        // min then max of the (NaN -> previous value) sequence; during the warm-up the
        // windows are (min, max) = (1, 1), (2, 1), (3, 1), (3, 2), then (3, 3).
        let want = [5.0, 4.0, 4.0, 4.0, 6.0, 7.0, 8.0, 8.0, 8.0];
        for (f, w) in seq.iter().zip(want) {
            b.push(&[*f], &mut dff).unwrap();
            assert_eq!(b.f0()[0], w);
            assert!(dff[0].is_finite());
        }
        // F0 below eps: the denominator is eps.
        let mut b = Baseline::new(1, cfg).unwrap();
        for _ in 0..3 {
            b.push(&[0.1], &mut dff).unwrap();
        }
        b.push(&[1.1], &mut dff).unwrap();
        assert!((dff[0] - 2.0).abs() < 1e-6);
        assert!(b.push(&[1.0, 2.0], &mut dff).is_err());
        let before = b.state_bytes();
        for _ in 0..1000 {
            b.push(&[1.0], &mut dff).unwrap();
        }
        assert_eq!(b.state_bytes(), before);
        assert!(Baseline::new(
            1,
            BaselineConfig {
                window_frames: 0,
                ..cfg
            }
        )
        .is_err());
        assert!(Baseline::new(1, BaselineConfig { eps: 0.0, ..cfg }).is_err());
        b.reset();
        assert_eq!(b.frames(), 0);
    }
}
