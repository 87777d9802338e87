use std::path::PathBuf;

use anyhow::{bail, Result};
use twinrig::config::RigConfig;
use twinrig::daemon::{run_session, RunOptions, RunReport};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  rig run --minutes 10 --out session.h5\n  rig run --config rig_configs/rig-2p-512.toml --plan plan.h5 --present spawn\n  rig run --insilico neuron --targets 65,177 --control 127.0.0.1:7878\n  rig run --minutes 30 --dashboard 127.0.0.1:8080\nthen open http://127.0.0.1:8080/ in a browser"
)]
pub struct Args {
    /// Rig config (TOML); the embedded simulated rig when omitted.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Stop after this many minutes of session time (default: run until SIGINT/SIGTERM or `rig
    /// status --stop`).
    #[arg(long)]
    minutes: Option<f64>,
    /// Session file (default: storage.out_dir/<mouse>-<time>.h5). An existing file is refused
    /// unless --overwrite; it appears once the run has started (ports bound, twin loaded).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace an existing --out file (never one another process has open).
    #[arg(long)]
    overwrite: bool,
    /// `max` (as fast as the pipeline goes; simulated and replayed sources only) or a factor of
    /// real time (1 = real time).
    #[arg(long, default_value = "1")]
    speed: String,
    /// With imaging.source = "replay": the session to replay.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Seed of the simulated rig (default: sim.seed).
    #[arg(long)]
    seed: Option<u64>,
    /// ROI masks (rois/* datasets) to extract with.
    #[arg(long)]
    rois: Option<PathBuf>,
    /// Address of the status/control endpoint (default: control.listen of the config).
    #[arg(long)]
    control: Option<String>,
    /// Serve the live dashboard on this address (default: dashboard.listen of the config, or the
    /// next free port after it); open the printed URL in a browser.
    #[arg(long, value_name = "ADDR", conflicts_with = "no_dashboard")]
    dashboard: Option<String>,
    /// Serve no dashboard.
    #[arg(long)]
    no_dashboard: bool,
    /// Run without the twin (even when twin.in_loop is set).
    #[arg(long)]
    no_twin: bool,
    /// Twin to step in the loop (default: twin.onnx of the config).
    #[arg(long)]
    twin: Option<PathBuf>,
    /// Show this in-silico plan's best stimuli (`rig insilico --out`), interleaved with library
    /// clips (stimulus.plan_top, stimulus.plan_fraction), and with control stimuli of the same
    /// families (stimulus.plan_controls, stimulus.control_fraction).
    #[arg(long)]
    plan: Option<PathBuf>,
    /// Search the twin in the background for this objective (neuron, group, selectivity,
    /// group-selectivity, explore) and show what it finds; `rig status --objective` changes it.
    #[arg(long)]
    insilico: Option<String>,
    /// Targets of --insilico: ROI ids, comma separated.
    #[arg(long, value_delimiter = ',')]
    targets: Vec<u32>,
    /// Twin evaluations per background search.
    #[arg(long, default_value_t = 400)]
    insilico_budget: u64,
    /// Stimulus presenter to drive (overrides display.presenter): `none`, the address of a running
    /// `rig present` (host:port or unix:/path), `spawn` (start `rig present`) or `spawn-headless`.
    #[arg(long, value_name = "ADDR|spawn|spawn-headless|none")]
    present: Option<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let cfg = super::load_budgeted(
        a.config.as_deref(),
        twinrig::budget::Workload::Run { twin: !a.no_twin },
    )?;
    let speed = match a.speed.as_str() {
        "max" => None,
        s => match s.parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => Some(v),
            _ => bail!("--speed must be `max` or a positive number, got {s:?}"),
        },
    };
    if let Some(m) = a.minutes {
        if !(m.is_finite() && m > 0.0) {
            bail!("--minutes must be positive, got {m}");
        }
    }
    if let Some(p) = &a.present {
        if let Err(expected) = twinrig::config::check_presenter(p) {
            bail!("--present {p:?}: expected {expected}");
        }
    }
    let opts = RunOptions {
        minutes: a.minutes,
        out: a.out.clone(),
        speed,
        replay: a.replay.clone(),
        seed: a.seed,
        rois: a.rois.clone(),
        control: true,
        control_listen: a.control.clone(),
        no_twin: a.no_twin,
        twin: a.twin.clone(),
        plan: a.plan.clone(),
        insilico: a
            .insilico
            .clone()
            .map(|objective| twinrig::control::ObjectiveRequest {
                objective,
                targets: a.targets.clone(),
            }),
        insilico_budget: a.insilico_budget,
        present: a.present.clone(),
        overwrite: a.overwrite,
        dashboard: a.dashboard.clone(),
        no_dashboard: a.no_dashboard,
    };
    if let Some(o) = &a.insilico {
        twinrig::insilico::Objective::parse(o)?;
    }
    if a.insilico.is_none() && !a.targets.is_empty() {
        bail!("--targets goes with --insilico OBJECTIVE");
    }
    let report = run_with_progress(&cfg, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    // The recording is complete, but a session whose traces stopped is not what was asked for:
    // scripts must see it.
    if let Some(e) = &report.pipeline.first_analysis_error {
        bail!(
            "analysis stopped ({e}); the recording in {} is complete, its traces are not",
            report.session
        );
    }
    Ok(())
}

/// Runs a session with a progress bar over `--minutes`; announces the session file and the
/// control address in one line on stderr that scripts (and tests) can wait for.
pub fn run_with_progress(cfg: &RigConfig, opts: &RunOptions) -> Result<RunReport> {
    let total = opts
        .minutes
        .map(|m| (m * 60.0 * cfg.imaging.frame_rate_hz).round() as u64);
    let pb = super::progress_bar(total.unwrap_or(0), "run");
    let report = run_session(
        cfg,
        opts,
        &|s| {
            let dashboard = s
                .dashboard
                .as_ref()
                .map(|u| format!("dashboard {u}, "))
                .unwrap_or_default();
            eprintln!(
                "rig run: recording {} ({dashboard}control on {})",
                s.out.display(),
                s.control
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "-".into())
            );
        },
        &|n| pb.set_position(n),
    )?;
    pb.finish_and_clear();
    Ok(report)
}

pub fn print_report(r: &RunReport) {
    println!(
        "session {} ({} source, stopped by {})",
        r.session, r.source, r.stopped_by
    );
    if let Some(u) = &r.dashboard {
        println!("  dashboard was at {u}");
    }
    let p = &r.pipeline;
    println!(
        "  frames: {} in, {} analysed, {} skipped, {} recorded, {} lost",
        p.frames_in, p.frames_analysed, p.frames_skipped, p.frames_recorded, p.frames_lost
    );
    println!(
        "  {:.1} s wall, {:.0} frames/s ({:.1}x real time), peak memory {:.0} MB",
        p.wall_s, p.frames_per_s, p.realtime_factor, p.peak_rss_mb
    );
    if let Some(e) = &p.first_analysis_error {
        println!("  analysis stopped after an error (the frames after it were recorded, not analysed): {e}");
    }
    println!("  latency (us)      p50      p90      p99      max");
    for s in &p.latency {
        println!(
            "    {:<12}{:>7}  {:>7}  {:>7}  {:>7}",
            s.stage, s.p50_us, s.p90_us, s.p99_us, s.max_us
        );
    }
    if let Some(t) = p.closed_loop.as_ref().and_then(|l| l.twin.as_ref()) {
        let f = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "n/a".into());
        println!(
            "  twin {} on {}: {} of {} neurons compared over {} frames ({} skipped by the \
             loop; state stepped on {} more, {} never), {} trials",
            t.model,
            t.device,
            t.neurons_compared,
            t.neurons_in_model,
            t.frames_stepped,
            p.closed_loop.as_ref().map_or(0, |l| l.frames_skipped),
            t.frames_caught_up,
            t.frames_not_stepped,
            t.trials
        );
        println!(
            "  twin fidelity: median session corr {}, reference window {}, alarms {}{}",
            f(t.fidelity.median_session_corr),
            f(t.fidelity.reference_population),
            t.fidelity.alarms,
            t.error
                .as_ref()
                .map(|e| format!("; stopped: {e}"))
                .unwrap_or_default()
        );
    }
    if let Some(pl) = &r.plan {
        println!(
            "  plan {} ({} for targets {:?}): {} stimuli shown as clips {:?}, {} controls as {:?}",
            pl.path,
            pl.objective,
            pl.targets,
            pl.clips.len(),
            pl.clips.iter().map(|c| c.0).collect::<Vec<_>>(),
            pl.controls.len(),
            pl.controls.iter().map(|c| c.0).collect::<Vec<_>>()
        );
    }
    if let Some(ins) = &r.insilico {
        for rf in &ins.refreshes {
            println!(
                "  in-silico refresh: {} {:?}, {} evaluations in {:.1} s, {} stimuli added",
                rf.objective,
                rf.targets,
                rf.evaluations,
                rf.seconds,
                rf.clips.len()
            );
        }
        for e in &ins.errors {
            println!("  in-silico error: {e}");
        }
    }
    if let Some(s) = &r.sync {
        println!(
            "  sync board {}: {} frame-clock, {} photodiode, {} encoder events; {} frames without \
             a frame-clock event; link: {} bad checksums, {} bytes discarded, {} events dropped, \
             {} reconnects",
            s.port,
            s.frame_clock_events,
            s.photodiode_events,
            s.encoder_events,
            s.frame_clock_missing,
            s.link.bad_checksums,
            s.link.discarded_bytes,
            s.link.events_dropped,
            s.link.reconnects
        );
    }
    if let Some(d) = &r.presenter {
        println!(
            "  presenter {}: {} flips ({} of clips), interval {:.3} ± {:.3} ms, {} missed \
             refresh periods, {} disconnects{}",
            d.addr,
            d.flips,
            d.clip_flips,
            d.interval_mean_ms,
            d.interval_sd_ms,
            d.missed_frames,
            d.disconnects,
            if d.connected_at_end {
                ""
            } else {
                " (disconnected at the end)"
            }
        );
    }
    if let Some(d) = r.presenter.as_ref().and_then(|d| d.live_trials) {
        println!("  live trials run on the presenter: {d}");
    }
    if let Some(c) = &r.live_context {
        println!(
            "  frame context from the presenter's flips: {} of {} frames ({} waited for a flip \
             report, {} gave up), display lag {}, encoder samples {}",
            c.with_context,
            c.frames,
            c.waited,
            c.late,
            c.display_lag_ms
                .map(|l| format!(
                    "{l:.2} ms ({} photodiode edges)",
                    c.photodiode_edges_matched
                ))
                .unwrap_or_else(|| "not measured (no photodiode edges)".into()),
            c.encoder_samples
        );
    }
    if let Some(a) = &p.accuracy {
        let f = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "n/a".into());
        println!(
            "  against ground truth ({}): median corr(dF/F, calcium) {}, motion RMS error {} px; {}",
            a.masks.caveat(),
            f(a.median_dff_calcium_corr),
            f(a.motion_rms_error_px),
            super::replay::pairing_line(a)
        );
    }
}
