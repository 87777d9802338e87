//! Which clip the next trial shows, for every display that runs trials (the simulated rig's
//! virtual display and the live trial runner that drives `rig present`): clips a scheduler queued
//! come first; with the queue empty the library is shown in shuffled cycles, so every clip is
//! repeated evenly (repeats give the noise ceiling of the responses).

use std::collections::VecDeque;

use crate::sim::rng::FastRng;

#[derive(Debug, Clone)]
pub struct TrialPicker {
    /// Library clips in the shuffled cycle (clips added later are shown only when queued).
    n_clips: usize,
    queue: VecDeque<i32>,
    cycle: VecDeque<i32>,
    rng: FastRng,
}

impl TrialPicker {
    /// `rng` is the display's own stream, so a seed gives the same trials on every run.
    pub fn new(n_clips: usize, rng: FastRng) -> Self {
        TrialPicker {
            n_clips,
            queue: VecDeque::new(),
            cycle: VecDeque::new(),
            rng,
        }
    }

    /// Queues a clip for the next free trial, ahead of the shuffled cycle (which resumes where it
    /// stopped once the queue is empty).
    pub fn enqueue(&mut self, clip: i32) {
        self.queue.push_back(clip);
    }

    /// The library is empty and nothing is queued: there is no trial to show.
    pub fn is_idle(&self) -> bool {
        self.n_clips == 0 && self.queue.is_empty()
    }

    /// The clip of the next trial (-1, gray, only when there is nothing to show).
    pub fn next_clip(&mut self) -> i32 {
        if let Some(c) = self.queue.pop_front() {
            return c;
        }
        if self.cycle.is_empty() {
            let mut order: Vec<i32> = (0..self.n_clips as i32).collect();
            self.rng.shuffle(&mut order);
            self.cycle.extend(order);
        }
        self.cycle.pop_front().unwrap_or(-1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_clips_first_then_every_clip_once_per_cycle() {
        let mut p = TrialPicker::new(4, FastRng::new(3));
        p.enqueue(9);
        p.enqueue(2);
        assert_eq!((p.next_clip(), p.next_clip()), (9, 2));
        for _ in 0..3 {
            let mut cycle: Vec<i32> = (0..4).map(|_| p.next_clip()).collect();
            cycle.sort();
            assert_eq!(cycle, vec![0, 1, 2, 3]);
        }
        let mut empty = TrialPicker::new(0, FastRng::new(3));
        assert!(empty.is_idle());
        assert_eq!(empty.next_clip(), -1);
    }
}
