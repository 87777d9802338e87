//! Correlations between predicted and measured responses, and the noise ceiling from repeats.

use serde::Serialize;

use super::data::SessionData;

/// Pearson correlation of the pairs where both values are finite (NaN when undefined).
pub fn pearson(a: impl Iterator<Item = f32>, b: impl Iterator<Item = f32>) -> f64 {
    let (mut n, mut sa, mut sb, mut saa, mut sbb, mut sab) = (0f64, 0f64, 0f64, 0f64, 0f64, 0f64);
    for (x, y) in a.zip(b) {
        if !(x.is_finite() && y.is_finite()) {
            continue;
        }
        let (x, y) = (x as f64, y as f64);
        n += 1.0;
        sa += x;
        sb += y;
        saa += x * x;
        sbb += y * y;
        sab += x * y;
    }
    if n < 3.0 {
        return f64::NAN;
    }
    let cov = sab - sa * sb / n;
    let va = saa - sa * sa / n;
    let vb = sbb - sb * sb / n;
    if va <= 1e-20 || vb <= 1e-20 {
        return f64::NAN;
    }
    cov / (va * vb).sqrt()
}

/// Correlation of column `i` of a [T, n_a] matrix with column `j` of a [T, n_b] matrix over
/// `frames`.
pub fn column_corr(
    a: &[f32],
    n_a: usize,
    i: usize,
    b: &[f32],
    n_b: usize,
    j: usize,
    frames: &[usize],
) -> f64 {
    pearson(
        frames.iter().map(|&t| a[t * n_a + i]),
        frames.iter().map(|&t| b[t * n_b + j]),
    )
}

/// Mean of the finite values.
pub fn nanmean(v: &[f64]) -> f64 {
    let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if f.is_empty() {
        f64::NAN
    } else {
        f.iter().sum::<f64>() / f.len() as f64
    }
}

pub fn nanmedian(v: &[f64]) -> f64 {
    let mut f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if f.is_empty() {
        return f64::NAN;
    }
    f.sort_by(|a, b| a.total_cmp(b));
    f[f.len() / 2]
}

/// Imaging-frame windows of each repeat of each clip: `repeats[clip]` = list of frame-index runs
/// (trial start to trial end, all of the same length).
pub fn clip_repeats(s: &SessionData) -> Vec<Vec<Vec<usize>>> {
    let n_clips = s.clips.len();
    let mut reps: Vec<Vec<Vec<usize>>> = vec![Vec::new(); n_clips];
    let ft = &s.frame_times;
    let first = |t: f64| ft.partition_point(|&x| x < t - 1e-9);
    let mut len = usize::MAX;
    let mut runs = Vec::new();
    for ((&st, &en), &c) in s.trials.start.iter().zip(&s.trials.end).zip(&s.trials.clip) {
        let (a, b) = (first(st), first(en));
        if c < 0
            || c as usize >= n_clips
            || b > ft.len()
            || b <= a
            || en > *ft.last().unwrap_or(&0.0)
        {
            continue;
        }
        len = len.min(b - a);
        runs.push((c as usize, a));
    }
    if len == usize::MAX {
        return reps;
    }
    for (c, a) in runs {
        reps[c].push((a..a + len).collect());
    }
    reps
}

/// Per-neuron noise ceiling: correlation between the first two repeats of every repeated clip
/// (responses concatenated over clips). `cols` are the target columns to evaluate.
pub fn repeat_correlation(
    reps: &[Vec<Vec<usize>>],
    target: &[f32],
    n: usize,
    cols: &[usize],
) -> (Vec<f64>, Vec<usize>) {
    let mut a_frames = Vec::new();
    let mut b_frames = Vec::new();
    for r in reps {
        if r.len() >= 2 {
            a_frames.extend_from_slice(&r[0]);
            b_frames.extend_from_slice(&r[1]);
        }
    }
    let cc = cols
        .iter()
        .map(|&j| {
            pearson(
                a_frames.iter().map(|&t| target[t * n + j]),
                b_frames.iter().map(|&t| target[t * n + j]),
            )
        })
        .collect();
    let mut all = a_frames.clone();
    all.extend_from_slice(&b_frames);
    (cc, all)
}

/// How well predictions match measurements on one session.
#[derive(Debug, Clone, Serialize)]
pub struct Accuracy {
    pub neurons: usize,
    pub frames: usize,
    /// Mean over neurons of the correlation between prediction and measurement (all frames).
    pub mean_corr: f64,
    pub median_corr: f64,
    /// On the frames of repeated clips: mean correlation, mean repeat-to-repeat correlation (the
    /// simulator's noise ceiling), and the mean of corr / sqrt(repeat corr) over neurons whose
    /// repeat correlation is above 0.05 (normalised correlation).
    pub repeat_frames: usize,
    pub mean_corr_repeats: f64,
    pub mean_repeat_corr: f64,
    pub mean_normalised_corr: f64,
    pub normalised_neurons: usize,
    pub per_neuron: Vec<f64>,
    pub per_neuron_repeat: Vec<f64>,
}

/// Scores predictions `pred` [T, N] against `target` [T, R] (`cols[n]` = target column of neuron
/// n) over `frames`.
pub fn accuracy(
    pred: &[f32],
    n: usize,
    target: &[f32],
    r: usize,
    cols: &[usize],
    frames: &[usize],
    reps: &[Vec<Vec<usize>>],
) -> Accuracy {
    let per: Vec<f64> = (0..n)
        .map(|i| column_corr(pred, n, i, target, r, cols[i], frames))
        .collect();
    let (rep_cc, rep_frames) = repeat_correlation(reps, target, r, cols);
    let per_rep: Vec<f64> = (0..n)
        .map(|i| column_corr(pred, n, i, target, r, cols[i], &rep_frames))
        .collect();
    let normed: Vec<f64> = per_rep
        .iter()
        .zip(&rep_cc)
        .filter(|(_, &rc)| rc.is_finite() && rc > 0.05)
        .map(|(&c, &rc)| c / rc.sqrt())
        .collect();
    Accuracy {
        neurons: n,
        frames: frames.len(),
        mean_corr: nanmean(&per),
        median_corr: nanmedian(&per),
        repeat_frames: rep_frames.len(),
        mean_corr_repeats: nanmean(&per_rep),
        mean_repeat_corr: nanmean(&rep_cc),
        mean_normalised_corr: nanmean(&normed),
        normalised_neurons: normed.len(),
        per_neuron: per,
        per_neuron_repeat: rep_cc,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pearson_basics() {
        let a = [1.0f32, 2.0, 3.0, 4.0];
        let b = [2.0f32, 4.0, 6.0, 8.0];
        assert!((pearson(a.iter().copied(), b.iter().copied()) - 1.0).abs() < 1e-9);
        let c = [4.0f32, 3.0, 2.0, f32::NAN];
        assert!((pearson(a.iter().copied(), c.iter().copied()) + 1.0).abs() < 1e-9);
        assert!(pearson([1.0f32; 5].into_iter(), b.iter().copied()).is_nan());
    }
}
