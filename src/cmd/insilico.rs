//! `rig insilico ...`: search the twin for the stimuli that best serve an objective, merge shards
//! of a search, and score a plan against the simulated mouse's ground truth (docs/insilico.md).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use twinrig::config::Backend;
use twinrig::insilico::{
    self, evaluate_on_sim, EvalOptions, Objective, Plan, SearchOptions, Shard,
};
use twinrig::twin::{Twin, TwinOptions};

#[derive(clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    // A later option replaces an earlier one, so a wrapper (tools/insilico_sbatch.sh) can append
    // its own --budget, --threads or --shard to the user's options.
    args_override_self = true,
    after_help = "Example:\n  rig insilico --twin onnx/reference_twin.onnx --objective neuron --targets 65,177 \\\n      --budget 2000 --out plan.h5"
)]
pub struct Args {
    #[command(subcommand)]
    cmd: Option<Sub>,
    #[command(flatten)]
    search: SearchArgs,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Combine the outputs of `--shard K/N` runs (and of `optimise --part K/M` runs, when the
    /// optimiser stage was split too) into the plan the unsharded search gives.
    Merge(MergeArgs),
    /// Run part K of M of the optimiser stage (CMA-ES runs K, K+M, ...) from the screening shards
    /// of a search; `merge` takes the parts with the shards.
    Optimise(OptimiseArgs),
    /// Show a plan's top stimuli and random natural clips to the simulated mouse; report the
    /// evoked (ground-truth) versus predicted responses and the gain per target.
    Evaluate(EvaluateArgs),
    /// What a plan did in vivo: per target, the response to its plan stimuli against natural
    /// clips and against its controls in a session recorded with `rig run --plan` (measured dF/F; true calcium when
    /// simulated), next to the twin's prediction.
    Gain(GainArgs),
}

#[derive(clap::Args)]
#[command(after_help = "Example:\n  rig insilico gain out/demo/closed_loop.h5 --json")]
struct GainArgs {
    /// Session recorded with `rig run --plan`.
    session: PathBuf,
    /// Print the result as JSON (one object on stdout).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct SearchArgs {
    /// The twin (ONNX, docs/twin-contract.md).
    #[arg(long, required = true)]
    twin: Option<PathBuf>,
    /// neuron | group | selectivity | group-selectivity | explore
    #[arg(long, required = true)]
    objective: Option<String>,
    /// Target ROI ids (the twin's twin.roi_ids), comma separated, e.g. 3,17,42.
    #[arg(long, value_delimiter = ',')]
    targets: Vec<u32>,
    /// Twin evaluations (candidate clips scored), screening and optimisation together.
    #[arg(long, default_value_t = insilico::DEFAULT_BUDGET)]
    budget: u64,
    /// Where to write the plan (HDF5). It appears once the search is done; an existing file is
    /// refused unless --overwrite.
    #[arg(long, required = true)]
    out: Option<PathBuf>,
    /// Replace an existing --out file.
    #[arg(long)]
    overwrite: bool,
    /// Seed of the screening draws and CMA-ES: the same seed and options give the same plan.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stimulus families, comma separated: grating, gabor, noise, freeform, natural
    /// (default: all but natural; natural is added when --library is given).
    #[arg(long, value_delimiter = ',')]
    families: Vec<String>,
    /// Session file whose natural clips (stimulus/clips) the natural family screens.
    #[arg(long)]
    library: Option<PathBuf>,
    /// Candidate stimulus length, seconds.
    #[arg(long, default_value_t = 1.0)]
    clip_s: f64,
    /// RMS contrast budget per clip ((L - gray) / gray units).
    #[arg(long, default_value_t = 0.5)]
    max_rms: f64,
    /// Share of the budget spent screening before CMA-ES.
    #[arg(long, default_value_t = 0.5)]
    screen_fraction: f64,
    /// Plan entries per goal.
    #[arg(long, default_value_t = 4)]
    plan_size: usize,
    /// CMA-ES runs per goal.
    #[arg(long, default_value_t = 2)]
    starts: usize,
    /// Candidates per twin batch (part of the result's definition: keep it for merges).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Worker threads; 0 = all cores. The plan does not depend on it.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Stop after this many seconds (the plan is then not reproducible from the seed).
    #[arg(long)]
    time_limit: Option<f64>,
    /// Screen only shard K of N (0-based); combine with `rig insilico merge`.
    #[arg(long)]
    shard: Option<String>,
    /// Rig config for the display geometry (degrees per stimulus pixel); default embedded sim.
    #[arg(long)]
    config: Option<PathBuf>,
    /// cpu | cuda | auto
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// explore: weigh neurons by the twin's error on this recorded session (1 - correlation).
    #[arg(long)]
    session: Option<PathBuf>,
    /// Print the result as JSON (one object on stdout).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  rig insilico merge shards/shard-*.h5 --out plan.h5\n  rig insilico merge run/screen_*.h5 run/opt_*.h5 --threads 4 --out run/plan.h5"
)]
struct MergeArgs {
    /// Screening shard outputs (all N of them), and optimiser parts (all M) if the optimiser
    /// stage ran in parts; without parts merge runs the optimiser stage itself.
    #[arg(required = true)]
    shards: Vec<PathBuf>,
    /// Worker threads for the optimiser stage (0 = all cores). The plan does not depend on it.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Where to write the merged plan (HDF5).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing --out file.
    #[arg(long)]
    overwrite: bool,
    /// The twin (default: the path recorded in the shards; checked by digest either way).
    #[arg(long)]
    twin: Option<PathBuf>,
    /// cpu | cuda | auto
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Print the result as JSON (one object on stdout).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  rig insilico optimise run/screen_*.h5 --part 0/4 --threads 1 --out run/opt_0.h5"
)]
struct OptimiseArgs {
    /// The screening shard outputs of the search (all N of them).
    #[arg(required = true)]
    shards: Vec<PathBuf>,
    /// Which part of the optimiser stage: K/M runs CMA-ES runs K, K+M, ... (0-based).
    #[arg(long)]
    part: String,
    /// Where to write the part (HDF5).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing --out file.
    #[arg(long)]
    overwrite: bool,
    /// Worker threads (0 = all cores). The plan does not depend on it.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// The twin (default: the path recorded in the shards; checked by digest either way).
    #[arg(long)]
    twin: Option<PathBuf>,
    /// cpu | cuda | auto
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Print the result as JSON (one object on stdout).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  rig insilico evaluate --plan plan.h5 --natural 16 --repeats 3 --json"
)]
struct EvaluateArgs {
    /// The plan to show (`rig insilico --out`).
    #[arg(long)]
    plan: PathBuf,
    /// Simulated rig (default: the embedded sim config).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Simulated mouse seed (default: the config's [sim] seed).
    #[arg(long)]
    seed: Option<u64>,
    /// Random natural clips to compare with.
    #[arg(long, default_value_t = 16)]
    natural: usize,
    /// Presentations of every stimulus; responses are averaged over them.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// The twin, for its prediction of the natural clips (default: the plan's twin when present).
    #[arg(long)]
    twin: Option<PathBuf>,
    /// Print the result as JSON (one object on stdout).
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    match a.cmd {
        Some(Sub::Merge(m)) => merge(m),
        Some(Sub::Optimise(o)) => optimise(o),
        Some(Sub::Evaluate(e)) => evaluate(e),
        Some(Sub::Gain(g)) => gain(g),
        None => search(a.search),
    }
}

fn parse_backend(s: &str) -> Result<Backend> {
    Ok(match s {
        "cpu" => Backend::Cpu,
        "cuda" => Backend::Cuda,
        "auto" => Backend::Auto,
        o => bail!("--backend: expected cpu, cuda or auto, found {o:?}"),
    })
}

fn load_twin(p: &std::path::Path, backend: &str) -> Result<Twin> {
    Ok(Twin::load_with(
        p,
        &TwinOptions {
            backend: parse_backend(backend)?,
            threads: 1,
        },
    )?)
}

#[derive(Serialize)]
struct SearchReport<'a> {
    out: String,
    objective: &'a str,
    targets: &'a [u32],
    seed: u64,
    budget: u64,
    evaluations: u64,
    stage: String,
    shard: Option<String>,
    stopped_early: bool,
    wall_s: f64,
    evaluations_per_s: f64,
    /// This process's peak resident memory (Linux VmHWM), for sizing batch-job requests.
    peak_rss_mb: Option<f64>,
    entries: &'a [insilico::Entry],
}

/// Peak resident set size of this process in MB, where /proc tells it.
fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn report(plan: &Plan, out: &std::path::Path, wall: f64, json: bool) -> Result<()> {
    let r = SearchReport {
        out: out.display().to_string(),
        objective: &plan.objective,
        targets: &plan.targets,
        seed: plan.seed,
        budget: plan.budget,
        evaluations: plan.evaluations,
        stage: format!("{:?}", plan.stage).to_lowercase(),
        shard: plan.shard.map(|s| format!("{}/{}", s.index, s.count)),
        stopped_early: plan.stopped_early,
        wall_s: wall,
        evaluations_per_s: plan.evaluations as f64 / wall.max(1e-9),
        peak_rss_mb: peak_rss_mb(),
        entries: &plan.entries,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "{}: {} plan, objective {}, targets {:?}: {} entries from {} of {} twin evaluations in {:.1} s ({:.1}/s){}",
        r.out,
        r.stage,
        r.objective,
        r.targets,
        plan.entries.len(),
        r.evaluations,
        r.budget,
        wall,
        r.evaluations_per_s,
        if r.stopped_early { " (stopped by the time limit)" } else { "" }
    );
    for e in plan.entries.iter().take(12) {
        let goal = if e.goal < 0 {
            "group".to_string()
        } else {
            format!("roi {}", e.goal)
        };
        println!(
            "  #{:<2} {:<9} {:<9} score {:+.4}  targets {:?}  rest {:.4}  ({:?} {})",
            e.rank,
            goal,
            e.family,
            e.score,
            e.target_response
                .iter()
                .map(|v| (v * 1e4).round() / 1e4)
                .collect::<Vec<_>>(),
            e.rest_mean,
            e.stage,
            e.index
        );
    }
    if plan.entries.len() > 12 {
        println!("  ... {} more", plan.entries.len() - 12);
    }
    Ok(())
}

fn search(a: SearchArgs) -> Result<()> {
    let (Some(twin_p), Some(obj), Some(out)) = (a.twin, a.objective, a.out) else {
        bail!("--twin, --objective and --out are required");
    };
    twinrig::interrupt::install();
    let objective = Objective::parse(&obj)?;
    let mut claim = super::new_output(&out, a.overwrite)?;
    let cfg = super::load_config(a.config.as_deref())?;
    let mut families = a.families.clone();
    if families.is_empty() {
        families = insilico::DEFAULT_FAMILIES
            .iter()
            .map(|s| s.to_string())
            .collect();
        if a.library.is_some() {
            families.push("natural".into());
        }
    }
    let shard = a.shard.as_deref().map(Shard::parse).transpose()?;
    let mut twin = load_twin(&twin_p, &a.backend)?;
    let explore_weights = match (&a.session, objective) {
        (Some(s), Objective::Explore) => insilico::explore_weights_from_session(&mut twin, s)
            .with_context(|| format!("explore weights from {}", s.display()))?,
        (Some(_), _) => bail!("--session is only used by --objective explore"),
        (None, _) => Vec::new(),
    };
    let opts = SearchOptions {
        objective,
        targets: a.targets,
        budget: a.budget,
        seed: a.seed,
        families,
        library: a.library,
        clip_s: a.clip_s,
        max_rms_contrast: a.max_rms,
        deg_per_px: cfg.display.width_deg() / cfg.stimulus.width as f64,
        screen_fraction: a.screen_fraction,
        plan_size: a.plan_size,
        starts: a.starts,
        batch: a.batch,
        threads: a.threads,
        time_limit_s: a.time_limit,
        shard,
        explore_weights,
        ..SearchOptions::default()
    };
    let pb = super::progress_bar(a.budget, "insilico");
    let t0 = Instant::now();
    let plan = insilico::search(&mut twin, &opts, &super::follow(&pb));
    pb.finish_and_clear();
    let plan = plan?;
    super::bail_if_interrupted(&format!(
        "search stopped after {} of {} evaluations; no plan written",
        plan.evaluations, a.budget
    ))?;
    plan.write(claim.tmp_path())?;
    claim.publish()?;
    report(&plan, &out, t0.elapsed().as_secs_f64(), a.json)
}

/// Runs `step` on the plan files of a split search and the twin they name (or `twin`), with a
/// progress bar, and writes its plan to `out`, which is claimed before any work and published
/// only when the plan is complete. `stopped` is the line for an operator's stop.
#[allow(clippy::too_many_arguments)] // the shared arguments of merge and optimise, spelled out
fn combine(
    files: &[PathBuf],
    twin: Option<&std::path::Path>,
    backend: &str,
    out: &std::path::Path,
    overwrite: bool,
    json: bool,
    (what, stopped): (&str, &str),
    step: impl FnOnce(&[Plan], &mut Twin, &dyn Fn(u64, u64)) -> Result<Plan, insilico::InsilicoError>,
) -> Result<()> {
    let plans: Vec<Plan> = files
        .iter()
        .map(|p| Plan::read(p))
        .collect::<Result<_, _>>()?;
    let twin_p = match twin {
        Some(t) => t.to_path_buf(),
        None => PathBuf::from(&plans[0].twin),
    };
    let mut claim = super::new_output(out, overwrite)?;
    let mut twin = load_twin(&twin_p, backend)?;
    let pb = super::progress_bar(plans[0].budget, what);
    let t0 = Instant::now();
    twinrig::interrupt::install();
    let plan = step(&plans, &mut twin, &super::follow(&pb));
    pb.finish_and_clear();
    let plan = plan?;
    super::bail_if_interrupted(stopped)?;
    plan.write(claim.tmp_path())?;
    claim.publish()?;
    report(&plan, out, t0.elapsed().as_secs_f64(), json)
}

fn merge(a: MergeArgs) -> Result<()> {
    combine(
        &a.shards,
        a.twin.as_deref(),
        &a.backend,
        &a.out,
        a.overwrite,
        a.json,
        ("merge", "merge stopped; no plan written"),
        |plans, twin, progress| insilico::merge(plans, twin, a.threads, progress),
    )
}

fn optimise(a: OptimiseArgs) -> Result<()> {
    let part = Shard::parse(&a.part)
        .map_err(|e| anyhow::anyhow!("--part{}", e.to_string().trim_start_matches("--shard")))?;
    combine(
        &a.shards,
        a.twin.as_deref(),
        &a.backend,
        &a.out,
        a.overwrite,
        a.json,
        ("optimise", "optimiser part stopped; nothing written"),
        |plans, twin, progress| insilico::optimise_part(plans, part, twin, a.threads, progress),
    )
}

fn evaluate(a: EvaluateArgs) -> Result<()> {
    let plan = Plan::read(&a.plan)?;
    let cfg = super::load_config(a.config.as_deref())?;
    let twin_p = a.twin.clone().or_else(|| {
        let p = PathBuf::from(&plan.twin);
        p.exists().then_some(p)
    });
    let mut twin = twin_p.as_deref().map(|p| load_twin(p, "cpu")).transpose()?;
    let o = EvalOptions {
        mouse_seed: a.seed.unwrap_or(cfg.sim.seed),
        natural_clips: a.natural,
        repeats: a.repeats,
        running_speed: plan.options().map(|o| o.running_speed).unwrap_or(0.0),
        ..EvalOptions::default()
    };
    let r = evaluate_on_sim(&cfg, &plan, twin.as_mut(), &o)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "{}: objective {}, simulated mouse seed {}, {} random natural clips x {} repeats, {:.2} s clips",
        a.plan.display(),
        r.objective,
        r.mouse_seed,
        r.natural_clips,
        r.repeats,
        r.clip_s
    );
    println!("  roi  family     predicted dF/F  evoked dF/F  (natural)   evoked Hz (natural)   gain  pred.gain  rest gain  selectivity  control Hz  over control");
    for t in &r.targets {
        println!(
            "  {:<4} {:<9} {:>14.3} {:>12.3} {:>10.3} {:>10.2} {:>9.2} {:>6.2} {:>10} {:>10.2} {:>12.2} {:>11} {:>13}",
            t.roi_id,
            t.family,
            t.predicted_dff,
            t.evoked_dff,
            t.natural_dff,
            t.evoked_rate_hz,
            t.natural_rate_hz,
            t.gain,
            t.predicted_gain.map_or("-".into(), |g| format!("{g:.2}")),
            t.rest_gain,
            t.selectivity,
            t.control_rate_hz.map_or("-".into(), |c| format!("{c:.2}")),
            t.gain_over_control.map_or("-".into(), |g| format!("{g:.2}x"))
        );
    }
    println!(
        "  {} of {} targets at least 2x their natural-clip rate; median gain {:.2}, median selectivity {:.2}",
        r.targets_gain_2x,
        r.targets.len(),
        r.median_gain,
        r.median_selectivity
    );
    println!(
        "  control: {} random candidates of each entry's family at its RMS contrast; {} of {} targets beat it, median gain over it {:.2}",
        r.control_candidates,
        r.targets_beat_control,
        r.targets.len(),
        r.median_gain_over_control
    );
    Ok(())
}

fn gain(a: GainArgs) -> Result<()> {
    let r = twinrig::closedloop::gain::plan_gain(&a.session)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_gain(&r);
    }
    Ok(())
}

/// The per-target table of a closed-loop plan session.
pub fn print_gain(r: &twinrig::closedloop::gain::GainReport) {
    let f = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into());
    let g = |v: Option<f64>| v.map(|x| format!("{x:.1}x")).unwrap_or_else(|| "-".into());
    println!(
        "plan {} ({}) in {}: mean dF/F over the clip; plan stimuli vs natural clips and vs \
         controls (same family, same contrast, random parameters)",
        r.plan, r.objective, r.session
    );
    println!(
        "  target  trials plan/nat/ctl  predicted plan/nat   gain  measured plan/nat/ctl      gain  over ctl  \
         true plan/nat/ctl         gain  over ctl"
    );
    for t in &r.targets {
        println!(
            "  {:>6}  {:>5}/{:<3}/{:<5}  {:>8.3}/{:<6}  {:>5}  {:>6}/{:<6}/{:<6}  {:>5}  {:>8}  \
             {:>6}/{:<6}/{:<6}  {:>5}  {:>8}",
            t.roi_id,
            t.plan_trials,
            t.natural_trials,
            t.control_trials,
            t.predicted,
            f(t.predicted_natural),
            g(t.predicted_gain),
            f(t.measured_plan),
            f(t.measured_natural),
            f(t.measured_control),
            g(t.measured_gain),
            g(t.measured_gain_over_control),
            f(t.true_plan),
            f(t.true_natural),
            f(t.true_control),
            g(t.true_gain),
            g(t.true_gain_over_control),
        );
    }
    println!(
        "  {} of {} targets at 2x or more over natural clips, {} at 3x (true response where known)",
        r.targets_at_2x,
        r.targets.len(),
        r.targets_at_3x
    );
    if let Some(e) = r.median_gain_error {
        println!(
            "  the twin's predicted gain is off by a median {:.0}% of the gain (|predicted - measured| / measured){}",
            100.0 * e,
            r.median_gain_error_in_loop
                .map(|l| format!(
                    "; its in-loop prediction of the same trials by {:.0}%",
                    100.0 * l
                ))
                .unwrap_or_default()
        );
    }
    if let (Some(e), Some(c)) = (r.median_gain_error_calibrated, r.gain_calibration) {
        println!(
            "  the search's predictions over-rate its own picks: measured / predicted gain is a \
             median {c:.2}; scaled by that ratio learnt from the other targets (never a target's \
             own trials) the predicted gain is off by a median {:.0}%",
            100.0 * e
        );
    }
    if r.controls > 0 {
        println!(
            "  {} of {} targets beat their control ({} control stimuli)",
            r.targets_beat_control,
            r.targets.len(),
            r.controls
        );
    } else {
        println!("  no control stimuli in this session (stimulus.plan_controls = 0)");
    }
}
