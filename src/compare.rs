//! Online twin-versus-brain comparison, neuron by neuron.
//!
//! Per frame it takes the twin's prediction for each neuron and the measured dF/F of the neuron's
//! ROI and keeps, in memory that does not grow with session length:
//! - a running Pearson correlation per neuron over a sliding window (sums updated incrementally
//!   from a preallocated ring of the last `window` frames),
//! - the same over the whole session,
//! - per-trial mean predicted and measured responses (flushed when a trial ends),
//! - a population fidelity figure (median of the neurons' windowed correlations), and
//! - a drift alarm: raised when the population fidelity stays below `alarm_fraction` of its
//!   reference (the median over the first full window) for `alarm_frames` frames in a row, which
//!   is what a drifting field of view, a bad plane or a moved mouse looks like to the twin.

use serde::Serialize;

use crate::pipeline::score::{median, PearsonSums};

#[derive(Debug, Clone, Copy)]
pub struct CompareConfig {
    /// Sliding window, frames.
    pub window: usize,
    /// Fraction of the reference fidelity below which the alarm counts frames.
    pub alarm_fraction: f64,
    /// Consecutive low frames that raise the alarm.
    pub alarm_frames: usize,
}

impl CompareConfig {
    pub fn from_rate(frame_rate_hz: f64) -> Self {
        CompareConfig {
            window: (30.0 * frame_rate_hz).round().max(10.0) as usize,
            alarm_fraction: 0.5,
            alarm_frames: (10.0 * frame_rate_hz).round().max(1.0) as usize,
        }
    }
}

/// One trial's mean predicted and measured response per neuron.
#[derive(Debug, Clone)]
pub struct TrialRow {
    pub trial: u64,
    pub predicted: Vec<f32>,
    pub measured: Vec<f32>,
}

/// What a frame's comparison produced.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FrameFidelity {
    /// Median over neurons of the windowed correlation (NaN until the window has filled).
    pub population: f64,
    pub alarm: bool,
}

/// A summary for the session file and `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct FidelitySummary {
    pub neurons: usize,
    pub frames: u64,
    /// Median over neurons of the whole-session correlation.
    pub median_session_corr: Option<f64>,
    pub session_corr: Vec<Option<f64>>,
    pub reference_population: Option<f64>,
    pub alarms: u64,
}

pub struct Comparator {
    cfg: CompareConfig,
    n: usize,
    /// Ring of the last `window` (predicted, measured) pairs, [window][n].
    ring_p: Vec<f32>,
    ring_m: Vec<f32>,
    filled: usize,
    pos: usize,
    win: PearsonSums,
    session: PearsonSums,
    corr_scratch: Vec<f64>,
    trial_sum_p: Vec<f64>,
    trial_sum_m: Vec<f64>,
    trial_frames: u64,
    reference: Option<f64>,
    low_run: usize,
    alarm_on: bool,
    alarms: u64,
    frames: u64,
}

impl Comparator {
    pub fn new(n_neurons: usize, cfg: CompareConfig) -> Self {
        let w = cfg.window.max(2);
        Comparator {
            cfg: CompareConfig { window: w, ..cfg },
            n: n_neurons,
            ring_p: vec![0.0; w * n_neurons],
            ring_m: vec![0.0; w * n_neurons],
            filled: 0,
            pos: 0,
            win: PearsonSums::new(n_neurons),
            session: PearsonSums::new(n_neurons),
            corr_scratch: Vec::with_capacity(n_neurons),
            trial_sum_p: vec![0.0; n_neurons],
            trial_sum_m: vec![0.0; n_neurons],
            trial_frames: 0,
            reference: None,
            low_run: 0,
            alarm_on: false,
            alarms: 0,
            frames: 0,
        }
    }

    pub fn neurons(&self) -> usize {
        self.n
    }

    /// Adds one frame: `predicted[i]` and `measured[i]` for neuron i.
    pub fn push(&mut self, predicted: &[f32], measured: &[f32]) -> FrameFidelity {
        let n = self.n;
        let w = self.cfg.window;
        let base = self.pos * n;
        for i in 0..n.min(predicted.len()).min(measured.len()) {
            let (p, m) = (predicted[i] as f64, measured[i] as f64);
            if self.filled == w {
                let (op, om) = (self.ring_p[base + i] as f64, self.ring_m[base + i] as f64);
                self.win.remove(i, op, om);
            }
            self.win.add(i, p, m);
            self.session.add(i, p, m);
            self.ring_p[base + i] = p as f32;
            self.ring_m[base + i] = m as f32;
            self.trial_sum_p[i] += p;
            self.trial_sum_m[i] += m;
        }
        self.trial_frames += 1;
        self.pos = (self.pos + 1) % w;
        self.filled = (self.filled + 1).min(w);
        self.frames += 1;

        let population = if self.filled == w {
            self.corr_scratch.clear();
            for i in 0..n {
                if let Some(c) = self.win.corr(i) {
                    self.corr_scratch.push(c);
                }
            }
            median(&mut self.corr_scratch).unwrap_or(f64::NAN)
        } else {
            f64::NAN
        };
        if population.is_finite() {
            let reference = *self.reference.get_or_insert(population);
            if reference > 0.0 && population < self.cfg.alarm_fraction * reference {
                self.low_run += 1;
            } else {
                self.low_run = 0;
                self.alarm_on = false;
            }
            if self.low_run >= self.cfg.alarm_frames && !self.alarm_on {
                self.alarm_on = true;
                self.alarms += 1;
                tracing::warn!(
                    population,
                    reference,
                    "twin fidelity alarm: the twin no longer predicts this field of view (drift, \
                     a bad plane or a moved field of view?)"
                );
            }
        }
        FrameFidelity {
            population,
            alarm: self.alarm_on,
        }
    }

    /// Ends the current trial and returns its mean responses (None if it had no frames).
    pub fn end_trial(&mut self, trial: u64) -> Option<TrialRow> {
        if self.trial_frames == 0 {
            return None;
        }
        let k = self.trial_frames as f64;
        let row = TrialRow {
            trial,
            predicted: self.trial_sum_p.iter().map(|v| (v / k) as f32).collect(),
            measured: self.trial_sum_m.iter().map(|v| (v / k) as f32).collect(),
        };
        self.trial_sum_p.iter_mut().for_each(|v| *v = 0.0);
        self.trial_sum_m.iter_mut().for_each(|v| *v = 0.0);
        self.trial_frames = 0;
        Some(row)
    }

    pub fn summary(&self) -> FidelitySummary {
        FidelitySummary {
            neurons: self.n,
            frames: self.frames,
            median_session_corr: self.session.median(),
            session_corr: (0..self.n).map(|i| self.session.corr(i)).collect(),
            reference_population: self.reference,
            alarms: self.alarms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::rng::FastRng;

    #[test]
    fn windowed_correlation_tracks_agreement_and_raises_the_alarm_on_drift() {
        let n = 20;
        let mut c = Comparator::new(
            n,
            CompareConfig {
                window: 100,
                alarm_fraction: 0.5,
                alarm_frames: 50,
            },
        );
        let mut rng = FastRng::new(1);
        let (mut p, mut m) = (vec![0f32; n], vec![0f32; n]);
        let mut last = FrameFidelity::default();
        // 500 frames where the measurement follows the prediction.
        for _ in 0..500 {
            for i in 0..n {
                p[i] = rng.normal() as f32;
                m[i] = p[i] + 0.3 * rng.normal() as f32;
            }
            last = c.push(&p, &m);
        }
        assert!(last.population > 0.9, "{}", last.population);
        assert!(!last.alarm);
        // Then the field of view moves: measurements no longer follow the twin.
        for _ in 0..300 {
            for i in 0..n {
                p[i] = rng.normal() as f32;
                m[i] = rng.normal() as f32;
            }
            last = c.push(&p, &m);
        }
        assert!(last.population.abs() < 0.3, "{}", last.population);
        assert!(last.alarm);
        let s = c.summary();
        assert_eq!(s.alarms, 1);
        assert_eq!(s.frames, 800);
        assert!(s.median_session_corr.unwrap() > 0.4);
    }

    #[test]
    fn sliding_sums_match_a_direct_computation() {
        let n = 3;
        let mut c = Comparator::new(
            n,
            CompareConfig {
                window: 10,
                alarm_fraction: 0.5,
                alarm_frames: 5,
            },
        );
        let mut rng = FastRng::new(2);
        let mut hist: Vec<(Vec<f32>, Vec<f32>)> = Vec::new();
        for _ in 0..37 {
            let p: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            let m: Vec<f32> = p.iter().map(|v| v * 0.5 + rng.normal() as f32).collect();
            c.push(&p, &m);
            hist.push((p, m));
        }
        for i in 0..n {
            let tail = &hist[hist.len() - 10..];
            let mut d = PearsonSums::new(1);
            for (p, m) in tail {
                d.add(0, p[i] as f64, m[i] as f64);
            }
            let (a, b) = (c.win.corr(i).unwrap(), d.corr(0).unwrap());
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn trial_means() {
        let mut c = Comparator::new(2, CompareConfig::from_rate(30.0));
        c.push(&[1.0, 2.0], &[3.0, 4.0]);
        c.push(&[3.0, 4.0], &[5.0, 6.0]);
        let t = c.end_trial(7).unwrap();
        assert_eq!(t.predicted, vec![2.0, 3.0]);
        assert_eq!(t.measured, vec![4.0, 5.0]);
        assert!(c.end_trial(8).is_none());
    }
}
