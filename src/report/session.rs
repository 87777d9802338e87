//! The report of a session: overview, mean image with ROIs, the twin against the brain, trial
//! averages, the plan, latencies and display timing. Each section reads what it needs through
//! the session reader and says in one line what the file lacks.

use std::collections::HashMap;

use super::html::{Body, Section};
use super::image;
use super::svg::{self, Chart, ACCENT, EXTRA, MEASURED, PREDICTED, SHUFFLED};
use super::{Numbers, Progress, Report, ReportError};
use crate::closedloop::gain;
use crate::session::{RoiTable, SessionReader, Traces, TwinResults};
use crate::stats::{self, Histogram, SHUFFLE_OFFSETS};

/// Frames averaged for the mean image, spread evenly over the session: enough for a clean
/// image, few enough that a long session's report does not read the whole file.
const MEAN_FRAMES: usize = 300;
/// Shuffled pairs per neuron in the baseline.
/// Length of a fidelity-over-time window.
const WINDOW_S: f64 = 20.0;
/// Panels of trial averages at most (the clips with the most trials).
const MAX_CLIP_PANELS: usize = 40;
/// Plan stimuli drawn at most.
const MAX_PLAN_STIMULI: usize = 16;

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.filter(|x| x.is_finite())
        .map_or("-".into(), |x| format!("{x:.decimals$}"))
}

/// Predicted and measured dF/F of the twin's neurons on the frames both cover.
struct Aligned {
    rows: usize,
    m: usize,
    time: Vec<f64>,
    /// [rows, m], row-major.
    pred: Vec<f32>,
    meas: Vec<f32>,
    roi_id: Vec<u32>,
    /// Per neuron: from twin/session_corr when the session stored it, else computed here.
    fidelity: Vec<f64>,
    fidelity_source: &'static str,
}

/// Pairs twin rows with trace rows by frame index (either may have skipped frames) and twin
/// neurons with trace columns by ROI id.
fn align(tw: &TwinResults, tr: &Traces, rois: &RoiTable) -> Aligned {
    let m = tw.neurons();
    let cols: Vec<Option<usize>> = tw
        .roi_id
        .iter()
        .map(|id| {
            rois.ids
                .iter()
                .position(|x| x == id)
                .filter(|&c| c < tr.n_rois)
        })
        .collect();
    let by_frame: HashMap<u64, usize> = tr
        .frame_index
        .iter()
        .enumerate()
        .map(|(i, &f)| (f, i))
        .collect();
    let mut a = Aligned {
        rows: 0,
        m,
        time: Vec::new(),
        pred: Vec::new(),
        meas: Vec::new(),
        roi_id: tw.roi_id.clone(),
        fidelity: Vec::new(),
        fidelity_source: "",
    };
    for (p, f) in tw.frame_index.iter().enumerate() {
        let Some(&row) = by_frame.get(f) else {
            continue;
        };
        a.time.push(tw.time[p]);
        a.pred.extend_from_slice(&tw.predicted[p * m..(p + 1) * m]);
        for c in &cols {
            a.meas
                .push(c.map_or(f32::NAN, |c| tr.dff[row * tr.n_rois + c]));
        }
        a.rows += 1;
    }
    let computed = stats::matched_corr(&a.pred, &a.meas, m, 0..a.rows);
    (a.fidelity, a.fidelity_source) = match &tw.session_corr {
        Some(c) if c.len() == m => (
            c.iter().map(|&v| v as f64).collect(),
            "twin/session_corr (the loop's whole-session correlation)",
        ),
        _ => (
            computed,
            "computed here from twin/predicted and traces/dff (the session stored no twin/session_corr)",
        ),
    };
    a
}

pub fn report(r: &SessionReader, progress: Progress<'_>) -> Result<Report, ReportError> {
    let path = r.path();
    let meta = r.meta().clone();
    let n_mean = meta.n_frames.min(MEAN_FRAMES) as u64;
    let total = n_mean + 8;
    let mut done = 0u64;
    let mut step = |k: u64| {
        done += k;
        progress(done, total);
    };
    let mut nums = Numbers::default();
    let rois = r.rois()?;
    let traces = r.traces()?;
    let twin = r.twin()?;
    let trials = r.trials()?;
    let flips = r.flips()?;
    let plan = gain::session_plan(r)?;
    step(1);
    let aligned = match (&twin, &traces, &rois) {
        (Some(tw), Some(tr), Some(ro)) if tw.neurons() > 0 => Some(align(tw, tr, ro)),
        _ => None,
    };
    step(1);

    let mut sections = vec![overview(
        r, &twin, &traces, &trials, &flips, &plan, &mut nums,
    )?];
    sections.push(mean_image(r, rois.as_ref(), aligned.as_ref(), &mut |k| {
        step(k)
    })?);
    step(1);
    let twin_why = match (&twin, &traces, &rois) {
        (None, ..) => {
            "the session has no twin/ group: it was recorded without the twin in the loop"
                .to_string()
        }
        (_, None, _) => {
            "the session has no traces/dff: nothing measured to compare the twin with".to_string()
        }
        (_, _, None) => {
            "the session has no rois/: the twin's neurons cannot be matched with traces".to_string()
        }
        _ => "the twin compared no neurons, or no twin row matches an analysed frame".to_string(),
    };
    let usable = aligned.as_ref().filter(|a| a.rows >= 3 && a.m > 0);
    match usable {
        Some(a) => {
            let offsets = stats::shuffle_offsets(a.m, SHUFFLE_OFFSETS);
            let shuffled = stats::shuffled_corr(&a.pred, &a.meas, a.m, 0..a.rows, &offsets);
            sections.push(traces_section(a, &mut nums));
            sections.push(distribution(a, &shuffled, &mut nums));
            step(1);
            sections.push(over_time(
                a,
                twin.as_ref(),
                &offsets,
                meta.frame_rate_hz,
                &mut nums,
            ));
        }
        None => {
            for (id, title) in [
                ("traces", "Predicted vs measured dF/F"),
                ("fidelity", "Fidelity distribution"),
                ("fidelity-time", "Fidelity over time"),
            ] {
                sections.push(Section::absent(id, title, twin_why.clone()));
            }
            step(1);
        }
    }
    step(1);
    sections.push(trial_averages(
        r,
        &trials,
        usable,
        traces.as_ref(),
        plan.as_ref(),
        &mut nums,
    )?);
    step(1);
    sections.push(plan_section(r, plan.as_ref(), &mut nums)?);
    step(1);
    sections.push(latency(r, &mut nums)?);
    sections.push(display_timing(r, &flips, &mut nums)?);
    step(1);
    let subtitle = format!(
        "session {} of mouse {}, started {}; {}",
        meta.session_id,
        meta.mouse_id,
        meta.start_time,
        path.display()
    );
    Ok(super::finish(
        "session",
        path,
        &format!("twinrig session report: {}", meta.session_id),
        &subtitle,
        sections,
        nums,
    ))
}

fn overview(
    r: &SessionReader,
    twin: &Option<TwinResults>,
    traces: &Option<Traces>,
    trials: &crate::session::Trials,
    flips: &crate::session::Flips,
    plan: &Option<gain::SessionPlan>,
    nums: &mut Numbers,
) -> Result<Section, ReportError> {
    let m = r.meta();
    let times = r.frame_times()?;
    let duration = match (times.first(), times.last()) {
        (Some(a), Some(z)) => z - a + 1.0 / m.frame_rate_hz.max(1e-9),
        _ => 0.0,
    };
    nums.set("frames", m.n_frames as f64);
    nums.set("duration_s", duration);
    nums.set("rois", m.n_rois as f64);
    nums.set("trials", trials.clip.len() as f64);
    nums.set("flips", flips.time.len() as f64);
    nums.set("complete", if m.complete { 1.0 } else { 0.0 });
    let mut rows: Vec<(&str, String)> = vec![
        (
            "mouse / session",
            format!("{} / {}", m.mouse_id, m.session_id),
        ),
        (
            "started / ended",
            format!(
                "{} / {}",
                m.start_time,
                m.end_time.as_deref().unwrap_or("(not recorded)")
            ),
        ),
        (
            "complete",
            if m.complete {
                "yes".into()
            } else {
                "NO: the writer did not finish (crash or kill); what is there is shown".into()
            },
        ),
        (
            "format / software",
            format!("v{} / twinrig {}", m.format_version, m.software_version),
        ),
        (
            "imaging",
            format!(
                "{} frames of {}x{} at {} Hz ({duration:.1} s)",
                m.n_frames, m.width, m.height, m.frame_rate_hz
            ),
        ),
        (
            "stimulus",
            format!(
                "{} clips of {} frames at {}x{}, {} Hz; {} trials, {} flips, display at {} Hz",
                m.n_clips,
                m.frames_per_clip,
                m.stimulus_width,
                m.stimulus_height,
                m.stimulus_frame_rate_hz,
                trials.clip.len(),
                flips.time.len(),
                m.refresh_hz
            ),
        ),
        ("ROIs", m.n_rois.to_string()),
        (
            "analysed frames",
            match traces {
                Some(t) => {
                    nums.set("analysed_frames", t.frame_index.len() as f64);
                    format!(
                        "{} of {} ({} skipped by analysis)",
                        t.frame_index.len(),
                        m.n_frames,
                        m.n_frames.saturating_sub(t.frame_index.len())
                    )
                }
                None => "none (no traces/)".into(),
            },
        ),
        (
            "ground truth",
            match m.n_neurons {
                Some(n) => format!("{n} simulated neurons"),
                None => "none (a recorded session)".into(),
            },
        ),
    ];
    match twin {
        Some(t) => {
            nums.set("twin_neurons", t.neurons() as f64);
            nums.set("twin_rows", t.rows() as f64);
            nums.set_opt("twin_frames_skipped", t.frames_skipped.map(|v| v as f64));
            nums.set_opt("twin_alarms", t.alarms.map(|v| v as f64));
            rows.push((
                "twin",
                format!(
                    "{} on {}: {} neurons over {} frames ({} skipped), {} trials compared",
                    t.model.as_deref().unwrap_or("(model not recorded)"),
                    t.device.as_deref().unwrap_or("?"),
                    t.neurons(),
                    t.rows(),
                    t.frames_skipped.map_or("?".into(), |v| v.to_string()),
                    t.trials()
                ),
            ));
            rows.push((
                "twin fidelity (as the loop recorded it)",
                format!(
                    "median session corr {}, reference window {}, {} alarms",
                    fmt_opt(t.median_session_corr, 3),
                    fmt_opt(t.reference_fidelity, 3),
                    t.alarms.map_or("?".into(), |v| v.to_string())
                ),
            ));
        }
        None => rows.push(("twin", "not in the loop (no twin/ group)".into())),
    }
    match plan {
        Some(p) => {
            nums.set("plan_stimuli", p.stimuli.len() as f64);
            rows.push((
                "plan",
                format!(
                    "{} ({} for targets {:?}): {} stimuli",
                    p.path,
                    p.objective,
                    p.targets,
                    p.stimuli.len()
                ),
            ));
        }
        None => rows.push(("plan", "none (the session ran no --plan)".into())),
    }
    for (name, label) in [
        (crate::session::layout::attr::SYNC_PORT, "sync board"),
        (crate::session::layout::attr::PRESENTER_ADDR, "presenter"),
        (crate::session::layout::attr::SOURCE_SESSION, "replay of"),
    ] {
        if let Some(v) = r.optional_str_attr(name)? {
            rows.push((label, v));
        }
    }
    let mut b = Body::default();
    b.facts(&rows);
    Ok(Section::present("overview", "Session overview", b))
}

fn mean_image(
    r: &SessionReader,
    rois: Option<&RoiTable>,
    aligned: Option<&Aligned>,
    step: &mut dyn FnMut(u64),
) -> Result<Section, ReportError> {
    const ID: &str = "mean-image";
    const TITLE: &str = "Mean image and ROIs";
    let m = r.meta();
    if m.n_frames == 0 {
        return Ok(Section::absent(
            ID,
            TITLE,
            "the session has no imaging frames",
        ));
    }
    let (h, w) = (m.height, m.width);
    let n = m.n_frames.min(MEAN_FRAMES);
    let mut sum = vec![0f64; h * w];
    let mut frame = vec![0u16; h * w];
    for k in 0..n {
        r.read_frame_into(k * m.n_frames / n, &mut frame)?;
        for (s, &v) in sum.iter_mut().zip(&frame) {
            *s += v as f64;
        }
        step(1);
    }
    let px = crate::picture::to_u8(&sum);
    let uri = crate::picture::gray_png_uri(w, h, &px).map_err(|message| ReportError::Invalid {
        path: r.path().to_path_buf(),
        message: format!("cannot encode the mean image: {message}"),
    })?;
    let fid: HashMap<u32, f64> = aligned
        .map(|a| {
            a.roi_id
                .iter()
                .copied()
                .zip(a.fidelity.iter().copied())
                .filter(|(_, f)| f.is_finite())
                .collect()
        })
        .unwrap_or_default();
    let mut b = Body::default();
    let empty = RoiTable {
        height: h,
        width: w,
        ..Default::default()
    };
    let svg = image::mean_image_svg(
        &uri,
        w,
        h,
        rois.unwrap_or(&empty),
        &|id| fid.get(&id).copied(),
        560.0,
    );
    let caption = match (rois, fid.is_empty()) {
        (None, _) => format!("Mean of {n} frames spread over the session; the session has no ROIs (rois/)."),
        (Some(t), true) => format!("Mean of {n} frames spread over the session, with {} ROI outlines (no twin fidelity to colour them by).", t.len()),
        (Some(t), false) => format!(
            "Mean of {n} frames spread over the session, with {} ROI outlines coloured by the twin's correlation with the measured dF/F (blue below 0.2, yellow 0.5, red 1; gray: undefined; cyan: not a twin neuron). Hover an outline for its id and r.",
            t.len()
        ),
    };
    b.figure("mean-image", &svg, &caption);
    Ok(Section::present(ID, TITLE, b))
}

fn column(x: &[f32], m: usize, j: usize, rows: usize) -> Vec<f64> {
    (0..rows).map(|i| x[i * m + j] as f64).collect()
}

fn traces_section(a: &Aligned, nums: &mut Numbers) -> Section {
    let mut ranked: Vec<usize> = (0..a.m).filter(|&j| a.fidelity[j].is_finite()).collect();
    ranked.sort_by(|&x, &y| a.fidelity[y].total_cmp(&a.fidelity[x]));
    if ranked.is_empty() {
        return Section::absent(
            "traces",
            "Predicted vs measured dF/F",
            "no neuron has a defined correlation (constant or missing traces)",
        );
    }
    let picks = [
        ("best", ranked[0]),
        ("median", ranked[ranked.len() / 2]),
        ("worst", ranked[ranked.len() - 1]),
    ];
    let mut b = Body::default();
    b.note(&format!(
        "Neurons ranked by fidelity, from {}. Time on the rig clock.",
        a.fidelity_source
    ));
    for (label, j) in picks {
        let p = column(&a.pred, a.m, j, a.rows);
        let q = column(&a.meas, a.m, j, a.rows);
        let y = svg::extent(p.iter().chain(&q).copied()).unwrap_or((0.0, 1.0));
        let x = svg::extent(a.time.iter().copied()).unwrap_or((0.0, 1.0));
        let mut c = Chart::new(1280.0, 220.0, x, y);
        c.line(&a.time, &q, MEASURED, "measured dF/F");
        c.line(&a.time, &p, PREDICTED, "predicted dF/F");
        nums.set(&format!("{label}_neuron_roi"), a.roi_id[j] as f64);
        nums.set(&format!("{label}_neuron_fidelity"), a.fidelity[j]);
        b.figure(
            &format!("trace-{label}"),
            &c.finish("time (s)", "dF/F"),
            &format!(
                "{label} neuron: ROI {}, r = {:.3} ({} of {} neurons with a defined r)",
                a.roi_id[j],
                a.fidelity[j],
                ranked.iter().position(|&k| k == j).unwrap_or(0) + 1,
                ranked.len()
            ),
        );
    }
    Section::present("traces", "Predicted vs measured dF/F", b)
}

fn distribution(a: &Aligned, shuffled: &[f64], nums: &mut Numbers) -> Section {
    let fid: Vec<f64> = a
        .fidelity
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    let med = stats::median(&fid);
    let sh_med = stats::median(shuffled);
    nums.set("neurons", a.m as f64);
    nums.set("neurons_with_fidelity", fid.len() as f64);
    nums.set_opt("median_fidelity", med);
    nums.set_opt("shuffled_median", sh_med);
    nums.set("shuffled_pairs", shuffled.len() as f64);
    let above = sh_med.map(|s| fid.iter().filter(|&&f| f > s).count());
    nums.set_opt("neurons_above_shuffled_median", above.map(|v| v as f64));
    let lo = fid
        .iter()
        .chain(shuffled)
        .copied()
        .fold(-0.2f64, f64::min)
        .max(-1.0);
    let lo = (lo * 10.0).floor() / 10.0;
    let hf = Histogram::linear(lo, 1.0, 30).fill(fid.iter().copied());
    let hs = Histogram::linear(lo, 1.0, 30).fill(shuffled.iter().copied());
    let (nf, ns) = (hf.normalised(), hs.normalised());
    let top = nf.iter().chain(&ns).copied().fold(0.0, f64::max) * 1.1;
    let mut c = Chart::new(640.0, 300.0, (lo, 1.0), (0.0, top.max(0.01)));
    c.bars(&hs.edges, &ns, SHUFFLED, 0.6, "shuffled neurons (j ≠ i)");
    c.bars(&hf.edges, &nf, ACCENT, 0.6, "matched neurons");
    c.vline(med.unwrap_or(f64::NAN), ACCENT, "median, matched");
    c.vline(sh_med.unwrap_or(f64::NAN), SHUFFLED, "median, shuffled");
    let mut b = Body::default();
    b.figure(
        "fidelity-distribution",
        &c.finish("Pearson r, predicted vs measured dF/F", "fraction"),
        &format!(
            "Per-neuron fidelity of {} neurons (median {}) against the shuffled-neuron baseline: neuron i's prediction correlated with neuron j's measured dF/F, j ≠ i, {} pairs (median {}). {} neurons beat the shuffled median. The baseline is what a twin gets from the response all neurons share, without knowing which neuron is which.",
            fid.len(),
            fmt_opt(med, 3),
            shuffled.len(),
            fmt_opt(sh_med, 3),
            above.map_or("-".into(), |v| v.to_string()),
        ),
    );
    Section::present("fidelity", "Fidelity distribution", b)
}

fn over_time(
    a: &Aligned,
    twin: Option<&TwinResults>,
    offsets: &[usize],
    rate: f64,
    nums: &mut Numbers,
) -> Section {
    // Windows of WINDOW_S seconds, but at least four windows in a short session.
    let per_s = if a.time.len() >= 2 {
        (a.rows - 1) as f64 / (a.time[a.rows - 1] - a.time[0]).max(1e-9)
    } else {
        rate
    };
    let window = ((WINDOW_S * per_s) as usize)
        .min(a.rows / 4)
        .max(10)
        .min(a.rows);
    let w = stats::windowed(&a.pred, &a.meas, a.rows, a.m, window, offsets);
    let mid = |w: &stats::Window| (a.time[w.start] + a.time[w.end - 1]) / 2.0;
    let xs: Vec<f64> = w.iter().map(mid).collect();
    let med: Vec<f64> = w.iter().map(|w| w.median).collect();
    let sh: Vec<f64> = w.iter().map(|w| w.shuffled_median).collect();
    nums.set("fidelity_windows", w.len() as f64);
    nums.set("fidelity_window_s", window as f64 / per_s.max(1e-9));
    nums.set_opt("fidelity_first_window", med.first().copied());
    nums.set_opt("fidelity_last_window", med.last().copied());
    let stored: Option<(&[f64], &[f64])> = twin
        .filter(|t| t.population_fidelity.iter().any(|v| v.is_finite()))
        .map(|t| (&t.time[..], &t.population_fidelity[..]));
    let y = svg::extent(
        med.iter()
            .chain(&sh)
            .copied()
            .chain(stored.iter().flat_map(|s| s.1.iter().copied()))
            .chain([0.0]),
    )
    .unwrap_or((0.0, 1.0));
    let x = svg::extent(a.time.iter().copied()).unwrap_or((0.0, 1.0));
    let mut c = Chart::new(1280.0, 280.0, x, (y.0, y.1.max(y.0 + 0.05)));
    let mut alarm_s = 0.0;
    if let Some(t) = twin {
        // Shade the stretches the loop's fidelity alarm was raised.
        let mut start = None;
        for (i, &al) in t.alarm.iter().enumerate() {
            match (al != 0, start) {
                (true, None) => start = Some(t.time[i]),
                (false, Some(s)) => {
                    c.xband(s, t.time[i], "#cc0000");
                    alarm_s += t.time[i] - s;
                    start = None;
                }
                _ => {}
            }
        }
        if let (Some(s), Some(&e)) = (start, t.time.last()) {
            c.xband(s, e, "#cc0000");
            alarm_s += e - s;
        }
    }
    nums.set("alarm_s", alarm_s);
    if let Some((t, f)) = stored {
        c.line(t, f, EXTRA, "loop's sliding-window fidelity");
    }
    c.line(&xs, &sh, SHUFFLED, "shuffled neurons, per window");
    c.line(&xs, &med, ACCENT, "matched neurons, per window");
    let mut b = Body::default();
    b.figure(
        "fidelity-over-time",
        &c.finish("time (s)", "median Pearson r over neurons"),
        &format!(
            "Population fidelity (median over neurons of the per-window correlation) in {} windows of {:.0} s, with the shuffled-neuron baseline in the same windows{}{}.",
            w.len(),
            window as f64 / per_s.max(1e-9),
            if stored.is_some() {
                ", and the loop's own sliding-window fidelity (twin/population_fidelity)"
            } else {
                ""
            },
            if alarm_s > 0.0 {
                format!("; red: the fidelity alarm was raised ({alarm_s:.1} s)")
            } else {
                "; the fidelity alarm was never raised".into()
            }
        ),
    );
    Section::present("fidelity-time", "Fidelity over time", b)
}

/// Population-mean response per row of a [rows, m] matrix (NaN columns left out).
fn row_means(x: &[f32], rows: usize, m: usize) -> Vec<f64> {
    (0..rows)
        .map(|i| {
            let (mut s, mut n) = (0.0, 0usize);
            for &v in &x[i * m..(i + 1) * m] {
                if v.is_finite() {
                    s += v as f64;
                    n += 1;
                }
            }
            if n > 0 {
                s / n as f64
            } else {
                f64::NAN
            }
        })
        .collect()
}

/// Mean of `value` in bins of 1/`rate` s after each trial onset of `clip`, up to `span` s.
fn trial_average(
    times: &[f64],
    value: &[f64],
    onsets: &[f64],
    span: f64,
    rate: f64,
) -> (Vec<f64>, Vec<f64>) {
    let bins = ((span * rate).round() as usize).max(1);
    let mut sum = vec![0.0; bins];
    let mut n = vec![0usize; bins];
    for &t0 in onsets {
        let lo = times.partition_point(|&t| t < t0);
        let hi = times.partition_point(|&t| t < t0 + span);
        for i in lo..hi {
            let k = ((times[i] - t0) * rate) as usize;
            if k < bins && value[i].is_finite() {
                sum[k] += value[i];
                n[k] += 1;
            }
        }
    }
    // Bins no frame fell in are left out rather than drawn as gaps: frame times jitter
    // against the 1/rate grid, so a bin can miss a frame while its neighbour takes two.
    (0..bins)
        .filter(|&k| n[k] > 0)
        .map(|k| ((k as f64 + 0.5) / rate, sum[k] / n[k] as f64))
        .unzip()
}

fn trial_averages(
    r: &SessionReader,
    trials: &crate::session::Trials,
    aligned: Option<&Aligned>,
    traces: Option<&Traces>,
    plan: Option<&gain::SessionPlan>,
    nums: &mut Numbers,
) -> Result<Section, ReportError> {
    const ID: &str = "trial-averages";
    const TITLE: &str = "Trial-averaged responses per clip";
    if trials.clip.is_empty() {
        return Ok(Section::absent(
            ID,
            TITLE,
            "the session has no trials (stimulus/trials)",
        ));
    }
    // Measured from the twin's aligned rows when there is a twin (so both lines cover the same
    // frames and neurons), else from every ROI's traces.
    let (times, meas, pred): (Vec<f64>, Vec<f64>, Option<Vec<f64>>) = match (aligned, traces) {
        (Some(a), _) => (
            a.time.clone(),
            row_means(&a.meas, a.rows, a.m),
            Some(row_means(&a.pred, a.rows, a.m)),
        ),
        (None, Some(t)) if t.n_rois > 0 => (
            t.time.clone(),
            row_means(&t.dff, t.frame_index.len(), t.n_rois),
            None,
        ),
        _ => {
            return Ok(Section::absent(
                ID,
                TITLE,
                "the session has trials but no traces/dff to average",
            ))
        }
    };
    let rate = r.meta().frame_rate_hz.max(1e-3);
    let durations: Vec<f64> = trials
        .start
        .iter()
        .zip(&trials.end)
        .map(|(a, b)| b - a)
        .filter(|d| d.is_finite() && *d > 0.0)
        .collect();
    let span = stats::median(&durations).unwrap_or(4.0).clamp(0.5, 60.0);
    let mut by_clip: std::collections::BTreeMap<i32, Vec<f64>> = Default::default();
    for (&c, &t) in trials.clip.iter().zip(&trials.start) {
        by_clip.entry(c).or_default().push(t);
    }
    let mut clips: Vec<(i32, Vec<f64>)> = by_clip.into_iter().collect();
    let n_clips = clips.len();
    if clips.len() > MAX_CLIP_PANELS {
        clips.sort_by_key(|(c, t)| (std::cmp::Reverse(t.len()), *c));
        clips.truncate(MAX_CLIP_PANELS);
        clips.sort_by_key(|(c, _)| *c);
    }
    let kinds = r.clip_params()?;
    let mut panels = Vec::new();
    for (clip, onsets) in &clips {
        let (xs, ym) = trial_average(&times, &meas, onsets, span, rate);
        let yp = pred
            .as_ref()
            .map(|p| trial_average(&times, p, onsets, span, rate).1);
        panels.push((*clip, onsets.len(), xs, ym, yp));
    }
    // One y range for every panel, so clips compare at a glance.
    let y = svg::extent(
        panels
            .iter()
            .flat_map(|p| p.3.iter().chain(p.4.iter().flatten()).copied()),
    )
    .unwrap_or((0.0, 1.0));
    let mut b = Body::default();
    b.note(&format!(
        "Population-mean dF/F over the {} of each trial, from its clip's onset, averaged over the clip's trials ({} clips shown{}); black: measured, orange: predicted by the twin{}.",
        format_args!("{span:.1} s"),
        n_clips,
        if n_clips > clips.len() {
            format!(", the {} with the most trials drawn", clips.len())
        } else {
            String::new()
        },
        if pred.is_none() {
            " (no twin in this session: measured only)"
        } else {
            ""
        }
    ));
    nums.set("clips_shown", n_clips as f64);
    let family = |c: i32| {
        if let Some(s) = plan.and_then(|p| p.stimuli.iter().find(|s| s.clip == c)) {
            return format!("plan {} #{} for {}", s.family, s.rank, s.goal);
        }
        match kinds.get(c.max(0) as usize).map(|k| k.kind) {
            Some(0) => "natural".into(),
            Some(1) => "grating".into(),
            Some(2) => "gabor".into(),
            Some(3) => "noise".into(),
            Some(_) => "free-form".into(),
            None => "?".into(),
        }
    };
    for (clip, n, xs, ym, yp) in &panels {
        let mut c = Chart::new(300.0, 170.0, (0.0, span), y);
        c.line(xs, ym, MEASURED, "");
        if let Some(p) = yp {
            c.line(xs, p, PREDICTED, "");
        }
        b.figure(
            &format!("clip-{clip}"),
            &c.finish("s from onset", "dF/F"),
            &format!(
                "clip {clip} ({}), {n} trial{}",
                family(*clip),
                if *n == 1 { "" } else { "s" }
            ),
        );
    }
    Ok(Section::present(ID, TITLE, b))
}

fn plan_section(
    r: &SessionReader,
    plan: Option<&gain::SessionPlan>,
    nums: &mut Numbers,
) -> Result<Section, ReportError> {
    const ID: &str = "plan";
    const TITLE: &str = "Plan stimuli and gains";
    let Some(plan) = plan else {
        return Ok(Section::absent(
            ID,
            TITLE,
            "the session ran no in-silico plan (no root attribute `plan`: rig run --plan)",
        ));
    };
    let g = gain::plan_gain(r.path())?;
    let m = r.meta();
    let (sh, sw) = (m.stimulus_height, m.stimulus_width);
    let mut b = Body::default();
    b.note(&format!(
        "Plan {} ({} for targets {:?}); gains are each target's mean response to its plan stimuli over its mean response to the session's natural clips (rig insilico gain).",
        plan.path, plan.objective, plan.targets
    ));
    let mut rows = Vec::new();
    for t in &g.targets {
        rows.push(vec![
            t.roi_id.to_string(),
            format!("{} / {}", t.plan_trials, t.natural_trials),
            fmt_opt(Some(t.predicted), 3),
            format!(
                "{} / {}",
                fmt_opt(t.measured_plan, 3),
                fmt_opt(t.measured_natural, 3)
            ),
            fmt_opt(t.measured_gain, 2),
            format!(
                "{} / {}",
                fmt_opt(t.true_plan, 3),
                fmt_opt(t.true_natural, 3)
            ),
            fmt_opt(t.true_gain, 2),
        ]);
    }
    b.table(
        &[
            "target ROI",
            "trials plan / natural",
            "predicted dF/F",
            "measured dF/F plan / natural",
            "measured gain",
            "true dF/F plan / natural",
            "true gain",
        ],
        &rows,
    );
    let gains: Vec<f64> = g.targets.iter().filter_map(|t| t.measured_gain).collect();
    nums.set_opt("median_measured_gain", stats::median(&gains));
    nums.set("targets_at_2x", g.targets_at_2x as f64);
    if !g.targets.is_empty() {
        let cats: Vec<String> = g
            .targets
            .iter()
            .map(|t| format!("ROI {}", t.roi_id))
            .collect();
        let series: Vec<(&str, &str, Vec<f64>)> = vec![
            (
                "predicted, plan",
                PREDICTED,
                g.targets.iter().map(|t| t.predicted).collect(),
            ),
            (
                "measured, plan",
                MEASURED,
                g.targets
                    .iter()
                    .map(|t| t.measured_plan.unwrap_or(f64::NAN))
                    .collect(),
            ),
            (
                "measured, natural",
                SHUFFLED,
                g.targets
                    .iter()
                    .map(|t| t.measured_natural.unwrap_or(f64::NAN))
                    .collect(),
            ),
            (
                "true, plan",
                EXTRA,
                g.targets
                    .iter()
                    .map(|t| t.true_plan.unwrap_or(f64::NAN))
                    .collect(),
            ),
        ];
        let y = svg::extent(series.iter().flat_map(|s| s.2.iter().copied()).chain([0.0]))
            .unwrap_or((0.0, 1.0));
        let n = g.targets.len() as f64;
        let mut c = Chart::new(
            (260.0 + 120.0 * n).min(1280.0),
            300.0,
            (-0.5, n - 0.5),
            (y.0.min(0.0), y.1 * 1.15),
        );
        c.grouped_bars(&series);
        b.figure(
            "plan-gains",
            &c.finish_with_x_labels("target", "mean dF/F over the clip", Some(&cats)),
            "Each target's predicted response to its plan stimuli, and the measured (and, in a simulated session, true) response to them and to natural clips.",
        );
    }
    let trials = r.trials()?;
    let mut rows = Vec::new();
    for s in plan.stimuli.iter().take(MAX_PLAN_STIMULI) {
        if s.clip < 0 || s.clip as usize >= m.n_clips {
            continue;
        }
        let frames = r.clip(s.clip as usize)?;
        let per = sh * sw;
        let t = frames.len().checked_div(per).unwrap_or(0);
        let mut cells = String::new();
        for k in 0..4.min(t) {
            let f = k * (t - 1) / 3;
            let img = image::frame_img(
                &frames[f * per..(f + 1) * per],
                sw,
                sh,
                110.0,
                &format!("clip {} frame {f}", s.clip),
            )
            .map_err(|message| ReportError::Invalid {
                path: r.path().to_path_buf(),
                message: format!("cannot encode clip {}: {message}", s.clip),
            })?;
            cells.push_str(&img);
        }
        let shown = trials.clip.iter().filter(|&&c| c == s.clip).count();
        rows.push(vec![
            s.clip.to_string(),
            if s.goal < 0 {
                "group".into()
            } else {
                s.goal.to_string()
            },
            s.rank.to_string(),
            s.family.clone(),
            fmt_opt(Some(s.score), 3),
            s.predicted_targets
                .iter()
                .map(|v| format!("{v:.3}"))
                .collect::<Vec<_>>()
                .join(", "),
            shown.to_string(),
            cells,
        ]);
    }
    let mut table = Body::default();
    table.table(
        &[
            "clip",
            "goal ROI",
            "rank",
            "family",
            "score",
            "predicted dF/F of targets",
            "trials",
            "frames (start to end)",
        ],
        &rows,
    );
    b.figure(
        "plan-stimuli",
        &table.html,
        "The plan's stimuli as the session's clips: four frames of each, start to end, 8-bit linear luminance as stored (the display applies its gamma); trials: how often the session showed it.",
    );
    if plan.stimuli.len() > MAX_PLAN_STIMULI {
        b.note(&format!(
            "{} more plan stimuli not drawn.",
            plan.stimuli.len() - MAX_PLAN_STIMULI
        ));
    }
    Ok(Section::present(ID, TITLE, b))
}

fn latency(r: &SessionReader, nums: &mut Numbers) -> Result<Section, ReportError> {
    const ID: &str = "latency";
    const TITLE: &str = "Latency per stage";
    let stages = r.latency()?;
    let stages: Vec<_> = stages
        .into_iter()
        .filter(|s| s.count.iter().sum::<u64>() > 0)
        .collect();
    if stages.is_empty() {
        return Ok(Section::absent(
            ID,
            TITLE,
            "the session has no latency histograms (latency/): rig run and rig replay write them when they end; rig simulate does not",
        ));
    }
    let mut b = Body::default();
    for s in &stages {
        let p50 = stats::bucket_percentile(&s.value_us, &s.count, 0.5);
        let p99 = stats::bucket_percentile(&s.value_us, &s.count, 0.99);
        nums.set_opt(
            &format!("latency_{}_p50_us", s.stage),
            p50.map(|v| v as f64),
        );
        nums.set_opt(
            &format!("latency_{}_p99_us", s.stage),
            p99.map(|v| v as f64),
        );
        let lo = s
            .value_us
            .iter()
            .zip(&s.count)
            .filter(|(_, &c)| c > 0)
            .map(|(&v, _)| v)
            .min()
            .unwrap_or(1)
            .max(1) as f64;
        let hi = s
            .value_us
            .iter()
            .zip(&s.count)
            .filter(|(_, &c)| c > 0)
            .map(|(&v, _)| v)
            .max()
            .unwrap_or(1) as f64;
        let (lo, hi) = (lo / 1.5, (hi * 1.5).max(lo * 4.0));
        let mut h = Histogram::log(lo, hi, 36);
        for (&v, &c) in s.value_us.iter().zip(&s.count) {
            h.add(v as f64, c as f64);
        }
        let top = h.counts.iter().copied().fold(0.0, f64::max);
        let mut c = Chart::new(410.0, 220.0, (lo, hi), (0.0, top * 1.1 + 1e-9)).log_x();
        c.bars(&h.edges, &h.counts, ACCENT, 0.8, "");
        c.vline(p50.map_or(f64::NAN, |v| v as f64), MEASURED, "p50");
        c.vline(p99.map_or(f64::NAN, |v| v as f64), PREDICTED, "p99");
        b.figure(
            &format!("latency-{}", s.stage),
            &c.finish("µs (log)", "frames"),
            &format!(
                "{}: {} frames, p50 {} µs, p99 {} µs",
                s.stage,
                s.count.iter().sum::<u64>(),
                p50.map_or("-".into(), |v| v.to_string()),
                p99.map_or("-".into(), |v| v.to_string())
            ),
        );
    }
    Ok(Section::present(ID, TITLE, b))
}

fn display_timing(
    r: &SessionReader,
    flips: &crate::session::Flips,
    nums: &mut Numbers,
) -> Result<Section, ReportError> {
    const ID: &str = "display";
    const TITLE: &str = "Flip timing and photodiode lag";
    if flips.time.len() < 2 {
        return Ok(Section::absent(
            ID,
            TITLE,
            "the session has fewer than two display flips (stimulus/flips)",
        ));
    }
    let refresh = r.meta().refresh_hz.max(1e-3);
    let period_ms = 1000.0 / refresh;
    let mut b = Body::default();
    let interval_fig = |b: &mut Body, key: &str, times: &[f64], what: &str, nums: &mut Numbers| {
        let iv: Vec<f64> = stats::intervals(times).iter().map(|d| d * 1000.0).collect();
        let late = iv.iter().filter(|&&d| d > 1.5 * period_ms).count();
        let hi = 4.0 * period_ms;
        let h = Histogram::linear(0.0, hi, 48).fill(iv.iter().copied());
        let top = h.counts.iter().copied().fold(0.0, f64::max);
        let mut c = Chart::new(620.0, 240.0, (0.0, hi), (0.0, top * 1.1 + 1e-9));
        c.bars(&h.edges, &h.counts, ACCENT, 0.8, "");
        c.vline(period_ms, PREDICTED, "refresh period");
        let med = stats::median(&iv);
        nums.set_opt(&format!("{key}_interval_median_ms"), med);
        nums.set(&format!("{key}_intervals_over_1.5_periods"), late as f64);
        b.figure(
            &format!("{key}-intervals"),
            &c.finish("interval between flips (ms)", "flips"),
            &format!(
                "{what}: {} intervals, median {} ms at a {period_ms:.2} ms refresh period; {late} longer than 1.5 periods ({} beyond the axis, e.g. gray intervals the display did not flip through)",
                iv.len(),
                fmt_opt(med, 2),
                h.above
            ),
        );
    };
    interval_fig(&mut b, "flip", &flips.time, "stimulus/flips", nums);
    if let Some(p) = r.presenter_flips()? {
        let missed: u64 = p.missed.iter().map(|&v| v as u64).sum();
        let lost = p
            .seq
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]).saturating_sub(1))
            .sum::<u64>();
        nums.set("presenter_missed_periods", missed as f64);
        nums.set("presenter_reports_lost", lost as f64);
        interval_fig(
            &mut b,
            "presenter",
            &p.time,
            &format!("presenter/flips ({missed} refresh periods missed, {lost} flip reports lost)"),
            nums,
        );
    } else {
        b.note("No presenter flip reports (presenter/flips): the session ran without a presenter.");
    }
    let (pd, _) = r.photodiode()?;
    if pd.is_empty() {
        b.note("No photodiode edges (sync/photodiode): no sync board, or its photodiode input was idle.");
    } else {
        let lag: Vec<f64> = stats::lag_after(&flips.time, &pd)
            .into_iter()
            .map(|d| d * 1000.0)
            .collect();
        let med = stats::median(&lag);
        nums.set_opt("photodiode_lag_median_ms", med);
        nums.set_opt("photodiode_lag_p95_ms", stats::quantile(&lag, 0.95));
        let h = Histogram::linear(0.0, period_ms, 40).fill(lag.iter().copied());
        let top = h.counts.iter().copied().fold(0.0, f64::max);
        let mut c = Chart::new(620.0, 240.0, (0.0, period_ms), (0.0, top * 1.1 + 1e-9));
        c.bars(&h.edges, &h.counts, EXTRA, 0.8, "");
        c.vline(med.unwrap_or(f64::NAN), MEASURED, "median");
        b.figure(
            "photodiode-lag",
            &c.finish("photodiode edge after the latest flip (ms)", "edges"),
            &format!(
                "{} photodiode edges, each against the latest flip at or before it (stimulus/flips; on a live rig those are already shifted by the display lag): median {} ms; {} edges a period or more after their flip.",
                lag.len(),
                fmt_opt(med, 2),
                h.above
            ),
        );
    }
    Ok(Section::present(ID, TITLE, b))
}
