//! How well a twin predicts a session, per stimulus family (`rig twin evaluate`).
//!
//! Each imaging frame belongs to the family of the clip on screen (`stimulus/clips/kind`; gray
//! frames to none). Per family and over all frames: each neuron's correlation of predicted with
//! measured dF/F; its noise ceiling, the correlation between the first two repeats of the
//! family's repeated clips; CC_norm = r / sqrt(ceiling) on those repeated frames, for neurons
//! whose ceiling is above 0.05 (as `twin::metrics::accuracy`); and the shuffled-neuron
//! baseline, each neuron's prediction against another neuron's measurement over the same frames
//! (`stats::shuffle_offsets`), which a twin must beat for its per-neuron claims to mean anything.
//! A family is *out of family* when the twin's fit session (metadata `twin.fit_families`, written
//! by `rig twin adapt`) showed none of it, and the session is *held out* when it is not the fit
//! session (`twin.session_id` and `twin.fit_frames` differ from the session's).

use serde::Serialize;

use super::data::{SessionData, Targets};
use super::metrics::{column_corr, repeat_correlation};

/// `stimulus/clips/kind` codes, in order.
pub const FAMILIES: [&str; 5] = ["natural", "grating", "gabor", "noise", "freeform"];
/// Metadata key: the families the fit session showed, comma separated.
pub const FIT_FAMILIES: &str = "twin.fit_families";
/// Metadata key: imaging frames of the fit session. With `twin.session_id` it tells the fit
/// session from another of the same mouse (a simulated session's id is its seed).
pub const FIT_FRAMES: &str = "twin.fit_frames";
/// Neurons whose noise ceiling is at or below this are left out of CC_norm.
pub const MIN_CEILING: f64 = 0.05;

#[derive(Debug, Clone, Serialize)]
pub struct FamilyScore {
    /// A family name, or "all" (every frame with a clip on screen or not).
    pub family: String,
    pub frames: usize,
    /// Clips of the family shown at least twice (the noise ceiling's material).
    pub repeated_clips: usize,
    /// Whether the twin's fit session showed this family; `None` when the twin does not say.
    pub in_fit: Option<bool>,
    pub median_r: Option<f64>,
    pub median_ceiling: Option<f64>,
    pub median_cc_norm: Option<f64>,
    /// Neurons with a ceiling above `MIN_CEILING` (those CC_norm is over).
    pub cc_norm_neurons: usize,
    /// Median r of each neuron's prediction against other neurons' measurements.
    pub shuffled_median_r: Option<f64>,
    /// Per neuron (twin order), with `per_neuron`: r, ceiling, CC_norm (NaN where undefined).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_neuron: Option<PerNeuron>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PerNeuron {
    pub r: Vec<f64>,
    pub ceiling: Vec<f64>,
    pub cc_norm: Vec<f64>,
}

/// Scores `pred` [T, n] against the session's measured responses (`measured`: the targets and
/// the measured column of each twin neuron), overall and per family present (the family of a
/// frame is the kind of the clip on screen, `SessionData::kinds`); `fit_families` the twin's
/// `twin.fit_families`, if it has one.
pub fn by_family(
    pred: &[f32],
    n: usize,
    s: &SessionData,
    (tg, cols): (&Targets, &[usize]),
    fit_families: Option<&[String]>,
    per_neuron: bool,
) -> Vec<FamilyScore> {
    let reps = super::metrics::clip_repeats(s);
    let kinds = &s.kinds;
    let t_n = s.n_frames.min(pred.len() / n.max(1));
    let family_of = |t: usize| -> Option<u8> {
        let (clip, _) = *s.shown.get(t)?;
        (clip >= 0)
            .then(|| kinds.get(clip as usize).copied())
            .flatten()
    };
    let mut out = Vec::new();
    let all: Vec<usize> = (0..t_n).collect();
    out.push(score(
        "all", pred, n, tg, cols, &all, &reps, None, per_neuron,
    ));
    for (code, name) in FAMILIES.iter().enumerate() {
        let frames: Vec<usize> = (0..t_n)
            .filter(|&t| family_of(t) == Some(code as u8))
            .collect();
        if frames.is_empty() {
            continue;
        }
        let fam_reps: Vec<Vec<Vec<usize>>> = reps
            .iter()
            .enumerate()
            .map(|(c, r)| {
                if kinds.get(c) == Some(&(code as u8)) {
                    r.clone()
                } else {
                    Vec::new()
                }
            })
            .collect();
        let in_fit = fit_families.map(|f| f.iter().any(|x| x == name));
        out.push(score(
            name, pred, n, tg, cols, &frames, &fam_reps, in_fit, per_neuron,
        ));
    }
    out
}

#[allow(clippy::too_many_arguments)] // one family's slice of the same inputs
fn score(
    family: &str,
    pred: &[f32],
    n: usize,
    tg: &Targets,
    cols: &[usize],
    frames: &[usize],
    reps: &[Vec<Vec<usize>>],
    in_fit: Option<bool>,
    per_neuron: bool,
) -> FamilyScore {
    let r_n = tg.n();
    let r: Vec<f64> = (0..n)
        .map(|i| column_corr(pred, n, i, &tg.data, r_n, cols[i], frames))
        .collect();
    let (ceiling, rep_frames) = repeat_correlation(reps, &tg.data, r_n, cols);
    let cc_norm: Vec<f64> = (0..n)
        .map(|i| {
            let c = ceiling[i];
            if !(c.is_finite() && c > MIN_CEILING) {
                return f64::NAN;
            }
            column_corr(pred, n, i, &tg.data, r_n, cols[i], &rep_frames) / c.sqrt()
        })
        .collect();
    let finite = |v: &[f64]| -> Vec<f64> { v.iter().copied().filter(|x| x.is_finite()).collect() };
    let repeated_clips = reps.iter().filter(|r| r.len() >= 2).count();
    FamilyScore {
        family: family.to_string(),
        frames: frames.len(),
        repeated_clips,
        in_fit,
        median_r: crate::stats::median(&finite(&r)),
        median_ceiling: crate::stats::median(&finite(&ceiling)),
        median_cc_norm: crate::stats::median(&finite(&cc_norm)),
        cc_norm_neurons: finite(&cc_norm).len(),
        shuffled_median_r: shuffled_median_r(pred, n, (tg, cols), frames),
        per_neuron: per_neuron.then_some(PerNeuron {
            r,
            ceiling,
            cc_norm,
        }),
    }
}

/// The shuffled-neuron baseline over `frames`: the median r of each neuron's prediction against
/// other neurons' measurements (`stats::shuffle_offsets` pairs), what a twin's median r must
/// beat before its per-neuron claims mean anything.
pub fn shuffled_median_r(
    pred: &[f32],
    n: usize,
    (tg, cols): (&Targets, &[usize]),
    frames: &[usize],
) -> Option<f64> {
    let offsets = crate::stats::shuffle_offsets(n, crate::stats::SHUFFLE_OFFSETS);
    let r: Vec<f64> = offsets
        .iter()
        .flat_map(|&off| (0..n).map(move |i| (i, (i + off) % n)))
        .map(|(i, j)| column_corr(pred, n, i, &tg.data, tg.n(), cols[j], frames))
        .filter(|r| r.is_finite())
        .collect();
    crate::stats::median(&r)
}
