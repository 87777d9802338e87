//! The simulated rig's display: flips at the configured refresh on the rig clock and shows trials
//! (a clip, then a gray interval). The photodiode patch toggles on every flip.

use super::rng::FastRng;
use crate::present::trials::TrialPicker;

/// One display flip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Flip {
    pub time: f64,
    /// -1 = gray
    pub clip: i32,
    pub frame: u32,
    pub photodiode: u8,
}

/// A trial as scheduled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trial {
    pub clip: i32,
    pub start: f64,
    pub clip_end: f64,
    pub end: f64,
}

pub struct VirtualDisplay {
    refresh_hz: f64,
    stim_rate_hz: f64,
    frames_per_clip: usize,
    gray_s: f64,
    trials: TrialPicker,
    k: u64,
    current: Option<Trial>,
    photodiode: u8,
    paused: bool,
}

impl VirtualDisplay {
    pub fn new(
        refresh_hz: f64,
        stim_rate_hz: f64,
        frames_per_clip: usize,
        gray_s: f64,
        n_clips: usize,
        seed: u64,
    ) -> Self {
        VirtualDisplay {
            refresh_hz,
            stim_rate_hz,
            frames_per_clip,
            gray_s,
            trials: TrialPicker::new(n_clips, FastRng::new(seed ^ 0xD15_B1A7)),
            k: 0,
            current: None,
            photodiode: 0,
            paused: false,
        }
    }

    /// Queues a clip to be shown in the next free trial (ahead of the shuffled library cycle,
    /// which resumes where it stopped once the queue is empty).
    pub fn enqueue(&mut self, clip: i32) {
        self.trials.enqueue(clip);
    }

    /// While paused, trials that start show gray (the loop is held; recording goes on).
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Time of the next flip.
    pub fn next_flip_time(&self) -> f64 {
        self.k as f64 / self.refresh_hz
    }

    /// Performs the next flip; returns it and the trial it started, if any.
    pub fn flip(&mut self) -> (Flip, Option<Trial>) {
        let t = self.next_flip_time();
        self.k += 1;
        let mut started = None;
        if self.current.is_none_or(|tr| t >= tr.end - 1e-9) && !self.trials.is_idle() {
            let clip = if self.paused {
                -1
            } else {
                self.trials.next_clip()
            };
            let clip_end = t + self.frames_per_clip as f64 / self.stim_rate_hz;
            let tr = Trial {
                clip,
                start: t,
                clip_end,
                end: clip_end + self.gray_s,
            };
            self.current = Some(tr);
            started = Some(tr);
        }
        self.photodiode ^= 1;
        let (clip, frame) = match self.current {
            Some(tr) if t < tr.clip_end - 1e-9 => {
                let f = ((t - tr.start) * self.stim_rate_hz + 1e-9).floor() as usize;
                (tr.clip, f.min(self.frames_per_clip - 1) as u32)
            }
            _ => (-1, 0),
        };
        (
            Flip {
                time: t,
                clip,
                frame,
                photodiode: self.photodiode,
            },
            started,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trials_alternate_clip_and_gray_at_stimulus_rate() {
        let mut d = VirtualDisplay::new(60.0, 30.0, 60, 0.5, 3, 1);
        let mut flips = Vec::new();
        let mut trials = Vec::new();
        for _ in 0..60 * 6 {
            let (f, t) = d.flip();
            flips.push(f);
            trials.extend(t);
        }
        // 2 s clip + 0.5 s gray: trials start at 0, 2.5, 5.0.
        assert_eq!(trials.len(), 3);
        assert!((trials[1].start - 2.5).abs() < 1e-9);
        // Each stimulus frame stays up for two 60 Hz flips.
        assert_eq!(flips[0].frame, 0);
        assert_eq!(flips[1].frame, 0);
        assert_eq!(flips[2].frame, 1);
        assert_eq!(flips[119].frame, 59);
        assert_eq!(flips[120].clip, -1);
        // Every library clip appears once per cycle.
        let mut c: Vec<i32> = trials.iter().map(|t| t.clip).collect();
        c.sort();
        assert_eq!(c, vec![0, 1, 2]);
    }
}
