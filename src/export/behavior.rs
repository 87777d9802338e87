//! Behaviour and sync-board events: running speed and pupil diameter in the `behavior` processing
//! module; the board's frame clock, photodiode and encoder as acquired TimeSeries; link gaps as a
//! TimeIntervals table.

use super::nwb::{self, Storage, Timing};
use super::Writer;
use crate::session::layout;
use crate::session::{Behavior, SessionError, SessionReader};

pub(crate) struct BehaviorInputs {
    pub behavior: Behavior,
    pub frame_clock: (Vec<f64>, Vec<u32>),
    pub photodiode: (Vec<f64>, Vec<u8>),
    pub encoder: (Vec<f64>, Vec<i32>),
    pub gaps: (Vec<f64>, Vec<f64>),
}

fn even<A, B>(mut p: (Vec<A>, Vec<B>)) -> (Vec<A>, Vec<B>) {
    let n = p.0.len().min(p.1.len());
    p.0.truncate(n);
    p.1.truncate(n);
    p
}

impl BehaviorInputs {
    pub fn read(r: &SessionReader) -> Result<BehaviorInputs, SessionError> {
        let gaps = (
            r.optional_vec(layout::SYNC_GAP_START)?.unwrap_or_default(),
            r.optional_vec(layout::SYNC_GAP_END)?.unwrap_or_default(),
        );
        Ok(BehaviorInputs {
            behavior: r.behavior()?,
            frame_clock: even(r.frame_clock()?),
            photodiode: even(r.photodiode()?),
            encoder: even(r.encoder()?),
            gaps: even(gaps),
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn series<T: hdf5::H5Type + Copy>(
    w: &mut Writer,
    parent: &hdf5::Group,
    path: &str,
    name: &str,
    description: &str,
    times: &[f64],
    values: &[T],
    unit: &str,
) -> nwb::Result<()> {
    let ts = nwb::time_series(
        parent,
        name,
        "TimeSeries",
        description,
        &Timing::of(times.to_vec()),
    )?;
    nwb::data(&ts, &[values.len()], values, unit, Storage { gzip: 0 })?;
    w.note(&format!("{path}/{name}"));
    Ok(())
}

pub(crate) fn write(w: &mut Writer, b: &BehaviorInputs) -> nwb::Result<()> {
    let beh = &b.behavior;
    if !beh.time.is_empty() {
        let module = nwb::module(
            w.file,
            "behavior",
            "the animal's behaviour as the session recorded it (behavior/*)",
        )?;
        let bts = nwb::typed_group(
            &module,
            "BehavioralTimeSeries",
            nwb::CORE,
            "BehavioralTimeSeries",
        )?;
        series(
            w,
            &bts,
            "/processing/behavior/BehavioralTimeSeries",
            "running_speed",
            "treadmill running speed",
            &beh.time,
            &beh.running_speed,
            "cm/s",
        )?;
        // A live rig without a pupil camera records NaN: nothing was measured, so nothing is
        // exported.
        if beh.pupil_diameter.iter().any(|v| v.is_finite()) {
            let pt = nwb::typed_group(&module, "PupilTracking", nwb::CORE, "PupilTracking")?;
            series(
                w,
                &pt,
                "/processing/behavior/PupilTracking",
                "pupil_diameter",
                "pupil diameter (NaN where not measured)",
                &beh.time,
                &beh.pupil_diameter,
                "mm",
            )?;
        }
    }
    let acq = w
        .file
        .group("acquisition")
        .map_err(nwb::at("acquisition"))?;
    // Empty streams (no sync board) are left out: an empty TimeSeries says nothing.
    if !b.frame_clock.0.is_empty() {
        series(
            w,
            &acq,
            "/acquisition",
            "sync_frame_clock",
            "sync board: microscope frame clock rising edges, data = the board's frame counter",
            &b.frame_clock.0,
            &b.frame_clock.1,
            "frames",
        )?;
    }
    if !b.photodiode.0.is_empty() {
        series(
            w,
            &acq,
            "/acquisition",
            "sync_photodiode",
            "sync board: photodiode edges, data = level after the edge (0 dark, 1 bright)",
            &b.photodiode.0,
            &b.photodiode.1,
            "n.a.",
        )?;
    }
    if !b.encoder.0.is_empty() {
        series(
            w,
            &acq,
            "/acquisition",
            "sync_encoder",
            "sync board: treadmill encoder position (x4 quadrature counts)",
            &b.encoder.0,
            &b.encoder.1,
            "counts",
        )?;
    }
    if !b.gaps.0.is_empty() {
        let intervals = nwb::group(w.file, "intervals")?;
        let t = nwb::table(
            &intervals,
            "sync_gaps",
            nwb::CORE,
            "TimeIntervals",
            "times the sync board's link was lost, until it was back and active",
            &["start_time", "stop_time"],
        )?;
        let n = b.gaps.0.len();
        nwb::column(&t, "start_time", "link lost", &[n], &b.gaps.0)?;
        nwb::column(&t, "stop_time", "board back", &[n], &b.gaps.1)?;
        let ids: Vec<i64> = (0..n as i64).collect();
        nwb::ids(&t, &ids)?;
        w.note("/intervals/sync_gaps");
    }
    Ok(())
}
