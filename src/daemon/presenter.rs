//! The stimulus presenter in `rig run` (`display.presenter` or `rig run --present`): a
//! [`PresenterClient`] connected to `rig present` (an address, or a child process `rig run` starts
//! and stops: `spawn`, `spawn-headless`), fed the session's clip library and told what to show,
//! with every flip it reports recorded in the session (`presenter/flips/*`).
//!
//! - With the simulated rig, a [`SimHook`] mirrors the virtual display: each trial the display
//!   starts is played on the presenter at the next flip (gray for a paused trial), so the presenter
//!   trails the simulated display by at most one imaging frame plus the link. The simulated mouse
//!   keeps seeing the virtual display.
//! - With a live stream the presenter *is* the rig's display: a [`TrialRunner`] on the presenter
//!   thread uploads the session's clip library, runs trials (a clip, then gray) on the rig clock
//!   in the order the closed loop's scheduler queues them (the shuffled library when it queues
//!   nothing), records each trial, and feeds every flip it reports into the run's
//!   [`LiveContext`], from which each live frame's context (the twin's input) is looked up. Those
//!   flips, shifted by the display lag the photodiode measured, are also the session's
//!   `stimulus/flips`.
//!
//! One thread, `presenter`, owns the client: it carries out the hook's commands, polls flip
//! reports and sends them to the recorder's event channel. A presenter that goes away does not
//! stop the recording: the thread logs it, counts it, and tries to reconnect every
//! [`RECONNECT_INTERVAL`] (uploading the clips again).
//!
//! Clocks: flip times are mapped onto the rig clock with the offset the client measures against
//! the session's clock. For the simulated rig that clock is wall time since the first frame, which
//! is the rig clock when the run is paced at `--speed 1`; at other speeds the simulated clock runs
//! at another rate than the presenter's and flip times are wall seconds since the first frame.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use serde::Serialize;

use super::DaemonError;
use crate::acquire::live::LiveContext;
use crate::acquire::sim::SimHook;
use crate::acquire::SimSource;
use crate::closedloop::schedule::DisplayCommand;
use crate::config::RigConfig;
use crate::pipeline::events::SessionEvent;
use crate::present::client::RigClock;
use crate::present::trials::TrialPicker;
use crate::present::{Display, DisplayError, FlipRun, PresentedFrame, PresenterClient};
use crate::session::{SessionError, SessionWriter};
use crate::sim::rng::FastRng;
use crate::sim::FrameEvents;

/// Pause between reconnection attempts after the presenter went away.
pub const RECONNECT_INTERVAL: Duration = Duration::from_millis(500);
/// A live trial is sent to the presenter this long before it starts (it starts at the flip
/// nearest its time).
pub const TRIAL_LEAD_S: f64 = 0.05;
/// How long a spawned `rig present` has to say where it listens.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(15);

/// What the presenter did during a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PresenterReport {
    /// Where it was (`host:port` or `unix:/path`).
    pub addr: String,
    /// Started by `rig run` (and stopped at the end).
    pub spawned: bool,
    pub connected_at_end: bool,
    /// Flips recorded (from the session's first frame on).
    pub flips: u64,
    /// Flips that showed a clip frame (not gray).
    pub clip_flips: u64,
    /// Clips seen in the flip reports.
    pub clips_shown: Vec<i64>,
    /// Trials sent to the presenter (plays and grays).
    pub trials_sent: u64,
    /// Refresh periods missed (sum of the flips' `missed`).
    pub missed_frames: u64,
    /// Flips that came late (`missed > 0`).
    pub late_flips: u64,
    /// Flip interval over consecutive flips, ms.
    pub interval_mean_ms: f64,
    pub interval_sd_ms: f64,
    /// Trials the live trial runner started (`None`: the presenter mirrored the simulated rig).
    pub live_trials: Option<u64>,
    /// Flip reports lost on the way (jumps of `seq` within a connection).
    pub seq_gaps: u64,
    /// Times the link was lost, and regained.
    pub disconnects: u64,
    pub reconnects: u64,
    /// Errors the presenter reported, or the last failure talking to it.
    pub errors: u64,
    pub last_error: Option<String>,
}

type Shared = Arc<Mutex<PresenterReport>>;

fn lock(r: &Shared) -> std::sync::MutexGuard<'_, PresenterReport> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the hook (or a live source's companion) asks of the presenter thread.
enum Cmd {
    /// The session's first frame: the rig clock starts now.
    Started,
    /// A clip added to the library during the session: (id, frames, f, h, w).
    Upload(u32, Vec<u8>, usize, usize, usize),
    Play(u32),
    Gray,
}

/// The presenter as wired into one run; see [`PresenterWiring::finish`].
#[derive(Default)]
pub struct PresenterWiring {
    report: Option<Shared>,
    thread: Option<JoinHandle<()>>,
    /// For sources without a hook: dropped with the source, which ends the thread.
    companion: Option<Sender<Cmd>>,
    child: Option<Spawned>,
}

/// The presenter `rig run` is asked for: `--present` over `display.presenter`; `None` for "none".
pub fn requested(cfg: &RigConfig, flag: Option<&str>) -> Option<String> {
    let p = flag.unwrap_or(cfg.display.presenter.as_str()).trim();
    (!p.is_empty() && p != "none").then(|| p.to_string())
}

fn setup(e: impl std::fmt::Display) -> DaemonError {
    DaemonError::Setup(format!("presenter: {e}"))
}

impl PresenterWiring {
    /// The figures so far, for a watcher (the dashboard); `None` when not wired.
    pub fn watch(&self) -> Option<crate::dashboard::Health> {
        let r = self.report.clone()?;
        Some(Box::new(move || {
            serde_json::to_value(&*lock(&r)).unwrap_or_default()
        }))
    }

    /// What must live exactly as long as the frame source.
    pub fn companion(&mut self) -> Option<Box<dyn Send>> {
        self.companion.take().map(|c| Box::new(c) as Box<dyn Send>)
    }

    /// After the run: waits for the presenter thread, stops a spawned presenter, writes the
    /// summary into the session and returns the report.
    pub fn finish(
        &mut self,
        writer: Option<&mut SessionWriter>,
    ) -> Result<Option<PresenterReport>, SessionError> {
        self.companion.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.child.take();
        let Some(r) = &self.report else {
            return Ok(None);
        };
        let r = lock(r).clone();
        if let Some(w) = writer {
            w.write_presenter_summary(&r.addr, r.flips, r.missed_frames, r.disconnects)?;
        }
        Ok(Some(r))
    }
}

/// Wires the presenter into the simulated rig: uploads its clip library and mirrors its trials.
pub fn wire_sim(
    cfg: &RigConfig,
    flag: Option<&str>,
    src: &mut SimSource,
    events: Sender<SessionEvent>,
) -> Result<PresenterWiring, DaemonError> {
    let Some(target) = requested(cfg, flag) else {
        return Ok(PresenterWiring::default());
    };
    // The rig clock for the presenter: wall time since the first frame (see the module docs).
    let base = Instant::now();
    let origin = Arc::new(AtomicU64::new(u64::MAX));
    let o = origin.clone();
    let clock: RigClock = Arc::new(move || {
        let start = o.load(Ordering::Acquire);
        if start == u64::MAX {
            return 0.0;
        }
        (base.elapsed().as_nanos() as u64).saturating_sub(start) as f64 * 1e-9
    });
    let (child, addr) = launch(cfg, &target)?;
    let mut client = PresenterClient::connect(&addr, clock).map_err(setup)?;
    let lib = &src.rig().library;
    let clip_shape = (lib.frames_per_clip, lib.height, lib.width);
    for (id, clip) in lib.clips.iter().enumerate() {
        client
            .upload_clip(id as u32, clip, lib.frames_per_clip, lib.height, lib.width)
            .map_err(setup)?;
    }
    client.gray().map_err(setup)?;
    let (tx, rx) = unbounded();
    let mut w = start_thread(client, addr, child.is_some(), false, rx, events, None)?;
    w.child = child;
    src.add_hook(Box::new(Mirror {
        tx,
        base,
        origin,
        started: false,
        clip_shape,
    }));
    Ok(w)
}

/// Starts (or connects to) the presenter `display.presenter` names, plays a drifting grating on
/// it back to back for `seconds` and returns its flips, times on `clock` (`rig validate`'s
/// display check; the photodiode edges of the same flips come from the sync board).
pub fn measure_display(
    cfg: &RigConfig,
    seconds: f64,
    clock: RigClock,
) -> Result<FlipRun, DaemonError> {
    let Some(target) = requested(cfg, None) else {
        return Err(setup("display.presenter = \"none\": no presenter to time"));
    };
    let (child, addr) = launch(cfg, &target)?;
    let mut client = PresenterClient::connect(&addr, clock).map_err(setup)?;
    let clip = crate::present::core::Clip::drifting_grating(cfg);
    client
        .upload_clip(0, &clip.data, clip.frames, clip.height, clip.width)
        .map_err(setup)?;
    let info = client.info().clone();
    let clip_s = clip.frames as f64 / cfg.stimulus.frame_rate_hz;
    let mut flips = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut next_play = Instant::now();
    while Instant::now() < end {
        if Instant::now() >= next_play {
            client.play(0, None).map_err(setup)?;
            next_play += Duration::from_secs_f64(clip_s);
        }
        client.poll_flips(&mut flips).map_err(setup)?;
        std::thread::sleep(Duration::from_millis(20));
    }
    client.poll_flips(&mut flips).map_err(setup)?;
    client.close();
    drop(child);
    Ok(FlipRun {
        pacing: info.pacing,
        vsync: info.vsync,
        flips,
    })
}

/// What the presenter runs on a live rig: the session's clip library (ids 0..), the scheduler's
/// commands, and the timeline live frames look their context up in.
pub struct LiveTrials {
    pub library: Vec<Vec<u8>>,
    /// Library clips the shuffled cycle draws from when nothing is queued (the first ones).
    pub shuffled: usize,
    pub commands: Receiver<DisplayCommand>,
    pub context: Arc<LiveContext>,
    /// Held loop: trials that start show gray.
    pub paused: Arc<std::sync::atomic::AtomicBool>,
    pub seed: u64,
}

/// Wires the presenter for a live source; flip times on `clock`, the source's rig clock. With
/// `trials` it runs the session's trials; without, it shows gray (its flips are recorded).
pub fn wire_live(
    cfg: &RigConfig,
    flag: Option<&str>,
    clock: RigClock,
    events: Sender<SessionEvent>,
    trials: Option<LiveTrials>,
) -> Result<PresenterWiring, DaemonError> {
    let Some(target) = requested(cfg, flag) else {
        return Ok(PresenterWiring::default());
    };
    let (child, addr) = launch(cfg, &target)?;
    let mut client = PresenterClient::connect(&addr, clock.clone()).map_err(setup)?;
    let s = &cfg.stimulus;
    let shape = (s.frames_per_clip(), s.height, s.width);
    let runner = match trials {
        Some(t) => {
            for (id, clip) in t.library.iter().enumerate() {
                client
                    .upload_clip(id as u32, clip, shape.0, shape.1, shape.2)
                    .map_err(setup)?;
            }
            t.context.set_presenter_up();
            Some(TrialRunner {
                picker: TrialPicker::new(t.shuffled, FastRng::new(t.seed ^ 0xD15_B1A7)),
                commands: t.commands,
                context: t.context,
                paused: t.paused,
                clock,
                clip_shape: shape,
                n_clips: t.library.len() as u32,
                trial_s: s.clip_seconds + s.gray_seconds,
                next_start: None,
                started: 0,
                gone: Vec::new(),
            })
        }
        None => None,
    };
    client.gray().map_err(setup)?;
    let (tx, rx) = unbounded();
    let mut w = start_thread(client, addr, child.is_some(), true, rx, events, runner)?;
    w.child = child;
    w.companion = Some(tx);
    Ok(w)
}

/// Runs a live rig's trials on the presenter (see the module docs).
struct TrialRunner {
    picker: TrialPicker,
    commands: Receiver<DisplayCommand>,
    context: Arc<LiveContext>,
    paused: Arc<std::sync::atomic::AtomicBool>,
    clock: RigClock,
    /// (frames, height, width) of the library's clips.
    clip_shape: (usize, usize, usize),
    /// Clips in the library (the next added clip's id).
    n_clips: u32,
    trial_s: f64,
    /// Rig time the next trial starts.
    next_start: Option<f64>,
    started: u64,
    /// Gray flips filed at disconnections, for the session's `stimulus/flips`.
    gone: Vec<crate::acquire::live::ShownFlip>,
}

impl TrialRunner {
    /// Takes the scheduler's commands and starts the trials that are due. False when the
    /// recorder is gone.
    fn tick(
        &mut self,
        client: &mut PresenterClient,
        connected: bool,
        events: &Sender<SessionEvent>,
    ) -> Result<bool, DisplayError> {
        for f in self.gone.drain(..) {
            let flip = SessionEvent::Flip {
                time: f.time,
                clip: f.clip,
                frame: f.frame,
            };
            if events.send(flip).is_err() {
                return Ok(false);
            }
        }
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                DisplayCommand::Enqueue(c) => self.picker.enqueue(c),
                DisplayCommand::AddClip(clip) => {
                    // Filed with the recorder and uploaded before any trial can show it; the
                    // client keeps it for reconnections.
                    let id = self.n_clips;
                    self.n_clips += 1;
                    let (f, h, w) = self.clip_shape;
                    let upload = client.upload_clip(id, &clip.0, f, h, w);
                    if events.send(SessionEvent::Clip(clip)).is_err() {
                        return Ok(false);
                    }
                    upload?;
                }
            }
        }
        let now = (self.clock)();
        let mut start = *self.next_start.get_or_insert(now + 2.0 * TRIAL_LEAD_S);
        if now > start + self.trial_s {
            // The thread was held up for more than a trial: start afresh rather than in a burst.
            tracing::warn!(
                behind_s = now - start,
                "live trials fell behind; restarting the trial clock"
            );
            start = now + TRIAL_LEAD_S;
        }
        let mut result = Ok(true);
        while now >= start - TRIAL_LEAD_S {
            // Paused, or no presenter to show it: a gray trial, and the queued clip waits.
            let mut clip = if self.paused.load(Ordering::Relaxed) || !connected {
                -1
            } else {
                self.picker.next_clip()
            };
            if clip >= 0 {
                if let Err(e) = client.play(clip as u32, Some(start)) {
                    // The screen stays gray: the trial is recorded as what it showed.
                    clip = -1;
                    result = Err(e);
                }
            }
            self.started += 1;
            let end = start + self.trial_s;
            if events
                .send(SessionEvent::Trial { start, end, clip })
                .is_err()
            {
                return Ok(false);
            }
            start = end;
        }
        self.next_start = Some(start);
        result
    }
}

fn start_thread(
    client: PresenterClient,
    addr: String,
    spawned: bool,
    started: bool,
    rx: Receiver<Cmd>,
    events: Sender<SessionEvent>,
    runner: Option<TrialRunner>,
) -> Result<PresenterWiring, DaemonError> {
    let report = Arc::new(Mutex::new(PresenterReport {
        addr,
        spawned,
        connected_at_end: true,
        live_trials: runner.as_ref().map(|_| 0),
        ..Default::default()
    }));
    let r = report.clone();
    let thread = std::thread::Builder::new()
        .name("presenter".into())
        .spawn(move || PresenterLoop::new(client, r, started, runner).run(rx, events))
        .map_err(|e| setup(format!("cannot start the presenter thread: {e}")))?;
    Ok(PresenterWiring {
        report: Some(report),
        thread: Some(thread),
        companion: None,
        child: None,
    })
}

/// Follows the virtual display's trials (a [`SimHook`]).
struct Mirror {
    tx: Sender<Cmd>,
    base: Instant,
    origin: Arc<AtomicU64>,
    started: bool,
    /// (frames, height, width) of the library's clips.
    clip_shape: (usize, usize, usize),
}

impl SimHook for Mirror {
    fn on_clip_added(&mut self, id: u32, frames: &[u8]) {
        let (f, h, w) = self.clip_shape;
        let _ = self.tx.send(Cmd::Upload(id, frames.to_vec(), f, h, w));
    }

    fn on_frame(&mut self, ev: &FrameEvents, _out: &mut Vec<SessionEvent>) {
        if !self.started {
            self.started = true;
            let now = self.base.elapsed().as_nanos() as u64;
            let back = (ev.time * 1e9) as u64;
            self.origin
                .store(now.saturating_sub(back), Ordering::Release);
            let _ = self.tx.send(Cmd::Started);
        }
        for t in &ev.trials {
            let cmd = if t.clip >= 0 {
                Cmd::Play(t.clip as u32)
            } else {
                Cmd::Gray
            };
            let _ = self.tx.send(cmd);
        }
    }
}

/// The `presenter` thread's state.
struct PresenterLoop {
    client: PresenterClient,
    report: Shared,
    started: bool,
    connected: bool,
    last_try: Instant,
    buf: Vec<PresentedFrame>,
    last: Option<(u64, f64)>,
    n_int: u64,
    sum_int: f64,
    sum_int2: f64,
    clips: BTreeSet<i64>,
    runner: Option<TrialRunner>,
}

impl PresenterLoop {
    fn new(
        client: PresenterClient,
        report: Shared,
        started: bool,
        runner: Option<TrialRunner>,
    ) -> Self {
        PresenterLoop {
            runner,
            client,
            report,
            started,
            connected: true,
            last_try: Instant::now(),
            buf: Vec::with_capacity(256),
            last: None,
            n_int: 0,
            sum_int: 0.0,
            sum_int2: 0.0,
            clips: BTreeSet::new(),
        }
    }

    fn run(mut self, rx: Receiver<Cmd>, events: Sender<SessionEvent>) {
        // Running trials, the thread also reports flips to the frames' context: poll often, so a
        // frame rarely waits for the report of a flip before it.
        let tick = if self.runner.is_some() {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(5)
        };
        loop {
            match rx.recv_timeout(tick) {
                Ok(Cmd::Started) => {
                    self.started = true;
                    if self.connected {
                        if let Err(e) = self.client.sync_clock() {
                            self.failed(&e);
                        }
                    }
                }
                Ok(Cmd::Upload(id, frames, f, h, w)) => {
                    // The client keeps it for reconnections even while the presenter is away.
                    if let Err(e) = self.client.upload_clip(id, &frames, f, h, w) {
                        self.failed(&e);
                    }
                }
                Ok(Cmd::Play(id)) => {
                    lock(&self.report).trials_sent += 1;
                    if self.connected {
                        if let Err(e) = self.client.play(id, None) {
                            self.failed(&e);
                        }
                    }
                }
                Ok(Cmd::Gray) => {
                    lock(&self.report).trials_sent += 1;
                    if self.connected {
                        if let Err(e) = self.client.gray() {
                            self.failed(&e);
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if let Some(runner) = self.runner.as_mut() {
                let ticked = runner.tick(&mut self.client, self.connected, &events);
                lock(&self.report).live_trials = Some(runner.started);
                match ticked {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => self.failed(&e),
                }
            }
            if !self.poll(&events) {
                return;
            }
            if !self.connected && self.last_try.elapsed() >= RECONNECT_INTERVAL {
                self.last_try = Instant::now();
                self.try_reconnect();
            }
        }
        // The session is over: what is left of the flips, then gray and goodbye.
        self.poll(&events);
        let mut r = lock(&self.report);
        r.connected_at_end = self.connected;
        drop(r);
        if self.connected {
            let _ = self.client.gray();
            self.client.close();
        }
    }

    fn failed(&mut self, e: &DisplayError) {
        let mut r = lock(&self.report);
        r.last_error = Some(e.to_string());
        if !self.client.is_connected() && self.connected {
            self.connected = false;
            self.last = None;
            r.disconnects += 1;
            drop(r);
            if let Some(run) = self.runner.as_mut() {
                // The presenter shows gray without a client: so does the record.
                let f = run.context.set_presenter_down((run.clock)());
                run.gone.push(f);
            }
            tracing::warn!("presenter disconnected ({e}); recording goes on, reconnecting");
            self.last_try = Instant::now();
        }
    }

    fn try_reconnect(&mut self) {
        match self.client.reconnect() {
            Ok(()) => {
                self.connected = true;
                let _ = self.client.gray();
                if let Some(run) = &self.runner {
                    run.context.set_presenter_up();
                }
                lock(&self.report).reconnects += 1;
                tracing::info!("presenter back");
            }
            Err(e) => {
                tracing::debug!("presenter reconnect: {e}");
                lock(&self.report).last_error = Some(e.to_string());
            }
        }
    }

    /// Records the flips reported so far; false when the recorder is gone.
    fn poll(&mut self, events: &Sender<SessionEvent>) -> bool {
        if !self.connected {
            return true;
        }
        self.buf.clear();
        let mut buf = std::mem::take(&mut self.buf);
        if let Err(e) = self.client.poll_flips(&mut buf) {
            self.failed(&e);
        } else if !self.client.is_connected() {
            self.failed(&DisplayError::Disconnected);
        }
        let errors = self.client.take_errors();
        let mut ok = true;
        {
            let mut r = lock(&self.report);
            r.errors += errors.len() as u64;
            if let Some(e) = errors.last() {
                r.last_error = Some(e.clone());
            }
            for f in buf.iter().filter(|f| self.started && f.time >= 0.0) {
                r.flips += 1;
                r.missed_frames += u64::from(f.missed);
                if f.missed > 0 {
                    r.late_flips += 1;
                }
                if f.clip >= 0 {
                    r.clip_flips += 1;
                    self.clips.insert(f.clip);
                }
                if let Some((seq, t)) = self.last {
                    if f.seq == seq + 1 {
                        let dt = f.time - t;
                        self.n_int += 1;
                        self.sum_int += dt;
                        self.sum_int2 += dt * dt;
                    } else if f.seq > seq + 1 {
                        r.seq_gaps += f.seq - seq - 1;
                    }
                }
                self.last = Some((f.seq, f.time));
                if let Some(run) = &self.runner {
                    // On a live rig the presenter's flips are the session's stimulus record.
                    let shown = run
                        .context
                        .push_flip(f.time, f.clip as i32, f.frame, f.photodiode);
                    let flip = SessionEvent::Flip {
                        time: shown.time,
                        clip: shown.clip,
                        frame: shown.frame,
                    };
                    if events.send(flip).is_err() {
                        ok = false;
                        break;
                    }
                }
                if events.send(SessionEvent::PresenterFlip(*f)).is_err() {
                    ok = false;
                    break;
                }
            }
            if self.n_int > 0 {
                let n = self.n_int as f64;
                let mean = self.sum_int / n;
                r.interval_mean_ms = mean * 1e3;
                r.interval_sd_ms = (self.sum_int2 / n - mean * mean).max(0.0).sqrt() * 1e3;
            }
            if r.clips_shown.len() != self.clips.len() {
                r.clips_shown = self.clips.iter().copied().collect();
            }
        }
        self.buf = buf;
        ok
    }
}

/// A `rig present` that `rig run` started; stopped (SIGTERM, then SIGKILL) when dropped.
struct Spawned {
    child: Child,
    config: std::path::PathBuf,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child process by its id.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let end = Instant::now() + Duration::from_secs(3);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
        let _ = std::fs::remove_file(&self.config);
    }
}

/// The presenter's address, starting `rig present` for `spawn` / `spawn-headless`.
fn launch(cfg: &RigConfig, target: &str) -> Result<(Option<Spawned>, String), DaemonError> {
    let headless = match target {
        "spawn" => false,
        "spawn-headless" => true,
        addr => return Ok((None, addr.to_string())),
    };
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let exe = std::env::current_exe().map_err(|e| setup(format!("cannot find `rig`: {e}")))?;
    let config = std::env::temp_dir().join(format!(
        "twinrig-present-{}-{}.toml",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&config, cfg.to_toml())
        .map_err(|e| setup(format!("cannot write {}: {e}", config.display())))?;
    let mut cmd = Command::new(exe);
    crate::child::no_inherited_fds(&mut cmd);
    cmd.arg("present")
        .arg("--config")
        .arg(&config)
        .args(["--listen", "127.0.0.1:0"]);
    if headless {
        cmd.arg("--headless");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| setup(format!("cannot start `rig present`: {e}")))?;
    let stderr = child.stderr.take();
    let spawned = Spawned { child, config };
    let Some(stderr) = stderr else {
        return Err(setup("no stderr from `rig present`"));
    };
    // A thread reads its stderr for the address line, then keeps draining it into the log.
    let (tx, rx) = crossbeam::channel::bounded(1);
    std::thread::Builder::new()
        .name("present-child".into())
        .spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.split("listening on ").nth(1) {
                    if let Some(t) = tx.take() {
                        let _ = t.send(addr.trim().to_string());
                        continue;
                    }
                }
                tracing::debug!("rig present: {line}");
            }
        })
        .map_err(|e| setup(format!("cannot read `rig present`: {e}")))?;
    match rx.recv_timeout(SPAWN_TIMEOUT) {
        Ok(addr) => {
            tracing::debug!(%addr, "rig present started");
            Ok((Some(spawned), addr))
        }
        Err(_) => Err(setup(format!(
            "`rig present{}` did not start within {} s (see its messages above; a window \
             needs an X display, `spawn-headless` does not)",
            if headless { " --headless" } else { "" },
            SPAWN_TIMEOUT.as_secs()
        ))),
    }
}
