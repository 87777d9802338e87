//! A live rig's frame context: what was on screen and what the mouse did at each imaging frame,
//! rebuilt on the rig clock from what the rig reports, because a live frame stream carries
//! neither.
//!
//! - The screen: the presenter's flip reports (`rig present`, driven by the live trial runner in
//!   `daemon::presenter`), each shifted by the display's lag, which the sync board's photodiode
//!   measures: every flip toggles the photodiode patch, so an edge of level `L` belongs to a flip
//!   that drew `L`. The patch alternates, so an edge only says the lag modulo two refresh periods:
//!   it is matched to the flip whose lag is nearest the configured one (`display.lag_ms`), within
//!   one refresh period either side, and the lag is the median over the last [`LAG_SAMPLES`]
//!   matched edges. Without a photodiode the configured lag is used as it is.
//! - Running: the treadmill encoder's counts from the sync board, differenced over
//!   [`SPEED_WINDOW_S`]. Pupil: a live rig has no pupil camera in this pipeline, so it is
//!   unmeasured (NaN, recorded as such); the twin is fed the channel's resting value
//!   (`twin::unmeasured_behavior`), offline as live.
//!
//! The flips a frame's context is looked up in are exactly the ones recorded in the session's
//! `stimulus/flips` (same times, same at-or-before rule as `session::reader::holds_at`), so the
//! twin stepped live and `rig twin predict` on the recording see the same stimulus. A frame may
//! arrive before the report of a flip that preceded it: [`LiveContextSource`] then waits, at most
//! [`MAX_WAIT`], for the reports to catch up, and counts the frames it gave up on. A flip whose
//! report comes after a frame at or past its time was already looked up is recorded just after
//! that frame (counted as `flips_deferred`): the record keeps saying what the twin saw. While the
//! presenter is away the screen is gray (the presenter shows gray without a client): a gray flip
//! is recorded at the disconnection and frames look that up.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam::channel::Sender;
use serde::Serialize;

use super::{AcquireError, FrameContext, FrameInfo, FrameSource};
use crate::pipeline::events::SessionEvent;
use crate::session::reader::holds_at;

/// Photodiode edges the display-lag estimate is the median of.
pub const LAG_SAMPLES: usize = 64;
/// Edges needed before the lag estimate is used.
pub const LAG_MIN_SAMPLES: usize = 8;
/// Running speed: encoder counts differenced over this window, seconds.
pub const SPEED_WINDOW_S: f64 = 0.1;
/// Longest a frame waits for the flip reports to reach its time.
pub const MAX_WAIT: Duration = Duration::from_millis(50);
/// Flips kept for lookups, seconds of screen time.
const KEEP_FLIPS_S: f64 = 5.0;
/// Encoder samples kept, seconds.
const KEEP_ENCODER_S: f64 = 2.0;
/// An encoder silent for this long is a wheel at rest (boards that report on change).
const ENCODER_REST_S: f64 = 1.0;

/// One flip as it is recorded and looked up: rig-clock time the frame reached the screen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShownFlip {
    pub time: f64,
    pub clip: i32,
    pub frame: u32,
}

/// The display's lag from flip report to photodiode edge.
#[derive(Debug, Default)]
pub struct DisplayLag {
    /// Recent flips, raw presenter times and the patch level each drew.
    flips: VecDeque<(f64, u8)>,
    samples: VecDeque<f64>,
    /// The configured lag, seconds: edges are matched within a period of it.
    prior: f64,
    period: f64,
    estimate: f64,
    matched: u64,
    unmatched: u64,
}

impl DisplayLag {
    /// `refresh_hz`: the display's rate; `prior_s`: the lag the config expects (0 for a display
    /// with no lag to speak of).
    pub fn new(refresh_hz: f64, prior_s: f64) -> Self {
        DisplayLag {
            prior: prior_s.max(0.0),
            period: 1.0 / refresh_hz.max(1.0),
            estimate: prior_s.max(0.0),
            ..Default::default()
        }
    }

    pub fn on_flip(&mut self, time: f64, level: u8) {
        self.flips.push_back((time, level));
        while self.flips.len() > 16 {
            self.flips.pop_front();
        }
    }

    pub fn on_edge(&mut self, time: f64, level: u8) {
        // Flips of one level are two periods apart: at most one lies within a period of the
        // configured lag.
        let m = self.flips.iter().rev().find(|&&(t, l)| {
            l == level && t <= time && (time - t - self.prior).abs() < self.period
        });
        let Some(&(t, _)) = m else {
            self.unmatched += 1;
            return;
        };
        self.matched += 1;
        self.samples.push_back(time - t);
        while self.samples.len() > LAG_SAMPLES {
            self.samples.pop_front();
        }
        if self.samples.len() >= LAG_MIN_SAMPLES {
            let mut s: Vec<f64> = self.samples.iter().copied().collect();
            s.sort_by(|a, b| a.total_cmp(b));
            self.estimate = s[s.len() / 2];
        }
    }

    /// Seconds to add to a flip report's time (the configured lag until enough edges were
    /// matched).
    pub fn lag(&self) -> f64 {
        self.estimate
    }

    pub fn is_measured(&self) -> bool {
        self.samples.len() >= LAG_MIN_SAMPLES
    }
}

/// What a live run knows of its frames' context, for the run report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LiveContextReport {
    pub frames: u64,
    /// Frames given a context (the twin stepped on these).
    pub with_context: u64,
    /// Frames that had to wait for the flip reports to reach their time.
    pub waited: u64,
    /// Frames whose wait ran out ([`MAX_WAIT`]): their context is the best known, and may differ
    /// from what the recorded flips say.
    pub late: u64,
    /// Index of the first late frame: the twin's inputs (and so its recurrent state) are exactly
    /// what `rig twin predict` rebuilds from the file up to it (`None`: no frame was late).
    pub first_late_frame: Option<u64>,
    /// Frames without a context: no presenter, or no flip yet.
    pub without_context: u64,
    /// Flips reported after a frame at or past their time had been looked up: recorded just after
    /// that frame, as the twin saw them.
    pub flips_deferred: u64,
    /// Times the presenter went away (a gray flip recorded each time).
    pub presenter_gone: u64,
    /// Display lag from flip report to photodiode edge, ms (`None`: no photodiode edges matched).
    pub display_lag_ms: Option<f64>,
    pub photodiode_edges_matched: u64,
    pub photodiode_edges_unmatched: u64,
    /// Encoder samples from the sync board (0: running speed unmeasured).
    pub encoder_samples: u64,
}

#[derive(Debug)]
struct Inner {
    flips: VecDeque<ShownFlip>,
    /// Flips were dropped from the front (lookups before the first kept one are unknown).
    trimmed: bool,
    presenter_up: bool,
    /// The latest frame time a lookup answered: no flip may be recorded at or before it.
    settled: f64,
    lag: DisplayLag,
    encoder: VecDeque<(f64, i32)>,
    report: LiveContextReport,
}

/// The answer for one frame time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lookup {
    Known(FrameContext),
    /// A flip at or before the time may not have been reported yet.
    Pending,
    /// Nothing to go on (no presenter, or the time is before what is kept).
    Unknown,
}

/// The shared timeline: the presenter thread adds flips, the sync thread photodiode edges and
/// encoder counts, acquisition looks frames up.
#[derive(Debug)]
pub struct LiveContext {
    inner: Mutex<Inner>,
    period: f64,
    cm_per_count: f64,
}

impl LiveContext {
    /// `lag_s`: the display's lag the config expects (`display.lag_ms`).
    pub fn new(refresh_hz: f64, lag_s: f64, cm_per_count: f64) -> Arc<Self> {
        Arc::new(LiveContext {
            inner: Mutex::new(Inner {
                flips: VecDeque::with_capacity(1024),
                trimmed: false,
                presenter_up: false,
                settled: f64::NEG_INFINITY,
                lag: DisplayLag::new(refresh_hz, lag_s),
                encoder: VecDeque::with_capacity(4096),
                report: LiveContextReport::default(),
            }),
            period: 1.0 / refresh_hz.max(1.0),
            cm_per_count,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The presenter is connected (again).
    pub fn set_presenter_up(&self) {
        self.lock().presenter_up = true;
    }

    /// The presenter went away at rig time `time`: it shows gray without a client, so a gray
    /// flip is recorded then (returned, for the session) and frames see gray until it is back.
    pub fn set_presenter_down(&self, time: f64) -> ShownFlip {
        let f = self.push_shown(time, -1, 0);
        let mut g = self.lock();
        g.presenter_up = false;
        g.report.presenter_gone += 1;
        f
    }

    /// A flip the presenter reported (`time` on the rig clock, `level` the patch it drew).
    /// Returns the flip as the session records it: shifted by the display lag, and never before
    /// the previous one.
    pub fn push_flip(&self, time: f64, clip: i32, frame: u32, level: u8) -> ShownFlip {
        let lag = {
            let mut g = self.lock();
            g.lag.on_flip(time, level);
            g.lag.lag()
        };
        self.push_shown(time + lag, clip, frame)
    }

    /// Files a flip at `time` (rig clock, lag applied), after every flip and every frame already
    /// looked up.
    fn push_shown(&self, time: f64, clip: i32, frame: u32) -> ShownFlip {
        let mut g = self.lock();
        let mut t = time;
        if let Some(last) = g.flips.back() {
            t = t.max(last.time + 1e-6);
        }
        if holds_at(t, g.settled) {
            t = g.settled + 1e-6;
            g.report.flips_deferred += 1;
        }
        let f = ShownFlip {
            time: t,
            clip,
            frame,
        };
        g.flips.push_back(f);
        while g.flips.front().is_some_and(|x| x.time < t - KEEP_FLIPS_S) {
            g.flips.pop_front();
            g.trimmed = true;
        }
        f
    }

    /// A photodiode edge from the sync board.
    pub fn push_photodiode(&self, time: f64, level: u8) {
        self.lock().lag.on_edge(time, level);
    }

    /// A treadmill encoder sample from the sync board.
    pub fn push_encoder(&self, time: f64, position: i32) {
        let mut g = self.lock();
        g.report.encoder_samples += 1;
        g.encoder.push_back((time, position));
        while g
            .encoder
            .front()
            .is_some_and(|x| x.0 < time - KEEP_ENCODER_S)
        {
            g.encoder.pop_front();
        }
    }

    /// The screen and the behaviour at rig time `t`.
    pub fn at(&self, t: f64) -> Lookup {
        let mut g = self.lock();
        // A presenter that has not reported its first flip yet (the start of a session) is
        // waited for like a late report.
        let Some(last) = g.flips.back() else {
            return if g.presenter_up {
                Lookup::Pending
            } else {
                Lookup::Unknown
            };
        };
        // Flips come one refresh period apart: unless the next one is surely after `t`, its
        // report may still be on the way (a presenter that is away sends none).
        if g.presenter_up && last.time + 0.75 * self.period <= t {
            return Lookup::Pending;
        }
        self.known(&mut g, t)
    }

    /// The best answer now, even if a flip report may be missing.
    pub fn at_anyway(&self, t: f64) -> Lookup {
        let mut g = self.lock();
        if g.flips.is_empty() {
            return Lookup::Unknown;
        }
        self.known(&mut g, t)
    }

    fn known(&self, g: &mut Inner, t: f64) -> Lookup {
        let n = g.flips.partition_point(|f| holds_at(f.time, t));
        let (clip, clip_frame) = match n.checked_sub(1) {
            Some(j) => (g.flips[j].clip, g.flips[j].frame),
            // Before the first flip of the session the screen is gray, as offline; before the
            // first one kept, nothing is known.
            None if !g.trimmed => (-1, 0),
            None => return Lookup::Unknown,
        };
        g.settled = g.settled.max(t);
        Lookup::Known(FrameContext {
            clip,
            clip_frame,
            running_speed: self.speed_at(g, t),
            pupil_diameter: f32::NAN,
        })
    }

    fn speed_at(&self, g: &Inner, t: f64) -> f32 {
        let n = g.encoder.partition_point(|e| holds_at(e.0, t));
        let Some(j) = n.checked_sub(1) else {
            return f32::NAN;
        };
        let (tj, pj) = g.encoder[j];
        if t - tj > ENCODER_REST_S {
            return 0.0;
        }
        let i = g
            .encoder
            .partition_point(|e| holds_at(e.0, tj - SPEED_WINDOW_S));
        let (ti, pi) = g.encoder[i.saturating_sub(1).min(j)];
        if tj - ti <= 0.0 {
            // One sample: the first ever (no speed yet), or the first after a rest longer than
            // the samples kept (an encoder that reports on change).
            return if g.report.encoder_samples > 1 {
                0.0
            } else {
                f32::NAN
            };
        }
        ((pj.wrapping_sub(pi)) as f64 * self.cm_per_count / (tj - ti)) as f32
    }

    pub fn report(&self) -> LiveContextReport {
        let g = self.lock();
        let mut r = g.report.clone();
        r.display_lag_ms = g.lag.is_measured().then(|| g.lag.lag() * 1e3);
        r.photodiode_edges_matched = g.lag.matched;
        r.photodiode_edges_unmatched = g.lag.unmatched;
        r
    }

    fn count(&self, f: impl FnOnce(&mut LiveContextReport)) {
        f(&mut self.lock().report)
    }
}

/// A live frame source with each frame's context looked up in a [`LiveContext`]; records the
/// behaviour it used at every frame (`behavior/*`), so the session replays what the twin saw.
pub struct LiveContextSource<S> {
    inner: S,
    ctx: Arc<LiveContext>,
    events: Sender<SessionEvent>,
    /// Frames in a row that gave up waiting: past [`MAX_LATE_STREAK`] the flip reports have
    /// stopped (a presenter that hangs without disconnecting), and frames stop waiting for them,
    /// so acquisition keeps the frame rate.
    late_streak: u32,
}

/// See [`LiveContextSource`]'s `late_streak`.
pub const MAX_LATE_STREAK: u32 = 3;

impl<S: FrameSource> LiveContextSource<S> {
    pub fn new(inner: S, ctx: Arc<LiveContext>, events: Sender<SessionEvent>) -> Self {
        LiveContextSource {
            inner,
            ctx,
            events,
            late_streak: 0,
        }
    }

    /// The context at `t`, and whether its wait ran out.
    fn context(&mut self, t: f64) -> (Option<FrameContext>, bool) {
        let start = Instant::now();
        let mut late = false;
        let mut waited = false;
        let patience = if self.late_streak >= MAX_LATE_STREAK {
            Duration::ZERO
        } else {
            MAX_WAIT
        };
        let found = loop {
            match self.ctx.at(t) {
                Lookup::Known(c) => {
                    self.late_streak = 0;
                    break Some(c);
                }
                Lookup::Unknown => break None,
                Lookup::Pending if start.elapsed() >= patience => {
                    self.late_streak = self.late_streak.saturating_add(1);
                    self.ctx.count(|r| r.late += 1);
                    late = true;
                    break match self.ctx.at_anyway(t) {
                        Lookup::Known(c) => Some(c),
                        _ => None,
                    };
                }
                Lookup::Pending => {
                    waited = true;
                    std::thread::sleep(Duration::from_micros(250));
                }
            }
        };
        self.ctx.count(|r| {
            r.frames += 1;
            r.waited += u64::from(waited);
            if found.is_some() {
                r.with_context += 1;
            } else {
                r.without_context += 1;
            }
        });
        (found, late)
    }
}

impl<S: FrameSource> FrameSource for LiveContextSource<S> {
    fn height(&self) -> usize {
        self.inner.height()
    }
    fn width(&self) -> usize {
        self.inner.width()
    }
    fn len_hint(&self) -> Option<u64> {
        self.inner.len_hint()
    }
    fn next_frame(&mut self, out: &mut [u16]) -> Result<Option<FrameInfo>, AcquireError> {
        let Some(mut info) = self.inner.next_frame(out)? else {
            return Ok(None);
        };
        let (context, late) = self.context(info.time);
        info.context = context;
        if late {
            let index = info.index;
            self.ctx
                .count(|r| r.first_late_frame = r.first_late_frame.or(Some(index)));
        }
        let (speed, pupil) = info.context.map_or_else(
            || {
                let g = self.ctx.lock();
                (self.ctx.speed_at(&g, info.time), f32::NAN)
            },
            |c| (c.running_speed, c.pupil_diameter),
        );
        // Sent before the frame, like every source's events, so the recording holds the
        // behaviour of every frame it holds.
        self.events
            .send(SessionEvent::Behavior {
                time: info.time,
                speed,
                pupil,
            })
            .map_err(|_| AcquireError::Invalid("the recorder stopped taking events".into()))?;
        Ok(Some(info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx_with_flips(n: usize) -> Arc<LiveContext> {
        let c = LiveContext::new(60.0, 0.0, 0.05);
        c.set_presenter_up();
        for k in 0..n {
            c.push_flip(
                k as f64 / 60.0,
                (k / 10) as i32,
                (k % 10) as u32,
                (k % 2) as u8,
            );
        }
        c
    }

    #[test]
    fn a_frame_sees_the_last_flip_at_or_before_it_and_waits_for_a_missing_report() {
        let c = ctx_with_flips(30);
        let at = |t: f64| match c.at(t) {
            Lookup::Known(x) => Some((x.clip, x.clip_frame)),
            _ => None,
        };
        assert_eq!(at(0.0), Some((0, 0)));
        assert_eq!(at(11.0 / 60.0), Some((1, 1)));
        assert_eq!(at(11.5 / 60.0), Some((1, 1)));
        // Past the last report by most of a period: the next flip may be on its way.
        assert_eq!(c.at(29.8 / 60.0), Lookup::Pending);
        assert!(matches!(c.at_anyway(29.8 / 60.0), Lookup::Known(_)));
        // A flip reported after a frame past its time was looked up is filed after that frame.
        let late = c.push_flip(29.0 / 60.0 + 0.005, 9, 0, 1);
        assert!(late.time > 29.8 / 60.0, "{late:?}");
        assert_eq!(c.report().flips_deferred, 1);
        // Gone: gray from the disconnection on, without waiting.
        let gone = c.set_presenter_down(0.6);
        assert_eq!(gone.clip, -1);
        assert!(matches!(c.at(0.7), Lookup::Known(x) if x.clip == -1));
        // Up, but no flip reported yet: wait for it; give up with nothing known.
        let fresh = LiveContext::new(60.0, 0.0, 0.05);
        fresh.set_presenter_up();
        assert_eq!(fresh.at(0.1), Lookup::Pending);
        assert_eq!(fresh.at_anyway(0.1), Lookup::Unknown);
    }

    /// Frames at 30 Hz from t = 1 s, no pixels.
    struct Clocked(u64);

    impl FrameSource for Clocked {
        fn height(&self) -> usize {
            1
        }
        fn width(&self) -> usize {
            1
        }
        fn len_hint(&self) -> Option<u64> {
            None
        }
        fn next_frame(&mut self, _out: &mut [u16]) -> Result<Option<FrameInfo>, AcquireError> {
            self.0 += 1;
            Ok(Some(FrameInfo {
                index: self.0 - 1,
                time: 1.0 + self.0 as f64 / 30.0,
                context: None,
            }))
        }
    }

    #[test]
    fn frames_stop_waiting_for_a_presenter_whose_reports_stopped() {
        // Flips up to 0.5 s, then silence from a presenter that is still connected.
        let c = ctx_with_flips(30);
        let (tx, rx) = crossbeam::channel::unbounded();
        let mut src = LiveContextSource::new(Clocked(0), c.clone(), tx);
        let mut px = [0u16; 1];
        for _ in 0..10 {
            let info = src.next_frame(&mut px).unwrap().unwrap();
            // The best known context: the last flip's clip.
            assert_eq!(info.context.map(|x| x.clip), Some(2));
        }
        let r = c.report();
        assert_eq!((r.frames, r.late, r.with_context), (10, 10, 10));
        // Only the first MAX_LATE_STREAK frames waited.
        assert_eq!(r.waited, u64::from(MAX_LATE_STREAK));
        // Each frame's behaviour went to the recorder.
        assert_eq!(rx.try_iter().count(), 10);
    }

    #[test]
    fn photodiode_edges_measure_the_display_lag_and_shift_later_flips() {
        // A 12.3 ms display, configured as 10 ms.
        let c = LiveContext::new(60.0, 0.010, 0.05);
        c.set_presenter_up();
        let lag = 0.0123;
        let mut last = None;
        for k in 0..40 {
            let t = k as f64 / 60.0;
            let f = c.push_flip(t, 0, 0, (k % 2) as u8);
            c.push_photodiode(t + lag, (k % 2) as u8);
            last = Some((t, f));
        }
        let r = c.report();
        assert!((r.display_lag_ms.unwrap() - 12.3).abs() < 1e-6, "{r:?}");
        let (raw, shown) = last.unwrap();
        assert!((shown.time - raw - lag).abs() < 1e-9);
        // A 45 ms display (more than two 60 Hz periods) is found when configured near it.
        let slow = LiveContext::new(60.0, 0.040, 0.05);
        slow.set_presenter_up();
        for k in 0..40 {
            let t = k as f64 / 60.0;
            slow.push_flip(t, 0, 0, (k % 2) as u8);
            if k >= 3 {
                let src = k - 3;
                let ts = src as f64 / 60.0;
                // The edge of flip `src` arrives 45 ms after it, after three more flips.
                slow.push_photodiode(ts + 0.045, (src % 2) as u8);
            }
        }
        assert!((slow.report().display_lag_ms.unwrap() - 45.0).abs() < 1e-6);
    }

    #[test]
    fn running_speed_comes_from_encoder_counts() {
        let c = ctx_with_flips(120);
        // 20 counts per 10 ms at 0.05 cm per count: 100 cm/s.
        for k in 0..150 {
            c.push_encoder(k as f64 * 0.01, k * 20);
        }
        let Lookup::Known(x) = c.at(1.0) else {
            panic!("no context")
        };
        assert!(
            (x.running_speed - 100.0).abs() < 1e-3,
            "{}",
            x.running_speed
        );
        assert!(x.pupil_diameter.is_nan());
        // No encoder: unmeasured.
        let d = ctx_with_flips(120);
        let Lookup::Known(y) = d.at(1.0) else {
            panic!("no context")
        };
        assert!(y.running_speed.is_nan());
    }
}
