//! An in-silico plan's stimuli as clips of the session's library.
//!
//! The library's clips all have `stimulus.clip_seconds` worth of frames (the session format keeps
//! them in one `[C, F, h, w]` dataset), so a plan stimulus of another length is looped or cut to
//! that length: drifting gratings and the other families are periodic or stationary, so looping
//! keeps what the twin scored.
//!
//! Each plan stimulus can bring controls (`stimulus.plan_controls`): random stimuli of its family
//! at its contrast (src/insilico/control.rs), filed and shown in the same session, so that
//! `rig insilico gain` can tell a well-chosen stimulus from any stimulus of its kind.

use serde::Serialize;

use crate::insilico::control::controls;
use crate::insilico::plan::params_json;
use crate::insilico::Plan;
use crate::session::ClipParams;

/// Mixed into the session's seed to draw control stimuli, so they differ from the search's own
/// screening candidates (drawn from the same seed) yet are the same in every run of a config.
pub const CONTROL_SEED: u64 = 0xC0_4E7A_0150;

/// One plan stimulus, ready to be added to the library.
#[derive(Debug, Clone, Serialize)]
pub struct PlanClip {
    /// ROI id the stimulus was found for, -1 for a group goal.
    pub goal: i64,
    pub rank: u32,
    pub family: String,
    pub score: f64,
    /// The twin's predicted mean dF/F of the plan's targets (plan target order).
    pub predicted_targets: Vec<f32>,
    pub predicted_rest: f32,
    pub params: String,
    /// A control stimulus: the rank of the plan stimulus (same goal) it is the control of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_of: Option<u32>,
    #[serde(skip)]
    pub frames: Vec<u8>,
    #[serde(skip)]
    pub clip_params: ClipParams,
}

impl PlanClip {
    /// What a watcher shows of this stimulus, filed as clip `clip`; the thumbnail is the clip's
    /// middle frame (`frame_len` pixels a frame).
    pub fn feed_entry(&self, clip: i32, frame_len: usize) -> crate::live::feed::PlanEntry {
        let frames = self.frames.len().checked_div(frame_len).unwrap_or(0);
        let mid = frames / 2;
        crate::live::feed::PlanEntry {
            clip,
            goal: self.goal,
            rank: self.rank,
            family: self.family.clone(),
            control_of: self.control_of,
            thumbnail: self
                .frames
                .get(mid * frame_len..(mid + 1) * frame_len)
                .map(<[u8]>::to_vec)
                .unwrap_or_default(),
        }
    }
}

/// The best `top` entries of every goal of `plan`, as `frames_per_clip x h x w` clips, followed by
/// `per_stimulus` controls of each (drawn with `seed`; see [`PlanClip::control_of`]). Refuses a
/// plan made for another stimulus size. Controls that cannot be made (a natural-family stimulus
/// whose library is gone) are left out with a warning: the plan still runs.
pub fn plan_clips(
    plan: &Plan,
    path: &std::path::Path,
    top: usize,
    (frames_per_clip, h, w): (usize, usize, usize),
    per_stimulus: usize,
    seed: u64,
) -> Result<Vec<PlanClip>, String> {
    if (plan.height, plan.width) != (h, w) {
        return Err(format!(
            "{}: the plan's stimuli are {}x{} (HxW), the rig shows {h}x{w} ([stimulus] height/width)",
            path.display(),
            plan.height,
            plan.width
        ));
    }
    let t = plan.frames.max(1);
    let n = h * w;
    let looped = |frames: &[u8]| {
        let mut out = Vec::with_capacity(frames_per_clip * n);
        for k in 0..frames_per_clip {
            let f = k % t;
            out.extend_from_slice(&frames[f * n..(f + 1) * n]);
        }
        out
    };
    let shown: Vec<usize> = (0..plan.entries.len())
        .filter(|&i| (plan.entries[i].rank as usize) < top)
        .collect();
    let mut out = Vec::new();
    for &i in &shown {
        let e = &plan.entries[i];
        if e.frames.len() != t * n {
            return Err(format!(
                "{}: entry {} of goal {} has {} pixels of frames, expected {t}x{h}x{w}",
                path.display(),
                e.rank,
                e.goal,
                e.frames.len()
            ));
        }
        out.push(PlanClip {
            goal: e.goal,
            rank: e.rank,
            family: e.family.clone(),
            score: e.score,
            predicted_targets: e.target_response.clone(),
            predicted_rest: e.rest_mean,
            params: e.params_json(),
            control_of: None,
            clip_params: clip_params(&e.family, &e.param_names, &e.params),
            frames: looped(&e.frames),
        });
    }
    if out.is_empty() {
        return Err(format!("{}: the plan has no entries", path.display()));
    }
    let sets = match controls(plan, &shown, per_stimulus, seed) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("{}: no control stimuli: {e}", path.display());
            Vec::new()
        }
    };
    let mut missing = 0;
    for (&i, set) in shown.iter().zip(&sets) {
        let e = &plan.entries[i];
        missing += per_stimulus - set.len();
        for c in set {
            out.push(PlanClip {
                goal: e.goal,
                rank: e.rank,
                family: c.family.clone(),
                score: f64::NAN,
                predicted_targets: Vec::new(),
                predicted_rest: f32::NAN,
                params: params_json(&c.param_names, &c.params),
                control_of: Some(e.rank),
                clip_params: clip_params(&c.family, &c.param_names, &c.params),
                frames: looped(&c.frames),
            });
        }
    }
    if missing > 0 && !sets.is_empty() {
        tracing::warn!(
            "{}: {missing} control stimuli left out (a natural-family stimulus needs the plan's \
             clip library)",
            path.display()
        );
    }
    Ok(out)
}

/// The session's clip parameters for a stimulus (family as kind, grating parameters when it has
/// them; NaN otherwise, as for natural clips).
fn clip_params(family: &str, names: &[String], params: &[f64]) -> ClipParams {
    let get = |name: &str| {
        names
            .iter()
            .position(|p| p == name)
            .map_or(f32::NAN, |i| params[i] as f32)
    };
    ClipParams {
        kind: match family {
            "natural" => 0,
            "grating" => 1,
            "gabor" => 2,
            "noise" => 3,
            _ => 4,
        },
        orientation: get("orientation_deg"),
        spatial_frequency: get("sf_cpd"),
        temporal_frequency: get("tf_hz"),
        contrast: get("contrast"),
    }
}
