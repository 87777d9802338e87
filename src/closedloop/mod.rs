//! The closed loop's decision stage, on its own thread (`loop`), after extraction.
//!
//! For each analysed frame it receives the measured dF/F of every ROI and the frame's context (the
//! stimulus on screen and the behaviour, from acquisition), then:
//! 1. steps the twin on that context ([`twin_step::TwinInLoop`]): the twin runs at the imaging
//!    rate on the stimulus the display actually presented, so its recurrent state follows the
//!    session;
//! 2. compares predicted with measured activity neuron by neuron (`compare::Comparator`): sliding
//!    window and session correlations, per-trial means, population fidelity, drift alarm;
//! 3. makes the scheduling decision for the display (`schedule`).
//!
//! Its outputs go to the sink in recycled buffers and are recorded under `twin/`. The stage never
//! holds up recording or extraction: in live runs the analysis thread hands it a frame only when
//! a buffer is free and counts the frames it had to skip (offline runs wait instead, so a replay
//! reproduces the run). A twin error stops the twin, not the session.

pub mod clips;
pub mod gain;
pub mod plan;
pub mod schedule;
pub mod stage;
pub mod twin_step;
pub mod worker;

use std::time::{Duration, Instant};

use serde::Serialize;

pub use clips::ClipStore;
pub use twin_step::TwinInLoop;

use crate::acquire::FrameContext;
use crate::compare::{FidelitySummary, FrameFidelity};

/// Finds trial starts in a stream of frame contexts. A trial is a clip onset up to the next
/// onset (the clip, then its gray interval); an onset is a different clip, or the same clip
/// starting over. The twin's per-trial means and the scheduler's decisions use the same rule.
#[derive(Debug, Clone, Copy)]
pub struct TrialOnsets {
    last: (i32, u32),
}

impl Default for TrialOnsets {
    fn default() -> Self {
        TrialOnsets { last: (-1, 0) }
    }
}

impl TrialOnsets {
    /// Whether `ctx` starts a trial.
    pub fn is_onset(&mut self, ctx: &FrameContext) -> bool {
        let onset = ctx.clip >= 0 && (ctx.clip != self.last.0 || ctx.clip_frame < self.last.1);
        self.last = (ctx.clip, ctx.clip_frame);
        onset
    }
}

/// What the `loop` thread runs.
pub struct LoopStage {
    pub twin: Option<TwinInLoop>,
    pub scheduler: Option<schedule::Scheduler>,
    /// Refreshed plans from the in-silico worker.
    pub plan_updates: Option<crossbeam::channel::Receiver<Vec<plan::PlanClip>>>,
    /// Deliberate extra time per twin step (config `twin.step_delay_ms`; tests only).
    pub delay: Duration,
    /// Where watchers (the dashboard) see the loop's outputs, `feed_window` frames deep.
    pub feed: Option<std::sync::Arc<crate::live::LoopFeed>>,
    pub feed_window: usize,
}

/// Every acquired frame's context also goes straight to the loop, in order, so that the twin's
/// recurrent state and the scheduler's trial onsets follow every frame, including the ones
/// analysis skipped. A small copy through a bounded channel: nothing allocated per frame.
#[derive(Debug, Clone, Copy)]
pub struct FrameStamp {
    pub index: u64,
    pub context: Option<FrameContext>,
}

/// Frame contexts queued for the loop at most (about two minutes at 30 Hz).
pub const CONTEXT_BACKLOG: usize = 4096;

/// One analysed frame handed to the loop (buffers recycled).
pub struct LoopInput {
    pub frame_index: u64,
    pub time: f64,
    pub context: Option<FrameContext>,
    /// dF/F of every ROI, in ROI-table order.
    pub measured: Vec<f32>,
    /// When the frame arrived from acquisition.
    pub arrived: Instant,
    /// It arrived during start-up (the extractor's reference warm-up): not a steady-state
    /// latency sample.
    pub startup: bool,
}

/// A trial the loop compared: its clip, first frame and mean responses.
#[derive(Debug, Clone)]
pub struct TrialOutput {
    pub clip: i32,
    pub start_frame: u64,
    pub predicted: Vec<f32>,
    pub measured: Vec<f32>,
}

/// What the loop produced for one frame, for the recorder (buffers recycled).
pub struct LoopOutput {
    pub frame_index: u64,
    pub time: f64,
    /// Predicted response of each compared neuron; empty when the twin did not step.
    pub predicted: Vec<f32>,
    pub fidelity: FrameFidelity,
    /// A trial that ended at this frame.
    pub trial: Option<TrialOutput>,
}

/// The loop's figures for the run report.
#[derive(Debug, Clone, Serialize)]
pub struct LoopSummary {
    /// Frames the loop received.
    pub frames: u64,
    /// Analysed frames the loop did not get because it was behind (live runs only).
    pub frames_skipped: u64,
    /// Frame contexts acquisition could not queue for the loop (it was [`CONTEXT_BACKLOG`]
    /// frames behind).
    pub contexts_dropped: u64,
    /// Index of the first of those (the twin's state skipped it).
    pub first_context_dropped: Option<u64>,
    /// Trials the scheduler queued on the display.
    pub trials_scheduled: u64,
    /// Ids of the clips added from refreshed in-silico plans, per refresh.
    pub plan_clips_added: Vec<Vec<i32>>,
    pub twin: Option<TwinSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TwinSummary {
    pub model: String,
    pub device: String,
    /// Twin neurons found in the session's ROI table (the ones compared).
    pub neurons_compared: usize,
    pub neurons_in_model: usize,
    /// Frames the twin was stepped on and compared (the rows of `twin/predicted`).
    pub frames_stepped: u64,
    /// Frames the loop did not get (analysis skipped them, or the loop was busy) that the twin
    /// was still stepped on, so its recurrent state followed every stimulus frame.
    pub frames_caught_up: u64,
    /// Frames the twin never saw: the loop was behind real time by more than
    /// [`stage::CATCH_UP_WINDOW`], or they came after the last frame the loop got. Its state
    /// skipped them (as it skipped any counted in `LoopSummary::contexts_dropped`).
    pub frames_not_stepped: u64,
    /// Index of the first frame not stepped: up to it the twin's state followed every frame.
    pub first_frame_not_stepped: Option<u64>,
    /// Frames without a known stimulus (e.g. a live stream without a display context).
    pub frames_without_context: u64,
    pub trials: u64,
    pub error: Option<String>,
    pub fidelity: FidelitySummary,
}
