//! Opens a session file, checks it against the v1 layout and reads it back.
//!
//! `open` validates everything a later stage relies on (format, version, every required dataset's
//! presence, type and rank, frame shape against the root attributes), so that readers downstream
//! can index without re-checking and a bad file is refused up front with one clear line.

use std::path::{Path, PathBuf};

use hdf5::types::{FloatSize, IntSize, TypeDescriptor, VarLenUnicode};
use hdf5::{Dataset, File, H5Type};

use super::error::SessionError;
use super::layout::{self, attr, Dtype, Spec};
use super::writer::{NeuronTable, RoiTable};
use crate::config::RigConfig;

/// What a session file says about itself.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionMeta {
    pub format_version: u32,
    pub software_version: String,
    pub start_time: String,
    pub end_time: Option<String>,
    pub mouse_id: String,
    pub session_id: String,
    /// False for a file whose writer never reached `finish` (a crash or a kill).
    pub complete: bool,
    pub height: usize,
    pub width: usize,
    pub frame_rate_hz: f64,
    pub stimulus_frame_rate_hz: f64,
    pub refresh_hz: f64,
    /// Frames with a timestamp (a crashed writer may leave a frame without one; it is not counted).
    pub n_frames: usize,
    pub n_clips: usize,
    pub frames_per_clip: usize,
    pub stimulus_height: usize,
    pub stimulus_width: usize,
    pub n_rois: usize,
    pub n_neurons: Option<usize>,
}

/// Behaviour samples on their own timestamps.
#[derive(Debug, Clone, Default)]
pub struct Behavior {
    pub time: Vec<f64>,
    pub running_speed: Vec<f32>,
    pub pupil_diameter: Vec<f32>,
}

/// Display flips: from `time[i]` on, clip `clip[i]` frame `frame[i]` was on screen (-1 = gray).
#[derive(Debug, Clone, Default)]
pub struct Flips {
    pub time: Vec<f64>,
    pub clip: Vec<i32>,
    pub frame: Vec<u32>,
}

/// Whether something that happened at `time` holds at `at` (it happened at or before it, to a
/// nanosecond). A live rig's frame context (`acquire::live`) uses the same test.
pub fn holds_at(time: f64, at: f64) -> bool {
    time <= at + 1e-9
}

/// Index of the last of `times` at or before each of `at` (both increasing), None before the
/// first. The one rule by which a session says what held at a frame's time: a live run's twin and
/// an offline `rig twin predict` must agree on it.
fn last_at_or_before(times: &[f64], at: &[f64]) -> Vec<Option<usize>> {
    let mut out = Vec::with_capacity(at.len());
    let mut next = 0usize;
    for &t in at {
        while next < times.len() && holds_at(times[next], t) {
            next += 1;
        }
        out.push(next.checked_sub(1));
    }
    out
}

impl Flips {
    /// (clip, clip frame) on screen at each of `at` (rig times, increasing): the last flip at or
    /// before it, gray (-1, 0) before the first flip.
    pub fn shown_at(&self, at: &[f64]) -> Vec<(i32, u32)> {
        last_at_or_before(&self.time, at)
            .into_iter()
            .map(|j| j.map_or((-1, 0), |j| (self.clip[j], self.frame[j])))
            .collect()
    }
}

impl Behavior {
    /// (running speed, pupil diameter) held at each of `at` (rig times, increasing): the last
    /// sample at or before it, the first sample before the first one, 0 without samples.
    pub fn held_at(&self, at: &[f64]) -> (Vec<f32>, Vec<f32>) {
        let j = last_at_or_before(&self.time, at);
        let pick = |v: &[f32]| -> Vec<f32> {
            j.iter()
                .map(|j| v.get(j.unwrap_or(0)).copied().unwrap_or(0.0))
                .collect()
        };
        (pick(&self.running_speed), pick(&self.pupil_diameter))
    }
}

#[derive(Debug, Clone, Default)]
pub struct Trials {
    pub start: Vec<f64>,
    pub end: Vec<f64>,
    pub clip: Vec<i32>,
}

/// Ground-truth rows: (calcium [rows, N], spikes [rows, N], motion [rows, 2]).
pub type GroundTruthRows = (Vec<f32>, Vec<u8>, Vec<f32>);

/// Extracted traces: rows are analysed frames.
#[derive(Debug, Clone, Default)]
pub struct Traces {
    pub n_rois: usize,
    pub frame_index: Vec<u64>,
    pub time: Vec<f64>,
    /// [A, 2] (dy, dx)
    pub shift: Vec<f32>,
    /// [A, R]
    pub raw: Vec<f32>,
    pub corrected: Vec<f32>,
    pub dff: Vec<f32>,
    pub spikes_frame: Vec<u64>,
    /// [S, R]
    pub spikes: Vec<f32>,
}

/// Ground truth of a simulated session.
#[derive(Debug, Clone)]
pub struct GroundTruth {
    pub n_neurons: usize,
    /// [T, N] spike counts per imaging frame.
    pub spikes: Vec<u8>,
    /// [T, N] true dF/F of each soma.
    pub calcium: Vec<f32>,
    /// [T, 2] true (dy, dx) shift.
    pub motion: Vec<f32>,
    pub neurons: NeuronTable,
}

impl GroundTruth {
    /// Rows present in all three streams.
    pub fn n_frames(&self) -> usize {
        let n = self.n_neurons.max(1);
        (self.spikes.len() / n)
            .min(self.calcium.len() / n)
            .min(self.motion.len() / 2)
    }
    pub fn neuron_field(&self, name: &str) -> Option<&[f32]> {
        self.neurons
            .fields
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_slice())
    }
}

pub struct SessionReader {
    path: PathBuf,
    pub(super) file: File,
    meta: SessionMeta,
    frames: Dataset,
}

const HDF5_SIGNATURE: &[u8; 8] = b"\x89HDF\r\n\x1a\n";

fn has_hdf5_signature(path: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    // The superblock sits at 0, or after a user block at 512, 1024, 2048, ...
    let mut offset = 0u64;
    while offset + 8 <= len {
        let mut sig = [0u8; 8];
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(&mut sig)?;
        if &sig == HDF5_SIGNATURE {
            return Ok(true);
        }
        offset = if offset == 0 { 512 } else { offset * 2 };
    }
    Ok(false)
}

fn descriptor_matches(d: &TypeDescriptor, want: Dtype) -> bool {
    matches!(
        (d, want),
        (TypeDescriptor::Unsigned(IntSize::U1), Dtype::U8)
            | (TypeDescriptor::Unsigned(IntSize::U2), Dtype::U16)
            | (TypeDescriptor::Unsigned(IntSize::U4), Dtype::U32)
            | (TypeDescriptor::Unsigned(IntSize::U8), Dtype::U64)
            | (TypeDescriptor::Integer(IntSize::U4), Dtype::I32)
            | (TypeDescriptor::Float(FloatSize::U4), Dtype::F32)
            | (TypeDescriptor::Float(FloatSize::U8), Dtype::F64)
    )
}

impl SessionReader {
    /// Opens and validates a session file.
    pub fn open(path: &Path) -> Result<Self, SessionError> {
        let p = path.to_path_buf();
        if !path.exists() {
            return Err(SessionError::NotFound { path: p });
        }
        match has_hdf5_signature(path) {
            Ok(true) => {}
            Ok(false) => return Err(SessionError::NotHdf5 { path: p }),
            Err(e) => {
                return Err(SessionError::Invalid {
                    path: p,
                    message: e.to_string(),
                });
            }
        }
        let file = File::open(path).map_err(|e| SessionError::Damaged {
            path: p.clone(),
            message: first_line(&e.to_string()),
        })?;
        // A file of some other program must be refused as such, not as "missing imaging/frames".
        let format = file
            .attr(attr::FORMAT)
            .and_then(|a| a.read_scalar::<VarLenUnicode>())
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        if format != layout::FORMAT_NAME {
            return Err(SessionError::NotSession {
                path: p,
                found: format,
            });
        }
        let frames =
            file.dataset(layout::FRAMES.path)
                .map_err(|_| SessionError::MissingDataset {
                    path: p.clone(),
                    dataset: layout::FRAMES.path.into(),
                })?;
        let mut r = SessionReader {
            path: p,
            file,
            meta: placeholder_meta(),
            frames,
        };
        r.validate()?;
        Ok(r)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn meta(&self) -> &SessionMeta {
        &self.meta
    }

    /// The rig config the session was recorded with.
    pub fn config(&self) -> Result<RigConfig, SessionError> {
        let text = self.str_attr(attr::RIG_CONFIG)?;
        RigConfig::parse(
            &text,
            &format!("{} (attribute rig_config)", self.path.display()),
        )
        .map_err(|e| SessionError::Invalid {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }

    pub(super) fn invalid(&self, message: String) -> SessionError {
        SessionError::Invalid {
            path: self.path.clone(),
            message,
        }
    }

    fn str_attr(&self, name: &str) -> Result<String, SessionError> {
        let a = self
            .file
            .attr(name)
            .map_err(|_| self.invalid(format!("missing root attribute `{name}`")))?;
        let v: VarLenUnicode = a
            .read_scalar()
            .map_err(|e| self.invalid(format!("root attribute `{name}` is not a string: {e}")))?;
        Ok(v.as_str().to_string())
    }

    /// A root string attribute that only some sessions have (e.g. `plan`); None when absent.
    pub fn optional_str_attr(&self, name: &str) -> Result<Option<String>, SessionError> {
        if !self
            .file
            .attr_names()
            .is_ok_and(|n| n.iter().any(|a| a == name))
        {
            return Ok(None);
        }
        self.str_attr(name).map(Some)
    }

    fn num_attr<T: H5Type + Copy>(&self, name: &str) -> Result<T, SessionError> {
        let a = self
            .file
            .attr(name)
            .map_err(|_| self.invalid(format!("missing root attribute `{name}`")))?;
        a.read_scalar::<T>()
            .map_err(|e| self.invalid(format!("root attribute `{name}` has the wrong type: {e}")))
    }

    /// Opens a dataset and checks its element type and rank against the layout.
    fn dataset(&self, spec: Spec) -> Result<Dataset, SessionError> {
        let ds = self
            .file
            .dataset(spec.path)
            .map_err(|_| SessionError::MissingDataset {
                path: self.path.clone(),
                dataset: spec.path.into(),
            })?;
        let desc =
            ds.dtype()
                .and_then(|t| t.to_descriptor())
                .map_err(|e| SessionError::Damaged {
                    path: self.path.clone(),
                    message: e.to_string(),
                })?;
        if !descriptor_matches(&desc, spec.dtype) {
            return Err(SessionError::WrongType {
                path: self.path.clone(),
                dataset: spec.path.into(),
                expected: spec.dtype.name().into(),
                found: format!("{desc}"),
            });
        }
        if ds.ndim() != spec.rank {
            return Err(SessionError::WrongShape {
                path: self.path.clone(),
                dataset: spec.path.into(),
                expected: format!("rank {}", spec.rank),
                found: ds.shape(),
            });
        }
        Ok(ds)
    }

    pub(super) fn optional(&self, spec: Spec) -> Result<Option<Dataset>, SessionError> {
        if self.file.link_exists(spec.path) {
            self.dataset(spec).map(Some)
        } else {
            Ok(None)
        }
    }

    pub(super) fn read_vec<T: H5Type + Copy>(&self, spec: Spec) -> Result<Vec<T>, SessionError> {
        let ds = self.dataset(spec)?;
        ds.read_raw::<T>().map_err(|e| SessionError::Damaged {
            path: self.path.clone(),
            message: format!("reading `{}`: {}", spec.path, first_line(&e.to_string())),
        })
    }

    fn validate(&mut self) -> Result<(), SessionError> {
        let version: u32 = self.num_attr(attr::FORMAT_VERSION)?;
        if version == 0 || version > layout::FORMAT_VERSION {
            return Err(SessionError::UnsupportedVersion {
                path: self.path.clone(),
                found: version,
                supported: layout::FORMAT_VERSION,
            });
        }
        for spec in layout::ALL {
            if spec.required {
                self.dataset(*spec)?;
            } else {
                self.optional(*spec)?;
            }
        }
        let height = self.num_attr::<u32>(attr::HEIGHT)? as usize;
        let width = self.num_attr::<u32>(attr::WIDTH)? as usize;
        self.frames = self.dataset(layout::FRAMES)?;
        let fshape = self.frames.shape();
        if fshape[1] != height || fshape[2] != width {
            return Err(SessionError::WrongShape {
                path: self.path.clone(),
                dataset: layout::FRAMES.path.into(),
                expected: format!(
                    "[T, {height}, {width}] (root attributes frame_height, frame_width)"
                ),
                found: fshape,
            });
        }
        let n_times = self.dataset(layout::FRAME_TIMES)?.shape()[0];
        let n_frames = fshape[0].min(n_times);
        let complete = self.num_attr::<u8>(attr::COMPLETE).unwrap_or(0) == 1;
        if complete && fshape[0] != n_times {
            return Err(self.invalid(format!(
                "complete session has {} frames but {} frame timestamps",
                fshape[0], n_times
            )));
        }
        let clips = self.dataset(layout::CLIP_FRAMES)?.shape();
        let (n_rois, n_neurons) = match self.optional(layout::ROI_IDS)? {
            Some(ds) => (ds.shape()[0], None),
            None => (0, None),
        };
        let n_neurons = match self.optional(layout::GT_CALCIUM)? {
            Some(ds) => Some(ds.shape()[1]),
            None => n_neurons,
        };
        self.meta = SessionMeta {
            format_version: version,
            software_version: self.str_attr(attr::SOFTWARE_VERSION)?,
            start_time: self.str_attr(attr::START_TIME)?,
            end_time: self.str_attr(attr::END_TIME).ok(),
            mouse_id: self.str_attr(attr::MOUSE_ID)?,
            session_id: self.str_attr(attr::SESSION_ID)?,
            complete,
            height,
            width,
            frame_rate_hz: self.num_attr(attr::FRAME_RATE)?,
            stimulus_frame_rate_hz: self.num_attr(attr::STIM_RATE)?,
            refresh_hz: self.num_attr(attr::REFRESH)?,
            n_frames,
            n_clips: clips[0],
            frames_per_clip: clips[1],
            stimulus_height: clips[2],
            stimulus_width: clips[3],
            n_rois,
            n_neurons,
        };
        Ok(())
    }

    /// Shape of a layout dataset, `None` when that optional dataset is absent (type and rank
    /// checked against the layout). With [`Self::rows`] it lets a consumer stream a long
    /// [rows, columns] stream in bounded memory instead of reading it whole.
    pub fn shape_of(&self, spec: Spec) -> Result<Option<Vec<usize>>, SessionError> {
        Ok(self.optional(spec)?.map(|d| d.shape()))
    }

    /// A whole 1-D layout dataset, `None` when that optional dataset is absent.
    pub fn optional_vec<T: H5Type + Copy>(
        &self,
        spec: Spec,
    ) -> Result<Option<Vec<T>>, SessionError> {
        match self.optional(spec)? {
            Some(_) => self.read_vec(spec).map(Some),
            None => Ok(None),
        }
    }

    /// Rows `start..end` of a 1-D or 2-D layout dataset, row-major.
    pub fn rows<T: H5Type + Copy>(
        &self,
        spec: Spec,
        start: usize,
        end: usize,
    ) -> Result<Vec<T>, SessionError> {
        let ds = self.dataset(spec)?;
        let err = |e: hdf5::Error| SessionError::Damaged {
            path: self.path.clone(),
            message: format!(
                "reading rows {start}..{end} of `{}`: {}",
                spec.path,
                first_line(&e.to_string())
            ),
        };
        match spec.rank {
            1 => Ok(ds
                .read_slice_1d::<T, _>(ndarray::s![start..end])
                .map_err(err)?
                .iter()
                .copied()
                .collect()),
            2 => Ok(ds
                .read_slice_2d::<T, _>(ndarray::s![start..end, ..])
                .map_err(err)?
                .iter()
                .copied()
                .collect()),
            r => Err(self.invalid(format!(
                "`{}` has rank {r}; rows are read from 1-D and 2-D datasets",
                spec.path
            ))),
        }
    }

    /// A string attribute of a group (e.g. `twin`'s `model`); `None` when absent.
    pub fn group_str_attr(&self, group: &str, name: &str) -> Option<String> {
        let g = self.file.group(group).ok()?;
        let a = g.attr(name).ok()?;
        a.read_scalar::<VarLenUnicode>()
            .ok()
            .map(|v| v.as_str().to_string())
    }

    /// The deflate level of `imaging/frames` when each frame is one chunk compressed by deflate
    /// alone (`storage.compression = "deflate"`): then its chunks can be copied as stored,
    /// without decoding and encoding each frame again (an exporter's fast path).
    pub fn frame_chunks_deflated(&self) -> Option<u8> {
        let (h, w) = (self.meta.height, self.meta.width);
        if self.frames.chunk()? != [1, h, w] {
            return None;
        }
        match self.frames.filters().as_slice() {
            [hdf5::filters::Filter::Deflate(level)] => Some(*level),
            _ => None,
        }
    }

    /// Frame `i`'s chunk exactly as stored (compressed) into `buf`; returns its filter mask, or
    /// `None` for a chunk that was never written. Only for files where
    /// [`Self::frame_chunks_deflated`] holds.
    pub fn read_frame_chunk_raw(
        &self,
        i: usize,
        buf: &mut Vec<u8>,
    ) -> Result<Option<u32>, SessionError> {
        if i >= self.meta.n_frames {
            return Err(self.invalid(format!(
                "frame {i} requested, the session has {}",
                self.meta.n_frames
            )));
        }
        let ds_id = self.frames.id();
        let offset = [i as u64, 0, 0];
        let r = hdf5::sync::sync(|| unsafe {
            use hdf5_sys::{h5d, h5p};
            let mut mask: u32 = 0;
            let mut addr: u64 = 0;
            let mut size: u64 = 0;
            if h5d::H5Dget_chunk_info_by_coord(
                ds_id,
                offset.as_ptr(),
                &mut mask,
                &mut addr,
                &mut size,
            ) < 0
            {
                return Err(());
            }
            if size == 0 || addr == hdf5_sys::h5::HADDR_UNDEF {
                return Ok(None);
            }
            buf.resize(size as usize, 0);
            let mut filters: u32 = 0;
            if h5d::H5Dread_chunk(
                ds_id,
                h5p::H5P_DEFAULT,
                offset.as_ptr(),
                &mut filters,
                buf.as_mut_ptr().cast(),
            ) < 0
            {
                return Err(());
            }
            Ok(Some(filters))
        });
        r.map_err(|()| SessionError::Damaged {
            path: self.path.clone(),
            message: format!(
                "reading the stored chunk of frame {i} of `{}` failed",
                layout::FRAMES.path
            ),
        })
    }

    /// Reads frame `i` into `out` (H*W pixels, row-major).
    pub fn read_frame_into(&self, i: usize, out: &mut [u16]) -> Result<(), SessionError> {
        let (h, w) = (self.meta.height, self.meta.width);
        if i >= self.meta.n_frames {
            return Err(self.invalid(format!(
                "frame {i} requested, the session has {}",
                self.meta.n_frames
            )));
        }
        if out.len() != h * w {
            return Err(self.invalid(format!(
                "frame buffer of {} pixels for {h}x{w} frames",
                out.len()
            )));
        }
        // H5Dread straight into the caller's buffer: the replay hot path must not allocate, and
        // the high-level read_slice returns a fresh array per call.
        let ds_id = self.frames.id();
        let status = hdf5::sync::sync(|| unsafe {
            use hdf5_sys::{h5d, h5p, h5s, h5t};
            let fspace = h5d::H5Dget_space(ds_id);
            if fspace < 0 {
                return -1;
            }
            let start = [i as u64, 0, 0];
            let count = [1u64, h as u64, w as u64];
            let mut rc = h5s::H5Sselect_hyperslab(
                fspace,
                h5s::H5S_seloper_t::H5S_SELECT_SET,
                start.as_ptr(),
                std::ptr::null(),
                count.as_ptr(),
                std::ptr::null(),
            );
            if rc >= 0 {
                let mspace = h5s::H5Screate_simple(3, count.as_ptr(), std::ptr::null());
                rc = if mspace < 0 {
                    -1
                } else {
                    let r = h5d::H5Dread(
                        ds_id,
                        *h5t::H5T_NATIVE_UINT16,
                        mspace,
                        fspace,
                        h5p::H5P_DEFAULT,
                        out.as_mut_ptr().cast(),
                    );
                    h5s::H5Sclose(mspace);
                    r
                };
            }
            h5s::H5Sclose(fspace);
            rc
        });
        if status < 0 {
            return Err(SessionError::Damaged {
                path: self.path.clone(),
                message: format!("reading frame {i} of `{}` failed", layout::FRAMES.path),
            });
        }
        Ok(())
    }

    pub fn frame_times(&self) -> Result<Vec<f64>, SessionError> {
        let mut t = self.read_vec::<f64>(layout::FRAME_TIMES)?;
        t.truncate(self.meta.n_frames);
        Ok(t)
    }

    pub fn behavior(&self) -> Result<Behavior, SessionError> {
        let mut b = Behavior {
            time: self.read_vec(layout::BEHAVIOR_TIMES)?,
            running_speed: self.read_vec(layout::RUNNING_SPEED)?,
            pupil_diameter: self.read_vec(layout::PUPIL_DIAMETER)?,
        };
        let n = b
            .time
            .len()
            .min(b.running_speed.len())
            .min(b.pupil_diameter.len());
        b.time.truncate(n);
        b.running_speed.truncate(n);
        b.pupil_diameter.truncate(n);
        Ok(b)
    }

    pub fn flips(&self) -> Result<Flips, SessionError> {
        let mut f = Flips {
            time: self.read_vec(layout::FLIP_TIMES)?,
            clip: self.read_vec(layout::FLIP_CLIP)?,
            frame: self.read_vec(layout::FLIP_FRAME)?,
        };
        let n = f.time.len().min(f.clip.len()).min(f.frame.len());
        f.time.truncate(n);
        f.clip.truncate(n);
        f.frame.truncate(n);
        if let Some(bad) = f
            .clip
            .iter()
            .find(|&&c| c < -1 || c >= self.meta.n_clips as i32)
        {
            return Err(self.invalid(format!(
                "stimulus/flips/clip names clip {bad}, the library has {}",
                self.meta.n_clips
            )));
        }
        Ok(f)
    }

    pub fn trials(&self) -> Result<Trials, SessionError> {
        let mut t = Trials {
            start: self.read_vec(layout::TRIAL_START)?,
            end: self.read_vec(layout::TRIAL_END)?,
            clip: self.read_vec(layout::TRIAL_CLIP)?,
        };
        let n = t.start.len().min(t.end.len()).min(t.clip.len());
        t.start.truncate(n);
        t.end.truncate(n);
        t.clip.truncate(n);
        Ok(t)
    }

    /// Frames [F, h, w] of clip `i`.
    pub fn clip(&self, i: usize) -> Result<Vec<u8>, SessionError> {
        if i >= self.meta.n_clips {
            return Err(self.invalid(format!(
                "clip {i} requested, the library has {}",
                self.meta.n_clips
            )));
        }
        let ds = self.dataset(layout::CLIP_FRAMES)?;
        let a = ds
            .read_slice::<u8, _, ndarray::Ix3>(ndarray::s![i, .., .., ..])
            .map_err(|e| SessionError::Damaged {
                path: self.path.clone(),
                message: format!("reading clip {i}: {}", first_line(&e.to_string())),
            })?;
        Ok(a.iter().copied().collect())
    }

    /// Sync-board frame clock edges (time, count).
    pub fn frame_clock(&self) -> Result<(Vec<f64>, Vec<u32>), SessionError> {
        Ok((
            self.read_vec(layout::SYNC_FRAME_TIME)?,
            self.read_vec(layout::SYNC_FRAME_COUNT)?,
        ))
    }

    /// Photodiode edges (time, level).
    pub fn photodiode(&self) -> Result<(Vec<f64>, Vec<u8>), SessionError> {
        Ok((
            self.read_vec(layout::SYNC_PD_TIME)?,
            self.read_vec(layout::SYNC_PD_LEVEL)?,
        ))
    }

    /// Encoder samples (time, position).
    pub fn encoder(&self) -> Result<(Vec<f64>, Vec<i32>), SessionError> {
        Ok((
            self.read_vec(layout::SYNC_ENC_TIME)?,
            self.read_vec(layout::SYNC_ENC_POS)?,
        ))
    }

    /// ROI masks, checked against the frame size; `None` for a session without ROIs.
    pub fn rois(&self) -> Result<Option<RoiTable>, SessionError> {
        if !self.file.link_exists(layout::ROI_IDS.path) {
            return Ok(None);
        }
        rois_from(
            &self.file,
            &self.path,
            layout::ROIS,
            self.meta.height,
            self.meta.width,
        )
        .map(Some)
    }

    /// The true soma footprints of a simulated session (`None` for a recorded session, or one
    /// written before they were stored: see [`Self::ground_truth_params`] for the ids).
    pub fn ground_truth_footprints(&self) -> Result<Option<RoiTable>, SessionError> {
        if !self.file.link_exists(layout::GT_FOOTPRINT_IDS.path) {
            return Ok(None);
        }
        rois_from(
            &self.file,
            &self.path,
            layout::GT_FOOTPRINTS,
            self.meta.height,
            self.meta.width,
        )
        .map(Some)
    }

    /// (neurons, frames, ROI id of each neuron) of a simulated session's ground truth, without
    /// reading the [T, N] streams; `None` for a recorded session.
    pub fn ground_truth_params(&self) -> Result<Option<(usize, usize, Vec<u32>)>, SessionError> {
        let Some(cal) = self.optional(layout::GT_CALCIUM)? else {
            return Ok(None);
        };
        let n = cal.shape()[1];
        let t = cal.shape()[0]
            .min(self.dataset(layout::GT_SPIKES)?.shape()[0])
            .min(self.dataset(layout::GT_MOTION)?.shape()[0]);
        let p = "ground_truth/neurons/roi_id";
        let ids: Vec<u32> = self
            .file
            .dataset(p)
            .and_then(|d| d.read_raw::<u32>())
            .map_err(|_| SessionError::MissingDataset {
                path: self.path.clone(),
                dataset: p.into(),
            })?;
        if ids.len() != n {
            return Err(SessionError::WrongShape {
                path: self.path.clone(),
                dataset: p.into(),
                expected: format!("[{n}] (one per neuron)"),
                found: vec![ids.len()],
            });
        }
        Ok(Some((n, t, ids)))
    }

    /// Ground-truth rows `start..end`: (calcium [rows, N], spikes [rows, N], motion [rows, 2]).
    pub fn ground_truth_rows(
        &self,
        start: usize,
        end: usize,
    ) -> Result<GroundTruthRows, SessionError> {
        let err = |e: hdf5::Error| SessionError::Damaged {
            path: self.path.clone(),
            message: format!(
                "reading ground truth rows {start}..{end}: {}",
                first_line(&e.to_string())
            ),
        };
        let cal = self.dataset(layout::GT_CALCIUM)?;
        let spk = self.dataset(layout::GT_SPIKES)?;
        let mot = self.dataset(layout::GT_MOTION)?;
        let c = cal
            .read_slice_2d::<f32, _>(ndarray::s![start..end, ..])
            .map_err(err)?;
        let s = spk
            .read_slice_2d::<u8, _>(ndarray::s![start..end, ..])
            .map_err(err)?;
        let m = mot
            .read_slice_2d::<f32, _>(ndarray::s![start..end, ..])
            .map_err(err)?;
        Ok((
            c.iter().copied().collect(),
            s.iter().copied().collect(),
            m.iter().copied().collect(),
        ))
    }

    /// Parameters of every clip in the library.
    pub fn clip_params(&self) -> Result<Vec<crate::session::ClipParams>, SessionError> {
        let kind: Vec<u8> = self.read_vec(layout::CLIP_KIND)?;
        let ori: Vec<f32> = self.read_vec(layout::CLIP_ORIENTATION)?;
        let sf: Vec<f32> = self.read_vec(layout::CLIP_SF)?;
        let tf: Vec<f32> = self.read_vec(layout::CLIP_TF)?;
        let c: Vec<f32> = self.read_vec(layout::CLIP_CONTRAST)?;
        let n = self
            .meta
            .n_clips
            .min(kind.len())
            .min(ori.len())
            .min(sf.len())
            .min(tf.len())
            .min(c.len());
        Ok((0..n)
            .map(|i| crate::session::ClipParams {
                kind: kind[i],
                orientation: ori[i],
                spatial_frequency: sf[i],
                temporal_frequency: tf[i],
                contrast: c[i],
            })
            .collect())
    }

    /// Extracted traces, when the session has them.
    pub fn traces(&self) -> Result<Option<Traces>, SessionError> {
        let Some(dff) = self.optional(layout::TRACE_DFF)? else {
            return Ok(None);
        };
        let n_rois = dff.shape()[1];
        let mut t = Traces {
            n_rois,
            frame_index: self.read_vec(layout::TRACE_FRAME)?,
            time: self.read_vec(layout::TRACE_TIMES)?,
            shift: self.read_vec(layout::TRACE_SHIFT)?,
            raw: self.read_vec(layout::TRACE_RAW)?,
            corrected: self.read_vec(layout::TRACE_CORRECTED)?,
            dff: self.read_vec(layout::TRACE_DFF)?,
            spikes_frame: self.read_vec(layout::SPIKE_FRAME)?,
            spikes: self.read_vec(layout::SPIKES)?,
        };
        let rows = t
            .frame_index
            .len()
            .min(t.time.len())
            .min(t.shift.len() / 2)
            .min(t.dff.len() / n_rois.max(1))
            .min(t.raw.len() / n_rois.max(1))
            .min(t.corrected.len() / n_rois.max(1));
        t.frame_index.truncate(rows);
        t.time.truncate(rows);
        t.shift.truncate(rows * 2);
        t.raw.truncate(rows * n_rois);
        t.corrected.truncate(rows * n_rois);
        t.dff.truncate(rows * n_rois);
        let srows = t.spikes_frame.len().min(t.spikes.len() / n_rois.max(1));
        t.spikes_frame.truncate(srows);
        t.spikes.truncate(srows * n_rois);
        Ok(Some(t))
    }

    /// Ground truth of a simulated session; `None` for a recorded one.
    pub fn ground_truth(&self) -> Result<Option<GroundTruth>, SessionError> {
        let Some(cal) = self.optional(layout::GT_CALCIUM)? else {
            return Ok(None);
        };
        let n = cal.shape()[1];
        let mut neurons = NeuronTable::default();
        for (name, dtype, ..) in layout::GT_NEURON_FIELDS {
            let p = format!("ground_truth/neurons/{name}");
            let Ok(ds) = self.file.dataset(&p) else {
                return Err(SessionError::MissingDataset {
                    path: self.path.clone(),
                    dataset: p,
                });
            };
            let v: Vec<f32> = match dtype {
                Dtype::U8 => ds
                    .read_raw::<u8>()
                    .map(|v| v.into_iter().map(f32::from).collect()),
                Dtype::U32 => ds
                    .read_raw::<u32>()
                    .map(|v| v.into_iter().map(|x| x as f32).collect()),
                _ => ds.read_raw::<f32>(),
            }
            .map_err(|e| SessionError::Damaged {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
            if v.len() != n {
                return Err(SessionError::WrongShape {
                    path: self.path.clone(),
                    dataset: p,
                    expected: format!("[{n}] (one per neuron)"),
                    found: vec![v.len()],
                });
            }
            neurons.fields.push((name, v));
        }
        Ok(Some(GroundTruth {
            n_neurons: n,
            spikes: self.read_vec(layout::GT_SPIKES)?,
            calcium: self.read_vec(layout::GT_CALCIUM)?,
            motion: self.read_vec(layout::GT_MOTION)?,
            neurons,
        }))
    }
}

/// Reads ROI masks (the `rois/*` datasets) from any HDF5 file, e.g. a segmentation saved apart
/// from the session, and checks them against a `height` x `width` frame.
pub fn read_roi_file(path: &Path, height: usize, width: usize) -> Result<RoiTable, SessionError> {
    if !path.exists() {
        return Err(SessionError::NotFound {
            path: path.to_path_buf(),
        });
    }
    if !has_hdf5_signature(path).unwrap_or(false) {
        return Err(SessionError::NotHdf5 {
            path: path.to_path_buf(),
        });
    }
    let file = File::open(path).map_err(|e| SessionError::Damaged {
        path: path.to_path_buf(),
        message: first_line(&e.to_string()),
    })?;
    rois_from(&file, path, layout::ROIS, height, width)
}

fn read_checked<T: H5Type + Copy>(
    file: &File,
    path: &Path,
    spec: Spec,
) -> Result<Vec<T>, SessionError> {
    let ds = file
        .dataset(spec.path)
        .map_err(|_| SessionError::MissingDataset {
            path: path.to_path_buf(),
            dataset: spec.path.into(),
        })?;
    let desc = ds
        .dtype()
        .and_then(|t| t.to_descriptor())
        .map_err(|e| SessionError::Damaged {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if !descriptor_matches(&desc, spec.dtype) || ds.ndim() != 1 {
        return Err(SessionError::WrongType {
            path: path.to_path_buf(),
            dataset: spec.path.into(),
            expected: format!("1-D {}", spec.dtype.name()),
            found: format!("{}-D {desc}", ds.ndim()),
        });
    }
    ds.read_raw::<T>().map_err(|e| SessionError::Damaged {
        path: path.to_path_buf(),
        message: format!("reading `{}`: {}", spec.path, first_line(&e.to_string())),
    })
}

fn rois_from(
    file: &File,
    path: &Path,
    specs: layout::RoiSpecs,
    height: usize,
    width: usize,
) -> Result<RoiTable, SessionError> {
    let invalid = |message: String| SessionError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let t = RoiTable {
        height,
        width,
        ids: read_checked(file, path, specs.ids)?,
        offsets: read_checked(file, path, specs.offsets)?,
        pixels: read_checked(file, path, specs.pixels)?,
        weights: read_checked(file, path, specs.weights)?,
    };
    if t.offsets.len() != t.ids.len() + 1 {
        return Err(SessionError::WrongShape {
            path: path.to_path_buf(),
            dataset: specs.offsets.path.into(),
            expected: format!("[{}] (number of ROIs + 1)", t.ids.len() + 1),
            found: vec![t.offsets.len()],
        });
    }
    if t.pixels.len() != t.weights.len() {
        return Err(invalid(format!(
            "{} has {} entries but {} has {}",
            specs.pixels.path,
            t.pixels.len(),
            specs.weights.path,
            t.weights.len()
        )));
    }
    let nnz = t.pixels.len() as u64;
    if t.offsets.first() != Some(&0)
        || t.offsets.windows(2).any(|w| w[0] > w[1])
        || t.offsets.last() != Some(&nnz)
    {
        return Err(invalid(format!(
            "{} must rise from 0 to {nnz} (the number of ROI pixels)",
            specs.offsets.path
        )));
    }
    let npx = (height * width) as u64;
    for r in 0..t.len() {
        let (px, wt) = t.roi(r);
        if let Some(bad) = px.iter().find(|&&p| p as u64 >= npx) {
            return Err(invalid(format!(
                "ROI {} has pixel index {bad}, outside a {height}x{width} frame",
                t.ids[r]
            )));
        }
        if px.is_empty() {
            return Err(invalid(format!("ROI {} has no pixels", t.ids[r])));
        }
        if wt.iter().any(|w| !w.is_finite() || *w < 0.0) {
            return Err(invalid(format!(
                "ROI {} has a negative or non-finite weight",
                t.ids[r]
            )));
        }
    }
    Ok(t)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

fn placeholder_meta() -> SessionMeta {
    SessionMeta {
        format_version: 0,
        software_version: String::new(),
        start_time: String::new(),
        end_time: None,
        mouse_id: String::new(),
        session_id: String::new(),
        complete: false,
        height: 0,
        width: 0,
        frame_rate_hz: 0.0,
        stimulus_frame_rate_hz: 0.0,
        refresh_hz: 0.0,
        n_frames: 0,
        n_clips: 0,
        frames_per_clip: 0,
        stimulus_height: 0,
        stimulus_width: 0,
        n_rois: 0,
        n_neurons: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_held_at_a_frame_is_the_last_value_at_or_before_it() {
        let flips = Flips {
            time: vec![0.10, 0.20, 0.30],
            clip: vec![4, 4, -1],
            frame: vec![0, 1, 0],
        };
        let at = [0.05, 0.10, 0.25, 0.30, 0.90];
        assert_eq!(
            flips.shown_at(&at),
            vec![(-1, 0), (4, 0), (4, 1), (-1, 0), (-1, 0)]
        );
        let b = Behavior {
            time: vec![0.10, 0.20],
            running_speed: vec![1.0, 2.0],
            pupil_diameter: vec![0.5, 0.6],
        };
        // Before the first sample, the first sample holds.
        let (speed, pupil) = b.held_at(&at);
        assert_eq!(speed, vec![1.0, 1.0, 2.0, 2.0, 2.0]);
        assert_eq!(pupil, vec![0.5, 0.5, 0.6, 0.6, 0.6]);
        let (speed, _) = Behavior::default().held_at(&at[..2]);
        assert_eq!(speed, vec![0.0, 0.0]);
    }
}
