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

#[derive(Debug, Clone, Default)]
pub struct Trials {
    pub start: Vec<f64>,
    pub end: Vec<f64>,
    pub clip: Vec<i32>,
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
    file: File,
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

    fn invalid(&self, message: String) -> SessionError {
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

    fn optional(&self, spec: Spec) -> Result<Option<Dataset>, SessionError> {
        if self.file.link_exists(spec.path) {
            self.dataset(spec).map(Some)
        } else {
            Ok(None)
        }
    }

    fn read_vec<T: H5Type + Copy>(&self, spec: Spec) -> Result<Vec<T>, SessionError> {
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
        let a = self
            .frames
            .read_slice_2d::<u16, _>(ndarray::s![i, .., ..])
            .map_err(|e| SessionError::Damaged {
                path: self.path.clone(),
                message: format!("reading frame {i}: {}", first_line(&e.to_string())),
            })?;
        match a.as_slice() {
            Some(s) => out.copy_from_slice(s),
            None => out.iter_mut().zip(a.iter()).for_each(|(o, v)| *o = *v),
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
        let t = RoiTable {
            height: self.meta.height,
            width: self.meta.width,
            ids: self.read_vec(layout::ROI_IDS)?,
            offsets: self.read_vec(layout::ROI_OFFSETS)?,
            pixels: self.read_vec(layout::ROI_PIXELS)?,
            weights: self.read_vec(layout::ROI_WEIGHTS)?,
        };
        if t.offsets.len() != t.ids.len() + 1 {
            return Err(SessionError::WrongShape {
                path: self.path.clone(),
                dataset: layout::ROI_OFFSETS.path.into(),
                expected: format!("[{}] (number of ROIs + 1)", t.ids.len() + 1),
                found: vec![t.offsets.len()],
            });
        }
        if t.pixels.len() != t.weights.len() {
            return Err(self.invalid(format!(
                "rois/pixels has {} entries but rois/weights has {}",
                t.pixels.len(),
                t.weights.len()
            )));
        }
        let nnz = t.pixels.len() as u64;
        if t.offsets.first() != Some(&0)
            || t.offsets.windows(2).any(|w| w[0] > w[1])
            || t.offsets.last() != Some(&nnz)
        {
            return Err(self.invalid(format!(
                "rois/offsets must rise from 0 to {nnz} (the number of ROI pixels)"
            )));
        }
        let npx = (self.meta.height * self.meta.width) as u32;
        for r in 0..t.len() {
            let (px, _) = t.roi(r);
            if let Some(bad) = px.iter().find(|&&p| p >= npx) {
                return Err(self.invalid(format!(
                    "ROI {} has pixel index {bad}, outside a {}x{} frame",
                    t.ids[r], self.meta.height, self.meta.width
                )));
            }
        }
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
