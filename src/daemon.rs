//! `rig run`: wires the threads of a session. Acquisition (simulated microscope in the loop, or a
//! replayed file) feeds the pipeline (rings, extraction, recorder); a `tokio` runtime serves the
//! status/control endpoint and turns SIGINT/SIGTERM into a clean stop: the frame in hand is
//! finished, everything is flushed and the file is closed with its summary.

pub mod attach;
pub mod presenter;
pub mod sync;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;

use crate::acquire::live::{LiveContext, LiveContextReport, LiveContextSource};
use crate::acquire::stream::{StreamOptions, StreamSource};
use crate::acquire::{AcquireError, FrameSource, ReplaySource, SimSource};
use crate::closedloop::plan::{plan_clips, PlanClip, CONTROL_SEED};
use crate::closedloop::schedule::{DisplayCommand, Order, Scheduler};
use crate::closedloop::worker::{Worker, WorkerConfig, WorkerSummary};
use crate::closedloop::{ClipStore, LoopStage, TwinInLoop};
use crate::compare::CompareConfig;
use crate::config::{FrameSource as SourceKind, RigConfig, TrialOrder};
use crate::control::{self, ControlError, ControlState, ObjectiveRequest, SearchTargets};
use crate::insilico::Plan;
use crate::pipeline::events::event_channel;
use crate::pipeline::replay::{analysis_for, copy_context};
use crate::pipeline::score::{GroundTruthScorer, MaskSource};
use crate::pipeline::{run, PipelineError, PipelineOptions, PipelineSummary, RunControl, Sink};
use crate::session::layout::attr;
use crate::session::{read_roi_file, RoiTable, SessionError, SessionInfo, SessionWriter, TwinEnd};
use crate::sim::{utc_now_iso, SimRig};
use crate::twin::Twin;

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Acquire(#[from] AcquireError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Dashboard(#[from] crate::dashboard::DashboardError),
    #[error("twin: {0}")]
    Twin(#[from] crate::twin::TwinError),
    #[error(transparent)]
    Output(#[from] crate::outfile::OutputError),
    #[error("{0}")]
    Setup(String),
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop after this many minutes of session time; `None` = until stopped.
    pub minutes: Option<f64>,
    /// Session file; default `storage.out_dir/<mouse>-<time>.h5`.
    pub out: Option<PathBuf>,
    /// `None`: as fast as the pipeline goes (simulated or replayed sources); `Some(x)`: x times
    /// real time.
    pub speed: Option<f64>,
    /// With `imaging.source = "replay"`: the session to replay.
    pub replay: Option<PathBuf>,
    pub seed: Option<u64>,
    /// ROI masks for extraction (default: the simulator's footprints or the replayed session's).
    pub rois: Option<PathBuf>,
    /// Serve the control endpoint (on `control.listen`).
    pub control: bool,
    /// Override `control.listen` (e.g. port 0 in tests).
    pub control_listen: Option<String>,
    /// Run without the twin even when `twin.in_loop` is set.
    pub no_twin: bool,
    /// Use this twin instead of `twin.onnx`.
    pub twin: Option<PathBuf>,
    /// Show this in-silico plan's best stimuli (sets `stimulus.order = "plan"`).
    pub plan: Option<PathBuf>,
    /// Search the twin for this objective and targets in the background and show what it finds
    /// (`rig status --objective` changes it while the session runs).
    pub insilico: Option<ObjectiveRequest>,
    /// Twin evaluations per background search.
    pub insilico_budget: u64,
    /// Override `display.presenter` (`none`, an address, `spawn`, `spawn-headless`).
    pub present: Option<String>,
    /// Replace an existing session file at `out` (never one another process has open).
    pub overwrite: bool,
    /// Serve the dashboard here (a taken port refuses the run) instead of `dashboard.listen`.
    pub dashboard: Option<String>,
    /// No dashboard, whatever the config says.
    pub no_dashboard: bool,
}

/// Where a session's endpoints are, once it runs.
pub struct Started<'a> {
    pub out: &'a Path,
    pub control: Option<std::net::SocketAddr>,
    /// The dashboard's page.
    pub dashboard: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub session: String,
    pub source: String,
    pub speed: Option<f64>,
    pub stopped_by: String,
    pub control_addr: Option<String>,
    /// The live dashboard's page (`None`: no dashboard).
    pub dashboard: Option<String>,
    /// The plan whose stimuli were shown from the start, with each stimulus's clip id.
    pub plan: Option<PlanReport>,
    /// Background in-silico searches during the session.
    pub insilico: Option<WorkerSummary>,
    #[serde(flatten)]
    pub pipeline: PipelineSummary,
    /// The sync board's link (`None` without a board).
    pub sync: Option<sync::SyncReport>,
    /// The stimulus presenter (`None` without one).
    pub presenter: Option<presenter::PresenterReport>,
    /// A live rig's frame context from the presenter's flips and the sync board (`None`
    /// otherwise).
    pub live_context: Option<LiveContextReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub path: String,
    pub targets: Vec<u32>,
    pub objective: String,
    /// (clip id in the session's library, the plan stimulus)
    pub clips: Vec<(i32, PlanClip)>,
    /// (clip id, the control stimulus), each naming the plan stimulus it is the control of.
    pub controls: Vec<(i32, PlanClip)>,
}

fn default_out(cfg: &RigConfig) -> PathBuf {
    let stamp = utc_now_iso().replace([':', '-'], "");
    cfg.storage
        .out_dir
        .join(format!("{}-{}.h5", cfg.rig.mouse_id, stamp))
}

/// Runs a session; `on_start` is called once the session file exists and the endpoints listen,
/// `progress(frames)` as frames arrive.
pub fn run_session(
    cfg: &RigConfig,
    opts: &RunOptions,
    on_start: &dyn Fn(&Started),
    progress: &(dyn Fn(u64) + Sync),
) -> Result<RunReport, DaemonError> {
    let mut effective = cfg.clone();
    if let Some(p) = &opts.plan {
        effective.stimulus.order = TrialOrder::Plan;
        effective.stimulus.plan = Some(p.clone());
    }
    // The session records the config it ran with.
    let cfg = &effective;
    // A missing twin is refused before a session file exists.
    let twin_path = opts.twin.clone().unwrap_or_else(|| cfg.twin.onnx.clone());
    let live_without_twin = cfg.imaging.source == SourceKind::Stream
        && (presenter::requested(cfg, opts.present.as_deref()).is_none() || opts.rois.is_none());
    if !opts.no_twin && cfg.twin.in_loop && !live_without_twin && !twin_path.exists() {
        return Err(missing_twin(&twin_path));
    }
    let out = opts.out.clone().unwrap_or_else(|| default_out(cfg));
    // Refused before anything starts; the file itself is created under a temporary name and
    // published only once every start-up step below has succeeded (`outfile`).
    crate::outfile::check_target(&out, opts.overwrite)?;
    crate::interrupt::install();
    // A disk that fills stops the recording: say so before the session, not at its end. The
    // folder may not exist yet (claiming the file creates it): ask the disk it will be on.
    if let Some(minutes) = opts.minutes {
        let dir = out
            .ancestors()
            .skip(1)
            .map(|d| {
                if d.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    d
                }
            })
            .find(|d| d.exists())
            .unwrap_or(Path::new("."));
        if let Some(w) = crate::budget::disk_warning(cfg, dir, minutes) {
            tracing::warn!("{w}");
        }
    }
    let (h, w) = (cfg.imaging.height, cfg.imaging.width);
    let fr = cfg.imaging.frame_rate_hz;
    let total = opts.minutes.map(|m| (m * 60.0 * fr).round() as u64);
    let seed = opts.seed.unwrap_or(cfg.sim.seed);
    let info = SessionInfo::for_file(&out, &cfg.rig.mouse_id, utc_now_iso());
    let control = RunControl::default();
    let paused = Arc::new(AtomicBool::new(false));
    let state = Arc::new(ControlState {
        stop: control.stop.clone(),
        paused: paused.clone(),
        live: control.live.clone(),
        started: Instant::now(),
        session: out.display().to_string(),
        objective: Mutex::new(opts.insilico.clone()),
        signalled: AtomicBool::new(false),
        search: Default::default(),
    });
    // The endpoint turns the operator's stop request into this session's stop, so it runs even
    // when no client is expected. It binds before the session file exists: a busy port must leave nothing behind.
    let listen = if opts.control {
        opts.control_listen
            .clone()
            .unwrap_or_else(|| cfg.control.listen.clone())
    } else {
        "127.0.0.1:0".to_string()
    };
    let server = control::start(
        &listen,
        Duration::from_secs_f64(cfg.control.idle_timeout_s),
        state.clone(),
    )?;
    // The dashboard's port too is bound before the session file exists.
    let dashboard = match (&opts.dashboard, opts.no_dashboard) {
        (_, true) => None,
        (Some(addr), false) => Some(crate::dashboard::bind(addr, true)?),
        (None, false) if cfg.dashboard.listen.is_empty() => None,
        (None, false) => Some(crate::dashboard::bind(&cfg.dashboard.listen, false)?),
    };
    let feed = dashboard
        .as_ref()
        .map(|_| Arc::new(crate::live::LoopFeed::default()));
    let mut sink = Sink::default();

    let mut stream_handle = None;
    let mut scheduler = None;
    let mut plan_report = None;
    // The session's clip library, shared by the stimulus schedule and the twin.
    let clips = ClipStore::new(
        cfg.stimulus.frames_per_clip(),
        cfg.stimulus.height,
        cfg.stimulus.width,
    );
    let mut live_context: Option<Arc<LiveContext>> = None;
    let mut sync_wiring = sync::SyncWiring::default();
    let mut presenter_wiring = presenter::PresenterWiring::default();
    let (source, rois, source_name): (Box<dyn FrameSource>, Option<RoiTable>, String) = match cfg
        .imaging
        .source
    {
        SourceKind::Sim => {
            let mut rig = SimRig::new(cfg, seed);
            let mut wr = SessionWriter::create_unpublished(&out, cfg, &info, opts.overwrite)?;
            let lib = file_library(cfg, &rig.library, &mut wr, &clips, seed)?;
            for pc in &lib.plan_clips {
                rig.library.clips.push(pc.frames.clone());
                rig.library.params.push(pc.clip_params);
            }
            plan_report = lib.plan_report.clone();
            let rois = match &opts.rois {
                Some(p) => read_roi_file(p, h, w)?,
                None => rig.microscope.footprints.clone(),
            };
            wr.write_rois(&rois)?;
            let neuron_roi = rig.microscope.footprints.ids.clone();
            wr.begin_ground_truth(rig.mouse.len(), &rig.mouse.table(&neuron_roi))?;
            wr.write_truth_footprints(&rig.microscope.footprints)?;
            wr.begin_traces(rois.len())?;
            let (etx, erx) = event_channel(rig.mouse.len());
            let presenter_tx = etx.tx.clone();
            sink.writer = Some(wr);
            sink.events = Some(erx);
            sink.scorer = Some(
                GroundTruthScorer::live(&rois, &rig.microscope.footprints, &neuron_roi).with_masks(
                    if opts.rois.is_some() {
                        MaskSource::Given
                    } else {
                        MaskSource::SimulatorFootprints
                    },
                ),
            );
            let n_library = rig.library.len();
            let mut src = SimSource::new(rig, h, w, fr, total, opts.speed, Some(etx));
            let (cmd_tx, cmd_rx) = crossbeam::channel::unbounded();
            src.set_commands(cmd_rx);
            scheduler = Some(scheduler_for(cfg, n_library, &lib, cmd_tx, &clips, seed)?);
            // The control endpoint's pause and the display's are the same flag.
            src.set_pause_flag(paused.clone());
            sync_wiring = sync::wire_sim(cfg, &mut src)?;
            presenter_wiring =
                presenter::wire_sim(cfg, opts.present.as_deref(), &mut src, presenter_tx)?;
            (
                Box::new(src) as Box<dyn FrameSource>,
                Some(rois),
                "sim".into(),
            )
        }
        SourceKind::Replay => {
            let path = opts.replay.clone().ok_or_else(|| {
                DaemonError::Setup("imaging.source = \"replay\" needs --replay SESSION.h5".into())
            })?;
            if presenter::requested(cfg, opts.present.as_deref()).is_some() {
                tracing::warn!(
                    "a replay drives no presenter; display.presenter / --present ignored"
                );
            }
            let src = ReplaySource::open(&path, opts.speed)?;
            let r = src.reader();
            if (r.meta().height, r.meta().width) != (h, w) {
                return Err(DaemonError::Setup(format!(
                    "{} has {}x{} frames, the config says {h}x{w}",
                    path.display(),
                    r.meta().height,
                    r.meta().width
                )));
            }
            let rois = match &opts.rois {
                Some(p) => read_roi_file(p, h, w)?,
                None => r.rois()?.ok_or_else(|| {
                    DaemonError::Setup(format!("{}: no ROI masks; give --rois", path.display()))
                })?,
            };
            let mut wr = SessionWriter::create_unpublished(&out, cfg, &info, opts.overwrite)?;
            copy_context(r, &mut wr, &rois)?;
            let m = r.meta();
            if (m.stimulus_height, m.stimulus_width, m.frames_per_clip)
                == (clips.height, clips.width, clips.frames_per_clip)
            {
                for i in 0..m.n_clips {
                    clips.push(&r.clip(i)?);
                }
            }
            wr.begin_traces(rois.len())?;
            sink.writer = Some(wr);
            let masks = if opts.rois.is_some() {
                MaskSource::Given
            } else {
                MaskSource::SessionRois
            };
            sink.scorer = GroundTruthScorer::open(&path, &rois)?.map(|s| s.with_masks(masks));
            (
                Box::new(Limited {
                    inner: src,
                    left: total,
                }) as Box<dyn FrameSource>,
                Some(rois),
                "replay".into(),
            )
        }
        SourceKind::Stream => {
            let src = StreamSource::bind(StreamOptions::from_config(&cfg.imaging))
                .map_err(AcquireError::from)?;
            tracing::info!(listen = %src.local_addr(), "waiting for frames (docs/frame-protocol.md)");
            stream_handle = Some(src.handle());
            let (etx, erx) = event_channel(0);
            sink.events = Some(erx);
            let rois = match &opts.rois {
                Some(p) => Some(read_roi_file(p, h, w)?),
                None => {
                    tracing::warn!("no ROI masks given (--rois): recording only, no extraction");
                    None
                }
            };
            let mut wr = SessionWriter::create_unpublished(&out, cfg, &info, opts.overwrite)?;
            if let Some(r) = &rois {
                wr.write_rois(r)?;
                wr.begin_traces(r.len())?;
            }
            let clock = attach::stream_clock(src.handle());
            // With a presenter, the rig runs its trials on it and each frame's context is
            // rebuilt from its flips (and the sync board's photodiode and encoder).
            let live = match presenter::requested(cfg, opts.present.as_deref()) {
                Some(_) => {
                    let library = crate::sim::stimulus::ClipLibrary::generate(
                        cfg,
                        cfg.sim.library_seed(seed),
                    );
                    let lib = file_library(cfg, &library, &mut wr, &clips, seed)?;
                    plan_report = lib.plan_report.clone();
                    let mut all: Vec<Vec<u8>> = library.clips;
                    all.extend(lib.plan_clips.iter().map(|pc| pc.frames.clone()));
                    let (cmd_tx, cmd_rx) = crossbeam::channel::unbounded();
                    scheduler = Some(scheduler_for(cfg, all.len(), &lib, cmd_tx, &clips, seed)?);
                    let context = LiveContext::new(
                        cfg.display.refresh_hz,
                        cfg.display.lag_ms / 1000.0,
                        cfg.sync.encoder_cm_per_count,
                    );
                    live_context = Some(context.clone());
                    Some(presenter::LiveTrials {
                        shuffled: all.len() - lib.plan_clips.len(),
                        library: all,
                        commands: cmd_rx,
                        context,
                        paused: paused.clone(),
                        seed,
                    })
                }
                None => None,
            };
            sync_wiring =
                sync::wire_port(cfg, clock.clone(), etx.tx.clone(), live_context.clone())?;
            presenter_wiring =
                presenter::wire_live(cfg, opts.present.as_deref(), clock.0, etx.tx.clone(), live)?;
            sink.writer = Some(wr);
            let src = Limited {
                inner: src,
                left: total,
            };
            let src: Box<dyn FrameSource> = match &live_context {
                Some(c) => Box::new(LiveContextSource::new(src, c.clone(), etx.tx)),
                None => Box::new(src),
            };
            (src, rois, "stream".into())
        }
    };

    let addr = opts.control.then_some(server.addr);

    let deconvolve = cfg.extract.deconvolve;
    let mut worker = None;
    let analysis = match rois {
        Some(r) => {
            let map_rois = feed.as_ref().map(|_| r.clone());
            let mut stage = closed_loop_for(
                cfg,
                opts,
                live_context.is_some() || source_name != "stream",
                &r,
                &clips,
                &mut sink,
            )?;
            stage.scheduler = scheduler.take();
            stage.feed = feed.clone();
            // The in-silico worker needs a twin to search and a scheduler to show its finds.
            if let (Some(tw), true) = (stage.twin.as_ref(), stage.scheduler.is_some()) {
                let (tx, rx) = crossbeam::channel::unbounded();
                stage.plan_updates = Some(rx);
                let _ = state.search.set(SearchTargets::Twin {
                    model: tw.model().display().to_string(),
                    roi_ids: tw.model_roi_ids().to_vec(),
                });
                worker = Some(Worker::spawn(
                    WorkerConfig {
                        twin: tw.model().to_path_buf(),
                        backend: cfg.twin.backend,
                        budget: opts.insilico_budget.max(1),
                        time_limit_s: 120.0,
                        seed,
                        clip_s: cfg.stimulus.clip_seconds,
                        deg_per_px: cfg.display.width_deg() / cfg.stimulus.width as f64,
                        top: cfg.stimulus.plan_top,
                        controls: cfg.stimulus.plan_controls,
                        frames_per_clip: cfg.stimulus.frames_per_clip(),
                        height: cfg.stimulus.height,
                        width: cfg.stimulus.width,
                    },
                    state.clone(),
                    tx,
                ));
            }
            let mut a = analysis_for(cfg, h, w, r, deconvolve, Arc::new(Mutex::new(0.0)));
            a.closed_loop = Some(stage);
            if let (Some(feed), Some(rois)) = (feed.clone(), map_rois) {
                // The dashboard's map: the mean of the frames extraction builds its reference
                // from, computed on the analysis thread once, at start-up.
                let build = a.build;
                a.build = Box::new(move |frames: &[Vec<u16>]| {
                    feed.set_map(field_map(frames, h, w, rois));
                    build(frames)
                });
            }
            Some(a)
        }
        None => {
            if scheduler.is_some() && cfg.stimulus.order != TrialOrder::Shuffle {
                tracing::warn!(
                    "no analysis (no ROI masks), so no scheduler: only the trials queued at the \
                     start follow stimulus.order, then the shuffled library"
                );
            }
            None
        }
    };
    // Without the worker, an objective set through the endpoint would do nothing: say so.
    let _ = state.search.set(SearchTargets::Off(
        "this session runs no in-silico search, so it takes no objective (a search needs the twin \
         in the loop, ROI masks and a trial schedule)"
            .into(),
    ));
    let dashboard_url = match (dashboard, feed, server.runtime()) {
        (Some(bound), Some(feed), Some(rt)) => {
            if let Some(p) = &plan_report {
                let frame_len = cfg.stimulus.height * cfg.stimulus.width;
                feed.set_plan(
                    p.clips
                        .iter()
                        .chain(&p.controls)
                        .map(|(id, pc)| pc.feed_entry(*id, frame_len))
                        .collect(),
                );
            }
            let mut health: Vec<(&'static str, crate::dashboard::Health)> = Vec::new();
            if let Some(f) = sync_wiring.watch() {
                health.push(("sync", f));
            }
            if let Some(f) = presenter_wiring.watch() {
                health.push(("presenter", f));
            }
            if let Some(c) = live_context.clone() {
                health.push((
                    "live_context",
                    Box::new(move || serde_json::to_value(c.report()).unwrap_or_default()),
                ));
            }
            let url = bound.url();
            bound.serve(
                &rt,
                crate::dashboard::Sources {
                    control: state.clone(),
                    feed,
                    frame_rate_hz: fr,
                    rate_hz: cfg.dashboard.rate_hz,
                    traces_s: cfg.dashboard.traces_s,
                    stimulus_shape: (cfg.stimulus.height, cfg.stimulus.width),
                    health,
                },
            )?;
            Some(url)
        }
        _ => None,
    };
    // Every start-up step that can fail is behind us: the session appears under its name.
    if let Some(w) = sink.writer.as_mut() {
        w.publish()?;
    }
    on_start(&Started {
        out: &out,
        control: addr,
        dashboard: dashboard_url.clone(),
    });
    // A live stream can sit waiting for the next frame: a stop request must reach it there.
    let done = Arc::new(AtomicBool::new(false));
    if let Some(handle) = stream_handle {
        let (stop, done) = (control.stop.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if stop.load(Ordering::Relaxed) {
                    handle.stop();
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
    }
    let popts = PipelineOptions {
        ring_slots: 32,
        // At full speed nothing is real-time, so analysis keeps every frame (and a replay of the
        // file reproduces the traces); paced runs behave like a live rig and may skip.
        lossless_analysis: opts.speed.is_none(),
        frame_rate_hz: fr,
    };
    let source = attach::with_companions(
        source,
        [sync_wiring.companion(), presenter_wiring.companion()],
    );
    let summary = run(source, analysis, &mut sink, popts, &control, progress);
    done.store(true, Ordering::Relaxed);
    let insilico = worker.map(|w| w.finish());
    let summary = summary?;
    let sync = sync_wiring.finish(sink.writer.as_mut())?;
    let presenter = presenter_wiring.finish(sink.writer.as_mut())?;
    if let Some(mut wr) = sink.writer.take() {
        summary.record_latency(&mut wr)?;
        if let Some(ins) = insilico.as_ref().filter(|i| !i.refreshes.is_empty()) {
            wr.set_root_attr(
                attr::INSILICO_REFRESHES,
                &serde_json::to_string(ins).unwrap_or_default(),
            )?;
        }
        if let Some(t) = summary.closed_loop.as_ref().and_then(|l| l.twin.as_ref()) {
            let corr: Vec<f32> = t
                .fidelity
                .session_corr
                .iter()
                .map(|c| c.map_or(f32::NAN, |v| v as f32))
                .collect();
            wr.end_twin(&TwinEnd {
                session_corr: &corr,
                median_session_corr: t.fidelity.median_session_corr,
                reference_fidelity: t.fidelity.reference_population,
                alarms: t.fidelity.alarms,
                frames_skipped: summary.closed_loop.as_ref().map_or(0, |l| l.frames_skipped),
            })?;
        }
        wr.finish(&utc_now_iso())?;
    }
    drop(server);
    let stopped_by = if state.signalled.load(Ordering::Relaxed) {
        "signal"
    } else if control.stop.load(Ordering::Relaxed) {
        "control"
    } else if total.is_some() {
        "duration"
    } else {
        "end of source"
    };
    Ok(RunReport {
        session: out.display().to_string(),
        source: source_name,
        speed: opts.speed,
        stopped_by: stopped_by.into(),
        control_addr: addr.map(|a| a.to_string()),
        dashboard: dashboard_url,
        plan: plan_report,
        insilico,
        pipeline: summary,
        sync,
        presenter,
        live_context: live_context.map(|c| c.report()),
    })
}

/// What the dashboard draws the field of view with: the mean of `frames` and the ROI masks.
fn field_map(
    frames: &[Vec<u16>],
    h: usize,
    w: usize,
    rois: RoiTable,
) -> crate::live::feed::FieldMap {
    let mut mean = vec![0f32; h * w];
    for f in frames {
        for (m, &v) in mean.iter_mut().zip(f) {
            *m += f32::from(v);
        }
    }
    let n = frames.len().max(1) as f32;
    mean.iter_mut().for_each(|m| *m /= n);
    crate::live::feed::FieldMap {
        height: h,
        width: w,
        mean,
        rois,
    }
}

/// The plan named by `stimulus.plan`, as clips of the library.
fn load_plan(cfg: &RigConfig, seed: u64) -> Result<(PlanReport, Vec<PlanClip>), DaemonError> {
    let s = &cfg.stimulus;
    let path = s.plan.clone().ok_or_else(|| {
        DaemonError::Setup(
            "stimulus.order = \"plan\" needs stimulus.plan (or rig run --plan PLAN.h5)".into(),
        )
    })?;
    let plan = Plan::read(&path).map_err(|e| DaemonError::Setup(e.to_string()))?;
    let pcs = plan_clips(
        &plan,
        &path,
        s.plan_top,
        (s.frames_per_clip(), s.height, s.width),
        s.plan_controls,
        seed ^ CONTROL_SEED,
    )
    .map_err(DaemonError::Setup)?;
    let controls = pcs.iter().filter(|c| c.control_of.is_some()).count();
    tracing::info!(
        plan = %path.display(),
        stimuli = pcs.len() - controls,
        controls,
        "plan stimuli and their controls added to the library"
    );
    Ok((
        PlanReport {
            path: path.display().to_string(),
            targets: plan.targets.clone(),
            objective: plan.objective.clone(),
            clips: Vec::new(),
            controls: Vec::new(),
        },
        pcs,
    ))
}

/// The session's stimulus library as filed: every clip of `library`, then the plan's stimuli
/// and then their controls (`stimulus.order = "plan"`), in the recorder's `stimulus/clips` and
/// the twin's clip store, in that order (so a clip has one id everywhere).
struct FiledLibrary {
    /// Clips random trials draw from: the natural clips (the comparison a plan is judged
    /// against), or all of them when the library has none.
    random_ids: Vec<i32>,
    plan_ids: Vec<i32>,
    control_ids: Vec<i32>,
    /// Plan stimuli then controls, in filing order.
    plan_clips: Vec<PlanClip>,
    plan_report: Option<PlanReport>,
}

fn file_library(
    cfg: &RigConfig,
    library: &crate::sim::stimulus::ClipLibrary,
    wr: &mut SessionWriter,
    clips: &ClipStore,
    seed: u64,
) -> Result<FiledLibrary, DaemonError> {
    for (clip, p) in library.clips.iter().zip(&library.params) {
        wr.append_clip(clip, *p)?;
        clips.push(clip);
    }
    let natural: Vec<i32> = (0..library.len() as i32)
        .filter(|&i| library.params[i as usize].kind == 0)
        .collect();
    let random_ids = if natural.is_empty() {
        (0..library.len() as i32).collect()
    } else {
        natural
    };
    let mut filed = FiledLibrary {
        random_ids,
        plan_ids: Vec::new(),
        control_ids: Vec::new(),
        plan_clips: Vec::new(),
        plan_report: None,
    };
    if cfg.stimulus.order == TrialOrder::Plan {
        let (report, pcs) = load_plan(cfg, seed)?;
        let (mut stimuli, mut controls) = (Vec::new(), Vec::new());
        for pc in &pcs {
            let id = wr.append_clip(&pc.frames, pc.clip_params)?;
            clips.push(&pc.frames);
            if pc.control_of.is_some() {
                filed.control_ids.push(id);
                controls.push((id, pc.clone()));
            } else {
                filed.plan_ids.push(id);
                stimuli.push((id, pc.clone()));
            }
        }
        let report = PlanReport {
            clips: stimuli,
            controls,
            ..report
        };
        wr.set_root_attr(
            attr::PLAN,
            &serde_json::to_string(&report).unwrap_or_default(),
        )?;
        filed.plan_report = Some(report);
        filed.plan_clips = pcs;
    }
    Ok(filed)
}

/// The trial schedule of a run (`stimulus.order`) over a library of `n_library` clips. The first
/// trials are queued now, so the run's first trials follow the order too.
fn scheduler_for(
    cfg: &RigConfig,
    n_library: usize,
    lib: &FiledLibrary,
    tx: crossbeam::channel::Sender<DisplayCommand>,
    clips: &ClipStore,
    seed: u64,
) -> Result<Scheduler, DaemonError> {
    let s = &cfg.stimulus;
    let order = match s.order {
        TrialOrder::Shuffle => Order::Shuffle,
        TrialOrder::List => {
            if let Some(bad) = s.clip_list.iter().find(|&&c| c as usize >= n_library) {
                return Err(DaemonError::Setup(format!(
                    "stimulus.clip_list names clip {bad}, the library has {n_library} clips \
                     (0..{})",
                    n_library.saturating_sub(1)
                )));
            }
            Order::List(s.clip_list.clone())
        }
        TrialOrder::Plan => Order::Plan {
            plan: lib.plan_ids.clone(),
            controls: lib.control_ids.clone(),
            library: lib.random_ids.clone(),
            fraction: s.plan_fraction,
            control_fraction: s.control_fraction,
        },
    };
    let mut sch = Scheduler::new(
        order,
        tx,
        clips.clone(),
        s.clip_seconds + s.gray_seconds,
        seed,
    )
    .with_plan_defaults(lib.random_ids.clone(), s.plan_fraction, s.control_fraction);
    sch.start();
    Ok(sch)
}

/// The closed-loop stage of a run: the twin (when `twin.in_loop` and the source knows what was
/// on screen), the comparison and the scheduling decision. Starts the `twin/` group of the
/// session when the twin runs.
fn closed_loop_for(
    cfg: &RigConfig,
    opts: &RunOptions,
    knows_screen: bool,
    rois: &RoiTable,
    clips: &ClipStore,
    sink: &mut Sink,
) -> Result<LoopStage, DaemonError> {
    let mut stage = LoopStage {
        twin: None,
        scheduler: None,
        plan_updates: None,
        delay: Duration::from_secs_f64(cfg.twin.step_delay_ms / 1000.0),
        feed: None,
        feed_window: 0,
    };
    if opts.no_twin || !cfg.twin.in_loop {
        return Ok(stage);
    }
    if !knows_screen {
        // The frame stream carries no stimulus; without the presenter's flips the twin would be
        // stepped on a guess.
        tracing::warn!(
            "twin off: without a presenter (display.presenter / --present) a live rig does not \
             know what was on screen"
        );
        return Ok(stage);
    }
    let path = opts.twin.clone().unwrap_or_else(|| cfg.twin.onnx.clone());
    if !path.exists() {
        return Err(missing_twin(&path));
    }
    let mut twin = Twin::load(&path, cfg.twin.backend)?;
    tracing::info!(model = %path.display(), load_s = %format_args!("{:.3}", twin.load_seconds()), "twin loaded");
    let fr = cfg.imaging.frame_rate_hz;
    warn_if_twin_is_slow(&mut twin, fr, stage.delay)?;
    if let Some(why) = twin.contract().other_mouse(&cfg.rig.mouse_id) {
        tracing::warn!("{}: {why} (rig.mouse_id)", path.display());
    }
    let compare = CompareConfig {
        window: (cfg.twin.compare_window_s * fr).round().max(2.0) as usize,
        alarm_fraction: cfg.twin.alarm_fraction,
        alarm_frames: (cfg.twin.alarm_seconds * fr).round().max(1.0) as usize,
    };
    let tw = TwinInLoop::new(twin, &rois.ids, clips.clone(), compare)?;
    if let Some(w) = sink.writer.as_mut() {
        w.begin_twin(&path.display().to_string(), &tw.device(), tw.roi_ids())?;
    }
    stage.twin = Some(tw);
    // The dashboard's shuffled baseline is taken over the comparator's window.
    stage.feed_window = compare.window;
    Ok(stage)
}

/// Times a few steps of the twin before the session starts and says, once, when a step takes
/// longer than an imaging frame: the loop will then skip frames (every frame is still recorded
/// and extracted, and the skipped ones are counted), and the operator should know the ways out
/// before the mouse is on the rig.
fn warn_if_twin_is_slow(
    twin: &mut Twin,
    frame_rate_hz: f64,
    delay: Duration,
) -> Result<(), DaemonError> {
    let times = twin.time_steps(6, 2)?;
    // The test knob `twin.step_delay_ms` stands for a slow twin, so it counts here too.
    let step = times[times.len() / 2] + delay.as_secs_f64();
    let period = 1.0 / frame_rate_hz;
    if step > period {
        tracing::warn!(
            "the twin's step takes {:.1} ms, longer than the {:.1} ms imaging frame ({} neurons on {}): \
             every frame is still recorded and extracted, but the twin will skip frames (counted as \
             loop_skipped, twin_step p99 in the summary). To keep up: {}",
            step * 1e3,
            period * 1e3,
            twin.contract().n_neurons,
            twin.device(),
            crate::twin::runtime::SLOW_TWIN_ADVICE
        );
    }
    Ok(())
}

fn missing_twin(path: &std::path::Path) -> DaemonError {
    DaemonError::Setup(format!(
        "twin {} (twin.onnx) does not exist; set twin.in_loop = false or pass --no-twin to run \
         without the twin",
        path.display()
    ))
}

/// Stops a source after `left` frames (`--minutes` on a replay).
struct Limited<S> {
    inner: S,
    left: Option<u64>,
}

impl<S: FrameSource> FrameSource for Limited<S> {
    fn height(&self) -> usize {
        self.inner.height()
    }
    fn width(&self) -> usize {
        self.inner.width()
    }
    fn len_hint(&self) -> Option<u64> {
        match (self.inner.len_hint(), self.left) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, None) => a,
            (None, b) => b,
        }
    }
    fn next_frame(
        &mut self,
        out: &mut [u16],
    ) -> Result<Option<crate::acquire::FrameInfo>, AcquireError> {
        if let Some(l) = self.left.as_mut() {
            if *l == 0 {
                return Ok(None);
            }
            *l -= 1;
        }
        self.inner.next_frame(out)
    }
}
