//! What a recorded session showed and measured, on the imaging frame clock: the stimulus frame on
//! screen at each imaging frame (display flips + clip library), behaviour at frame times, and the
//! measured responses (extracted dF/F traces when the session has them, else simulated ground
//! truth calcium).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::TwinError;
use crate::session::SessionReader;

/// Mean gray of the blank screen in 8-bit luminance units.
pub const GRAY: f32 = 127.5;
/// Extracted dF/F traces [T, R] (columns in ROI table order), written by the online extractor.
pub const TRACES_DFF: &str = "traces/dff";
/// Imaging frame of each trace row [A] (the extractor may skip frames).
pub const TRACES_FRAME_INDEX: &str = "traces/frame_index";

/// Where the measured responses came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TargetSource {
    #[serde(rename = "traces/dff")]
    Traces,
    #[serde(rename = "ground_truth/calcium")]
    GroundTruth,
}

impl std::fmt::Display for TargetSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TargetSource::Traces => "traces/dff (extracted dF/F)",
            TargetSource::GroundTruth => "ground_truth/calcium (simulated true dF/F)",
        })
    }
}

/// Measured responses [T, R] of the session's ROIs.
#[derive(Debug, Clone)]
pub struct Targets {
    pub source: TargetSource,
    pub roi_ids: Vec<u32>,
    /// [T, R], row-major.
    pub data: Vec<f32>,
}

impl Targets {
    pub fn n(&self) -> usize {
        self.roi_ids.len()
    }
    /// Column of ROI `id`.
    pub fn column(&self, id: u32) -> Option<usize> {
        self.roi_ids.iter().position(|&r| r == id)
    }
}

/// A session on its imaging frame clock.
pub struct SessionData {
    pub path: PathBuf,
    pub n_frames: usize,
    pub frame_times: Vec<f64>,
    pub height: usize,
    pub width: usize,
    pub frames_per_clip: usize,
    /// Clip library, each [F, h, w].
    pub clips: Vec<Vec<u8>>,
    /// Stimulus family of each library clip (`stimulus/clips/kind`,
    /// `twin::evaluate::FAMILIES` order).
    pub kinds: Vec<u8>,
    /// (clip, frame) on screen at each imaging frame; clip -1 = gray.
    pub shown: Vec<(i32, u32)>,
    pub running_speed: Vec<f32>,
    pub pupil_diameter: Vec<f32>,
    pub trials: crate::session::reader::Trials,
    pub targets: Option<Targets>,
    pub mouse_id: String,
    pub session_id: String,
}

fn data_err(path: &Path, message: String) -> TwinError {
    TwinError::Data {
        path: path.to_path_buf(),
        message,
    }
}

impl SessionData {
    /// Reads a session; `need_targets` makes missing responses an error.
    pub fn open(path: &Path, need_targets: bool) -> Result<SessionData, TwinError> {
        let r = SessionReader::open(path)?;
        let meta = r.meta().clone();
        let frame_times = r.frame_times()?;
        let t = frame_times.len();
        if t == 0 {
            return Err(data_err(path, "session has no imaging frames".into()));
        }
        let mut clips = Vec::with_capacity(meta.n_clips);
        for i in 0..meta.n_clips {
            clips.push(r.clip(i)?);
        }
        let kinds: Vec<u8> = r.clip_params()?.iter().map(|p| p.kind).collect();
        let shown = r.flips()?.shown_at(&frame_times);
        for (i, &(c, f)) in shown.iter().enumerate() {
            if c >= 0 && f as usize >= meta.frames_per_clip {
                return Err(data_err(
                    path,
                    format!(
                        "imaging frame {i}: flips name frame {f} of clip {c}, clips have {} frames",
                        meta.frames_per_clip
                    ),
                ));
            }
        }
        let b = r.behavior()?;
        if b.time.is_empty() {
            return Err(data_err(path, "session has no behaviour samples".into()));
        }
        let (running_speed, pupil_diameter) = b.held_at(&frame_times);
        let trials = r.trials()?;
        let targets = read_targets(&r, path, t)?;
        if need_targets && targets.is_none() {
            return Err(data_err(
                path,
                format!("no measured responses: neither `{TRACES_DFF}` nor `ground_truth/calcium`"),
            ));
        }
        Ok(SessionData {
            path: path.to_path_buf(),
            n_frames: t,
            frame_times,
            height: meta.stimulus_height,
            width: meta.stimulus_width,
            frames_per_clip: meta.frames_per_clip,
            clips,
            kinds,
            shown,
            running_speed,
            pupil_diameter,
            trials,
            targets,
            mouse_id: meta.mouse_id.clone(),
            session_id: meta.session_id.clone(),
        })
    }

    /// Writes the stimulus on screen at imaging frame `i` (luminance 0..255) into `out`.
    pub fn stimulus_into(&self, i: usize, out: &mut [f32]) {
        let (c, f) = self.shown[i];
        if c < 0 {
            out.iter_mut().for_each(|v| *v = GRAY);
        } else {
            let n = self.height * self.width;
            let src = &self.clips[c as usize][f as usize * n..(f as usize + 1) * n];
            out.iter_mut().zip(src).for_each(|(o, &s)| *o = s as f32);
        }
    }

    /// Writes the behaviour channels at imaging frame `i` into `out`.
    pub fn behavior_into(&self, i: usize, channels: &[String], out: &mut [f32]) {
        for (o, c) in out.iter_mut().zip(channels) {
            *o = super::behavior_input(
                c,
                match c.as_str() {
                    "running_speed" => self.running_speed[i],
                    "pupil_diameter" => self.pupil_diameter[i],
                    _ => 0.0,
                },
            );
        }
    }

    /// The twin stepped through the session's stimulus and behaviour from rest: [T, N], one row
    /// per imaging frame. `progress(t)` is called every 64 frames.
    pub fn predict(
        &self,
        twin: &mut super::Twin,
        progress: &dyn Fn(usize),
    ) -> Result<Vec<f32>, TwinError> {
        let c = twin.contract().clone();
        let (t_n, n) = (self.n_frames, c.n_neurons);
        let mut pred = vec![0f32; t_n * n];
        let mut st = twin.new_state();
        let mut stim = vec![0f32; c.stimulus_len()];
        let mut beh = vec![0f32; c.n_behavior()];
        for t in 0..t_n {
            self.stimulus_into(t, &mut stim);
            self.behavior_into(t, &c.behavior_channels, &mut beh);
            twin.step(&mut st, &stim, &beh, &mut pred[t * n..(t + 1) * n])?;
            if t % 64 == 0 {
                progress(t);
            }
        }
        Ok(pred)
    }

    /// Checks that the session can feed a twin's stimulus size and behaviour channels.
    pub fn check_compatible(&self, c: &super::Contract, model: &Path) -> Result<(), TwinError> {
        let mut problems = Vec::new();
        if (c.height, c.width) != (self.height, self.width) {
            problems.push(format!(
                "stimulus size: model {} expects {}x{} (HxW), session has {}x{}",
                model.display(),
                c.height,
                c.width,
                self.height,
                self.width
            ));
        }
        for ch in &c.behavior_channels {
            if !matches!(ch.as_str(), "running_speed" | "pupil_diameter") {
                problems.push(format!(
                    "behaviour channel `{ch}`: the model needs it, the session does not record it"
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(data_err(&self.path, problems.join("; ")))
        }
    }
}

fn read_targets(r: &SessionReader, path: &Path, t: usize) -> Result<Option<Targets>, TwinError> {
    // Extracted traces, when a later stage has written them.
    let f = hdf5::File::open(path).map_err(|e| data_err(path, e.to_string()))?;
    if let Ok(ds) = f.dataset(TRACES_DFF) {
        let shape = ds.shape();
        if shape.len() != 2 {
            return Err(data_err(
                path,
                format!("dataset `{TRACES_DFF}` has shape {shape:?}, expected [T, R]"),
            ));
        }
        let data: Vec<f32> = ds
            .read_raw::<f32>()
            .map_err(|e| data_err(path, format!("reading `{TRACES_DFF}`: {e}")))?;
        let rois = r.rois()?.ok_or_else(|| {
            data_err(
                path,
                format!("`{TRACES_DFF}` present but the ROI table is missing"),
            )
        })?;
        if rois.ids.len() != shape[1] {
            return Err(data_err(
                path,
                format!(
                    "`{TRACES_DFF}` has {} columns, the ROI table {} ROIs",
                    shape[1],
                    rois.ids.len()
                ),
            ));
        }
        let r = shape[1];
        // Analysis may skip frames: row a holds imaging frame traces/frame_index[a]. Frames
        // without a row stay NaN and are left out of fits and scores.
        let data = match f.dataset(TRACES_FRAME_INDEX) {
            Ok(ix) => {
                let ix: Vec<u64> = ix
                    .read_raw::<u64>()
                    .map_err(|e| data_err(path, format!("reading `{TRACES_FRAME_INDEX}`: {e}")))?;
                let mut out = vec![f32::NAN; t * r];
                for (a, &fi) in ix.iter().enumerate().take(shape[0]) {
                    let fi = fi as usize;
                    if fi < t {
                        out[fi * r..(fi + 1) * r].copy_from_slice(&data[a * r..(a + 1) * r]);
                    }
                }
                out
            }
            Err(_) => pad_rows(data, r, shape[0].min(t), t),
        };
        return Ok(Some(Targets {
            source: TargetSource::Traces,
            roi_ids: rois.ids.clone(),
            data,
        }));
    }
    let Some(gt) = r.ground_truth()? else {
        return Ok(None);
    };
    let n = gt.n_neurons;
    let ids: Vec<u32> = match gt.neuron_field("roi_id") {
        Some(v) => v.iter().map(|&x| x as u32).collect(),
        None => (0..n as u32).collect(),
    };
    let rows = (gt.calcium.len() / n.max(1)).min(t);
    Ok(Some(Targets {
        source: TargetSource::GroundTruth,
        roi_ids: ids,
        data: pad_rows(gt.calcium, n, rows, t),
    }))
}

/// Keeps `rows` rows of a [_, n] matrix and pads with NaN up to `t` rows (frames without a
/// measurement are skipped by the metrics).
fn pad_rows(mut data: Vec<f32>, n: usize, rows: usize, t: usize) -> Vec<f32> {
    data.truncate(rows * n);
    data.resize(t * n, f32::NAN);
    data
}
