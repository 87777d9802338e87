//! The optical physiology part of the NWB file: the microscope (Device), its imaging plane and
//! optical channel, the raw movie (TwoPhotonSeries, streamed in blocks of frames) and the
//! `ophys` processing module (PlaneSegmentation with weighted pixel masks, Fluorescence, DfOverF,
//! deconvolved events, motion shifts).

use std::time::Instant;

use hdf5::H5Type;

use super::nwb::{self, Storage, Timing, WriteError};
use super::{Inputs, PartError, Writer};
use crate::nwbmask::PixelMask;
use crate::session::layout::{self, Spec};
use crate::session::{SessionError, SessionReader};

pub const DEVICE: &str = "/general/devices/Microscope";
pub const IMAGING_PLANE: &str = "/general/optophysiology/ImagingPlane";
pub const PLANE_SEGMENTATION: &str = "/processing/ophys/ImageSegmentation/PlaneSegmentation";

/// Device, imaging plane and optical channel, from the rig config stored in the session.
pub(crate) fn write_general(w: &mut Writer, inputs: &Inputs) -> nwb::Result<()> {
    let general = w.file.group("general").map_err(nwb::at("general"))?;
    let im = &inputs.cfg.imaging;
    let devices = nwb::group(&general, "devices")?;
    let dev = nwb::typed_group(&devices, "Microscope", nwb::CORE, "Device")?;
    nwb::str_attr(
        &dev,
        "description",
        &format!(
            "two-photon microscope of rig {} ({}x{} px at {} Hz, {} um/px)",
            inputs.cfg.rig.name, im.width, im.height, im.frame_rate_hz, im.um_per_px
        ),
    )?;
    w.note(DEVICE);
    let oph = nwb::group(&general, "optophysiology")?;
    let plane = nwb::typed_group(&oph, "ImagingPlane", nwb::CORE, "ImagingPlane")?;
    nwb::text(
        &plane,
        "description",
        &format!("imaging plane in {}, one plane per frame", im.location),
    )?;
    nwb::scalar(
        &plane,
        "excitation_lambda",
        im.excitation_wavelength_nm as f32,
    )?;
    nwb::scalar(&plane, "imaging_rate", inputs.meta.frame_rate_hz as f32)?;
    nwb::text(&plane, "indicator", &im.indicator)?;
    nwb::text(&plane, "location", &im.location)?;
    let um = (im.um_per_px * 1e-6) as f32;
    let gs = nwb::array(&plane, "grid_spacing", &[2], &[um, um], Storage { gzip: 0 })?;
    nwb::str_attr(&gs, "unit", "meters")?;
    plane
        .link_soft(DEVICE, "device")
        .map_err(nwb::at("device"))?;
    let ch = nwb::typed_group(&plane, "OpticalChannel", nwb::CORE, "OpticalChannel")?;
    nwb::text(&ch, "description", "green emission (calcium indicator)")?;
    nwb::scalar(&ch, "emission_lambda", im.emission_wavelength_nm as f32)?;
    w.note(IMAGING_PLANE);
    Ok(())
}

#[derive(Debug, Default)]
pub(crate) struct Movie {
    /// The session's deflated chunks were copied as stored (at this level).
    pub passthrough: Option<u8>,
    pub frames: usize,
    pub bytes: u64,
    pub seconds: f64,
}

pub(crate) enum MovieError {
    Write(WriteError),
    Session(SessionError),
    Interrupted,
}

impl From<WriteError> for MovieError {
    fn from(e: WriteError) -> Self {
        MovieError::Write(e)
    }
}

/// `/acquisition/TwoPhotonSeries`: every frame, copied `block` frames at a time into a dataset
/// chunked one frame per chunk (as the session is), so memory stays at one block whatever the
/// session's length.
pub(crate) fn write_movie(
    w: &mut Writer,
    r: &SessionReader,
    inputs: &Inputs,
    block: usize,
    progress: &dyn Fn(u64, u64),
) -> Result<Movie, MovieError> {
    let m = &inputs.meta;
    let (t, h, wd) = (m.n_frames, m.height, m.width);
    let acq = w
        .file
        .group("acquisition")
        .map_err(nwb::at("acquisition"))?;
    let ts = nwb::time_series(
        &acq,
        "TwoPhotonSeries",
        "TwoPhotonSeries",
        "raw two-photon frames as recorded, [frame, row, column]",
        &Timing::of(inputs.frame_times.clone()),
    )?;
    let um = inputs.cfg.imaging.um_per_px * 1e-6;
    let fov = nwb::array(
        &ts,
        "field_of_view",
        &[2],
        &[(wd as f64 * um) as f32, (h as f64 * um) as f32],
        Storage { gzip: 0 },
    )?;
    nwb::str_attr(&fov, "unit", "meters")?;
    nwb::array(
        &ts,
        "dimension",
        &[2],
        &[wd as i32, h as i32],
        Storage { gzip: 0 },
    )?;
    ts.link_soft(IMAGING_PLANE, "imaging_plane")
        .map_err(nwb::at("imaging_plane"))?;
    let shape = [t, h, wd];
    // A session recorded with deflate has its frames' chunks copied as stored: no decoding and
    // encoding of every frame, and the file keeps the session's compression.
    let passthrough = r.frame_chunks_deflated();
    let ds = match passthrough {
        Some(level) => ts
            .new_dataset::<u16>()
            .shape(shape)
            .chunk([1, h, wd])
            .deflate(level)
            .create("data")
            .map_err(nwb::at("acquisition/TwoPhotonSeries/data"))?,
        None => nwb::dataset::<u16>(&ts, "data", &shape, Some(1), w.storage)?,
    };
    nwb::data_attrs(&ds, "counts")?;
    let block = block.max(1);
    let mut buf = vec![0u16; block * h * wd];
    let mut raw: Vec<u8> = Vec::new();
    let name = "acquisition/TwoPhotonSeries/data";
    let t0 = Instant::now();
    let mut done = 0usize;
    while done < t {
        if crate::interrupt::requested() {
            return Err(MovieError::Interrupted);
        }
        let n = block.min(t - done);
        if passthrough.is_some() {
            for i in done..done + n {
                match r
                    .read_frame_chunk_raw(i, &mut raw)
                    .map_err(MovieError::Session)?
                {
                    Some(mask) => nwb::write_chunk_raw(&ds, name, &[i as u64, 0, 0], mask, &raw)?,
                    // A chunk never stored (a crashed writer): read it the ordinary way.
                    None => {
                        let frame = &mut buf[..h * wd];
                        r.read_frame_into(i, frame).map_err(MovieError::Session)?;
                        nwb::write_rows(&ds, name, &shape, i, frame)?;
                    }
                }
            }
        } else {
            for (k, frame) in buf[..n * h * wd].chunks_exact_mut(h * wd).enumerate() {
                r.read_frame_into(done + k, frame)
                    .map_err(MovieError::Session)?;
            }
            nwb::write_rows(&ds, name, &shape, done, &buf[..n * h * wd])?;
        }
        done += n;
        progress(done as u64, t as u64);
    }
    w.note("/acquisition/TwoPhotonSeries");
    Ok(Movie {
        passthrough,
        frames: t,
        bytes: (t * h * wd * 2) as u64,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Copies rows `0..rows` of a 2-D session stream into a new `data` dataset of a TimeSeries,
/// `block` rows at a time.
pub(crate) fn copy_rows<T: H5Type + Copy>(
    w: &Writer,
    r: &SessionReader,
    ts: &hdf5::Group,
    spec: Spec,
    rows: usize,
    block: usize,
    unit: &str,
) -> Result<(), PartError> {
    let cols = r
        .shape_of(spec)?
        .map_or(0, |s| if s.len() > 1 { s[1] } else { 1 });
    let shape: Vec<usize> = if spec.rank == 1 {
        vec![rows]
    } else {
        vec![rows, cols]
    };
    let ds = nwb::dataset::<T>(ts, "data", &shape, None, w.storage)?;
    nwb::data_attrs(&ds, unit)?;
    let mut start = 0;
    while start < rows {
        let end = (start + block.max(1)).min(rows);
        let v: Vec<T> = r.rows(spec, start, end)?;
        nwb::write_rows(&ds, spec.path, &shape, start, &v)?;
        start = end;
    }
    Ok(())
}

/// The `ophys` module: segmentation, traces, events, motion.
pub(crate) fn write_processing(
    w: &mut Writer,
    r: &SessionReader,
    inputs: &Inputs,
    block: usize,
) -> Result<(), PartError> {
    // Traces without ROI masks were refused when the inputs were read.
    let Some(rois) = &inputs.rois else {
        return Ok(());
    };
    let module = nwb::module(
        w.file,
        "ophys",
        "optical physiology extracted online by twinrig: ROI masks, fluorescence, dF/F, \
         deconvolved events and rigid motion",
    )?;
    let seg = nwb::typed_group(&module, "ImageSegmentation", nwb::CORE, "ImageSegmentation")?;
    let ps = nwb::table(
        &seg,
        "PlaneSegmentation",
        nwb::CORE,
        "PlaneSegmentation",
        "ROI masks (rois/* of the session): weighted pixel masks, ids are the session's ROI ids",
        &["pixel_mask"],
    )?;
    let width = rois.width as u32;
    let mask: Vec<PixelMask> = rois
        .pixels
        .iter()
        .zip(&rois.weights)
        .map(|(&p, &wt)| PixelMask {
            x: p / width,
            y: p % width,
            weight: wt,
        })
        .collect();
    nwb::column(
        &ps,
        "pixel_mask",
        "pixels of each ROI: x (column), y (row), weight",
        &[mask.len()],
        &mask,
    )?;
    nwb::column_index(w.file, &ps, "pixel_mask", &rois.offsets[1..])?;
    let ids: Vec<i64> = rois.ids.iter().map(|&i| i as i64).collect();
    nwb::ids(&ps, &ids)?;
    ps.link_soft(IMAGING_PLANE, "imaging_plane")
        .map_err(nwb::at("imaging_plane"))?;
    // Required by the schema even when it holds no image (as pynwb writes it).
    nwb::group(&ps, "reference_images")?;
    w.note(PLANE_SEGMENTATION);
    if inputs.trace_rows == 0 {
        return Ok(());
    }
    let all_rows: Vec<i64> = (0..rois.len() as i64).collect();
    let rows = inputs.trace_rows;
    let timing = Timing::of(r.rows(layout::TRACE_TIMES, 0, rows)?);
    let fl = nwb::typed_group(&module, "Fluorescence", nwb::CORE, "Fluorescence")?;
    let series: [(&str, Spec, &str); 4] = [
        (
            "Raw",
            layout::TRACE_RAW,
            "weighted mean fluorescence of each ROI (traces/raw)",
        ),
        (
            "Neuropil",
            layout::TRACE_NEUROPIL,
            "mean fluorescence of each ROI's neuropil annulus (traces/neuropil)",
        ),
        (
            "NeuropilCorrected",
            layout::TRACE_CORRECTED,
            "raw - coefficient * neuropil (traces/corrected)",
        ),
        (
            "Baseline",
            layout::TRACE_F0,
            "running maximin baseline F0 of the corrected trace (traces/f0)",
        ),
    ];
    for (name, spec, desc) in series {
        roi_series(w, r, &fl, name, desc, spec, rows, &timing, &all_rows, block)?;
        w.note(&format!("/processing/ophys/Fluorescence/{name}"));
    }
    let dff = nwb::typed_group(&module, "DfOverF", nwb::CORE, "DfOverF")?;
    roi_series(
        w,
        r,
        &dff,
        "DfOverF",
        "(corrected - F0) / F0 of each ROI (traces/dff)",
        layout::TRACE_DFF,
        rows,
        &timing,
        &all_rows,
        block,
    )?;
    w.note("/processing/ophys/DfOverF/DfOverF");
    if inputs.spike_rows > 0 {
        let frames: Vec<u64> = r.rows(layout::SPIKE_FRAME, 0, inputs.spike_rows)?;
        let times: Vec<f64> = frames
            .iter()
            .map(|&f| inputs.frame_times[f as usize])
            .collect();
        roi_series(
            w,
            r,
            &fl,
            "Deconvolved",
            "online OASIS event estimates (traces/spikes, a.u. in dF/F per event), at the time \
             of the frame each row belongs to",
            layout::SPIKES,
            inputs.spike_rows,
            &Timing::of(times),
            &all_rows,
            block,
        )?;
        w.note("/processing/ophys/Fluorescence/Deconvolved");
    }
    let motion = nwb::time_series(
        &module,
        "MotionShift",
        "TimeSeries",
        "rigid shift estimated online, (dy, dx) per analysed frame: frame(y, x) = \
         scene(y - dy, x - dx) (traces/shift)",
        &timing,
    )?;
    copy_rows::<f32>(w, r, &motion, layout::TRACE_SHIFT, rows, block, "pixels")?;
    w.note("/processing/ophys/MotionShift");
    Ok(())
}

/// A RoiResponseSeries over the PlaneSegmentation's `rows`, its data copied from `spec`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn roi_series(
    w: &Writer,
    r: &SessionReader,
    parent: &hdf5::Group,
    name: &str,
    description: &str,
    spec: Spec,
    rows: usize,
    timing: &Timing,
    roi_rows: &[i64],
    block: usize,
) -> Result<(), PartError> {
    let ts = nwb::time_series(parent, name, "RoiResponseSeries", description, timing)?;
    copy_rows::<f32>(w, r, &ts, spec, rows, block, spec.unit)?;
    nwb::region(
        w.file,
        &ts,
        "rois",
        "the ROIs of the columns, rows of the PlaneSegmentation",
        roi_rows,
        PLANE_SEGMENTATION,
    )?;
    Ok(())
}
