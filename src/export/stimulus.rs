//! What the mouse saw: trials as the `trials` TimeIntervals table (with each trial's clip id and
//! parameters), the clip library as a stimulus template (one ImageSeries, clip by clip), and the
//! display's flips as a presentation series of indices into that template.

use super::nwb::{self, Storage, Timing};
use super::{ExportError, Inputs, PartError, Writer};
use crate::session::{ClipParams, Flips, SessionReader, Trials};

pub const TEMPLATE: &str = "/stimulus/templates/clip_library";

pub(crate) struct StimulusInputs {
    pub trials: Trials,
    pub params: Vec<ClipParams>,
    pub flips: Flips,
}

impl StimulusInputs {
    pub fn read(r: &SessionReader, inputs: &Inputs) -> Result<StimulusInputs, ExportError> {
        let trials = r.trials()?;
        let params = r.clip_params()?;
        if let Some(bad) = trials
            .clip
            .iter()
            .find(|&&c| c < 0 || c as usize >= params.len())
        {
            return Err(inputs.inconsistent(format!(
                "`stimulus/trials/clip` names clip {bad}, the library has {}",
                params.len()
            )));
        }
        if let Some(i) = (0..trials.start.len()).find(|&i| trials.end[i] <= trials.start[i]) {
            return Err(inputs.inconsistent(format!(
                "`stimulus/trials` row {i} ends ({}) before it starts ({})",
                trials.end[i], trials.start[i]
            )));
        }
        // `flips()` itself refuses clip ids outside the library.
        let flips = r.flips()?;
        Ok(StimulusInputs {
            trials,
            params,
            flips,
        })
    }
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        0 => "natural",
        1 => "grating",
        2 => "gabor",
        3 => "noise",
        4 => "free-form",
        _ => "unknown",
    }
}

pub(crate) fn write(
    w: &mut Writer,
    r: &SessionReader,
    inputs: &Inputs,
    s: &StimulusInputs,
) -> Result<(), PartError> {
    let m = &inputs.meta;
    let per_clip = m.frames_per_clip;
    if !s.trials.start.is_empty() {
        let intervals = nwb::group(w.file, "intervals")?;
        let cols = [
            "start_time",
            "stop_time",
            "clip_id",
            "clip_kind",
            "orientation",
            "spatial_frequency",
            "temporal_frequency",
            "contrast",
        ];
        let t = nwb::table(
            &intervals,
            "trials",
            nwb::CORE,
            "TimeIntervals",
            "trials: a clip from start_time, then gray until stop_time (stimulus/trials)",
            &cols,
        )?;
        let n = s.trials.start.len();
        nwb::column(
            &t,
            "start_time",
            "first flip of the trial's clip",
            &[n],
            &s.trials.start,
        )?;
        nwb::column(
            &t,
            "stop_time",
            "end of the trial's gray interval",
            &[n],
            &s.trials.end,
        )?;
        nwb::column(
            &t,
            "clip_id",
            "clip shown: index into the clip library (stimulus/templates/clip_library holds \
             clip c at rows c*F..(c+1)*F)",
            &[n],
            &s.trials.clip,
        )?;
        let p: Vec<&ClipParams> = s
            .trials
            .clip
            .iter()
            .map(|&c| &s.params[c as usize])
            .collect();
        let kinds: Vec<&str> = p.iter().map(|c| kind_name(c.kind)).collect();
        let kd = nwb::text_array(&t, "clip_kind", &kinds)?;
        nwb::typed(&kd, nwb::HDMF_COMMON, "VectorData")?;
        nwb::str_attr(
            &kd,
            "description",
            "family of the clip: natural, grating, gabor, noise, free-form",
        )?;
        let f32col = |name: &str, desc: &str, get: fn(&ClipParams) -> f32| {
            let v: Vec<f32> = p.iter().map(|c| get(c)).collect();
            nwb::column(&t, name, desc, &[n], &v).map(|_| ())
        };
        f32col(
            "orientation",
            "grating orientation, deg (NaN for non-parametric clips)",
            |c| c.orientation,
        )?;
        f32col(
            "spatial_frequency",
            "grating spatial frequency, cycles/deg (NaN for non-parametric clips)",
            |c| c.spatial_frequency,
        )?;
        f32col(
            "temporal_frequency",
            "grating drift rate, Hz (NaN for non-parametric clips)",
            |c| c.temporal_frequency,
        )?;
        f32col(
            "contrast",
            "Michelson contrast (RMS contrast for natural clips)",
            |c| c.contrast,
        )?;
        let ids: Vec<i64> = (0..n as i64).collect();
        nwb::ids(&t, &ids)?;
        w.note("/intervals/trials");
    }
    if m.n_clips > 0 && per_clip > 0 {
        let templates = w
            .file
            .group("stimulus/templates")
            .map_err(nwb::at("stimulus/templates"))?;
        let ts = nwb::time_series(
            &templates,
            "clip_library",
            "ImageSeries",
            &format!(
                "the session's clip library, {} clips of {per_clip} frames each, clip c at rows \
                 c*{per_clip}..(c+1)*{per_clip}; 8-bit linear luminance (0 black, 255 white), \
                 [frame, row, column] at the stimulus resolution; times are within a clip",
                m.n_clips
            ),
            &Timing::Rate {
                start: 0.0,
                rate: m.stimulus_frame_rate_hz,
            },
        )?;
        let shape = [m.n_clips * per_clip, m.stimulus_height, m.stimulus_width];
        // One clip per chunk, always compressed: clips compress well and are read clip by clip.
        let ds = nwb::dataset::<u8>(&ts, "data", &shape, Some(per_clip), Storage { gzip: 4 })?;
        nwb::data_attrs(&ds, "8-bit linear luminance")?;
        for c in 0..m.n_clips {
            let frames = r.clip(c)?;
            nwb::write_rows(&ds, TEMPLATE, &shape, c * per_clip, &frames)?;
        }
        nwb::array(
            &ts,
            "dimension",
            &[2],
            &[m.stimulus_width as i32, m.stimulus_height as i32],
            Storage { gzip: 0 },
        )?;
        w.note(TEMPLATE);
    }
    if !s.flips.time.is_empty() {
        let presentation = w
            .file
            .group("stimulus/presentation")
            .map_err(nwb::at("stimulus/presentation"))?;
        let ts = nwb::time_series(
            &presentation,
            "display_flips",
            "TimeSeries",
            &format!(
                "what the display showed from each flip on: row of {TEMPLATE} \
                 (clip * {per_clip} + clip frame), -1 for gray (stimulus/flips)"
            ),
            &Timing::of(s.flips.time.clone()),
        )?;
        let rows: Vec<i64> = s
            .flips
            .clip
            .iter()
            .zip(&s.flips.frame)
            .map(|(&c, &f)| {
                if c < 0 {
                    -1
                } else {
                    c as i64 * per_clip as i64 + f as i64
                }
            })
            .collect();
        nwb::data(&ts, &[rows.len()], &rows, "n.a.", Storage { gzip: 0 })?;
        w.note("/stimulus/presentation/display_flips");
    }
    Ok(())
}
