//! `rig twin ...`: inspect, run, benchmark and adapt digital twins (ONNX, docs/twin-contract.md).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use twinrig::config::Backend;
use twinrig::twin::adapt::{adapt, AdaptOptions};
use twinrig::twin::core::{build_core, CoreParams};
use twinrig::twin::data::SessionData;
use twinrig::twin::metrics::{self, accuracy, clip_repeats};
use twinrig::twin::onnx::{read_model, write_model};
use twinrig::twin::runtime::{op_support, resolve_backend, OpSupport};
use twinrig::twin::{contract, Twin, TwinOptions};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Show a model's contract, shapes, metadata and op support per backend.
    Info(InfoArgs),
    /// Predict a recorded session's responses and correlate them with the measured ones.
    Predict(PredictArgs),
    /// How well the twin predicts a session, per stimulus family: r, noise ceiling, CC_norm and
    /// the shuffled-neuron baseline; held out or not, in or out of the families it was fit on.
    Evaluate(EvaluateArgs),
    /// Measure per-step latency and batch throughput.
    Bench(BenchArgs),
    /// Fit a per-neuron readout on a fixed core to a session; writes a complete twin.
    Adapt(AdaptArgs),
    /// Write the reference core (quadrature Gabor bank + leaky temporal stage) as ONNX, or a
    /// foundation-scale twin for benchmarks (--preset foundation).
    BuildCore(BuildCoreArgs),
    /// Step a model on a backend (CUDA) or thread count and on one CPU thread, same inputs,
    /// frame by frame with the recurrent state carried: the largest difference.
    CheckBackend(CheckBackendArgs),
}

#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  rig twin evaluate out/demo/twin_adapted.onnx --session out/demo/closed_loop.h5 --json"
)]
struct EvaluateArgs {
    /// The twin (ONNX, docs/twin-contract.md).
    model: PathBuf,
    /// Recorded session whose stimuli and behaviour drive the twin and whose measured responses
    /// it is scored against.
    #[arg(long)]
    session: PathBuf,
    /// Also give every neuron's r, ceiling and CC_norm per family (with --json).
    #[arg(long)]
    per_neuron: bool,
    /// Refuse a twin fit to another mouse than the session's (by default a warning).
    #[arg(long)]
    strict: bool,
    /// Print the result as JSON (one object on stdout).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  rig twin check-backend onnx/reference_twin.onnx --backend cuda --steps 100 --json\n  rig twin check-backend onnx/reference_twin.onnx --threads 2"
)]
struct CheckBackendArgs {
    /// The twin (ONNX, docs/twin-contract.md).
    model: PathBuf,
    /// cpu | cuda | auto: the backend checked against one CPU thread.
    #[arg(long, default_value = "cuda")]
    backend: String,
    /// Threads of the checked backend (CPU).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Stepped frames (moving stimulus, varying behaviour).
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Largest difference allowed, relative to the largest response.
    #[arg(long, default_value_t = 1e-3)]
    tolerance: f64,
    /// Print the result as JSON (one object on stdout).
    #[arg(long)]
    json: bool,
}

fn parse_backend(s: &str) -> Result<Backend> {
    Ok(match s {
        "cpu" => Backend::Cpu,
        "cuda" => Backend::Cuda,
        "auto" => Backend::Auto,
        o => bail!("--backend: expected cpu, cuda or auto, found {o:?}"),
    })
}

#[derive(clap::Args)]
#[command(after_help = "Example:\n  rig twin info onnx/reference_twin.onnx --json")]
struct InfoArgs {
    /// The twin (ONNX, docs/twin-contract.md).
    model: PathBuf,
    /// Print the result as JSON (one object on stdout).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  rig twin predict onnx/reference_twin.onnx --session out/demo/calibration.h5 --out pred.h5"
)]
struct PredictArgs {
    /// The twin (ONNX, docs/twin-contract.md).
    model: PathBuf,
    /// Recorded session whose stimuli and behaviour drive the twin and whose traces it is
    /// compared with.
    #[arg(long)]
    session: PathBuf,
    /// Write predictions [T, N] (HDF5: predictions/response, predictions/roi_id).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace an existing --out file.
    #[arg(long)]
    overwrite: bool,
    /// cpu | cuda | auto (default: the config's [twin] backend, cpu without a config).
    #[arg(long)]
    backend: Option<String>,
    /// Rig config for the backend default (default: none, so the CPU).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Threads tract may use for one twin step.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print per-neuron correlations too (with --json).
    #[arg(long)]
    per_neuron: bool,
    /// Refuse a twin fit to another mouse than the session's (by default a warning).
    #[arg(long)]
    strict: bool,
    /// Print the result as JSON (one object on stdout).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  rig twin bench onnx/reference_twin.onnx --steps 200 --batch 8 --json"
)]
struct BenchArgs {
    /// The twin (ONNX, docs/twin-contract.md).
    model: PathBuf,
    /// cpu | cuda | auto
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Threads for the all-threads measurement; without it, all cores (one thread is always
    /// measured too).
    #[arg(long)]
    threads: Option<usize>,
    /// Timed single steps per measurement.
    #[arg(long, default_value_t = 300)]
    steps: usize,
    /// Batch size for the throughput measurement.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Also time every node of the optimised plan over --steps single steps (one thread) and
    /// list the most expensive: where tract spends a step.
    #[arg(long)]
    profile: bool,
    /// Print the result as JSON (one object on stdout).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  rig twin adapt --core core.onnx --session out/demo/calibration.h5 --out twin.onnx"
)]
struct AdaptArgs {
    /// The fixed core (`rig twin build-core`, or any twin whose features are its outputs).
    #[arg(long)]
    core: PathBuf,
    /// Calibration session to fit the readout to (its stimuli, behaviour and traces).
    #[arg(long)]
    session: PathBuf,
    /// Where to write the adapted twin (ONNX).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing --out file.
    #[arg(long)]
    overwrite: bool,
    /// Readout integration time constant, seconds.
    #[arg(long, default_value_t = 0.9)]
    tau: f64,
    /// Cross-validation folds for the ridge penalty and the held-out correlations.
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Use every k-th frame in the fit.
    #[arg(long, default_value_t = 2)]
    time_stride: usize,
    /// Fit only the first N neurons (for a quick look; default: all).
    #[arg(long)]
    max_neurons: Option<usize>,
    /// Running-mean window (s) subtracted from extracted traces/dff targets; 0 = off.
    #[arg(long, default_value_t = 20.0)]
    detrend: f64,
    /// Output stage: glm (per-neuron temporal kernel, softplus rate with running gain, fitted
    /// indicator decay) or linear (integrate, gain, ReLU).
    #[arg(long, default_value = "glm")]
    readout: twinrig::twin::adapt::ReadoutKind,
    /// glm: Gauss-Newton refinements of the feature weights through the output stage (each
    /// costs two passes of the core over the session).
    #[arg(long, default_value_t = 1)]
    joint_passes: usize,
    /// Threads for the fit; without it, all cores.
    #[arg(long)]
    threads: Option<usize>,
    /// Write the full report (per-neuron held-out correlations) here as JSON.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Print the result as JSON (one object on stdout).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  rig twin build-core --out core.onnx --orientations 8\n  rig twin build-core --preset foundation --neurons 8000 --out target/foundation.onnx"
)]
struct BuildCoreArgs {
    /// Where to write the core (ONNX).
    #[arg(long)]
    out: PathBuf,
    /// reference (the Gabor core rig adapts twins on) | foundation (a foundation-scale twin
    /// with random weights, 144x256, ConvLSTM state, --neurons read out: for benchmarks)
    #[arg(long, default_value = "reference")]
    preset: String,
    /// foundation: neurons read out.
    #[arg(long, default_value_t = 8000)]
    neurons: usize,
    /// foundation: seed of the random weights and read-out positions.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Replace an existing --out file.
    #[arg(long)]
    overwrite: bool,
    /// Rig config for stimulus size, frame rate and display geometry (default: embedded sim).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Carrier spatial frequencies, cycles/degree, comma separated.
    #[arg(long, default_value = "0.025,0.04,0.063")]
    sf: String,
    /// Orientations of the Gabor bank, evenly spaced over 180 degrees.
    #[arg(long, default_value_t = 8)]
    orientations: usize,
    /// Gaussian envelope SD, degrees.
    #[arg(long, default_value_t = 6.0)]
    sigma_deg: f64,
    /// Temporal leak a of u_t = a u_(t-1) + (1-a) x_t.
    #[arg(long, default_value_t = 0.5)]
    temporal_a: f64,
    /// Print the result as JSON (one object on stdout).
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    match a.cmd {
        Sub::Info(a) => info(a),
        Sub::Predict(a) => predict(a),
        Sub::Bench(a) => bench(a),
        Sub::Adapt(a) => adapt_cmd(a),
        Sub::BuildCore(a) => build_core_cmd(a),
        Sub::CheckBackend(a) => check_backend(a),
        Sub::Evaluate(a) => evaluate(a),
    }
}

fn all_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[derive(Serialize)]
struct Info {
    path: String,
    bytes: u64,
    contract: contract::Contract,
    inputs: Vec<(String, String)>,
    outputs: Vec<(String, String)>,
    parameters: usize,
    ops: Vec<OpSupport>,
    /// ONNX nodes whose op is in the hand-written table of what tract-cuda translates
    /// (`runtime::CUDA_OPS`): a prediction, not a measurement.
    predicted_cuda_nodes: usize,
    /// ONNX nodes whose op is not in that table: the table's prediction of CPU fallbacks.
    predicted_cpu_fallback_nodes: usize,
    cuda_available: Option<String>,
    /// Measured, with CUDA present: (nodes placed on the device, all nodes) of the optimised
    /// plan tract-cuda actually built. `null` without CUDA: the prediction is unconfirmed.
    cuda_placement: Option<(usize, usize)>,
    /// What rig rewrote before tract compiled the graph (src/twin/passes.rs), one line per node.
    rewrites: Vec<String>,
    load_s: f64,
}

fn info(a: InfoArgs) -> Result<()> {
    let proto = read_model(&a.model)?;
    let c = contract::check(&proto, &a.model)?;
    // Loading on CPU proves tract can run it.
    let twin = Twin::load(&a.model, Backend::Cpu)?;
    let g = proto.graph.clone().unwrap_or_default();
    let io = |v: &[twinrig::twin::onnx::Dim]| twinrig::twin::onnx::fmt_dims(v);
    let desc = |vs: &[tract_onnx::pb::ValueInfoProto]| -> Vec<(String, String)> {
        vs.iter()
            .filter(|v| !g.initializer.iter().any(|t| t.name == v.name))
            .map(|v| {
                let d = twinrig::twin::onnx::value_info_dims(v)
                    .map(|(_, d)| format!("float32 {}", io(&d)))
                    .unwrap_or_else(|| "?".into());
                (v.name.clone(), d)
            })
            .collect()
    };
    let ops = op_support(&proto);
    let predicted_cuda_nodes = ops.iter().filter(|o| o.cuda).map(|o| o.count).sum();
    let predicted_cpu_fallback_nodes = ops.iter().filter(|o| !o.cuda).map(|o| o.count).sum();
    let info = Info {
        path: a.model.display().to_string(),
        bytes: std::fs::metadata(&a.model).map(|m| m.len()).unwrap_or(0),
        inputs: desc(&g.input),
        outputs: desc(&g.output),
        parameters: g
            .initializer
            .iter()
            .map(|t| t.dims.iter().product::<i64>().max(1) as usize)
            .sum(),
        contract: c,
        ops,
        predicted_cuda_nodes,
        predicted_cpu_fallback_nodes,
        cuda_available: twinrig::twin::runtime::cuda_unavailable_reason(),
        cuda_placement: match twinrig::twin::runtime::cuda_unavailable_reason() {
            None => Some(Twin::load(&a.model, Backend::Cuda)?.placement()),
            Some(_) => None,
        },
        rewrites: twin.rewrites().to_vec(),
        load_s: twin.load_seconds(),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    let c = &info.contract;
    println!(
        "{} ({:.2} MB, {} parameters)",
        info.path,
        info.bytes as f64 / 1e6,
        info.parameters
    );
    println!(
        "  kind {:?}, contract v{}, {} Hz, stimulus {}x{} (HxW), behaviour [{}]",
        c.kind,
        c.version,
        c.frame_rate_hz,
        c.height,
        c.width,
        c.behavior_channels.join(", ")
    );
    if c.kind == contract::Kind::Twin {
        let ids = &c.roi_ids;
        let shown: Vec<String> = ids.iter().take(8).map(|i| i.to_string()).collect();
        println!(
            "  {} neurons, ROI ids {}{}",
            c.n_neurons,
            shown.join(","),
            if ids.len() > 8 { ",..." } else { "" }
        );
    } else if let Some(f) = c.features {
        println!("  features [C, h, w] = {:?}", f);
    }
    for s in &c.states {
        println!(
            "  state `{}`: [B, {:?}] ({} floats)",
            s.name,
            s.shape,
            s.len()
        );
    }
    for r in &info.rewrites {
        println!("  rewritten before tract: {r}");
    }
    println!("  inputs:");
    for (n, d) in &info.inputs {
        println!("    {n:<22} {d}");
    }
    println!("  outputs:");
    for (n, d) in &info.outputs {
        println!("    {n:<22} {d}");
    }
    for (k, v) in &c.metadata {
        let v = if v.len() > 100 {
            format!("{}...", &v[..100])
        } else {
            v.clone()
        };
        println!("  meta {k} = {v}");
    }
    println!(
        "  op support, as tract-cuda's op table predicts it ({} on the CUDA device, {} fall back \
         to CPU; unconfirmed until `cuda plan` below measures it on a machine with CUDA):",
        info.predicted_cuda_nodes, info.predicted_cpu_fallback_nodes
    );
    println!(
        "    {:<16} {:>5}  {:<4} cuda (predicted)",
        "op", "nodes", "cpu"
    );
    for o in &info.ops {
        println!(
            "    {:<16} {:>5}  {:<4} {}",
            o.op_type,
            o.count,
            if o.cpu { "yes" } else { "NO" },
            if o.cuda { "device" } else { "cpu fallback" }
        );
    }
    if let Some((dev, all)) = info.cuda_placement {
        println!("  cuda plan (measured): {dev} of {all} optimised nodes on the device");
    }
    if let Some(why) = &info.cuda_available {
        println!(
            "  cuda: not available here ({why}); the op table above is a prediction, not measured"
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct PredictReport {
    model: String,
    session: String,
    device: String,
    target_source: String,
    frames: usize,
    neurons: usize,
    seconds: f64,
    frames_per_s: f64,
    accuracy: metrics::Accuracy,
    /// Median r of each neuron's prediction against other neurons' measurements, over the same
    /// frames: the baseline `accuracy.median_corr` must beat.
    shuffled_median_corr: Option<f64>,
}

/// The twin's contract, the session it is to predict (checked against it) and the measured
/// column of each twin neuron; `what` names the command in the error for a core. A twin of
/// another mouse is a warning, or with `strict` an error.
fn session_for(
    twin: &Twin,
    model: &std::path::Path,
    session: &std::path::Path,
    need_targets: bool,
    what: &str,
    strict: bool,
) -> Result<(contract::Contract, SessionData, Vec<usize>)> {
    let c = twin.contract().clone();
    if c.kind != contract::Kind::Twin {
        bail!(
            "{}: is a core (twin.kind = core); {what} needs a twin (rig twin adapt makes one)",
            model.display()
        );
    }
    let s = SessionData::open(session, need_targets)?;
    s.check_compatible(&c, model)?;
    if let Some(why) = c.other_mouse(&s.mouse_id) {
        if strict {
            bail!("{}: {why} (--strict)", model.display());
        }
        tracing::warn!("{}: {why}", model.display());
    }
    let cols = neuron_columns(&s, &c, model, session)?;
    Ok((c, s, cols))
}

/// The measured column of each twin neuron, by ROI id (empty when the session measured none).
fn neuron_columns(
    s: &SessionData,
    c: &contract::Contract,
    model: &std::path::Path,
    session: &std::path::Path,
) -> Result<Vec<usize>> {
    let Some(tg) = &s.targets else {
        return Ok(Vec::new());
    };
    let missing: Vec<u32> = c
        .roi_ids
        .iter()
        .copied()
        .filter(|id| tg.column(*id).is_none())
        .collect();
    if !missing.is_empty() {
        let shown: Vec<String> = missing.iter().take(10).map(|i| i.to_string()).collect();
        bail!(
            "{}: the twin's neuron-to-ROI map (metadata twin.roi_ids) names {} ROI id(s) the session {} lacks: {}{} (session has {} ROIs in {})",
            model.display(),
            missing.len(),
            session.display(),
            shown.join(", "),
            if missing.len() > 10 { ", ..." } else { "" },
            tg.n(),
            tg.source
        );
    }
    Ok(c.roi_ids
        .iter()
        .map(|id| tg.column(*id).unwrap_or(0))
        .collect())
}

fn predict(a: PredictArgs) -> Result<()> {
    let mut claim = a
        .out
        .as_ref()
        .map(|o| super::new_output(o, a.overwrite))
        .transpose()?;
    let backend = match (&a.backend, &a.config) {
        (Some(b), _) => parse_backend(b)?,
        (None, Some(c)) => super::load_config(Some(c))?.twin.backend,
        (None, None) => Backend::Cpu,
    };
    let mut twin = Twin::load_with(
        &a.model,
        &TwinOptions {
            backend,
            threads: a.threads.max(1),
        },
    )?;
    let (c, s, cols) = session_for(&twin, &a.model, &a.session, false, "predict", a.strict)?;
    let (t_n, n) = (s.n_frames, c.n_neurons);
    let pb = super::progress_bar(t_n as u64, "predict");
    let t0 = Instant::now();
    let pred = s.predict(&mut twin, &|t| pb.set_position(t as u64))?;
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    if let Some(claim) = claim.as_mut() {
        write_predictions(claim.tmp_path(), &pred, t_n, n, &c.roi_ids)
            .with_context(|| format!("writing {}", claim.path().display()))?;
        claim.publish()?;
    }
    let Some(tg) = &s.targets else {
        bail!(
            "{}: the session has no measured responses (traces/dff or ground_truth/calcium) to compare with{}",
            a.session.display(),
            if a.out.is_some() { "; predictions were written" } else { "" }
        );
    };
    let frames: Vec<usize> = (0..t_n).collect();
    let reps = clip_repeats(&s);
    let mut acc = accuracy(&pred, n, &tg.data, tg.n(), &cols, &frames, &reps);
    let shuffled_median_corr =
        twinrig::twin::evaluate::shuffled_median_r(&pred, n, (tg, &cols), &frames);
    if !a.per_neuron {
        acc.per_neuron.clear();
        acc.per_neuron_repeat.clear();
    }
    let rep = PredictReport {
        model: a.model.display().to_string(),
        session: a.session.display().to_string(),
        device: twin.device().to_string(),
        target_source: tg.source.to_string(),
        frames: t_n,
        neurons: n,
        seconds: secs,
        frames_per_s: t_n as f64 / secs.max(1e-9),
        accuracy: acc,
        shuffled_median_corr,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        let ac = &rep.accuracy;
        println!(
            "predicted {} frames x {} neurons on {} in {:.1} s ({:.0} frames/s); measured: {}",
            t_n, n, rep.device, secs, rep.frames_per_s, rep.target_source
        );
        println!(
            "  correlation with measured responses: mean {:.3}, median {:.3} (shuffled-neuron baseline {})",
            ac.mean_corr,
            ac.median_corr,
            rep.shuffled_median_corr
                .map_or("-".into(), |v| format!("{v:.3}"))
        );
        println!(
            "  on repeated clips ({} frames): mean {:.3}; repeat-to-repeat (noise ceiling) {:.3}; normalised corr/sqrt(ceiling) {:.3} over {} neurons",
            ac.repeat_frames, ac.mean_corr_repeats, ac.mean_repeat_corr, ac.mean_normalised_corr, ac.normalised_neurons
        );
    }
    Ok(())
}

fn write_predictions(out: &Path, pred: &[f32], t: usize, n: usize, ids: &[u32]) -> Result<()> {
    let f = hdf5::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let g = f.create_group("predictions")?;
    let arr = ndarray::ArrayView2::from_shape((t, n), pred)?;
    g.new_dataset_builder()
        .with_data(&arr)
        .create("response")
        .with_context(|| format!("{}: writing predictions/response", out.display()))?;
    g.new_dataset_builder()
        .with_data(ids)
        .create("roi_id")
        .with_context(|| format!("{}: writing predictions/roi_id", out.display()))?;
    Ok(())
}

#[derive(Serialize)]
struct Latency {
    threads: usize,
    mean_us: f64,
    p50_us: f64,
    p99_us: f64,
}

#[derive(Serialize)]
struct BenchReport {
    model: String,
    device: String,
    neurons: usize,
    load_s: f64,
    step: Vec<Latency>,
    batch: usize,
    /// Why `batch` is not the one asked for (a model with a fixed batch).
    batch_note: Option<String>,
    batch_threads: usize,
    batch_frames_per_s: f64,
    single_step_frames_per_s: f64,
    /// With --profile: per node of the batch-1 plan, one thread, microseconds per step.
    profile: Option<Vec<ProfileRow>>,
}

#[derive(Serialize)]
struct ProfileRow {
    op: String,
    node: String,
    us_per_step: f64,
    share: f64,
}

fn bench(a: BenchArgs) -> Result<()> {
    let backend = parse_backend(&a.backend)?;
    let all = a.threads.unwrap_or_else(all_cores).max(1);
    let mut steps = Vec::new();
    let mut threads_list = vec![1];
    if all > 1 {
        threads_list.push(all);
    }
    let mut load_s = 0.0;
    let mut device = String::new();
    let mut n = 0;
    let mut batch_fps = 0.0;
    let mut batch = a.batch.max(1);
    let mut batch_note = None;
    let mut profile = None;
    for &th in &threads_list {
        let mut twin = Twin::load_with(
            &a.model,
            &TwinOptions {
                backend,
                threads: th,
            },
        )?;
        load_s = twin.load_seconds();
        device = twin.device().to_string();
        let c = twin.contract().clone();
        n = c.n_neurons;
        let hw = c.stimulus_len();
        let k = c.n_behavior();
        let on = c.output_len();
        // A deterministic moving stimulus.
        let stim: Vec<Vec<f32>> = (0..16)
            .map(|f| {
                (0..hw)
                    .map(|i| 127.5 + 100.0 * (((i + 3 * f) as f32) * 0.05).sin())
                    .collect()
            })
            .collect();
        let beh = vec![5.0f32; k];
        let mut out = vec![0f32; on];
        if let Some(fb) = c.fixed_batch {
            if fb != 1 {
                bail!(
                    "{}: the model's batch is fixed at {fb}; rig steps a twin one frame at a time \
                     (batch 1) in the loop: export it with a symbolic batch (docs/twin-contract.md)",
                    a.model.display()
                );
            }
            if batch != fb {
                batch_note = Some(format!(
                    "the model's batch is fixed at {fb}; --batch {} not possible",
                    a.batch
                ));
                batch = fb;
            }
        }
        let mut st = twin.new_state();
        for i in 0..20 {
            twin.step(&mut st, &stim[i % 16], &beh, &mut out)?;
        }
        let mut lat = Vec::with_capacity(a.steps);
        for i in 0..a.steps.max(1) {
            let t0 = Instant::now();
            twin.step(&mut st, &stim[i % 16], &beh, &mut out)?;
            lat.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        if a.profile && th == 1 {
            twin.set_profiling(true);
            for i in 0..a.steps.max(1) {
                twin.step(&mut st, &stim[i % 16], &beh, &mut out)?;
            }
            let ops = twin.profile();
            twin.set_profiling(false);
            let total: f64 = ops.iter().map(|o| o.total_us).sum::<f64>().max(1e-9);
            profile = Some(
                ops.into_iter()
                    .map(|o| ProfileRow {
                        us_per_step: o.total_us / a.steps.max(1) as f64,
                        share: o.total_us / total,
                        op: o.op,
                        node: o.node,
                    })
                    .collect(),
            );
        }
        let mean = lat.iter().sum::<f64>() / lat.len() as f64;
        lat.sort_by(|x, y| x.total_cmp(y));
        steps.push(Latency {
            threads: th,
            mean_us: mean,
            p50_us: lat[lat.len() / 2],
            p99_us: lat[(lat.len() * 99 / 100).min(lat.len() - 1)],
        });
        if th == *threads_list.last().unwrap_or(&1) {
            let b = batch;
            twin.prepare_batch(b)?;
            let mut bs = twin.new_batch_state(b);
            let stim_b: Vec<f32> = (0..b).flat_map(|j| stim[j % 16].clone()).collect();
            let beh_b = vec![5.0f32; b * k];
            let mut out_b = vec![0f32; b * on];
            twin.run_batch(&mut bs, &stim_b, &beh_b, &mut out_b)?;
            let reps = (a.steps / b).clamp(5, 200);
            let t0 = Instant::now();
            for _ in 0..reps {
                twin.run_batch(&mut bs, &stim_b, &beh_b, &mut out_b)?;
            }
            batch_fps = (reps * b) as f64 / t0.elapsed().as_secs_f64();
        }
    }
    let rep = BenchReport {
        model: a.model.display().to_string(),
        device,
        neurons: n,
        load_s,
        single_step_frames_per_s: 1e6 / steps[0].mean_us,
        step: steps,
        batch,
        batch_note,
        profile,
        batch_threads: *threads_list.last().unwrap_or(&1),
        batch_frames_per_s: batch_fps,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        println!(
            "{} on {} ({} neurons), loaded in {:.2} s",
            rep.model, rep.device, n, load_s
        );
        for l in &rep.step {
            println!(
                "  step, {} thread(s): mean {:.0} us, p50 {:.0} us, p99 {:.0} us",
                l.threads, l.mean_us, l.p50_us, l.p99_us
            );
        }
        println!(
            "  batch {} ({} threads): {:.0} stimulus-frames/s{}",
            rep.batch,
            rep.batch_threads,
            rep.batch_frames_per_s,
            rep.batch_note
                .as_ref()
                .map_or(String::new(), |n| format!(" ({n})"))
        );
        if let Some(p) = &rep.profile {
            println!("  profile, 1 thread, batch 1 (us per step; tract's optimised nodes):");
            for r in p.iter().take(15) {
                println!(
                    "    {:>8.1} us {:>5.1}%  {:<24} {}",
                    r.us_per_step,
                    r.share * 100.0,
                    r.op,
                    r.node
                );
            }
            if p.len() > 15 {
                let rest: f64 = p[15..].iter().map(|r| r.us_per_step).sum();
                println!("    {rest:>8.1} us in {} more nodes", p.len() - 15);
            }
        }
    }
    Ok(())
}

fn adapt_cmd(a: AdaptArgs) -> Result<()> {
    twinrig::interrupt::install();
    let mut claim = super::new_output(&a.out, a.overwrite)?;
    let threads = a.threads.unwrap_or_else(all_cores).max(1);
    let opts = AdaptOptions {
        tau_s: a.tau,
        folds: a.folds,
        time_stride: a.time_stride,
        threads,
        max_neurons: a.max_neurons,
        detrend_s: a.detrend,
        readout: a.readout,
        joint_passes: a.joint_passes,
        ..Default::default()
    };
    if !(a.detrend.is_finite() && a.detrend >= 0.0) {
        bail!("--detrend must be >= 0 seconds, got {}", a.detrend);
    }
    if !(opts.tau_s.is_finite() && opts.tau_s > 0.0) {
        bail!("--tau must be a positive number of seconds, got {}", a.tau);
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .ok();
    let s = SessionData::open(&a.session, true)?;
    let source = s.targets.as_ref().map(|t| t.source);
    tracing::info!(
        "adapt: fitting to {} ({} frames); targets: {}",
        a.session.display(),
        s.n_frames,
        source.map(|s| s.to_string()).unwrap_or_default()
    );
    let total = s.n_frames as u64;
    let pb = super::progress_bar(total, "adapt");
    let mut last = String::new();
    let fit = adapt(&a.core, &s, &opts, &mut |stage, done, tot| {
        if stage != last {
            pb.set_message(stage.to_string());
            pb.set_length(tot);
            last = stage.to_string();
        }
        if done % 64 == 0 || done == tot {
            pb.set_position(done);
        }
    });
    pb.finish_and_clear();
    if twinrig::interrupt::requested() {
        super::bail_if_interrupted("the fit was stopped; no twin written")?;
    }
    let (model, report, _) = fit?;
    let out = a.out.clone();
    write_model(&model, claim.tmp_path())?;
    // The written file must load back as a twin before it takes its name.
    Twin::load(claim.tmp_path(), Backend::Cpu)
        .with_context(|| format!("re-loading {}", out.display()))?;
    claim.publish()?;
    if let Some(r) = &a.report {
        std::fs::write(r, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", r.display()))?;
    }
    if a.json {
        let mut short = report.clone();
        short.heldout_corr.clear();
        short.chosen_lambda.clear();
        short.chosen_tau_s.clear();
        short.roi_ids.clear();
        println!("{}", serde_json::to_string_pretty(&short)?);
    } else {
        println!(
            "adapted {} neurons on {} frames -> {} ({:.2} MB); measured responses: {}",
            report.neurons,
            report.frames,
            out.display(),
            std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0) as f64 / 1e6,
            report.target_source
        );
        println!(
            "  held-out ({}-fold over time blocks) correlation: mean {:.3}, median {:.3} ({} readout; linear readout median {:.3})",
            report.folds,
            report.mean_heldout_corr,
            report.median_heldout_corr,
            report.readout,
            report.median_linear_heldout_corr
        );
        println!(
            "  time: {:.1} s total ({:.1} s running the core, {:.1} s fitting)",
            report.seconds_total, report.seconds_core, report.seconds_fit
        );
    }
    Ok(())
}

fn build_core_cmd(a: BuildCoreArgs) -> Result<()> {
    match a.preset.as_str() {
        "reference" => {}
        "foundation" => return build_foundation_cmd(&a),
        o => bail!("--preset: expected reference or foundation, found {o:?}"),
    }
    let cfg = super::load_config(a.config.as_deref())?;
    let mut p = CoreParams::for_config(&cfg);
    p.sf_cpd =
        a.sf.split(',')
            .map(|s| s.trim().parse::<f64>())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("--sf: expected comma-separated numbers, got {:?}", a.sf))?;
    if p.sf_cpd.is_empty() || p.sf_cpd.iter().any(|&v| !(v > 0.0 && v < 1.0)) {
        bail!(
            "--sf: expected spatial frequencies in (0, 1) cycles/degree, got {:?}",
            a.sf
        );
    }
    if a.orientations == 0 || a.orientations > 32 {
        bail!("--orientations: expected 1..=32, got {}", a.orientations);
    }
    if !(a.sigma_deg > 0.5 && a.sigma_deg < 40.0) {
        bail!("--sigma-deg: expected (0.5, 40), got {}", a.sigma_deg);
    }
    if !(0.0..1.0).contains(&a.temporal_a) {
        bail!("--temporal-a: expected [0, 1), got {}", a.temporal_a);
    }
    p.orientations = a.orientations;
    p.sigma_deg = a.sigma_deg;
    p.temporal_a = a.temporal_a;
    let mut claim = super::new_output(&a.out, a.overwrite)?;
    let m = build_core(&p);
    write_model(&m, claim.tmp_path())?;
    let twin = Twin::load(claim.tmp_path(), Backend::Cpu)?;
    claim.publish()?;
    let out = a.out.clone();
    let c = twin.contract();
    if a.json {
        println!(
            "{}",
            serde_json::json!({"out": out.display().to_string(), "params": p, "features": c.features, "kernel_size": p.kernel_size(), "bytes": std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0)})
        );
    } else {
        println!(
            "core -> {}: {} channels of {:?} features, kernel {}x{}, temporal a {}",
            out.display(),
            p.channels(),
            c.features,
            p.kernel_size(),
            p.kernel_size(),
            p.temporal_a
        );
    }
    let _ = resolve_backend;
    Ok(())
}

fn build_foundation_cmd(a: &BuildCoreArgs) -> Result<()> {
    if !(1..=100_000).contains(&a.neurons) {
        bail!("--neurons: expected 1..=100000, found {}", a.neurons);
    }
    let mut claim = super::new_output(&a.out, a.overwrite)?;
    let m = twinrig::twin::foundation::build_foundation(a.neurons, a.seed);
    write_model(&m, claim.tmp_path())?;
    let twin = Twin::load(claim.tmp_path(), Backend::Cpu)?;
    claim.publish()?;
    let params: usize = m
        .graph
        .as_ref()
        .map(|g| {
            g.initializer
                .iter()
                .map(|t| t.dims.iter().product::<i64>().max(1) as usize)
                .sum()
        })
        .unwrap_or(0);
    let c = twin.contract();
    let bytes = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
    if a.json {
        println!(
            "{}",
            serde_json::json!({"out": a.out.display().to_string(), "preset": "foundation", "neurons": c.n_neurons, "height": c.height, "width": c.width, "parameters": params, "bytes": bytes})
        );
    } else {
        println!(
            "foundation-scale twin (random weights) -> {}: {}x{} stimulus, {} neurons, {} parameters, {:.1} MB",
            a.out.display(),
            c.height,
            c.width,
            c.n_neurons,
            params,
            bytes as f64 / 1e6
        );
    }
    Ok(())
}

fn check_backend(a: CheckBackendArgs) -> Result<()> {
    let backend = parse_backend(&a.backend)?;
    let mut reference = Twin::load_with(
        &a.model,
        &TwinOptions {
            backend: Backend::Cpu,
            threads: 1,
        },
    )?;
    let mut checked = Twin::load_with(
        &a.model,
        &TwinOptions {
            backend,
            threads: a.threads.max(1),
        },
    )?;
    let c = reference.contract().clone();
    let (hw, k, n) = (c.stimulus_len(), c.n_behavior(), c.output_len());
    let (mut sr, mut sc) = (reference.new_state(), checked.new_state());
    let (mut or, mut oc) = (vec![0f32; n], vec![0f32; n]);
    let (mut worst, mut scale) = (0f32, 0f32);
    for t in 0..a.steps.max(1) {
        let stim: Vec<f32> = (0..hw)
            .map(|i| 127.5 + 100.0 * (((i + 7 * t) as f32) * 0.031).sin())
            .collect();
        let beh: Vec<f32> = (0..k).map(|j| 1.0 + ((t + j) % 5) as f32 * 0.5).collect();
        reference.step(&mut sr, &stim, &beh, &mut or)?;
        checked.step(&mut sc, &stim, &beh, &mut oc)?;
        for (x, y) in or.iter().zip(&oc) {
            worst = worst.max((x - y).abs());
            scale = scale.max(x.abs());
        }
    }
    let ok = (worst as f64) <= a.tolerance * (scale as f64).max(1e-12);
    let (on_device, all) = checked.placement();
    let rep = serde_json::json!({
        "model": a.model.display().to_string(),
        "device": checked.device().to_string(),
        "threads": a.threads.max(1),
        "steps": a.steps.max(1),
        "max_abs_difference": worst,
        "response_scale": scale,
        "relative_difference": worst as f64 / (scale as f64).max(1e-12),
        "tolerance": a.tolerance,
        "nodes_on_device": on_device,
        "nodes": all,
        "pass": ok,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        println!(
            "{} on {} ({} thread(s)) vs one CPU thread, {} stepped frames: max |difference| {:.3e} of a response scale {:.3e} ({})",
            a.model.display(),
            checked.device(),
            a.threads.max(1),
            a.steps.max(1),
            worst,
            scale,
            if ok { "within tolerance" } else { "OVER tolerance" }
        );
    }
    if !ok {
        bail!(
            "{}: {} differs from one CPU thread by {worst:.3e} (response scale {scale:.3e}, tolerance {} relative)",
            a.model.display(),
            checked.device(),
            a.tolerance
        );
    }
    Ok(())
}

#[derive(Serialize)]
pub(crate) struct EvaluateReport {
    model: String,
    session: String,
    target_source: String,
    frames: usize,
    neurons: usize,
    /// Whether the session is not the one the twin was fit on (`twin.session_id`); `None` when
    /// the twin does not say.
    held_out: Option<bool>,
    fit_families: Option<Vec<String>>,
    families: Vec<twinrig::twin::evaluate::FamilyScore>,
}

fn evaluate(a: EvaluateArgs) -> Result<()> {
    let rep = evaluate_session(&a.model, &a.session, a.per_neuron, a.strict)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
        return Ok(());
    }
    print_evaluation(&rep);
    Ok(())
}

/// `rig twin evaluate`'s figures for one twin and session (also the demo's last step).
pub(crate) fn evaluate_session(
    model: &Path,
    session: &Path,
    per_neuron: bool,
    strict: bool,
) -> Result<EvaluateReport> {
    use twinrig::twin::evaluate::{by_family, FIT_FAMILIES};
    let mut twin = Twin::load(model, Backend::Cpu)?;
    let (c, s, cols) = session_for(&twin, model, session, true, "evaluate", strict)?;
    let pb = super::progress_bar(s.n_frames as u64, "evaluate");
    let pred = s.predict(&mut twin, &|t| pb.set_position(t as u64))?;
    pb.finish_and_clear();
    let tg = s.targets.as_ref().expect("opened with need_targets");
    let fit_families: Option<Vec<String>> = c.meta(FIT_FAMILIES).map(|v| {
        v.split(',')
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect()
    });
    let held_out = c.meta(contract::key::SESSION_ID).map(|id| {
        let frames = c.meta(twinrig::twin::evaluate::FIT_FRAMES);
        id != s.session_id || frames.is_some_and(|f| f != s.n_frames.to_string())
    });
    Ok(EvaluateReport {
        model: model.display().to_string(),
        session: session.display().to_string(),
        target_source: tg.source.to_string(),
        frames: s.n_frames,
        neurons: c.n_neurons,
        held_out,
        families: by_family(
            &pred,
            c.n_neurons,
            &s,
            (tg, &cols),
            fit_families.as_deref(),
            per_neuron,
        ),
        fit_families,
    })
}

pub(crate) fn print_evaluation(rep: &EvaluateReport) {
    println!(
        "{} on {} ({} frames, {} neurons, against {}): {}",
        rep.model,
        rep.session,
        rep.frames,
        rep.neurons,
        rep.target_source,
        match rep.held_out {
            Some(true) => "held out (not the fit session)",
            Some(false) => "IN SAMPLE: the session the twin was fit on",
            None => "the twin does not say which session it was fit on",
        }
    );
    let f = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.3}"));
    println!(
        "  family     frames  rep.clips  fit   median r  ceiling  CC_norm (neurons)  shuffled r"
    );
    for fs in &rep.families {
        println!(
            "  {:<9} {:>7} {:>10}  {:<4} {:>9} {:>8} {:>8} ({:>4})  {:>10}",
            fs.family,
            fs.frames,
            fs.repeated_clips,
            match fs.in_fit {
                Some(true) => "in",
                Some(false) => "OUT",
                None => "-",
            },
            f(fs.median_r),
            f(fs.median_ceiling),
            f(fs.median_cc_norm),
            fs.cc_norm_neurons,
            f(fs.shuffled_median_r)
        );
    }
}
