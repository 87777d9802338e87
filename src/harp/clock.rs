//! Mapping between the device clock (Harp time in every timestamped message) and the host clock.
//!
//! Every timestamped message gives one observation `(device_s, host_s)`: the device stamped it at
//! `device_s` on its clock and the host read it at `host_s` on its monotonic clock. The host time
//! is always *later* than the true host time of the stamp by the transport latency (UART line time,
//! USB polling, scheduler), which is positive and occasionally large. So the observations lie on or
//! above the line `host = device + offset + drift * (device - ref)`, and the line is the **lower
//! envelope** of the cloud, not its mean.
//!
//! [`ClockSync`] keeps the minimum `host - device` of each bin of device time (default 0.25 s,
//! tens of messages each), over a sliding window (default 30 s), fits a line through the minima
//! of the closed bins by least squares, drops the minima more than 3 robust standard deviations
//! *above* the fit (a bin whose every message was delayed by a latency spike) and fits again. The
//! newest bin is left out while it fills: it may hold a single late message. Latency spikes
//! therefore move neither the offset nor the drift; the residual transport latency of the
//! fastest message is part of the offset (tens of microseconds over USB).

use std::collections::VecDeque;

use serde::Serialize;

/// One bin: the smallest `host - device` seen in it and the device time of that sample.
#[derive(Debug, Clone, Copy)]
struct Bin {
    index: i64,
    device_s: f64,
    delay_s: f64,
}

/// The current estimate of the clock mapping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ClockEstimate {
    /// `host - device` at `reference_device_s`, seconds.
    pub offset_s: f64,
    /// Host seconds gained per device second, in parts per million (positive: the device clock
    /// runs slow relative to the host).
    pub drift_ppm: f64,
    /// Device time the offset refers to (the newest bin).
    pub reference_device_s: f64,
    /// RMS distance of the bin minima from the fitted line, seconds.
    pub residual_rms_s: f64,
    /// Bins in the fit (after outlier rejection).
    pub bins: usize,
    /// Observations taken since the last reset.
    pub samples: u64,
    /// Device time spanned by the fitted bins, seconds.
    pub span_s: f64,
}

impl ClockEstimate {
    /// The host time of device time `device_s`.
    pub fn to_host(&self, device_s: f64) -> f64 {
        let d = device_s - self.reference_device_s;
        device_s + self.offset_s + self.drift_ppm * 1e-6 * d
    }

    /// The device time of host time `host_s` (inverse of [`to_host`](Self::to_host)).
    pub fn to_device(&self, host_s: f64) -> f64 {
        let k = 1.0 + self.drift_ppm * 1e-6;
        (host_s - self.offset_s + self.drift_ppm * 1e-6 * self.reference_device_s) / k
    }
}

/// Windowed lower-envelope regression of host receive times on device timestamps.
#[derive(Debug, Clone)]
pub struct ClockSync {
    window_s: f64,
    bin_s: f64,
    bins: VecDeque<Bin>,
    estimate: Option<ClockEstimate>,
    samples: u64,
    /// Scratch for the fit (kept to avoid reallocating on every bin).
    keep: Vec<bool>,
}

impl Default for ClockSync {
    fn default() -> Self {
        Self::new(30.0, 0.25)
    }
}

impl ClockSync {
    /// A fit over the last `window_s` seconds of device time in bins of `bin_s`.
    pub fn new(window_s: f64, bin_s: f64) -> Self {
        let bin_s = if bin_s.is_finite() && bin_s > 0.0 {
            bin_s
        } else {
            0.25
        };
        let window_s = if window_s.is_finite() && window_s > bin_s {
            window_s
        } else {
            bin_s * 120.0
        };
        ClockSync {
            window_s,
            bin_s,
            bins: VecDeque::new(),
            estimate: None,
            samples: 0,
            keep: Vec::new(),
        }
    }

    /// Forgets everything (the device rebooted: its clock restarted).
    pub fn reset(&mut self) {
        self.bins.clear();
        self.estimate = None;
        self.samples = 0;
    }

    /// Adds one observation. Non-finite values are ignored.
    pub fn observe(&mut self, device_s: f64, host_s: f64) {
        if !(device_s.is_finite() && host_s.is_finite()) {
            return;
        }
        self.samples += 1;
        let delay_s = host_s - device_s;
        let index = (device_s / self.bin_s).floor() as i64;
        match self.bins.back_mut() {
            Some(b) if b.index == index => {
                if delay_s < b.delay_s {
                    b.delay_s = delay_s;
                    b.device_s = device_s;
                }
                if self.bins.len() <= 2 {
                    self.refit();
                } else if let Some(e) = &mut self.estimate {
                    e.samples = self.samples;
                }
                return;
            }
            Some(b) if b.index > index => {
                // Out of order (or the device clock stepped back): only a reset makes sense of it.
                if index + 2 < b.index {
                    self.reset();
                    self.samples = 1;
                } else {
                    return;
                }
            }
            _ => {}
        }
        self.bins.push_back(Bin {
            index,
            device_s,
            delay_s,
        });
        while let (Some(first), Some(last)) = (self.bins.front(), self.bins.back()) {
            if last.device_s - first.device_s > self.window_s {
                self.bins.pop_front();
            } else {
                break;
            }
        }
        self.refit();
    }

    /// The current mapping, once at least one observation was made.
    pub fn estimate(&self) -> Option<ClockEstimate> {
        self.estimate
    }

    /// Host time of a device time with the current estimate (`None` before any observation).
    pub fn to_host(&self, device_s: f64) -> Option<f64> {
        self.estimate.map(|e| e.to_host(device_s))
    }

    fn refit(&mut self) {
        let n = self.bins.len();
        // The newest bin is still filling: its minimum is not settled (it may hold a single late
        // message), so once there are closed bins the fit uses only those (with one closed bin,
        // an offset and no drift).
        let closed = if n >= 2 { n - 1 } else { n };
        let Some(last) = self.bins.get(closed.wrapping_sub(1)).copied() else {
            self.estimate = None;
            return;
        };
        self.keep.clear();
        self.keep.resize(n, true);
        for k in self.keep.iter_mut().skip(closed) {
            *k = false;
        }
        let mut fit = fit_line(&self.bins, &self.keep, last.device_s);
        if let Some((a, b, rms)) = fit {
            if closed >= 4 && rms > 0.0 {
                // Reject minima far above the line (bins whose every message was delayed).
                let resid: Vec<f64> = self
                    .bins
                    .iter()
                    .take(closed)
                    .map(|p| p.delay_s - (a + b * (p.device_s - last.device_s)))
                    .collect();
                let mut sorted = resid.clone();
                sorted.sort_by(f64::total_cmp);
                let median = sorted[sorted.len() / 2];
                for r in &mut sorted {
                    *r = (*r - median).abs();
                }
                sorted.sort_by(f64::total_cmp);
                let mad = sorted[sorted.len() / 2].max(1e-7);
                let limit = median + 3.0 * 1.4826 * mad;
                let mut any = false;
                for (k, r) in self.keep.iter_mut().zip(&resid) {
                    if *r > limit {
                        *k = false;
                        any = true;
                    }
                }
                if any {
                    fit = fit_line(&self.bins, &self.keep, last.device_s).or(fit);
                }
            }
        }
        let (offset, slope, rms, used) = match fit {
            Some((a, b, rms)) => (a, b, rms, self.keep.iter().filter(|k| **k).count()),
            None => (last.delay_s, 0.0, 0.0, 1),
        };
        let first = self.bins.front().map_or(last.device_s, |b| b.device_s);
        self.estimate = Some(ClockEstimate {
            offset_s: offset,
            drift_ppm: slope * 1e6,
            reference_device_s: last.device_s,
            residual_rms_s: rms,
            bins: used,
            samples: self.samples,
            span_s: last.device_s - first,
        });
    }
}

/// Least-squares line `delay = a + b * (device - reference)` through the kept bins; `None` when
/// fewer than two bins or no spread in device time. Returns `(a, b, rms residual)`.
fn fit_line(bins: &VecDeque<Bin>, keep: &[bool], reference: f64) -> Option<(f64, f64, f64)> {
    let mut n = 0.0;
    let (mut sx, mut sy) = (0.0, 0.0);
    for (p, _) in bins.iter().zip(keep).filter(|(_, k)| **k) {
        n += 1.0;
        sx += p.device_s - reference;
        sy += p.delay_s;
    }
    if n < 2.0 {
        return None;
    }
    let (mx, my) = (sx / n, sy / n);
    let (mut sxx, mut sxy) = (0.0, 0.0);
    for (p, _) in bins.iter().zip(keep).filter(|(_, k)| **k) {
        let dx = p.device_s - reference - mx;
        sxx += dx * dx;
        sxy += dx * (p.delay_s - my);
    }
    if sxx <= 1e-12 {
        return None;
    }
    let b = sxy / sxx;
    let a = my - b * mx;
    let mut ss = 0.0;
    for (p, _) in bins.iter().zip(keep).filter(|(_, k)| **k) {
        let r = p.delay_s - (a + b * (p.device_s - reference));
        ss += r * r;
    }
    Some((a, b, (ss / n).sqrt()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::rng::FastRng;

    /// Device clock with a drift and an offset, observed through latency = 50 µs + exponential
    /// jitter (mean 200 µs) + rare 20 ms spikes.
    fn simulate(drift_ppm: f64, offset_s: f64, seconds: f64, rate_hz: f64) -> ClockSync {
        let mut rng = FastRng::new(7);
        let mut sync = ClockSync::default();
        let n = (seconds * rate_hz) as usize;
        for i in 0..n {
            let host_true = i as f64 / rate_hz;
            let device = (host_true - offset_s) / (1.0 + drift_ppm * 1e-6);
            let mut latency = 50e-6 - 200e-6 * (1.0 - rng.uniform()).ln();
            if rng.uniform() < 0.02 {
                latency += 0.02;
            }
            sync.observe(device, host_true + latency);
        }
        sync
    }

    #[test]
    fn recovers_drift_and_offset_through_latency_spikes() {
        let sync = simulate(40.0, 12.5, 20.0, 200.0);
        let e = sync.estimate().unwrap();
        assert!((e.drift_ppm - 40.0).abs() < 2.0, "{e:?}");
        // The offset carries the 50 µs floor of the latency.
        let at = e.reference_device_s;
        let host_true = at * (1.0 + 40e-6) + 12.5;
        assert!((e.to_host(at) - host_true - 50e-6).abs() < 30e-6, "{e:?}");
        assert!(e.residual_rms_s < 50e-6, "{e:?}");
    }

    #[test]
    fn inverse_mapping_round_trips() {
        let e = simulate(-25.0, -3.0, 5.0, 200.0).estimate().unwrap();
        for d in [0.0, 1.0, 4.5, 100.0] {
            assert!((e.to_device(e.to_host(d)) - d).abs() < 1e-9);
        }
    }

    #[test]
    fn single_observation_gives_offset_and_garbage_is_ignored() {
        let mut s = ClockSync::default();
        assert!(s.estimate().is_none());
        s.observe(f64::NAN, 1.0);
        assert!(s.estimate().is_none());
        s.observe(1.0, 3.0);
        let e = s.estimate().unwrap();
        assert_eq!((e.offset_s, e.drift_ppm), (2.0, 0.0));
        // A clock that jumps back (device reboot) restarts the fit.
        s.observe(100.0, 102.0);
        s.observe(0.5, 103.0);
        assert_eq!(s.estimate().unwrap().samples, 1);
    }
}
