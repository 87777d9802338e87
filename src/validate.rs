//! `rig validate`: hardware-in-loop checks of a rig before an experiment, each with a figure and a
//! verdict.
//!
//! Checks, in order: the sync port opens; the board's identity and firmware; register round-trip
//! latency; the device-to-host clock mapping (drift and offset); the frame clock against the
//! configured imaging rate; photodiode latency from a flip command to the edge, and missed flips;
//! the treadmill encoder; disk throughput and free space for the planned session; ring and
//! extraction headroom at the configured frame size; and the twin's load and step latency.
//!
//! With `sync.port = "sim"` the checks run against the simulated sync board over a real
//! pseudo-terminal ([`crate::harp::sim::SimBoard`]), through the same driver as a real board.
//!
//! Two checks need parts that are not in every binary and are plugged in by the caller: the twin
//! ([`TwinProbe`]) and, on a real rig, the display that flips the photodiode patch
//! ([`FlipTrigger`]). Without them the check is reported as `skipped` with the reason, never as
//! passed.

use std::collections::BTreeMap;
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
