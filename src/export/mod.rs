//! `rig export nwb`: a session file as an NWB 2.x file (docs/nwb.md has the mapping).
//!
//! Architecture invariant: export reads sessions only through `session::SessionReader` and knows
//! nothing of the pipeline that wrote them. It writes through libhdf5 (`nwb` holds the NWB
//! building blocks); one file per part of the NWB file: `ophys` (microscope, imaging plane, the
//! movie, segmentation, traces), `behavior` (running, pupil, sync-board events), `stimulus`
//! (trials, clip library, display flips) and `twin` (the twin's predictions and fidelity).
//!
//! Everything that can be wrong with the input is checked before the output exists (`Inputs`), so
//! a refused session leaves nothing behind; the file is written under a temporary name and
//! published atomically (`outfile`). Large streams (the movie, [rows, ROIs] traces, the twin's
//! predictions) are copied in blocks of rows, so memory does not grow with the session's length.

mod behavior;
pub mod nwb;
mod ophys;
mod stimulus;
mod twin;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use thiserror::Error;

use crate::config::RigConfig;
use crate::outfile::{NewFile, OutputError};
use crate::session::layout::{self, Spec};
use crate::session::{RoiTable, SessionError, SessionMeta, SessionReader};
use nwb::{Storage, WriteError};

#[derive(Debug, Error)]
pub enum ExportError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Output(#[from] OutputError),
    /// The session's datasets disagree with each other (e.g. traces for more ROIs than it has).
    #[error("{path}: {message}")]
    Inconsistent { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: WriteError,
    },
    #[error("interrupted: {path} was not written")]
    Interrupted { path: PathBuf },
}

#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Leave the raw movie (TwoPhotonSeries) out.
    pub no_frames: bool,
    pub overwrite: bool,
    /// gzip level of the movie and the large 2-D streams (0 = uncompressed).
    pub gzip: u8,
    /// Frames per block read from the session and written to the NWB file.
    pub block_frames: usize,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            no_frames: false,
            overwrite: false,
            gzip: 1,
            block_frames: 64,
        }
    }
}

/// What `rig export nwb` wrote, for the caller's report and the tests.
#[derive(Debug, Clone, Serialize)]
pub struct ExportSummary {
    pub session: String,
    pub out: String,
    pub nwb_version: &'static str,
    pub identifier: String,
    pub session_start_time: String,
    pub frames: usize,
    pub frame_height: usize,
    pub frame_width: usize,
    pub frames_written: bool,
    pub rois: usize,
    pub trace_rows: usize,
    pub deconvolved_rows: usize,
    pub trials: usize,
    pub clips: usize,
    pub behavior_samples: usize,
    pub twin_neurons: usize,
    pub twin_rows: usize,
    pub twin_trials: usize,
    /// NWB objects written, by path.
    pub objects: Vec<String>,
    pub gzip: u8,
    /// How the movie was copied: `none` (left out), `decoded` (read and written frame by frame at
    /// `gzip`), or `deflated-chunks` (the session's compressed chunks copied as stored).
    pub movie_copy: &'static str,
    pub file_mb: f64,
    pub movie_mb: f64,
    pub movie_s: f64,
    /// Movie bytes (uncompressed) per second of copying them.
    pub movie_mb_per_s: f64,
    pub wall_s: f64,
    /// Peak resident memory of the process (VmHWM), MB.
    pub peak_rss_mb: f64,
}

/// The session as the export needs it, read and checked before the output exists.
pub(crate) struct Inputs {
    pub path: PathBuf,
    pub meta: SessionMeta,
    pub cfg: RigConfig,
    pub frame_times: Vec<f64>,
    pub rois: Option<RoiTable>,
    /// Rows of the parallel `traces/*` streams present in all of them.
    pub trace_rows: usize,
    /// Rows of `traces/spikes` whose frame has a timestamp.
    pub spike_rows: usize,
    pub twin: Option<twin::TwinInputs>,
}

impl Inputs {
    pub fn inconsistent(&self, message: String) -> ExportError {
        ExportError::Inconsistent {
            path: self.path.clone(),
            message,
        }
    }

    /// Rows of a 2-D stream present in every one of `specs` (a crashed writer may leave them
    /// uneven; the reader's rule), `None` when the first is absent.
    fn common_rows(r: &SessionReader, specs: &[Spec]) -> Result<Option<usize>, ExportError> {
        let mut rows: Option<usize> = None;
        for (i, s) in specs.iter().enumerate() {
            match r.shape_of(*s)? {
                Some(shape) => rows = Some(rows.map_or(shape[0], |n| n.min(shape[0]))),
                None if i == 0 => return Ok(None),
                None => {
                    return Err(SessionError::MissingDataset {
                        path: r.path().to_path_buf(),
                        dataset: s.path.into(),
                    }
                    .into())
                }
            }
        }
        Ok(rows)
    }

    pub fn read(r: &SessionReader) -> Result<Inputs, ExportError> {
        let path = r.path().to_path_buf();
        let meta = r.meta().clone();
        let cfg = r.config()?;
        let frame_times = r.frame_times()?;
        let rois = r.rois()?;
        let n_rois = rois.as_ref().map_or(0, |t| t.len());
        let mut inputs = Inputs {
            path,
            meta,
            cfg,
            frame_times,
            rois,
            trace_rows: 0,
            spike_rows: 0,
            twin: None,
        };
        let trace_specs = [
            layout::TRACE_DFF,
            layout::TRACE_FRAME,
            layout::TRACE_TIMES,
            layout::TRACE_SHIFT,
            layout::TRACE_RAW,
            layout::TRACE_NEUROPIL,
            layout::TRACE_CORRECTED,
            layout::TRACE_F0,
        ];
        if let Some(rows) = Self::common_rows(r, &trace_specs)? {
            for s in [
                layout::TRACE_DFF,
                layout::TRACE_RAW,
                layout::TRACE_NEUROPIL,
                layout::TRACE_CORRECTED,
                layout::TRACE_F0,
                layout::SPIKES,
            ] {
                let cols = r.shape_of(s)?.map_or(n_rois, |sh| sh[1]);
                if cols != n_rois {
                    return Err(inputs.inconsistent(format!(
                        "`{}` has {cols} columns but rois/ids has {n_rois} ROIs",
                        s.path
                    )));
                }
            }
            inputs.trace_rows = rows;
            let frames: Vec<u64> = r.optional_vec(layout::SPIKE_FRAME)?.unwrap_or_default();
            let spike_rows =
                Self::common_rows(r, &[layout::SPIKES, layout::SPIKE_FRAME])?.unwrap_or(0);
            let n = inputs.frame_times.len() as u64;
            // Rows arrive in frame order; a crashed writer's last rows may name frames whose
            // timestamp never reached the disk, and those have no time to export.
            inputs.spike_rows = frames[..spike_rows.min(frames.len())]
                .iter()
                .take_while(|&&f| f < n)
                .count();
            let dff_times: Vec<f64> = r.rows(layout::TRACE_TIMES, 0, rows)?;
            if dff_times
                .windows(2)
                .any(|w| w[1] <= w[0] || !w[1].is_finite())
            {
                return Err(inputs
                    .inconsistent("`traces/timestamps` is not strictly increasing".to_string()));
            }
        }
        if inputs.frame_times.windows(2).any(|w| w[1] <= w[0]) {
            return Err(
                inputs.inconsistent("`imaging/timestamps` is not strictly increasing".to_string())
            );
        }
        inputs.twin = twin::TwinInputs::read(r, &inputs)?;
        Ok(inputs)
    }
}

/// Exports `session` to `out`; `progress(done, total)` follows the movie's frames.
pub fn export_nwb(
    session: &Path,
    out: &Path,
    opts: &ExportOptions,
    progress: impl Fn(u64, u64),
) -> Result<ExportSummary, ExportError> {
    let t0 = Instant::now();
    // One Ctrl-C stops the export at the next block and removes the partial file.
    crate::interrupt::install();
    let mut claim = NewFile::claim(out, opts.overwrite)?;
    let reader = SessionReader::open(session)?;
    let inputs = Inputs::read(&reader)?;
    // Stimulus and behaviour are read here too, so that a bad one is refused before the file.
    let stim = stimulus::StimulusInputs::read(&reader, &inputs)?;
    let beh = behavior::BehaviorInputs::read(&reader)?;
    warn_short(&inputs, opts);

    let write_err = |source: WriteError| ExportError::Write {
        path: out.to_path_buf(),
        source,
    };
    let file = hdf5::File::create_excl(claim.tmp_path()).map_err(|e| {
        write_err(WriteError {
            location: "/".into(),
            message: e.to_string(),
        })
    })?;
    let storage = Storage { gzip: opts.gzip };
    let mut w = Writer {
        file: &file,
        storage,
        objects: Vec::new(),
    };
    let identifier = nwb::uuid4();
    let start_time = nwb_time(&inputs.meta.start_time);
    root(&w, &inputs, &identifier, &start_time).map_err(write_err)?;
    let mut movie = ophys::Movie::default();
    ophys::write_general(&mut w, &inputs).map_err(write_err)?;
    if !opts.no_frames && inputs.meta.n_frames > 0 {
        movie = ophys::write_movie(&mut w, &reader, &inputs, opts.block_frames, &progress)
            .map_err(|e| match e {
                ophys::MovieError::Write(e) => write_err(e),
                ophys::MovieError::Session(e) => ExportError::Session(e),
                ophys::MovieError::Interrupted => ExportError::Interrupted {
                    path: out.to_path_buf(),
                },
            })?;
    }
    let block_rows = 4096;
    ophys::write_processing(&mut w, &reader, &inputs, block_rows).map_err(|e| e.at(out))?;
    behavior::write(&mut w, &beh).map_err(write_err)?;
    stimulus::write(&mut w, &reader, &inputs, &stim).map_err(|e| e.at(out))?;
    if let Some(t) = &inputs.twin {
        twin::write(&mut w, &reader, &inputs, t, block_rows).map_err(|e| e.at(out))?;
    }
    let objects = std::mem::take(&mut w.objects);
    file.flush().map_err(nwb::at("/")).map_err(write_err)?;
    file.close().map_err(nwb::at("/")).map_err(write_err)?;
    if crate::interrupt::requested() {
        return Err(ExportError::Interrupted {
            path: out.to_path_buf(),
        });
    }
    claim.publish()?;
    let file_mb = std::fs::metadata(out).map_or(0.0, |m| m.len() as f64 / 1e6);
    Ok(ExportSummary {
        session: session.display().to_string(),
        out: out.display().to_string(),
        nwb_version: nwb::NWB_VERSION,
        identifier,
        session_start_time: start_time,
        frames: inputs.meta.n_frames,
        frame_height: inputs.meta.height,
        frame_width: inputs.meta.width,
        frames_written: movie.frames > 0,
        rois: inputs.rois.as_ref().map_or(0, |t| t.len()),
        trace_rows: inputs.trace_rows,
        deconvolved_rows: inputs.spike_rows,
        trials: stim.trials.start.len(),
        clips: inputs.meta.n_clips,
        behavior_samples: beh.behavior.time.len(),
        twin_neurons: inputs.twin.as_ref().map_or(0, |t| t.roi_ids.len()),
        twin_rows: inputs.twin.as_ref().map_or(0, |t| t.rows),
        twin_trials: inputs.twin.as_ref().map_or(0, |t| t.trials),
        objects,
        gzip: opts.gzip,
        movie_copy: match (movie.frames, movie.passthrough) {
            (0, _) => "none",
            (_, Some(_)) => "deflated-chunks",
            (_, None) => "decoded",
        },
        file_mb,
        movie_mb: movie.bytes as f64 / 1e6,
        movie_s: movie.seconds,
        movie_mb_per_s: if movie.seconds > 0.0 {
            movie.bytes as f64 / 1e6 / movie.seconds
        } else {
            0.0
        },
        wall_s: t0.elapsed().as_secs_f64(),
        peak_rss_mb: crate::budget::peak_rss_mb(),
    })
}

/// The open output file and what has been written to it.
pub(crate) struct Writer<'a> {
    pub file: &'a hdf5::File,
    pub storage: Storage,
    pub objects: Vec<String>,
}

impl Writer<'_> {
    pub fn note(&mut self, path: &str) {
        self.objects.push(path.to_string());
    }
}

/// A write error or a session read error met half-way through a part of the file.
#[derive(Debug)]
pub(crate) enum PartError {
    Write(WriteError),
    Session(SessionError),
}

impl From<WriteError> for PartError {
    fn from(e: WriteError) -> Self {
        PartError::Write(e)
    }
}

impl From<SessionError> for PartError {
    fn from(e: SessionError) -> Self {
        PartError::Session(e)
    }
}

impl PartError {
    fn at(self, out: &Path) -> ExportError {
        match self {
            PartError::Write(source) => ExportError::Write {
                path: out.to_path_buf(),
                source,
            },
            PartError::Session(e) => ExportError::Session(e),
        }
    }
}

/// nwbinspector takes a TimeSeries whose first axis (time) is shorter than another for a
/// transposed one and calls it CRITICAL; the file is right, but the user should know why the
/// inspector complains about a very short session.
fn warn_short(inputs: &Inputs, opts: &ExportOptions) {
    let m = &inputs.meta;
    if !opts.no_frames && m.n_frames > 0 && m.n_frames < m.height.max(m.width) {
        tracing::warn!(
            frames = m.n_frames,
            "fewer frames than pixels per row or column: nwbinspector will flag TwoPhotonSeries \
             as possibly transposed (check_data_orientation); the data is [frame, row, column]"
        );
    }
    let rois = inputs.rois.as_ref().map_or(0, |t| t.len());
    if inputs.trace_rows > 0 && inputs.trace_rows < rois {
        tracing::warn!(
            rows = inputs.trace_rows,
            rois,
            "fewer trace rows than ROIs: nwbinspector will flag the RoiResponseSeries as \
             possibly transposed (check_data_orientation); the data is [frame, ROI]"
        );
    }
}

/// The NWBFile root: required datasets and groups, the subject and the rig config.
fn root(w: &Writer, inputs: &Inputs, identifier: &str, start_time: &str) -> nwb::Result<()> {
    let f: &hdf5::Group = w.file;
    nwb::typed(f, nwb::CORE, "NWBFile")?;
    nwb::str_attr(f, "nwb_version", nwb::NWB_VERSION)?;
    let m = &inputs.meta;
    nwb::text_array(
        f,
        "file_create_date",
        &[&nwb_time(&crate::sim::utc_now_iso())],
    )?;
    nwb::text(f, "identifier", identifier)?;
    nwb::text(
        f,
        "session_description",
        &format!(
            "Two-photon imaging of mouse {} on rig {} (twinrig session {}, recorded by twinrig {}{})",
            m.mouse_id,
            inputs.cfg.rig.name,
            m.session_id,
            m.software_version,
            if m.complete {
                ""
            } else {
                "; the recording did not finish, this is what reached the disk"
            }
        ),
    )?;
    nwb::text(f, "session_start_time", start_time)?;
    nwb::text(f, "timestamps_reference_time", start_time)?;
    for g in [
        "acquisition",
        "analysis",
        "processing",
        "stimulus",
        "general",
    ] {
        nwb::group(f, g)?;
    }
    let stim = f.group("stimulus").map_err(nwb::at("stimulus"))?;
    nwb::group(&stim, "presentation")?;
    nwb::group(&stim, "templates")?;
    let general = f.group("general").map_err(nwb::at("general"))?;
    nwb::text(&general, "session_id", &m.session_id)?;
    nwb::text(
        &general,
        "experiment_description",
        "Two-photon calcium imaging of mouse visual cortex during natural and parametric visual \
         stimuli, with a digital twin of the recorded neurons stepped on the same stimulus and \
         behaviour (twinrig)",
    )?;
    // The whole rig config, verbatim TOML, so the export can be traced to the exact settings.
    nwb::text(&general, "data_collection", &inputs.cfg.to_toml())?;
    nwb::text_array(
        &general,
        "keywords",
        &[
            "two-photon imaging",
            "calcium imaging",
            "mouse visual cortex",
            "digital twin",
            "closed loop",
        ],
    )?;
    let subject = nwb::typed_group(&general, "subject", nwb::CORE, "Subject")?;
    nwb::text(
        &subject,
        "description",
        &format!("mouse {} (rig config [rig] mouse_id)", m.mouse_id),
    )?;
    nwb::text(&subject, "subject_id", &m.mouse_id)?;
    nwb::text(&subject, "species", "Mus musculus")?;
    nwb::text(&subject, "sex", &inputs.cfg.rig.mouse_sex)?;
    nwb::text(&subject, "age", &inputs.cfg.rig.mouse_age)?;
    Ok(())
}

/// A session's ISO 8601 UTC time (`...Z`) with an explicit offset, as NWB asks of its times.
fn nwb_time(iso: &str) -> String {
    match iso.strip_suffix('Z') {
        Some(t) => format!("{t}+00:00"),
        None => iso.to_string(),
    }
}
