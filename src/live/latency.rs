//! Per-stage latency histograms (HdrHistogram, microseconds, 3 significant digits), and their live
//! mirror: coarse atomic buckets a watcher (the dashboard) reads while the session runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Percentiles of one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageLatency {
    pub stage: String,
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// Stage names, in `Latencies` index order.
pub const STAGES: &[&str] = &[
    "acquire",
    "queue",
    "motion",
    "traces",
    "dff",
    "deconv",
    "extract",
    "end_to_end",
    "record",
    "twin_step",
    "compare",
    "closed_loop",
];
pub const ST_ACQUIRE: usize = 0;
pub const ST_QUEUE: usize = 1;
pub const ST_MOTION: usize = 2;
pub const ST_TRACES: usize = 3;
pub const ST_DFF: usize = 4;
pub const ST_DECONV: usize = 5;
pub const ST_EXTRACT: usize = 6;
pub const ST_E2E: usize = 7;
pub const ST_RECORD: usize = 8;
pub const ST_TWIN_STEP: usize = 9;
pub const ST_COMPARE: usize = 10;
/// A frame's arrival to the updated comparison and scheduling decision.
pub const ST_CLOSED_LOOP: usize = 11;

/// Live buckets per stage: bucket `k` counts samples of at most `2^(k/2)` us (1 us .. ~16 s).
pub const LIVE_BUCKETS: usize = 48;

/// The upper bound of live bucket `k`, microseconds.
pub fn live_bucket_upper_us(k: usize) -> f64 {
    2f64.powf(k as f64 / 2.0)
}

/// Counts per stage of [`STAGES`] in [`LIVE_BUCKETS`] buckets, written by the stages' threads with
/// relaxed atomic adds (no lock, no allocation) and read by anyone.
pub struct LiveLatency {
    counts: Vec<[AtomicU64; LIVE_BUCKETS]>,
}

impl Default for LiveLatency {
    fn default() -> Self {
        LiveLatency {
            counts: (0..STAGES.len())
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
        }
    }
}

impl std::fmt::Debug for LiveLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveLatency")
    }
}

impl LiveLatency {
    #[inline]
    fn add(&self, stage: usize, us: u64) {
        let k = if us <= 1 {
            0
        } else {
            ((2.0 * (us as f64).log2()).ceil() as usize).min(LIVE_BUCKETS - 1)
        };
        if let Some(c) = self.counts.get(stage) {
            c[k].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stage `stage`'s bucket counts so far.
    pub fn counts(&self, stage: usize) -> [u64; LIVE_BUCKETS] {
        let mut out = [0u64; LIVE_BUCKETS];
        if let Some(c) = self.counts.get(stage) {
            for (o, a) in out.iter_mut().zip(c) {
                *o = a.load(Ordering::Relaxed);
            }
        }
        out
    }
}

/// A named set of histograms; recording never allocates once the stages exist.
pub struct Latencies {
    stages: Vec<(&'static str, Histogram<u64>)>,
    live: Option<Arc<LiveLatency>>,
}

impl Latencies {
    /// Histograms of [`STAGES`] that also count every sample into `live`.
    pub fn live(live: Arc<LiveLatency>) -> Self {
        Latencies {
            live: Some(live),
            ..Latencies::new(STAGES)
        }
    }

    pub fn new(names: &[&'static str]) -> Self {
        Latencies {
            live: None,
            stages: names
                .iter()
                .map(|&n| {
                    // 1 us .. 60 s at 3 significant digits; construction cannot fail for these bounds.
                    let h = Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
                    (n, h)
                })
                .collect(),
        }
    }

    /// Records `d` for stage `i` (the index in `names`).
    #[inline]
    pub fn record(&mut self, i: usize, d: Duration) {
        let us = (d.as_micros() as u64).max(1);
        if let Some((_, h)) = self.stages.get_mut(i) {
            h.saturating_record(us);
        }
        if let Some(l) = &self.live {
            l.add(i, us);
        }
    }

    pub fn merge(&mut self, other: &Latencies) {
        for ((_, a), (_, b)) in self.stages.iter_mut().zip(&other.stages) {
            let _ = a.add(b);
        }
    }

    /// Each stage's histogram as (stage, bucket values in us, counts), for the session file.
    pub fn buckets(&self) -> Vec<(String, Vec<u64>, Vec<u64>)> {
        self.stages
            .iter()
            .filter(|(_, h)| !h.is_empty())
            .map(|(n, h)| {
                let (v, c): (Vec<u64>, Vec<u64>) = h
                    .iter_recorded()
                    .map(|b| {
                        (
                            h.highest_equivalent(b.value_iterated_to()),
                            b.count_at_value(),
                        )
                    })
                    .unzip();
                (n.to_string(), v, c)
            })
            .collect()
    }

    pub fn report(&self) -> Vec<StageLatency> {
        self.stages
            .iter()
            .filter(|(_, h)| !h.is_empty())
            .map(|(n, h)| StageLatency {
                stage: n.to_string(),
                count: h.len(),
                mean_us: h.mean(),
                p50_us: h.value_at_quantile(0.5),
                p90_us: h.value_at_quantile(0.9),
                p99_us: h.value_at_quantile(0.99),
                max_us: h.max(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_buckets_bound_their_samples() {
        let live = Arc::new(LiveLatency::default());
        let mut lat = Latencies::live(live.clone());
        for us in [1u64, 3, 1000, 33_000, 100_000_000] {
            lat.record(ST_CLOSED_LOOP, Duration::from_micros(us));
        }
        let c = live.counts(ST_CLOSED_LOOP);
        assert_eq!(c.iter().sum::<u64>(), 5);
        for us in [1u64, 3, 1000, 33_000] {
            let k = (0..LIVE_BUCKETS)
                .find(|&k| live_bucket_upper_us(k) >= us as f64)
                .unwrap();
            assert!(
                c[k] >= 1,
                "{us} us not in bucket {k} (upper {})",
                live_bucket_upper_us(k)
            );
            assert!(k == 0 || live_bucket_upper_us(k - 1) < us as f64);
        }
        // Beyond the last bound: the last bucket.
        assert_eq!(c[LIVE_BUCKETS - 1], 1);
        assert_eq!(live.counts(ST_ACQUIRE).iter().sum::<u64>(), 0);
    }
}
