use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;
use twinrig::session::{SessionMeta, SessionReader};

#[derive(clap::Args)]
#[command(after_help = "Example:\n  rig inspect out/demo/closed_loop.h5 --json")]
pub struct Args {
    /// Session file (HDF5).
    session: PathBuf,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
pub struct Report {
    pub path: String,
    #[serde(flatten)]
    pub meta: SessionMeta,
    pub duration_s: f64,
    pub behavior_samples: usize,
    pub mean_running_speed_cm_s: f64,
    pub trials: usize,
    pub flips: usize,
    pub photodiode_edges: usize,
    pub frame_clock_edges: usize,
    pub encoder_samples: usize,
    pub ground_truth: bool,
}

pub fn report(path: &Path) -> Result<Report> {
    let r = SessionReader::open(path)?;
    let t = r.frame_times()?;
    let b = r.behavior()?;
    let gt = r.ground_truth()?;
    let mean_speed = if b.running_speed.is_empty() {
        0.0
    } else {
        b.running_speed.iter().map(|&v| v as f64).sum::<f64>() / b.running_speed.len() as f64
    };
    Ok(Report {
        path: path.display().to_string(),
        meta: r.meta().clone(),
        duration_s: match (t.first(), t.last()) {
            (Some(a), Some(z)) => z - a + 1.0 / r.meta().frame_rate_hz,
            _ => 0.0,
        },
        behavior_samples: b.time.len(),
        mean_running_speed_cm_s: mean_speed,
        trials: r.trials()?.start.len(),
        flips: r.flips()?.time.len(),
        photodiode_edges: r.photodiode()?.0.len(),
        frame_clock_edges: r.frame_clock()?.0.len(),
        encoder_samples: r.encoder()?.0.len(),
        ground_truth: gt.is_some(),
    })
}

pub fn print(r: &Report) {
    let m = &r.meta;
    println!(
        "session {} ({})",
        r.path,
        if m.complete {
            "complete"
        } else {
            "INCOMPLETE: writer did not finish"
        }
    );
    println!(
        "  format v{}, written by twinrig {}, mouse {}, session {}, started {}",
        m.format_version, m.software_version, m.mouse_id, m.session_id, m.start_time
    );
    println!(
        "  imaging: {} frames of {}x{} u16 at {} Hz ({:.1} s)",
        m.n_frames, m.height, m.width, m.frame_rate_hz, r.duration_s
    );
    println!(
        "  stimulus: {} clips of {} frames at {}x{}, {} trials, {} flips at {} Hz",
        m.n_clips,
        m.frames_per_clip,
        m.stimulus_width,
        m.stimulus_height,
        r.trials,
        r.flips,
        m.refresh_hz
    );
    println!(
        "  behaviour: {} samples, mean running speed {:.1} cm/s",
        r.behavior_samples, r.mean_running_speed_cm_s
    );
    println!(
        "  sync board: {} frame clock edges, {} photodiode edges, {} encoder samples",
        r.frame_clock_edges, r.photodiode_edges, r.encoder_samples
    );
    println!(
        "  ROIs: {}; ground truth: {}",
        m.n_rois,
        match m.n_neurons {
            Some(n) if r.ground_truth =>
                format!("{n} neurons (spikes, calcium, motion, parameters)"),
            _ => "none".into(),
        }
    );
}

pub fn run(a: Args) -> Result<()> {
    let rep = report(&a.session)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        print(&rep);
    }
    Ok(())
}
