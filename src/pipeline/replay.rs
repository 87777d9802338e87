//! `rig replay`: a recorded session through the same rings and extraction as a live one.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use thiserror::Error;

use super::score::{GroundTruthScorer, MaskSource};
use super::{run, Analysis, PipelineError, PipelineOptions, PipelineSummary, RunControl, Sink};
use crate::acquire::{AcquireError, FrameSource, ReplaySource};
use crate::config::RigConfig;
use crate::extract::{
    align_masks, build_reference, BaselineConfig, DeconvConfig, ExtractError, Extractor,
    ExtractorConfig, MotionOptions, NeuropilConfig, RoiMask,
};
use crate::session::layout::attr;
use crate::session::{
    read_roi_file, RoiTable, SessionError, SessionInfo, SessionReader, SessionWriter,
};

#[derive(Debug, Error)]
pub enum ReplayError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Acquire(#[from] AcquireError),
    #[error("extraction setup: {0}")]
    Extract(#[from] ExtractError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("{0}: the session has no ROI masks (rois/*); give a mask file with --rois")]
    NoRois(PathBuf),
    #[error("--out {0} is the session being replayed; choose another file")]
    SameFile(PathBuf),
    #[error(transparent)]
    Budget(#[from] crate::budget::BudgetError),
    #[error("interrupted after {frames_in} of {total} frames; {kept}")]
    Interrupted {
        frames_in: u64,
        total: u64,
        kept: String,
    },
}

#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Output session (frames re-recorded, context copied, traces added).
    pub out: Option<PathBuf>,
    /// `Some(speed)`: play at the recorded timing divided by `speed`; analysis may then skip.
    pub realtime_speed: Option<f64>,
    /// ROI masks from another file (the `rois/*` datasets of a session or a mask file).
    pub rois: Option<PathBuf>,
    /// Overrides the config's `extract.deconvolve`.
    pub deconvolve: Option<bool>,
    pub ring_slots: Option<usize>,
    /// Replace an existing `out` (never one another process has open).
    pub overwrite: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub session: String,
    pub out: Option<String>,
    pub height: usize,
    pub width: usize,
    pub rois: usize,
    pub reference_frames: usize,
    pub reference_s: f64,
    pub realtime: bool,
    #[serde(flatten)]
    pub pipeline: PipelineSummary,
}

/// The extractor a rig config asks for, with the given reference and masks.
pub fn extractor_for(
    cfg: &RigConfig,
    height: usize,
    width: usize,
    reference: &[f32],
    rois: &RoiTable,
    deconvolve: bool,
) -> Result<Extractor, ExtractError> {
    let e = &cfg.extract;
    let fr = cfg.imaging.frame_rate_hz as f32;
    let masks = roi_masks(rois);
    let max_shift = (e.max_shift_fraction * height.min(width) as f64).max(1.0) as f32;
    // Masks (a simulator's footprints, an offline segmentation) need not sit where this
    // session's reference does: find the offset once, at start-up.
    let align = align_masks(reference, height, width, &masks, max_shift)?;
    let offset = if align.peak > 0.05 {
        tracing::info!(
            dy = %format_args!("{:.2}", align.dy),
            dx = %format_args!("{:.2}", align.dx),
            peak = %format_args!("{:.3}", align.peak),
            "ROI masks aligned to the reference"
        );
        [align.dy, align.dx]
    } else {
        tracing::warn!(
            peak = %format_args!("{:.3}", align.peak),
            "ROI masks do not match the reference; using them unshifted"
        );
        [0.0, 0.0]
    };
    let conf = ExtractorConfig {
        height,
        width,
        motion: MotionOptions::new(max_shift),
        registered_frame: false,
        roi_offset_px: offset,
        neuropil: NeuropilConfig {
            coefficient: e.neuropil_coefficient as f32,
            inner_gap_px: e.neuropil_inner_gap_px as f32,
            outer_radius_px: e.neuropil_outer_radius_px as f32,
        },
        baseline: BaselineConfig::from_rate(
            fr,
            e.baseline_window_s as f32,
            e.baseline_sigma_frames as f32,
        ),
        deconv: deconvolve.then(|| {
            DeconvConfig::from_tau(
                e.indicator_tau_s as f32,
                fr,
                e.deconv_lambda as f32,
                e.deconv_lag_s as f32,
            )
        }),
    };
    let ex = Extractor::new(conf, reference, &masks)?;
    // One crowded ROI costs only its own neuropil estimate; say once which ROIs that is.
    let bare = ex.rois_without_neuropil();
    if !bare.is_empty() {
        tracing::warn!(
            "{} of {} ROIs have no neuropil pixels between extract.neuropil_inner_gap_px = {} and \
             extract.neuropil_outer_radius_px = {} (other ROIs fill the annulus): their neuropil \
             coefficient is 0 (corrected = raw): ROI {}",
            bare.len(),
            ex.n_rois(),
            e.neuropil_inner_gap_px,
            e.neuropil_outer_radius_px,
            bare.iter()
                .map(|id| id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(ex)
}

/// The analysis stage for a rig config: the reference is built from the first
/// `extract.reference_frames` frames of the stream (timed into `reference_s`), then the extractor.
pub fn analysis_for(
    cfg: &RigConfig,
    height: usize,
    width: usize,
    rois: RoiTable,
    deconvolve: bool,
    reference_s: std::sync::Arc<std::sync::Mutex<f64>>,
) -> Analysis {
    let cfg = cfg.clone();
    Analysis {
        reference_frames: cfg.extract.reference_frames,
        n_rois: rois.len(),
        delay: std::time::Duration::from_secs_f64(cfg.extract.analysis_delay_ms / 1000.0),
        closed_loop: None,
        build: Box::new(move |frames: &[Vec<u16>]| {
            let t0 = Instant::now();
            let reference = build_reference(frames, height, width)?;
            if let Ok(mut r) = reference_s.lock() {
                *r = t0.elapsed().as_secs_f64();
            }
            extractor_for(&cfg, height, width, &reference, &rois, deconvolve)
        }),
    }
}

/// ROI table (CSR) as extraction masks.
pub fn roi_masks(t: &RoiTable) -> Vec<RoiMask> {
    (0..t.len())
        .map(|r| {
            let (px, w) = t.roi(r);
            RoiMask {
                id: t.ids[r],
                pixels: px.to_vec(),
                weights: w.to_vec(),
            }
        })
        .collect()
}

/// Copies what a session knows besides its frames (stimulus, behaviour, sync events, ROIs) into a
/// new session, so the replay's output is a complete session of its own.
pub fn copy_context(
    r: &SessionReader,
    w: &mut SessionWriter,
    rois: &RoiTable,
) -> Result<(), SessionError> {
    let params = r.clip_params()?;
    for (i, p) in params.iter().enumerate() {
        w.append_clip(&r.clip(i)?, *p)?;
    }
    let f = r.flips()?;
    for i in 0..f.time.len() {
        w.append_flip(f.time[i], f.clip[i], f.frame[i]);
    }
    let t = r.trials()?;
    for i in 0..t.start.len() {
        w.append_trial(t.start[i], t.end[i], t.clip[i]);
    }
    let b = r.behavior()?;
    for i in 0..b.time.len() {
        w.append_behavior(b.time[i], b.running_speed[i], b.pupil_diameter[i]);
    }
    let (ft, fc) = r.frame_clock()?;
    for (t, c) in ft.iter().zip(&fc) {
        w.append_frame_clock(*t, *c);
    }
    let (pt, pl) = r.photodiode()?;
    for (t, l) in pt.iter().zip(&pl) {
        w.append_photodiode(*t, *l);
    }
    let (et, ep) = r.encoder()?;
    for (t, p) in et.iter().zip(&ep) {
        w.append_encoder(*t, *p);
    }
    w.write_rois(rois)?;
    w.flush()
}

/// Replays `path`. `progress(frames_in, total)`.
pub fn replay(
    path: &Path,
    opts: &ReplayOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<ReplayReport, ReplayError> {
    crate::interrupt::install();
    let source = ReplaySource::open(path, opts.realtime_speed)?;
    let reader = source.reader();
    let meta = reader.meta().clone();
    let mut cfg = reader.config()?;
    let (h, w) = (meta.height, meta.width);
    // The frames are the file's, whatever its recorded config says; the budget is checked on
    // what this replay will allocate, before it does.
    (cfg.imaging.height, cfg.imaging.width) = (h, w);
    let mut sized = cfg.clone();
    sized.extract.reference_frames = cfg.extract.reference_frames.min(meta.n_frames.max(1));
    crate::budget::check(
        &sized,
        &path.display().to_string(),
        crate::budget::Workload::Replay,
        crate::budget::mem_available(),
    )?;
    let rois = match &opts.rois {
        Some(p) => read_roi_file(p, h, w)?,
        None => reader
            .rois()?
            .ok_or_else(|| ReplayError::NoRois(path.to_path_buf()))?,
    };
    if rois.is_empty() {
        return Err(ReplayError::NoRois(path.to_path_buf()));
    }

    let deconvolve = opts.deconvolve.unwrap_or(cfg.extract.deconvolve);
    let n_ref = cfg.extract.reference_frames.min(meta.n_frames);
    let reference_s = std::sync::Arc::new(std::sync::Mutex::new(0.0f64));
    let analysis = analysis_for(&cfg, h, w, rois.clone(), deconvolve, reference_s.clone());
    let mut sink = Sink::default();
    if let Some(out) = &opts.out {
        if out.exists() && std::fs::canonicalize(out).ok() == std::fs::canonicalize(path).ok() {
            return Err(ReplayError::SameFile(out.clone()));
        }
        let info = SessionInfo {
            mouse_id: meta.mouse_id.clone(),
            session_id: meta.session_id.clone(),
            start_time: meta.start_time.clone(),
        };
        let mut wr = SessionWriter::create_unpublished(out, &cfg, &info, opts.overwrite)?;
        wr.set_root_attr(attr::SOURCE_SESSION, &path.display().to_string())?;
        copy_context(reader, &mut wr, &rois)?;
        wr.begin_traces(rois.len())?;
        sink.writer = Some(wr);
    }
    let masks = if opts.rois.is_some() {
        MaskSource::Given
    } else {
        MaskSource::SessionRois
    };
    sink.scorer = GroundTruthScorer::open(path, &rois)?.map(|s| s.with_masks(masks));
    if let Some(w) = sink.writer.as_mut() {
        w.publish()?;
    }

    let total = meta.n_frames as u64;
    let popts = PipelineOptions {
        ring_slots: opts.ring_slots.unwrap_or(16),
        lossless_analysis: opts.realtime_speed.is_none(),
        frame_rate_hz: meta.frame_rate_hz,
    };
    let boxed: Box<dyn FrameSource> = Box::new(source);
    let control = RunControl::default();
    let forward = crate::interrupt::forward_to(control.stop.clone());
    let pipeline = run(boxed, Some(analysis), &mut sink, popts, &control, &|n| {
        progress(n, total)
    })?;
    drop(forward);
    let reference_s = *reference_s.lock().unwrap_or_else(|e| e.into_inner());
    if crate::interrupt::requested() {
        // What was replayed stays in `out`, flushed but not marked complete: a later reader must
        // not take a cut replay for the whole session.
        let kept = match sink.writer.take() {
            Some(mut wr) => {
                pipeline.record_latency(&mut wr)?;
                wr.flush()?;
                format!(
                    "{} keeps the {} frames replayed (marked incomplete)",
                    wr.path().display(),
                    pipeline.frames_recorded
                )
            }
            None => "nothing was written (no --out)".to_string(),
        };
        return Err(ReplayError::Interrupted {
            frames_in: pipeline.frames_in,
            total,
            kept,
        });
    }
    if let Some(mut wr) = sink.writer.take() {
        pipeline.record_latency(&mut wr)?;
        wr.finish(&crate::sim::utc_now_iso())?;
    }
    Ok(ReplayReport {
        session: path.display().to_string(),
        out: opts.out.as_ref().map(|p| p.display().to_string()),
        height: h,
        width: w,
        rois: rois.len(),
        reference_frames: n_ref,
        reference_s,
        realtime: opts.realtime_speed.is_some(),
        pipeline,
    })
}
