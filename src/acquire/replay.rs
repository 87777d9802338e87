//! Replays a recorded session's frames, as fast as possible or at the recorded timing.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{AcquireError, FrameContext, FrameInfo, FrameSource};
use crate::session::SessionReader;

pub struct ReplaySource {
    reader: SessionReader,
    times: Vec<f64>,
    /// What was on screen and the behaviour at each frame, rebuilt once from the recording.
    context: Vec<FrameContext>,
    next: usize,
    /// Playback speed relative to the recording; `None` = as fast as possible.
    speed: Option<f64>,
    started: Option<Instant>,
}

impl ReplaySource {
    /// Opens `path` for replay. `realtime_speed`: `Some(1.0)` plays at the recorded timing.
    pub fn open(path: &Path, realtime_speed: Option<f64>) -> Result<Self, AcquireError> {
        let reader = SessionReader::open(path)?;
        let times = reader.frame_times()?;
        if times.is_empty() {
            return Err(AcquireError::Invalid(format!(
                "{}: the session has no frames to replay",
                path.display()
            )));
        }
        if let Some(bad) = times
            .windows(2)
            .position(|w| w[1].partial_cmp(&w[0]) != Some(std::cmp::Ordering::Greater))
        {
            return Err(AcquireError::Invalid(format!(
                "{}: imaging/timestamps is not increasing at frame {}",
                path.display(),
                bad + 1
            )));
        }
        let context = contexts(&reader, &times)?;
        Ok(ReplaySource {
            reader,
            times,
            context,
            next: 0,
            speed: realtime_speed,
            started: None,
        })
    }

    pub fn reader(&self) -> &SessionReader {
        &self.reader
    }
}

impl FrameSource for ReplaySource {
    fn height(&self) -> usize {
        self.reader.meta().height
    }

    fn width(&self) -> usize {
        self.reader.meta().width
    }

    fn len_hint(&self) -> Option<u64> {
        Some(self.times.len() as u64)
    }

    fn next_frame(&mut self, out: &mut [u16]) -> Result<Option<FrameInfo>, AcquireError> {
        let i = self.next;
        let Some(&t) = self.times.get(i) else {
            return Ok(None);
        };
        if let Some(speed) = self.speed {
            let start = *self.started.get_or_insert_with(Instant::now);
            let due = Duration::from_secs_f64(((t - self.times[0]) / speed).max(0.0));
            let now = start.elapsed();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        self.reader.read_frame_into(i, out)?;
        self.next += 1;
        Ok(Some(FrameInfo {
            index: i as u64,
            time: t,
            context: self.context.get(i).copied(),
        }))
    }
}

/// The stimulus on screen and the behaviour at each frame time, by the session's own rule
/// (`Flips::shown_at`, `Behavior::held_at`), which `twin::data::SessionData` uses too.
fn contexts(reader: &SessionReader, times: &[f64]) -> Result<Vec<FrameContext>, AcquireError> {
    let shown = reader.flips()?.shown_at(times);
    let (speed, pupil) = reader.behavior()?.held_at(times);
    Ok(shown
        .into_iter()
        .zip(speed.into_iter().zip(pupil))
        .map(
            |((clip, clip_frame), (running_speed, pupil_diameter))| FrameContext {
                clip,
                clip_frame,
                running_speed,
                pupil_diameter,
            },
        )
        .collect())
}
