//! `rig present`: the stimulus window on the rig's display, served over the display protocol
//! (docs/display-protocol.md); `--measure` times its flips instead.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use twinrig::config::Renderer;
use twinrig::config::RigConfig;
use twinrig::present::core::{Clip, Command, FlipStats, Presenter};
use twinrig::present::protocol::DEFAULT_LISTEN;
use twinrig::present::server::{presenter_info, Link, ProtocolServer};
use twinrig::present::window::open_screen;

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  rig present --listen 127.0.0.1:7879\n  rig present --measure 60 --json\n  rig present --renderer cpu --measure 30"
)]
pub struct Args {
    /// Rig config (TOML): [display] and [stimulus]; the embedded simulated rig when omitted.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the daemon connects: host:port (loopback by default) or unix:/path/to/socket.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    listen: String,
    /// Monitor to cover (index among the X screen's monitors; default: the primary).
    #[arg(long)]
    monitor: Option<usize>,
    /// Time the flips for this many seconds (a drifting grating, no daemon) and report.
    #[arg(long, value_name = "SECONDS")]
    measure: Option<f64>,
    /// Print the --measure report as JSON.
    #[arg(long)]
    json: bool,
    /// Who draws: auto (OpenGL if a context can be made, else the CPU), gl, or cpu; default
    /// display.renderer.
    #[arg(long)]
    renderer: Option<Renderer>,
    /// Run the flip loop at real-time priority (SCHED_FIFO; needs root or CAP_SYS_NICE).
    #[arg(long)]
    realtime: bool,
    /// No window: the same protocol server and flip loop over an in-memory framebuffer (tests,
    /// rigs without a monitor attached yet).
    #[arg(long, conflicts_with = "measure")]
    headless: bool,
}

/// Puts the calling thread in SCHED_FIFO; says why not when it cannot.
fn set_realtime() -> bool {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: sched_setscheduler reads the parameter struct we pass; pid 0 is this thread.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if r != 0 {
        tracing::warn!(
            "--realtime: cannot switch to SCHED_FIFO ({}); running at normal priority",
            std::io::Error::last_os_error()
        );
        return false;
    }
    true
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// What `rig present` tells clients about its pacing.
fn pacing(vsync: bool, renderer: &str) -> String {
    if vsync {
        format!("vsync ({renderer})")
    } else {
        format!("deadline timer ({renderer}; the swap does not wait for the monitor)")
    }
}

/// Raises the flip loop's priority: SCHED_FIFO with `--realtime`, else nice -10 when allowed,
/// so that the closed loop's other work does not delay a flip. Says what it got.
fn raise_priority(realtime: bool) -> &'static str {
    if realtime && set_realtime() {
        return "realtime (SCHED_FIFO 10)";
    }
    // SAFETY: setpriority on this thread's id changes only its nice value.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, -10) };
    if r == 0 {
        "nice -10"
    } else {
        tracing::info!(
            "the flip loop runs at normal priority ({}); give the user CAP_SYS_NICE or run \
             with --realtime as root to keep other work from delaying flips",
            std::io::Error::last_os_error()
        );
        "normal"
    }
}

pub fn run(a: Args) -> Result<()> {
    let mut cfg = super::load_config(a.config.as_deref())?;
    if let Some(r) = a.renderer {
        cfg.display.renderer = r;
    }
    if let Some(s) = a.measure {
        if !(s.is_finite() && s > 0.0 && s <= 3600.0) {
            bail!("--measure must be in (0, 3600] seconds, got {s}");
        }
        return measure(&cfg, a.monitor, s, a.json, a.realtime);
    }
    install_signal_handlers();
    if a.headless {
        let p = twinrig::present::server::HeadlessPresenter::start(&cfg, &a.listen)?;
        eprintln!("rig present: listening on {}", p.addr());
        while !STOP.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        drop(p);
        eprintln!("rig present: stopped");
        return Ok(());
    }
    // Before the window: threads the GL driver starts (llvmpipe's rasterisers) inherit it.
    let priority = raise_priority(a.realtime);
    tracing::info!("flip loop priority: {priority}");
    let screen = open_screen(&cfg.display, a.monitor, cfg.display.renderer)?;
    let epoch = Instant::now();
    let link = Link::new();
    let info = presenter_info(
        &cfg,
        screen.vsync_paced(),
        &pacing(screen.vsync_paced(), &screen.renderer()),
    );
    let server = ProtocolServer::start(&a.listen, info, epoch, &link)?;
    // One line on stderr that scripts (and tests) can wait for.
    eprintln!("rig present: listening on {}", server.addr());
    let mut p = Presenter::new(screen, &cfg, epoch, link.cmd_rx.clone(), link.ev_tx.clone());
    p.run(&STOP).context("presenting")?;
    drop(server);
    let s = p.stats();
    eprintln!(
        "rig present: {} flips, interval {:.3} ± {:.3} ms, {} missed",
        s.flips, s.interval_mean_ms, s.interval_sd_ms, s.missed_frames
    );
    Ok(())
}

#[derive(Serialize)]
struct MeasureReport {
    renderer: String,
    vsync: bool,
    pacing: &'static str,
    priority: &'static str,
    x_display: String,
    width_px: u32,
    height_px: u32,
    refresh_hz: f64,
    period_ms: f64,
    seconds: f64,
    #[serde(flatten)]
    stats: FlipStats,
}

fn measure(
    cfg: &RigConfig,
    monitor: Option<usize>,
    seconds: f64,
    json: bool,
    realtime: bool,
) -> Result<()> {
    install_signal_handlers();
    let priority = raise_priority(realtime);
    let screen = open_screen(&cfg.display, monitor, cfg.display.renderer)?;
    let link = Link::new();
    let mut p = Presenter::new(screen, cfg, Instant::now(), link.cmd_rx, link.ev_tx);
    // Nobody reads the flip reports here.
    let ev_rx = link.ev_rx;
    p.apply(Command::Upload {
        id: 0,
        clip: std::sync::Arc::new(Clip::drifting_grating(cfg)),
    });
    let play = Command::Play {
        id: 0,
        at: None,
        rate_hz: None,
    };
    // Half a second of warm-up (window mapping, first SHM segment) is not measured.
    let warm = p.now() + 0.5;
    while p.now() < warm && !STOP.load(Ordering::Relaxed) {
        if p.is_idle() {
            p.apply(play.clone());
        }
        if p.step()?.is_none() {
            bail!("the window was closed");
        }
        while ev_rx.try_recv().is_ok() {}
    }
    p.reset_stats();
    let end = p.now() + seconds;
    while p.now() < end && !STOP.load(Ordering::Relaxed) {
        if p.is_idle() {
            p.apply(play.clone());
        }
        if p.step()?.is_none() {
            break;
        }
        while ev_rx.try_recv().is_ok() {}
    }
    let renderer = p.renderer();
    let r = MeasureReport {
        pacing: if p.vsync_paced() {
            "vsync"
        } else {
            "deadline timer"
        },
        vsync: p.vsync_paced(),
        renderer,
        priority,
        x_display: std::env::var("DISPLAY").unwrap_or_default(),
        width_px: p.stats_size().0,
        height_px: p.stats_size().1,
        refresh_hz: cfg.display.refresh_hz,
        period_ms: 1e3 / cfg.display.refresh_hz,
        seconds,
        stats: p.stats(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        let s = &r.stats;
        println!(
            "{} flips on {} ({}x{}, {} Hz, {}, {}):",
            s.flips, r.x_display, r.width_px, r.height_px, r.refresh_hz, r.renderer, r.pacing
        );
        println!(
            "  interval {:.3} ± {:.3} ms (min {:.3}, p99 {:.3}, max {:.3}; period {:.3})",
            s.interval_mean_ms,
            s.interval_sd_ms,
            s.interval_min_ms,
            s.interval_p99_ms,
            s.interval_max_ms,
            r.period_ms
        );
        println!(
            "  missed: {} frame(s) in {} event(s); hand-over {:.3} ms per flip; \
             flip after deadline {:.3} ms mean, {:.3} ms p99",
            s.missed_frames, s.missed_events, s.present_mean_ms, s.lag_mean_ms, s.lag_p99_ms
        );
    }
    Ok(())
}
