//! `rig validate`: hardware-in-loop checks of a rig before an experiment, each with a figure and a
//! verdict.
//!
//! Checks, in order: the sync port opens; the board's identity and firmware; register round-trip
//! latency; the device-to-host clock mapping (drift and offset); the frame clock against the
//! configured imaging rate; photodiode latency from a flip command to the edge, and missed flips;
//! the treadmill encoder; disk throughput and free space for the planned session; ring and
//! extraction headroom at the configured frame size; the twin's load and step latency; and the
//! display's timing: a grating played on the presenter `display.presenter` names for
//! `display_s`, with flip interval mean and SD, missed refreshes and, on a real board, the
//! photodiode-measured lag from each flip to its edge.
//!
//! With `sync.port = "sim"` the checks run against the simulated sync board over a real
//! pseudo-terminal ([`crate::harp::sim::SimBoard`]), through the same driver as a real board.
//!
//! Three checks need parts that are not in every binary and are plugged in by the caller: the
//! twin ([`TwinProbe`]), the presenter ([`DisplayProbe`]) and, on a real rig, the display that
//! flips the photodiode patch ([`FlipTrigger`]). Without them the check is reported as
//! `skipped` with the reason, never as passed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use twinrig_firmware::device::registers::address as reg;
use twinrig_firmware::harp::ElementType;

use crate::budget::{free_bytes, record_rate};
use crate::config::{RigConfig, SyncBoard};
use crate::harp::sim::{SimBoard, SimBoardOptions};
use crate::harp::{EventKind, HarpDriver, HarpError, HarpOptions, SyncEvent};
use crate::present::FlipRun;

/// Verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::Skipped => "skipped",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    /// The measured figure, for people.
    pub figure: String,
    /// What was required, or why the check failed or did not run.
    pub detail: String,
    /// The figures as numbers, for machines.
    pub values: BTreeMap<&'static str, f64>,
}

impl Check {
    fn new(name: &'static str, status: Status, figure: impl Into<String>) -> Self {
        Check {
            name,
            status,
            figure: figure.into(),
            detail: String::new(),
            values: BTreeMap::new(),
        }
    }

    fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = d.into();
        self
    }

    fn value(mut self, k: &'static str, v: f64) -> Self {
        if v.is_finite() {
            self.values.insert(k, v);
        }
        self
    }

    fn skipped(name: &'static str, why: impl Into<String>) -> Self {
        let why = why.into();
        Check::new(name, Status::Skipped, format!("not run: {why}"))
    }

    fn pass_if(name: &'static str, ok: bool, figure: impl Into<String>) -> Self {
        Check::new(name, if ok { Status::Pass } else { Status::Fail }, figure)
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub rig: String,
    pub config: String,
    pub port: String,
    pub simulated: bool,
    pub checks: Vec<Check>,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub ok: bool,
    pub wall_s: f64,
}

impl Report {
    /// Names and details of the failed checks, one line.
    pub fn failures(&self) -> String {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .map(|c| {
                if c.detail.is_empty() {
                    format!("{}: {}", c.name, c.figure)
                } else {
                    format!("{}: {} ({})", c.name, c.figure, c.detail)
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Timing of the twin, as a [`TwinProbe`] measures it.
#[derive(Debug, Clone, Serialize)]
pub struct TwinTiming {
    pub backend: String,
    pub load_s: f64,
    pub steps: usize,
    pub step_p50_s: f64,
    pub step_p99_s: f64,
}

/// Loads the twin a config names and times single-frame steps. The twin runtime implements it;
/// any `FnMut(&RigConfig, usize) -> Result<TwinTiming, String>` does too.
pub trait TwinProbe {
    fn probe(&mut self, cfg: &RigConfig, steps: usize) -> Result<TwinTiming, String>;
}

impl<F: FnMut(&RigConfig, usize) -> Result<TwinTiming, String>> TwinProbe for F {
    fn probe(&mut self, cfg: &RigConfig, steps: usize) -> Result<TwinTiming, String> {
        self(cfg, steps)
    }
}

/// Makes the display flip the photodiode patch once, as soon as it can; `hold(true)` keeps the
/// patch still between commands (no stimulus running).
pub trait FlipTrigger {
    fn hold(&mut self, on: bool);
    fn flip(&mut self) -> Result<(), String>;
}

impl FlipTrigger for SimBoard {
    fn hold(&mut self, on: bool) {
        self.set_commanded_display(on);
    }
    fn flip(&mut self) -> Result<(), String> {
        SimBoard::flip(self);
        Ok(())
    }
}

/// Runs the configured presenter for a while (`rig validate` spawns or connects to `rig present`
/// the way `rig run` does). `clock` gives host seconds on the driver's clock, the clock of
/// photodiode edges.
pub trait DisplayProbe {
    fn probe(
        &mut self,
        cfg: &RigConfig,
        seconds: f64,
        clock: crate::present::client::RigClock,
    ) -> Result<FlipRun, String>;
}

impl<F> DisplayProbe for F
where
    F: FnMut(&RigConfig, f64, crate::present::client::RigClock) -> Result<FlipRun, String>,
{
    fn probe(
        &mut self,
        cfg: &RigConfig,
        seconds: f64,
        clock: crate::present::client::RigClock,
    ) -> Result<FlipRun, String> {
        self(cfg, seconds, clock)
    }
}

/// How long and how hard to test.
pub struct ValidateOptions {
    /// Length of the planned session, for the free-space check.
    pub session_minutes: f64,
    /// Size of the disk write test.
    pub disk_test_mb: usize,
    /// Frames timed through ring and extraction.
    pub headroom_frames: usize,
    /// Register reads timed.
    pub round_trips: usize,
    /// Seconds of events listened to (frame clock, encoder, clock fit).
    pub listen_s: f64,
    /// Photodiode flips commanded.
    pub flips: usize,
    /// Twin steps timed.
    pub twin_steps: usize,
    pub twin: Option<Box<dyn TwinProbe>>,
    /// The display on a real rig; the simulated board brings its own.
    pub flip_trigger: Option<Box<dyn FlipTrigger>>,
    /// Seconds the display timing check plays a stimulus on the presenter.
    pub display_s: f64,
    pub display: Option<Box<dyn DisplayProbe>>,
    /// The simulated board, when `sync.port = "sim"`.
    pub sim: SimBoardOptions,
}

impl Default for ValidateOptions {
    fn default() -> Self {
        ValidateOptions {
            session_minutes: 60.0,
            disk_test_mb: 32,
            headroom_frames: 300,
            round_trips: 200,
            listen_s: 1.5,
            flips: 20,
            twin_steps: 50,
            twin: None,
            flip_trigger: None,
            display_s: 60.0,
            display: None,
            sim: SimBoardOptions::default(),
        }
    }
}

/// Pass thresholds.
const MAX_ROUND_TRIP_P99_US: f64 = 10_000.0;
const MAX_DRIFT_PPM: f64 = 100.0;
const MAX_CLOCK_RESIDUAL_S: f64 = 1e-3;
const FRAME_RATE_TOLERANCE: f64 = 0.01;
const MAX_FRAME_JITTER_FRACTION: f64 = 0.05;
const MAX_FLIP_LATENCY_FRAMES: f64 = 3.0;
const FLIP_WAIT: Duration = Duration::from_millis(150);
const DISK_MARGIN: f64 = 2.0;
const MIN_HEADROOM: f64 = 1.5;

/// Runs every check. Never panics on a bad rig: each failure is a failed check.
pub fn run(cfg: &RigConfig, config_name: &str, mut opts: ValidateOptions) -> Report {
    let t0 = Instant::now();
    let mut checks = Vec::new();
    let simulated = cfg.sync.port == "sim";

    // The port: the simulated board's pty, or the configured device.
    let mut sim_board = None;
    let port = if simulated {
        match SimBoard::spawn(cfg, opts.sim.clone()) {
            Ok(b) => {
                let p = b.port();
                sim_board = Some(b);
                p
            }
            Err(e) => {
                checks.push(
                    Check::new("port opens", Status::Fail, "simulated board did not start")
                        .detail(e.to_string()),
                );
                String::new()
            }
        }
    } else {
        cfg.sync.port.clone()
    };

    let mut driver = None;
    if !port.is_empty() {
        let opened = serialport::new(&port, cfg.sync.baud)
            .timeout(Duration::from_millis(100))
            .open();
        match opened {
            Ok(p) => {
                drop(p);
                let what = if simulated {
                    format!("{port} (simulated board over a pty)")
                } else {
                    port.clone()
                };
                checks.push(Check::new(
                    "port opens",
                    Status::Pass,
                    format!("{what} at {} baud", cfg.sync.baud),
                ));
                let (c, d) = identity_check(cfg, &port);
                checks.push(c);
                driver = d;
            }
            Err(e) => checks.push(
                Check::new("port opens", Status::Fail, format!("cannot open {port}"))
                    .detail(e.to_string()),
            ),
        }
    }

    const DEVICE_CHECKS: [&str; 5] = [
        "clock drift and offset",
        "frame clock",
        "encoder",
        "photodiode flips",
        "register round trip",
    ];
    match &driver {
        Some(drv) => {
            let events = listen(drv, opts.listen_s);
            checks.push(clock_check(drv, sim_board.as_ref()));
            checks.push(frame_clock_check(cfg, &events, opts.listen_s));
            checks.push(encoder_check(drv, &events, opts.listen_s));
            let trigger: Option<&mut dyn FlipTrigger> = match sim_board.as_mut() {
                Some(b) => Some(b as &mut dyn FlipTrigger),
                None => opts
                    .flip_trigger
                    .as_mut()
                    .map(|b| b.as_mut() as &mut dyn FlipTrigger),
            };
            checks.push(photodiode_check(cfg, drv, trigger, opts.flips));
            checks.push(round_trip_check(drv, opts.round_trips));
        }
        None => {
            for name in DEVICE_CHECKS {
                checks.push(Check::skipped(name, "no working sync board"));
            }
        }
    }
    let display = opts
        .display
        .as_mut()
        .map(|b| b.as_mut() as &mut dyn DisplayProbe);
    checks.push(display_check(
        cfg,
        driver.as_ref().filter(|_| !simulated),
        display,
        opts.display_s,
    ));
    if let Some(d) = driver {
        d.close();
    }
    drop(sim_board);

    checks.extend(disk_checks(cfg, &opts));
    checks.push(headroom_check(cfg, opts.headroom_frames));
    let twin = opts.twin.as_mut().map(|b| b.as_mut() as &mut dyn TwinProbe);
    checks.push(twin_check(cfg, twin, opts.twin_steps));

    let count = |s| checks.iter().filter(|c| c.status == s).count();
    let (passed, failed, skipped) = (
        count(Status::Pass),
        count(Status::Fail),
        count(Status::Skipped),
    );
    Report {
        rig: cfg.rig.name.clone(),
        config: config_name.to_string(),
        port: if simulated { "sim".into() } else { port },
        simulated,
        passed,
        failed,
        skipped,
        ok: failed == 0,
        checks,
        wall_s: t0.elapsed().as_secs_f64(),
    }
}

fn identity_check(cfg: &RigConfig, port: &str) -> (Check, Option<HarpDriver>) {
    const NAME: &str = "identity and firmware";
    let opts = match HarpOptions::from_config(&cfg.sync) {
        Ok(o) => o,
        Err(e) => {
            return (
                Check::new(NAME, Status::Fail, "bad [sync] config").detail(e.to_string()),
                None,
            )
        }
    };
    match HarpDriver::open(port, opts) {
        Ok(drv) => {
            let id = drv.identity();
            let figure = format!(
                "WHO_AM_I {}, firmware {}, hardware {}, core {}, \"{}\"",
                id.who_am_i, id.firmware, id.hardware, id.core, id.name
            );
            let c = Check::new(NAME, Status::Pass, figure)
                .value("who_am_i", f64::from(id.who_am_i))
                .detail(id.version.unwrap_or_default());
            (c, Some(drv))
        }
        // The driver reads WHO_AM_I before it writes anything and refuses another board, so
        // a wrong board is named here, untouched.
        Err(e @ HarpError::WrongDevice { found, .. }) => (
            Check::new(NAME, Status::Fail, "not the configured board")
                .value("who_am_i", f64::from(found))
                .detail(e.to_string()),
            None,
        ),
        Err(e) => {
            let figure = match &e {
                HarpError::Timeout { .. } => "no reply to the handshake",
                _ => "handshake failed",
            };
            (
                Check::new(NAME, Status::Fail, figure).detail(e.to_string()),
                None,
            )
        }
    }
}

fn listen(drv: &HarpDriver, seconds: f64) -> Vec<SyncEvent> {
    let rx = drv.events();
    while rx.try_recv().is_ok() {}
    let end = Instant::now() + Duration::from_secs_f64(seconds.max(0.1));
    let mut v = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        if let Ok(e) = rx.recv_timeout(left) {
            v.push(e);
        }
    }
    v
}

fn round_trip_check(drv: &HarpDriver, n: usize) -> Check {
    const NAME: &str = "register round trip";
    let rx = drv.events();
    // Keep the event channel drained while timing.
    let drain = || while rx.try_recv().is_ok() {};
    drain();
    match drv.round_trip(n.max(10)) {
        Ok(rt) => {
            drain();
            Check::pass_if(
                NAME,
                rt.p99_us <= MAX_ROUND_TRIP_P99_US,
                format!(
                    "p50 {:.0} us, p99 {:.0} us over {} reads",
                    rt.p50_us, rt.p99_us, rt.count
                ),
            )
            .detail(format!("p99 must be under {MAX_ROUND_TRIP_P99_US:.0} us"))
            .value("p50_us", rt.p50_us)
            .value("p99_us", rt.p99_us)
            .value("max_us", rt.max_us)
            .value("max_p99_us", MAX_ROUND_TRIP_P99_US)
        }
        Err(e) => Check::new(NAME, Status::Fail, "a register read failed").detail(e.to_string()),
    }
}

fn clock_check(drv: &HarpDriver, sim: Option<&SimBoard>) -> Check {
    const NAME: &str = "clock drift and offset";
    let Some(e) = drv.clock().filter(|e| e.bins >= 3) else {
        return Check::new(
            NAME,
            Status::Fail,
            "too few timestamped messages to fit a clock",
        )
        .detail("the board sent almost nothing while listening");
    };
    let ok = e.drift_ppm.abs() <= MAX_DRIFT_PPM && e.residual_rms_s <= MAX_CLOCK_RESIDUAL_S;
    let mut c = Check::pass_if(
        NAME,
        ok,
        format!(
            "drift {:+.1} ppm, offset {:.6} s, residual {:.0} us over {:.1} s",
            e.drift_ppm,
            e.offset_s,
            e.residual_rms_s * 1e6,
            e.span_s
        ),
    )
    .value("drift_ppm", e.drift_ppm)
    .value("offset_s", e.offset_s)
    .value("residual_us", e.residual_rms_s * 1e6)
    .value("span_s", e.span_s)
    .value("max_drift_ppm", MAX_DRIFT_PPM)
    .value("max_residual_us", MAX_CLOCK_RESIDUAL_S * 1e6);
    let mut detail = format!(
        "|drift| must be under {MAX_DRIFT_PPM} ppm, residual under {:.0} us",
        MAX_CLOCK_RESIDUAL_S * 1e6
    );
    if let Some(b) = sim {
        // The simulated board's clock runs fast by `drift_ppm`: the host gains -drift/(1+drift).
        let truth = (1.0 / (1.0 + b.drift_ppm() * 1e-6) - 1.0) * 1e6;
        detail.push_str(&format!(
            "; simulated board's true drift {truth:+.1} ppm, estimate off by {:.1} ppm",
            (e.drift_ppm - truth).abs()
        ));
        c = c.value("true_drift_ppm", truth);
    }
    c.detail(detail)
}

fn frame_clock_check(cfg: &RigConfig, events: &[SyncEvent], listen_s: f64) -> Check {
    const NAME: &str = "frame clock";
    let mut times = Vec::new();
    let mut missing = 0u64;
    let mut last_count = None;
    for e in events {
        if let EventKind::FrameClock { count } = e.kind {
            if let Some(c) = last_count {
                if count > c + 1 {
                    missing += count - c - 1;
                }
            }
            last_count = Some(count);
            times.push(e.device_s);
        }
    }
    let want = cfg.imaging.frame_rate_hz;
    if times.len() < 3 {
        return Check::new(
            NAME,
            Status::Fail,
            format!("{} edges in {listen_s:.1} s", times.len()),
        )
        .detail(format!(
            "expected {want} Hz on input {}: is the microscope scanning?",
            cfg.sync.frame_clock_input
        ));
    }
    let dts: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    let mean = dts.iter().sum::<f64>() / dts.len() as f64;
    let sd = (dts.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / dts.len() as f64).sqrt();
    let rate = 1.0 / mean;
    let ok = ((rate - want) / want).abs() <= FRAME_RATE_TOLERANCE
        && sd <= MAX_FRAME_JITTER_FRACTION * mean
        && missing == 0;
    Check::pass_if(
        NAME,
        ok,
        format!(
            "{rate:.3} Hz, jitter {:.0} us (sd), {} edges, {missing} missed",
            sd * 1e6,
            times.len()
        ),
    )
    .detail(format!(
        "config {want} Hz within {:.0}%, jitter under {:.0}% of the period, no missed counts",
        FRAME_RATE_TOLERANCE * 100.0,
        MAX_FRAME_JITTER_FRACTION * 100.0
    ))
    .value("rate_hz", rate)
    .value("jitter_us", sd * 1e6)
    .value("edges", times.len() as f64)
    .value("missed", missing as f64)
}

fn encoder_check(drv: &HarpDriver, events: &[SyncEvent], listen_s: f64) -> Check {
    const NAME: &str = "encoder";
    let samples: Vec<(i64, f64)> = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Encoder {
                position,
                speed_cm_s,
            } => Some((position, speed_cm_s)),
            _ => None,
        })
        .collect();
    let rate = samples.len() as f64 / listen_s.max(1e-3);
    let (expected, errors) = match drv.map().kind {
        SyncBoard::Twinrig => (
            drv.read(reg::ENCODER_RATE, ElementType::U16)
                .ok()
                .and_then(|v| v.first::<u16>())
                .map(f64::from),
            drv.read(reg::ENCODER_ERRORS, ElementType::U32)
                .ok()
                .and_then(|v| v.first::<u32>()),
        ),
        SyncBoard::HarpBehavior => (None, None),
    };
    let min_rate = expected.map_or(10.0, |r| r * 0.5);
    let ok = rate >= min_rate && errors.unwrap_or(0) == 0;
    let (pos, speed) = samples.last().copied().unwrap_or((0, 0.0));
    let mut figure = format!("{rate:.0} events/s, position {pos}, speed {speed:.1} cm/s");
    if let Some(e) = errors {
        figure.push_str(&format!(", {e} quadrature errors"));
    }
    Check::pass_if(NAME, ok, figure)
        .detail(format!(
            "at least {min_rate:.0} events/s{}",
            if errors.is_some() {
                ", no quadrature errors"
            } else {
                ""
            }
        ))
        .value("events_per_s", rate)
        .value("min_events_per_s", min_rate)
        .value("position", pos as f64)
        .value("speed_cm_s", speed)
        .value("quadrature_errors", errors.map_or(f64::NAN, f64::from))
}

fn photodiode_check(
    cfg: &RigConfig,
    drv: &HarpDriver,
    trigger: Option<&mut dyn FlipTrigger>,
    flips: usize,
) -> Check {
    const NAME: &str = "photodiode flips";
    let Some(trigger) = trigger else {
        return Check::skipped(NAME, "no display presenter in this binary to command flips");
    };
    let rx = drv.events();
    trigger.hold(true);
    std::thread::sleep(Duration::from_millis(30));
    while rx.try_recv().is_ok() {}
    let mut latencies = Vec::new();
    let mut missed = 0usize;
    for _ in 0..flips.max(1) {
        let t_cmd = drv.host_now_s();
        if let Err(e) = trigger.flip() {
            trigger.hold(false);
            return Check::new(NAME, Status::Fail, "flip command failed").detail(e);
        }
        let end = Instant::now() + FLIP_WAIT;
        let mut seen = None;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(SyncEvent {
                    kind: EventKind::Photodiode { .. },
                    rig_s,
                    ..
                }) => {
                    seen = Some(rig_s - t_cmd);
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        match seen {
            // In µs, the unit `round_trip_stats` names its figures in.
            Some(l) => latencies.push(l * 1e6),
            None => missed += 1,
        }
    }
    trigger.hold(false);
    let frame = 1.0 / cfg.display.refresh_hz;
    let limit = MAX_FLIP_LATENCY_FRAMES * frame;
    let mut sorted = latencies.clone();
    let stats = crate::harp::driver::round_trip_stats(&mut sorted);
    let ok = missed == 0 && !latencies.is_empty() && stats.p99_us * 1e-6 <= limit;
    Check::pass_if(
        NAME,
        ok,
        format!(
            "latency p50 {:.1} ms, max {:.1} ms; {missed} of {} flips missed",
            stats.p50_us * 1e-3,
            stats.max_us * 1e-3,
            flips.max(1)
        ),
    )
    .detail(format!(
        "every flip seen, within {MAX_FLIP_LATENCY_FRAMES} display frames ({:.1} ms)",
        limit * 1e3
    ))
    .value("latency_p50_ms", stats.p50_us * 1e-3)
    .value("latency_p99_ms", stats.p99_us * 1e-3)
    .value("latency_max_ms", stats.max_us * 1e-3)
    .value("limit_ms", limit * 1e3)
    .value("missed", missed as f64)
}

/// The presenter's flips over `seconds` of a drifting grating: interval mean and SD, missed
/// refresh periods, and (on a real sync board) the photodiode-measured lag from each flip to the
/// edge its patch made.
fn display_check(
    cfg: &RigConfig,
    drv: Option<&HarpDriver>,
    probe: Option<&mut dyn DisplayProbe>,
    seconds: f64,
) -> Check {
    const NAME: &str = "display timing";
    let Some(probe) = probe else {
        return Check::skipped(NAME, "no presenter probe in this binary");
    };
    if matches!(cfg.display.presenter.trim(), "" | "none") {
        return Check::skipped(
            NAME,
            "display.presenter = \"none\": set it (spawn, or the address of `rig present`) to \
             time the stimulus display",
        );
    }
    // Photodiode edges arrive while the presenter runs: a thread collects them so the sync
    // driver's queue does not fill.
    let collector = drv.map(|d| {
        let rx = d.events();
        while rx.try_recv().is_ok() {}
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let st = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut edges = Vec::new();
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(SyncEvent {
                    kind: EventKind::Photodiode { level },
                    rig_s,
                    ..
                }) = rx.recv_timeout(Duration::from_millis(50))
                {
                    edges.push((rig_s, level));
                }
            }
            edges
        });
        (stop, handle)
    });
    let clock: crate::present::client::RigClock = match drv {
        Some(d) => {
            let zero = Instant::now() - Duration::from_secs_f64(d.host_now_s().max(0.0));
            std::sync::Arc::new(move || zero.elapsed().as_secs_f64())
        }
        None => crate::present::client::monotonic_clock(),
    };
    let run = probe.probe(cfg, seconds, clock);
    let edges = collector.map(|(stop, h)| {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        h.join().unwrap_or_default()
    });
    let run = match run {
        Ok(r) => r,
        Err(e) => {
            return Check::new(NAME, Status::Fail, "the presenter could not be timed").detail(e)
        }
    };
    let t = flip_timing(&run.flips, cfg.display.refresh_hz);
    let expected = (seconds * cfg.display.refresh_hz).max(1.0);
    let mut summary = format!(
        "{} flips in {seconds:.0} s ({}): interval {:.2} ± {:.2} ms, {} refresh period(s) missed",
        run.flips.len(),
        run.pacing,
        t.mean_ms,
        t.sd_ms,
        t.missed
    );
    let lag = edges.as_deref().map(|e| photodiode_lag(&run.flips, e, cfg));
    match &lag {
        Some(Some(l)) => {
            let _ = write!(
                summary,
                "; photodiode lag {:.1} ms median, {:.1} ms p95 ({} edges)",
                l.median_ms, l.p95_ms, l.edges
            );
        }
        Some(None) => summary.push_str("; the photodiode saw no edge of these flips"),
        None => summary.push_str("; lag not measured (no real sync board)"),
    }
    // A rig that misses more than 1 % of its refreshes, or whose patch the photodiode cannot
    // see, shows stimuli nobody can time.
    let missed_ok = (t.missed as f64) <= (0.01 * expected).floor();
    let flips_ok = run.flips.len() as f64 >= (0.5 * expected).ceil();
    let ok = flips_ok && missed_ok && !matches!(lag, Some(None));
    let mut c = Check::pass_if(NAME, ok, summary)
        .detail(format!(
            "at least half the expected {expected:.0} flips, at most 1 % of refresh periods \
             missed, and every flip's patch seen by the photodiode on a real board"
        ))
        .value("seconds", seconds)
        .value("flips", run.flips.len() as f64)
        .value("interval_mean_ms", t.mean_ms)
        .value("interval_sd_ms", t.sd_ms)
        .value("missed_frames", t.missed as f64)
        .value("max_missed_frames", (0.01 * expected).floor())
        .value("min_flips", (0.5 * expected).ceil())
        .value("vsync", if run.vsync { 1.0 } else { 0.0 });
    if let Some(Some(l)) = lag {
        c = c
            .value("photodiode_lag_median_ms", l.median_ms)
            .value("photodiode_lag_p95_ms", l.p95_ms)
            .value("photodiode_edges", l.edges as f64);
    }
    c
}

struct FlipTiming {
    mean_ms: f64,
    sd_ms: f64,
    missed: u64,
}

/// Interval mean and SD between consecutive flips, and the refresh periods they missed.
fn flip_timing(flips: &[crate::present::PresentedFrame], refresh_hz: f64) -> FlipTiming {
    let times: Vec<f64> = flips.iter().map(|f| f.time).collect();
    let iv = crate::stats::intervals(&times);
    let n = iv.len().max(1) as f64;
    let mean = iv.iter().sum::<f64>() / n;
    let var = iv.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    // The presenter counts what it missed; a gap in its sequence numbers (reports dropped on
    // the way) is counted from the interval instead.
    let period = 1.0 / refresh_hz;
    let mut missed: u64 = flips.first().map_or(0, |f| f.missed as u64);
    for w in flips.windows(2) {
        missed += if w[1].seq == w[0].seq + 1 {
            w[1].missed as u64
        } else {
            (((w[1].time - w[0].time) / period).round() as u64).saturating_sub(1)
        };
    }
    FlipTiming {
        mean_ms: mean * 1e3,
        sd_ms: var.sqrt() * 1e3,
        missed,
    }
}

struct Lag {
    median_ms: f64,
    p95_ms: f64,
    edges: usize,
}

/// Lag from flips to the photodiode edges they made: each edge is paired with the flip that set
/// the patch to its level and lies nearest `display.lag_ms` before it (an alternating patch
/// cannot tell flips two periods apart, so the configured lag picks among them).
fn photodiode_lag(
    flips: &[crate::present::PresentedFrame],
    edges: &[(f64, bool)],
    cfg: &RigConfig,
) -> Option<Lag> {
    let (t0, t1) = (flips.first()?.time, flips.last()?.time);
    let prior = cfg.display.lag_ms * 1e-3;
    let lags: Vec<f64> = edges
        .iter()
        .filter(|(t, _)| *t >= t0 && *t <= t1 + 0.1)
        .filter_map(|&(t, level)| {
            flips
                .iter()
                .filter(|f| (f.photodiode == 1) == level && f.time <= t)
                .map(|f| t - f.time)
                .min_by(|a, b| (a - prior).abs().total_cmp(&(b - prior).abs()))
        })
        .collect();
    if lags.is_empty() {
        return None;
    }
    Some(Lag {
        median_ms: crate::stats::median(&lags)? * 1e3,
        p95_ms: crate::stats::quantile(&lags, 0.95)? * 1e3,
        edges: lags.len(),
    })
}

fn disk_checks(cfg: &RigConfig, opts: &ValidateOptions) -> Vec<Check> {
    let dir = &cfg.storage.out_dir;
    let need_rate = record_rate(cfg);
    let mb = |b: f64| b / 1e6;
    if let Err(e) = std::fs::create_dir_all(dir) {
        let why = format!("cannot create {}: {e}", dir.display());
        return vec![
            Check::new("disk throughput", Status::Fail, "no output folder").detail(why.clone()),
            Check::new("disk free space", Status::Fail, "no output folder").detail(why),
        ];
    }
    let throughput = write_test(dir, opts.disk_test_mb.max(1));
    let t = match throughput {
        Ok(rate) => Check::pass_if(
            "disk throughput",
            rate >= DISK_MARGIN * need_rate,
            format!("{:.0} MB/s written to {}", mb(rate), dir.display()),
        )
        .detail(format!(
            "recording needs {:.1} MB/s; at least {DISK_MARGIN}x that",
            mb(need_rate)
        ))
        .value("write_mb_s", mb(rate))
        .value("needed_mb_s", mb(need_rate))
        .value("margin", DISK_MARGIN),
        Err(e) => Check::new("disk throughput", Status::Fail, "write test failed").detail(e),
    };
    let planned = need_rate * opts.session_minutes * 60.0;
    let f = match free_bytes(dir) {
        Ok(free) => Check::pass_if(
            "disk free space",
            free as f64 >= planned,
            format!("{:.1} GB free", free as f64 / 1e9),
        )
        .detail(format!(
            "a {:.0} min session needs {:.1} GB",
            opts.session_minutes,
            planned / 1e9
        ))
        .value("free_gb", free as f64 / 1e9)
        .value("planned_gb", planned / 1e9),
        Err(e) => Check::new("disk free space", Status::Fail, "statvfs failed").detail(e),
    };
    vec![t, f]
}

/// Writes `mb` MiB to a temporary file in `dir` and syncs it; returns bytes per second.
fn write_test(dir: &Path, mb: usize) -> Result<f64, String> {
    let path = dir.join(format!(".rig-validate-{}.tmp", std::process::id()));
    let chunk = vec![0xA5u8; 1 << 20];
    let t = Instant::now();
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&path)?;
        for _ in 0..mb {
            f.write_all(&chunk)?;
        }
        f.sync_all()
    })();
    let elapsed = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    result.map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((mb << 20) as f64 / elapsed.max(1e-9))
}

fn headroom_check(cfg: &RigConfig, frames: usize) -> Check {
    const NAME: &str = "ring and extraction headroom";
    match measure_headroom(cfg, frames.max(10)) {
        Ok((mean_s, p99_s, n)) => {
            let period = 1.0 / cfg.imaging.frame_rate_hz;
            let headroom = period / mean_s;
            Check::pass_if(
                NAME,
                headroom >= MIN_HEADROOM && p99_s < period,
                format!(
                    "{headroom:.1}x: {:.2} ms per {}x{} frame (p99 {:.2} ms), period {:.1} ms",
                    mean_s * 1e3,
                    cfg.imaging.height,
                    cfg.imaging.width,
                    p99_s * 1e3,
                    period * 1e3
                ),
            )
            .detail(format!(
                "{n} frames through the ring and extraction; at least {MIN_HEADROOM}x, p99 \
                 under one period"
            ))
            .value("headroom", headroom)
            .value("frame_ms", mean_s * 1e3)
            .value("frame_p99_ms", p99_s * 1e3)
            .value("min_headroom", MIN_HEADROOM)
            .value("period_ms", period * 1e3)
        }
        Err(e) => Check::new(NAME, Status::Fail, "extraction did not run").detail(e),
    }
}

/// Times `n` simulated frames at the configured size through a FrameRing and the extractor.
/// Returns (mean, p99, frames) in seconds.
fn measure_headroom(cfg: &RigConfig, n: usize) -> Result<(f64, f64, usize), String> {
    use crate::extract::FrameOutput;
    use crate::ring::{frame_ring, Overflow};
    let (h, w) = (cfg.imaging.height, cfg.imaging.width);
    let mut rig = crate::sim::SimRig::new(cfg, cfg.sim.seed);
    let mut ev = crate::sim::FrameEvents::default();
    let distinct = 24.min(n);
    let source: Vec<Vec<u16>> = (0..distinct)
        .map(|_| {
            let mut f = vec![0u16; h * w];
            rig.step(&mut f, &mut ev);
            f
        })
        .collect();
    let reference = crate::extract::build_reference(&source, h, w).map_err(|e| e.to_string())?;
    let rois = rig.microscope.footprints.clone();
    let mut ex = crate::pipeline::replay::extractor_for(
        cfg,
        h,
        w,
        &reference,
        &rois,
        cfg.extract.deconvolve,
    )
    .map_err(|e| e.to_string())?;
    let mut out = FrameOutput::new(ex.n_rois());
    let (mut prod, mut cons) = frame_ring(8, h * w, Overflow::Block);
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let src = &source[i % distinct];
        prod.push_with(i as u64, i as f64, |buf| buf.copy_from_slice(src));
        let slot = cons.pop().ok_or("the ring lost a frame")?;
        ex.process(&slot.pixels, &mut out)
            .map_err(|e| e.to_string())?;
        cons.recycle(slot);
        times.push(t.elapsed().as_secs_f64());
    }
    let mean = times.iter().sum::<f64>() / n as f64;
    times.sort_by(f64::total_cmp);
    let p99 = times[((n - 1) as f64 * 0.99).round() as usize];
    Ok((mean, p99, n))
}

/// The twin check: loads the twin through `probe` and compares its step latency with the frame
/// budget. Without a probe the check is skipped (the twin runtime is not in this binary).
pub fn twin_check(cfg: &RigConfig, probe: Option<&mut dyn TwinProbe>, steps: usize) -> Check {
    const NAME: &str = "twin load and step latency";
    let Some(probe) = probe else {
        return Check::skipped(NAME, "twin runtime not built in this binary");
    };
    let budget = 1.0 / cfg.imaging.frame_rate_hz;
    match probe.probe(cfg, steps) {
        Ok(t) => {
            // How many times over a step fits in a frame: what is left for a bigger twin.
            let headroom = budget / t.step_p99_s.max(1e-9);
            Check::pass_if(
                NAME,
                t.step_p99_s <= budget,
                format!(
                    "loaded in {:.2} s on {}; step p50 {:.2} ms, p99 {:.2} ms; headroom {:.1}x",
                    t.load_s,
                    t.backend,
                    t.step_p50_s * 1e3,
                    t.step_p99_s * 1e3,
                    headroom
                ),
            )
            .detail(if headroom >= 1.0 {
                format!(
                    "{} steps; p99 within the frame budget {:.1} ms",
                    t.steps,
                    budget * 1e3
                )
            } else {
                format!(
                    "{} steps; p99 over the frame budget {:.1} ms: the loop will skip frames (all \
                     are still recorded). Use {}",
                    t.steps,
                    budget * 1e3,
                    crate::twin::runtime::SLOW_TWIN_ADVICE
                )
            })
            .value("headroom", headroom)
            .value("load_s", t.load_s)
            .value("step_p50_ms", t.step_p50_s * 1e3)
            .value("step_p99_ms", t.step_p99_s * 1e3)
            .value("budget_ms", budget * 1e3)
        }
        Err(e) => Check::new(NAME, Status::Fail, "the twin did not load").detail(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::present::PresentedFrame;

    /// `n` flips at 60 Hz from t = 1 s, the patch alternating, with flips `skip` left out (the
    /// presenter missed those refreshes and says so on the next flip).
    fn flips(n: usize, skip: &[usize]) -> Vec<PresentedFrame> {
        let mut out = Vec::new();
        let mut seq = 0;
        let mut missed = 0;
        for k in 0..n {
            if skip.contains(&k) {
                missed += 1;
                continue;
            }
            out.push(PresentedFrame {
                time: 1.0 + k as f64 / 60.0,
                clip: 0,
                frame: 0,
                photodiode: (k % 2) as u8,
                missed,
                seq,
            });
            seq += 1;
            missed = 0;
        }
        out
    }

    #[test]
    fn flip_timing_counts_missed_refreshes_and_the_interval_spread() {
        let t = flip_timing(&flips(600, &[100, 300, 301]), 60.0);
        assert_eq!(t.missed, 3);
        assert!(
            (t.mean_ms - 1e3 * 599.0 / 60.0 / 596.0).abs() < 1e-6,
            "{}",
            t.mean_ms
        );
        assert!(t.sd_ms > 0.5, "{}", t.sd_ms);
        // Reports lost on the way (a gap in seq) are counted from the interval.
        let mut f = flips(100, &[]);
        f.remove(50);
        assert_eq!(flip_timing(&f, 60.0).missed, 1);
        let steady = flip_timing(&flips(100, &[]), 60.0);
        assert_eq!(steady.missed, 0);
        assert!(steady.sd_ms < 1e-9 && (steady.mean_ms - 1e3 / 60.0).abs() < 1e-9);
    }

    #[test]
    fn photodiode_lag_pairs_each_edge_with_its_flip() {
        let f = flips(300, &[]);
        // An LCD 40 ms behind the flips (2.4 periods): the flips that set an edge's level lie
        // 40 ms and 6.7 ms before it, and only the configured lag tells them apart.
        let edges: Vec<(f64, bool)> = f
            .iter()
            .map(|x| (x.time + 0.040, x.photodiode == 1))
            .collect();
        let mut cfg = RigConfig::embedded_sim();
        cfg.display.lag_ms = 35.0;
        let l = photodiode_lag(&f, &edges, &cfg).unwrap();
        assert!((l.median_ms - 40.0).abs() < 1e-6, "{}", l.median_ms);
        assert_eq!(l.edges, 300);
        cfg.display.lag_ms = 0.0;
        let l = photodiode_lag(&f, &edges, &cfg).unwrap();
        assert!(
            (l.median_ms - (40.0 - 2e3 / 60.0)).abs() < 1e-6,
            "{}",
            l.median_ms
        );
        // No edges during the flips: no lag.
        assert!(photodiode_lag(&f, &[(0.5, true)], &cfg).is_none());
    }

    #[test]
    fn twin_check_skips_without_a_runtime_and_judges_with_one() {
        let cfg = RigConfig::embedded_sim();
        let c = twin_check(&cfg, None, 10);
        assert_eq!(c.status, Status::Skipped);
        assert!(c.figure.contains("twin runtime not built"));
        let mut fast = |_: &RigConfig, steps: usize| {
            Ok(TwinTiming {
                backend: "cpu".into(),
                load_s: 0.1,
                steps,
                step_p50_s: 0.002,
                step_p99_s: 0.004,
            })
        };
        let c = twin_check(&cfg, Some(&mut fast), 10);
        assert_eq!(c.status, Status::Pass);
        // 33.3 ms frame / 4 ms p99.
        assert!(c.figure.contains("headroom 8.3x"), "{}", c.figure);
        let mut slow = |_: &RigConfig, steps: usize| {
            Ok(TwinTiming {
                backend: "cpu".into(),
                load_s: 0.1,
                steps,
                step_p50_s: 0.030,
                step_p99_s: 0.050,
            })
        };
        let c = twin_check(&cfg, Some(&mut slow), 10);
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.figure.contains("headroom 0.7x") && c.detail.contains("cuda"),
            "{c:?}"
        );
        let mut broken = |_: &RigConfig, _: usize| Err("no such file".to_string());
        let c = twin_check(&cfg, Some(&mut broken), 10);
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("no such file"));
    }

    #[test]
    fn frame_clock_judges_rate_jitter_and_missing_counts() {
        let cfg = RigConfig::embedded_sim();
        let ev = |count: u64, t: f64| SyncEvent {
            kind: EventKind::FrameClock { count },
            device_s: t,
            rig_s: t,
            received_s: t,
            connection: 0,
        };
        let good: Vec<_> = (0..30).map(|k| ev(k, k as f64 / 30.0)).collect();
        assert_eq!(frame_clock_check(&cfg, &good, 1.0).status, Status::Pass);
        let slow: Vec<_> = (0..30).map(|k| ev(k, k as f64 / 25.0)).collect();
        assert_eq!(frame_clock_check(&cfg, &slow, 1.0).status, Status::Fail);
        let mut gap = good.clone();
        gap.remove(10);
        let c = frame_clock_check(&cfg, &gap, 1.0);
        assert_eq!(c.status, Status::Fail);
        assert_eq!(c.values["missed"], 1.0);
        assert_eq!(frame_clock_check(&cfg, &[], 1.0).status, Status::Fail);
    }
}
