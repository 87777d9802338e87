//! Appends a running session to its HDF5 file.
//!
//! Crash safety: frames go to disk as they arrive (one chunk each), every other stream is buffered
//! and written at each flush, and `flush` ends with H5Fflush. What a process killed with SIGKILL
//! leaves is therefore the file as of its last flush: it opens in h5py and in `rig`, and it lacks at
//! most one flush interval. `finish` marks the file complete.

use std::path::{Path, PathBuf};

use hdf5::types::VarLenUnicode;
use hdf5::{Dataset, File, Group, H5Type, Hyperslab, SliceOrIndex};
use ndarray::{ArrayView, IxDyn};

use super::error::SessionError;
use super::layout::{self, attr, Spec};
use crate::config::{Compression, RigConfig};
use crate::outfile::NewFile;

/// What the writer needs to know when a session starts.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub mouse_id: String,
    pub session_id: String,
    /// ISO 8601 UTC.
    pub start_time: String,
}

impl SessionInfo {
    /// A session named after the file it is written to (its stem is the session id), as `rig
    /// run`, `rig stream-recv` and `rig import tiff` name theirs.
    pub fn for_file(out: &Path, mouse_id: &str, start_time: String) -> SessionInfo {
        SessionInfo {
            mouse_id: mouse_id.to_string(),
            session_id: out
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            start_time,
        }
    }
}

/// One growing dataset. Rows are buffered until `write_pending`.
pub(super) struct Appender<T: H5Type + Copy> {
    ds: Dataset,
    row_shape: Vec<usize>,
    row_len: usize,
    pending: Vec<T>,
    rows: usize,
}

impl<T: H5Type + Copy> Appender<T> {
    pub(super) fn create(
        file: &File,
        spec: Spec,
        row_shape: &[usize],
        chunk_rows: usize,
        deflate: Option<u8>,
    ) -> Result<Self, SessionError> {
        let (group_path, name) = match spec.path.rsplit_once('/') {
            Some((g, n)) => (g, n),
            None => ("", spec.path),
        };
        let group = ensure_group(file, group_path)?;
        let mut shape: Vec<hdf5::Extent> = vec![hdf5::Extent::resizable(0)];
        let mut chunk = vec![chunk_rows.max(1)];
        for &d in row_shape {
            shape.push(hdf5::Extent::fixed(d));
            chunk.push(d.max(1));
        }
        let mut builder = group.new_dataset::<T>();
        builder = builder.chunk(chunk);
        if let Some(level) = deflate {
            builder = builder.deflate(level);
        }
        let ds = builder
            .shape(hdf5::SimpleExtents::from(shape))
            .create(name)
            .map_err(|e| SessionError::hdf5(spec.path, e))?;
        write_str_attr(&ds, "unit", spec.unit)?;
        write_str_attr(&ds, "clock", spec.clock)?;
        write_str_attr(&ds, "description", spec.description)?;
        Ok(Appender {
            ds,
            row_shape: row_shape.to_vec(),
            row_len: row_shape.iter().product::<usize>().max(1),
            pending: Vec::new(),
            rows: 0,
        })
    }

    pub(super) fn push(&mut self, row: &[T]) {
        debug_assert_eq!(row.len(), self.row_len);
        self.pending.extend_from_slice(row);
    }

    pub(super) fn write_pending(&mut self) -> Result<(), SessionError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let new_rows = self.pending.len() / self.row_len;
        let mut shape = vec![self.rows + new_rows];
        shape.extend_from_slice(&self.row_shape);
        self.ds
            .resize(shape.clone())
            .map_err(|e| SessionError::hdf5(&self.ds.name(), e))?;
        let mut view_shape = vec![new_rows];
        view_shape.extend_from_slice(&self.row_shape);
        let view = ArrayView::from_shape(IxDyn(&view_shape), &self.pending)
            .map_err(|e| SessionError::Layout(format!("{}: {e}", self.ds.name())))?;
        let mut sel: Vec<SliceOrIndex> = vec![(self.rows..self.rows + new_rows).into()];
        sel.extend(self.row_shape.iter().map(|_| SliceOrIndex::from(..)));
        self.ds
            .write_slice(view, Hyperslab::from(sel))
            .map_err(|e| SessionError::hdf5(&self.ds.name(), e))?;
        self.rows += new_rows;
        self.pending.clear();
        Ok(())
    }
}

pub(super) fn ensure_group(file: &File, path: &str) -> Result<Group, SessionError> {
    let mut g: Group = (**file).clone();
    if path.is_empty() {
        return Ok(g);
    }
    for part in path.split('/') {
        g = if g.link_exists(part) {
            g.group(part)
        } else {
            g.create_group(part)
        }
        .map_err(|e| SessionError::hdf5(path, e))?;
    }
    Ok(g)
}

pub(crate) fn write_str_attr(
    loc: &hdf5::Location,
    name: &str,
    value: &str,
) -> Result<(), SessionError> {
    let v: VarLenUnicode = value
        .parse()
        .map_err(|e| SessionError::Layout(format!("attribute {name}: {e}")))?;
    write_attr(loc, name, &v)
}

pub(crate) fn write_num_attr<T: H5Type + Copy>(
    loc: &hdf5::Location,
    name: &str,
    value: T,
) -> Result<(), SessionError> {
    write_attr(loc, name, &value)
}

/// Writes a scalar attribute, creating it or overwriting the one already there.
fn write_attr<T: H5Type>(loc: &hdf5::Location, name: &str, value: &T) -> Result<(), SessionError> {
    let exists = loc
        .attr_names()
        .map(|n| n.iter().any(|x| x == name))
        .unwrap_or(false);
    let a = if exists {
        loc.attr(name)
    } else {
        loc.new_attr::<T>().create(name)
    }
    .map_err(|e| SessionError::hdf5(name, e))?;
    a.write_scalar(value)
        .map_err(|e| SessionError::hdf5(name, e))
}

/// Writes a whole 1-D dataset at once (metadata that is known in full, such as ROI masks).
pub(super) fn write_whole<T: H5Type + Copy>(
    file: &File,
    spec: Spec,
    data: &[T],
) -> Result<(), SessionError> {
    let mut app = Appender::<T>::create(file, spec, &[], data.len().clamp(1, 1 << 16), None)?;
    app.pending.extend_from_slice(data);
    app.write_pending()
}

/// Ground-truth per-neuron parameters (simulated sessions).
#[derive(Debug, Clone, Default)]
pub struct NeuronTable {
    /// (field name from `layout::GT_NEURON_FIELDS`, values); u8 fields are stored as u8.
    pub fields: Vec<(&'static str, Vec<f32>)>,
}

/// ROI masks in compressed sparse rows: ROI r owns `pixels[offsets[r]..offsets[r+1]]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoiTable {
    pub height: usize,
    pub width: usize,
    pub ids: Vec<u32>,
    pub offsets: Vec<u64>,
    pub pixels: Vec<u32>,
    pub weights: Vec<f32>,
}

impl RoiTable {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    /// Pixels and weights of ROI `r`.
    pub fn roi(&self, r: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.offsets[r] as usize, self.offsets[r + 1] as usize);
        (&self.pixels[a..b], &self.weights[a..b])
    }
}

/// Appends one session to an HDF5 file.
pub struct SessionWriter {
    path: PathBuf,
    pub(super) file: File,
    /// The file's claim on `path`: unpublished, it lives under a temporary name.
    claim: NewFile,
    height: usize,
    width: usize,
    frames: Appender<u16>,
    frame_times: Appender<f64>,
    beh_times: Appender<f64>,
    speed: Appender<f32>,
    pupil: Appender<f32>,
    flip_times: Appender<f64>,
    flip_clip: Appender<i32>,
    flip_frame: Appender<u32>,
    trial_start: Appender<f64>,
    trial_end: Appender<f64>,
    trial_clip: Appender<i32>,
    sync_frame_t: Appender<f64>,
    sync_frame_n: Appender<u32>,
    sync_pd_t: Appender<f64>,
    sync_pd_l: Appender<u8>,
    sync_enc_t: Appender<f64>,
    sync_enc_p: Appender<i32>,
    clips: ClipAppenders,
    gt: Option<GroundTruthAppenders>,
    traces: Option<TraceAppenders>,
    pub(super) twin: Option<super::twin::TwinAppenders>,
    presenter: Option<PresenterAppenders>,
    sync_gap_start: Appender<f64>,
    sync_gap_end: Appender<f64>,
    flush_interval_s: f64,
    last_flush_s: f64,
    n_frames: usize,
}

struct ClipAppenders {
    frames: Appender<u8>,
    kind: Appender<u8>,
    orientation: Appender<f32>,
    sf: Appender<f32>,
    tf: Appender<f32>,
    contrast: Appender<f32>,
    n: usize,
}

struct TraceAppenders {
    frame: Appender<u64>,
    time: Appender<f64>,
    shift: Appender<f32>,
    raw: Appender<f32>,
    neuropil: Appender<f32>,
    corrected: Appender<f32>,
    f0: Appender<f32>,
    dff: Appender<f32>,
    spike_frame: Appender<u64>,
    spikes: Appender<f32>,
}

/// One analysed frame's outputs, as the recorder writes them.
pub struct TraceRow<'a> {
    pub frame_index: u64,
    pub time: f64,
    pub shift: [f32; 2],
    pub raw: &'a [f32],
    pub neuropil: &'a [f32],
    pub corrected: &'a [f32],
    pub f0: &'a [f32],
    pub dff: &'a [f32],
}

/// `presenter/flips/*`.
struct PresenterAppenders {
    time: Appender<f64>,
    seq: Appender<u64>,
    clip: Appender<i32>,
    frame: Appender<u32>,
    photodiode: Appender<u8>,
    missed: Appender<u32>,
}

impl PresenterAppenders {
    fn create(file: &File) -> Result<Self, SessionError> {
        const ROWS: usize = 1024;
        Ok(PresenterAppenders {
            time: Appender::create(file, layout::PRESENTER_TIME, &[], ROWS, None)?,
            seq: Appender::create(file, layout::PRESENTER_SEQ, &[], ROWS, None)?,
            clip: Appender::create(file, layout::PRESENTER_CLIP, &[], ROWS, None)?,
            frame: Appender::create(file, layout::PRESENTER_FRAME, &[], ROWS, None)?,
            photodiode: Appender::create(file, layout::PRESENTER_PHOTODIODE, &[], ROWS, None)?,
            missed: Appender::create(file, layout::PRESENTER_MISSED, &[], ROWS, None)?,
        })
    }

    fn write_pending(&mut self) -> Result<(), SessionError> {
        self.time.write_pending()?;
        self.seq.write_pending()?;
        self.clip.write_pending()?;
        self.frame.write_pending()?;
        self.photodiode.write_pending()?;
        self.missed.write_pending()
    }
}

struct GroundTruthAppenders {
    spikes: Appender<u8>,
    calcium: Appender<f32>,
    motion: Appender<f32>,
}

/// Parameters of one clip in the library.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipParams {
    pub kind: u8,
    pub orientation: f32,
    pub spatial_frequency: f32,
    pub temporal_frequency: f32,
    pub contrast: f32,
}

impl SessionWriter {
    /// Creates a new session file and publishes it at once (`outfile`): an existing `path` is
    /// refused unless `overwrite`, and one that another process holds open always is.
    pub fn create(
        path: &Path,
        cfg: &RigConfig,
        info: &SessionInfo,
        overwrite: bool,
    ) -> Result<Self, SessionError> {
        let mut w = Self::create_unpublished(path, cfg, info, overwrite)?;
        w.publish()?;
        Ok(w)
    }

    /// Creates the session under a temporary name: it appears at `path` on `publish`, and a
    /// writer dropped before that removes it. `rig run` publishes once every start-up step that
    /// can fail has succeeded, so a failed start leaves no file behind.
    pub fn create_unpublished(
        path: &Path,
        cfg: &RigConfig,
        info: &SessionInfo,
        overwrite: bool,
    ) -> Result<Self, SessionError> {
        let claim = NewFile::claim(path, overwrite)?;
        let file = File::create(claim.tmp_path()).map_err(|e| SessionError::Create {
            path: path.to_path_buf(),
            message: super::error::first_line(&e.to_string()),
        })?;
        let (h, w) = (cfg.imaging.height, cfg.imaging.width);
        let deflate = match cfg.storage.compression {
            Compression::None => None,
            Compression::Deflate => Some(cfg.storage.deflate_level),
        };
        let root: &hdf5::Location = &file;
        write_str_attr(root, attr::FORMAT, layout::FORMAT_NAME)?;
        write_num_attr(root, attr::FORMAT_VERSION, layout::FORMAT_VERSION)?;
        write_str_attr(root, attr::SOFTWARE_VERSION, crate::VERSION)?;
        write_str_attr(root, attr::START_TIME, &info.start_time)?;
        write_str_attr(root, attr::MOUSE_ID, &info.mouse_id)?;
        write_str_attr(root, attr::SESSION_ID, &info.session_id)?;
        write_str_attr(root, attr::RIG_CONFIG, &cfg.to_toml())?;
        write_str_attr(
            root,
            attr::CLOCK,
            "rig: seconds since session start, counted by the sync board",
        )?;
        write_num_attr(root, attr::COMPLETE, 0u8)?;
        write_num_attr(root, attr::HEIGHT, h as u32)?;
        write_num_attr(root, attr::WIDTH, w as u32)?;
        write_num_attr(root, attr::FRAME_RATE, cfg.imaging.frame_rate_hz)?;
        write_num_attr(root, attr::STIM_RATE, cfg.stimulus.frame_rate_hz)?;
        write_num_attr(root, attr::REFRESH, cfg.display.refresh_hz)?;

        const ROWS: usize = 1024;
        let w1 = |s| Appender::<f64>::create(&file, s, &[], ROWS, None);
        Ok(SessionWriter {
            frames: Appender::create(&file, layout::FRAMES, &[h, w], 1, deflate)?,
            frame_times: w1(layout::FRAME_TIMES)?,
            beh_times: w1(layout::BEHAVIOR_TIMES)?,
            speed: Appender::create(&file, layout::RUNNING_SPEED, &[], ROWS, None)?,
            pupil: Appender::create(&file, layout::PUPIL_DIAMETER, &[], ROWS, None)?,
            flip_times: w1(layout::FLIP_TIMES)?,
            flip_clip: Appender::create(&file, layout::FLIP_CLIP, &[], ROWS, None)?,
            flip_frame: Appender::create(&file, layout::FLIP_FRAME, &[], ROWS, None)?,
            trial_start: w1(layout::TRIAL_START)?,
            trial_end: w1(layout::TRIAL_END)?,
            trial_clip: Appender::create(&file, layout::TRIAL_CLIP, &[], ROWS, None)?,
            sync_frame_t: w1(layout::SYNC_FRAME_TIME)?,
            sync_frame_n: Appender::create(&file, layout::SYNC_FRAME_COUNT, &[], ROWS, None)?,
            sync_pd_t: w1(layout::SYNC_PD_TIME)?,
            sync_pd_l: Appender::create(&file, layout::SYNC_PD_LEVEL, &[], ROWS, None)?,
            sync_enc_t: w1(layout::SYNC_ENC_TIME)?,
            sync_enc_p: Appender::create(&file, layout::SYNC_ENC_POS, &[], ROWS, None)?,
            clips: ClipAppenders {
                frames: Appender::create(
                    &file,
                    layout::CLIP_FRAMES,
                    &[
                        cfg.stimulus.frames_per_clip(),
                        cfg.stimulus.height,
                        cfg.stimulus.width,
                    ],
                    1,
                    Some(4),
                )?,
                kind: Appender::create(&file, layout::CLIP_KIND, &[], 256, None)?,
                orientation: Appender::create(&file, layout::CLIP_ORIENTATION, &[], 256, None)?,
                sf: Appender::create(&file, layout::CLIP_SF, &[], 256, None)?,
                tf: Appender::create(&file, layout::CLIP_TF, &[], 256, None)?,
                contrast: Appender::create(&file, layout::CLIP_CONTRAST, &[], 256, None)?,
                n: 0,
            },
            gt: None,
            traces: None,
            twin: None,
            // Created empty in every session, so that every file has the whole layout.
            presenter: Some(PresenterAppenders::create(&file)?),
            sync_gap_start: Appender::create(&file, layout::SYNC_GAP_START, &[], 64, None)?,
            sync_gap_end: Appender::create(&file, layout::SYNC_GAP_END, &[], 64, None)?,
            flush_interval_s: cfg.storage.flush_interval_s,
            last_flush_s: 0.0,
            n_frames: 0,
            height: h,
            width: w,
            file,
            path: path.to_path_buf(),
            claim,
        })
    }

    /// Moves the file to its name (see `create_unpublished`).
    pub fn publish(&mut self) -> Result<(), SessionError> {
        // What is written so far must be on disk under the name before anyone can open it.
        self.file
            .flush()
            .map_err(|e| SessionError::hdf5("flush", e))?;
        self.claim.publish()?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn frames_written(&self) -> usize {
        self.n_frames
    }

    /// Adds a clip to the library (frames [F, h, w] at the configured stimulus size) and returns its
    /// index. Clips are written at once: a trial may only reference a clip that is on disk.
    pub fn append_clip(&mut self, frames: &[u8], p: ClipParams) -> Result<i32, SessionError> {
        let c = &mut self.clips;
        if frames.len() != c.frames.row_len {
            return Err(SessionError::Layout(format!(
                "clip has {} pixels, the library's clips have {}",
                frames.len(),
                c.frames.row_len
            )));
        }
        c.frames.push(frames);
        c.frames.write_pending()?;
        c.kind.push(&[p.kind]);
        c.orientation.push(&[p.orientation]);
        c.sf.push(&[p.spatial_frequency]);
        c.tf.push(&[p.temporal_frequency]);
        c.contrast.push(&[p.contrast]);
        c.kind.write_pending()?;
        c.orientation.write_pending()?;
        c.sf.write_pending()?;
        c.tf.write_pending()?;
        c.contrast.write_pending()?;
        c.n += 1;
        Ok(c.n as i32 - 1)
    }

    /// Writes the ROI masks (once per session).
    pub fn write_rois(&mut self, rois: &RoiTable) -> Result<(), SessionError> {
        self.write_roi_table(layout::ROIS, rois)
    }

    /// The simulator's true soma footprints, so that a replay with other ROIs can pair them
    /// with the neurons by overlap (extract::pairing).
    pub fn write_truth_footprints(&mut self, footprints: &RoiTable) -> Result<(), SessionError> {
        self.write_roi_table(layout::GT_FOOTPRINTS, footprints)
    }

    fn write_roi_table(
        &mut self,
        specs: layout::RoiSpecs,
        rois: &RoiTable,
    ) -> Result<(), SessionError> {
        write_whole(&self.file, specs.ids, &rois.ids)?;
        write_whole(&self.file, specs.offsets, &rois.offsets)?;
        write_whole(&self.file, specs.pixels, &rois.pixels)?;
        write_whole(&self.file, specs.weights, &rois.weights)?;
        Ok(())
    }

    /// Starts the ground-truth streams of a simulated session with `n` neurons and writes their
    /// parameters.
    pub fn begin_ground_truth(
        &mut self,
        n: usize,
        neurons: &NeuronTable,
    ) -> Result<(), SessionError> {
        let f = &self.file;
        let rows = (65536 / n.max(1)).clamp(1, 1024);
        self.gt = Some(GroundTruthAppenders {
            spikes: Appender::create(f, layout::GT_SPIKES, &[n], rows, Some(4))?,
            calcium: Appender::create(f, layout::GT_CALCIUM, &[n], rows, None)?,
            motion: Appender::create(f, layout::GT_MOTION, &[2], 1024, None)?,
        });
        let group = ensure_group(f, "ground_truth/neurons")?;
        for (name, values) in &neurons.fields {
            let meta = layout::GT_NEURON_FIELDS
                .iter()
                .find(|(n, ..)| n == name)
                .ok_or_else(|| SessionError::Layout(format!("unknown neuron field {name}")))?;
            let ds = match meta.1 {
                layout::Dtype::U8 => {
                    let v: Vec<u8> = values.iter().map(|&x| x as u8).collect();
                    group.new_dataset_builder().with_data(&v).create(*name)
                }
                layout::Dtype::U32 => {
                    let v: Vec<u32> = values.iter().map(|&x| x as u32).collect();
                    group.new_dataset_builder().with_data(&v).create(*name)
                }
                _ => group.new_dataset_builder().with_data(values).create(*name),
            }
            .map_err(|e| SessionError::hdf5(name, e))?;
            write_str_attr(&ds, "unit", meta.2)?;
            write_str_attr(&ds, "description", meta.3)?;
        }
        Ok(())
    }

    /// Starts the extracted-trace streams for `n_rois` ROIs (in `rois/ids` order).
    pub fn begin_traces(&mut self, n_rois: usize) -> Result<(), SessionError> {
        let f = &self.file;
        let r = n_rois.max(1);
        let rows = (65536 / r).clamp(1, 1024);
        self.traces = Some(TraceAppenders {
            frame: Appender::create(f, layout::TRACE_FRAME, &[], 1024, None)?,
            time: Appender::create(f, layout::TRACE_TIMES, &[], 1024, None)?,
            shift: Appender::create(f, layout::TRACE_SHIFT, &[2], 1024, None)?,
            raw: Appender::create(f, layout::TRACE_RAW, &[n_rois], rows, None)?,
            neuropil: Appender::create(f, layout::TRACE_NEUROPIL, &[n_rois], rows, None)?,
            corrected: Appender::create(f, layout::TRACE_CORRECTED, &[n_rois], rows, None)?,
            f0: Appender::create(f, layout::TRACE_F0, &[n_rois], rows, None)?,
            dff: Appender::create(f, layout::TRACE_DFF, &[n_rois], rows, None)?,
            spike_frame: Appender::create(f, layout::SPIKE_FRAME, &[], 1024, None)?,
            spikes: Appender::create(f, layout::SPIKES, &[n_rois], rows, None)?,
        });
        Ok(())
    }

    fn traces_mut(&mut self) -> Result<&mut TraceAppenders, SessionError> {
        self.traces
            .as_mut()
            .ok_or_else(|| SessionError::Layout("traces before begin_traces".into()))
    }

    /// Appends one analysed frame's traces (written at the next flush).
    pub fn append_traces(&mut self, row: &TraceRow<'_>) -> Result<(), SessionError> {
        let t = self.traces_mut()?;
        let n = t.raw.row_len;
        for (name, v) in [
            ("raw", row.raw),
            ("neuropil", row.neuropil),
            ("corrected", row.corrected),
            ("f0", row.f0),
            ("dff", row.dff),
        ] {
            if v.len() != n {
                return Err(SessionError::Layout(format!(
                    "traces/{name} row of {} for {n} ROIs",
                    v.len()
                )));
            }
        }
        t.frame.push(&[row.frame_index]);
        t.time.push(&[row.time]);
        t.shift.push(&row.shift);
        t.raw.push(row.raw);
        t.neuropil.push(row.neuropil);
        t.corrected.push(row.corrected);
        t.f0.push(row.f0);
        t.dff.push(row.dff);
        Ok(())
    }

    /// Appends one row of deconvolved events belonging to frame `frame_index`.
    pub fn append_spikes(&mut self, frame_index: u64, spikes: &[f32]) -> Result<(), SessionError> {
        let t = self.traces_mut()?;
        if spikes.len() != t.spikes.row_len {
            return Err(SessionError::Layout(format!(
                "traces/spikes row of {} for {} ROIs",
                spikes.len(),
                t.spikes.row_len
            )));
        }
        t.spike_frame.push(&[frame_index]);
        t.spikes.push(spikes);
        Ok(())
    }

    /// Writes one pipeline stage's latency histogram (HdrHistogram buckets).
    pub fn write_latency(
        &mut self,
        stage: &str,
        value_us: &[u64],
        count: &[u64],
    ) -> Result<(), SessionError> {
        let g = ensure_group(&self.file, &format!("latency/{stage}"))?;
        let loc = format!("latency/{stage}");
        let v = g
            .new_dataset_builder()
            .with_data(value_us)
            .create("value_us")
            .map_err(|e| SessionError::hdf5(&loc, e))?;
        write_str_attr(&v, "unit", "us")?;
        write_str_attr(&v, "clock", "-")?;
        write_str_attr(
            &v,
            "description",
            "upper edge of each latency bucket (3 significant digits)",
        )?;
        let c = g
            .new_dataset_builder()
            .with_data(count)
            .create("count")
            .map_err(|e| SessionError::hdf5(&loc, e))?;
        write_str_attr(&c, "unit", "frames")?;
        write_str_attr(&c, "clock", "-")?;
        write_str_attr(&c, "description", "frames whose latency fell in the bucket")?;
        Ok(())
    }

    /// Sets a root string attribute (provenance such as the session a replay came from).
    pub fn set_root_attr(&mut self, name: &str, value: &str) -> Result<(), SessionError> {
        write_str_attr(&self.file, name, value)
    }

    /// Appends one imaging frame at rig time `t` (seconds). The frame reaches the file now; its
    /// timestamp with the next flush.
    pub fn append_frame(&mut self, frame: &[u16], t: f64) -> Result<(), SessionError> {
        if frame.len() != self.height * self.width {
            return Err(SessionError::Layout(format!(
                "frame has {} pixels, the session is {}x{}",
                frame.len(),
                self.height,
                self.width
            )));
        }
        self.frames.push(frame);
        self.frames.write_pending()?;
        self.frame_times.push(&[t]);
        self.n_frames += 1;
        self.maybe_flush(t)
    }

    pub fn append_behavior(&mut self, t: f64, speed_cm_s: f32, pupil_mm: f32) {
        self.beh_times.push(&[t]);
        self.speed.push(&[speed_cm_s]);
        self.pupil.push(&[pupil_mm]);
    }

    pub fn append_flip(&mut self, t: f64, clip: i32, frame: u32) {
        self.flip_times.push(&[t]);
        self.flip_clip.push(&[clip]);
        self.flip_frame.push(&[frame]);
    }

    pub fn append_trial(&mut self, start: f64, end: f64, clip: i32) {
        self.trial_start.push(&[start]);
        self.trial_end.push(&[end]);
        self.trial_clip.push(&[clip]);
    }

    pub fn append_frame_clock(&mut self, t: f64, count: u32) {
        self.sync_frame_t.push(&[t]);
        self.sync_frame_n.push(&[count]);
    }

    pub fn append_photodiode(&mut self, t: f64, level: u8) {
        self.sync_pd_t.push(&[t]);
        self.sync_pd_l.push(&[level]);
    }

    pub fn append_encoder(&mut self, t: f64, position: i32) {
        self.sync_enc_t.push(&[t]);
        self.sync_enc_p.push(&[position]);
    }

    /// Appends one flip reported by the stimulus presenter (`presenter/flips/*`).
    pub fn append_presenter_flip(
        &mut self,
        f: &crate::present::PresentedFrame,
    ) -> Result<(), SessionError> {
        if self.presenter.is_none() {
            self.presenter = Some(PresenterAppenders::create(&self.file)?);
        }
        if let Some(p) = self.presenter.as_mut() {
            p.time.push(&[f.time]);
            p.seq.push(&[f.seq]);
            p.clip
                .push(&[f.clip.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32]);
            p.frame.push(&[f.frame]);
            p.photodiode.push(&[f.photodiode]);
            p.missed.push(&[f.missed]);
        }
        Ok(())
    }

    /// Records what the sync board's link did: root attributes `sync_*` and the times the board
    /// was gone (`sync/gaps/*`, rig clock). Call once, at the end of a run.
    pub fn write_sync_link(
        &mut self,
        port: &str,
        link: &crate::harp::LinkStats,
        frame_clock_missing: u64,
        gaps: &[crate::harp::Gap],
    ) -> Result<(), SessionError> {
        let root: &hdf5::Location = &self.file;
        write_str_attr(root, attr::SYNC_PORT, port)?;
        write_num_attr(root, attr::SYNC_BAD_CHECKSUMS, link.bad_checksums)?;
        write_num_attr(root, attr::SYNC_DISCARDED_BYTES, link.discarded_bytes)?;
        write_num_attr(root, attr::SYNC_EVENTS_DROPPED, link.events_dropped)?;
        write_num_attr(root, attr::SYNC_RECONNECTS, link.reconnects)?;
        write_num_attr(root, attr::SYNC_FRAME_CLOCK_MISSING, frame_clock_missing)?;
        for g in gaps {
            self.sync_gap_start.push(&[g.start_s]);
            self.sync_gap_end.push(&[g.end_s]);
        }
        self.sync_gap_start.write_pending()?;
        self.sync_gap_end.write_pending()
    }

    /// Records the presenter's summary as root attributes `presenter_*`. Call once, at the end.
    pub fn write_presenter_summary(
        &mut self,
        addr: &str,
        flips: u64,
        missed_frames: u64,
        disconnects: u64,
    ) -> Result<(), SessionError> {
        let root: &hdf5::Location = &self.file;
        write_str_attr(root, attr::PRESENTER_ADDR, addr)?;
        write_num_attr(root, attr::PRESENTER_FLIPS, flips)?;
        write_num_attr(root, attr::PRESENTER_MISSED_FRAMES, missed_frames)?;
        write_num_attr(root, attr::PRESENTER_DISCONNECTS, disconnects)
    }

    /// Appends one frame of ground truth (call once per imaging frame, after `begin_ground_truth`).
    pub fn append_ground_truth(
        &mut self,
        spikes: &[u8],
        calcium: &[f32],
        motion: [f32; 2],
    ) -> Result<(), SessionError> {
        let gt = self
            .gt
            .as_mut()
            .ok_or_else(|| SessionError::Layout("ground truth before begin_ground_truth".into()))?;
        gt.spikes.push(spikes);
        gt.calcium.push(calcium);
        gt.motion.push(&motion);
        Ok(())
    }

    fn maybe_flush(&mut self, t: f64) -> Result<(), SessionError> {
        if t - self.last_flush_s >= self.flush_interval_s {
            self.last_flush_s = t;
            self.flush()?;
        }
        Ok(())
    }

    /// Writes every buffered row and flushes the file to disk.
    pub fn flush(&mut self) -> Result<(), SessionError> {
        self.frame_times.write_pending()?;
        self.beh_times.write_pending()?;
        self.speed.write_pending()?;
        self.pupil.write_pending()?;
        self.flip_times.write_pending()?;
        self.flip_clip.write_pending()?;
        self.flip_frame.write_pending()?;
        self.trial_start.write_pending()?;
        self.trial_end.write_pending()?;
        self.trial_clip.write_pending()?;
        self.sync_frame_t.write_pending()?;
        self.sync_frame_n.write_pending()?;
        self.sync_pd_t.write_pending()?;
        self.sync_pd_l.write_pending()?;
        self.sync_enc_t.write_pending()?;
        self.sync_enc_p.write_pending()?;
        if let Some(t) = self.traces.as_mut() {
            t.frame.write_pending()?;
            t.time.write_pending()?;
            t.shift.write_pending()?;
            t.raw.write_pending()?;
            t.neuropil.write_pending()?;
            t.corrected.write_pending()?;
            t.f0.write_pending()?;
            t.dff.write_pending()?;
            t.spike_frame.write_pending()?;
            t.spikes.write_pending()?;
        }
        if let Some(t) = self.twin.as_mut() {
            t.write_pending()?;
        }
        if let Some(p) = self.presenter.as_mut() {
            p.write_pending()?;
        }
        if let Some(gt) = self.gt.as_mut() {
            gt.spikes.write_pending()?;
            gt.calcium.write_pending()?;
            gt.motion.write_pending()?;
        }
        self.file
            .flush()
            .map_err(|e| SessionError::hdf5(&self.path.display().to_string(), e))?;
        // Tests that kill the writer read this line to learn what must be on disk.
        tracing::debug!(frames = self.n_frames, "session flushed");
        Ok(())
    }

    /// Flushes everything and marks the session complete.
    pub fn finish(mut self, end_time: &str) -> Result<PathBuf, SessionError> {
        let root: &hdf5::Location = &self.file;
        write_str_attr(root, attr::END_TIME, end_time)?;
        write_num_attr(root, attr::COMPLETE, 1u8)?;
        self.flush()?;
        self.publish()?;
        Ok(self.path.clone())
    }
}

/// Writes `rois` alone as a mask file (`rois/*` as in a session, plus `frame_height` and
/// `frame_width`), what `rig run --rois` and `rig replay --rois` read. Published atomically; an
/// existing file is refused unless `overwrite`.
pub fn write_roi_file(
    path: &Path,
    rois: &RoiTable,
    overwrite: bool,
) -> Result<PathBuf, SessionError> {
    let mut claim = NewFile::claim(path, overwrite)?;
    {
        let file = File::create(claim.tmp_path()).map_err(|e| SessionError::Create {
            path: path.to_path_buf(),
            message: super::error::first_line(&e.to_string()),
        })?;
        let root: &hdf5::Location = &file;
        write_num_attr(root, attr::HEIGHT, rois.height as u32)?;
        write_num_attr(root, attr::WIDTH, rois.width as u32)?;
        let specs = layout::ROIS;
        write_whole(&file, specs.ids, &rois.ids)?;
        write_whole(&file, specs.offsets, &rois.offsets)?;
        write_whole(&file, specs.pixels, &rois.pixels)?;
        write_whole(&file, specs.weights, &rois.weights)?;
        file.flush().map_err(|e| SessionError::hdf5("flush", e))?;
    }
    claim.publish()?;
    Ok(path.to_path_buf())
}
