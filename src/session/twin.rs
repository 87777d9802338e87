//! The `twin/` group: what the twin predicted in the loop and how well it matched the brain.
//!
//! Rows are buffered like every other stream and reach the disk at each flush; the per-neuron
//! session correlation and the summary attributes are written when the session ends.

use super::error::SessionError;
use super::layout;
use super::writer::{ensure_group, write_num_attr, write_str_attr, write_whole, Appender};
use super::SessionWriter;

pub(crate) struct TwinAppenders {
    frame: Appender<u64>,
    time: Appender<f64>,
    predicted: Appender<f32>,
    fidelity: Appender<f64>,
    alarm: Appender<u8>,
    trial_clip: Appender<i32>,
    trial_start: Appender<u64>,
    trial_predicted: Appender<f32>,
    trial_measured: Appender<f32>,
    neurons: usize,
}

impl TwinAppenders {
    pub(super) fn write_pending(&mut self) -> Result<(), SessionError> {
        self.frame.write_pending()?;
        self.time.write_pending()?;
        self.predicted.write_pending()?;
        self.fidelity.write_pending()?;
        self.alarm.write_pending()?;
        self.trial_clip.write_pending()?;
        self.trial_start.write_pending()?;
        self.trial_predicted.write_pending()?;
        self.trial_measured.write_pending()
    }
}

/// How the session ended for the twin.
#[derive(Debug, Clone)]
pub struct TwinEnd<'a> {
    /// Whole-session correlation per compared neuron (NaN where undefined).
    pub session_corr: &'a [f32],
    pub median_session_corr: Option<f64>,
    pub reference_fidelity: Option<f64>,
    pub alarms: u64,
    pub frames_skipped: u64,
}

impl SessionWriter {
    /// Starts the `twin/` streams for the compared neurons (`roi_ids`, in output order).
    pub fn begin_twin(
        &mut self,
        model: &str,
        device: &str,
        roi_ids: &[u32],
    ) -> Result<(), SessionError> {
        let f = &self.file;
        let m = roi_ids.len();
        let rows = (65536 / m.max(1)).clamp(1, 1024);
        write_whole(f, layout::TWIN_ROI_ID, roi_ids)?;
        let g = ensure_group(f, "twin")?;
        write_str_attr(&g, "model", model)?;
        write_str_attr(&g, "device", device)?;
        write_num_attr(&g, "neurons", m as u64)?;
        self.twin = Some(TwinAppenders {
            frame: Appender::create(f, layout::TWIN_FRAME, &[], 1024, None)?,
            time: Appender::create(f, layout::TWIN_TIMES, &[], 1024, None)?,
            predicted: Appender::create(f, layout::TWIN_PREDICTED, &[m], rows, None)?,
            fidelity: Appender::create(f, layout::TWIN_FIDELITY, &[], 1024, None)?,
            alarm: Appender::create(f, layout::TWIN_ALARM, &[], 1024, None)?,
            trial_clip: Appender::create(f, layout::TWIN_TRIAL_CLIP, &[], 1024, None)?,
            trial_start: Appender::create(f, layout::TWIN_TRIAL_START, &[], 1024, None)?,
            trial_predicted: Appender::create(f, layout::TWIN_TRIAL_PREDICTED, &[m], rows, None)?,
            trial_measured: Appender::create(f, layout::TWIN_TRIAL_MEASURED, &[m], rows, None)?,
            neurons: m,
        });
        Ok(())
    }

    fn twin_mut(&mut self, len: usize, what: &str) -> Result<&mut TwinAppenders, SessionError> {
        let t = self
            .twin
            .as_mut()
            .ok_or_else(|| SessionError::Layout("twin rows before begin_twin".into()))?;
        if len != t.neurons {
            return Err(SessionError::Layout(format!(
                "twin/{what} row of {len} for {} neurons",
                t.neurons
            )));
        }
        Ok(t)
    }

    /// Appends one frame's prediction and fidelity (written at the next flush).
    pub fn append_twin(
        &mut self,
        frame_index: u64,
        time: f64,
        predicted: &[f32],
        population_fidelity: f64,
        alarm: bool,
    ) -> Result<(), SessionError> {
        let t = self.twin_mut(predicted.len(), "predicted")?;
        t.frame.push(&[frame_index]);
        t.time.push(&[time]);
        t.predicted.push(predicted);
        t.fidelity.push(&[population_fidelity]);
        t.alarm.push(&[alarm as u8]);
        Ok(())
    }

    /// Appends one trial's mean predicted and measured responses.
    pub fn append_twin_trial(
        &mut self,
        clip: i32,
        start_frame: u64,
        predicted: &[f32],
        measured: &[f32],
    ) -> Result<(), SessionError> {
        let t = self.twin_mut(predicted.len(), "trials/predicted")?;
        if measured.len() != t.neurons {
            return Err(SessionError::Layout(format!(
                "twin/trials/measured row of {} for {} neurons",
                measured.len(),
                t.neurons
            )));
        }
        t.trial_clip.push(&[clip]);
        t.trial_start.push(&[start_frame]);
        t.trial_predicted.push(predicted);
        t.trial_measured.push(measured);
        Ok(())
    }

    /// Writes the per-neuron session correlation and the summary attributes.
    pub fn end_twin(&mut self, end: &TwinEnd<'_>) -> Result<(), SessionError> {
        self.twin_mut(end.session_corr.len(), "session_corr")?;
        write_whole(&self.file, layout::TWIN_SESSION_CORR, end.session_corr)?;
        let g = ensure_group(&self.file, "twin")?;
        write_num_attr(
            &g,
            "median_session_corr",
            end.median_session_corr.unwrap_or(f64::NAN),
        )?;
        write_num_attr(
            &g,
            "reference_fidelity",
            end.reference_fidelity.unwrap_or(f64::NAN),
        )?;
        write_num_attr(&g, "alarms", end.alarms)?;
        write_num_attr(&g, "frames_skipped", end.frames_skipped)?;
        Ok(())
    }
}
