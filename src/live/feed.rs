//! The closed loop's latest outputs, kept for watchers: the last window of predicted and measured
//! dF/F of every compared neuron, the population fidelity history, the stimulus on screen, the
//! per-clip trial responses so far, the plan being shown, and the field of view's map.
//!
//! Written by the `loop` thread, one frame at a time, into memory allocated when the neurons are
//! known ([`LoopFeed::set_neurons`]); a new clip's trial sums are the only allocation after that
//! (once per clip, at a trial's end). The writer takes the lock with `try_lock`: when a reader
//! holds it (a copy, well under a millisecond, a few times a second) the frame is counted in
//! [`LoopFeed::missed`] and left out, never waited for. Trial ends are kept until the next frame
//! that gets the lock, so none is lost.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use serde::Serialize;

use crate::session::RoiTable;

/// Population fidelity points kept (10 minutes at 30 Hz).
pub const FIDELITY_HISTORY: usize = 18_000;

/// The field of view as the dashboard draws it: a mean image and the ROI masks.
#[derive(Debug, Clone)]
pub struct FieldMap {
    pub height: usize,
    pub width: usize,
    /// Row-major mean of the first frames (the extractor's warm-up).
    pub mean: Vec<f32>,
    pub rois: RoiTable,
}

/// A stimulus of the plan being shown, as the scheduler filed it.
#[derive(Debug, Clone, Serialize)]
pub struct PlanEntry {
    /// Clip id in the session's library.
    pub clip: i32,
    /// ROI id the stimulus was found for, -1 for a group goal.
    pub goal: i64,
    pub rank: u32,
    pub family: String,
    /// A control: the rank of the plan stimulus it is the control of.
    pub control_of: Option<u32>,
    /// The clip's middle frame, row-major u8.
    #[serde(skip)]
    pub thumbnail: Vec<u8>,
}

/// Sums of one clip's trial means, per compared neuron.
#[derive(Debug, Clone, Default)]
pub struct ClipSums {
    pub trials: u64,
    pub predicted: Vec<f64>,
    pub measured: Vec<f64>,
}

/// The stimulus on screen at the latest frame.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct OnScreen {
    pub clip: i32,
    pub clip_frame: u32,
    pub running_speed: f32,
    /// Trials the loop has compared so far.
    pub trials: u64,
}

/// A trial's clip and per-neuron mean responses (predicted, measured).
type TrialEnd = (i32, Vec<f32>, Vec<f32>);

#[derive(Default)]
struct Feed {
    roi_ids: Vec<u32>,
    window: usize,
    /// Rings of the last `window` frames, `[window][n]`.
    predicted: Vec<f32>,
    measured: Vec<f32>,
    frames: Vec<u64>,
    times: Vec<f64>,
    len: usize,
    /// Next row to write.
    pos: usize,
    /// (time s, population fidelity, alarm)
    fidelity: VecDeque<(f64, f32, bool)>,
    stim_shape: (usize, usize),
    stimulus: Vec<f32>,
    on_screen: Option<OnScreen>,
    clips: BTreeMap<i32, ClipSums>,
}

/// See the module docs.
pub struct LoopFeed {
    feed: Mutex<Feed>,
    /// Trial ends waiting for the lock.
    pending: Mutex<Vec<TrialEnd>>,
    map: OnceLock<FieldMap>,
    plan: Mutex<Vec<PlanEntry>>,
    /// The lowest clip id any plan of the session has used: the clips below it are the natural
    /// library (as `closedloop::gain` counts them), whatever plan is shown now.
    first_plan_clip: std::sync::atomic::AtomicI32,
    /// Frames written.
    pub published: AtomicU64,
    /// Frames left out because a reader held the feed.
    pub missed: AtomicU64,
}

/// A reader's copy of the feed, taken in one short lock.
#[derive(Debug, Clone, Default)]
pub struct FeedCopy {
    pub roi_ids: Vec<u32>,
    /// Frames in the copy, oldest first; `predicted`/`measured` are `[frames][n]`.
    pub frames: Vec<u64>,
    pub times: Vec<f64>,
    pub predicted: Vec<f32>,
    pub measured: Vec<f32>,
    pub fidelity: Vec<(f64, f32, bool)>,
    pub stim_shape: (usize, usize),
    pub stimulus: Vec<f32>,
    pub on_screen: Option<OnScreen>,
    pub clips: BTreeMap<i32, ClipSums>,
}

impl Default for LoopFeed {
    fn default() -> Self {
        LoopFeed {
            feed: Mutex::new(Feed::default()),
            pending: Mutex::new(Vec::new()),
            map: OnceLock::new(),
            plan: Mutex::new(Vec::new()),
            first_plan_clip: std::sync::atomic::AtomicI32::new(i32::MAX),
            published: AtomicU64::new(0),
            missed: AtomicU64::new(0),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LoopFeed {
    /// Allocates the rings for `roi_ids` (the compared neurons, in the loop's prediction order),
    /// `window` frames deep, and the stimulus frame (`h x w`).
    pub fn set_neurons(&self, roi_ids: &[u32], window: usize, stim_shape: (usize, usize)) {
        let n = roi_ids.len();
        let window = window.max(1);
        let mut f = lock(&self.feed);
        *f = Feed {
            roi_ids: roi_ids.to_vec(),
            window,
            predicted: vec![0.0; window * n],
            measured: vec![0.0; window * n],
            frames: vec![0; window],
            times: vec![0.0; window],
            fidelity: VecDeque::with_capacity(FIDELITY_HISTORY),
            stim_shape,
            stimulus: vec![0.0; stim_shape.0 * stim_shape.1],
            ..Feed::default()
        };
    }

    pub fn set_map(&self, map: FieldMap) {
        let _ = self.map.set(map);
    }

    pub fn map(&self) -> Option<&FieldMap> {
        self.map.get()
    }

    /// Replaces the plan being shown.
    pub fn set_plan(&self, plan: Vec<PlanEntry>) {
        if let Some(first) = plan.iter().map(|e| e.clip).min() {
            self.first_plan_clip.fetch_min(first, Ordering::Relaxed);
        }
        *lock(&self.plan) = plan;
    }

    /// Clips with ids below this are natural library clips (`i32::MAX` before any plan).
    pub fn first_plan_clip(&self) -> i32 {
        self.first_plan_clip.load(Ordering::Relaxed)
    }

    pub fn plan(&self) -> Vec<PlanEntry> {
        lock(&self.plan).clone()
    }

    /// A trial the loop compared: its clip and per-neuron mean responses. Kept until a frame
    /// gets the lock.
    pub fn trial(&self, clip: i32, predicted: &[f32], measured: &[f32]) {
        lock(&self.pending).push((clip, predicted.to_vec(), measured.to_vec()));
    }

    /// One compared frame. Never waits: see the module docs.
    #[allow(clippy::too_many_arguments)]
    pub fn frame(
        &self,
        index: u64,
        time: f64,
        predicted: &[f32],
        measured: &[f32],
        fidelity: f64,
        alarm: bool,
        on_screen: OnScreen,
        stimulus: &[f32],
    ) {
        let Ok(mut f) = self.feed.try_lock() else {
            self.missed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let n = f.roi_ids.len();
        if n == 0 || predicted.len() < n || measured.len() < n {
            return;
        }
        let pos = f.pos;
        f.predicted[pos * n..(pos + 1) * n].copy_from_slice(&predicted[..n]);
        f.measured[pos * n..(pos + 1) * n].copy_from_slice(&measured[..n]);
        f.frames[pos] = index;
        f.times[pos] = time;
        f.pos = (pos + 1) % f.window;
        f.len = (f.len + 1).min(f.window);
        if f.fidelity.len() == FIDELITY_HISTORY {
            f.fidelity.pop_front();
        }
        f.fidelity.push_back((time, fidelity as f32, alarm));
        if f.stimulus.len() == stimulus.len() {
            f.stimulus.copy_from_slice(stimulus);
        }
        f.on_screen = Some(on_screen);
        if let Ok(mut pending) = self.pending.try_lock() {
            for (clip, p, m) in pending.drain(..) {
                let s = f.clips.entry(clip).or_insert_with(|| ClipSums {
                    trials: 0,
                    predicted: vec![0.0; n],
                    measured: vec![0.0; n],
                });
                s.trials += 1;
                for (a, &b) in s.predicted.iter_mut().zip(&p) {
                    *a += f64::from(b);
                }
                for (a, &b) in s.measured.iter_mut().zip(&m) {
                    *a += f64::from(b);
                }
            }
        }
        self.published.fetch_add(1, Ordering::Relaxed);
    }

    /// Everything, oldest frame first. Holds the lock for the copy only.
    pub fn copy(&self) -> FeedCopy {
        let f = lock(&self.feed);
        let n = f.roi_ids.len();
        let start = if f.len < f.window { 0 } else { f.pos };
        let mut c = FeedCopy {
            roi_ids: f.roi_ids.clone(),
            frames: Vec::with_capacity(f.len),
            times: Vec::with_capacity(f.len),
            predicted: Vec::with_capacity(f.len * n),
            measured: Vec::with_capacity(f.len * n),
            fidelity: f.fidelity.iter().copied().collect(),
            stim_shape: f.stim_shape,
            stimulus: f.stimulus.clone(),
            on_screen: f.on_screen,
            clips: f.clips.clone(),
        };
        for k in 0..f.len {
            let r = (start + k) % f.window;
            c.frames.push(f.frames[r]);
            c.times.push(f.times[r]);
            c.predicted
                .extend_from_slice(&f.predicted[r * n..(r + 1) * n]);
            c.measured
                .extend_from_slice(&f.measured[r * n..(r + 1) * n]);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_the_last_frames_in_order() {
        let feed = LoopFeed::default();
        feed.set_neurons(&[7, 9], 3, (1, 2));
        let on = OnScreen::default();
        for i in 0..5u64 {
            let v = i as f32;
            feed.frame(
                i,
                v as f64,
                &[v, -v],
                &[v + 0.5, 0.0],
                0.1,
                false,
                on,
                &[v, v],
            );
        }
        let c = feed.copy();
        assert_eq!(c.frames, vec![2, 3, 4]);
        assert_eq!(c.predicted, vec![2.0, -2.0, 3.0, -3.0, 4.0, -4.0]);
        assert_eq!(c.measured[4], 4.5);
        assert_eq!(c.fidelity.len(), 5);
        assert_eq!(c.stimulus, vec![4.0, 4.0]);
        assert_eq!(feed.published.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn trial_ends_wait_for_the_lock_and_are_summed_per_clip() {
        let feed = LoopFeed::default();
        feed.set_neurons(&[1], 4, (1, 1));
        let on = OnScreen::default();
        feed.trial(3, &[1.0], &[2.0]);
        {
            // A reader holds the feed: the frame is counted as missed, the trial stays pending.
            let _reader = feed.feed.lock().unwrap();
            feed.frame(0, 0.0, &[0.0], &[0.0], 0.0, false, on, &[0.0]);
        }
        assert_eq!(feed.missed.load(Ordering::Relaxed), 1);
        assert!(feed.copy().clips.is_empty());
        feed.trial(3, &[3.0], &[4.0]);
        feed.frame(1, 0.0, &[0.0], &[0.0], 0.0, false, on, &[0.0]);
        let c = feed.copy();
        let s = &c.clips[&3];
        assert_eq!(s.trials, 2);
        assert_eq!((s.predicted[0], s.measured[0]), (4.0, 6.0));
    }
}
