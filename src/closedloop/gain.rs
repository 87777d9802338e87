//! What a plan did in vivo: from a session recorded with `rig run --plan`, each target's mean
//! response to the stimuli found for it against two comparisons shown in the same session — the
//! natural clips, and the plan's controls (random stimuli of the same family at the same
//! contrast, `stimulus.plan_controls`) — measured (extracted dF/F of its ROI) and, for simulated
//! sessions, true (the ground-truth calcium of the neuron), next to what the twin predicted. The
//! gain over natural clips says the stimulus drives the neuron; the gain over the control says the
//! search's choice mattered, not just the stimulus family or its contrast.

use std::path::Path;

use serde::Serialize;

use crate::session::layout::attr;
use crate::session::{SessionError, SessionReader};

#[derive(Debug, Clone, Serialize)]
pub struct TargetGain {
    pub roi_id: u32,
    /// Trials that showed this target's plan stimuli, and natural-clip trials.
    pub plan_trials: usize,
    pub natural_trials: usize,
    /// Trials that showed a control of this target's plan stimuli.
    pub control_trials: usize,
    /// The twin's predicted mean dF/F over the target's plan stimuli (the plan's in-silico
    /// figure, known before the stimulus is shown).
    pub predicted: f64,
    /// The twin's predicted mean dF/F over the natural-clip trials (its in-loop predictions,
    /// `twin/predicted`: stimulus and behaviour only, no measurement).
    pub predicted_natural: Option<f64>,
    /// predicted / predicted_natural: the gain the twin expected before the stimulus was shown.
    pub predicted_gain: Option<f64>,
    /// The twin's in-loop prediction over the plan trials / over the natural trials: the gain it
    /// predicts for the trials as they ran (same behaviour, same carry-over between trials).
    pub predicted_gain_in_loop: Option<f64>,
    /// predicted_gain x the median, over the session's *other* targets, of measured gain /
    /// predicted gain: the twin's over-rating of the stimuli its own search picked (the winner's
    /// curse), learnt from other neurons and never from this target's trials. `None` with fewer
    /// than 3 other targets to learn from.
    pub predicted_gain_calibrated: Option<f64>,
    /// Mean extracted dF/F over the clip part of the trials.
    pub measured_plan: Option<f64>,
    pub measured_natural: Option<f64>,
    /// measured_plan / measured_natural (when the natural response is positive).
    pub measured_gain: Option<f64>,
    pub measured_control: Option<f64>,
    /// measured_plan / measured_control (when the control response is positive).
    pub measured_gain_over_control: Option<f64>,
    /// Mean true calcium (dF/F) of the neuron, simulated sessions only.
    pub true_plan: Option<f64>,
    pub true_natural: Option<f64>,
    pub true_gain: Option<f64>,
    pub true_control: Option<f64>,
    pub true_gain_over_control: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GainReport {
    pub session: String,
    pub plan: String,
    pub objective: String,
    pub targets: Vec<TargetGain>,
    /// Targets whose true (else measured) gain is at least 2.
    pub targets_at_2x: usize,
    /// ... and at least 3.
    pub targets_at_3x: usize,
    /// Control stimuli the session filed, and the targets whose plan stimuli beat their control
    /// (true, else measured, gain over control above 1; targets without control trials don't
    /// count).
    pub controls: usize,
    pub targets_beat_control: usize,
    /// Median over targets of |predicted gain - measured gain| / measured gain (the true gain
    /// when the session has no extracted traces): the twin predicts extracted dF/F, so the
    /// measured gain is what its prediction is of.
    pub median_gain_error: Option<f64>,
    /// The same for the in-loop predicted gain.
    pub median_gain_error_in_loop: Option<f64>,
    /// The same for the calibrated predicted gain (leave one target out).
    pub median_gain_error_calibrated: Option<f64>,
    /// Median over all targets of measured gain / predicted gain: how far the search's own
    /// predictions over-rate (< 1) or under-rate (> 1) what the stimuli did.
    pub gain_calibration: Option<f64>,
}

/// For each target, its predicted gain times the median of `reference / predicted` over the other
/// targets (at least `MIN_OTHERS` of them with both figures); `None` where that cannot be had.
fn leave_one_out_calibrated(pairs: &[(Option<f64>, Option<f64>)]) -> Vec<Option<f64>> {
    const MIN_OTHERS: usize = 3;
    (0..pairs.len())
        .map(|i| {
            let others: Vec<f64> = pairs
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .filter_map(|(_, p)| reference_over_predicted(p))
                .collect();
            if others.len() < MIN_OTHERS {
                return None;
            }
            Some(pairs[i].0? * crate::stats::median(&others)?)
        })
        .collect()
}

/// reference gain / predicted gain of one `(predicted, reference)` pair, where both are known and
/// the prediction is positive.
fn reference_over_predicted(&(p, r): &(Option<f64>, Option<f64>)) -> Option<f64> {
    match (p, r) {
        (Some(p), Some(r)) if p > 1e-9 && r.is_finite() => Some(r / p),
        _ => None,
    }
}

fn bad(path: &Path, message: String) -> SessionError {
    SessionError::Layout(format!("{}: {message}", path.display()))
}

/// One plan stimulus as the session filed it (the root attribute `plan`).
#[derive(Debug, Clone, Serialize)]
pub struct PlanStimulus {
    /// Its clip id in `stimulus/clips`.
    pub clip: i32,
    /// ROI id of the target it was found for, -1 for a group goal.
    pub goal: i64,
    pub rank: u32,
    pub family: String,
    pub score: f64,
    /// The twin's predicted mean dF/F of each plan target (plan target order).
    pub predicted_targets: Vec<f64>,
}

/// The plan a session ran (`rig run --plan`), as its root attribute `plan` records it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionPlan {
    pub path: String,
    pub objective: String,
    pub targets: Vec<u32>,
    pub stimuli: Vec<PlanStimulus>,
    /// Control stimuli the session filed: (clip id, goal ROI id).
    pub controls: Vec<(i32, i64)>,
}

/// The plan of a session; `None` when it ran without one.
pub fn session_plan(r: &SessionReader) -> Result<Option<SessionPlan>, SessionError> {
    let path = r.path();
    let Some(plan_json) = r.optional_str_attr(attr::PLAN)? else {
        return Ok(None);
    };
    let plan: serde_json::Value = serde_json::from_str(&plan_json)
        .map_err(|e| bad(path, format!("the `plan` attribute is not JSON: {e}")))?;
    // (clip id, goal)
    let controls: Vec<(i32, i64)> = plan["controls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c[0].as_i64().unwrap_or(-1) as i32,
                c[1]["goal"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    let mut stimuli = Vec::new();
    for c in plan["clips"].as_array().into_iter().flatten() {
        stimuli.push(PlanStimulus {
            clip: c[0].as_i64().unwrap_or(-1) as i32,
            goal: c[1]["goal"].as_i64().unwrap_or(-1),
            rank: c[1]["rank"].as_u64().unwrap_or(0) as u32,
            family: c[1]["family"].as_str().unwrap_or("").to_string(),
            score: c[1]["score"].as_f64().unwrap_or(f64::NAN),
            predicted_targets: c[1]["predicted_targets"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
                .unwrap_or_default(),
        });
    }
    let targets: Vec<u32> = plan["targets"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_u64())
                .map(|v| v as u32)
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(SessionPlan {
        path: plan["path"].as_str().unwrap_or("").to_string(),
        objective: plan["objective"].as_str().unwrap_or("").to_string(),
        targets,
        stimuli,
        controls,
    }))
}

/// Computes the gain report of a session recorded with a plan.
pub fn plan_gain(path: &Path) -> Result<GainReport, SessionError> {
    let r = SessionReader::open(path)?;
    let plan = session_plan(&r)?.ok_or_else(|| {
        bad(
            path,
            "no `plan` root attribute: was it recorded with rig run --plan?".into(),
        )
    })?;
    // (clip id, goal, predicted target responses)
    let plan_clips: Vec<(i32, i64, Vec<f64>)> = plan
        .stimuli
        .iter()
        .map(|s| (s.clip, s.goal, s.predicted_targets.clone()))
        .collect();
    let targets = plan.targets.clone();
    let controls = plan.controls.clone();
    let clip_s = r.config()?.stimulus.clip_seconds;
    let kinds = r.clip_params()?;
    let trials = r.trials()?;
    let traces = r.traces()?;
    let rois = r.rois()?;
    let truth = r.ground_truth()?;
    let truth_ids: Option<Vec<u32>> = truth.as_ref().and_then(|g| {
        g.neuron_field("roi_id")
            .map(|v| v.iter().map(|&x| x as u32).collect())
    });
    let frame_times = r.frame_times()?;
    let twin = r.twin()?;

    // Mean of `value(frame)` over the clip part of each trial in `which`.
    let trial_mean = |which: &[usize], times: &[f64], value: &dyn Fn(usize) -> f32| {
        let mut sum = 0.0f64;
        let mut n = 0usize;
        for &k in which {
            let (a, b) = (trials.start[k], trials.start[k] + clip_s);
            let lo = times.partition_point(|&t| t < a);
            let hi = times.partition_point(|&t| t < b);
            for i in lo..hi {
                sum += value(i) as f64;
                n += 1;
            }
        }
        (n > 0).then(|| sum / n as f64)
    };
    // The library comes first; plan stimuli, controls and stimuli a background search added are
    // filed after it (and may be natural-family clips too).
    let first_added = plan_clips
        .iter()
        .map(|p| p.0)
        .chain(controls.iter().map(|c| c.0))
        .filter(|&c| c >= 0)
        .min()
        .unwrap_or(i32::MAX);
    let natural: Vec<usize> = (0..trials.clip.len())
        .filter(|&k| {
            let c = trials.clip[k];
            (0..first_added).contains(&c) && kinds.get(c as usize).is_some_and(|p| p.kind == 0)
        })
        .collect();
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 1e-6 => Some(a / b),
        _ => None,
    };
    let mut out = Vec::new();
    for (ti, &t) in targets.iter().enumerate() {
        let mine: Vec<&(i32, i64, Vec<f64>)> = plan_clips
            .iter()
            .filter(|p| p.1 == t as i64 || p.1 < 0)
            .collect();
        let shown: Vec<usize> = (0..trials.clip.len())
            .filter(|&k| mine.iter().any(|p| p.0 == trials.clip[k]))
            .collect();
        let control: Vec<usize> = (0..trials.clip.len())
            .filter(|&k| {
                controls
                    .iter()
                    .any(|c| c.0 == trials.clip[k] && (c.1 == t as i64 || c.1 < 0))
            })
            .collect();
        let predicted = if mine.is_empty() {
            f64::NAN
        } else {
            mine.iter()
                .map(|p| p.2.get(ti).copied().unwrap_or(f64::NAN))
                .sum::<f64>()
                / mine.len() as f64
        };
        let col = rois
            .as_ref()
            .and_then(|r| r.ids.iter().position(|&id| id == t));
        let (mp, mn, mc) = match (&traces, col) {
            (Some(tr), Some(c)) => {
                let v = |i: usize| tr.dff[i * tr.n_rois + c];
                (
                    trial_mean(&shown, &tr.time, &v),
                    trial_mean(&natural, &tr.time, &v),
                    trial_mean(&control, &tr.time, &v),
                )
            }
            _ => (None, None, None),
        };
        let gi = truth_ids
            .as_ref()
            .and_then(|ids| ids.iter().position(|&id| id == t));
        let (tp, tn, tc) = match (&truth, gi) {
            (Some(g), Some(j)) => {
                let n = g.n_neurons;
                let times = &frame_times[..g.n_frames().min(frame_times.len())];
                let v = |i: usize| g.calcium[i * n + j];
                (
                    trial_mean(&shown, times, &v),
                    trial_mean(&natural, times, &v),
                    trial_mean(&control, times, &v),
                )
            }
            _ => (None, None, None),
        };
        let in_loop = |which: &[usize]| {
            twin.as_ref().and_then(|tw| {
                let m = tw.neurons();
                let j = tw.roi_id.iter().position(|&id| id == t)?;
                let v = |i: usize| tw.predicted[i * m + j];
                trial_mean(which, &tw.time, &v)
            })
        };
        let pn = in_loop(&natural);
        out.push(TargetGain {
            roi_id: t,
            plan_trials: shown.len(),
            natural_trials: natural.len(),
            control_trials: control.len(),
            predicted,
            predicted_natural: pn,
            predicted_gain: ratio(predicted.is_finite().then_some(predicted), pn),
            predicted_gain_in_loop: ratio(in_loop(&shown), pn),
            predicted_gain_calibrated: None,
            measured_plan: mp,
            measured_natural: mn,
            measured_gain: ratio(mp, mn),
            measured_control: mc,
            measured_gain_over_control: ratio(mp, mc),
            true_plan: tp,
            true_natural: tn,
            true_gain: ratio(tp, tn),
            true_control: tc,
            true_gain_over_control: ratio(tp, tc),
        });
    }
    let targets_at_2x = out
        .iter()
        .filter(|g| g.true_gain.or(g.measured_gain).is_some_and(|x| x >= 2.0))
        .count();
    let targets_at_3x = out
        .iter()
        .filter(|g| g.true_gain.or(g.measured_gain).is_some_and(|x| x >= 3.0))
        .count();
    let targets_beat_control = out
        .iter()
        .filter(|g| {
            g.true_gain_over_control
                .or(g.measured_gain_over_control)
                .is_some_and(|x| x > 1.0)
        })
        .count();
    let reference = |g: &TargetGain| g.measured_gain.or(g.true_gain);
    let pairs: Vec<_> = out
        .iter()
        .map(|g| (g.predicted_gain, reference(g)))
        .collect();
    for (g, c) in out.iter_mut().zip(leave_one_out_calibrated(&pairs)) {
        g.predicted_gain_calibrated = c;
    }
    let all_ratios: Vec<f64> = pairs.iter().filter_map(reference_over_predicted).collect();
    let gain_calibration = crate::stats::median(&all_ratios);
    let median_error = |pick: &dyn Fn(&TargetGain) -> Option<f64>| {
        let errors: Vec<f64> = out
            .iter()
            .filter_map(|g| {
                let gain = reference(g)?;
                Some((pick(g)? - gain).abs() / gain)
            })
            .collect();
        crate::stats::median(&errors)
    };
    let median_gain_error_calibrated = median_error(&|g| g.predicted_gain_calibrated);
    let median_gain_error = median_error(&|g| g.predicted_gain);
    let median_gain_error_in_loop = median_error(&|g| g.predicted_gain_in_loop);
    Ok(GainReport {
        median_gain_error,
        median_gain_error_in_loop,
        median_gain_error_calibrated,
        gain_calibration,
        session: path.display().to_string(),
        plan: plan.path,
        objective: plan.objective,
        targets: out,
        targets_at_2x,
        targets_at_3x,
        controls: controls.len(),
        targets_beat_control,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_learns_from_the_other_targets_only() {
        // Every target's stimuli did half what the twin predicted, but target 0 did 50x.
        let pairs = vec![
            (Some(2.0), Some(100.0)),
            (Some(3.0), Some(1.5)),
            (Some(4.0), Some(2.0)),
            (Some(5.0), Some(2.5)),
            (Some(6.0), Some(3.0)),
        ];
        let c = leave_one_out_calibrated(&pairs);
        // Target 0 is calibrated by the others' 0.5, never by its own surprise.
        assert_eq!(c[0], Some(1.0));
        // The others see target 0's 50 among four ratios: the median stays at 0.5.
        for (i, want) in [(1, 1.5), (2, 2.0), (3, 2.5), (4, 3.0)] {
            assert_eq!(c[i], Some(want), "target {i}");
        }
        // Without a prediction, or with fewer than three others to learn from: no figure.
        let mut few = pairs[..3].to_vec();
        assert!(leave_one_out_calibrated(&few).iter().all(|c| c.is_none()));
        few.push((None, Some(1.0)));
        few.push((Some(1.0), None));
        let c = leave_one_out_calibrated(&few);
        assert_eq!(c[3], None);
        assert!(
            c[4].is_some(),
            "a target without a measurement is still calibrated"
        );
    }
}
