//! The `twin` processing module: what the digital twin predicted for each compared neuron, the
//! population fidelity and its alarm over time, per-neuron fidelity (session correlation) and the
//! per-trial predicted and measured responses. Neurons are tied to the PlaneSegmentation's rows
//! through DynamicTableRegions, so a reader finds each prediction's ROI mask.

use super::nwb::{self, Timing};
use super::ophys::{self, PLANE_SEGMENTATION};
use super::{ExportError, Inputs, PartError, Writer};
use crate::session::layout;
use crate::session::SessionReader;

pub(crate) struct TwinInputs {
    pub roi_ids: Vec<u32>,
    /// Row of each compared neuron's ROI in the PlaneSegmentation (rois/ids order).
    pub roi_rows: Vec<i64>,
    pub rows: usize,
    pub times: Vec<f64>,
    pub trials: usize,
    pub session_corr: Option<Vec<f32>>,
    pub model: Option<String>,
    pub device: Option<String>,
}

impl TwinInputs {
    pub fn read(r: &SessionReader, inputs: &Inputs) -> Result<Option<TwinInputs>, ExportError> {
        let Some(roi_ids) = r.optional_vec::<u32>(layout::TWIN_ROI_ID)? else {
            return Ok(None);
        };
        let ids = inputs
            .rois
            .as_ref()
            .map(|t| t.ids.as_slice())
            .unwrap_or(&[]);
        let mut roi_rows = Vec::with_capacity(roi_ids.len());
        for id in &roi_ids {
            match ids.iter().position(|x| x == id) {
                Some(p) => roi_rows.push(p as i64),
                None => {
                    return Err(inputs.inconsistent(format!(
                        "`twin/roi_id` names ROI {id}, which rois/ids does not have"
                    )))
                }
            }
        }
        let m = roi_ids.len();
        let shape = |s| -> Result<Vec<usize>, ExportError> {
            r.shape_of(s)?.ok_or_else(|| {
                inputs.inconsistent(format!("`{}` is missing beside twin/roi_id", s.path))
            })
        };
        let mut rows = usize::MAX;
        for s in [
            layout::TWIN_FRAME,
            layout::TWIN_TIMES,
            layout::TWIN_PREDICTED,
            layout::TWIN_FIDELITY,
            layout::TWIN_ALARM,
        ] {
            let sh = shape(s)?;
            if s.rank == 2 && sh[1] != m {
                return Err(inputs.inconsistent(format!(
                    "`{}` has {} columns but twin/roi_id names {m} neurons",
                    s.path, sh[1]
                )));
            }
            rows = rows.min(sh[0]);
        }
        let mut trials = usize::MAX;
        for s in [
            layout::TWIN_TRIAL_CLIP,
            layout::TWIN_TRIAL_START,
            layout::TWIN_TRIAL_PREDICTED,
            layout::TWIN_TRIAL_MEASURED,
        ] {
            let sh = shape(s)?;
            if s.rank == 2 && sh[1] != m {
                return Err(inputs.inconsistent(format!(
                    "`{}` has {} columns but twin/roi_id names {m} neurons",
                    s.path, sh[1]
                )));
            }
            trials = trials.min(sh[0]);
        }
        let times: Vec<f64> = r.rows(layout::TWIN_TIMES, 0, rows)?;
        if times.windows(2).any(|w| w[1] <= w[0]) {
            return Err(
                inputs.inconsistent("`twin/timestamps` is not strictly increasing".to_string())
            );
        }
        let session_corr = r.optional_vec::<f32>(layout::TWIN_SESSION_CORR)?;
        if let Some(c) = &session_corr {
            if c.len() != m {
                return Err(inputs.inconsistent(format!(
                    "`twin/session_corr` has {} values but twin/roi_id names {m} neurons",
                    c.len()
                )));
            }
        }
        let starts: Vec<u64> = r.rows(layout::TWIN_TRIAL_START, 0, trials)?;
        if let Some(bad) = starts
            .iter()
            .find(|&&f| f as usize >= inputs.frame_times.len())
        {
            return Err(inputs.inconsistent(format!(
                "`twin/trials/start_frame` names frame {bad}, the session has {}",
                inputs.frame_times.len()
            )));
        }
        Ok(Some(TwinInputs {
            roi_ids,
            roi_rows,
            rows,
            times,
            trials,
            session_corr,
            model: r.group_str_attr("twin", "model"),
            device: r.group_str_attr("twin", "device"),
        }))
    }
}

pub(crate) fn write(
    w: &mut Writer,
    r: &SessionReader,
    inputs: &Inputs,
    t: &TwinInputs,
    block: usize,
) -> Result<(), PartError> {
    let m = t.roi_ids.len();
    let module = nwb::module(
        w.file,
        "twin",
        &format!(
            "the digital twin in the loop (twin/*): model {} on {}, {m} neurons compared with \
             their ROIs' dF/F",
            t.model.as_deref().unwrap_or("unknown"),
            t.device.as_deref().unwrap_or("unknown device"),
        ),
    )?;
    if t.rows > 0 {
        let timing = Timing::of(t.times.clone());
        ophys::roi_series(
            w,
            r,
            &module,
            "predicted",
            "the twin's predicted dF/F of each compared neuron, stepped on what the display \
             showed and the behaviour (twin/predicted)",
            layout::TWIN_PREDICTED,
            t.rows,
            &timing,
            &t.roi_rows,
            block,
        )?;
        w.note("/processing/twin/predicted");
        let fid = nwb::time_series(
            &module,
            "population_fidelity",
            "TimeSeries",
            "median over neurons of the sliding-window correlation of predicted and measured \
             dF/F, NaN until the window fills (twin/population_fidelity)",
            &timing,
        )?;
        ophys::copy_rows::<f64>(
            w,
            r,
            &fid,
            layout::TWIN_FIDELITY,
            t.rows,
            block,
            "Pearson r",
        )?;
        w.note("/processing/twin/population_fidelity");
        let alarm = nwb::time_series(
            &module,
            "fidelity_alarm",
            "TimeSeries",
            "fidelity alarm: 1 while the population fidelity stays below twin.alarm_fraction of \
             its reference for twin.alarm_seconds (twin/alarm)",
            &timing,
        )?;
        ophys::copy_rows::<u8>(w, r, &alarm, layout::TWIN_ALARM, t.rows, block, "n.a.")?;
        w.note("/processing/twin/fidelity_alarm");
    }
    if m > 0 {
        let mut cols = vec!["roi", "roi_id"];
        if t.session_corr.is_some() {
            cols.push("session_corr");
        }
        let tab = nwb::table(
            &module,
            "neuron_fidelity",
            nwb::HDMF_COMMON,
            "DynamicTable",
            "per-neuron fidelity of the twin: whole-session correlation of predicted and \
             measured dF/F",
            &cols,
        )?;
        nwb::region(
            w.file,
            &tab,
            "roi",
            "the neuron's ROI, a row of the PlaneSegmentation",
            &t.roi_rows,
            PLANE_SEGMENTATION,
        )?;
        nwb::column(
            &tab,
            "roi_id",
            "the neuron's ROI id (rois/ids)",
            &[m],
            &t.roi_ids,
        )?;
        if let Some(c) = &t.session_corr {
            nwb::column(
                &tab,
                "session_corr",
                "Pearson r of predicted and measured dF/F over the session (NaN if undefined)",
                &[m],
                c,
            )?;
        }
        let ids: Vec<i64> = (0..m as i64).collect();
        nwb::ids(&tab, &ids)?;
        w.note("/processing/twin/neuron_fidelity");
    }
    if t.trials > 0 && m > 0 {
        let k = t.trials;
        let tab = nwb::table(
            &module,
            "trial_responses",
            nwb::HDMF_COMMON,
            "DynamicTable",
            "per compared trial (clip onset to the next onset): mean predicted and measured \
             dF/F of each neuron, neurons in neuron_fidelity's order",
            &[
                "clip_id",
                "start_frame",
                "start_time",
                "predicted",
                "measured",
            ],
        )?;
        let clip: Vec<i32> = r.rows(layout::TWIN_TRIAL_CLIP, 0, k)?;
        let start: Vec<u64> = r.rows(layout::TWIN_TRIAL_START, 0, k)?;
        let start_time: Vec<f64> = start
            .iter()
            .map(|&f| inputs.frame_times[f as usize])
            .collect();
        nwb::column(
            &tab,
            "clip_id",
            "clip of the trial (clip library index)",
            &[k],
            &clip,
        )?;
        nwb::column(
            &tab,
            "start_frame",
            "first imaging frame of the trial",
            &[k],
            &start,
        )?;
        nwb::column(
            &tab,
            "start_time",
            "time of that frame, s",
            &[k],
            &start_time,
        )?;
        let pred: Vec<f32> = r.rows(layout::TWIN_TRIAL_PREDICTED, 0, k)?;
        nwb::column(
            &tab,
            "predicted",
            "mean predicted dF/F [trial, neuron]",
            &[k, m],
            &pred,
        )?;
        let meas: Vec<f32> = r.rows(layout::TWIN_TRIAL_MEASURED, 0, k)?;
        nwb::column(
            &tab,
            "measured",
            "mean measured dF/F [trial, neuron]",
            &[k, m],
            &meas,
        )?;
        let ids: Vec<i64> = (0..k as i64).collect();
        nwb::ids(&tab, &ids)?;
        w.note("/processing/twin/trial_responses");
    }
    Ok(())
}
