//! The presenter's flip loop: takes commands, composes each frame, waits for the flip's deadline,
//! hands the frame to the [`Surface`] and reports what was shown and when.
//!
//! Pacing: flip `k` is due at `k / refresh_hz` on the presenter clock (seconds since the presenter
//! started). softbuffer has no vsync API, so the loop sleeps to just before the deadline and spins
//! the rest (a deadline timer). A flip later than 1.5 refresh periods after the previous one counts
//! the periods in between as missed, and the loop rejoins the grid instead of catching up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender, TrySendError};
use serde::Serialize;
use tracing::{debug, info, warn};

use super::player::{Content, Player};
use super::protocol::{Event, FlipReport};
use super::render::{Compositor, RenderError, Surface};
use crate::config::RigConfig;

/// An uploaded clip: `frames x height x width` bytes of 8-bit linear luminance.
#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<u8>,
}

impl Clip {
    pub fn frame(&self, i: usize) -> Option<&[u8]> {
        let n = self.height * self.width;
        self.data.get(i * n..(i + 1) * n)
    }
}

/// What the protocol server (or a local caller) asks of the flip loop.
#[derive(Debug, Clone)]
pub enum Command {
    /// A new client: start from gray with no clips.
    Connected,
    /// The client went away: gray, wait for the next.
    Disconnected,
    Upload {
        id: u32,
        clip: Arc<Clip>,
    },
    Play {
        id: u32,
        at: Option<f64>,
        rate_hz: Option<f64>,
    },
    Show {
        id: u32,
        frame: usize,
    },
    Gray,
}

/// Flip-interval statistics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FlipStats {
    pub flips: u64,
    pub intervals: u64,
    pub interval_mean_ms: f64,
    pub interval_sd_ms: f64,
    pub interval_min_ms: f64,
    pub interval_max_ms: f64,
    pub interval_p99_ms: f64,
    /// Flips that came more than 1.5 refresh periods after the previous one.
    pub missed_events: u64,
    /// Refresh periods missed in all.
    pub missed_frames: u64,
    /// Hand-over time per flip (the `present` call), mean, ms.
    pub present_mean_ms: f64,
    /// Flip time minus its deadline on the refresh grid (timer wake-up + hand-over), mean, ms.
    pub lag_mean_ms: f64,
    /// ... its 99th percentile, ms.
    pub lag_p99_ms: f64,
}

#[derive(Default)]
struct StatsAcc {
    flips: u64,
    intervals: Vec<f64>,
    missed_events: u64,
    missed_frames: u64,
    present_sum: f64,
    lags: Vec<f64>,
}

impl StatsAcc {
    fn summary(&self) -> FlipStats {
        let n = self.intervals.len();
        let mut s = FlipStats {
            flips: self.flips,
            intervals: n as u64,
            missed_events: self.missed_events,
            missed_frames: self.missed_frames,
            present_mean_ms: if self.flips > 0 {
                1e3 * self.present_sum / self.flips as f64
            } else {
                0.0
            },
            ..Default::default()
        };
        if !self.lags.is_empty() {
            let mut l = self.lags.clone();
            l.sort_by(|a, b| a.total_cmp(b));
            s.lag_mean_ms = 1e3 * l.iter().sum::<f64>() / l.len() as f64;
            s.lag_p99_ms = 1e3 * l[((l.len() as f64 * 0.99) as usize).min(l.len() - 1)];
        }
        if n > 0 {
            let mean = self.intervals.iter().sum::<f64>() / n as f64;
            let var = self
                .intervals
                .iter()
                .map(|x| (x - mean) * (x - mean))
                .sum::<f64>()
                / (n.max(2) - 1) as f64;
            let mut sorted = self.intervals.clone();
            sorted.sort_by(|a, b| a.total_cmp(b));
            s.interval_mean_ms = 1e3 * mean;
            s.interval_sd_ms = 1e3 * var.sqrt();
            s.interval_min_ms = 1e3 * sorted[0];
            s.interval_max_ms = 1e3 * sorted[n - 1];
            s.interval_p99_ms = 1e3 * sorted[((n as f64 * 0.99) as usize).min(n - 1)];
        }
        s
    }
}

/// The flip loop over a surface.
pub struct Presenter<S: Surface> {
    surface: S,
    comp: Compositor,
    player: Player,
    clips: HashMap<u32, Arc<Clip>>,
    cmds: Receiver<Command>,
    events: Sender<Event>,
    epoch: Instant,
    period: f64,
    stim_rate_hz: f64,
    k: u64,
    seq: u64,
    last_flip: Option<f64>,
    shown: Option<Content>,
    photodiode: u8,
    stats: StatsAcc,
    dropped_events: u64,
}

impl<S: Surface> Presenter<S> {
    /// `epoch` is time zero of the presenter clock (shared with the protocol server).
    pub fn new(
        surface: S,
        cfg: &RigConfig,
        epoch: Instant,
        cmds: Receiver<Command>,
        events: Sender<Event>,
    ) -> Self {
        let (w, h) = surface.size();
        if (w, h) != (cfg.display.width_px, cfg.display.height_px) {
            warn!(
                "the window is {w}x{h}, the config says {}x{}; drawing at {w}x{h}",
                cfg.display.width_px, cfg.display.height_px
            );
        }
        // Timer slack of 1 ns: the kernel wakes the deadline sleep on time.
        // SAFETY: prctl(PR_SET_TIMERSLACK) takes an integer and touches no memory.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
        }
        let now = epoch.elapsed().as_secs_f64();
        let period = 1.0 / cfg.display.refresh_hz;
        Presenter {
            comp: Compositor::new(&cfg.display, w, h),
            surface,
            player: Player::new(cfg.display.refresh_hz),
            clips: HashMap::new(),
            cmds,
            events,
            epoch,
            period,
            stim_rate_hz: cfg.stimulus.frame_rate_hz,
            k: (now / period).ceil() as u64 + 1,
            seq: 0,
            last_flip: None,
            shown: None,
            photodiode: 0,
            stats: StatsAcc::default(),
            dropped_events: 0,
        }
    }

    /// Presenter clock, seconds.
    pub fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    /// The size frames are drawn at, pixels.
    pub fn stats_size(&self) -> (u32, u32) {
        self.comp.size()
    }

    pub fn stats(&self) -> FlipStats {
        self.stats.summary()
    }

    /// Forgets the interval statistics gathered so far (e.g. after warm-up).
    pub fn reset_stats(&mut self) {
        self.stats = StatsAcc::default();
        self.last_flip = None;
    }

    /// Nothing playing or pending.
    pub fn is_idle(&self) -> bool {
        self.player.is_idle()
    }

    /// Applies a command (what the protocol server sends; also for local use).
    pub fn apply(&mut self, c: Command) {
        match c {
            Command::Connected | Command::Disconnected => {
                self.player.gray();
                self.clips.clear();
                info!(
                    "{}",
                    if matches!(c, Command::Connected) {
                        "client connected"
                    } else {
                        "client gone; showing gray, waiting for the next"
                    }
                );
            }
            Command::Upload { id, clip } => {
                debug!("clip {id}: {}x{}x{}", clip.frames, clip.height, clip.width);
                self.clips.insert(id, clip);
            }
            Command::Play { id, at, rate_hz } => match self.clips.get(&id) {
                Some(c) => {
                    let rate = rate_hz.unwrap_or(self.stim_rate_hz);
                    self.player.play(id, c.frames, at, rate);
                }
                None => self.error(format!("play: no clip {id}")),
            },
            Command::Show { id, frame } => match self.clips.get(&id) {
                Some(c) if frame < c.frames => self.player.show(id, frame),
                _ => self.error(format!("show: no frame {frame} of clip {id}")),
            },
            Command::Gray => self.player.gray(),
        }
    }

    fn error(&mut self, message: String) {
        warn!("{message}");
        self.send(Event::Error {
            message,
            fatal: false,
        });
    }

    fn send(&mut self, e: Event) {
        match self.events.try_send(e) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped_events += 1;
                if self.dropped_events.is_power_of_two() {
                    debug!("{} flip reports dropped (no reader)", self.dropped_events);
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// One flip: `Ok(None)` once the window is closed.
    pub fn step(&mut self) -> Result<Option<FlipReport>, RenderError> {
        if !self.surface.pump() {
            return Ok(None);
        }
        while let Ok(c) = self.cmds.try_recv() {
            self.apply(c);
        }
        let size = self.surface.size();
        if size != self.comp.size() {
            info!("drawing at {}x{}", size.0, size.1);
            self.comp.resize(size.0, size.1);
            self.shown = None;
        }
        let t_k = self.k as f64 * self.period;
        let content = self.player.content(self.k, t_k);
        if self.shown != Some(content) {
            match content {
                Content::Gray => self.comp.draw_gray(),
                Content::Frame { clip, frame } => match self.clips.get(&clip) {
                    Some(c) => {
                        let (h, w) = (c.height, c.width);
                        let c = c.clone();
                        match c.frame(frame) {
                            Some(px) => self.comp.draw_frame(px, h, w),
                            None => self.comp.draw_gray(),
                        }
                    }
                    None => self.comp.draw_gray(),
                },
            }
            self.shown = Some(content);
        }
        self.photodiode ^= 1;
        self.comp.draw_patch(self.photodiode == 1);
        self.wait_until(t_k);
        let t_start = self.now();
        let (w, h) = self.comp.size();
        self.surface.present(self.comp.framebuffer(), w, h)?;
        let t = self.now();
        self.stats.present_sum += t - t_start;
        self.stats.lags.push(t - t_k);
        let interval = self.last_flip.map(|l| t - l).unwrap_or(0.0);
        let missed = if interval > 1.5 * self.period {
            ((interval / self.period).round() as u32).saturating_sub(1)
        } else {
            0
        };
        if let Some(_l) = self.last_flip {
            self.stats.intervals.push(interval);
        }
        self.stats.flips += 1;
        if missed > 0 {
            self.stats.missed_events += 1;
            self.stats.missed_frames += missed as u64;
            debug!("missed {missed} flip(s): interval {:.2} ms", interval * 1e3);
        }
        self.last_flip = Some(t);
        let (clip, frame) = content.report();
        let r = FlipReport {
            seq: self.seq,
            time: t,
            clip,
            frame,
            photodiode: self.photodiode,
            interval,
            missed,
        };
        self.seq += 1;
        self.send(Event::Flip(r));
        // Next grid point after now: a late flip rejoins the grid rather than catching up.
        self.k = (self.k + 1).max((t / self.period).ceil() as u64);
        Ok(Some(r))
    }

    /// Runs until `stop` is set or the window closes.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), RenderError> {
        while !stop.load(Ordering::Relaxed) {
            if self.step()?.is_none() {
                break;
            }
        }
        Ok(())
    }

    fn wait_until(&self, t: f64) {
        const SPIN: f64 = 0.0008;
        loop {
            let left = t - self.now();
            if left <= 0.0 {
                return;
            }
            if left > SPIN {
                std::thread::sleep(Duration::from_secs_f64(left - SPIN));
            } else {
                std::hint::spin_loop();
            }
        }
    }
}
