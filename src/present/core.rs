//! The presenter's flip loop: takes commands, composes each frame, waits for the flip's deadline,
//! hands the frame to the [`Screen`](super::screen::Screen) and reports what was shown and when.
//!
//! Pacing: flip `k` is due at `k / refresh_hz` on the presenter clock (seconds since the presenter
//! started). A screen whose swap waits for the monitor (GL with working vsync) paces the loop
//! itself; otherwise (softbuffer, or a GL driver without vsync such as Xvfb's) the loop sleeps to
//! just before the deadline and spins the rest (a deadline timer). A flip later than 1.5 refresh
//! periods after the previous one counts the periods in between as missed, and the loop rejoins
//! the grid instead of catching up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender, TrySendError};
use serde::Serialize;
use tracing::{debug, info, warn};

use super::player::Player;
use super::protocol::{Event, FlipReport};
use super::render::RenderError;
use super::screen::Screen;
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
    /// A drifting sinusoidal grating (4 cycles across, full contrast), one second long at the
    /// stimulus size and rate: what `rig present --measure` and `rig validate` show while timing.
    pub fn drifting_grating(cfg: &RigConfig) -> Clip {
        let (h, w) = (cfg.stimulus.height, cfg.stimulus.width);
        let f = cfg.stimulus.frame_rate_hz.round().max(1.0) as usize;
        let mut data = Vec::with_capacity(f * h * w);
        for k in 0..f {
            let phase = std::f64::consts::TAU * k as f64 / f as f64;
            for _y in 0..h {
                for x in 0..w {
                    let s = (std::f64::consts::TAU * 4.0 * x as f64 / w as f64 - phase).sin();
                    data.push((127.5 + 127.0 * s).round() as u8);
                }
            }
        }
        Clip {
            frames: f,
            height: h,
            width: w,
            data,
        }
    }

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

/// Running mean, variance and a 0.05 ms histogram (to 250 ms) for a 99th percentile: flips are
/// counted for hours without the flip loop allocating.
struct Running {
    n: u64,
    mean: f64,
    m2: f64,
    min: f64,
    max: f64,
    bins: Box<[u32; Running::BINS]>,
}

impl Running {
    const BINS: usize = 5000;
    const BIN_S: f64 = 50e-6;

    fn new() -> Self {
        Running {
            n: 0,
            mean: 0.0,
            m2: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            bins: Box::new([0; Running::BINS]),
        }
    }

    fn push(&mut self, x: f64) {
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        let b = ((x.max(0.0) / Self::BIN_S) as usize).min(Self::BINS - 1);
        self.bins[b] += 1;
    }

    fn sd(&self) -> f64 {
        if self.n < 2 {
            0.0
        } else {
            (self.m2 / (self.n - 1) as f64).sqrt()
        }
    }

    /// Upper edge of the bin holding the `q` quantile (the last bin: the maximum).
    fn quantile(&self, q: f64) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let want = ((self.n as f64 * q).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &c) in self.bins.iter().enumerate() {
            seen += c as u64;
            if seen >= want {
                return if i == Self::BINS - 1 {
                    self.max
                } else {
                    ((i + 1) as f64 * Self::BIN_S).min(self.max)
                };
            }
        }
        self.max
    }
}

struct StatsAcc {
    flips: u64,
    intervals: Running,
    missed_events: u64,
    missed_frames: u64,
    present_sum: f64,
    lags: Running,
}

impl Default for StatsAcc {
    fn default() -> Self {
        StatsAcc {
            flips: 0,
            intervals: Running::new(),
            missed_events: 0,
            missed_frames: 0,
            present_sum: 0.0,
            lags: Running::new(),
        }
    }
}

impl StatsAcc {
    fn summary(&self) -> FlipStats {
        let mut s = FlipStats {
            flips: self.flips,
            intervals: self.intervals.n,
            missed_events: self.missed_events,
            missed_frames: self.missed_frames,
            present_mean_ms: if self.flips > 0 {
                1e3 * self.present_sum / self.flips as f64
            } else {
                0.0
            },
            ..Default::default()
        };
        if self.lags.n > 0 {
            s.lag_mean_ms = 1e3 * self.lags.mean;
            s.lag_p99_ms = 1e3 * self.lags.quantile(0.99);
        }
        let i = &self.intervals;
        if i.n > 0 {
            s.interval_mean_ms = 1e3 * i.mean;
            s.interval_sd_ms = 1e3 * i.sd();
            s.interval_min_ms = 1e3 * i.min;
            s.interval_max_ms = 1e3 * i.max;
            s.interval_p99_ms = 1e3 * i.quantile(0.99);
        }
        s
    }
}

/// The flip loop over a screen.
pub struct Presenter<S: Screen> {
    screen: S,
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
    photodiode: u8,
    stats: StatsAcc,
    dropped_events: u64,
}

impl<S: Screen> Presenter<S> {
    /// `epoch` is time zero of the presenter clock (shared with the protocol server).
    pub fn new(
        screen: S,
        cfg: &RigConfig,
        epoch: Instant,
        cmds: Receiver<Command>,
        events: Sender<Event>,
    ) -> Self {
        let (w, h) = screen.size();
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
        info!(
            "renderer: {}; flips paced by {}",
            screen.renderer(),
            if screen.vsync_paced() {
                "the monitor (vsync)"
            } else {
                "a deadline timer"
            }
        );
        Presenter {
            screen,
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
        self.screen.size()
    }

    /// Which renderer draws.
    pub fn renderer(&self) -> String {
        self.screen.renderer()
    }

    /// Whether the monitor paces the flips (vsync) rather than the deadline timer.
    pub fn vsync_paced(&self) -> bool {
        self.screen.vsync_paced()
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
                self.screen.clear_clips();
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
                if let Err(e) = self.screen.upload(id, &clip) {
                    self.error(format!("upload clip {id}: {e}"));
                    return;
                }
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
        if !self.screen.pump() {
            return Ok(None);
        }
        while let Ok(c) = self.cmds.try_recv() {
            self.apply(c);
        }
        let t_k = self.k as f64 * self.period;
        let content = self.player.content(self.k, t_k);
        self.photodiode ^= 1;
        self.screen.draw(content, self.photodiode == 1)?;
        let vsync = self.screen.vsync_paced();
        if !vsync {
            self.wait_until(t_k);
        }
        let t_start = self.now();
        self.screen.present()?;
        let t = self.now();
        self.stats.present_sum += t - t_start;
        if !vsync {
            self.stats.lags.push(t - t_k);
        }
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
        self.k = if vsync {
            // The monitor's own refreshes are the grid: one per swap, plus those it missed.
            self.k + 1 + missed as u64
        } else {
            // Next grid point after now: a late flip rejoins the grid rather than catching up.
            (self.k + 1).max((t / self.period).ceil() as u64)
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::present::player::Content;

    /// A screen whose swap waits for the next refresh of a 60 Hz monitor, as a GL driver with
    /// vsync does (no such monitor exists on a test machine), and which stalls for `stall`
    /// refreshes once, at swap `stall_at`.
    struct VsyncScreen {
        epoch: Instant,
        swaps: usize,
        stall_at: usize,
        stall: u32,
        shown: Vec<Content>,
    }

    impl Screen for VsyncScreen {
        fn size(&self) -> (u32, u32) {
            (64, 36)
        }
        fn upload(&mut self, _id: u32, _clip: &Arc<Clip>) -> Result<(), RenderError> {
            Ok(())
        }
        fn clear_clips(&mut self) {}
        fn draw(&mut self, content: Content, _patch_on: bool) -> Result<(), RenderError> {
            self.shown.push(content);
            Ok(())
        }
        fn present(&mut self) -> Result<(), RenderError> {
            let period = 1.0 / 60.0;
            let now = self.epoch.elapsed().as_secs_f64();
            let mut next = ((now / period).floor() + 1.0) * period;
            if self.swaps == self.stall_at {
                next += self.stall as f64 * period;
            }
            self.swaps += 1;
            std::thread::sleep(Duration::from_secs_f64((next - now).max(0.0)));
            Ok(())
        }
        fn vsync_paced(&self) -> bool {
            true
        }
        fn renderer(&self) -> String {
            "vsync test screen".into()
        }
    }

    #[test]
    fn a_vsync_screen_paces_the_loop_and_its_stalls_count_as_missed() {
        let cfg = RigConfig::embedded_sim();
        let epoch = Instant::now();
        let screen = VsyncScreen {
            epoch,
            swaps: 0,
            stall_at: 20,
            stall: 2,
            shown: Vec::new(),
        };
        let link = crate::present::server::Link::new();
        let mut p = Presenter::new(screen, &cfg, epoch, link.cmd_rx, link.ev_tx);
        assert!(p.vsync_paced());
        let mut reports = Vec::new();
        for _ in 0..40 {
            reports.push(p.step().unwrap().unwrap());
        }
        // The stall at swap 20 skipped two refreshes; every other swap took one. A loaded test
        // machine can add more, never fewer.
        let missed: u32 = reports.iter().map(|r| r.missed).sum();
        assert!(missed >= 2, "{missed}");
        assert!(reports[20].missed >= 2, "{:?}", reports[20]);
        // Seq counts flips; the refresh grid counts refreshes, missed ones included.
        assert_eq!(reports.last().unwrap().seq, 39);
        assert!(p.k >= p.seq + 2, "k {} after {} flips", p.k, p.seq);
        let s = p.stats();
        assert_eq!(s.flips, 40);
        assert_eq!(s.missed_frames, missed as u64);
        // No deadline timer under vsync: no flip-after-deadline figures either.
        assert_eq!(s.lag_mean_ms, 0.0);
    }

    #[test]
    fn running_statistics_match_the_batch_ones() {
        let xs: Vec<f64> = (0..1000)
            .map(|i| 0.016 + 1e-5 * ((i * 37) % 101) as f64)
            .collect();
        let mut r = Running::new();
        for &x in &xs {
            r.push(x);
        }
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (xs.len() - 1) as f64;
        assert!((r.mean - mean).abs() < 1e-12);
        assert!((r.sd() - var.sqrt()).abs() < 1e-12);
        let mut sorted = xs.clone();
        sorted.sort_by(f64::total_cmp);
        // The 99th percentile to within one 0.05 ms bin, never above the maximum.
        let p99 = sorted[989];
        let q = r.quantile(0.99);
        assert!(q >= p99 && q <= p99 + Running::BIN_S, "{q} vs {p99}");
        assert!(q <= r.max);
        // Beyond the histogram's 250 ms: the maximum stands in.
        r.push(1.0);
        assert_eq!(r.quantile(1.0), 1.0);
    }
}
