//! An in-silico plan's stimuli as clips of the session's library.
//!
//! The library's clips all have `stimulus.clip_seconds` worth of frames (the session format keeps
//! them in one `[C, F, h, w]` dataset), so a plan stimulus of another length is looped or cut to
//! that length: drifting gratings and the other families are periodic or stationary, so looping
//! keeps what the twin scored.

use serde::Serialize;

use crate::insilico::{Entry, Plan};
use crate::session::ClipParams;

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
    #[serde(skip)]
    pub frames: Vec<u8>,
    #[serde(skip)]
    pub clip_params: ClipParams,
}

/// The best `top` entries of every goal of `plan`, as `frames_per_clip x h x w` clips. Refuses a
/// plan made for another stimulus size.
pub fn plan_clips(
    plan: &Plan,
    path: &std::path::Path,
    top: usize,
    frames_per_clip: usize,
    h: usize,
    w: usize,
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
    let mut out = Vec::new();
    for e in plan.entries.iter().filter(|e| (e.rank as usize) < top) {
        if e.frames.len() != t * n {
            return Err(format!(
                "{}: entry {} of goal {} has {} pixels of frames, expected {t}x{h}x{w}",
                path.display(),
                e.rank,
                e.goal,
                e.frames.len()
            ));
        }
        let mut frames = Vec::with_capacity(frames_per_clip * n);
        for k in 0..frames_per_clip {
            let f = k % t;
            frames.extend_from_slice(&e.frames[f * n..(f + 1) * n]);
        }
        out.push(PlanClip {
            goal: e.goal,
            rank: e.rank,
            family: e.family.clone(),
            score: e.score,
            predicted_targets: e.target_response.clone(),
            predicted_rest: e.rest_mean,
            params: e.params_json(),
            clip_params: clip_params(e),
            frames,
        });
    }
    if out.is_empty() {
        return Err(format!("{}: the plan has no entries", path.display()));
    }
    Ok(out)
}

/// The session's clip parameters for a plan entry (family as kind, grating parameters when it
/// has them; NaN otherwise, as for natural clips).
fn clip_params(e: &Entry) -> ClipParams {
    let get = |name: &str| {
        e.param_names
            .iter()
            .position(|p| p == name)
            .map_or(f32::NAN, |i| e.params[i] as f32)
    };
    ClipParams {
        kind: match e.family.as_str() {
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
