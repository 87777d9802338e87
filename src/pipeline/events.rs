//! Everything a source records besides frames (display flips, trials, behaviour, sync-board events,
//! ground truth), on its way to the sink. Small values travel by copy through a bounded channel;
//! ground-truth rows travel in recycled boxes, so a simulated session allocates nothing per frame.

use crossbeam::channel::{bounded, Receiver, Sender};

use crate::session::{ClipParams, SessionError, SessionWriter};

/// One ground-truth row of a simulated frame.
#[derive(Debug, Clone)]
pub struct TruthRow {
    pub frame: u64,
    pub spikes: Vec<u8>,
    pub calcium: Vec<f32>,
    pub motion: [f32; 2],
}

#[derive(Debug)]
pub enum SessionEvent {
    Flip {
        time: f64,
        clip: i32,
        frame: u32,
    },
    Trial {
        start: f64,
        end: f64,
        clip: i32,
    },
    Behavior {
        time: f64,
        speed: f32,
        pupil: f32,
    },
    FrameClock {
        time: f64,
        count: u32,
    },
    Photodiode {
        time: f64,
        level: u8,
    },
    Encoder {
        time: f64,
        position: i32,
    },
    Truth(Box<TruthRow>),
    /// A clip added to the library during the session (e.g. from the in-silico search).
    Clip(Box<(Vec<u8>, ClipParams)>),
    /// A flip the stimulus presenter reported (`presenter/flips/*`).
    PresenterFlip(crate::present::PresentedFrame),
}

/// The source's end of the event stream, with the pool of ground-truth rows.
pub struct EventSender {
    pub tx: Sender<SessionEvent>,
    pub truth_pool: Receiver<Box<TruthRow>>,
}

/// The sink's end.
pub struct EventReceiver {
    pub rx: Receiver<SessionEvent>,
    pub truth_return: Sender<Box<TruthRow>>,
}

/// An event channel; `neurons` sizes the preallocated ground-truth rows (0: no ground truth).
pub fn event_channel(neurons: usize) -> (EventSender, EventReceiver) {
    let (tx, rx) = bounded(4096);
    let (ptx, prx) = bounded(256);
    if neurons > 0 {
        for _ in 0..256 {
            let _ = ptx.send(Box::new(TruthRow {
                frame: 0,
                spikes: vec![0; neurons],
                calcium: vec![0.0; neurons],
                motion: [0.0; 2],
            }));
        }
    }
    (
        EventSender {
            tx,
            truth_pool: prx,
        },
        EventReceiver {
            rx,
            truth_return: ptx,
        },
    )
}

/// Writes one event into the session.
pub fn record(w: &mut SessionWriter, ev: &SessionEvent) -> Result<(), SessionError> {
    match ev {
        SessionEvent::Flip { time, clip, frame } => w.append_flip(*time, *clip, *frame),
        SessionEvent::Trial { start, end, clip } => w.append_trial(*start, *end, *clip),
        SessionEvent::Behavior { time, speed, pupil } => w.append_behavior(*time, *speed, *pupil),
        SessionEvent::FrameClock { time, count } => w.append_frame_clock(*time, *count),
        SessionEvent::Photodiode { time, level } => w.append_photodiode(*time, *level),
        SessionEvent::Encoder { time, position } => w.append_encoder(*time, *position),
        SessionEvent::Truth(t) => w.append_ground_truth(&t.spikes, &t.calcium, t.motion)?,
        SessionEvent::Clip(c) => {
            w.append_clip(&c.0, c.1)?;
        }
        SessionEvent::PresenterFlip(f) => w.append_presenter_flip(f)?,
    }
    Ok(())
}
