//! Simulated behaviour: running on the treadmill in bouts, and a pupil that follows arousal.

use super::rng::FastRng;

pub struct Behavior {
    rng: FastRng,
    dt: f64,
    running: bool,
    speed: f64,
    arousal: f64,
    /// Treadmill distance, cm.
    pub distance_cm: f64,
}

/// One behaviour sample.
#[derive(Debug, Clone, Copy)]
pub struct BehaviorSample {
    /// cm/s
    pub speed: f32,
    /// mm
    pub pupil: f32,
    /// ~N(0,1) arousal state that modulates the neurons' gain.
    pub arousal: f32,
}

impl Behavior {
    pub fn new(seed: u64, frame_rate_hz: f64) -> Self {
        Behavior {
            rng: FastRng::new(seed ^ 0xBE4A_710F),
            dt: 1.0 / frame_rate_hz,
            running: false,
            speed: 0.0,
            arousal: 0.0,
            distance_cm: 0.0,
        }
    }

    /// Advances one imaging frame.
    pub fn step(&mut self) -> BehaviorSample {
        let dt = self.dt;
        // Bouts: a two-state Markov chain, mean rest 8 s, mean bout 6 s.
        let p_switch = if self.running { dt / 6.0 } else { dt / 8.0 };
        if self.rng.uniform() < p_switch {
            self.running = !self.running;
        }
        let target = if self.running { 18.0 } else { 0.0 };
        // Ornstein-Uhlenbeck around the state's target, 0.7 s time constant.
        let tau = 0.7;
        let sd = if self.running { 5.0 } else { 0.3 };
        self.speed +=
            (target - self.speed) * dt / tau + sd * (2.0 * dt / tau).sqrt() * self.rng.normal();
        self.speed = self.speed.max(0.0);
        self.distance_cm += self.speed * dt;
        // Arousal drifts slowly (5 s) and rises with running.
        let atau = 5.0;
        let atarget = if self.running { 1.0 } else { -0.3 };
        self.arousal += (atarget - self.arousal) * dt / atau
            + 0.5 * (2.0 * dt / atau).sqrt() * self.rng.normal();
        let pupil = (1.3 + 0.35 * self.arousal).clamp(0.4, 3.0);
        BehaviorSample {
            speed: self.speed as f32,
            pupil: pupil as f32,
            arousal: self.arousal as f32,
        }
    }
}
