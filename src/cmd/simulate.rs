use std::path::PathBuf;

use anyhow::{bail, Result};
use twinrig::sim::{simulate_session, SimSummary};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  rig simulate --minutes 5 --out session.h5\n  rig simulate --config rig_configs/rig-2p-512.toml --seed 7 --out s7.h5 --json"
)]
pub struct Args {
    /// Rig config (TOML); the embedded simulated rig when omitted.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Length of the session in minutes.
    #[arg(long, default_value_t = 1.0)]
    minutes: f64,
    /// Seed of the simulated mouse, stimulus and noise (default: the config's sim.seed).
    #[arg(long)]
    seed: Option<u64>,
    /// Output session file.
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing --out file (never one another process has open).
    #[arg(long)]
    overwrite: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    if !a.minutes.is_finite() || a.minutes <= 0.0 || a.minutes > 24.0 * 60.0 {
        bail!("--minutes must be in (0, 1440], got {}", a.minutes);
    }
    let cfg = super::load_budgeted(a.config.as_deref(), twinrig::budget::Workload::Simulate)?;
    let seed = a.seed.unwrap_or(cfg.sim.seed);
    let s = simulate(&cfg, a.minutes, seed, &a.out, a.overwrite)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print_summary(&s);
    }
    Ok(())
}

pub fn simulate(
    cfg: &twinrig::config::RigConfig,
    minutes: f64,
    seed: u64,
    out: &std::path::Path,
    overwrite: bool,
) -> Result<SimSummary> {
    let total = (minutes * 60.0 * cfg.imaging.frame_rate_hz).round() as u64;
    let pb = super::progress_bar(total, "simulate");
    let s = simulate_session(cfg, minutes, seed, out, overwrite, |done, _| {
        pb.set_position(done)
    })?;
    pb.finish_and_clear();
    Ok(s)
}

pub fn print_summary(s: &SimSummary) {
    println!("simulated session -> {}", s.out);
    println!(
        "  {} frames of {}x{} ({:.1} s), {} neurons, {} clips, {} trials, {} display flips",
        s.frames, s.height, s.width, s.seconds, s.neurons, s.clips, s.trials, s.flips
    );
    println!(
        "  mean firing rate {:.2} Hz; wrote {:.1} MB in {:.1} s ({:.1}x real time)",
        s.mean_spike_rate_hz, s.file_mb, s.wall_s, s.realtime_factor
    );
}
