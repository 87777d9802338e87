//! Twin fidelity over a block of predicted and measured dF/F, for `rig report` and the live
//! dashboard alike: per-neuron correlation, the shuffled-neuron baseline it is judged against,
//! windowed fidelity, and histograms.
//!
//! Matrices are row-major `[rows, m]` (time by neuron), as the session stores them. Columns are
//! z-scored once so that every correlation, matched or shuffled, is one dot product: the
//! shuffled baseline then costs the same as the fidelity per pair, and can use many pairs.

/// Median of the finite values; `None` when there are none.
pub fn median(values: &[f64]) -> Option<f64> {
    quantile(values, 0.5)
}

/// The `q`-quantile (0..=1, linear between order statistics) of the finite values.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

/// Column `j` of rows `range` of a row-major `[rows, m]` matrix, z-scored (mean 0, unit norm,
/// so a dot product of two is their Pearson r). `None` for a constant or non-finite column.
fn unit_column(x: &[f32], m: usize, j: usize, range: std::ops::Range<usize>) -> Option<Vec<f64>> {
    let n = range.len();
    if n < 3 {
        return None;
    }
    let mut col: Vec<f64> = range.map(|i| x[i * m + j] as f64).collect();
    if col.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let mean = col.iter().sum::<f64>() / n as f64;
    let mut ss = 0.0;
    for v in &mut col {
        *v -= mean;
        ss += *v * *v;
    }
    // Relative to the values' scale, so a column of one repeated value is constant however
    // large that value is (its float noise is not a signal).
    let scale = mean.abs().max(1e-30);
    if ss.sqrt() <= 1e-9 * scale * (n as f64).sqrt() {
        return None;
    }
    let norm = ss.sqrt();
    col.iter_mut().for_each(|v| *v /= norm);
    Some(col)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Pearson r of two series; `None` when either is constant, too short or not finite.
pub fn pearson(a: &[f32], b: &[f32]) -> Option<f64> {
    let n = a.len().min(b.len());
    let ua = unit_column(a, 1, 0, 0..n)?;
    let ub = unit_column(b, 1, 0, 0..n)?;
    Some(dot(&ua, &ub))
}

/// z-scored columns of both matrices over `range`.
struct Units {
    pred: Vec<Option<Vec<f64>>>,
    meas: Vec<Option<Vec<f64>>>,
}

fn units(pred: &[f32], meas: &[f32], m: usize, range: std::ops::Range<usize>) -> Units {
    Units {
        pred: (0..m)
            .map(|j| unit_column(pred, m, j, range.clone()))
            .collect(),
        meas: (0..m)
            .map(|j| unit_column(meas, m, j, range.clone()))
            .collect(),
    }
}

/// Offsets the shuffled-neuron baseline uses per neuron (see [`shuffle_offsets`]).
pub const SHUFFLE_OFFSETS: usize = 16;

/// The neuron offsets the shuffled baseline pairs with: up to `max` distinct offsets in
/// 1..m, spread over the population so the pairs are not all neighbours in ROI order (which
/// may be neighbours on the cortex, and correlated for that reason).
pub fn shuffle_offsets(m: usize, max: usize) -> Vec<usize> {
    if m < 2 || max == 0 {
        return Vec::new();
    }
    let s = max.min(m - 1);
    (0..s).map(|k| 1 + k * (m - 1) / s).collect()
}

/// Per neuron: Pearson r of predicted and measured dF/F over `range` rows (NaN where
/// undefined).
pub fn matched_corr(
    pred: &[f32],
    meas: &[f32],
    m: usize,
    range: std::ops::Range<usize>,
) -> Vec<f64> {
    let u = units(pred, meas, m, range);
    matched(&u)
}

fn matched(u: &Units) -> Vec<f64> {
    u.pred
        .iter()
        .zip(&u.meas)
        .map(|(p, q)| match (p, q) {
            (Some(p), Some(q)) => dot(p, q),
            _ => f64::NAN,
        })
        .collect()
}

/// The shuffled-neuron baseline: Pearson r of neuron i's prediction with neuron j's measured
/// dF/F, j != i, for every neuron and each of `offsets` (j = (i + offset) mod m). What fidelity
/// the twin would get from the stimulus-locked response every neuron shares, without knowing
/// which neuron is which. Undefined pairs are left out.
pub fn shuffled_corr(
    pred: &[f32],
    meas: &[f32],
    m: usize,
    range: std::ops::Range<usize>,
    offsets: &[usize],
) -> Vec<f64> {
    let u = units(pred, meas, m, range);
    shuffled(&u, offsets)
}

/// [`matched_corr`] and [`shuffled_corr`] of the same rows, each column z-scored once.
pub fn matched_and_shuffled(
    pred: &[f32],
    meas: &[f32],
    m: usize,
    range: std::ops::Range<usize>,
    offsets: &[usize],
) -> (Vec<f64>, Vec<f64>) {
    let u = units(pred, meas, m, range);
    (matched(&u), shuffled(&u, offsets))
}

fn shuffled(u: &Units, offsets: &[usize]) -> Vec<f64> {
    let m = u.pred.len();
    let mut out = Vec::with_capacity(m * offsets.len());
    for i in 0..m {
        let Some(p) = &u.pred[i] else { continue };
        for &s in offsets {
            let j = (i + s) % m;
            if j == i {
                continue;
            }
            if let Some(q) = &u.meas[j] {
                out.push(dot(p, q));
            }
        }
    }
    out
}

/// Population fidelity in one window of rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub start: usize,
    pub end: usize,
    /// Median over neurons of the matched correlation (NaN when no neuron's is defined).
    pub median: f64,
    /// Median of the shuffled-neuron baseline in the same window.
    pub shuffled_median: f64,
}

/// Fidelity over time: consecutive, non-overlapping windows of `window` rows (the last one
/// takes the remainder when it is at least half a window, else it is merged into the one
/// before), each with its matched and shuffled medians.
pub fn windowed(
    pred: &[f32],
    meas: &[f32],
    rows: usize,
    m: usize,
    window: usize,
    offsets: &[usize],
) -> Vec<Window> {
    let window = window.max(3);
    let mut bounds = Vec::new();
    let mut a = 0;
    while a < rows {
        let mut b = (a + window).min(rows);
        if rows - b < window / 2 {
            b = rows;
        }
        bounds.push((a, b));
        a = b;
    }
    bounds
        .into_iter()
        .map(|(start, end)| {
            let (matched, shuffled) = matched_and_shuffled(pred, meas, m, start..end, offsets);
            Window {
                start,
                end,
                median: median(&matched).unwrap_or(f64::NAN),
                shuffled_median: median(&shuffled).unwrap_or(f64::NAN),
            }
        })
        .collect()
}

/// A histogram over fixed bin edges.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// `counts.len() + 1` ascending edges; bin k is `[edges[k], edges[k + 1])`, the last bin
    /// also takes its upper edge.
    pub edges: Vec<f64>,
    pub counts: Vec<f64>,
    /// Values below the first edge / above the last (not in any bin).
    pub below: f64,
    pub above: f64,
}

impl Histogram {
    /// `bins` equal bins over `[lo, hi]`.
    pub fn linear(lo: f64, hi: f64, bins: usize) -> Histogram {
        let bins = bins.max(1);
        let edges = (0..=bins)
            .map(|k| lo + (hi - lo) * k as f64 / bins as f64)
            .collect();
        Histogram::with_edges(edges)
    }

    /// `bins` bins equal on a log scale over `[lo, hi]`, both positive.
    pub fn log(lo: f64, hi: f64, bins: usize) -> Histogram {
        let bins = bins.max(1);
        let (a, b) = (lo.max(f64::MIN_POSITIVE).ln(), hi.max(lo * 1.0001).ln());
        let edges = (0..=bins)
            .map(|k| (a + (b - a) * k as f64 / bins as f64).exp())
            .collect();
        Histogram::with_edges(edges)
    }

    fn with_edges(edges: Vec<f64>) -> Histogram {
        let n = edges.len() - 1;
        Histogram {
            edges,
            counts: vec![0.0; n],
            below: 0.0,
            above: 0.0,
        }
    }

    /// Adds `weight` at `x`; NaN is ignored.
    pub fn add(&mut self, x: f64, weight: f64) {
        if x.is_nan() {
            return;
        }
        let last = *self.edges.last().unwrap_or(&0.0);
        if x < self.edges[0] {
            self.below += weight;
        } else if x > last {
            self.above += weight;
        } else {
            // The bin whose lower edge is the last one at or below x; x == last goes in the
            // last bin.
            let last_bin = self.counts.len() - 1;
            let k = self.edges.partition_point(|&e| e <= x).saturating_sub(1);
            self.counts[k.min(last_bin)] += weight;
        }
    }

    pub fn fill(mut self, values: impl IntoIterator<Item = f64>) -> Histogram {
        for v in values {
            self.add(v, 1.0);
        }
        self
    }

    pub fn total(&self) -> f64 {
        self.counts.iter().sum()
    }

    /// Counts as fractions of the binned total (so two histograms of different sizes overlay).
    pub fn normalised(&self) -> Vec<f64> {
        let t = self.total();
        self.counts
            .iter()
            .map(|c| if t > 0.0 { c / t } else { 0.0 })
            .collect()
    }
}

/// Percentile `q` (0..=1) of a weighted histogram given as (value, count) buckets in
/// ascending value order (an HdrHistogram's export): the first bucket value at which the
/// cumulative count reaches q of the total.
pub fn bucket_percentile(values: &[u64], counts: &[u64], q: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let want = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
    let mut cum = 0;
    for (v, c) in values.iter().zip(counts) {
        cum += c;
        if cum >= want {
            return Some(*v);
        }
    }
    values.last().copied()
}

/// Time differences of consecutive values.
pub fn intervals(times: &[f64]) -> Vec<f64> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// For each event at `edges`, its lag behind the latest of `flips` at or before it (both
/// ascending); events before the first flip have none.
pub fn lag_after(flips: &[f64], edges: &[f64]) -> Vec<f64> {
    edges
        .iter()
        .filter_map(|&t| {
            let k = flips.partition_point(|&f| f <= t);
            (k > 0).then(|| t - flips[k - 1])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random series in [-1, 1).
    fn noise(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
            })
            .collect()
    }

    /// [rows, m] row-major from m columns.
    fn matrix(cols: &[Vec<f32>]) -> Vec<f32> {
        let rows = cols[0].len();
        let mut x = Vec::with_capacity(rows * cols.len());
        for i in 0..rows {
            for c in cols {
                x.push(c[i]);
            }
        }
        x
    }

    #[test]
    fn pearson_is_one_for_a_linear_map_and_undefined_for_a_constant() {
        let a = noise(1, 200);
        let b: Vec<f32> = a.iter().map(|v| 3.0 * v - 2.0).collect();
        assert!((pearson(&a, &b).unwrap() - 1.0).abs() < 1e-9);
        let neg: Vec<f32> = a.iter().map(|v| -v).collect();
        assert!((pearson(&a, &neg).unwrap() + 1.0).abs() < 1e-9);
        assert_eq!(pearson(&a, &vec![0.25; 200]), None);
        assert_eq!(pearson(&a, &vec![1e6; 200]), None);
        assert_eq!(pearson(&a[..2], &b[..2]), None);
    }

    #[test]
    fn quantiles_skip_nan_and_interpolate() {
        assert_eq!(median(&[3.0, f64::NAN, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[1.0, 2.0, 3.0, 4.0]), Some(2.5));
        assert_eq!(quantile(&[0.0, 10.0], 0.9), Some(9.0));
        assert_eq!(median(&[f64::NAN]), None);
    }

    #[test]
    fn shuffle_offsets_are_distinct_and_never_pair_a_neuron_with_itself() {
        for m in [2usize, 3, 7, 50, 500] {
            for max in [1usize, 5, 16, 1000] {
                let o = shuffle_offsets(m, max);
                assert_eq!(o.len(), max.min(m - 1), "m {m} max {max}");
                assert!(o.iter().all(|&s| (1..m).contains(&s)), "{o:?}");
                let mut d = o.clone();
                d.dedup();
                assert_eq!(d, o, "distinct and ascending");
            }
        }
        assert!(shuffle_offsets(1, 8).is_empty());
    }

    #[test]
    fn shuffled_baseline_is_chance_for_private_signals_and_full_for_a_shared_one() {
        let (rows, m) = (2000, 12);
        // Each neuron's own signal, predicted exactly: fidelity 1, shuffled baseline ~0.
        let own: Vec<Vec<f32>> = (0..m).map(|j| noise(100 + j as u64, rows)).collect();
        let x = matrix(&own);
        let offsets = shuffle_offsets(m, 5);
        let fid = matched_corr(&x, &x, m, 0..rows);
        assert!(fid.iter().all(|r| (r - 1.0).abs() < 1e-9), "{fid:?}");
        let sh = shuffled_corr(&x, &x, m, 0..rows, &offsets);
        assert_eq!(sh.len(), m * offsets.len());
        let med = median(&sh).unwrap();
        assert!(med.abs() < 0.1, "independent neurons: {med}");
        // One stimulus-locked signal shared by every neuron: the baseline is as high as the
        // fidelity, which is what it is there to show.
        let shared = noise(7, rows);
        let same: Vec<Vec<f32>> = (0..m).map(|_| shared.clone()).collect();
        let y = matrix(&same);
        let sh = shuffled_corr(&y, &y, m, 0..rows, &offsets);
        assert!(sh.iter().all(|r| (r - 1.0).abs() < 1e-9));
    }

    #[test]
    fn a_neuron_without_a_defined_correlation_is_nan_and_left_out_of_the_baseline() {
        let rows = 100;
        let cols = vec![noise(1, rows), vec![0.5; rows], noise(3, rows)];
        let x = matrix(&cols);
        let fid = matched_corr(&x, &x, 3, 0..rows);
        assert!(fid[1].is_nan() && (fid[0] - 1.0).abs() < 1e-9);
        // Pairs with neuron 1 on either side are undefined: of 3 x 2 pairs, 4 involve it.
        let sh = shuffled_corr(&x, &x, 3, 0..rows, &shuffle_offsets(3, 2));
        assert_eq!(sh.len(), 2);
    }

    #[test]
    fn windowed_fidelity_follows_a_twin_that_stops_predicting() {
        let (rows, m) = (1200, 8);
        let meas: Vec<Vec<f32>> = (0..m).map(|j| noise(10 + j as u64, rows)).collect();
        // Right for the first half, unrelated noise for the second.
        let pred: Vec<Vec<f32>> = (0..m)
            .map(|j| {
                let other = noise(500 + j as u64, rows);
                (0..rows)
                    .map(|i| if i < rows / 2 { meas[j][i] } else { other[i] })
                    .collect()
            })
            .collect();
        let (p, q) = (matrix(&pred), matrix(&meas));
        let w = windowed(&p, &q, rows, m, 300, &shuffle_offsets(m, 4));
        assert_eq!(
            w.iter().map(|w| (w.start, w.end)).collect::<Vec<_>>(),
            vec![(0, 300), (300, 600), (600, 900), (900, 1200)]
        );
        assert!(w[0].median > 0.99 && w[1].median > 0.99, "{w:?}");
        assert!(w[2].median.abs() < 0.2 && w[3].median.abs() < 0.2, "{w:?}");
        assert!(w.iter().all(|w| w.shuffled_median.abs() < 0.2), "{w:?}");
        // A short remainder joins the last window; a long one is a window of its own.
        let w = windowed(&p, &q, 1000, m, 300, &[1]);
        assert_eq!(w.last().map(|w| (w.start, w.end)), Some((600, 1000)));
        let w = windowed(&p, &q, 1100, m, 300, &[1]);
        assert_eq!(w.last().map(|w| (w.start, w.end)), Some((900, 1100)));
    }

    #[test]
    fn histogram_bins_are_half_open_and_count_outliers_apart() {
        let h = Histogram::linear(0.0, 1.0, 4).fill([
            0.0,
            0.1,
            0.25,
            0.5,
            0.99,
            1.0,
            -0.1,
            1.5,
            f64::NAN,
        ]);
        assert_eq!(h.counts, vec![2.0, 1.0, 1.0, 2.0]);
        assert_eq!((h.below, h.above), (1.0, 1.0));
        assert_eq!(h.total(), 6.0);
        let n = h.normalised();
        assert!((n.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let l = Histogram::log(1.0, 1000.0, 3);
        for (e, want) in l.edges.iter().zip([1.0, 10.0, 100.0, 1000.0]) {
            assert!((e - want).abs() < 1e-9 * want, "{:?}", l.edges);
        }
        let l = l.fill([1.0, 9.99, 10.0, 999.0]);
        assert_eq!(l.counts, vec![2.0, 1.0, 1.0]);
    }

    #[test]
    fn bucket_percentiles_walk_the_cumulative_count() {
        let v = [10, 20, 30, 40];
        let c = [50, 40, 9, 1];
        assert_eq!(bucket_percentile(&v, &c, 0.5), Some(10));
        assert_eq!(bucket_percentile(&v, &c, 0.9), Some(20));
        assert_eq!(bucket_percentile(&v, &c, 0.99), Some(30));
        assert_eq!(bucket_percentile(&v, &c, 1.0), Some(40));
        assert_eq!(bucket_percentile(&v, &[0; 4], 0.5), None);
    }

    #[test]
    fn flip_lag_is_measured_from_the_latest_flip_at_or_before_each_edge() {
        let flips = [1.0, 2.0, 3.0];
        let edges = [0.5, 1.004, 2.0, 3.5];
        let lag = lag_after(&flips, &edges);
        assert_eq!(lag.len(), 3);
        assert!((lag[0] - 0.004).abs() < 1e-12 && lag[1] == 0.0 && lag[2] == 0.5);
        assert_eq!(intervals(&flips), vec![1.0, 1.0]);
    }
}
