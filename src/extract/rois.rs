//! ROI fluorescence from sparse weighted masks, with neuropil subtraction as in suite2p
//! (Pachitariu et al. 2017; `suite2p/extraction/masks.py` and `extract.py`).
//!
//! Each ROI is a list of pixels with non-negative weights (suite2p's `lam`), normalised here to
//! sum 1, so its raw trace is the weighted mean fluorescence over the mask. Out-of-focus light
//! from the surrounding neuropil adds to every soma's signal; suite2p estimates it as the mean
//! of an annulus around the ROI and subtracts a fixed fraction of it:
//!
//! `corrected = raw - coefficient * neuropil` (suite2p `neucoeff` = 0.7).
//!
//! The annulus of an ROI is every pixel within `outer_radius_px` of the ROI's (weighted)
//! centroid, farther than `inner_gap_px` from every pixel of that ROI (so the soma's own blurred
//! edge does not leak into its neuropil estimate), and not part of ANY ROI (so a neighbour's
//! activity does not either) - the suite2p rule. suite2p grows the annulus until it holds a
//! minimum pixel count; here the radius is fixed at construction, which keeps the mask
//! geometry predictable. An ROI whose annulus is empty (a soma in a crowded field, every pixel
//! around it taken by neighbours) gets neuropil 0 and so coefficient 0 (`corrected = raw`):
//! one ROI without an estimate must not cost the session the traces of all the others. Such
//! ROIs are listed by [`RoiSet::without_neuropil`] for the caller to report.
//!
//! Masks and annuli are stored as flat CSR arrays (offsets + pixel indices + weights), so one
//! frame is a single streaming pass over a few hundred thousand indices: 500 ROIs on a 512x512
//! frame take well under a millisecond.

use std::collections::HashSet;

use super::motion::{check_len, check_size, MotionCorrector, MotionOptions, Shift};
use super::ExtractError;
use crate::session::RoiTable;

/// One ROI: flat pixel indices (`y * width + x`) and their weights.
#[derive(Debug, Clone, PartialEq)]
pub struct RoiMask {
    pub id: u32,
    pub pixels: Vec<u32>,
    pub weights: Vec<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NeuropilConfig {
    /// Pixels closer than this to the ROI are left out of its annulus (suite2p: 2).
    pub inner_gap_px: f32,
    /// Annulus outer radius around the ROI centroid (10..15 px for 512x512 at ~1 um/px).
    pub outer_radius_px: f32,
    /// Fraction of the neuropil subtracted (suite2p: 0.7); 0 disables the subtraction.
    pub coefficient: f32,
}

impl Default for NeuropilConfig {
    fn default() -> Self {
        Self {
            inner_gap_px: 2.0,
            outer_radius_px: 12.0,
            coefficient: 0.7,
        }
    }
}

/// Validated ROI masks and their neuropil annuli, ready to extract traces.
#[derive(Debug, Clone)]
pub struct RoiSet {
    height: usize,
    width: usize,
    ids: Vec<u32>,
    centroids: Vec<(f32, f32)>,
    coefficient: f32,
    roi_ptr: Vec<u32>,
    roi_pix: Vec<u32>,
    roi_w: Vec<f32>,
    np_ptr: Vec<u32>,
    np_pix: Vec<u32>,
    /// 1 / annulus size (0 for an empty annulus: its neuropil reads 0, coefficient 0).
    np_scale: Vec<f32>,
    /// Ids of the ROIs whose annulus is empty, in mask order.
    no_neuropil: Vec<u32>,
    /// The same pixels as runs of consecutive pixels within one row, for the vectorised fast
    /// path of `traces_shifted`: ROI runs are (first pixel, position of its weights in
    /// `roi_wpad`, length), with each run padded on the right with zero weights to a multiple
    /// of 8 pixels (so a run is whole 8-lane chunks); annulus runs likewise, with weights of 1
    /// padded with zeros in `np_wpad`. ROI / annulus i owns runs
    /// `*_run_ptr[i]..*_run_ptr[i + 1]`.
    roi_runs: Vec<[u32; 3]>,
    roi_run_ptr: Vec<u32>,
    roi_wpad: Vec<f32>,
    np_runs: Vec<[u32; 3]>,
    np_run_ptr: Vec<u32>,
    np_wpad: Vec<f32>,
    /// Bounding boxes (y0, y1, x0, x1), inclusive, of each ROI's padded runs and of each
    /// annulus: a shifted read whose box stays inside the frame needs no per-pixel edge
    /// clamping.
    roi_box: Vec<[u32; 4]>,
    np_box: Vec<[u32; 4]>,
    /// ROI numbers sorted by the top row of their annulus box, the order in which
    /// `traces_shifted` visits them: it then sweeps the frame roughly top to bottom, so
    /// neighbouring ROIs reuse each other's cache lines and the hardware prefetcher can keep
    /// up (with masks in random order, half the time went into cache misses on the frame).
    order: Vec<u32>,
}

/// Splits sorted-or-not flat pixel indices into runs of consecutive pixels within one row:
/// (position of the run's first pixel in `pixels`, length).
fn runs(pixels: &[u32], width: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut k = 0;
    while k < pixels.len() {
        let mut len = 1;
        while k + len < pixels.len()
            && pixels[k + len] == pixels[k + len - 1] + 1
            && pixels[k + len] as usize % width != 0
        {
            len += 1;
        }
        out.push((k, len));
        k += len;
    }
    out
}

/// Where ROI masks sit in a reference image: the displacement (dy, dx) of the reference's
/// content relative to the masks, so that mask pixel (y, x) lies at (y + dy, x + dx) of the
/// reference. Pass it as [`ExtractorConfig::roi_offset_px`](super::ExtractorConfig).
///
/// Masks and reference often come from different coordinate frames: a reference built from
/// the first frames of a session sits at the mean position of those (moving) frames, while
/// masks from a simulator's ground truth, an earlier session or an offline segmentation sit
/// wherever their own reference was. An image of the masks (the sum of their weights, bright
/// disks where the somas are) is phase-correlated with the reference over the whole frame,
/// searching +-`max_shift_px`; the returned `peak` says how well they matched (about 0.05 or
/// less means no match: check the masks belong to this field of view).
pub fn align_masks(
    reference: &[f32],
    height: usize,
    width: usize,
    masks: &[RoiMask],
    max_shift_px: f32,
) -> Result<Shift, ExtractError> {
    check_size(height, width)?;
    check_len("reference", height * width, reference.len())?;
    if masks.is_empty() {
        return Err(ExtractError::NoRois);
    }
    let mut img = vec![0.0f32; height * width];
    for m in masks {
        for (&p, &w) in m.pixels.iter().zip(&m.weights) {
            match img.get_mut(p as usize) {
                Some(v) if w.is_finite() => *v += w,
                Some(_) => {}
                None => {
                    return Err(ExtractError::PixelOutOfRange {
                        id: m.id,
                        index: p,
                        height,
                        width,
                    })
                }
            }
        }
    }
    let opts = MotionOptions {
        crop_px: 0,
        ..MotionOptions::new(max_shift_px)
    };
    let mut mc = MotionCorrector::with_options(height, width, &img, opts)?;
    mc.estimate_f32(reference)
}

/// Masks that are not the truth, for scoring extraction the way a real rig would see it: each
/// ROI eroded by one pixel (pixels with a 4-neighbour outside it dropped, unless none would be
/// left), moved by a random whole-pixel offset of up to `jitter_px` in y and in x (pixels moved
/// off the frame dropped; an offset that would leave none is not applied), and given uniform
/// weights. That is a segmentation that missed each soma's edge and centre by a pixel or two and
/// knows nothing of its true weights. Scored with the simulator's own footprints, extraction
/// gets an upper bound; with these, a figure nearer what ROIs from a segmentation would get.
/// Deterministic for a `seed`.
pub fn imperfect_masks(
    masks: &[RoiMask],
    height: usize,
    width: usize,
    jitter_px: u32,
    seed: u64,
) -> Vec<RoiMask> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (h, w) = (height as i64, width as i64);
    let j = i64::from(jitter_px);
    masks
        .iter()
        .map(|m| {
            let set: HashSet<u32> = m.pixels.iter().copied().collect();
            let inside = |y: i64, x: i64| {
                (0..h).contains(&y) && (0..w).contains(&x) && set.contains(&((y * w + x) as u32))
            };
            let mut kept: Vec<u32> = m
                .pixels
                .iter()
                .copied()
                .filter(|&p| {
                    let (y, x) = (i64::from(p) / w, i64::from(p) % w);
                    [(-1, 0), (1, 0), (0, -1), (0, 1)]
                        .iter()
                        .all(|(dy, dx)| inside(y + dy, x + dx))
                })
                .collect();
            if kept.is_empty() {
                kept = m.pixels.clone();
            }
            let (dy, dx) = (rng.gen_range(-j..=j), rng.gen_range(-j..=j));
            let moved: Vec<u32> = kept
                .iter()
                .filter_map(|&p| {
                    let (y, x) = (i64::from(p) / w + dy, i64::from(p) % w + dx);
                    ((0..h).contains(&y) && (0..w).contains(&x)).then_some((y * w + x) as u32)
                })
                .collect();
            let mut pixels = if moved.is_empty() { kept } else { moved };
            pixels.sort_unstable();
            RoiMask {
                id: m.id,
                weights: vec![1.0; pixels.len()],
                pixels,
            }
        })
        .collect()
}

/// Converts a session's ROI table (CSR) into masks for frames of `height` x `width`, checking
/// that the table was made for that frame size and that its offsets are consistent.
pub fn masks_from_table(
    table: &RoiTable,
    height: usize,
    width: usize,
) -> Result<Vec<RoiMask>, ExtractError> {
    if (table.height, table.width) != (height, width) {
        return Err(ExtractError::RoiFrameMismatch {
            roi_height: table.height,
            roi_width: table.width,
            height,
            width,
        });
    }
    let bad = |reason| ExtractError::RoiTable { reason };
    if table.offsets.len() != table.ids.len() + 1 {
        return Err(bad("offsets must hold one entry more than ids"));
    }
    if table.pixels.len() != table.weights.len() {
        return Err(bad("pixels and weights differ in length"));
    }
    if table.offsets.first() != Some(&0)
        || table.offsets.last() != Some(&(table.pixels.len() as u64))
    {
        return Err(bad(
            "offsets must start at 0 and end at the number of pixels",
        ));
    }
    if table.offsets.windows(2).any(|o| o[1] < o[0]) {
        return Err(bad("offsets must not decrease"));
    }
    Ok(table
        .ids
        .iter()
        .zip(table.offsets.windows(2))
        .map(|(&id, o)| {
            let (a, b) = (o[0] as usize, o[1] as usize);
            RoiMask {
                id,
                pixels: table.pixels[a..b].to_vec(),
                weights: table.weights[a..b].to_vec(),
            }
        })
        .collect())
}

impl RoiSet {
    pub fn new(
        height: usize,
        width: usize,
        masks: &[RoiMask],
        neuropil: NeuropilConfig,
    ) -> Result<Self, ExtractError> {
        check_size(height, width)?;
        let param = |name, value: f32, reason| ExtractError::Parameter {
            name,
            value: value as f64,
            reason,
        };
        let NeuropilConfig {
            inner_gap_px: gap,
            outer_radius_px: outer,
            coefficient,
        } = neuropil;
        if !(gap.is_finite() && gap >= 0.0) {
            return Err(param("inner_gap_px", gap, "must be finite and >= 0"));
        }
        if !(outer.is_finite() && outer > gap) {
            return Err(param(
                "outer_radius_px",
                outer,
                "must be finite and larger than inner_gap_px",
            ));
        }
        if outer > height.max(width) as f32 {
            return Err(param(
                "outer_radius_px",
                outer,
                "must not exceed the larger frame side",
            ));
        }
        if !(coefficient.is_finite() && coefficient >= 0.0) {
            return Err(param("coefficient", coefficient, "must be finite and >= 0"));
        }
        if masks.is_empty() {
            return Err(ExtractError::NoRois);
        }
        let npx = height * width;
        let total: usize = masks.iter().map(|m| m.pixels.len()).sum();
        if total > u32::MAX as usize {
            return Err(ExtractError::Length {
                what: "all ROI masks together",
                expected: u32::MAX as usize,
                got: total,
            });
        }

        // Validate and pack the masks.
        let mut seen = HashSet::with_capacity(masks.len());
        let mut ids = Vec::with_capacity(masks.len());
        let mut centroids = Vec::with_capacity(masks.len());
        let mut roi_ptr = Vec::with_capacity(masks.len() + 1);
        let mut roi_pix = Vec::with_capacity(total);
        let mut roi_w = Vec::with_capacity(total);
        roi_ptr.push(0u32);
        let mut in_any = vec![false; npx];
        for m in masks {
            let id = m.id;
            if !seen.insert(id) {
                return Err(ExtractError::DuplicateId { id });
            }
            if m.pixels.is_empty() {
                return Err(ExtractError::EmptyMask { id });
            }
            if m.pixels.len() != m.weights.len() {
                return Err(ExtractError::MaskLengths {
                    id,
                    pixels: m.pixels.len(),
                    weights: m.weights.len(),
                });
            }
            if let Some(&index) = m.pixels.iter().find(|&&p| p as usize >= npx) {
                return Err(ExtractError::PixelOutOfRange {
                    id,
                    index,
                    height,
                    width,
                });
            }
            if let Some((position, &value)) = m
                .weights
                .iter()
                .enumerate()
                .find(|(_, w)| !(w.is_finite() && **w >= 0.0))
            {
                return Err(ExtractError::BadWeight {
                    id,
                    position,
                    value,
                });
            }
            let sum: f64 = m.weights.iter().map(|&w| w as f64).sum();
            if sum <= 0.0 {
                return Err(ExtractError::ZeroWeights { id });
            }
            let (mut sy, mut sx) = (0.0f64, 0.0f64);
            // Stored in pixel order, so that neighbouring pixels form runs (see `runs`).
            let mut order: Vec<usize> = (0..m.pixels.len()).collect();
            order.sort_by_key(|&k| m.pixels[k]);
            for k in order {
                let (p, w) = (m.pixels[k] as usize, m.weights[k]);
                sy += w as f64 * (p / width) as f64;
                sx += w as f64 * (p % width) as f64;
                in_any[p] = true;
                roi_pix.push(p as u32);
                roi_w.push((w as f64 / sum) as f32);
            }
            centroids.push(((sy / sum) as f32, (sx / sum) as f32));
            ids.push(id);
            roi_ptr.push(roi_pix.len() as u32);
        }

        // Neuropil annuli. `near[p] == r + 1` marks pixels within the gap of ROI r; stamping
        // with the ROI number avoids clearing the array between ROIs.
        let mut near = vec![0u32; npx];
        let g = gap.floor() as isize;
        let g2 = gap * gap;
        let o2 = outer * outer;
        let mut np_ptr = Vec::with_capacity(masks.len() + 1);
        let mut np_pix = Vec::new();
        let mut np_scale = Vec::with_capacity(masks.len());
        let mut no_neuropil = Vec::new();
        np_ptr.push(0u32);
        let (hi, wi) = (height as isize, width as isize);
        for (r, m) in masks.iter().enumerate() {
            let stamp = r as u32 + 1;
            for &p in &m.pixels {
                let (py, px) = ((p as usize / width) as isize, (p as usize % width) as isize);
                for dy in -g..=g {
                    for dx in -g..=g {
                        let (y, x) = (py + dy, px + dx);
                        if (dy * dy + dx * dx) as f32 <= g2 && y >= 0 && y < hi && x >= 0 && x < wi
                        {
                            near[(y * wi + x) as usize] = stamp;
                        }
                    }
                }
            }
            let (cy, cx) = centroids[r];
            let y0 = (cy - outer).floor().max(0.0) as usize;
            let y1 = ((cy + outer).ceil().max(0.0) as usize).min(height - 1);
            let x0 = (cx - outer).floor().max(0.0) as usize;
            let x1 = ((cx + outer).ceil().max(0.0) as usize).min(width - 1);
            let start = np_pix.len();
            for y in y0..=y1 {
                for x in x0..=x1 {
                    let p = y * width + x;
                    let d2 = (y as f32 - cy).powi(2) + (x as f32 - cx).powi(2);
                    if d2 <= o2 && !in_any[p] && near[p] != stamp {
                        np_pix.push(p as u32);
                    }
                }
            }
            let count = np_pix.len() - start;
            if count == 0 && coefficient > 0.0 {
                no_neuropil.push(m.id);
            }
            np_scale.push(if count > 0 { 1.0 / count as f32 } else { 0.0 });
            if np_pix.len() > u32::MAX as usize {
                return Err(ExtractError::Length {
                    what: "all neuropil annuli together",
                    expected: u32::MAX as usize,
                    got: np_pix.len(),
                });
            }
            np_ptr.push(np_pix.len() as u32);
        }
        np_pix.shrink_to_fit();
        // Padded weighted runs (see the field docs) and the boxes they cover.
        let padded_runs = |ptr: &[u32], pix: &[u32], w: Option<&[f32]>| {
            let (mut out, mut out_ptr) = (Vec::new(), vec![0u32]);
            let (mut wpad, mut boxes) = (Vec::new(), Vec::with_capacity(ptr.len()));
            for o in ptr.windows(2) {
                let (a, b) = (o[0] as usize, o[1] as usize);
                let mut bx = [u32::MAX, 0, u32::MAX, 0];
                for (k, len) in runs(&pix[a..b], width) {
                    let p = pix[a + k];
                    let padded = len.div_ceil(8) * 8;
                    out.push([p, wpad.len() as u32, padded as u32]);
                    match w {
                        Some(w) => wpad.extend_from_slice(&w[a + k..a + k + len]),
                        None => wpad.resize(wpad.len() + len, 1.0),
                    }
                    wpad.resize(wpad.len() + padded - len, 0.0);
                    let (y, x) = (p / width as u32, p % width as u32);
                    bx = [
                        bx[0].min(y),
                        bx[1].max(y),
                        bx[2].min(x),
                        bx[3].max(x + padded as u32 - 1),
                    ];
                }
                out_ptr.push(out.len() as u32);
                // An empty annulus never reads the frame: any box inside it will do.
                boxes.push(if b > a { bx } else { [0; 4] });
            }
            (out, out_ptr, wpad, boxes)
        };
        let (roi_runs, roi_run_ptr, roi_wpad, roi_box) =
            padded_runs(&roi_ptr, &roi_pix, Some(&roi_w));
        let (np_runs, np_run_ptr, np_wpad, np_box) = padded_runs(&np_ptr, &np_pix, None);
        let mut order: Vec<u32> = (0..masks.len() as u32).collect();
        order.sort_by_key(|&i| (np_box[i as usize][0], centroids[i as usize].0.to_bits()));

        Ok(Self {
            height,
            width,
            ids,
            centroids,
            coefficient,
            roi_ptr,
            roi_pix,
            roi_w,
            np_ptr,
            np_pix,
            np_scale,
            no_neuropil,
            roi_runs,
            roi_run_ptr,
            roi_wpad,
            np_runs,
            np_run_ptr,
            np_wpad,
            order,
            roi_box,
            np_box,
        })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// ROI ids in output order (the order of the masks given to `new`).
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Weighted centroid (y, x) of each ROI, pixels.
    pub fn centroids(&self) -> &[(f32, f32)] {
        &self.centroids
    }

    pub fn coefficient(&self) -> f32 {
        self.coefficient
    }

    /// Ids of the ROIs whose neuropil annulus is empty: their neuropil trace is 0 and their
    /// corrected trace the raw one (coefficient 0). Empty when the coefficient is 0.
    pub fn without_neuropil(&self) -> &[u32] {
        &self.no_neuropil
    }

    /// Pixel indices of ROI `i`'s neuropil annulus (empty for an out-of-range `i`).
    pub fn neuropil_pixels(&self, i: usize) -> &[u32] {
        match (self.np_ptr.get(i), self.np_ptr.get(i + 1)) {
            (Some(&a), Some(&b)) => &self.np_pix[a as usize..b as usize],
            _ => &[],
        }
    }

    /// Extracts one frame (row-major `height * width`, usually the motion-corrected one):
    /// weighted ROI means into `raw`, annulus means into `neuropil`, and
    /// `raw - coefficient * neuropil` into `corrected`; each output holds `len()` values.
    pub fn traces(
        &self,
        frame: &[f32],
        raw: &mut [f32],
        neuropil: &mut [f32],
        corrected: &mut [f32],
    ) -> Result<(), ExtractError> {
        let n = self.len();
        for (what, expected, got) in [
            ("frame", self.height * self.width, frame.len()),
            ("raw", n, raw.len()),
            ("neuropil", n, neuropil.len()),
            ("corrected", n, corrected.len()),
        ] {
            if expected != got {
                return Err(ExtractError::Length {
                    what,
                    expected,
                    got,
                });
            }
        }
        for i in 0..n {
            let (a, b) = (self.roi_ptr[i] as usize, self.roi_ptr[i + 1] as usize);
            let f: f32 = self.roi_pix[a..b]
                .iter()
                .zip(&self.roi_w[a..b])
                .map(|(&p, &w)| w * frame[p as usize])
                .sum();
            let (a, b) = (self.np_ptr[i] as usize, self.np_ptr[i + 1] as usize);
            let s: f32 = self.np_pix[a..b].iter().map(|&p| frame[p as usize]).sum();
            let np = s * self.np_scale[i];
            raw[i] = f;
            neuropil[i] = np;
            corrected[i] = f - self.coefficient * np;
        }
        Ok(())
    }

    /// As [`traces`](Self::traces) on the motion-corrected frame, but reading the raw,
    /// uncorrected `frame` at the shifted positions instead, so the whole frame never has to
    /// be resampled: ROI pixel (y, x) is read bilinearly at (y + dy, x + dx), exactly as
    /// `MotionCorrector::apply` would have resampled it (edges clamped likewise), and each
    /// annulus pixel at the nearest integer position (the neuropil is smooth and averaged over
    /// hundreds of pixels, so the rounding changes its mean by far less than the shot noise).
    pub fn traces_shifted<T: Copy + Into<f32>>(
        &self,
        frame: &[T],
        shift: Shift,
        raw: &mut [f32],
        neuropil: &mut [f32],
        corrected: &mut [f32],
    ) -> Result<(), ExtractError> {
        let n = self.len();
        let (h, w) = (self.height, self.width);
        check_len("frame", h * w, frame.len())?;
        check_len("raw", n, raw.len())?;
        check_len("neuropil", n, neuropil.len())?;
        check_len("corrected", n, corrected.len())?;
        // A non-finite shift would poison every trace; treat it as "no shift" (as `apply`).
        let (dy, dx) = if shift.dy.is_finite() && shift.dx.is_finite() {
            (shift.dy, shift.dx)
        } else {
            (0.0, 0.0)
        };
        // Shifts beyond the frame only ever clamp; bounding them keeps the casts exact.
        let lim = (h.max(w) + 2) as f32;
        let (dy, dx) = (dy.clamp(-lim, lim), dx.clamp(-lim, lim));
        let (fy0, fx0) = (dy.floor(), dx.floor());
        let (fy, fx) = (dy - fy0, dx - fx0);
        let (iy, ix) = (fy0 as isize, fx0 as isize);
        let (ny, nx) = (dy.round() as isize, dx.round() as isize);
        let (hi, wi) = (h as isize, w as isize);
        // Does box b, moved by (sy, sx) and grown by `extra` pixels down and right, stay inside?
        let inside = |b: &[u32; 4], sy: isize, sx: isize, extra: isize| {
            b[0] as isize + sy >= 0
                && b[1] as isize + sy + extra < hi
                && b[2] as isize + sx >= 0
                && b[3] as isize + sx + extra < wi
        };
        let clamp = |v: isize, n: isize| v.clamp(0, n - 1) as usize;
        // Touch one value per cache line, front to back: a frame fresh from the acquisition
        // thread is mostly not in this core's caches, and the ROI reads below jump between
        // rows, which the hardware prefetcher cannot follow, so every first touch of a line
        // would stall. A sequential sweep streams it in at full memory bandwidth instead
        // (measured: traces ~1.3x faster on a cold 512x512 frame).
        let step = (64 / std::mem::size_of::<T>()).max(1);
        let touched: f32 = frame.iter().step_by(step).map(|&v| v.into()).sum();
        std::hint::black_box(touched);
        let off = iy * wi + ix;
        let noff = ny * wi + nx;
        for &i in &self.order {
            let i = i as usize;
            let (a, b) = (self.roi_ptr[i] as usize, self.roi_ptr[i + 1] as usize);
            let (pix, wts) = (&self.roi_pix[a..b], &self.roi_w[a..b]);
            // Weighted sums of the four bilinear neighbours, combined once per ROI.
            let (mut s00, mut s01, mut s10, mut s11) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
            if inside(&self.roi_box[i], iy, ix, 1) {
                let (ra, rb) = (
                    self.roi_run_ptr[i] as usize,
                    self.roi_run_ptr[i + 1] as usize,
                );
                // Eight lanes per neighbour, summed across lanes once per ROI.
                let mut acc = [[0.0f32; 8]; 4];
                for &[p, k, len] in &self.roi_runs[ra..rb] {
                    let (q, k, len) = ((p as isize + off) as usize, k as usize, len as usize);
                    let wt = &self.roi_wpad[k..k + len];
                    let r0 = &frame[q..q + len + 1];
                    let r1 = &frame[q + w..q + w + len + 1];
                    let chunks = wt
                        .chunks_exact(8)
                        .zip(r0.chunks_exact(8))
                        .zip(r0[1..].chunks_exact(8))
                        .zip(r1.chunks_exact(8))
                        .zip(r1[1..].chunks_exact(8));
                    for ((((c, a0), a1), b0), b1) in chunks {
                        for l in 0..8 {
                            acc[0][l] += c[l] * a0[l].into();
                            acc[1][l] += c[l] * a1[l].into();
                            acc[2][l] += c[l] * b0[l].into();
                            acc[3][l] += c[l] * b1[l].into();
                        }
                    }
                }
                let sum = |a: &[f32; 8]| a.iter().sum::<f32>();
                (s00, s01, s10, s11) = (sum(&acc[0]), sum(&acc[1]), sum(&acc[2]), sum(&acc[3]));
            } else {
                for (&p, &wt) in pix.iter().zip(wts) {
                    let (y, x) = ((p as usize / w) as isize, (p as usize % w) as isize);
                    let (y0, y1) = (clamp(y + iy, hi) * w, clamp(y + iy + 1, hi) * w);
                    let (x0, x1) = (clamp(x + ix, wi), clamp(x + ix + 1, wi));
                    s00 += wt * frame[y0 + x0].into();
                    s01 += wt * frame[y0 + x1].into();
                    s10 += wt * frame[y1 + x0].into();
                    s11 += wt * frame[y1 + x1].into();
                }
            }
            let f = (s00 * (1.0 - fx) + s01 * fx) * (1.0 - fy) + (s10 * (1.0 - fx) + s11 * fx) * fy;
            let (a, b) = (self.np_ptr[i] as usize, self.np_ptr[i + 1] as usize);
            let pix = &self.np_pix[a..b];
            let s: f32 = if inside(&self.np_box[i], ny, nx, 0) {
                let (ra, rb) = (self.np_run_ptr[i] as usize, self.np_run_ptr[i + 1] as usize);
                let mut acc = [0.0f32; 8];
                for &[p, k, len] in &self.np_runs[ra..rb] {
                    let (q, k, len) = ((p as isize + noff) as usize, k as usize, len as usize);
                    let chunks = self.np_wpad[k..k + len]
                        .chunks_exact(8)
                        .zip(frame[q..q + len].chunks_exact(8));
                    for (c, f) in chunks {
                        for l in 0..8 {
                            acc[l] += c[l] * f[l].into();
                        }
                    }
                }
                acc.iter().sum::<f32>()
            } else {
                pix.iter()
                    .map(|&p| {
                        let (y, x) = ((p as usize / w) as isize, (p as usize % w) as isize);
                        frame[clamp(y + ny, hi) * w + clamp(x + nx, wi)].into()
                    })
                    .sum()
            };
            let np = s * self.np_scale[i];
            raw[i] = f;
            neuropil[i] = np;
            corrected[i] = f - self.coefficient * np;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(id: u32, cy: usize, cx: usize, r: f32, w: usize) -> RoiMask {
        let mut pixels = vec![];
        let ri = r.ceil() as usize;
        for y in cy - ri..=cy + ri {
            for x in cx - ri..=cx + ri {
                let d2 = (y as f32 - cy as f32).powi(2) + (x as f32 - cx as f32).powi(2);
                if d2 <= r * r {
                    pixels.push((y * w + x) as u32);
                }
            }
        }
        let weights = vec![2.0; pixels.len()];
        RoiMask {
            id,
            pixels,
            weights,
        }
    }

    #[test]
    fn a_walled_in_roi_loses_only_its_own_neuropil() {
        let (h, w) = (64, 64);
        let inner = disk(1, 32, 32, 3.0, w);
        // Four quadrants fill everything within 13 px of ROI 1 (more than its 12 px annulus).
        let mut quads = vec![Vec::new(); 4];
        for y in 0..h {
            for x in 0..w {
                let (dy, dx) = (y as f32 - 32.0, x as f32 - 32.0);
                let d2 = dy * dy + dx * dx;
                if d2 > 9.0 && d2 <= 169.0 {
                    quads[(dy >= 0.0) as usize * 2 + (dx >= 0.0) as usize].push((y * w + x) as u32);
                }
            }
        }
        let mut masks = vec![inner];
        for (k, q) in quads.into_iter().enumerate() {
            let n = q.len();
            masks.push(RoiMask {
                id: 10 + k as u32,
                pixels: q,
                weights: vec![1.0; n],
            });
        }
        let set = RoiSet::new(h, w, &masks, NeuropilConfig::default()).unwrap();
        assert_eq!(set.without_neuropil(), &[1]);
        assert!(set.neuropil_pixels(0).is_empty());
        assert!((1..5).all(|i| !set.neuropil_pixels(i).is_empty()));
        let frame: Vec<f32> = (0..h * w).map(|p| 100.0 + (p % 7) as f32).collect();
        let frame_u16: Vec<u16> = frame.iter().map(|&v| v as u16).collect();
        let n = set.len();
        let (mut raw, mut np, mut cor) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        set.traces(&frame, &mut raw, &mut np, &mut cor).unwrap();
        assert_eq!((np[0], cor[0]), (0.0, raw[0]));
        assert!((1..n).all(|i| np[i] > 0.0 && cor[i] < raw[i]));
        let shift = Shift {
            dy: 0.4,
            dx: -0.3,
            peak: 1.0,
        };
        set.traces_shifted(&frame_u16, shift, &mut raw, &mut np, &mut cor)
            .unwrap();
        assert_eq!((np[0], cor[0]), (0.0, raw[0]));
        assert!((1..n).all(|i| np[i] > 0.0 && cor[i] < raw[i]));
    }

    #[test]
    fn traces_known_values() {
        let (h, w) = (64, 64);
        let masks = vec![disk(7, 20, 20, 3.0, w), disk(9, 40, 44, 4.0, w)];
        let cfg = NeuropilConfig {
            inner_gap_px: 2.0,
            outer_radius_px: 10.0,
            coefficient: 0.7,
        };
        let set = RoiSet::new(h, w, &masks, cfg).unwrap();
        assert_eq!(set.ids(), &[7, 9]);
        assert_eq!(set.centroids()[1], (40.0, 44.0));
        // Frame: 10 everywhere, ROI 7 pixels 110, ROI 9 pixels 60.
        let mut frame = vec![10.0f32; h * w];
        for &p in &masks[0].pixels {
            frame[p as usize] = 110.0;
        }
        for &p in &masks[1].pixels {
            frame[p as usize] = 60.0;
        }
        let (mut raw, mut np, mut cor) = (vec![0.0; 2], vec![0.0; 2], vec![0.0; 2]);
        set.traces(&frame, &mut raw, &mut np, &mut cor).unwrap();
        assert!((raw[0] - 110.0).abs() < 1e-3 && (raw[1] - 60.0).abs() < 1e-3);
        assert!((np[0] - 10.0).abs() < 1e-4 && (np[1] - 10.0).abs() < 1e-4);
        assert!((cor[0] - 103.0).abs() < 1e-3 && (cor[1] - 53.0).abs() < 1e-3);

        // Weighted mean: one pixel with three times the weight.
        let mut m = disk(1, 30, 30, 1.0, w); // 5 pixels
        m.weights = vec![1.0, 1.0, 3.0, 1.0, 1.0];
        let mut f = vec![0.0f32; h * w];
        f[m.pixels[2] as usize] = 7.0;
        let cfg0 = NeuropilConfig {
            coefficient: 0.0,
            ..cfg
        };
        let set = RoiSet::new(h, w, &[m], cfg0).unwrap();
        let (mut raw, mut np, mut cor) = (vec![0.0; 1], vec![0.0; 1], vec![0.0; 1]);
        set.traces(&f, &mut raw, &mut np, &mut cor).unwrap();
        assert!((raw[0] - 3.0).abs() < 1e-5 && cor[0] == raw[0]);
    }

    /// Reading the raw frame at shifted positions equals extracting from the resampled frame:
    /// exactly (up to rounding) for the ROIs, and for the annuli when the shift is whole.
    #[test]
    fn shifted_traces_match_the_registered_frame() {
        let (h, w) = (64, 80);
        // ROIs in the middle and against every border, so both the fast path and the clamped
        // path are taken.
        let masks = vec![
            disk(1, 30, 40, 3.0, w),
            disk(2, 3, 40, 3.0, w),
            disk(3, 60, 40, 3.0, w),
            disk(4, 30, 3, 3.0, w),
            disk(5, 30, 76, 3.0, w),
            disk(6, 12, 15, 2.0, w),
        ];
        let cfg = NeuropilConfig {
            inner_gap_px: 2.0,
            outer_radius_px: 9.0,
            coefficient: 0.7,
        };
        let set = RoiSet::new(h, w, &masks, cfg).unwrap();
        let frame: Vec<u16> = (0..h * w)
            .map(|i| (100 + (i * 7919) % 251 + (i / w) * 3) as u16)
            .collect();
        let reference: Vec<f32> = frame.iter().map(|&v| v as f32).collect();
        let mc = MotionCorrector::new(h, w, &reference, 6.0).unwrap();
        let mut reg = vec![0.0f32; h * w];
        let n = masks.len();
        let (mut r1, mut n1, mut c1) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        let (mut r2, mut n2, mut c2) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        for &(dy, dx) in &[
            (0.0, 0.0),
            (2.0, -3.0),
            (1.3, -2.6),
            (-4.7, 5.2),
            (0.49, 0.51),
            (f32::NAN, 1.0),
            (1e9, -1e9),
        ] {
            let s = Shift { dy, dx, peak: 1.0 };
            mc.apply(&frame, s, &mut reg).unwrap();
            set.traces(&reg, &mut r1, &mut n1, &mut c1).unwrap();
            set.traces_shifted(&frame, s, &mut r2, &mut n2, &mut c2)
                .unwrap();
            for i in 0..n {
                assert!(
                    (r1[i] - r2[i]).abs() < 1e-3 * r1[i].abs(),
                    "({dy}, {dx}) ROI {i}"
                );
                let whole = dy.fract() == 0.0 && dx.fract() == 0.0 || !dy.is_finite();
                if whole {
                    assert!(
                        (n1[i] - n2[i]).abs() < 1e-3 * n1[i].abs(),
                        "({dy}, {dx}) {i}"
                    );
                } else {
                    // Rounded shift: within the pixel-to-pixel spread of this rough frame.
                    assert!(
                        (n1[i] - n2[i]).abs() < 0.2 * n1[i].abs(),
                        "({dy}, {dx}) {i}"
                    );
                }
            }
        }
        let f32_frame: Vec<f32> = reference.clone();
        set.traces_shifted(&f32_frame, Shift::default(), &mut r2, &mut n2, &mut c2)
            .unwrap();
        set.traces(&f32_frame, &mut r1, &mut n1, &mut c1).unwrap();
        for (a, b) in r1.iter().zip(&r2).chain(n1.iter().zip(&n2)) {
            assert!((a - b).abs() < 1e-5 * a.abs(), "{a} vs {b}");
        }
        assert!(set
            .traces_shifted(&frame[1..], Shift::default(), &mut r2, &mut n2, &mut c2)
            .is_err());
    }

    #[test]
    fn masks_from_a_session_table() {
        let (h, w) = (32, 32);
        let table = RoiTable {
            height: h,
            width: w,
            ids: vec![3, 9],
            offsets: vec![0, 2, 3],
            pixels: vec![5, 6, 100],
            weights: vec![1.0, 0.5, 2.0],
        };
        let masks = masks_from_table(&table, h, w).unwrap();
        assert_eq!(masks.len(), 2);
        assert_eq!(masks[0].pixels, vec![5, 6]);
        assert_eq!(masks[1].id, 9);
        assert_eq!(masks[1].weights, vec![2.0]);
        let e = masks_from_table(&table, 64, 32).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ROI table was made for 32x32 frames but the frames are 64x32"
        );
        let mut bad = table.clone();
        bad.offsets = vec![0, 4, 3];
        assert!(matches!(
            masks_from_table(&bad, h, w),
            Err(ExtractError::RoiTable { .. })
        ));
        bad.offsets = vec![0, 3];
        assert!(masks_from_table(&bad, h, w).is_err());
        assert_eq!(
            RoiSet::new(h, w, &[], NeuropilConfig::default()).unwrap_err(),
            ExtractError::NoRois
        );
    }

    #[test]
    fn annulus_geometry_follows_the_suite2p_rule() {
        let (h, w) = (64, 64);
        // Two ROIs close together: each annulus must avoid the other ROI's pixels and stay
        // more than the gap away from its own.
        let masks = vec![disk(1, 30, 30, 3.0, w), disk(2, 30, 38, 2.0, w)];
        let cfg = NeuropilConfig {
            inner_gap_px: 2.0,
            outer_radius_px: 9.0,
            coefficient: 0.7,
        };
        let set = RoiSet::new(h, w, &masks, cfg).unwrap();
        let all: HashSet<u32> = masks.iter().flat_map(|m| m.pixels.clone()).collect();
        for (i, m) in masks.iter().enumerate() {
            let (cy, cx) = set.centroids()[i];
            let ann = set.neuropil_pixels(i);
            assert!(!ann.is_empty());
            for &p in ann {
                let (y, x) = ((p as usize / w) as f32, (p as usize % w) as f32);
                assert!(!all.contains(&p));
                assert!((y - cy).powi(2) + (x - cx).powi(2) <= 81.0);
                let dmin = m
                    .pixels
                    .iter()
                    .map(|&q| {
                        let (qy, qx) = ((q as usize / w) as f32, (q as usize % w) as f32);
                        (qy - y).powi(2) + (qx - x).powi(2)
                    })
                    .fold(f32::INFINITY, f32::min);
                assert!(dmin > 4.0, "pixel {p} within the gap of ROI {i}");
            }
            // And it is complete: count the qualifying pixels by brute force.
            let mut count = 0;
            for y in 0..h {
                for x in 0..w {
                    let p = (y * w + x) as u32;
                    let (yf, xf) = (y as f32, x as f32);
                    let inside = (yf - cy).powi(2) + (xf - cx).powi(2) <= 81.0;
                    let far = m.pixels.iter().all(|&q| {
                        let (qy, qx) = ((q as usize / w) as f32, (q as usize % w) as f32);
                        (qy - yf).powi(2) + (qx - xf).powi(2) > 4.0
                    });
                    if inside && far && !all.contains(&p) {
                        count += 1;
                    }
                }
            }
            assert_eq!(count, ann.len());
        }
    }

    #[test]
    fn validation_messages() {
        let cfg = NeuropilConfig::default();
        let ok = disk(1, 100, 100, 3.0, 512);
        let mut bad = ok.clone();
        bad.id = 17;
        bad.pixels[0] = 262_200;
        let e = RoiSet::new(512, 512, &[ok.clone(), bad], cfg).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ROI 17 pixel index 262200 outside a 512x512 frame"
        );
        let e = RoiSet::new(512, 512, &[ok.clone(), ok.clone()], cfg).unwrap_err();
        assert_eq!(e.to_string(), "ROI id 1 is used by more than one mask");
        let mut m = ok.clone();
        m.weights.pop();
        let e = RoiSet::new(512, 512, &[m], cfg).unwrap_err();
        assert!(matches!(e, ExtractError::MaskLengths { id: 1, .. }), "{e}");
        let mut m = ok.clone();
        m.weights[3] = f32::NAN;
        let e = RoiSet::new(512, 512, &[m], cfg).unwrap_err();
        assert!(e.to_string().starts_with("ROI 1 weight 3 is NaN"), "{e}");
        let mut m = ok.clone();
        m.weights.iter_mut().for_each(|w| *w = 0.0);
        assert_eq!(
            RoiSet::new(512, 512, &[m], cfg).unwrap_err(),
            ExtractError::ZeroWeights { id: 1 }
        );
        let m = RoiMask {
            id: 4,
            pixels: vec![],
            weights: vec![],
        };
        assert_eq!(
            RoiSet::new(512, 512, &[m], cfg).unwrap_err(),
            ExtractError::EmptyMask { id: 4 }
        );
        // An ROI that fills its whole neighbourhood has no annulus: it is listed, not refused.
        let big = disk(5, 20, 20, 14.0, 64);
        let small = NeuropilConfig {
            outer_radius_px: 10.0,
            ..cfg
        };
        let set = RoiSet::new(64, 64, std::slice::from_ref(&big), small).unwrap();
        assert_eq!(set.without_neuropil(), &[5]);
        let none = NeuropilConfig {
            coefficient: 0.0,
            ..small
        };
        let set = RoiSet::new(64, 64, &[big], none).unwrap();
        assert!(set.without_neuropil().is_empty());
        let bad_cfg = NeuropilConfig {
            inner_gap_px: 5.0,
            outer_radius_px: 4.0,
            coefficient: 0.7,
        };
        assert!(RoiSet::new(64, 64, &[], bad_cfg).is_err());
        // Output buffers of the wrong size are an error, not a panic.
        let set = RoiSet::new(512, 512, &[ok], cfg).unwrap();
        let frame = vec![0.0; 512 * 512];
        let (mut a, mut b, mut c) = (vec![0.0; 2], vec![0.0; 1], vec![0.0; 1]);
        assert!(set.traces(&frame, &mut a, &mut b, &mut c).is_err());
        assert!(set.traces(&frame[1..], &mut b, &mut c, &mut [0.0]).is_err());
    }
}
