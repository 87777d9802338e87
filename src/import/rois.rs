//! `rig import rois`: ROI masks from a segmentation made elsewhere, as the mask file `rig run
//! --rois` and `rig replay --rois` read (rois/ids, offsets, pixels, weights).
//!
//! Source: an NWB file's PlaneSegmentation, as suite2p (`save_NWB`), CaImAn and pynwb write it:
//! weighted `pixel_mask` rows (with `pixel_mask_index`), or an `image_mask` stack. NWB's `x` is
//! the image row (src/nwbmask.rs), as suite2p and `rig export nwb` write it; `--swap-xy` reads
//! files written the other way. A suite2p plane folder (stat.npy is a Python pickle) goes through
//! tools/suite2p_rois.py instead.

use std::path::{Path, PathBuf};

use hdf5::types::{VarLenAscii, VarLenUnicode};
use hdf5::{File, Group};
use serde::Serialize;

use super::ImportError;
use crate::nwbmask::PixelMask;
use crate::session::{write_roi_file, RoiTable};

#[derive(Debug, Clone, Default)]
pub struct RoiOptions {
    /// Name of the PlaneSegmentation to read when the file has several.
    pub plane_segmentation: Option<String>,
    /// Frame size (height, width) when the file has no image_mask and no TwoPhotonSeries.
    pub size: Option<(usize, usize)>,
    /// Keep only ROIs the segmentation classed as cells (an `iscell` column).
    pub cells_only: bool,
    /// With an `iscell` probability column: keep ROIs at or above it.
    pub min_probability: f64,
    pub swap_xy: bool,
    pub overwrite: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoiReport {
    pub out: String,
    pub source: String,
    pub plane_segmentation: String,
    /// `pixel_mask` or `image_mask`.
    pub mask_kind: String,
    pub height: usize,
    pub width: usize,
    /// Where the frame size came from.
    pub size_from: String,
    pub rois_in_file: usize,
    pub rois: usize,
    /// Dropped by --cells-only / --min-probability, and for having no pixel inside the frame.
    pub dropped_not_cell: usize,
    pub dropped_empty: usize,
    pub pixels: usize,
}

fn err(path: &Path, message: impl Into<String>) -> ImportError {
    ImportError::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn str_attr(g: &Group, name: &str) -> Option<String> {
    let a = g.attr(name).ok()?;
    if let Ok(s) = a.read_scalar::<VarLenUnicode>() {
        return Some(s.as_str().to_string());
    }
    a.read_scalar::<VarLenAscii>()
        .ok()
        .map(|s| s.as_str().to_string())
}

/// Every group below `g` (to a small depth) whose neurodata_type is `ty`, with its path.
fn find_typed(g: &Group, ty: &str, depth: usize, out: &mut Vec<(String, Group)>) {
    for child in g.groups().unwrap_or_default() {
        if str_attr(&child, "neurodata_type").as_deref() == Some(ty) {
            out.push((child.name(), child.clone()));
        }
        if depth > 0 {
            find_typed(&child, ty, depth - 1, out);
        }
    }
}

/// Imports the ROIs of the NWB file at `path` into a new mask file at `out`.
pub fn import_rois_nwb(path: &Path, out: &Path, o: &RoiOptions) -> Result<RoiReport, ImportError> {
    if path.is_dir() {
        return Err(err(
            path,
            if path.join("stat.npy").exists() {
                "a suite2p plane folder: its stat.npy is a Python pickle; convert it with \
                 `python3 tools/suite2p_rois.py FOLDER --out MASKS.h5`"
            } else {
                "a folder: expected an NWB file"
            },
        ));
    }
    let file = File::open(path).map_err(|e| {
        err(
            path,
            format!(
                "cannot open as HDF5 (NWB): {}",
                e.to_string().lines().next().unwrap_or("")
            ),
        )
    })?;
    let root: &Group = &file;
    if str_attr(root, "neurodata_type").as_deref() != Some("NWBFile") {
        return Err(err(
            path,
            "not an NWB file (the root has no neurodata_type = NWBFile)",
        ));
    }
    let mut segs = Vec::new();
    find_typed(root, "PlaneSegmentation", 4, &mut segs);
    if segs.is_empty() {
        return Err(err(
            path,
            "no PlaneSegmentation (ImageSegmentation) in the file",
        ));
    }
    let names: Vec<String> = segs.iter().map(|(p, _)| p.clone()).collect();
    let (seg_path, seg) = match &o.plane_segmentation {
        Some(want) => segs
            .into_iter()
            .find(|(p, _)| p == want || p.rsplit('/').next() == Some(want.as_str()))
            .ok_or_else(|| {
                err(
                    path,
                    format!(
                        "--plane-segmentation {want}: the file has {}",
                        names.join(", ")
                    ),
                )
            })?,
        None if segs.len() == 1 => segs.remove(0),
        None => {
            return Err(err(
                path,
                format!(
                    "{} PlaneSegmentations ({}); choose one with --plane-segmentation",
                    names.len(),
                    names.join(", ")
                ),
            ))
        }
    };
    let field = |name: &str| format!("{seg_path}/{name}");
    let ids: Vec<i64> = seg
        .dataset("id")
        .and_then(|d| d.read_raw::<i64>())
        .map_err(|_| err(path, format!("{}: missing or not integers", field("id"))))?;
    let n = ids.len();

    // Per ROI: (flat pixel index, weight), before the size is known: (row, col, weight).
    let mut masks: Vec<Vec<(usize, usize, f32)>> = Vec::with_capacity(n);
    let mut image_size = None;
    let kind;
    if let Ok(ds) = seg.dataset("pixel_mask") {
        kind = "pixel_mask";
        let rows: Vec<PixelMask> = ds.read_raw().map_err(|e| {
            err(
                path,
                format!(
                    "{}: expected (x, y, weight) rows: {}",
                    field("pixel_mask"),
                    e.to_string().lines().next().unwrap_or("")
                ),
            )
        })?;
        let index: Vec<u64> = seg
            .dataset("pixel_mask_index")
            .and_then(|d| d.read_raw::<u64>())
            .map_err(|_| {
                err(
                    path,
                    format!("{}: missing or not integers", field("pixel_mask_index")),
                )
            })?;
        if index.len() != n
            || index.windows(2).any(|w| w[0] > w[1])
            || index.last().is_some_and(|&e| e as usize != rows.len())
        {
            return Err(err(
                path,
                format!(
                    "{}: expected {n} increasing end offsets ending at {} (the pixel_mask rows)",
                    field("pixel_mask_index"),
                    rows.len()
                ),
            ));
        }
        let mut start = 0usize;
        for &end in &index {
            let end = end as usize;
            masks.push(
                rows[start..end]
                    .iter()
                    .map(|p| {
                        let (r, c) = if o.swap_xy { (p.y, p.x) } else { (p.x, p.y) };
                        (r as usize, c as usize, p.weight)
                    })
                    .collect(),
            );
            start = end;
        }
    } else if let Ok(ds) = seg.dataset("image_mask") {
        kind = "image_mask";
        let shape = ds.shape();
        if shape.len() != 3 || shape[0] != n {
            return Err(err(
                path,
                format!(
                    "{}: expected [{n}, x, y], found {shape:?}",
                    field("image_mask")
                ),
            ));
        }
        let (d1, d2) = (shape[1], shape[2]);
        let (h, w) = if o.swap_xy { (d2, d1) } else { (d1, d2) };
        image_size = Some((h, w));
        let data: Vec<f32> = ds
            .read_raw()
            .map_err(|_| err(path, format!("{}: not numbers", field("image_mask"))))?;
        for r in 0..n {
            let plane = &data[r * d1 * d2..(r + 1) * d1 * d2];
            masks.push(
                plane
                    .iter()
                    .enumerate()
                    .filter(|(_, &v)| v != 0.0 && v.is_finite())
                    .map(|(i, &v)| {
                        let (a, b) = (i / d2, i % d2);
                        let (r, c) = if o.swap_xy { (b, a) } else { (a, b) };
                        (r, c, v)
                    })
                    .collect(),
            );
        }
    } else {
        return Err(err(
            path,
            format!("{seg_path}: neither pixel_mask nor image_mask"),
        ));
    }

    // The frame size: the image masks', else the one the caller gives, else a TwoPhotonSeries'.
    let (size, size_from) = match (image_size, o.size) {
        (_, Some(s)) => (s, "--size".to_string()),
        (Some(s), None) => (s, "image_mask".to_string()),
        (None, None) => {
            let mut series = Vec::new();
            find_typed(root, "TwoPhotonSeries", 2, &mut series);
            let found = series.iter().find_map(|(p, g)| {
                let s = g.dataset("data").ok()?.shape();
                (s.len() == 3).then(|| {
                    let (a, b) = (s[1], s[2]);
                    (if o.swap_xy { (b, a) } else { (a, b) }, format!("{p}/data"))
                })
            });
            found.ok_or_else(|| {
                err(
                    path,
                    "pixel masks without a frame size (no image_mask, no TwoPhotonSeries data): \
                     give --size HxW",
                )
            })?
        }
    };
    let (height, width) = size;

    // Cell classification: suite2p's [N, 2] (is cell, probability) or a plain [N] column.
    let iscell: Option<(Vec<f64>, Option<Vec<f64>>)> = match seg.dataset("iscell") {
        Ok(ds) => {
            let shape = ds.shape();
            let v: Vec<f64> = ds
                .read_raw()
                .map_err(|_| err(path, format!("{}: not numbers", field("iscell"))))?;
            match shape.as_slice() {
                [m] if *m == n => Some((v, None)),
                [m, 2] if *m == n => Some((
                    v.iter().step_by(2).copied().collect(),
                    Some(v.iter().skip(1).step_by(2).copied().collect()),
                )),
                _ => {
                    return Err(err(
                        path,
                        format!(
                            "{}: expected [{n}] or [{n}, 2], found {shape:?}",
                            field("iscell")
                        ),
                    ))
                }
            }
        }
        Err(_) => None,
    };
    if (o.cells_only || o.min_probability > 0.0) && iscell.is_none() {
        return Err(err(
            path,
            format!("--cells-only / --min-probability: {seg_path} has no iscell column"),
        ));
    }

    let mut table = RoiTable {
        height,
        width,
        ids: Vec::new(),
        offsets: vec![0],
        pixels: Vec::new(),
        weights: Vec::new(),
    };
    let (mut not_cell, mut empty) = (0usize, 0usize);
    for (r, mask) in masks.iter().enumerate() {
        if let Some((cell, prob)) = &iscell {
            let is_cell = cell[r] >= 0.5;
            let p = prob.as_ref().map_or(1.0, |p| p[r]);
            if (o.cells_only && !is_cell) || p < o.min_probability {
                not_cell += 1;
                continue;
            }
        }
        let mut px: Vec<(u32, f32)> = mask
            .iter()
            .filter(|&&(y, x, w)| y < height && x < width && w > 0.0)
            .map(|&(y, x, w)| ((y * width + x) as u32, w))
            .collect();
        if px.is_empty() {
            empty += 1;
            continue;
        }
        px.sort_by_key(|p| p.0);
        px.dedup_by_key(|p| p.0);
        let id = u32::try_from(ids[r]).map_err(|_| {
            err(
                path,
                format!("{}: id {} does not fit a u32 ROI id", field("id"), ids[r]),
            )
        })?;
        table.ids.push(id);
        for (p, w) in px {
            table.pixels.push(p);
            table.weights.push(w);
        }
        table.offsets.push(table.pixels.len() as u64);
    }
    if table.ids.is_empty() {
        return Err(err(
            path,
            format!("{seg_path}: no ROI left ({not_cell} not cells, {empty} with no pixel in the {height}x{width} frame)"),
        ));
    }
    let written: PathBuf = write_roi_file(out, &table, o.overwrite)?;
    Ok(RoiReport {
        out: written.display().to_string(),
        source: path.display().to_string(),
        plane_segmentation: seg_path,
        mask_kind: kind.into(),
        height,
        width,
        size_from,
        rois_in_file: n,
        rois: table.ids.len(),
        dropped_not_cell: not_cell,
        dropped_empty: empty,
        pixels: table.pixels.len(),
    })
}
