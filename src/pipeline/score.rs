//! Scores extraction against a simulated session's ground truth while the pipeline runs, in memory
//! that does not grow with session length: streaming Pearson sums per ROI, ground truth read in
//! blocks of rows.

use std::collections::VecDeque;

use serde::Serialize;

use crate::extract::pairing::{pair_by_overlap, Pairing, MIN_OVERLAP};
use crate::session::{RoiTable, SessionError, SessionReader};

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

/// How ROIs were paired with true neurons for scoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PairedBy {
    /// By spatial overlap with the true footprints (extract::pairing).
    Overlap,
    /// By ROI id, for sessions written before the true footprints were stored: right only when
    /// the session's ROIs are the simulator's own footprints.
    Id,
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
    pub paired_by: PairedBy,
    /// ROIs extracted, and true neurons in the session.
    pub rois: usize,
    pub neurons: usize,
    /// ROIs paired with a neuron (the rest are not scored).
    pub rois_scored: usize,
    /// Median weighted-Jaccard overlap of the scored ROIs with their neurons (1 when the ROIs
    /// are the true footprints: the figures are then an upper bound for real masks).
    pub median_overlap: Option<f64>,
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

/// Pairs ROIs with neuron columns through the footprints' ids (`neuron_roi`: footprint id of
/// each neuron column).
fn pairing(rois: &RoiTable, footprints: &RoiTable, neuron_roi: &[u32]) -> Pairing {
    let mut p = pair_by_overlap(rois, footprints, MIN_OVERLAP);
    for (n, o) in p.roi_neuron.iter_mut().zip(&mut p.overlap) {
        *n = n.and_then(|j| neuron_roi.iter().position(|&id| id == footprints.ids[j]));
        if n.is_none() {
            *o = 0.0;
        }
    }
    p
}

fn pairing_by_id(roi_ids: &[u32], neuron_roi: &[u32]) -> Pairing {
    let roi_neuron: Vec<Option<usize>> = roi_ids
        .iter()
        .map(|id| neuron_roi.iter().position(|&r| r == *id))
        .collect();
    let overlap = roi_neuron
        .iter()
        .map(|n| if n.is_some() { 1.0 } else { 0.0 })
        .collect();
    Pairing {
        roi_neuron,
        overlap,
    }
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
    paired_by: PairedBy,
    /// For each ROI (extraction order), its neuron column in the ground truth.
    pairing: Pairing,
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

    /// `None` when the session has no ground truth. `rois`: the ROIs in extraction order,
    /// paired with the session's true footprints by overlap (by id, with a warning, in a
    /// session that predates stored footprints).
    pub fn open(path: &std::path::Path, rois: &RoiTable) -> Result<Option<Self>, SessionError> {
        let reader = SessionReader::open(path)?;
        let Some(gt) = reader.ground_truth_params()? else {
            return Ok(None);
        };
        let (n_neurons, n_frames, neuron_roi) = gt;
        let (paired_by, pairing) = match reader.ground_truth_footprints()? {
            Some(footprints) => (PairedBy::Overlap, pairing(rois, &footprints, &neuron_roi)),
            None => {
                tracing::warn!(
                    "{} has no true footprints (written by an older rig): ROIs are paired with \
                     neurons by id, which is right only if they are the simulator's own masks",
                    path.display()
                );
                (PairedBy::Id, pairing_by_id(&rois.ids, &neuron_roi))
            }
        };
        let mut s = Self::new(paired_by, pairing, n_neurons);
        s.reader = Some(reader);
        s.n_frames = n_frames;
        Ok(Some(s))
    }

    /// A scorer fed by `push_truth` (a simulated rig in the loop). `rois`: ROIs in extraction
    /// order; `footprints`: the true soma footprints; `neuron_roi`: footprint id of each neuron
    /// column.
    pub fn live(rois: &RoiTable, footprints: &RoiTable, neuron_roi: &[u32]) -> Self {
        let mut s = Self::new(
            PairedBy::Overlap,
            pairing(rois, footprints, neuron_roi),
            neuron_roi.len(),
        );
        s.live = VecDeque::with_capacity(LIVE_ROWS);
        s
    }

    fn new(paired_by: PairedBy, pairing: Pairing, n_neurons: usize) -> Self {
        let k = pairing.roi_neuron.len();
        GroundTruthScorer {
            reader: None,
            live: VecDeque::new(),
            n_neurons,
            n_frames: usize::MAX,
            paired_by,
            pairing,
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
                if let Some(Some(j)) = s.pairing.roi_neuron.get(r).copied() {
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
                if let Some(Some(j)) = s.pairing.roi_neuron.get(r).copied() {
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
        let mut overlaps: Vec<f64> = (0..self.pairing.roi_neuron.len())
            .filter(|&r| self.pairing.roi_neuron[r].is_some())
            .map(|r| self.pairing.overlap[r] as f64)
            .collect();
        Accuracy {
            masks: self.masks,
            paired_by: self.paired_by,
            rois: self.pairing.roi_neuron.len(),
            neurons: self.n_neurons,
            rois_scored: self.pairing.matched(),
            median_overlap: median(&mut overlaps),
            median_dff_calcium_corr: self.dff_calcium.median(),
            motion_rms_error_px: rms,
            motion_offset_px: offset,
            median_events_spikes_corr: self.events_spikes.median(),
            median_dff_spikes_corr: self.dff_spikes.median(),
        }
    }
}
