use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use twinrig::present::FlipRun;
use twinrig::validate::{self, DisplayProbe, Report, ValidateOptions};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  rig validate --config rig_configs/rig-2p-512.toml --report validate.json\n  rig validate --config rig_configs/rig-2p-512.toml --display-s 60 --json"
)]
pub struct Args {
    /// Rig config (default: the embedded simulated rig, checked against the simulated board).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Length of the planned session, minutes (free-space check).
    #[arg(long, default_value_t = 60.0)]
    session_minutes: f64,
    /// Size of the disk write test, MiB.
    #[arg(long, default_value_t = 32)]
    disk_mb: usize,
    /// Seconds to listen to the board's events (frame clock, encoder, clock fit).
    #[arg(long, default_value_t = 1.5)]
    listen_s: f64,
    /// Seconds the display timing check plays a grating on the presenter `display.presenter`
    /// names (interval mean and SD, missed refreshes, photodiode lag); 0 skips it.
    #[arg(long, default_value_t = 60.0)]
    display_s: f64,
}

pub fn run(a: Args) -> Result<()> {
    if !(a.session_minutes.is_finite() && a.session_minutes >= 0.0) {
        bail!("--session-minutes must be a non-negative number");
    }
    if !(a.listen_s.is_finite() && (0.2..=600.0).contains(&a.listen_s)) {
        bail!("--listen-s must be between 0.2 and 600");
    }
    if !(a.display_s.is_finite() && (0.0..=3600.0).contains(&a.display_s)) {
        bail!("--display-s must be between 0 and 3600 seconds");
    }
    // A rig is validated for `rig run`: a config it would refuse fails here too.
    let cfg = super::load_budgeted(
        a.config.as_deref(),
        twinrig::budget::Workload::Run { twin: true },
    )?;
    let name = a.config.as_ref().map_or_else(
        || twinrig::config::EMBEDDED_SIM_NAME.to_string(),
        |p| p.display().to_string(),
    );
    let opts = ValidateOptions {
        session_minutes: a.session_minutes,
        disk_test_mb: a.disk_mb.clamp(1, 16 * 1024),
        listen_s: a.listen_s,
        twin: Some(Box::new(twin_probe)),
        display_s: a.display_s,
        display: (a.display_s > 0.0).then(|| Box::new(display_probe) as Box<dyn DisplayProbe>),
        ..Default::default()
    };
    let report = validate::run(&cfg, &name, opts);
    if let Some(p) = &a.report {
        super::ensure_parent(p)?;
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(p, text + "\n")
            .with_context(|| format!("cannot write report {}", p.display()))?;
    }
    let text = if a.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        table(&report)
    };
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    if !report.ok {
        bail!(
            "validation failed ({} of {} checks): {}",
            report.failed,
            report.checks.len(),
            report.failures()
        );
    }
    Ok(())
}

/// The report as a table, one check a line.
pub fn table(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "rig validate: {} ({}), sync port {}",
        r.rig,
        r.config,
        if r.simulated {
            "sim (simulated board over a pty)"
        } else {
            &r.port
        }
    );
    let w = r.checks.iter().map(|c| c.name.len()).max().unwrap_or(10);
    let _ = writeln!(s, "  {:<w$}  {:<7}  figure", "check", "status");
    for c in &r.checks {
        let _ = writeln!(
            s,
            "  {:<w$}  {:<7}  {}",
            c.name,
            c.status.as_str(),
            c.figure
        );
        if !c.detail.is_empty() && c.status != validate::Status::Pass {
            let _ = writeln!(s, "  {:<w$}           {}", "", c.detail);
        }
    }
    let _ = writeln!(
        s,
        "{}: {} checks passed, {} failed, {} skipped ({:.1} s)",
        if r.ok { "PASS" } else { "FAIL" },
        r.passed,
        r.failed,
        r.skipped,
        r.wall_s
    );
    s
}

/// Loads the config's twin on its backend and times single-frame steps on a gray screen.
fn twin_probe(
    cfg: &twinrig::config::RigConfig,
    steps: usize,
) -> std::result::Result<validate::TwinTiming, String> {
    use std::time::Instant;
    let t0 = Instant::now();
    let mut twin =
        twinrig::twin::Twin::load(&cfg.twin.onnx, cfg.twin.backend).map_err(|e| e.to_string())?;
    let load_s = t0.elapsed().as_secs_f64();
    let times = twin
        .time_steps(steps.max(1), 0)
        .map_err(|e| e.to_string())?;
    let q = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    Ok(validate::TwinTiming {
        backend: twin.device().to_string(),
        load_s,
        steps: times.len(),
        step_p50_s: q(0.5),
        step_p99_s: q(0.99),
    })
}

/// Times the presenter the config names, as `rig run` would start it.
fn display_probe(
    cfg: &twinrig::config::RigConfig,
    seconds: f64,
    clock: twinrig::present::client::RigClock,
) -> Result<FlipRun, String> {
    twinrig::daemon::presenter::measure_display(cfg, seconds, clock).map_err(|e| e.to_string())
}
