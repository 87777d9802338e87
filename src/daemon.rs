//! `rig run`: wires the threads of a session. Acquisition (simulated microscope in the loop, or a
//! replayed file) feeds the pipeline (rings, extraction, recorder); a `tokio` runtime serves the
//! status/control endpoint and turns SIGINT/SIGTERM into a clean stop: the frame in hand is
//! finished, everything is flushed and the file is closed with its summary.

pub mod attach;
pub mod presenter;
pub mod sync;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use thiserror::Error;

use crate::acquire::stream::{StreamOptions, StreamSource};
use crate::acquire::{AcquireError, FrameSource, ReplaySource, SimSource};
use crate::config::{FrameSource as SourceKind, RigConfig};
use crate::control::{self, ControlError, ControlState};
use crate::pipeline::events::event_channel;
use crate::pipeline::replay::{analysis_for, copy_context};
use crate::pipeline::score::GroundTruthScorer;
use crate::pipeline::{run, PipelineError, PipelineOptions, PipelineSummary, RunControl, Sink};
use crate::session::{read_roi_file, RoiTable, SessionError, SessionInfo, SessionWriter};
use crate::sim::{utc_now_iso, SimRig};

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
    /// Override `display.presenter` (`none`, an address, `spawn`, `spawn-headless`).
    pub present: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub session: String,
    pub source: String,
    pub speed: Option<f64>,
    pub stopped_by: String,
    pub control_addr: Option<String>,
    #[serde(flatten)]
    pub pipeline: PipelineSummary,
    /// The sync board's link (`None` without a board).
    pub sync: Option<sync::SyncReport>,
    /// The stimulus presenter (`None` without one).
    pub presenter: Option<presenter::PresenterReport>,
}

fn default_out(cfg: &RigConfig) -> PathBuf {
    let stamp = utc_now_iso().replace([':', '-'], "");
    cfg.storage
        .out_dir
        .join(format!("{}-{}.h5", cfg.rig.mouse_id, stamp))
}

/// Runs a session; `on_start(control_addr)` is called once the endpoint listens, `progress(frames)`
/// as frames arrive.
pub fn run_session(
    cfg: &RigConfig,
    opts: &RunOptions,
    on_start: &dyn Fn(Option<std::net::SocketAddr>, &std::path::Path),
    progress: &(dyn Fn(u64) + Sync),
) -> Result<RunReport, DaemonError> {
    let out = opts.out.clone().unwrap_or_else(|| default_out(cfg));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| DaemonError::Setup(format!("cannot create {}: {e}", dir.display())))?;
    }
    let (h, w) = (cfg.imaging.height, cfg.imaging.width);
    let fr = cfg.imaging.frame_rate_hz;
    let total = opts.minutes.map(|m| (m * 60.0 * fr).round() as u64);
    let seed = opts.seed.unwrap_or(cfg.sim.seed);
    let info = SessionInfo {
        mouse_id: cfg.rig.mouse_id.clone(),
        session_id: out
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        start_time: utc_now_iso(),
    };
    let control = RunControl::default();
    let paused = Arc::new(AtomicBool::new(false));
    let mut sink = Sink::default();

    let mut stream_handle = None;
    let mut sync_wiring = sync::SyncWiring::default();
    let mut presenter_wiring = presenter::PresenterWiring::default();
    let (source, rois, source_name): (Box<dyn FrameSource>, Option<RoiTable>, String) = match cfg
        .imaging
        .source
    {
        SourceKind::Sim => {
            let rig = SimRig::new(cfg, seed);
            let mut wr = SessionWriter::create(&out, cfg, &info)?;
            for (clip, p) in rig.library.clips.iter().zip(&rig.library.params) {
                wr.append_clip(clip, *p)?;
            }
            let rois = match &opts.rois {
                Some(p) => read_roi_file(p, h, w)?,
                None => rig.microscope.footprints.clone(),
            };
            wr.write_rois(&rois)?;
            let neuron_roi = rig.microscope.footprints.ids.clone();
            wr.begin_ground_truth(rig.mouse.len(), &rig.mouse.table(&neuron_roi))?;
            wr.begin_traces(rois.len())?;
            let (etx, erx) = event_channel(rig.mouse.len());
            let presenter_tx = etx.tx.clone();
            sink.writer = Some(wr);
            sink.events = Some(erx);
            sink.scorer = Some(GroundTruthScorer::live(&rois.ids, &neuron_roi));
            let mut src = SimSource::new(rig, h, w, fr, total, opts.speed, Some(etx));
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
            let mut wr = SessionWriter::create(&out, cfg, &info)?;
            copy_context(r, &mut wr, &rois)?;
            wr.begin_traces(rois.len())?;
            sink.writer = Some(wr);
            sink.scorer = GroundTruthScorer::open(&path, &rois.ids)?;
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
            sync_wiring = sync::wire_port(cfg, attach::stream_clock(src.handle()), etx.tx.clone())?;
            let clock = attach::stream_clock(src.handle()).0;
            presenter_wiring = presenter::wire_live(cfg, opts.present.as_deref(), clock, etx.tx)?;
            let rois = match &opts.rois {
                Some(p) => Some(read_roi_file(p, h, w)?),
                None => {
                    tracing::warn!("no ROI masks given (--rois): recording only, no extraction");
                    None
                }
            };
            let mut wr = SessionWriter::create(&out, cfg, &info)?;
            if let Some(r) = &rois {
                wr.write_rois(r)?;
                wr.begin_traces(r.len())?;
            }
            sink.writer = Some(wr);
            (
                Box::new(Limited {
                    inner: src,
                    left: total,
                }) as Box<dyn FrameSource>,
                rois,
                "stream".into(),
            )
        }
    };

    let state = Arc::new(ControlState {
        stop: control.stop.clone(),
        paused: paused.clone(),
        live: control.live.clone(),
        started: Instant::now(),
        session: out.display().to_string(),
        objective: Mutex::new(None),
        signalled: AtomicBool::new(false),
    });
    // The endpoint also owns the signal handlers, so it runs even when no client is expected.
    let listen = if opts.control {
        opts.control_listen
            .clone()
            .unwrap_or_else(|| cfg.control.listen.clone())
    } else {
        "127.0.0.1:0".to_string()
    };
    let server = control::start(&listen, state.clone())?;
    let addr = opts.control.then_some(server.addr);
    on_start(addr, &out);

    let deconvolve = cfg.extract.deconvolve;
    let analysis = rois.map(|r| analysis_for(cfg, h, w, r, deconvolve, Arc::new(Mutex::new(0.0))));
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
    let summary = summary?;
    let sync = sync_wiring.finish(sink.writer.as_mut())?;
    let presenter = presenter_wiring.finish(sink.writer.as_mut())?;
    if let Some(mut wr) = sink.writer.take() {
        summary.record_latency(&mut wr)?;
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
        pipeline: summary,
        sync,
        presenter,
    })
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
