//! What a running session shows the outside while it runs: counters, latency histograms and the
//! closed loop's latest outputs.
//!
//! A leaf below the stages: acquisition, analysis, the recorder and the loop write here, and the
//! watchers (the control endpoint, the dashboard) read here, so no watcher imports a stage and no
//! stage imports another to share a counter.
//!
//! Invariant: a stage never waits for a watcher. Counters are relaxed atomics; the loop's feed is
//! written under `try_lock` and a frame a reader happened to hold the lock for is counted, not
//! waited for (`LoopFeed::missed`).

pub mod feed;
pub mod latency;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

pub use feed::LoopFeed;
use latency::LiveLatency;

use crate::ring::RingCounters;

/// Counters a status request or the dashboard reads while the pipeline runs.
#[derive(Debug, Default)]
pub struct LiveCounters {
    pub frames_in: AtomicU64,
    pub frames_analysed: AtomicU64,
    pub frames_recorded: AtomicU64,
    /// Analysed frames the loop did not get (it was behind).
    pub loop_skipped: AtomicU64,
    /// Frames the twin was stepped on.
    pub twin_frames: AtomicU64,
    /// Latest population fidelity, as `f64::to_bits` (0 = none yet).
    pub twin_fidelity_bits: AtomicU64,
    pub twin_alarm: AtomicBool,
    /// In-silico plans the scheduler has taken up during the session.
    pub plan_refreshes: AtomicU64,
    /// Every stage's latency so far.
    pub latency: Arc<LiveLatency>,
    /// The recorder's and the analysis' frame rings, once the pipeline has made them.
    pub rings: OnceLock<(Arc<RingCounters>, Arc<RingCounters>)>,
}

/// The frame counters at one moment.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct FrameCounts {
    pub frames_in: u64,
    pub recorded: u64,
    pub analysed: u64,
    /// Frames analysis passed over (the analysis ring's skips).
    pub skipped: u64,
    /// Analysed frames the loop did not get.
    pub loop_skipped: u64,
    /// Frames the recorder's ring dropped (it blocks instead, so anything here is a fault).
    pub lost: u64,
    /// Times acquisition waited for the recorder.
    pub recorder_backpressure: u64,
    /// Frames acquired but not yet on disk.
    pub recorder_backlog: u64,
}

impl LiveCounters {
    pub fn counts(&self) -> FrameCounts {
        let r = Ordering::Relaxed;
        let frames_in = self.frames_in.load(r);
        let recorded = self.frames_recorded.load(r);
        let (lost, backpressure, skipped) = match self.rings.get() {
            Some((rec, ana)) => (
                rec.skipped.load(r),
                rec.backpressure_events.load(r),
                ana.skipped.load(r),
            ),
            None => (0, 0, 0),
        };
        FrameCounts {
            frames_in,
            recorded,
            analysed: self.frames_analysed.load(r),
            skipped,
            loop_skipped: self.loop_skipped.load(r),
            lost,
            recorder_backpressure: backpressure,
            recorder_backlog: frames_in.saturating_sub(recorded),
        }
    }

    /// Latest population fidelity, once the first window has filled.
    pub fn fidelity(&self) -> Option<f64> {
        match self.twin_fidelity_bits.load(Ordering::Relaxed) {
            0 => None,
            bits => Some(f64::from_bits(bits)),
        }
    }
}
