//! The simulated microscope in the loop: frames rendered from a simulated mouse that sees exactly
//! what the (virtual) display presents, with the display's flips, the behaviour, the sync board's
//! events and the ground truth sent to the recorder as events.
//!
//! [`SimHook`]s follow the rig frame by frame: `rig run` hooks the simulated sync board (whose
//! serial link then supplies the frame clock, photodiode and encoder events, see
//! `daemon::sync`) and the presenter mirror (which plays each trial the virtual display starts).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{AcquireError, FrameContext, FrameInfo, FrameSource};
use crossbeam::channel::Receiver;

use crate::closedloop::schedule::DisplayCommand;
use crate::pipeline::events::{EventSender, SessionEvent};
use crate::sim::{FrameEvents, SimRig, PHOTODIODE_LATENCY_S};

/// Something that follows the simulated rig one imaging frame at a time.
pub trait SimHook: Send {
    /// Called after the rig stepped the frame `ev.index` and before the frame is handed on. Events
    /// pushed to `out` go to the recorder with the frame's own (before the frame itself).
    fn on_frame(&mut self, ev: &FrameEvents, out: &mut Vec<SessionEvent>);

    /// Called when a clip joins the library during the session (e.g. from an in-silico plan),
    /// before any trial shows it: `frames` is `f x h x w`, its id is `id`.
    fn on_clip_added(&mut self, _id: u32, _frames: &[u8]) {}
}

pub struct SimSource {
    rig: SimRig,
    hooks: Vec<Box<dyn SimHook>>,
    /// Send the frame clock, photodiode and encoder events computed by the simulator (true), or
    /// leave them to a hook / to nobody (false).
    sync_events: bool,
    hook_events: Vec<SessionEvent>,
    ev: FrameEvents,
    events: Option<EventSender>,
    height: usize,
    width: usize,
    frame_rate_hz: f64,
    /// Frames to produce; `None` = until stopped.
    total: Option<u64>,
    /// Pace at `speed` x real time; `None` = as fast as the pipeline takes frames.
    speed: Option<f64>,
    started: Option<Instant>,
    index: u64,
    paused: Arc<AtomicBool>,
    /// The scheduler's requests (new clips, queued trials), applied between frames.
    commands: Option<Receiver<DisplayCommand>>,
}

impl SimSource {
    pub fn new(
        rig: SimRig,
        height: usize,
        width: usize,
        frame_rate_hz: f64,
        total: Option<u64>,
        speed: Option<f64>,
        events: Option<EventSender>,
    ) -> Self {
        SimSource {
            rig,
            hooks: Vec::new(),
            sync_events: true,
            hook_events: Vec::new(),
            ev: FrameEvents::default(),
            events,
            height,
            width,
            frame_rate_hz,
            total,
            speed,
            started: None,
            index: 0,
            paused: Arc::new(AtomicBool::new(false)),
            commands: None,
        }
    }

    /// Takes the display's orders from a scheduler.
    pub fn set_commands(&mut self, rx: Receiver<DisplayCommand>) {
        self.commands = Some(rx);
    }

    fn apply_commands(&mut self) -> Result<(), AcquireError> {
        let Some(rx) = self.commands.as_ref() else {
            return Ok(());
        };
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                DisplayCommand::Enqueue(c) => self.rig.display.enqueue(c),
                DisplayCommand::AddClip(clip) => {
                    // The mouse can see it from now on; the recorder files it (and a presenter
                    // gets it) before any flip that shows it.
                    let id = self.rig.library.clips.len() as u32;
                    for h in self.hooks.iter_mut() {
                        h.on_clip_added(id, &clip.0);
                    }
                    self.rig.library.clips.push(clip.0.clone());
                    self.rig.library.params.push(clip.1);
                    self.send(SessionEvent::Clip(clip))?;
                }
            }
        }
        Ok(())
    }

    /// A flag that holds the closed loop (the display shows gray from the next trial on).
    pub fn pause_flag(&self) -> Arc<AtomicBool> {
        self.paused.clone()
    }

    /// Uses `flag` (e.g. the control endpoint's) as the pause flag.
    pub fn set_pause_flag(&mut self, flag: Arc<AtomicBool>) {
        self.paused = flag;
    }

    /// The simulated rig (its clip library, its display).
    pub fn rig(&self) -> &SimRig {
        &self.rig
    }

    /// Adds a hook called after every frame (in the order added).
    pub fn add_hook(&mut self, hook: Box<dyn SimHook>) {
        self.hooks.push(hook);
    }

    /// `false`: the source sends no frame clock, photodiode or encoder events of its own (the sync
    /// board's link records them through a hook, or the rig has no board).
    pub fn set_sync_events(&mut self, on: bool) {
        self.sync_events = on;
    }

    fn send(&self, ev: SessionEvent) -> Result<(), AcquireError> {
        if let Some(e) = &self.events {
            e.tx.send(ev)
                .map_err(|_| AcquireError::Invalid("the recorder stopped taking events".into()))?;
        }
        Ok(())
    }
}

impl FrameSource for SimSource {
    fn height(&self) -> usize {
        self.height
    }

    fn width(&self) -> usize {
        self.width
    }

    fn len_hint(&self) -> Option<u64> {
        self.total
    }

    fn next_frame(&mut self, out: &mut [u16]) -> Result<Option<FrameInfo>, AcquireError> {
        if self.total.is_some_and(|t| self.index >= t) {
            return Ok(None);
        }
        if self.index == 0 {
            // The microscope's rendering runs on the pipeline's acquisition thread (one per run);
            // on a real rig that work happens on the microscope's own machine, not on the cores
            // of the closed loop.
            crate::pipeline::priority::lower_this_thread(
                crate::pipeline::priority::Yield::Background,
            );
            if self.speed.is_some() {
                crate::pipeline::priority::place_this_thread(
                    crate::pipeline::priority::Place::OffClosedLoop,
                );
            }
        }
        if let Some(speed) = self.speed {
            let start = *self.started.get_or_insert_with(Instant::now);
            let due = Duration::from_secs_f64(self.index as f64 / self.frame_rate_hz / speed);
            let now = start.elapsed();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        self.apply_commands()?;
        self.rig
            .display
            .set_paused(self.paused.load(Ordering::Relaxed));
        self.rig.step(out, &mut self.ev);
        let ev = std::mem::take(&mut self.ev);
        for f in &ev.flips {
            self.send(SessionEvent::Flip {
                time: f.time,
                clip: f.clip,
                frame: f.frame,
            })?;
            if self.sync_events {
                self.send(SessionEvent::Photodiode {
                    time: f.time + PHOTODIODE_LATENCY_S,
                    level: f.photodiode,
                })?;
            }
        }
        for t in &ev.trials {
            self.send(SessionEvent::Trial {
                start: t.start,
                end: t.end,
                clip: t.clip,
            })?;
        }
        if let Some(b) = ev.behavior {
            self.send(SessionEvent::Behavior {
                time: ev.time,
                speed: b.speed,
                pupil: b.pupil,
            })?;
        }
        if self.sync_events {
            self.send(SessionEvent::FrameClock {
                time: ev.time,
                count: ev.index as u32,
            })?;
            self.send(SessionEvent::Encoder {
                time: ev.time,
                position: ev.encoder_position,
            })?;
        }
        if !self.hooks.is_empty() {
            let mut out = std::mem::take(&mut self.hook_events);
            for h in &mut self.hooks {
                h.on_frame(&ev, &mut out);
            }
            for e in out.drain(..) {
                self.send(e)?;
            }
            self.hook_events = out;
        }
        if let Some(e) = &self.events {
            if let Ok(mut row) = e.truth_pool.recv() {
                row.frame = ev.index;
                row.spikes.copy_from_slice(&self.rig.spikes);
                row.calcium.copy_from_slice(&self.rig.calcium);
                row.motion = ev.motion;
                self.send(SessionEvent::Truth(row))?;
            }
        }
        let (clip, clip_frame) = self.rig.visible();
        let info = FrameInfo {
            index: ev.index,
            time: ev.time,
            context: Some(FrameContext {
                clip,
                clip_frame,
                running_speed: ev.behavior.map_or(0.0, |b| b.speed),
                pupil_diameter: ev.behavior.map_or(0.0, |b| b.pupil),
            }),
        };
        self.ev = ev;
        self.index += 1;
        Ok(Some(info))
    }
}
