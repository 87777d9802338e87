//! Records a whole simulated session to a session file.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::{FrameEvents, SimRig, PHOTODIODE_LATENCY_S};
use crate::config::RigConfig;
use crate::session::{SessionError, SessionInfo, SessionWriter};

/// What `rig simulate` reports.
#[derive(Debug, Clone, Serialize)]
pub struct SimSummary {
    pub out: String,
    pub seed: u64,
    pub frames: u64,
    pub seconds: f64,
    pub height: usize,
    pub width: usize,
    pub neurons: usize,
    pub clips: usize,
    pub trials: usize,
    pub flips: usize,
    pub mean_spike_rate_hz: f64,
    pub wall_s: f64,
    pub realtime_factor: f64,
    pub file_mb: f64,
}

/// Current UTC time as ISO 8601 (no timezone crate needed for a UTC stamp).
pub fn utc_now_iso() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Simulates `minutes` of the rig described by `cfg` with `seed` and records it to `out`.
/// `progress(done, total)` is called every few frames.
pub fn simulate_session(
    cfg: &RigConfig,
    minutes: f64,
    seed: u64,
    out: &Path,
    overwrite: bool,
    mut progress: impl FnMut(u64, u64),
) -> Result<SimSummary, SessionError> {
    let started = Instant::now();
    let mut rig = SimRig::new(cfg, seed);
    let info = SessionInfo {
        mouse_id: cfg.rig.mouse_id.clone(),
        session_id: format!("sim-seed{seed}"),
        start_time: utc_now_iso(),
    };
    let mut w = SessionWriter::create(out, cfg, &info, overwrite)?;
    for (clip, params) in rig.library.clips.iter().zip(&rig.library.params) {
        w.append_clip(clip, *params)?;
    }
    w.write_rois(&rig.microscope.footprints)?;
    let roi_ids = rig.microscope.footprints.ids.clone();
    w.begin_ground_truth(rig.mouse.len(), &rig.mouse.table(&roi_ids))?;

    let total = (minutes * 60.0 * cfg.imaging.frame_rate_hz)
        .round()
        .max(0.0) as u64;
    let mut frame = vec![0u16; cfg.imaging.height * cfg.imaging.width];
    let mut ev = FrameEvents::default();
    let (mut n_trials, mut n_flips, mut n_spikes) = (0usize, 0usize, 0u64);
    for i in 0..total {
        rig.step(&mut frame, &mut ev);
        for f in &ev.flips {
            w.append_flip(f.time, f.clip, f.frame);
            w.append_photodiode(f.time + PHOTODIODE_LATENCY_S, f.photodiode);
        }
        for t in &ev.trials {
            w.append_trial(t.start, t.end, t.clip);
        }
        n_trials += ev.trials.len();
        n_flips += ev.flips.len();
        if let Some(b) = ev.behavior {
            w.append_behavior(ev.time, b.speed, b.pupil);
        }
        w.append_frame_clock(ev.time, ev.index as u32);
        w.append_encoder(ev.time, ev.encoder_position);
        n_spikes += rig.spikes.iter().map(|&s| s as u64).sum::<u64>();
        w.append_ground_truth(&rig.spikes, &rig.calcium, ev.motion)?;
        w.append_frame(&frame, ev.time)?;
        if i % 16 == 0 || i + 1 == total {
            progress(i + 1, total);
        }
    }
    let path = w.finish(&utc_now_iso())?;
    let wall = started.elapsed().as_secs_f64();
    let seconds = total as f64 / cfg.imaging.frame_rate_hz;
    Ok(SimSummary {
        out: path.display().to_string(),
        seed,
        frames: total,
        seconds,
        height: cfg.imaging.height,
        width: cfg.imaging.width,
        neurons: rig.mouse.len(),
        clips: rig.library.len(),
        trials: n_trials,
        flips: n_flips,
        mean_spike_rate_hz: if seconds > 0.0 {
            n_spikes as f64 / seconds / rig.mouse.len().max(1) as f64
        } else {
            0.0
        },
        wall_s: wall,
        realtime_factor: if wall > 0.0 { seconds / wall } else { 0.0 },
        file_mb: std::fs::metadata(&path)
            .map(|m| m.len() as f64 / 1e6)
            .unwrap_or(0.0),
    })
}
