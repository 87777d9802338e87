//! Frame sources: where frames enter the pipeline. Each fills a caller-provided buffer (a ring
//! slot), so acquisition allocates nothing per frame.

pub mod live;
pub mod replay;
pub mod sim;
pub mod stream;

pub use replay::ReplaySource;
pub use sim::SimSource;

use thiserror::Error;

use crate::session::SessionError;

#[derive(Debug, Error)]
pub enum AcquireError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("{0}")]
    Invalid(String),
}

/// A frame's identity on the rig clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameInfo {
    pub index: u64,
    /// Rig-clock time, seconds.
    pub time: f64,
    /// What the mouse saw and did at the frame, when the source knows it (the twin needs it).
    pub context: Option<FrameContext>,
}

/// The stimulus on screen and the behaviour at one imaging frame: the twin's inputs.
///
/// The stimulus is the last display flip at or before the frame's time and the behaviour is
/// sampled and held at it, exactly as `twin::data::SessionData` reconstructs them from a recorded
/// file, so the twin stepped live and `rig twin predict` on the recording see the same inputs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FrameContext {
    /// Clip id in the session's clip library, -1 for the gray screen.
    pub clip: i32,
    /// Frame of the clip on screen.
    pub clip_frame: u32,
    /// cm/s
    pub running_speed: f32,
    /// mm
    pub pupil_diameter: f32,
}

impl FrameContext {
    pub const GRAY: FrameContext = FrameContext {
        clip: -1,
        clip_frame: 0,
        running_speed: 0.0,
        pupil_diameter: 0.0,
    };
}

/// Something that produces imaging frames of a fixed shape.
pub trait FrameSource: Send {
    fn height(&self) -> usize;
    fn width(&self) -> usize;
    /// Total frames, when known in advance.
    fn len_hint(&self) -> Option<u64>;
    /// Fills `out` (height*width pixels) with the next frame; `None` at the end of the stream.
    fn next_frame(&mut self, out: &mut [u16]) -> Result<Option<FrameInfo>, AcquireError>;
}
