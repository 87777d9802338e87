use std::path::PathBuf;

use anyhow::{bail, Result};
use twinrig::pipeline::replay::{replay, ReplayOptions, ReplayReport};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  rig replay session.h5 --json\n  rig replay session.h5 --rois suite2p_masks.h5 --realtime --speed 2 --out replayed.h5"
)]
pub struct Args {
    /// Recorded session (HDF5).
    session: PathBuf,
    /// Write a new session: the frames re-recorded, the stimulus, behaviour and sync events
    /// copied, and the extracted traces added.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace an existing --out file (never one another process has open).
    #[arg(long)]
    overwrite: bool,
    /// Play at the recorded timing (analysis then skips frames if it falls behind).
    #[arg(long)]
    realtime: bool,
    /// Playback speed with --realtime (2 = twice as fast as recorded).
    #[arg(long, default_value_t = 1.0, requires = "realtime")]
    speed: f64,
    /// ROI masks from another file (rois/ids, rois/offsets, rois/pixels, rois/weights).
    #[arg(long)]
    rois: Option<PathBuf>,
    /// Skip the deconvolution step.
    #[arg(long)]
    no_deconv: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    if !(a.speed.is_finite() && a.speed > 0.0) {
        bail!("--speed must be a positive number, got {}", a.speed);
    }
    let opts = ReplayOptions {
        out: a.out.clone(),
        realtime_speed: a.realtime.then_some(a.speed),
        rois: a.rois.clone(),
        deconvolve: a.no_deconv.then_some(false),
        ring_slots: None,
        overwrite: a.overwrite,
    };
    let r = run_replay(&a.session, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_report(&r);
    }
    // Traces are what a replay is for: one that stopped analysing is a failure.
    if let Some(e) = &r.pipeline.first_analysis_error {
        bail!("analysis stopped: {e}");
    }
    Ok(())
}

pub fn run_replay(session: &std::path::Path, opts: &ReplayOptions) -> Result<ReplayReport> {
    let pb = super::progress_bar(0, "replay");
    let r = replay(session, opts, &super::follow(&pb));
    pb.finish_and_clear();
    Ok(r?)
}

pub fn print_report(r: &ReplayReport) {
    let p = &r.pipeline;
    match &r.out {
        Some(o) => println!("replayed {} -> {}", r.session, o),
        None => println!("replayed {}", r.session),
    }
    println!(
        "  {}x{} frames, {} ROIs, reference from {} frames ({:.2} s){}",
        r.height,
        r.width,
        r.rois,
        r.reference_frames,
        r.reference_s,
        if r.realtime {
            ", at recorded timing"
        } else {
            ", as fast as possible"
        }
    );
    println!(
        "  frames: {} in, {} analysed, {} skipped, {} recorded, {} lost",
        p.frames_in, p.frames_analysed, p.frames_skipped, p.frames_recorded, p.frames_lost
    );
    if let Some(e) = &p.first_analysis_error {
        println!(
            "  analysis stopped after an error ({}): {e}",
            p.analysis_errors
        );
    }
    println!(
        "  throughput: {:.0} frames/s ({:.1}x real time) over {:.2} s; peak memory {:.0} MB",
        p.frames_per_s, p.realtime_factor, p.wall_s, p.peak_rss_mb
    );
    println!(
        "  rings: recorder max fill {}/{} ({} back-pressure waits), analysis max fill {}/{}",
        p.recorder_ring.max_fill,
        p.recorder_ring.slots,
        p.recorder_ring.backpressure_events,
        p.analysis_ring.max_fill,
        p.analysis_ring.slots
    );
    println!("  latency (us)      p50      p90      p99      max");
    for s in &p.latency {
        println!(
            "    {:<12}{:>7}  {:>7}  {:>7}  {:>7}",
            s.stage, s.p50_us, s.p90_us, s.p99_us, s.max_us
        );
    }
    if let Some(a) = &p.accuracy {
        let f = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "n/a".into());
        println!(
            "  against ground truth ({}): {}",
            a.masks.caveat(),
            pairing_line(a)
        );
        println!(
            "    median corr(dF/F, true calcium)        {}",
            f(a.median_dff_calcium_corr)
        );
        println!(
            "    motion RMS error (offset removed, px)  {}",
            f(a.motion_rms_error_px)
        );
        println!(
            "    median corr with true spikes: events {}, dF/F {}",
            f(a.median_events_spikes_corr),
            f(a.median_dff_spikes_corr)
        );
    }
}

/// How the scored ROIs were paired with the true neurons, in one line: a figure scored on the
/// simulator's own footprints (overlap 1) is an upper bound for real masks, and says so.
pub(crate) fn pairing_line(a: &twinrig::pipeline::score::Accuracy) -> String {
    use twinrig::pipeline::score::PairedBy;
    let overlap = a.median_overlap.unwrap_or(0.0);
    let how = match a.paired_by {
        PairedBy::Overlap => format!(
            "{} of {} ROIs paired with one of {} neurons by overlap (median {overlap:.2})",
            a.rois_scored, a.rois, a.neurons
        ),
        PairedBy::Id => format!(
            "{} of {} ROIs paired with one of {} neurons by id (the session predates stored footprints)",
            a.rois_scored, a.rois, a.neurons
        ),
    };
    // A mask source that is not already labelled an upper bound, but is the truth all the same.
    let given = a.masks == twinrig::pipeline::score::MaskSource::Given;
    if given && a.paired_by == PairedBy::Overlap && overlap > 0.99 {
        format!("{how}; the ROIs are the true footprints, so this is an upper bound")
    } else {
        how
    }
}
