//! What the dashboard pushes: one snapshot of the session built from a copy of the loop's feed,
//! the live counters and latency buckets, and the rig's health, computed off the loop's threads.

use serde::Serialize;
use serde_json::{json, Value};

use crate::live::feed::{FeedCopy, PlanEntry};
use crate::live::latency::{live_bucket_upper_us, LiveLatency, STAGES};
use crate::stats;

/// Points of a time series sent at most (older history is decimated).
pub const MAX_POINTS: usize = 600;

/// Per-neuron correlation over the copied window, its median, and the shuffled-neuron baseline
/// (each neuron's prediction against other neurons' measurements) over the same frames, as
/// `rig report` computes them.
#[derive(Debug, Clone, Serialize, Default)]
pub struct WindowFidelity {
    pub roi_ids: Vec<u32>,
    pub corr: Vec<Option<f64>>,
    pub median: Option<f64>,
    pub shuffled_median: Option<f64>,
    pub frames: usize,
}

pub fn window_fidelity(c: &FeedCopy) -> WindowFidelity {
    let n = c.roi_ids.len();
    let offsets = stats::shuffle_offsets(n, stats::SHUFFLE_OFFSETS);
    let (matched, shuffled) =
        stats::matched_and_shuffled(&c.predicted, &c.measured, n, 0..c.frames.len(), &offsets);
    WindowFidelity {
        roi_ids: c.roi_ids.clone(),
        median: stats::median(&matched),
        shuffled_median: stats::median(&shuffled),
        corr: matched
            .into_iter()
            .map(|r| r.is_finite().then_some(r))
            .collect(),
        frames: c.frames.len(),
    }
}

/// Every `k`-th point so at most [`MAX_POINTS`] remain (the newest always kept).
pub fn decimate<T: Copy>(v: &[T]) -> Vec<T> {
    if v.len() <= MAX_POINTS {
        return v.to_vec();
    }
    let k = v.len().div_ceil(MAX_POINTS);
    let mut out: Vec<T> = v.iter().rev().step_by(k).copied().collect();
    out.reverse();
    out
}

fn finite(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1e4).round() / 1e4)
    } else {
        Value::Null
    }
}

/// Each stage's live histogram (non-empty stages only), with percentiles read off the buckets
/// (each is the bucket's upper bound, so at most 41% above the true value).
pub fn latency(live: &LiveLatency) -> Value {
    let mut out = Vec::new();
    for (i, name) in STAGES.iter().enumerate() {
        let counts = live.counts(i);
        let total: u64 = counts.iter().sum();
        if total == 0 {
            continue;
        }
        let first = counts.iter().position(|&c| c > 0).unwrap_or(0);
        let last = counts.iter().rposition(|&c| c > 0).unwrap_or(0);
        let upper: Vec<u64> = (first..=last)
            .map(|k| live_bucket_upper_us(k).round() as u64)
            .collect();
        let counts = &counts[first..=last];
        out.push(json!({
            "stage": name,
            "count": total,
            "p50_us": stats::bucket_percentile(&upper, counts, 0.5),
            "p99_us": stats::bucket_percentile(&upper, counts, 0.99),
            "upper_us": upper,
            "counts": counts,
        }));
    }
    Value::Array(out)
}

/// The plan being shown with what the session measured so far: for each stimulus its goal
/// neuron's mean response over the stimulus's trials, predicted and measured, beside the
/// neuron's mean over the natural clips' trials (ids below `natural_below`, the first clip any
/// plan added: earlier plans' stimuli and controls are not natural).
pub fn plan(entries: &[PlanEntry], c: &FeedCopy, natural_below: i32) -> Value {
    let col = |goal: i64| c.roi_ids.iter().position(|&r| i64::from(r) == goal);
    let natural = |i: usize| {
        let (mut n, mut p, mut m) = (0u64, 0.0, 0.0);
        for (clip, s) in &c.clips {
            if *clip < 0 || *clip >= natural_below {
                continue;
            }
            n += s.trials;
            p += s.predicted.get(i).copied().unwrap_or(0.0);
            m += s.measured.get(i).copied().unwrap_or(0.0);
        }
        (n > 0).then(|| (p / n as f64, m / n as f64))
    };
    let rows: Vec<Value> = entries
        .iter()
        .map(|e| {
            let i = col(e.goal);
            let s = c.clips.get(&e.clip);
            let trials = s.map_or(0, |s| s.trials);
            let mean = |v: &Option<&Vec<f64>>| match (i, v) {
                (Some(i), Some(v)) if trials > 0 => finite(v[i] / trials as f64),
                _ => Value::Null,
            };
            let nat = i.and_then(natural);
            json!({
                "clip": e.clip,
                "goal": e.goal,
                "rank": e.rank,
                "family": e.family,
                "control_of": e.control_of,
                "trials": trials,
                "predicted": mean(&s.map(|s| &s.predicted)),
                "measured": mean(&s.map(|s| &s.measured)),
                "natural_predicted": nat.map_or(Value::Null, |x| finite(x.0)),
                "natural_measured": nat.map_or(Value::Null, |x| finite(x.1)),
            })
        })
        .collect();
    Value::Array(rows)
}

/// The population fidelity history (decimated) and the shuffled baseline's.
pub fn fidelity_series(c: &FeedCopy, shuffled: &[(f64, f64)]) -> Value {
    let pts = decimate(&c.fidelity);
    let sh = decimate(shuffled);
    json!({
        "t": pts.iter().map(|p| finite(p.0)).collect::<Vec<_>>(),
        "population": pts.iter().map(|p| finite(f64::from(p.1))).collect::<Vec<_>>(),
        "alarm": pts.iter().map(|p| p.2).collect::<Vec<_>>(),
        "shuffled_t": sh.iter().map(|p| finite(p.0)).collect::<Vec<_>>(),
        "shuffled": sh.iter().map(|p| finite(p.1)).collect::<Vec<_>>(),
    })
}

/// The last `frames` frames of the chosen neurons (`ids`), predicted and measured.
pub fn traces(c: &FeedCopy, ids: &[u32], frames: usize) -> Value {
    let n = c.roi_ids.len();
    let start = c.frames.len().saturating_sub(frames);
    let neurons: Vec<Value> = ids
        .iter()
        .filter_map(|id| c.roi_ids.iter().position(|r| r == id).map(|i| (id, i)))
        .map(|(id, i)| {
            let col = |v: &[f32]| {
                (start..c.frames.len())
                    .map(|t| finite(f64::from(v[t * n + i])))
                    .collect::<Vec<_>>()
            };
            json!({"id": id, "predicted": col(&c.predicted), "measured": col(&c.measured)})
        })
        .collect();
    json!({
        "t": c.times[start..].iter().map(|&t| finite(t)).collect::<Vec<_>>(),
        "neurons": neurons,
    })
}

/// The stimulus frame as bytes (0..255, row-major).
pub fn stimulus_bytes(c: &FeedCopy) -> Vec<u8> {
    c.stimulus
        .iter()
        .map(|&v| v.round().clamp(0.0, 255.0) as u8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::feed::ClipSums;

    #[test]
    fn the_shuffled_baseline_is_below_a_good_twin() {
        // 40 neurons with independent signals, predicted with a little noise.
        let (n, frames) = (40, 300);
        let mut rng = crate::sim::rng::FastRng::new(3);
        let mut c = FeedCopy {
            roi_ids: (0..n as u32).collect(),
            ..Default::default()
        };
        for t in 0..frames {
            c.frames.push(t as u64);
            c.times.push(t as f64 / 30.0);
            for _ in 0..n {
                let s = rng.uniform() as f32;
                c.measured.push(s);
                c.predicted.push(s + 0.2 * rng.uniform() as f32);
            }
        }
        let w = window_fidelity(&c);
        assert!(w.median.unwrap() > 0.9, "{w:?}");
        assert!(w.shuffled_median.unwrap().abs() < 0.2, "{w:?}");
        assert_eq!(w.frames, frames);
    }

    #[test]
    fn plan_rows_compare_the_goal_with_natural_clips() {
        let c = FeedCopy {
            roi_ids: vec![5, 8],
            clips: [
                (
                    0,
                    ClipSums {
                        trials: 2,
                        predicted: vec![0.2, 1.0],
                        measured: vec![0.4, 1.0],
                    },
                ),
                (
                    30,
                    ClipSums {
                        trials: 1,
                        predicted: vec![0.0, 0.9],
                        measured: vec![0.0, 1.2],
                    },
                ),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        let e = PlanEntry {
            clip: 30,
            goal: 8,
            rank: 0,
            family: "gratings".into(),
            control_of: None,
            thumbnail: vec![],
        };
        let rows = plan(&[e], &c, 25);
        assert_eq!(rows[0]["trials"], 1);
        assert_eq!(rows[0]["measured"], 1.2);
        assert_eq!(rows[0]["natural_measured"], 0.5);
        assert_eq!(rows[0]["natural_predicted"], 0.5);
    }

    #[test]
    fn decimation_keeps_the_newest_point() {
        let v: Vec<u32> = (0..1801).collect();
        let d = decimate(&v);
        assert!(d.len() <= MAX_POINTS);
        assert_eq!(*d.last().unwrap(), 1800);
        assert!(d.windows(2).all(|w| w[0] < w[1]));
    }
}
