//! Reading back what a run computed, beside what it recorded: the twin's predictions and
//! comparison (`twin/`), the presenter's flip reports (`presenter/flips/`) and the pipeline's
//! latency histograms (`latency/<stage>/`). All are optional groups; each reader returns `None`
//! (or nothing) for a session without them, and cuts parallel streams to the rows present in all,
//! like the rest of the reader (a crashed session may lack the last flush of some).

use hdf5::types::VarLenUnicode;

use super::error::{first_line, SessionError};
use super::layout;
use super::SessionReader;

/// The `twin/` group of a session run with the twin in the loop.
#[derive(Debug, Clone, Default)]
pub struct TwinResults {
    /// ROI id of each compared neuron (M), the column order of every [.., M] dataset.
    pub roi_id: Vec<u32>,
    pub frame_index: Vec<u64>,
    pub time: Vec<f64>,
    /// Predicted dF/F [P, M], row-major.
    pub predicted: Vec<f32>,
    pub population_fidelity: Vec<f64>,
    pub alarm: Vec<u8>,
    pub trial_clip: Vec<i32>,
    pub trial_start_frame: Vec<u64>,
    /// Mean predicted / measured dF/F per trial [K, M].
    pub trial_predicted: Vec<f32>,
    pub trial_measured: Vec<f32>,
    /// Whole-session correlation per neuron; `None` until the session ended cleanly.
    pub session_corr: Option<Vec<f32>>,
    pub model: Option<String>,
    pub device: Option<String>,
    pub median_session_corr: Option<f64>,
    pub reference_fidelity: Option<f64>,
    pub alarms: Option<u64>,
    pub frames_skipped: Option<u64>,
}

impl TwinResults {
    pub fn neurons(&self) -> usize {
        self.roi_id.len()
    }

    pub fn rows(&self) -> usize {
        self.frame_index.len()
    }

    pub fn trials(&self) -> usize {
        self.trial_clip.len()
    }
}

/// The presenter's flip reports (`presenter/flips/*`).
#[derive(Debug, Clone, Default)]
pub struct PresenterFlips {
    pub time: Vec<f64>,
    pub seq: Vec<u64>,
    pub missed: Vec<u32>,
}

/// One pipeline stage's latency histogram: HdrHistogram bucket upper edges and counts.
#[derive(Debug, Clone)]
pub struct StageLatency {
    pub stage: String,
    pub value_us: Vec<u64>,
    pub count: Vec<u64>,
}

impl SessionReader {
    /// The twin's outputs; `None` for a session recorded without the twin in the loop.
    pub fn twin(&self) -> Result<Option<TwinResults>, SessionError> {
        let Some(ids) = self.optional(layout::TWIN_ROI_ID)? else {
            return Ok(None);
        };
        let m = ids.shape()[0];
        let mut t = TwinResults {
            roi_id: self.read_vec(layout::TWIN_ROI_ID)?,
            frame_index: self.read_vec(layout::TWIN_FRAME)?,
            time: self.read_vec(layout::TWIN_TIMES)?,
            predicted: self.read_vec(layout::TWIN_PREDICTED)?,
            population_fidelity: self.read_vec(layout::TWIN_FIDELITY)?,
            alarm: self.read_vec(layout::TWIN_ALARM)?,
            trial_clip: self.read_vec(layout::TWIN_TRIAL_CLIP)?,
            trial_start_frame: self.read_vec(layout::TWIN_TRIAL_START)?,
            trial_predicted: self.read_vec(layout::TWIN_TRIAL_PREDICTED)?,
            trial_measured: self.read_vec(layout::TWIN_TRIAL_MEASURED)?,
            ..Default::default()
        };
        for (spec, len) in [
            (layout::TWIN_PREDICTED, t.predicted.len()),
            (layout::TWIN_TRIAL_PREDICTED, t.trial_predicted.len()),
            (layout::TWIN_TRIAL_MEASURED, t.trial_measured.len()),
        ] {
            if m > 0 && len % m != 0 {
                return Err(self.invalid(format!(
                    "`{}` holds {len} values, not rows of {m} neurons (twin/roi_id)",
                    spec.path
                )));
            }
        }
        let rows = t
            .frame_index
            .len()
            .min(t.time.len())
            .min(t.population_fidelity.len())
            .min(t.alarm.len())
            .min(t.predicted.len() / m.max(1));
        t.frame_index.truncate(rows);
        t.time.truncate(rows);
        t.population_fidelity.truncate(rows);
        t.alarm.truncate(rows);
        t.predicted.truncate(rows * m);
        let trials = t
            .trial_clip
            .len()
            .min(t.trial_start_frame.len())
            .min(t.trial_predicted.len() / m.max(1))
            .min(t.trial_measured.len() / m.max(1));
        t.trial_clip.truncate(trials);
        t.trial_start_frame.truncate(trials);
        t.trial_predicted.truncate(trials * m);
        t.trial_measured.truncate(trials * m);
        if self.optional(layout::TWIN_SESSION_CORR)?.is_some() {
            let c: Vec<f32> = self.read_vec(layout::TWIN_SESSION_CORR)?;
            if c.len() != m {
                return Err(SessionError::WrongShape {
                    path: self.path().to_path_buf(),
                    dataset: layout::TWIN_SESSION_CORR.path.into(),
                    expected: format!("[{m}] (one per twin/roi_id)"),
                    found: vec![c.len()],
                });
            }
            t.session_corr = Some(c);
        }
        if let Ok(g) = self.file.group("twin") {
            let names = g.attr_names().unwrap_or_default();
            let has = |n: &str| names.iter().any(|a| a == n);
            let text = |n: &str| {
                has(n)
                    .then(|| {
                        g.attr(n)
                            .and_then(|a| a.read_scalar::<VarLenUnicode>())
                            .ok()
                    })
                    .flatten()
                    .map(|v| v.as_str().to_string())
            };
            let float = |n: &str| {
                has(n)
                    .then(|| g.attr(n).and_then(|a| a.read_scalar::<f64>()).ok())
                    .flatten()
                    .filter(|v| v.is_finite())
            };
            let count = |n: &str| {
                has(n)
                    .then(|| g.attr(n).and_then(|a| a.read_scalar::<u64>()).ok())
                    .flatten()
            };
            t.model = text("model");
            t.device = text("device");
            t.median_session_corr = float("median_session_corr");
            t.reference_fidelity = float("reference_fidelity");
            t.alarms = count("alarms");
            t.frames_skipped = count("frames_skipped");
        }
        Ok(Some(t))
    }

    /// The presenter's flip reports; `None` when the session has none (no presenter, or a
    /// writer older than the group).
    pub fn presenter_flips(&self) -> Result<Option<PresenterFlips>, SessionError> {
        if self.optional(layout::PRESENTER_TIME)?.is_none() {
            return Ok(None);
        }
        let mut p = PresenterFlips {
            time: self.read_vec(layout::PRESENTER_TIME)?,
            seq: self.read_vec(layout::PRESENTER_SEQ)?,
            missed: self.read_vec(layout::PRESENTER_MISSED)?,
        };
        let n = p.time.len().min(p.seq.len()).min(p.missed.len());
        p.time.truncate(n);
        p.seq.truncate(n);
        p.missed.truncate(n);
        Ok((n > 0).then_some(p))
    }

    /// Every stage's latency histogram, in the file's (alphabetical) order; empty when the run
    /// wrote none (a simulated session, or one that did not end cleanly).
    pub fn latency(&self) -> Result<Vec<StageLatency>, SessionError> {
        let Ok(g) = self.file.group("latency") else {
            return Ok(Vec::new());
        };
        let stages = g.member_names().map_err(|e| SessionError::Damaged {
            path: self.path().to_path_buf(),
            message: format!("listing `latency`: {}", first_line(&e.to_string())),
        })?;
        let mut out = Vec::new();
        for stage in stages {
            let read = |name: &str| -> Result<Vec<u64>, SessionError> {
                let p = format!("latency/{stage}/{name}");
                let ds = self
                    .file
                    .dataset(&p)
                    .map_err(|_| SessionError::MissingDataset {
                        path: self.path().to_path_buf(),
                        dataset: p.clone(),
                    })?;
                ds.read_raw::<u64>().map_err(|e| SessionError::WrongType {
                    path: self.path().to_path_buf(),
                    dataset: p,
                    expected: "1-D u64".into(),
                    found: first_line(&e.to_string()),
                })
            };
            let mut value_us = read("value_us")?;
            let mut count = read("count")?;
            let n = value_us.len().min(count.len());
            value_us.truncate(n);
            count.truncate(n);
            out.push(StageLatency {
                stage,
                value_us,
                count,
            });
        }
        Ok(out)
    }
}
