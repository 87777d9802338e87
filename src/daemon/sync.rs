//! The sync board in `rig run`: the frame clock, photodiode and encoder datasets of a session are
//! recorded from what the host's [`HarpDriver`] receives over a serial link, on the rig clock.
//!
//! - **Simulated rig, `sync.port = "sim"`**: a [`SimBoard`] in fed mode (the real firmware behind
//!   a pseudo-terminal) is driven by the simulated rig's actual frames through a [`SimHook`]: the
//!   frame clock edge at each frame time, a photodiode edge `PHOTODIODE_LATENCY_S` after each flip
//!   of the virtual display, quadrature edges of the treadmill as the simulated mouse runs. The
//!   board's clock follows the simulated time (so `--speed max` works), the driver's host clock
//!   *is* the simulated rig clock, and the driver's clock estimate ([`crate::harp::ClockSync`])
//!   maps the board's timestamps back onto it. After feeding a frame the hook waits (up to
//!   [`FRAME_CLOCK_WAIT`]) for that frame's frame-clock event to come back over the link, so every
//!   sync event of a frame reaches the recorder before the frame does; a frame whose event does
//!   not come (link down) is counted in [`SyncReport::frame_clock_missing`].
//! - **Stream source, `sync.port` a device path**: the driver opens the port (handshake,
//!   WHO_AM_I check) and a `sync` thread forwards its events to the recorder; the host clock is
//!   the stream source's rig clock. The thread stops when the source ends.
//! - `sync.port = "none"`: no board, no sync datasets.
//!
//! The link's figures (bad checksums, discarded bytes, dropped events, reconnections and gaps) go
//! into the run report and the session (root attributes `sync_*`, datasets `sync/gaps/*`).
//!
//! Testing hook: `TWINRIG_SIM_UNPLUG="AT:FOR"` (seconds of simulated time) unplugs the simulated
//! board at `AT` and plugs it back `FOR` seconds later.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError, Sender};
use serde::Serialize;

use super::DaemonError;
use crate::acquire::live::LiveContext;
use crate::acquire::sim::SimHook;
use crate::acquire::SimSource;
use crate::config::RigConfig;
use crate::harp::clock::ClockEstimate;
use crate::harp::sim::{quadrature_levels, Edge, SimBoard, SimBoardOptions};
use crate::harp::{
    EventKind, Gap, HarpDriver, HarpError, HarpOptions, HostClock, Identity, LinkStats, SyncEvent,
};
use crate::pipeline::events::SessionEvent;
use crate::session::{SessionError, SessionWriter};
use crate::sim::{FrameEvents, PHOTODIODE_LATENCY_S};

/// How long a frame waits for its frame-clock event to come back from the simulated board.
pub const FRAME_CLOCK_WAIT: Duration = Duration::from_millis(500);

/// `sync.port` value for the simulated board.
pub const PORT_SIM: &str = "sim";
/// `sync.port` value for a rig without a sync board.
pub const PORT_NONE: &str = "none";

/// What the sync board's link did during a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    /// `sim` (the simulated board, through a pseudo-terminal) or the serial port's path.
    pub port: String,
    pub identity: Identity,
    pub frame_clock_events: u64,
    pub photodiode_events: u64,
    pub encoder_events: u64,
    /// Frames whose frame-clock event did not arrive (simulated board: within the wait).
    pub frame_clock_missing: u64,
    /// Bytes the simulated board could not send because the host did not read them.
    pub board_tx_dropped_bytes: u64,
    pub link: LinkStats,
    pub gaps: Vec<Gap>,
    /// The driver's device-to-rig clock mapping at the end.
    pub clock: Option<ClockEstimate>,
}

type Shared = Arc<Mutex<SyncReport>>;

fn lock(r: &Shared) -> std::sync::MutexGuard<'_, SyncReport> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

/// The sync board as wired into one run; see [`SyncWiring::finish`].
#[derive(Default)]
pub struct SyncWiring {
    report: Option<Shared>,
    companion: Option<PortForwarder>,
}

impl SyncWiring {
    /// The figures so far, for a watcher (the dashboard); `None` when not wired.
    pub fn watch(&self) -> Option<crate::dashboard::Health> {
        let r = self.report.clone()?;
        Some(Box::new(move || {
            let mut v = serde_json::to_value(&*lock(&r)).unwrap_or_default();
            // Gaps are listed in the session; here their number is enough.
            if let Some(g) = v.get("gaps").and_then(|g| g.as_array()).map(Vec::len) {
                v["gaps"] = g.into();
            }
            v
        }))
    }

    /// What must live exactly as long as the frame source (the forwarding thread of a real port).
    pub fn companion(&mut self) -> Option<Box<dyn Send>> {
        self.companion.take().map(|c| Box::new(c) as Box<dyn Send>)
    }

    /// After the run: writes the link's figures into the session and returns the report.
    pub fn finish(
        &self,
        writer: Option<&mut SessionWriter>,
    ) -> Result<Option<SyncReport>, SessionError> {
        let Some(r) = &self.report else {
            return Ok(None);
        };
        let r = lock(r).clone();
        if let Some(w) = writer {
            w.write_sync_link(&r.port, &r.link, r.frame_clock_missing, &r.gaps)?;
        }
        Ok(Some(r))
    }
}

fn setup_err(e: HarpError) -> DaemonError {
    DaemonError::Setup(format!("sync board: {e}"))
}

/// Wires the sync board of a simulated rig into `src` (see the module docs).
pub fn wire_sim(cfg: &RigConfig, src: &mut SimSource) -> Result<SyncWiring, DaemonError> {
    match cfg.sync.port.as_str() {
        PORT_NONE => {
            src.set_sync_events(false);
            Ok(SyncWiring::default())
        }
        PORT_SIM => {
            let (hook, report) = SimSync::start(cfg, cfg.imaging.frame_rate_hz)?;
            src.set_sync_events(false);
            src.add_hook(Box::new(hook));
            Ok(SyncWiring {
                report: Some(report),
                companion: None,
            })
        }
        path => Err(DaemonError::Setup(format!(
            "imaging.source = \"sim\" needs sync.port = \"sim\" (the simulated board) or \"none\"; \
             {path:?} is a serial port, which the simulated rig cannot drive"
        ))),
    }
}

/// Wires a real sync board on `sync.port` for a live source; its events go to `events` with times
/// on `rig_clock`. `sim` and `none` wire nothing (the simulated board follows only the simulated
/// rig).
pub fn wire_port(
    cfg: &RigConfig,
    rig_clock: HostClock,
    events: Sender<SessionEvent>,
    live: Option<Arc<LiveContext>>,
) -> Result<SyncWiring, DaemonError> {
    let path = cfg.sync.port.as_str();
    if path == PORT_NONE || path == PORT_SIM {
        if path == PORT_SIM {
            tracing::info!(
                "sync.port = \"sim\": the simulated board follows only the simulated rig; \
                 recording without sync events"
            );
        }
        return Ok(SyncWiring::default());
    }
    let mut opts = HarpOptions::from_config(&cfg.sync).map_err(setup_err)?;
    opts.host_clock = Some(rig_clock);
    let driver = HarpDriver::open(path, opts).map_err(setup_err)?;
    let id = driver.identity();
    tracing::info!(
        path,
        who_am_i = id.who_am_i,
        firmware = %id.firmware,
        name = %id.name,
        "sync board active"
    );
    let report = Arc::new(Mutex::new(SyncReport {
        port: path.to_string(),
        identity: driver.identity(),
        ..Default::default()
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let (r, st) = (report.clone(), stop.clone());
    let thread = std::thread::Builder::new()
        .name("sync".into())
        .spawn(move || forward(driver, events, r, st, live))
        .map_err(|e| DaemonError::Setup(format!("cannot start the sync thread: {e}")))?;
    Ok(SyncWiring {
        report: Some(report),
        companion: Some(PortForwarder {
            stop,
            thread: Some(thread),
        }),
    })
}

/// Stops and joins the forwarding thread when dropped (with the frame source).
struct PortForwarder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for PortForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Forwards the board's events to the recorder, and the photodiode and encoder to a live rig's
/// frame context (`acquire::live`).
fn forward(
    driver: HarpDriver,
    tx: Sender<SessionEvent>,
    report: Shared,
    stop: Arc<AtomicBool>,
    live: Option<Arc<LiveContext>>,
) {
    let rx = driver.events();
    let mut counts = Counts::default();
    let mut last_update = Instant::now();
    // Events that arrive after the source ended belong to no frame: the loop ends with the source.
    while !stop.load(Ordering::Acquire) {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(e) => {
                if let Some(ev) = counts.convert(&e) {
                    match (&live, &ev) {
                        (Some(l), SessionEvent::Photodiode { time, level }) => {
                            l.push_photodiode(*time, *level)
                        }
                        (Some(l), SessionEvent::Encoder { time, position }) => {
                            l.push_encoder(*time, *position)
                        }
                        _ => {}
                    }
                    if tx.send(ev).is_err() {
                        break;
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if last_update.elapsed() > Duration::from_millis(500) {
            last_update = Instant::now();
            update(&report, &driver, &counts, 0);
        }
    }
    update(&report, &driver, &counts, 0);
    driver.close();
}

/// Event counters and the conversion of driver events into session events.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    frame_clock: u64,
    photodiode: u64,
    encoder: u64,
    missing: u64,
}

impl Counts {
    fn convert(&mut self, e: &SyncEvent) -> Option<SessionEvent> {
        let time = e.rig_s;
        match e.kind {
            EventKind::FrameClock { count } => {
                self.frame_clock += 1;
                Some(SessionEvent::FrameClock {
                    time,
                    count: count as u32,
                })
            }
            EventKind::Photodiode { level } => {
                self.photodiode += 1;
                Some(SessionEvent::Photodiode {
                    time,
                    level: u8::from(level),
                })
            }
            EventKind::Encoder { position, .. } => {
                self.encoder += 1;
                Some(SessionEvent::Encoder {
                    time,
                    position: position as i32,
                })
            }
            EventKind::Heartbeat { .. } => None,
        }
    }
}

fn update(report: &Shared, driver: &HarpDriver, c: &Counts, board_dropped: u64) {
    let link = driver.stats();
    let gaps = driver.gaps();
    let clock = driver.clock();
    let identity = driver.identity();
    let mut r = lock(report);
    r.frame_clock_events = c.frame_clock;
    r.photodiode_events = c.photodiode;
    r.encoder_events = c.encoder;
    r.frame_clock_missing = c.missing;
    r.board_tx_dropped_bytes = board_dropped;
    r.link = link;
    r.gaps = gaps;
    r.clock = clock;
    r.identity = identity;
}

/// The simulated board, fed by the simulated rig's frames (a [`SimHook`]).
struct SimSync {
    /// Dropped before the board: the driver puts the device in Standby and closes the port.
    driver: Option<HarpDriver>,
    board: SimBoard,
    events: Receiver<SyncEvent>,
    /// The rig clock as the driver sees it: the simulated time fed so far, seconds (f64 bits).
    now: Arc<AtomicU64>,
    pending_pd: VecDeque<(f64, bool)>,
    edges: Vec<(f64, Edge)>,
    quad_pos: i64,
    frame_period_s: f64,
    counts: Counts,
    report: Shared,
    frames: u64,
    warned: bool,
    /// (unplug at, plug back at), simulated seconds (`TWINRIG_SIM_UNPLUG`).
    unplug: Option<(f64, f64)>,
    unplugged: bool,
}

fn unplug_schedule() -> Option<(f64, f64)> {
    let v = std::env::var("TWINRIG_SIM_UNPLUG").ok()?;
    let parsed = v.split_once(':').and_then(|(a, b)| {
        let (a, b) = (a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?);
        (a.is_finite() && b.is_finite() && a >= 0.0 && b >= 0.0).then_some((a, a + b))
    });
    if parsed.is_none() {
        tracing::warn!("TWINRIG_SIM_UNPLUG={v:?} is not AT:FOR in seconds; ignored");
    }
    parsed
}

impl SimSync {
    fn start(cfg: &RigConfig, frame_rate_hz: f64) -> Result<(Self, Shared), DaemonError> {
        let board = SimBoard::spawn(
            cfg,
            SimBoardOptions {
                fed: true,
                feed: false,
                seed: cfg.sim.seed,
                ..Default::default()
            },
        )
        .map_err(|e| {
            DaemonError::Setup(format!(
                "simulated sync board: {e} (sync.port = \"none\" records without a board)"
            ))
        })?;
        let now = Arc::new(AtomicU64::new(0f64.to_bits()));
        let clock_now = now.clone();
        let mut opts = HarpOptions::from_config(&cfg.sync).map_err(setup_err)?;
        opts.host_clock = Some(HostClock(Arc::new(move || {
            f64::from_bits(clock_now.load(Ordering::Acquire))
        })));
        let driver = HarpDriver::open(&board.port(), opts).map_err(setup_err)?;
        let report = Arc::new(Mutex::new(SyncReport {
            port: PORT_SIM.into(),
            identity: driver.identity(),
            ..Default::default()
        }));
        // Debug only: the first line `rig run` prints is its "recording" line.
        tracing::debug!(port = %board.port(), "simulated sync board on a pseudo-terminal");
        let hook = SimSync {
            events: driver.events(),
            driver: Some(driver),
            board,
            now,
            pending_pd: VecDeque::with_capacity(64),
            edges: Vec::with_capacity(256),
            quad_pos: 0,
            frame_period_s: 1.0 / frame_rate_hz,
            counts: Counts::default(),
            report: report.clone(),
            frames: 0,
            warned: false,
            unplug: unplug_schedule(),
            unplugged: false,
        };
        Ok((hook, report))
    }

    fn faults(&mut self, t: f64) {
        let Some((at, back)) = self.unplug else {
            return;
        };
        if !self.unplugged && t >= at && t < back {
            tracing::warn!(t, "TWINRIG_SIM_UNPLUG: unplugging the simulated board");
            self.board.unplug();
            self.unplugged = true;
        } else if self.unplugged && t >= back {
            tracing::warn!(
                t,
                "TWINRIG_SIM_UNPLUG: plugging the simulated board back in"
            );
            self.board.replug();
            self.unplugged = false;
            self.unplug = None;
        }
    }

    fn push_event(&mut self, e: &SyncEvent, out: &mut Vec<SessionEvent>) {
        if let Some(ev) = self.counts.convert(e) {
            out.push(ev);
        }
    }

    fn update_report(&self) {
        if let Some(d) = &self.driver {
            update(
                &self.report,
                d,
                &self.counts,
                self.board.status().tx_dropped_bytes,
            );
        }
    }
}

impl SimHook for SimSync {
    fn on_frame(&mut self, ev: &FrameEvents, out: &mut Vec<SessionEvent>) {
        let t = ev.time;
        self.faults(t);
        // The edges of this frame, in time order: photodiode edges up to the frame time (those
        // of its own flips come 4 ms after them, so the last ones wait for the next frame), the
        // frame clock, then the treadmill's quadrature edges.
        for f in &ev.flips {
            self.pending_pd
                .push_back((f.time + PHOTODIODE_LATENCY_S, f.photodiode != 0));
        }
        self.edges.clear();
        while let Some(&(tp, level)) = self.pending_pd.front() {
            if tp > t {
                break;
            }
            self.pending_pd.pop_front();
            self.edges.push((tp, Edge::Photodiode(level)));
        }
        self.edges.push((t, Edge::FrameClock));
        let target = i64::from(ev.encoder_position);
        while self.quad_pos != target {
            self.quad_pos += if self.quad_pos < target { 1 } else { -1 };
            let (a, b) = quadrature_levels(self.quad_pos);
            self.edges.push((t, Edge::Encoder(a, b)));
        }
        // The host may only read what the board stamped up to now: set the clock first.
        self.now.store(t.to_bits(), Ordering::Release);
        if let Err(e) = self.board.feed(t, &self.edges) {
            if !self.warned {
                tracing::error!("simulated sync board: {e}");
                self.warned = true;
            }
        }
        let connected = self.driver.as_ref().is_some_and(|d| d.is_connected());
        let deadline = Instant::now() + FRAME_CLOCK_WAIT;
        let mut got = false;
        while connected && !got {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(e) = self.events.recv_timeout(left) else {
                break;
            };
            self.push_event(&e, out);
            got = matches!(e.kind, EventKind::FrameClock { .. })
                && e.rig_s > t - 0.5 * self.frame_period_s;
        }
        while let Ok(e) = self.events.try_recv() {
            self.push_event(&e, out);
        }
        if !got {
            self.counts.missing += 1;
            if connected && !self.warned {
                tracing::warn!(
                    frame = ev.index,
                    "no frame-clock event from the simulated board within {} ms",
                    FRAME_CLOCK_WAIT.as_millis()
                );
                self.warned = true;
            }
        }
        self.frames += 1;
        if self.frames % 64 == 0 {
            self.update_report();
        }
    }
}

impl Drop for SimSync {
    fn drop(&mut self) {
        self.update_report();
        if let Some(d) = self.driver.take() {
            d.close();
        }
    }
}
