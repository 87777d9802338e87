//! Scoring a plan against ground truth: the plan's top stimuli and random natural clips are shown
//! to the *simulated mouse* (src/sim/mouse.rs), not the twin, and each target's evoked response is
//! compared with what the twin predicted (the in-silico to in-vivo gap) and with its response to
//! natural clips (the gain).
//!
//! Presentation follows `SimRig::step`: each stimulus frame stays on screen until the next one is
//! due at the stimulus rate, the mouse is stepped at the imaging rate, and a gray interval before
//! each stimulus lets the temporal filter and most of the calcium return to rest. Behaviour is held
//! at the values the twin scored with (a still mouse), so the gain measures the stimulus alone.
//! The gain uses the noise-free firing rate (`Mouse::rates`); the calcium dF/F (with Poisson
//! spiking, averaged over repeats) is what the twin predicts, so the gap is in dF/F.

use serde::Serialize;

use super::control;
use super::pool::eval_frames;
use super::{InsilicoError, Plan};
use crate::config::{RigConfig, StimulusSet};
use crate::sim::mouse::Mouse;
use crate::sim::stimulus::ClipLibrary;
use crate::twin::Twin;

#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Seed of the simulated mouse (the same seed = the same neurons; the reference twin was fit
    /// to seed 1).
    pub mouse_seed: u64,
    /// Random natural clips to compare with, drawn with `natural_seed` (not the clips the twin was
    /// fit on unless the seeds coincide).
    pub natural_clips: usize,
    pub natural_seed: u64,
    /// Presentations of every stimulus (calcium is averaged over them).
    pub repeats: usize,
    /// Gray screen before each presentation, seconds.
    pub gray_s: f64,
    pub running_speed: f32,
    pub arousal: f32,
    /// Random candidates per shown plan entry, from the entry's own family at the entry's RMS
    /// contrast (the control: what any stimulus of that kind does), drawn with `control_seed`.
    /// 0 leaves the control out.
    pub control_candidates: usize,
    pub control_seed: u64,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            mouse_seed: 1,
            natural_clips: 16,
            natural_seed: 1001,
            repeats: 3,
            gray_s: 2.0,
            running_speed: 0.0,
            arousal: 0.0,
            control_candidates: 8,
            control_seed: 2002,
        }
    }
}

/// One target's result.
#[derive(Debug, Clone, Serialize)]
pub struct TargetResult {
    pub roi_id: u32,
    /// The plan entry shown for it (goal = the target, or the group's best entry).
    pub family: String,
    pub entry_index: usize,
    /// Twin prediction for the entry, mean dF/F over the clip.
    pub predicted_dff: f32,
    /// Ground truth: mean calcium dF/F (averaged over repeats) and mean firing rate over the clip.
    pub evoked_dff: f64,
    pub evoked_rate_hz: f64,
    /// Ground truth for the random natural clips (mean over clips).
    pub natural_dff: f64,
    pub natural_rate_hz: f64,
    /// evoked / natural, on firing rate and on dF/F.
    pub gain: f64,
    pub gain_dff: f64,
    /// The twin's prediction for the natural clips and the gain it predicted (with a twin).
    pub predicted_natural_dff: Option<f64>,
    pub predicted_gain: Option<f64>,
    /// The other neurons (the twin's, less the plan's targets) under the same stimulus.
    pub rest_rate_hz: f64,
    pub rest_natural_rate_hz: f64,
    pub rest_gain: f64,
    /// gain / rest_gain: above 1 when the stimulus drives the target more than the rest.
    pub selectivity: f64,
    /// Ground truth for random candidates of the entry's family at its RMS contrast (mean
    /// over them), and evoked / that: what the search added over picking any stimulus of the
    /// same kind. `None` without a control (natural-family entries without their library).
    pub control_rate_hz: Option<f64>,
    pub gain_over_control: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    pub objective: String,
    pub mouse_seed: u64,
    pub natural_clips: usize,
    pub repeats: usize,
    pub clip_s: f64,
    pub targets: Vec<TargetResult>,
    /// Targets whose plan stimulus evoked at least twice their natural-clip rate.
    pub targets_gain_2x: usize,
    pub median_gain: f64,
    pub median_selectivity: f64,
    /// Random candidates per entry in the control, and the targets whose plan stimulus beat
    /// their control; median of `gain_over_control`.
    pub control_candidates: usize,
    pub targets_beat_control: usize,
    pub median_gain_over_control: f64,
}

/// Accumulates a presentation's mean rate and calcium of every neuron.
struct Presenter {
    mouse: Mouse,
    spikes: Vec<u8>,
    calcium: Vec<f32>,
    imaging_hz: f64,
    gray_frames: usize,
    running: f32,
    arousal: f32,
}

impl Presenter {
    /// Shows `frames` ([T*HW]) at `stim_hz` for `seconds` after the gray interval.
    fn show(
        &mut self,
        frames: &[u8],
        hw: usize,
        stim_hz: f64,
        seconds: f64,
    ) -> (Vec<f64>, Vec<f64>) {
        let n = self.mouse.len();
        self.mouse.set_stimulus(None);
        for _ in 0..self.gray_frames {
            self.mouse.step(
                self.running,
                self.arousal,
                &mut self.spikes,
                &mut self.calcium,
            );
        }
        let t_n = frames.len() / hw;
        let steps = ((seconds * self.imaging_hz).round() as usize).max(1);
        let (mut rate, mut ca) = (vec![0f64; n], vec![0f64; n]);
        let mut shown = usize::MAX;
        for i in 0..steps {
            let k = ((i as f64 / self.imaging_hz * stim_hz + 1e-9).floor() as usize).min(t_n - 1);
            if k != shown {
                shown = k;
                self.mouse.set_stimulus(Some(&frames[k * hw..(k + 1) * hw]));
            }
            self.mouse.step(
                self.running,
                self.arousal,
                &mut self.spikes,
                &mut self.calcium,
            );
            for j in 0..n {
                rate[j] += self.mouse.rates()[j] as f64;
                ca[j] += self.calcium[j] as f64;
            }
        }
        rate.iter_mut().for_each(|v| *v /= steps as f64);
        ca.iter_mut().for_each(|v| *v /= steps as f64);
        (rate, ca)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

/// Shows the plan's best stimulus for each target and `natural_clips` random natural clips to the
/// simulated mouse of `cfg` and reports evoked versus predicted responses and gains. With `twin`
/// (the plan's twin), also the twin's prediction for the natural clips.
pub fn evaluate_on_sim(
    cfg: &RigConfig,
    plan: &Plan,
    twin: Option<&mut Twin>,
    o: &EvalOptions,
) -> Result<SimReport, InsilicoError> {
    let (h, w) = (cfg.stimulus.height, cfg.stimulus.width);
    if (h, w) != (plan.height, plan.width) {
        return Err(InsilicoError::input(format!(
            "evaluate: the plan's stimuli are {}x{} (HxW) but the simulated rig shows {h}x{w} ([stimulus] height/width of the config)",
            plan.height, plan.width
        )));
    }
    if plan.entries.is_empty() {
        return Err(InsilicoError::input("evaluate: the plan has no entries"));
    }
    if o.natural_clips == 0 || o.repeats == 0 {
        return Err(InsilicoError::input(
            "evaluate: --natural and --repeats must each be at least 1",
        ));
    }
    let n_sim = cfg.sim.neurons;
    if let Some(bad) = plan.roi_ids.iter().find(|&&r| r as usize >= n_sim) {
        return Err(InsilicoError::input(format!(
            "evaluate: the plan's twin names ROI id {bad}, but the simulated mouse has {n_sim} neurons (ROI id r is neuron r)"
        )));
    }
    let hw = h * w;
    let clip_s = plan.frames as f64 / plan.frame_rate_hz;
    let mut sim = Presenter {
        mouse: Mouse::new(cfg, o.mouse_seed),
        spikes: vec![0; n_sim],
        calcium: vec![0.0; n_sim],
        imaging_hz: cfg.imaging.frame_rate_hz,
        gray_frames: (o.gray_s * cfg.imaging.frame_rate_hz).round() as usize,
        running: o.running_speed,
        arousal: o.arousal,
    };
    // The entry shown for each target: its own best, or the group's best.
    let chosen: Vec<usize> = plan
        .targets
        .iter()
        .map(|&t| {
            plan.entries
                .iter()
                .position(|e| e.goal == t as i64)
                .or_else(|| plan.entries.iter().position(|e| e.goal == -1))
                .unwrap_or(0)
        })
        .collect();
    let mut uniq = chosen.clone();
    uniq.sort_unstable();
    uniq.dedup();
    let lib = natural_library(cfg, o.natural_clips, o.natural_seed);
    let stim_hz = cfg.stimulus.frame_rate_hz;
    let controls: Vec<Vec<Vec<u8>>> =
        control::controls(plan, &uniq, o.control_candidates, o.control_seed)?
            .into_iter()
            .map(|set| set.into_iter().map(|c| c.frames).collect())
            .collect();

    let (mut plan_rate, mut plan_ca) = (
        vec![vec![0f64; n_sim]; uniq.len()],
        vec![vec![0f64; n_sim]; uniq.len()],
    );
    let (mut nat_rate, mut nat_ca) = (vec![0f64; n_sim], vec![0f64; n_sim]);
    let mut ctl_rate = vec![vec![0f64; n_sim]; uniq.len()];
    for _ in 0..o.repeats {
        for (u, &e) in uniq.iter().enumerate() {
            let (r, c) = sim.show(&plan.entries[e].frames, hw, plan.frame_rate_hz, clip_s);
            plan_rate[u].iter_mut().zip(&r).for_each(|(a, b)| *a += b);
            plan_ca[u].iter_mut().zip(&c).for_each(|(a, b)| *a += b);
            for frames in &controls[u] {
                let (r, _) = sim.show(frames, hw, plan.frame_rate_hz, clip_s);
                ctl_rate[u].iter_mut().zip(&r).for_each(|(a, b)| *a += b);
            }
        }
        for clip in &lib.clips {
            let (r, c) = sim.show(clip, hw, stim_hz, clip_s);
            nat_rate.iter_mut().zip(&r).for_each(|(a, b)| *a += b);
            nat_ca.iter_mut().zip(&c).for_each(|(a, b)| *a += b);
        }
    }
    let rp = o.repeats as f64;
    let nn = rp * lib.len() as f64;
    plan_rate
        .iter_mut()
        .chain(plan_ca.iter_mut())
        .for_each(|v| v.iter_mut().for_each(|x| *x /= rp));
    nat_rate
        .iter_mut()
        .chain(nat_ca.iter_mut())
        .for_each(|x| *x /= nn);
    for (u, c) in ctl_rate.iter_mut().enumerate() {
        let k = rp * controls[u].len() as f64;
        c.iter_mut().for_each(|x| *x /= k.max(1.0));
    }

    // The twin's view of the same natural clips, resampled to its frame rate and clip length.
    let pred_nat: Option<Vec<f64>> = match twin {
        None => None,
        Some(tw) => Some(twin_on_natural(tw, plan, &lib, stim_hz)?),
    };

    let rest: Vec<usize> = plan
        .roi_ids
        .iter()
        .filter(|r| !plan.targets.contains(r))
        .map(|&r| r as usize)
        .collect();
    let mean_over = |v: &[f64], ix: &[usize]| -> f64 {
        if ix.is_empty() {
            f64::NAN
        } else {
            ix.iter().map(|&i| v[i]).sum::<f64>() / ix.len() as f64
        }
    };
    let mut targets = Vec::new();
    for (ti, &roi) in plan.targets.iter().enumerate() {
        let e = chosen[ti];
        let u = uniq.binary_search(&e).expect("chosen entry");
        let n = roi as usize;
        let col = plan
            .roi_ids
            .iter()
            .position(|&r| r == roi)
            .expect("plan targets are twin ROIs");
        let gain = plan_rate[u][n] / nat_rate[n].max(1e-9);
        let rest_rate = mean_over(&plan_rate[u], &rest);
        let rest_nat = mean_over(&nat_rate, &rest);
        let rest_gain = rest_rate / rest_nat.max(1e-9);
        let predicted = plan.entries[e].response[col];
        let control = (!controls[u].is_empty()).then(|| ctl_rate[u][n]);
        targets.push(TargetResult {
            roi_id: roi,
            family: plan.entries[e].family.clone(),
            entry_index: e,
            predicted_dff: predicted,
            evoked_dff: plan_ca[u][n],
            evoked_rate_hz: plan_rate[u][n],
            natural_dff: nat_ca[n],
            natural_rate_hz: nat_rate[n],
            gain,
            gain_dff: plan_ca[u][n] / nat_ca[n].max(1e-9),
            predicted_natural_dff: pred_nat.as_ref().map(|p| p[col]),
            predicted_gain: pred_nat
                .as_ref()
                .map(|p| predicted as f64 / p[col].max(1e-9)),
            rest_rate_hz: rest_rate,
            rest_natural_rate_hz: rest_nat,
            rest_gain,
            selectivity: gain / rest_gain.max(1e-9),
            control_rate_hz: control,
            gain_over_control: control.map(|c| plan_rate[u][n] / c.max(1e-9)),
        });
    }
    Ok(SimReport {
        objective: plan.objective.clone(),
        mouse_seed: o.mouse_seed,
        natural_clips: lib.len(),
        repeats: o.repeats,
        clip_s,
        targets_gain_2x: targets.iter().filter(|t| t.gain >= 2.0).count(),
        median_gain: median(targets.iter().map(|t| t.gain).collect()),
        median_selectivity: median(targets.iter().map(|t| t.selectivity).collect()),
        control_candidates: o.control_candidates,
        targets_beat_control: targets
            .iter()
            .filter(|t| t.gain_over_control.is_some_and(|g| g > 1.0))
            .count(),
        median_gain_over_control: median(
            targets.iter().filter_map(|t| t.gain_over_control).collect(),
        ),
        targets,
    })
}

/// The twin's mean predicted dF/F of every neuron (`plan.roi_ids` order) over `natural_clips`
/// random natural clips of the simulator (seed `natural_seed`, not the clips it was fit on), each
/// resampled to the plan's frame rate and clip length and stepped from rest with the plan's
/// behaviour: the comparison a predicted gain is taken against, known before anything is shown.
pub fn predicted_natural(
    tw: &mut Twin,
    plan: &Plan,
    cfg: &RigConfig,
    natural_clips: usize,
    natural_seed: u64,
) -> Result<Vec<f64>, InsilicoError> {
    let lib = natural_library(cfg, natural_clips, natural_seed);
    twin_on_natural(tw, plan, &lib, cfg.stimulus.frame_rate_hz)
}

/// `clips` natural clips of the simulator for `cfg`'s stimulus, drawn with `seed`.
fn natural_library(cfg: &RigConfig, clips: usize, seed: u64) -> ClipLibrary {
    let mut ncfg = cfg.clone();
    ncfg.sim.stimulus_set = StimulusSet::Natural;
    ncfg.sim.clips = clips.max(1);
    ClipLibrary::generate(&ncfg, seed)
}

fn twin_on_natural(
    tw: &mut Twin,
    plan: &Plan,
    lib: &ClipLibrary,
    stim_hz: f64,
) -> Result<Vec<f64>, InsilicoError> {
    let (h, w) = (plan.height, plan.width);
    let hw = h * w;
    let c = tw.contract();
    if c.roi_ids != plan.roi_ids || (c.height, c.width) != (h, w) {
        return Err(InsilicoError::input(format!(
            "evaluate: {} is not the plan's twin (its neurons or stimulus size differ)",
            tw.path().display()
        )));
    }
    let opts = plan.options()?;
    let beh: Vec<f32> = c
        .behavior_channels
        .iter()
        .map(|ch| match ch.as_str() {
            "running_speed" => opts.running_speed,
            "pupil_diameter" => opts.pupil_mm,
            _ => 0.0,
        })
        .collect();
    let mut acc = vec![0f64; plan.roi_ids.len()];
    let fpc = lib.frames_per_clip;
    for clip in &lib.clips {
        let fr: Vec<u8> = (0..plan.frames)
            .flat_map(|t| {
                let k = ((t as f64 / plan.frame_rate_hz * stim_hz + 1e-9).floor() as usize)
                    .min(fpc - 1);
                clip[k * hw..(k + 1) * hw].iter().copied()
            })
            .collect();
        let r = eval_frames(tw, &fr, &beh)?;
        acc.iter_mut().zip(&r).for_each(|(a, &b)| *a += b as f64);
    }
    Ok(acc.iter().map(|v| v / lib.len() as f64).collect())
}
