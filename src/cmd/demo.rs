use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use twinrig::config::{Backend, RigConfig, StimulusSet};
use twinrig::daemon::{RunOptions, RunReport};
use twinrig::insilico::{self, Objective, SearchOptions};
use twinrig::twin::adapt::{adapt, AdaptOptions};
use twinrig::twin::core::{build_core, CoreParams};
use twinrig::twin::data::SessionData;
use twinrig::twin::onnx::write_model;

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  rig demo --minutes 3 --targets 3 --candidates 3 --overwrite\n  rig demo --calibration calibration --out-dir out/demo-protocol"
)]
pub struct Args {
    /// Folder for the demo's files (sessions, twin, plan).
    #[arg(long, default_value = "out/demo")]
    out_dir: PathBuf,
    /// Minutes of the calibration block and of the closed-loop block (simulated time).
    #[arg(long, default_value_t = 3.0)]
    minutes: f64,
    /// Target neurons the closed-loop block drives: of the neurons the adapted twin predicts
    /// best, those whose best stimulus the twin predicts to drive furthest above natural clips.
    #[arg(long, default_value_t = 3)]
    targets: usize,
    /// Candidates searched per target: the search runs for targets x this many of the best
    /// predicted neurons, and the targets are chosen among them by predicted gain.
    #[arg(long, default_value_t = 3)]
    candidates: usize,
    /// Gray between trials of the closed-loop block, seconds: long enough for most of a trial's
    /// calcium to decay (GCaMP6s, tau about 1 s), so that each gain compares trials, not their
    /// overlap (docs/insilico.md measures 0.5, 1.25 and 2 s).
    #[arg(long, default_value_t = 1.25)]
    gray_s: f64,
    /// Twin evaluations of the in-silico search (over all candidates).
    #[arg(long, default_value_t = 900)]
    budget: u64,
    /// What the calibration block shows: natural (natural clips; gratings and sparse noise are
    /// then out of the twin's family, and still predicted best overall, docs/calibration.md) or
    /// calibration (the protocol: natural clips, gratings and sparse noise, each repeated).
    #[arg(long, default_value = "natural", value_parser = ["natural", "calibration"])]
    calibration: String,
    /// Replace the files of an earlier demo in --out-dir (refused otherwise).
    #[arg(long)]
    overwrite: bool,
}

/// The whole loop on the simulated rig: a calibration block (natural clips, or the calibration
/// protocol), the twin adapted to it, an in-silico search on the adapted twin, and a closed-loop block
/// that shows the search's stimuli next to their controls (same family and contrast, random
/// parameters) and random natural clips, with the adapted twin compared to the brain live; then
/// what the plan did and how well the twin predicted the block, per stimulus family.
pub fn run(a: Args) -> Result<()> {
    let mut cfg = super::load_budgeted(None, twinrig::budget::Workload::Run { twin: true })?;
    cfg.sim.stimulus_set = StimulusSet::Natural;
    std::fs::create_dir_all(&a.out_dir)
        .with_context(|| format!("cannot create {}", a.out_dir.display()))?;
    let calib = a.out_dir.join("calibration.h5");
    let closed = a.out_dir.join("closed_loop.h5");
    let core = a.out_dir.join("core.onnx");
    let twin = a.out_dir.join("twin_adapted.onnx");
    let plan = a.out_dir.join("plan.h5");
    // Every output is checked before the first phase, not after minutes of work.
    for p in [&calib, &closed, &core, &twin, &plan] {
        twinrig::outfile::check_target(p, a.overwrite)?;
    }
    if !(a.gray_s.is_finite() && (0.0..=600.0).contains(&a.gray_s)) {
        anyhow::bail!("--gray-s: expected 0 to 600 seconds, got {}", a.gray_s);
    }
    twinrig::interrupt::install();

    let mut cal_cfg = cfg.clone();
    cal_cfg.sim.stimulus_set = if a.calibration == "natural" {
        StimulusSet::Natural
    } else {
        StimulusSet::Calibration
    };
    println!(
        "== 1. calibration block: {} simulated minutes of {} on the embedded simulated rig",
        a.minutes,
        match cal_cfg.sim.stimulus_set {
            StimulusSet::Natural => "natural clips",
            _ => "the calibration protocol (natural clips, gratings, sparse noise; repeated)",
        }
    );
    let reference = cfg.twin.onnx.clone();
    let opts = RunOptions {
        minutes: Some(a.minutes),
        out: Some(calib.clone()),
        // Without the reference twin at hand (run from elsewhere than the repository), calibrate
        // without a twin: the adapted one is what the closed loop needs.
        no_twin: !reference.exists(),
        overwrite: a.overwrite,
        ..Default::default()
    };
    let r = session(&cal_cfg, &opts)?;
    super::run::print_report(&r);
    super::bail_if_interrupted(&format!(
        "the calibration block was cut short; kept {} ({} frames); no later phase ran",
        calib.display(),
        r.pipeline.frames_recorded
    ))?;

    println!();
    println!(
        "== 2. adapt the twin to the calibration block (reference core, per-neuron GLM readout)"
    );
    write_file(&core, a.overwrite, |p| {
        Ok(write_model(&build_core(&CoreParams::for_config(&cfg)), p)?)
    })?;
    let data = SessionData::open(&calib, true)?;
    let pb = super::progress_bar(data.n_frames as u64, "adapt");
    let follow = super::follow(&pb);
    let fit = adapt(&core, &data, &AdaptOptions::default(), &mut |_, d, t| {
        follow(d, t)
    });
    pb.finish_and_clear();
    super::bail_if_interrupted(&format!(
        "the twin's fit was stopped; kept {} and {}; no twin written, no later phase ran",
        calib.display(),
        core.display()
    ))?;
    let (model, report, _) = fit?;
    write_file(&twin, a.overwrite, |p| Ok(write_model(&model, p)?))?;
    println!(
        "adapted {} neurons on {} frames -> {}: held-out correlation median {:.3}, mean {:.3} ({:.1} s)",
        report.neurons,
        report.frames,
        twin.display(),
        report.median_heldout_corr,
        report.mean_heldout_corr,
        report.seconds_total
    );
    let mut ranked: Vec<(u32, f64)> = report
        .roi_ids
        .iter()
        .copied()
        .zip(report.heldout_corr.iter().copied())
        .filter(|(_, c)| c.is_finite())
        .collect();
    ranked.sort_by(|x, y| y.1.total_cmp(&x.1));
    let n_cand = a.targets * a.candidates.max(1);
    let candidates: Vec<u32> = ranked.iter().take(n_cand).map(|t| t.0).collect();
    println!(
        "candidates: the {} neurons the twin predicts best (held-out r {:.2} to {:.2})",
        candidates.len(),
        ranked.first().map_or(f64::NAN, |r| r.1),
        ranked
            .get(n_cand.saturating_sub(1))
            .or(ranked.last())
            .map_or(f64::NAN, |r| r.1),
    );

    println!();
    println!(
        "== 3. in-silico search on the adapted twin: most exciting stimuli for {} candidates, budget {} evaluations",
        candidates.len(),
        a.budget
    );
    let search = SearchOptions {
        objective: Objective::Neuron,
        targets: candidates.clone(),
        budget: a.budget,
        seed: cfg.sim.seed,
        clip_s: cfg.stimulus.clip_seconds,
        deg_per_px: cfg.display.width_deg() / cfg.stimulus.width as f64,
        ..Default::default()
    };
    let mut tw = twinrig::twin::Twin::load(&twin, Backend::Cpu)?;
    let pb = super::progress_bar(a.budget, "search");
    let p = insilico::search(&mut tw, &search, &super::follow(&pb));
    pb.finish_and_clear();
    super::bail_if_interrupted(&format!(
        "the search was stopped; kept {}, {} and {}; no plan written, no closed-loop block",
        calib.display(),
        core.display(),
        twin.display()
    ))?;
    let mut p = p?;
    // Targets: the candidates whose best stimulus the twin predicts furthest above its own
    // prediction for natural clips (in silico, before anything is shown).
    let eo = insilico::evaluate::EvalOptions::default();
    let nat = insilico::evaluate::predicted_natural(
        &mut tw,
        &p,
        &cfg,
        eo.natural_clips,
        eo.natural_seed,
    )?;
    let mut gains: Vec<(u32, f64)> = candidates
        .iter()
        .enumerate()
        .filter_map(|(i, &t)| {
            let best = p
                .entries
                .iter()
                .find(|e| e.goal == t as i64 && e.rank == 0)?
                .target_response
                .get(i)
                .copied()? as f64;
            let col = p.roi_ids.iter().position(|&id| id == t)?;
            (nat[col] > 1e-3).then(|| (t, best / nat[col]))
        })
        .collect();
    gains.sort_by(|x, y| y.1.total_cmp(&x.1));
    let mut targets: Vec<u32> = gains.iter().take(a.targets).map(|g| g.0).collect();
    // A tiny budget can leave a candidate without an entry of its own, or the twin predicting
    // nothing for natural clips: fill up with the best-predicted candidates that have one.
    for &t in &candidates {
        if targets.len() >= a.targets {
            break;
        }
        if !targets.contains(&t) && p.entries.iter().any(|e| e.goal == t as i64) {
            targets.push(t);
        }
    }
    if targets.is_empty() {
        anyhow::bail!(
            "the search (budget {}) found no stimulus for any of the {} candidates; raise --budget",
            a.budget,
            candidates.len()
        );
    }
    println!(
        "targets: the {} candidates with the highest predicted gain over natural clips: {}",
        targets.len(),
        targets
            .iter()
            .map(|id| match gains.iter().find(|g| g.0 == *id) {
                Some((_, g)) => format!("ROI {id} ({g:.1}x)"),
                None => format!("ROI {id} (no prediction)"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    p.restrict_targets(&targets)?;
    write_file(&plan, a.overwrite, |path| Ok(p.write(path)?))?;
    println!(
        "{} evaluations in {:.1} s -> {}",
        p.evaluations,
        p.elapsed_s,
        plan.display()
    );
    for e in p.entries.iter().filter(|e| e.rank == 0) {
        println!(
            "  best for ROI {}: {} (predicted dF/F {:.3} vs {:.3} on gray)",
            e.goal,
            e.family,
            e.target_response
                .get(
                    targets
                        .iter()
                        .position(|&t| t as i64 == e.goal)
                        .unwrap_or(0)
                )
                .copied()
                .unwrap_or(f32::NAN),
            p.roi_ids
                .iter()
                .position(|&id| id as i64 == e.goal)
                .and_then(|i| p.baseline.get(i))
                .copied()
                .unwrap_or(f32::NAN)
        );
    }

    println!();
    println!(
        "== 4. closed-loop block: {} simulated minutes, the plan's stimuli next to their controls and \
         random natural clips, the adapted twin compared with the brain live",
        a.minutes
    );
    let opts = RunOptions {
        minutes: Some(a.minutes),
        out: Some(closed.clone()),
        twin: Some(twin.clone()),
        plan: Some(plan.clone()),
        overwrite: a.overwrite,
        ..Default::default()
    };
    let mut loop_cfg = cfg.clone();
    loop_cfg.stimulus.gray_seconds = a.gray_s;
    let r = session(&loop_cfg, &opts)?;
    super::run::print_report(&r);
    super::bail_if_interrupted(&format!(
        "the closed-loop block was cut short; kept {} ({} frames) next to the calibration, \
         twin and plan in {}; its gain was not measured",
        closed.display(),
        r.pipeline.frames_recorded,
        a.out_dir.display()
    ))?;

    println!();
    println!("== 5. what the plan did in vivo (the simulated mouse's neurons)");
    super::insilico::print_gain(&twinrig::closedloop::gain::plan_gain(&closed)?);
    println!();
    println!("== 6. the adapted twin on the closed-loop block (held out), per stimulus family");
    super::twin::print_evaluation(&super::twin::evaluate_session(
        &twin, &closed, false, false,
    )?);
    println!();
    print_files(&a.out_dir, &[&calib, &core, &twin, &plan, &closed]);
    Ok(())
}

/// Where the demo's files are and what they take on disk, so a newcomer can open them (or
/// delete them) without hunting.
fn print_files(dir: &Path, files: &[&Path]) {
    let mut total = 0u64;
    println!("== files in {}", dir.display());
    for f in files {
        let bytes = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        total += bytes;
        println!("  {:>9}  {}", human_bytes(bytes), f.display());
    }
    println!("  {:>9}  in all", human_bytes(total));
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KB", "MB", "GB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Writes `path` whole under a temporary name, then gives it its name (`outfile`).
fn write_file(path: &Path, overwrite: bool, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let mut claim = super::new_output(path, overwrite)?;
    write(claim.tmp_path())?;
    claim.publish()?;
    Ok(())
}

fn session(cfg: &RigConfig, opts: &RunOptions) -> Result<RunReport> {
    let out = opts.out.as_deref().unwrap_or(Path::new("-"));
    super::run::run_with_progress(cfg, opts)
        .with_context(|| format!("rig run -> {}", out.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_as_a_person_writes_them() {
        assert_eq!(super::human_bytes(512), "512 B");
        assert_eq!(super::human_bytes(1_500), "1.5 KB");
        assert_eq!(super::human_bytes(162_300_000), "162.3 MB");
        assert_eq!(super::human_bytes(7_000_000_000_000), "7000.0 GB");
    }
}
