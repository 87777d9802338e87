//! The simulated rig: a mouse, a microscope, behaviour, a display and the sync board's view of them,
//! deterministic for a seed. `SimRig` advances it one imaging frame at a time; `simulate_session`
//! records a whole session to HDF5.

pub mod behavior;
pub mod display;
pub mod microscope;
pub mod mouse;
pub mod rng;
pub mod session;
pub mod stimulus;

pub use session::{simulate_session, utc_now_iso, SimSummary};

use crate::config::RigConfig;
use behavior::{Behavior, BehaviorSample};
use display::{Flip, Trial, VirtualDisplay};
use microscope::Microscope;
use mouse::Mouse;
use stimulus::ClipLibrary;

/// Photodiode latency after a flip (panel response), seconds.
pub const PHOTODIODE_LATENCY_S: f64 = 0.004;

/// Everything that happened during one imaging frame besides the frame itself.
#[derive(Debug, Default)]
pub struct FrameEvents {
    pub index: u64,
    /// Rig-clock time of the frame clock edge.
    pub time: f64,
    pub flips: Vec<Flip>,
    pub trials: Vec<Trial>,
    pub behavior: Option<BehaviorSample>,
    pub encoder_position: i32,
    pub motion: [f32; 2],
}

pub struct SimRig {
    pub library: ClipLibrary,
    pub display: VirtualDisplay,
    pub mouse: Mouse,
    pub microscope: Microscope,
    behavior: Behavior,
    frame_rate_hz: f64,
    cm_per_count: f64,
    index: u64,
    visible: (i32, u32),
    /// Per-neuron outputs of the last frame.
    pub spikes: Vec<u8>,
    pub calcium: Vec<f32>,
}

impl SimRig {
    pub fn new(cfg: &RigConfig, seed: u64) -> Self {
        let library = ClipLibrary::generate(cfg, cfg.sim.library_seed(seed));
        let mouse = Mouse::new(cfg, seed);
        let microscope = Microscope::new(
            cfg.imaging.height,
            cfg.imaging.width,
            &mouse.neurons,
            cfg.imaging.frame_rate_hz,
            cfg.sim.noise,
            cfg.sim.motion_px,
            seed,
        );
        let display = VirtualDisplay::new(
            cfg.display.refresh_hz,
            cfg.stimulus.frame_rate_hz,
            library.frames_per_clip,
            cfg.stimulus.gray_seconds,
            library.len(),
            seed,
        );
        let n = mouse.len();
        SimRig {
            library,
            display,
            mouse,
            microscope,
            behavior: Behavior::new(seed, cfg.imaging.frame_rate_hz),
            frame_rate_hz: cfg.imaging.frame_rate_hz,
            cm_per_count: cfg.sync.encoder_cm_per_count,
            index: 0,
            visible: (-1, 0),
            spikes: vec![0; n],
            calcium: vec![0.0; n],
        }
    }

    /// The clip and clip frame on screen at the last frame (-1 = gray).
    pub fn visible(&self) -> (i32, u32) {
        self.visible
    }

    /// Renders the next imaging frame into `frame` and reports what else happened.
    pub fn step(&mut self, frame: &mut [u16], ev: &mut FrameEvents) {
        let t = self.index as f64 / self.frame_rate_hz;
        ev.flips.clear();
        ev.trials.clear();
        // The mouse sees whatever the display shows at the frame's time.
        while self.display.next_flip_time() <= t + 1e-9 {
            let (flip, trial) = self.display.flip();
            ev.flips.push(flip);
            ev.trials.extend(trial);
        }
        if let Some(last) = ev.flips.last() {
            let now = (last.clip, last.frame);
            if now != self.visible {
                self.visible = now;
                let f = (now.0 >= 0).then(|| self.library.frame(now.0 as usize, now.1 as usize));
                self.mouse.set_stimulus(f);
            }
        }
        let b = self.behavior.step();
        self.mouse
            .step(b.speed, b.arousal, &mut self.spikes, &mut self.calcium);
        ev.motion = self.microscope.render(&self.calcium, frame);
        ev.index = self.index;
        ev.time = t;
        ev.behavior = Some(b);
        ev.encoder_position = (self.behavior.distance_cm / self.cm_per_count).round() as i32;
        self.index += 1;
    }
}
