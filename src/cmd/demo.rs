use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Folder for the demo's session files.
    #[arg(long, default_value = "out/demo")]
    out_dir: PathBuf,
    /// Minutes of simulated recording.
    #[arg(long, default_value_t = 0.5)]
    minutes: f64,
}

/// The demo grows with the project until it shows the whole closed loop; today it records a
/// simulated session and shows what the file holds.
pub fn run(a: Args) -> Result<()> {
    let cfg = twinrig::config::RigConfig::embedded_sim();
    std::fs::create_dir_all(&a.out_dir)?;
    let path = a.out_dir.join("sim_session.h5");
    println!(
        "== 1. simulate {} min on the embedded simulated rig",
        a.minutes
    );
    let s = super::simulate::simulate(&cfg, a.minutes, cfg.sim.seed, &path)?;
    super::simulate::print_summary(&s);
    println!();
    println!("== 2. what was recorded");
    super::inspect::print(&super::inspect::report(&path)?);
    println!();
    println!("== 3. replay it through the frame ring and online extraction");
    let opts = twinrig::pipeline::replay::ReplayOptions {
        out: Some(a.out_dir.join("replayed.h5")),
        ..Default::default()
    };
    let r = super::replay::run_replay(&path, &opts)?;
    super::replay::print_report(&r);
    Ok(())
}
