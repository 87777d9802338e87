//! Per-stage latency histograms (HdrHistogram, microseconds, 3 significant digits).

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

/// A named set of histograms; recording never allocates once the stages exist.
pub struct Latencies {
    stages: Vec<(&'static str, Histogram<u64>)>,
}

impl Latencies {
    pub fn new(names: &[&'static str]) -> Self {
        Latencies {
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
        if let Some((_, h)) = self.stages.get_mut(i) {
            h.saturating_record((d.as_micros() as u64).max(1));
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
