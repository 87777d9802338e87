//! The twin stepped in the loop: builds its inputs from a frame's context, steps it, maps its
//! neurons to the session's ROIs and feeds the comparison.

use std::path::Path;
use std::time::{Duration, Instant};

use super::clips::ClipStore;
use super::{TrialOnsets, TrialOutput};
use crate::acquire::FrameContext;
use crate::compare::{Comparator, CompareConfig, FidelitySummary, FrameFidelity};
use crate::twin::{behavior_input, Twin, TwinError, TwinState};

/// A behaviour channel the twin asks for, and where a frame's context holds it.
#[derive(Debug, Clone, Copy)]
enum Channel {
    RunningSpeed,
    PupilDiameter,
}

pub struct TwinInLoop {
    twin: Twin,
    state: TwinState,
    clips: ClipStore,
    channels: Vec<Channel>,
    /// (twin output index, ROI column) of every compared neuron.
    pairs: Vec<(usize, usize)>,
    roi_ids: Vec<u32>,
    n_rois: usize,
    stim: Vec<f32>,
    beh: Vec<f32>,
    out: Vec<f32>,
    measured: Vec<f32>,
    comparator: Comparator,
    /// The trial being compared: (clip, first frame); None before the first clip onset.
    trial: Option<(i32, u64)>,
    onsets: TrialOnsets,
    trials: u64,
}

impl TwinInLoop {
    /// Prepares `twin` for a session whose ROI table has ids `session_roi_ids` and whose clips are
    /// in `clips`. Refuses a twin whose stimulus size or behaviour channels the rig cannot feed,
    /// or none of whose neurons are among the session's ROIs.
    pub fn new(
        mut twin: Twin,
        session_roi_ids: &[u32],
        clips: ClipStore,
        compare: CompareConfig,
    ) -> Result<Self, TwinError> {
        let c = twin.contract().clone();
        let path = twin.path().to_path_buf();
        let refuse = |message: String| TwinError::Data {
            path: path.clone(),
            message,
        };
        if c.kind != crate::twin::Kind::Twin {
            return Err(refuse(
                "is a core (twin.kind = core); the loop needs a twin (rig twin adapt makes one)"
                    .into(),
            ));
        }
        if (c.height, c.width) != (clips.height, clips.width) {
            return Err(refuse(format!(
                "expects {}x{} (HxW) stimulus frames, the rig's stimulus is {}x{} ([stimulus] \
                 height/width in the rig config)",
                c.height, c.width, clips.height, clips.width
            )));
        }
        let mut channels = Vec::new();
        for name in &c.behavior_channels {
            channels.push(match name.as_str() {
                "running_speed" => Channel::RunningSpeed,
                "pupil_diameter" => Channel::PupilDiameter,
                other => {
                    return Err(refuse(format!(
                        "asks for behaviour channel `{other}`, which the rig does not record \
                         (it feeds running_speed and pupil_diameter)"
                    )))
                }
            });
        }
        let mut pairs = Vec::new();
        let mut missing = Vec::new();
        for (k, id) in c.roi_ids.iter().enumerate() {
            match session_roi_ids.iter().position(|r| r == id) {
                Some(col) => pairs.push((k, col)),
                None => missing.push(*id),
            }
        }
        if pairs.is_empty() {
            return Err(refuse(format!(
                "none of its {} neurons (twin.roi_ids) is among the session's {} ROIs: was it \
                 adapted to this field of view?",
                c.roi_ids.len(),
                session_roi_ids.len()
            )));
        }
        if !missing.is_empty() {
            tracing::warn!(
                model = %path.display(),
                missing = missing.len(),
                "twin neurons without a ROI in this session are not compared"
            );
        }
        twin.prepare_batch(1)?;
        let state = twin.new_state();
        let roi_ids = pairs.iter().map(|&(k, _)| c.roi_ids[k]).collect();
        let m = pairs.len();
        Ok(TwinInLoop {
            state,
            clips,
            stim: vec![0.0; c.stimulus_len()],
            beh: vec![0.0; c.n_behavior()],
            out: vec![0.0; c.output_len()],
            measured: vec![0.0; m],
            comparator: Comparator::new(m, compare),
            channels,
            pairs,
            roi_ids,
            n_rois: session_roi_ids.len(),
            trial: None,
            onsets: TrialOnsets::default(),
            trials: 0,
            twin,
        })
    }

    pub fn model(&self) -> &Path {
        self.twin.path()
    }

    pub fn device(&self) -> String {
        format!("{:?}", self.twin.device()).to_lowercase()
    }

    /// ROI ids of the compared neurons, in the order of `predicted` rows.
    pub fn roi_ids(&self) -> &[u32] {
        &self.roi_ids
    }

    /// ROI ids of every output neuron of the model (what an in-silico search on it may target).
    pub fn model_roi_ids(&self) -> &[u32] {
        &self.twin.contract().roi_ids
    }

    /// Measured dF/F of the compared neurons at the last `step`, in `roi_ids` order.
    pub fn measured(&self) -> &[f32] {
        &self.measured
    }

    /// The stimulus frame the twin was last stepped on (luminance 0..255, row-major).
    pub fn stimulus(&self) -> &[f32] {
        &self.stim
    }

    /// (height, width) of a stimulus frame.
    pub fn stimulus_shape(&self) -> (usize, usize) {
        (self.clips.height, self.clips.width)
    }

    pub fn neurons_in_model(&self) -> usize {
        self.twin.contract().n_neurons
    }

    /// Steps the twin on `ctx`, writes the compared neurons' predictions into `predicted` and
    /// compares them with `measured` (dF/F of every ROI). Returns the frame's fidelity, the trial
    /// that ended at this frame, if any, and the time the twin itself took.
    pub fn step(
        &mut self,
        frame_index: u64,
        ctx: &FrameContext,
        measured: &[f32],
        predicted: &mut [f32],
    ) -> Result<(FrameFidelity, Option<TrialOutput>, Duration), TwinError> {
        if measured.len() != self.n_rois {
            return Err(TwinError::Input {
                what: "measured dF/F row".into(),
                expected: format!("{} ROIs", self.n_rois),
                found: measured.len().to_string(),
            });
        }
        let t0 = Instant::now();
        self.run(ctx)?;
        let twin_time = t0.elapsed();
        for (j, &(k, col)) in self.pairs.iter().enumerate() {
            predicted[j] = self.out[k];
            self.measured[j] = measured[col];
        }
        let ended = self.trial_boundary(frame_index, ctx);
        let fid = self
            .comparator
            .push(&predicted[..self.pairs.len()], &self.measured);
        Ok((fid, ended, twin_time))
    }

    /// Steps the twin on a frame the loop has no measurement of (analysis skipped it): its
    /// recurrent state and the trial boundaries follow the stimulus, nothing is compared. Returns
    /// the trial that ended at this frame, if any.
    pub fn advance(
        &mut self,
        frame_index: u64,
        ctx: &FrameContext,
    ) -> Result<Option<TrialOutput>, TwinError> {
        self.run(ctx)?;
        Ok(self.trial_boundary(frame_index, ctx))
    }

    /// At a trial onset: closes the trial being compared and starts the next.
    fn trial_boundary(&mut self, frame_index: u64, ctx: &FrameContext) -> Option<TrialOutput> {
        if !self.onsets.is_onset(ctx) {
            return None;
        }
        let done = self.comparator.end_trial(self.trials);
        let mut ended = None;
        if let (Some((clip, start)), Some(row)) = (self.trial, done) {
            self.trials += 1;
            ended = Some(TrialOutput {
                clip,
                start_frame: start,
                predicted: row.predicted,
                measured: row.measured,
            });
        }
        self.trial = Some((ctx.clip, frame_index));
        ended
    }

    fn run(&mut self, ctx: &FrameContext) -> Result<(), TwinError> {
        if !self
            .clips
            .frame_into(ctx.clip, ctx.clip_frame, &mut self.stim)
        {
            return Err(TwinError::Input {
                what: "stimulus on screen".into(),
                expected: format!(
                    "a clip of the session's library ({} clips of {} frames)",
                    self.clips.len(),
                    self.clips.frames_per_clip
                ),
                found: format!("clip {} frame {}", ctx.clip, ctx.clip_frame),
            });
        }
        for (b, ch) in self.beh.iter_mut().zip(&self.channels) {
            *b = match ch {
                Channel::RunningSpeed => behavior_input("running_speed", ctx.running_speed),
                Channel::PupilDiameter => behavior_input("pupil_diameter", ctx.pupil_diameter),
            };
        }
        self.twin
            .step(&mut self.state, &self.stim, &self.beh, &mut self.out)
    }

    pub fn trials(&self) -> u64 {
        self.trials
    }

    pub fn fidelity(&self) -> FidelitySummary {
        self.comparator.summary()
    }
}
