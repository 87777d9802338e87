//! Scores extraction against a simulated session's ground truth while the pipeline runs, in memory
//! that does not grow with session length: streaming Pearson sums per ROI, ground truth read in
//! blocks of rows.

use std::collections::VecDeque;

use serde::Serialize;

use crate::session::{SessionError, SessionReader};

const BLOCK: usize = 256;
const LIVE_ROWS: usize = 1024;

/// Streaming Pearson correlation of many pairs of series.
#[derive(Debug, Clone)]
pub struct PearsonSums {
    n: Vec<f64>,
    sx: Vec<f64>,
    sy: Vec<f64>,
    sxx: Vec<f64>,
    syy: Vec<f64>,
    sxy: Vec<f64>,
}

impl PearsonSums {
    pub fn new(k: usize) -> Self {
        PearsonSums {
            n: vec![0.0; k],
            sx: vec![0.0; k],
            sy: vec![0.0; k],
            sxx: vec![0.0; k],
            syy: vec![0.0; k],
            sxy: vec![0.0; k],
        }
    }

    #[inline]
    pub fn add(&mut self, i: usize, x: f64, y: f64) {
        if !(x.is_finite() && y.is_finite()) {
            return;
        }
        self.n[i] += 1.0;
        self.sx[i] += x;
        self.sy[i] += y;
        self.sxx[i] += x * x;
        self.syy[i] += y * y;
        self.sxy[i] += x * y;
    }

    /// Takes a pair out again (sliding windows).
    #[inline]
    pub fn remove(&mut self, i: usize, x: f64, y: f64) {
        if !(x.is_finite() && y.is_finite()) {
            return;
        }
        self.n[i] -= 1.0;
        self.sx[i] -= x;
        self.sy[i] -= y;
        self.sxx[i] -= x * x;
        self.syy[i] -= y * y;
        self.sxy[i] -= x * y;
    }

    /// Correlation of pair `i`; `None` when either series is constant.
    pub fn corr(&self, i: usize) -> Option<f64> {
        let n = self.n[i];
        if n < 3.0 {
            return None;
        }
        let cov = self.sxy[i] - self.sx[i] * self.sy[i] / n;
        let vx = self.sxx[i] - self.sx[i] * self.sx[i] / n;
        let vy = self.syy[i] - self.sy[i] * self.sy[i] / n;
        (vx > 1e-12 && vy > 1e-12).then(|| cov / (vx * vy).sqrt())
    }

    pub fn median(&self) -> Option<f64> {
        let mut v: Vec<f64> = (0..self.n.len()).filter_map(|i| self.corr(i)).collect();
        median(&mut v)
    }
}

pub fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    })
}

/// Where the ROI masks extraction was scored with came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskSource {
    /// The simulator's own footprints (a simulated rig without `--rois`): perfect masks, so the
    /// figures are an upper bound on what ROIs from a segmentation would get.
    SimulatorFootprints,
    /// The session's own ROI table (a replay without `--rois`): for a `rig simulate` session,
    /// the simulator's footprints, so again an upper bound.
    SessionRois,
    /// Masks given with `--rois`.
    Given,
}

impl MaskSource {
    /// How the report should qualify the figures.
    pub fn caveat(self) -> &'static str {
        match self {
            MaskSource::SimulatorFootprints => {
                "ROI masks are the simulator's own footprints: an upper bound"
            }
            MaskSource::SessionRois => {
                "ROI masks are the session's own (for a simulated session, the simulator's \
                 footprints: an upper bound)"
            }
            MaskSource::Given => "ROI masks given with --rois",
        }
    }
}

/// Accuracy against ground truth.
#[derive(Debug, Clone, Serialize)]
pub struct Accuracy {
    /// Which masks these figures were scored with (perfect masks give an upper bound).
    pub masks: MaskSource,
    pub rois_scored: usize,
    /// Median over ROIs of corr(extracted dF/F, true calcium).
    pub median_dff_calcium_corr: Option<f64>,
    /// RMS of (estimated - true) shift after removing the constant offset between them (the
    /// reference image is itself an average of shifted frames, so a constant offset is expected).
    pub motion_rms_error_px: Option<f64>,
    /// The constant offset removed, (dy, dx).
    pub motion_offset_px: Option<[f64; 2]>,
    /// Median over ROIs of corr(deconvolved events, true spikes per frame).
    pub median_events_spikes_corr: Option<f64>,
    /// Median over ROIs of corr(dF/F, true spikes per frame): what deconvolution must beat.
    pub median_dff_spikes_corr: Option<f64>,
}

struct Block {
    start: usize,
    rows: usize,
    calcium: Vec<f32>,
    spikes: Vec<u8>,
    motion: Vec<f32>,
}

pub struct GroundTruthScorer {
    /// Where ground truth comes from: the session file (replay) or the live event stream (a
    /// simulated rig in the loop).
    reader: Option<SessionReader>,
    live: VecDeque<Box<crate::pipeline::events::TruthRow>>,
    n_neurons: usize,
    n_frames: usize,
    /// For each ROI (extraction order), its neuron column in the ground truth.
    roi_neuron: Vec<Option<usize>>,
    blocks: VecDeque<Block>,
    dff_calcium: PearsonSums,
    events_spikes: PearsonSums,
    dff_spikes: PearsonSums,
    motion_n: f64,
    motion_s: [f64; 2],
    motion_ss: [f64; 2],
    masks: MaskSource,
}

impl GroundTruthScorer {
    /// Records where the scored ROI masks came from (the report labels its figures with it).
    pub fn with_masks(mut self, masks: MaskSource) -> Self {
        self.masks = masks;
        self
    }

    /// `None` when the session has no ground truth.
    pub fn open(path: &std::path::Path, roi_ids: &[u32]) -> Result<Option<Self>, SessionError> {
        let reader = SessionReader::open(path)?;
        let Some(gt) = reader.ground_truth_params()? else {
            return Ok(None);
        };
        let (n_neurons, n_frames, neuron_roi) = gt;
        let roi_neuron = roi_ids
            .iter()
            .map(|id| neuron_roi.iter().position(|&r| r == *id))
            .collect();
        let k = roi_ids.len();
        Ok(Some(GroundTruthScorer {
            reader: Some(reader),
            live: VecDeque::new(),
            n_neurons,
            n_frames,
            roi_neuron,
            blocks: VecDeque::new(),
            dff_calcium: PearsonSums::new(k),
            events_spikes: PearsonSums::new(k),
            dff_spikes: PearsonSums::new(k),
            motion_n: 0.0,
            motion_s: [0.0; 2],
            motion_ss: [0.0; 2],
            masks: MaskSource::SessionRois,
        }))
    }

    /// A scorer fed by `push_truth` (a simulated rig in the loop). `neuron_roi`: ROI id of each
    /// neuron column; `roi_ids`: ROIs in extraction order.
    pub fn live(roi_ids: &[u32], neuron_roi: &[u32]) -> Self {
        let k = roi_ids.len();
        GroundTruthScorer {
            reader: None,
            live: VecDeque::with_capacity(LIVE_ROWS),
            n_neurons: neuron_roi.len(),
            n_frames: usize::MAX,
            roi_neuron: roi_ids
                .iter()
                .map(|id| neuron_roi.iter().position(|&r| r == *id))
                .collect(),
            blocks: VecDeque::new(),
            dff_calcium: PearsonSums::new(k),
            events_spikes: PearsonSums::new(k),
            dff_spikes: PearsonSums::new(k),
            motion_n: 0.0,
            motion_s: [0.0; 2],
            motion_ss: [0.0; 2],
            masks: MaskSource::SimulatorFootprints,
        }
    }

    /// Keeps a copy of one live ground-truth row (the last `LIVE_ROWS` frames are kept: enough
    /// for the analysis queue and the deconvolution lag).
    pub fn push_truth(&mut self, row: &crate::pipeline::events::TruthRow) {
        let mut slot = if self.live.len() >= LIVE_ROWS {
            self.live
                .pop_front()
                .unwrap_or_else(|| Box::new(row.clone()))
        } else {
            Box::new(row.clone())
        };
        slot.frame = row.frame;
        slot.spikes.clone_from(&row.spikes);
        slot.calcium.clone_from(&row.calcium);
        slot.motion = row.motion;
        self.live.push_back(slot);
    }

    fn block_for(&mut self, frame: usize) -> Result<Option<usize>, SessionError> {
        if frame >= self.n_frames {
            return Ok(None);
        }
        if let Some(i) = self
            .blocks
            .iter()
            .position(|b| frame >= b.start && frame < b.start + b.rows)
        {
            return Ok(Some(i));
        }
        let start = frame - frame % BLOCK;
        let end = (start + BLOCK).min(self.n_frames);
        let Some(reader) = self.reader.as_ref() else {
            return Ok(None);
        };
        let (calcium, spikes, motion) = reader.ground_truth_rows(start, end)?;
        // The deconvolution lags analysis by a couple of seconds: keep a few blocks.
        if self.blocks.len() >= 4 {
            self.blocks.pop_front();
        }
        self.blocks.push_back(Block {
            start,
            rows: end - start,
            calcium,
            spikes,
            motion,
        });
        Ok(Some(self.blocks.len() - 1))
    }

    /// Calls `f(calcium_row, spikes_row, motion)` with the ground truth of `frame`, if known.
    fn with_truth(
        &mut self,
        frame: usize,
        f: impl FnOnce(&mut Self, &[f32], &[u8], [f32; 2]),
    ) -> Result<(), SessionError> {
        let n = self.n_neurons;
        if self.reader.is_none() {
            let Some(i) = self.live.iter().rposition(|r| r.frame as usize == frame) else {
                return Ok(());
            };
            let row = self.live[i].clone();
            f(self, &row.calcium, &row.spikes, row.motion);
            return Ok(());
        }
        let Some(b) = self.block_for(frame)? else {
            return Ok(());
        };
        let b = &self.blocks[b];
        let row = frame - b.start;
        let calcium = b.calcium[row * n..(row + 1) * n].to_vec();
        let spikes = b.spikes[row * n..(row + 1) * n].to_vec();
        let motion = [b.motion[row * 2], b.motion[row * 2 + 1]];
        f(self, &calcium, &spikes, motion);
        Ok(())
    }

    /// Scores one analysed frame.
    pub fn add_frame(
        &mut self,
        frame: u64,
        dff: &[f32],
        shift: [f32; 2],
    ) -> Result<(), SessionError> {
        self.with_truth(frame as usize, |s, calcium, spikes, motion| {
            for (r, &d) in dff.iter().enumerate() {
                if let Some(Some(j)) = s.roi_neuron.get(r).copied() {
                    s.dff_calcium.add(r, d as f64, calcium[j] as f64);
                    s.dff_spikes.add(r, d as f64, spikes[j] as f64);
                }
            }
            for (a, &est) in shift.iter().enumerate() {
                let e = est as f64 - motion[a] as f64;
                s.motion_s[a] += e;
                s.motion_ss[a] += e * e;
            }
            s.motion_n += 1.0;
        })
    }

    /// Scores one row of deconvolved events belonging to `frame`.
    pub fn add_events(&mut self, frame: u64, events: &[f32]) -> Result<(), SessionError> {
        self.with_truth(frame as usize, |s, _calcium, spikes, _motion| {
            for (r, &e) in events.iter().enumerate() {
                if let Some(Some(j)) = s.roi_neuron.get(r).copied() {
                    s.events_spikes.add(r, e as f64, spikes[j] as f64);
                }
            }
        })
    }

    pub fn accuracy(&self) -> Accuracy {
        let (rms, offset) = if self.motion_n > 1.0 {
            let n = self.motion_n;
            let mean = [self.motion_s[0] / n, self.motion_s[1] / n];
            let var: f64 = (0..2)
                .map(|a| (self.motion_ss[a] / n - mean[a] * mean[a]).max(0.0))
                .sum();
            (Some(var.sqrt()), Some(mean))
        } else {
            (None, None)
        };
        Accuracy {
            masks: self.masks,
            rois_scored: self.roi_neuron.iter().filter(|r| r.is_some()).count(),
            median_dff_calcium_corr: self.dff_calcium.median(),
            motion_rms_error_px: rms,
            motion_offset_px: offset,
            median_events_spikes_corr: self.events_spikes.median(),
            median_dff_spikes_corr: self.dff_spikes.median(),
        }
    }
}
